"""model.safetensors, sharded beyond a size limit with the usual index, local or in a bucket.

One file `model.safetensors` while the tensors fit in `max_shard_bytes`; otherwise
`model-00001-of-0000N.safetensors` … plus `model.safetensors.index.json`
({"metadata": {"total_size": bytes}, "weight_map": {tensor: file}}), filled greedily in tensor
order (a tensor larger than the limit gets a shard of its own). bfloat16 goes through ml_dtypes,
which safetensors' NumPy API lacks when reading.
"""

import json

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

from dlmjax import fs
from dlmjax.hf.format import FormatError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # "5GB", the hub's usual shard size
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
           "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32}


def plan_shards(sizes, max_shard_bytes):
    """Lists of tensor names, in order, each list at most max_shard_bytes (unless one tensor is
    larger on its own). `sizes` is an ordered {name: bytes}."""
    if max_shard_bytes < 1:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    shards, current, current_bytes = [], [], 0
    for name, nbytes in sizes.items():
        if current and current_bytes + nbytes > max_shard_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current.append(name)
        current_bytes += nbytes
    if current:
        shards.append(current)
    return shards


def shard_file_names(num_shards):
    if num_shards == 1:
        return [SINGLE_FILE]
    return [f"model-{i + 1:05d}-of-{num_shards:05d}.safetensors" for i in range(num_shards)]


def write(directory, tensors, *, max_shard_bytes=DEFAULT_MAX_SHARD_BYTES):
    """Writes `tensors` (ordered {name: array}); returns the file names written."""
    shards = plan_shards({n: t.nbytes for n, t in tensors.items()}, max_shard_bytes)
    files = shard_file_names(len(shards))
    for file, names in zip(files, shards):
        data = safetensors.numpy.save({n: tensors[n] for n in names}, metadata={"format": "pt"})
        fs.write_bytes_atomic(fs.join(directory, file), data)
    if len(files) > 1:
        index = {"metadata": {"total_size": int(sum(t.nbytes for t in tensors.values()))},
                 "weight_map": {n: f for f, names in zip(files, shards) for n in names}}
        fs.write_text_atomic(fs.join(directory, INDEX_FILE), json.dumps(index, indent=2) + "\n")
        return [*files, INDEX_FILE]
    return files


def _read_file(path):
    """{name: array} of one safetensors file (memory-mapped when local)."""
    if not fs.is_remote(path):
        with safetensors.safe_open(fs.absolute(path), framework="numpy") as f:
            return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    tensors = {}
    for name, view in safetensors.deserialize(fs.read_bytes(path)):
        if view["dtype"] not in _DTYPES:
            raise FormatError(f"{path}: tensor {name} has dtype {view['dtype']}, not one of "
                              f"{sorted(_DTYPES)}")
        tensors[name] = np.frombuffer(view["data"], _DTYPES[view["dtype"]]).reshape(view["shape"])
    return tensors


def read(directory):
    """{name: array} of a checkpoint directory: the index's shards, or model.safetensors."""
    index_path = fs.join(directory, INDEX_FILE)
    if fs.isfile(index_path):
        weight_map = json.loads(fs.read_text(index_path)).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise FormatError(f"{index_path}: no weight_map")
        tensors = {}
        for file in sorted(set(weight_map.values())):
            path = fs.join(directory, file)
            if not fs.isfile(path):
                raise FormatError(f"{index_path} names {file}, which does not exist")
            part = _read_file(path)
            listed = {n for n, f in weight_map.items() if f == file}
            if set(part) != listed:
                raise FormatError(f"{path}: holds {sorted(set(part) ^ listed)[:4]} contrary to "
                                  f"{INDEX_FILE}")
            tensors.update(part)
        return tensors
    path = fs.join(directory, SINGLE_FILE)
    if not fs.isfile(path):
        raise FileNotFoundError(f"{directory}: neither {SINGLE_FILE} nor {INDEX_FILE} exists")
    return _read_file(path)
