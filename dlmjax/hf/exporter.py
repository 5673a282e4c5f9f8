"""A dlmjax run directory → a directory in the released format (docs/interop.md).

Writes config.json (model_type "gidd", every forward key, auto_map pointing at the study's
remote code), model.safetensors (sharded beyond `max_shard_bytes`, with the index),
generation_config.json (the run's `sample.*` settings), and the tokenizer files. Layers are
unstacked from the scan into per-layer names.
"""

import json

import jax
import ml_dtypes
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from dlmjax import config as config_lib
from dlmjax import evaluation, fs, rundir
from dlmjax.hf import format as format_lib
from dlmjax.hf import generation, safetensors_io, state_dict, tokenizer_files

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def _to_host(params):
    """NumPy copies of (possibly sharded, possibly multi-process) parameters."""
    if jax.process_count() == 1:
        return jax.device_get(params)
    return multihost_utils.process_allgather(params, tiled=True)


def _remove_stale_shards(out_dir, keep):
    for name in fs.listdir(out_dir):
        if name.startswith("model") and name.endswith((".safetensors", ".index.json")) and (
                name not in keep):
            fs.remove(fs.join(out_dir, name))


def _check_out_dir(out_dir, overwrite):
    if fs.isfile(fs.join(out_dir, "config.json")) and not overwrite:
        raise FileExistsError(f"{out_dir}/config.json exists; pass overwrite=True (--overwrite) "
                              f"to replace the export")


def export_params(params, run, out_dir, *, tokenizer_text=None, dtype="float32",
                  max_shard_bytes=safetensors_io.DEFAULT_MAX_SHARD_BYTES,
                  remote_code_repo=format_lib.DEFAULT_REMOTE_CODE_REPO, overwrite=False):
    """Writes host (NumPy) parameters of `run` (a dlmjax.config.Run) in the format; returns the
    file names. `tokenizer_text`: the tokenizer.json to ship, if any."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}; expected one of {sorted(DTYPES)}")
    config = run.config
    format_lib.check_exportable(run.model, objective=config.objective,
                                noise_scale=config.noise.scale)
    _check_out_dir(out_dir, overwrite)
    fs.makedirs(out_dir)
    tensors = state_dict.to_state_dict(params, run.model, dtype=DTYPES[dtype])
    files = safetensors_io.write(out_dir, tensors, max_shard_bytes=max_shard_bytes)
    _remove_stale_shards(out_dir, files)
    texts = {"config.json": format_lib.hf_config(run.model, shift=run.shift, torch_dtype=dtype,
                                                 remote_code_repo=remote_code_repo),
             generation.FILE: generation.generation_config(config.sample, run.model.seq_len)}
    texts = {name: json.dumps(value, indent=2) + "\n" for name, value in texts.items()}
    if tokenizer_text is None:
        logging.warning("data.source=%r has no tokenizer; the export has none",
                        config.data.source)
    else:
        texts.update(tokenizer_files.export_files(tokenizer_text, run.model.seq_len))
    for name, text in texts.items():
        fs.write_text_atomic(fs.join(out_dir, name), text)
    logging.info("exported to %s: %d tensors in %d file(s)", out_dir, len(tensors), len(files))
    return sorted([*files, *texts])


def export_checkpoint(workdir, out_dir, *, dtype="float32",
                      max_shard_bytes=safetensors_io.DEFAULT_MAX_SHARD_BYTES,
                      remote_code_repo=format_lib.DEFAULT_REMOTE_CODE_REPO, overwrite=False):
    """Exports the newest checkpoint of `workdir` (config from workdir/config.json); returns
    {"step", "files"}."""
    config = rundir.load_config(workdir)
    run = config_lib.derive(config, jax.device_count())
    format_lib.check_exportable(run.model, objective=config.objective,
                                noise_scale=config.noise.scale)
    _check_out_dir(out_dir, overwrite)
    params, step = evaluation.restore_params(run, workdir)
    host = _to_host(params)
    del params
    if jax.process_index() != 0:
        return {"step": step, "files": []}
    files = export_params(host, run, out_dir,
                          tokenizer_text=tokenizer_files.run_tokenizer_text(config, workdir),
                          dtype=dtype, max_shard_bytes=max_shard_bytes,
                          remote_code_repo=remote_code_repo, overwrite=True)
    logging.info("exported step %d of %s", step, workdir)
    return {"step": step, "files": files}
