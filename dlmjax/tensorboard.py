"""TensorBoard event files in a bucket, written through the suite's path layer.

tensorboardX writes `gs://` only through google-cloud-storage's own client; registering this
writer sends bucket event files through `dlmjax.fs` instead, like every other file of a run.
An event file in a bucket is one object, re-uploaded whole at every flush (no append there).
"""

import io

from dlmjax import fs


class _BucketRecordWriter:
    def __init__(self, path):
        self.path = path
        self.buffer = io.BytesIO()

    def write(self, data):
        self.buffer.write(data)

    def flush(self):
        fs.write_bytes_atomic(self.path, self.buffer.getvalue())

    def close(self):
        self.flush()


class _BucketWriterFactory:
    def open(self, path):
        return _BucketRecordWriter(path)

    def directory_check(self, path):
        del path  # buckets have no directories to create


def register_bucket_writer(scheme: str = "gs") -> None:
    from tensorboardX import record_writer

    record_writer.register_writer_factory(scheme, _BucketWriterFactory())
