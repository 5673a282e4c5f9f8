"""gcp-storage-emulator, with the object generation headers that real GCS sends on downloads.

  python tests/gcs_emulator_server.py start --host 127.0.0.1 --port PORT --in-memory ...

Real GCS answers every media download with `x-goog-generation` (and `x-goog-metageneration`);
the emulator omits them. Tensorstore (orbax checkpoints) takes a read's generation from that
header and puts it in the condition of its next request, so without it an OCDBT manifest update
occasionally fails with "Malformed StorageGeneration". This adds the two headers, with the
values the emulator already keeps for the object, and otherwise runs the emulator unchanged.
"""

import sys

from gcp_storage_emulator.handlers import objects

_download = objects.download


def _download_with_generation(request, response, storage, *args, **kwargs):
    _download(request, response, storage, *args, **kwargs)
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:  # missing object: the 404 is already set
        return
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj["metageneration"])


# Before the server module is imported: its route table captures the handler functions.
objects.download = _download_with_generation

from gcp_storage_emulator.__main__ import main  # noqa: E402

if __name__ == "__main__":
    main(sys.argv[1:])
