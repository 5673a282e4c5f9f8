"""A local Google Cloud Storage for tests: gcp-storage-emulator on 127.0.0.1 at a free port.

`GcsEmulator` starts the server (in memory, one bucket; through gcs_emulator_server.py, which
adds the generation headers of real GCS), waits until it answers, and gives the environment
that points gcsfs/etils (STORAGE_EMULATOR_HOST) and orbax/tensorstore (TENSORSTORE_GCS_HTTP_URL)
at it. conftest.py exposes one per session as the `gcs` fixture.
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

BUCKET = "dlmjax-test"
SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gcs_emulator_server.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GcsEmulator:
    def __init__(self, bucket: str = BUCKET):
        self.bucket = bucket
        self.process = None
        self.url = ""

    def start(self, attempts: int = 3, timeout_s: float = 30.0) -> "GcsEmulator":
        for _ in range(attempts):  # the free port can be taken between probe and bind
            port = _free_port()
            self.process = subprocess.Popen(
                [sys.executable, SERVER, "start", "--host", "127.0.0.1",
                 "--port", str(port), "--in-memory", "--default-bucket", self.bucket],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + timeout_s
            while self.process.poll() is None and time.monotonic() < deadline:
                try:
                    urllib.request.urlopen(f"{self.url}/storage/v1/b/{self.bucket}", timeout=1)
                    return self
                except OSError:
                    time.sleep(0.1)
            self.stop()
        raise RuntimeError(f"the GCS emulator did not start after {attempts} attempts")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    @property
    def env(self) -> dict:
        """Environment variables that send every gs:// access to this emulator."""
        return {
            "STORAGE_EMULATOR_HOST": self.url,
            # Otherwise gcsfs first asks a gRPC API for the bucket layout, 60 s per call.
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "dummy",
        }

    @staticmethod
    def forget_listings() -> None:
        """Drops this process's cached bucket listings (gcsfs caches them per instance), so
        objects that other processes wrote since become visible."""
        import gcsfs

        for filesystem in list(gcsfs.GCSFileSystem._cache.values()):
            filesystem.invalidate_cache()

    def fresh_prefix(self, name: str = "t") -> str:
        """A gs:// directory no other test uses."""
        return f"gs://{self.bucket}/{name}-{uuid.uuid4().hex[:8]}"

