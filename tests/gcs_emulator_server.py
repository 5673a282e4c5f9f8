"""gcp-storage-emulator, with the object generation headers that real GCS sends on downloads.

  python tests/gcs_emulator_server.py start --host 127.0.0.1 --port PORT --in-memory ...

Real GCS answers every media download with `x-goog-generation` (and `x-goog-metageneration`);
the emulator omits them. Tensorstore (orbax checkpoints) takes a read's generation from that
header and puts it in the condition of its next request, so without it an OCDBT manifest update
occasionally fails with "Malformed StorageGeneration". This adds the two headers, with the
values the emulator already keeps for the object. It also honours the precondition
`ifGenerationMatch=0` (create only if absent, HTTP 412 otherwise) on uploads, as real GCS does:
dlmjax.runlock creates lock files that way. Otherwise it runs the emulator unchanged.
"""

import sys
from http import HTTPStatus

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


_insert = objects.insert


def _insert_if_absent(request, response, storage, *args, **kwargs):
    name = request.query.get("name", [None])[0]
    if name is None and isinstance(request.data, dict):  # multipart: named in its metadata
        name = request.data.get("meta", {}).get("name")
    if request.query.get("ifGenerationMatch") == ["0"] and name:
        try:
            storage.get_file_obj(request.params["bucket_name"], name)
        except Exception:  # absent: the upload may proceed
            return _insert(request, response, storage, *args, **kwargs)
        response.status = HTTPStatus.PRECONDITION_FAILED
        message = "At least one of the pre-conditions you specified did not hold."
        response.json({"error": {"code": 412, "message": message,
                                 "errors": [{"reason": "conditionNotMet", "message": message}]}})
        return None
    return _insert(request, response, storage, *args, **kwargs)


# Before the server module is imported: its route table captures the handler functions.
objects.download = _download_with_generation
objects.insert = _insert_if_absent

from gcp_storage_emulator.__main__ import main  # noqa: E402

if __name__ == "__main__":
    main(sys.argv[1:])
