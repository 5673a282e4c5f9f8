"""The run directory: what a workdir holds, and the training config it was made with.

    workdir/config.json        the experiment config (ml_collections JSON), the run's identity
    workdir/config_changes.jsonl  changes accepted on resume (claim_config)
    workdir/lock.json          the process that owns the run directory (dlmjax.runlock)
    workdir/metrics.jsonl      one JSON object per logged step
    workdir/checkpoints/<N>/   orbax checkpoints, with checksums.json (dlmjax.checkpoint)
    workdir/checkpoints_corrupt/  checkpoints that failed verification, moved out of the way
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


def get_config(workdir: str) -> ml_collections.ConfigDict:
    """This file doubles as an experiment file: `--config=dlmjax/rundir.py:WORKDIR` loads the
    run's own config (what `--workdir` alone means for main, see `argv_with_run_config`)."""
    return load_config(workdir)


def argv_with_run_config(argv):
    """argv with `--config=<this file>:WORKDIR` in front when --workdir is given without --config,
    so `--mode=eval|sample|train --workdir=W [--config.a.b=v ...]` uses W's config.json."""
    args = list(argv[1:])
    if any(a == "--config" or a.startswith("--config=") for a in args):
        return list(argv)
    workdir = None
    for i, a in enumerate(args):
        if a.startswith("--workdir="):
            workdir = a.split("=", 1)[1]
        elif a == "--workdir" and i + 1 < len(args):
            workdir = args[i + 1]
    if not workdir or "--mode=describe" in args or not fs.exists(fs.join(workdir, CONFIG_FILE)):
        return list(argv)  # main then asks for --config
    return [argv[0], f"--config={__file__}:{workdir}", *args]


# Keys a resumed run may change freely: how long it runs, how often it logs, evaluates and saves,
# how it samples and evaluates afterwards, where and how it executes (mesh, gradient accumulation,
# rematerialisation, attention kernel, loss chunking: same mathematics, other memory and speed).
# Everything else defines the experiment.
ALLOWED_CHANGES = ("name", "train.steps", "train.tokens", "train.log_every", "train.eval_every",
                   "train.eval_batches", "train.checkpoint_every", "train.keep_checkpoints",
                   "train.peak_flops_per_device", "train.wandb_", "train.profile_steps",
                   "train.microbatches", "model.remat", "model.attention", "noise.chunk_size",
                   "sample.", "eval.", "mesh.", "data.cache_dir")
CHANGES_FILE = "config_changes.jsonl"


def flatten(tree, prefix=""):
    """{"a.b": leaf} of a nested dict (JSON-decoded config)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _allowed(key):
    return any(key == a or (a.endswith((".", "_")) and key.startswith(a))
               for a in ALLOWED_CHANGES)


def config_hash(config) -> str:
    """SHA-256 of the config's canonical JSON (sorted keys): names the experiment a result is of."""
    import hashlib

    text = json.dumps(json.loads(config.to_json()), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def config_differences(old: dict, new: dict) -> dict:
    """{key: (old, new)} of the leaves that differ; keys on one side only are left out (a newer
    dlmjax adds keys with their defaults to old run directories)."""
    a, b = flatten(old), flatten(new)
    return {k: (a[k], b[k]) for k in sorted(a.keys() & b.keys()) if a[k] != b[k]}


def has_checkpoint(workdir: str) -> bool:
    return any(name.isdigit() for name in fs.listdir(fs.join(workdir, CHECKPOINT_DIR)))


def claim_config(workdir, config, *, allow_change=False, write=True):
    """Makes config.json the run's identity: written atomically while nothing is trained under
    it (no checkpoint yet); on a resume the new config is compared with it first. A change
    outside ALLOWED_CHANGES raises ConfigError listing the keys and leaves config.json as it
    was, unless `allow_change`; an accepted change rewrites config.json and is appended to
    config_changes.jsonl. Returns {key: (old, new)}."""
    from dlmjax.config import ConfigError

    path = config_path(workdir)
    text = config.to_json(indent=2)
    if not fs.isfile(path) or not has_checkpoint(workdir):  # nothing trained under it yet
        if write:
            fs.write_text_atomic(path, text)
        return {}
    changes = config_differences(json.loads(load_config(workdir).to_json()), json.loads(text))
    if not changes:
        return {}
    refused = [k for k in changes if not _allowed(k)]
    if refused and not allow_change:
        listed = "; ".join(f"{k}: {changes[k][0]!r} -> {changes[k][1]!r}" for k in refused)
        raise ConfigError(f"{path}: this run was started with another config; refusing to resume "
                          f"with changed {listed}. Use a new --workdir, or pass "
                          f"--allow_config_change to continue with the change (recorded in "
                          f"{CHANGES_FILE})")
    if write:
        import time

        changes_path = fs.join(workdir, CHANGES_FILE)
        before = fs.read_text(changes_path) if fs.isfile(changes_path) else ""
        record = {"time": time.time(), "forced": bool(refused),
                  "changes": {k: {"old": o, "new": n} for k, (o, n) in changes.items()}}
        fs.write_text_atomic(changes_path, before + json.dumps(record) + "\n")
        fs.write_text_atomic(path, text)
    return changes
