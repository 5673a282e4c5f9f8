"""Imports a checkpoint in the study's released format (HuggingFace, model_type "gidd") into a
new dlmjax run directory, local or gs://.

  python tools/import_hf.py --source=hf/gidd-unif-3b --workdir=runs/gidd-unif-3b
  python tools/import_hf.py --source=hf/gidd-mask-3b --workdir=gs://bucket/runs/gidd-mask-3b \
      --config=experiments/base.py --config.data.source=tfds --config.data.tfds_name=...

The source directory holds config.json, model.safetensors (or shards with their index),
tokenizer.json and optionally generation_config.json. Forward-pass settings come from
config.json; everything else (data, training, evaluation, mesh) from --config and its
overrides. Afterwards `python -m dlmjax.main --mode=eval --workdir=...` (and sample, train)
work on the run directory. Bad input exits with code 2 and a message naming the key or file.
"""

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # experiment files import `experiments.base`

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(ROOT, "experiments", "base.py"),
    "Experiment whose data/train/eval/mesh settings the imported run uses.")
_SOURCE = flags.DEFINE_string("source", None, "Checkpoint directory in the released format.",
                              required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "New run directory (local or gs://).",
                               required=True)
_NAME = flags.DEFINE_string("name", None, "Experiment name (default: the source's basename).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from dlmjax.hf import import_checkpoint

    report = import_checkpoint(_SOURCE.value, _WORKDIR.value, _CONFIG.value, name=_NAME.value)
    print(json.dumps(report, indent=2))
    print(f"imported into {_WORKDIR.value}; next: python -m dlmjax.main --mode=eval "
          f"--workdir={_WORKDIR.value}")


def run():
    from dlmjax import errors

    errors.run_absl(main)  # bad input (ConfigError, FormatError, a file): one line, exit 2


if __name__ == "__main__":
    run()
