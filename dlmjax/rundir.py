"""The run directory: what a workdir holds, and the training config it was made with.

    workdir/config.json        the experiment config (ml_collections JSON), the run's identity
    workdir/metrics.jsonl      one JSON object per logged step
    workdir/checkpoints/<N>/   orbax checkpoints
    workdir/tensorboard/       event files
    workdir/samples_step<N>.txt, eval_step<N>.json

Local or `gs://` (every access goes through dlmjax.fs).
"""

import json

import ml_collections

from dlmjax import fs

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"


def config_path(workdir: str) -> str:
    return fs.join(workdir, CONFIG_FILE)


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run in `workdir` was trained with (FileNotFoundError naming the file)."""
    path = config_path(workdir)
    if not fs.isfile(path):
        raise FileNotFoundError(f"{path}: no such file; is {workdir} a dlmjax run directory?")
    try:
        return ml_collections.ConfigDict(json.loads(fs.read_text(path)))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
