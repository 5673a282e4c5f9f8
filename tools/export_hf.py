"""Exports the newest checkpoint of a dlmjax run directory in the study's released format
(HuggingFace, model_type "gidd"), so the study's remote code and AutoModelForCausalLM load it.

  python tools/export_hf.py --workdir=runs/tiny_cpu --out=hf/tiny_cpu
  python tools/export_hf.py --workdir=gs://bucket/runs/x --out=gs://bucket/hf/x --dtype=bfloat16

Writes config.json, model.safetensors (sharded beyond --max_shard_gb with
model.safetensors.index.json), generation_config.json (the run's sample.* settings) and the
tokenizer files. The run's config comes from workdir/config.json. Bad input exits with code 2.
"""

import json

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory to export.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output directory (local or gs://).", required=True)
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"],
                           "Precision of the exported weights.")
_MAX_SHARD_GB = flags.DEFINE_float("max_shard_gb", 5.0, "Largest safetensors file, in GB (1e9).")
_REMOTE_CODE = flags.DEFINE_string(
    "remote_code_repo", "dvruette/gidd-unif-3b",
    "Hub repository whose modeling_gidd.py auto_map points at ('' = ship it yourself).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing export in --out.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from dlmjax.hf import export_checkpoint

    result = export_checkpoint(_WORKDIR.value, _OUT.value, dtype=_DTYPE.value,
                               max_shard_bytes=int(_MAX_SHARD_GB.value * 1e9),
                               remote_code_repo=_REMOTE_CODE.value, overwrite=_OVERWRITE.value)
    print(json.dumps(result, indent=2))


def run():
    from dlmjax import errors

    errors.run_absl(main)  # bad input (ConfigError, FormatError, a file): one line, exit 2


if __name__ == "__main__":
    run()
