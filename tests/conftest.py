"""Every test runs on 8 fake CPU devices (the Makefile sets XLA_FLAGS; this covers plain pytest)."""

import os
import shutil
import sys
import tempfile

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# One persistent compilation cache for the session, inherited by xdist workers and by every
# `python -m dlmjax.main` a test starts: restarted and repeated runs reload their programs.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="dlmjax-xla-cache-")
# Experiment files import `experiments.base`, as they do under `python -m dlmjax.main`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from interop_fixtures import interop_run  # noqa: E402, F401  (session fixture of the interop tests)


@pytest.fixture(scope="session")
def gcs():
    """A local Google Cloud Storage emulator for the session (tests/gcs_emulator.py).

    This process's environment points gs:// at it while it runs; pass `gcs.env` to subprocesses
    (it is in os.environ already, so `dict(os.environ)` carries it). Use `gcs.fresh_prefix()`
    for a directory of your own in its bucket.
    """
    from gcs_emulator import GcsEmulator

    emulator = GcsEmulator().start()
    saved = {key: os.environ.get(key) for key in emulator.env}
    os.environ.update(emulator.env)
    yield emulator
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    emulator.stop()


# `make test` runs on two workers (pytest-xdist, --dist=loadfile): a file's module fixtures are
# built once, and the files sharing the session's interop_run go to one worker, so that is built
# once too. The longest files go first, so neither worker is left with one at the end.
LONGEST_FILES = ("test_study_ray.py", "test_train.py")
SHARED_SESSION_FIXTURE = ("test_hf.py", "test_harness.py", "test_trackers.py")


def pytest_xdist_make_scheduler(config, log):
    """--dist=loadfile with SHARED_SESSION_FIXTURE's files as one unit of work."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FilesSharingFixtures(LoadFileScheduling):
        def _split_scope(self, nodeid):
            path = super()._split_scope(nodeid)
            return "interop" if os.path.basename(path) in SHARED_SESSION_FIXTURE else path

    return FilesSharingFixtures(config, log)


@pytest.hookimpl(trylast=True)  # after pytest groups items by fixture
def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.path.name not in LONGEST_FILES)


def pytest_unconfigure(config):
    if _OWN_CACHE and not hasattr(config, "workerinput"):  # the controller, not a worker
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
