"""Orbax checkpoints of a run: train state (params, optimizer, step, RNG) and the data iterator.

Saves are asynchronous; `latest_step` only ever reports finalised checkpoints, so a run killed
mid-save resumes from the previous one. Restoring takes an abstract state whose leaves carry the
target shardings, which is also how a run moves to a different mesh.

Every checkpoint is verified: per-leaf checksums of the saved state (two wrapping uint32 sums of
its bit patterns, computed on the devices) go to <step>/checksums.json once orbax has committed
the step, and `restore_verified` recomputes them after reading. An unreadable or mismatching
checkpoint is skipped (one line naming the problem) for the newest good one. A step without the
file (older runs, an import, a kill between commit and record) is restored as unverified.
The metric sums since the last record (dlmjax/metrics_log.py) are an item of the checkpoint,
<step>/log_interval, committed with the state so that a kill can never separate them: a resumed
run's next record matches an uninterrupted run's.
"""

import json

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging

from dlmjax import fs

CHECKSUM_FILE = "checksums.json"
LOG_INTERVAL_ITEM = "log_interval"
QUARANTINE_DIR = "checkpoints_corrupt"  # beside checkpoints/: unusable steps moved out of the way
_TMP_MARKER = ".orbax-checkpoint-tmp"
# manager attribute: [(step, checksums)] saved but not yet recorded
_PENDING = "_dlmjax_pending_records"


class CheckpointError(RuntimeError):
    """No checkpoint of a run could be restored; the message says why for each."""


def make_manager(directory, *, keep=3, async_save=True, cleanup=False) -> ocp.CheckpointManager:
    """`cleanup`: remove temporary directories of saves that never finished (the owner only)."""
    if cleanup:
        for name in fs.listdir(directory):
            if _TMP_MARKER in name:
                logging.warning("removing %s: the unfinished save of an earlier attempt",
                                fs.join(directory, name))
                fs.remove(fs.join(directory, name))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    return ocp.CheckpointManager(directory, options=options)


def _leaf_checksum(x):
    """[Σ w, Σ w·(2i+1)] mod 2³² over the leaf's words w (bit patterns), i their flat index."""
    x = jnp.asarray(x)
    size = x.dtype.itemsize
    if x.dtype == jnp.bool_:
        words = x.astype(jnp.uint32)
    elif size == 8:
        words = jax.lax.bitcast_convert_type(x, jnp.uint32)  # trailing axis of 2
    else:
        words = jax.lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16,
                                                 4: jnp.uint32}[size]).astype(jnp.uint32)
    index = jnp.zeros(words.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(words.ndim)):  # no reshape: leaves stay sharded as they are
        index = index + jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis) * jnp.uint32(
            stride % 2**32)
        stride *= words.shape[axis]
    return jnp.stack([jnp.sum(words, dtype=jnp.uint32),
                      jnp.sum(words * (2 * index + 1), dtype=jnp.uint32)])


_checksums_jit = jax.jit(lambda leaves: [_leaf_checksum(x) for x in leaves])


def checksums(state) -> dict:
    """{leaf path: [two uint32 sums]} of a (possibly sharded) state."""
    paths, _ = jax.tree_util.tree_flatten_with_path(state)
    sums = _checksums_jit([x for _, x in paths])
    return {jax.tree_util.keystr(p): [int(v) for v in jax.device_get(s)]
            for (p, _), s in zip(paths, sums)}


def save(manager, step, state, data_iterator=None, *, force=False, log_interval=None) -> bool:
    """Starts an async save; log_interval: JSON-able metric sums committed with the step."""
    finish(manager, wait=False)
    sums = checksums(state)  # before the save returns: the next step donates `state`
    args = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
        args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    if log_interval is not None:
        args[LOG_INTERVAL_ITEM] = ocp.args.JsonSave(log_interval)
    saved = manager.save(step, args=ocp.args.Composite(**args), force=force)
    if saved:
        setattr(manager, _PENDING, [*getattr(manager, _PENDING, []), (step, sums)])
    return saved


def finish(manager, *, wait=True) -> None:
    """Records the checksums of every save orbax has committed; `wait` for the one in flight.
    Call before exiting (every exit path): an abandoned async save is lost."""
    pending = getattr(manager, _PENDING, [])
    if wait or pending:
        manager.wait_until_finished()
    setattr(manager, _PENDING, [])
    for step, sums in pending:
        if jax.process_index() == 0 and fs.isdir(_step_dir(manager, step)):
            fs.write_text_atomic(fs.join(_step_dir(manager, step), CHECKSUM_FILE),
                                 json.dumps({"step": step, "leaves": sums}) + "\n")


def read_log_interval(manager, step):
    """The metric sums saved with `step`, or None (older runs, an import): then the next record
    averages from the resume."""
    if not (manager.directory / str(step) / LOG_INTERVAL_ITEM).exists():
        return None
    args = ocp.args.Composite(**{LOG_INTERVAL_ITEM: ocp.args.JsonRestore()})
    return manager.restore(step, args=args)[LOG_INTERVAL_ITEM]


def _step_dir(manager, step):
    return str(manager.directory / str(step))


def restore(manager, abstract_state, data_iterator=None, step=None):
    """State at `step` (default: latest) laid out as `abstract_state`; the iterator in place.

    A checkpoint without a data iterator (one written by dlmjax.hf's import) leaves the
    iterator at the start of the data.
    """
    step = manager.latest_step() if step is None else step
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None and (manager.directory / str(step) / "data").exists():
        args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = manager.restore(step, args=ocp.args.Composite(**args))
    return restored["state"]


def verify(manager, step, state):
    """None if `state` matches the checksums saved with `step`, "unverified" without any, else
    what differs."""
    path = fs.join(_step_dir(manager, step), CHECKSUM_FILE)
    if not fs.isfile(path):
        return "unverified"
    try:
        saved = json.loads(fs.read_text(path))["leaves"]
    except (ValueError, KeyError) as e:
        return f"{path} is unreadable ({e})"
    got = checksums(state)
    bad = [k for k in saved if got.get(k) != saved[k]]
    if set(saved) != set(got):
        return f"its leaves {sorted(set(saved) ^ set(got))} differ from the model's"
    if bad:
        return f"checksum mismatch in {', '.join(bad[:3])}{' …' if len(bad) > 3 else ''}"
    return None


def _short(error) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    return f"{type(error).__name__}: {text[:200]}"


def restore_verified(manager, abstract_state, data_iterator=None, *, quarantine=False):
    """(state, step) of the newest checkpoint that reads and matches its checksums.

    Unusable newer ones are skipped with one warning each; with `quarantine` (the run's owner)
    they are moved to QUARANTINE_DIR beside the checkpoints once an older one has restored, so
    training can save those steps again (nothing moves when none restores: then the fault is
    likelier the config than the files). CheckpointError when none is usable.
    """
    problems, bad = [], []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            state = restore(manager, abstract_state, data_iterator, step)
            problem = verify(manager, step, state)
        except Exception as e:  # orbax/tensorstore raise many types for a damaged checkpoint
            problem = f"unreadable ({_short(e)})"
        if problem in (None, "unverified"):
            if problem:
                logging.info("checkpoint %s has no %s (saved before verification or "
                             "interrupted before it was recorded): restored unverified",
                             _step_dir(manager, step), CHECKSUM_FILE)
            if bad and quarantine:
                for b in bad:
                    _move_aside(manager, b)
                manager.reload()
            return state, step
        logging.warning("checkpoint %s is unusable: %s; falling back to an older one",
                        _step_dir(manager, step), problem)
        problems.append(f"step {step}: {problem}")
        bad.append(step)
    raise CheckpointError(f"no usable checkpoint in {manager.directory}: "
                          + "; ".join(problems))


def _move_aside(manager, step):
    source = _step_dir(manager, step)
    target_dir = fs.join(str(fs.path(source).parent.parent), QUARANTINE_DIR)
    fs.makedirs(target_dir)
    target = fs.join(target_dir, str(step))
    suffix = 1
    while fs.exists(target):
        target, suffix = fs.join(target_dir, f"{step}.{suffix}"), suffix + 1
    if jax.process_index() == 0:
        fs.path(source).rename(fs.path(target))
        logging.warning("moved %s to %s", source, target)


def newest_verified(manager):
    """The newest step whose checksums were recorded at save time (None if there is none)."""
    for step in sorted(manager.all_steps(), reverse=True):
        if fs.isfile(fs.join(_step_dir(manager, step), CHECKSUM_FILE)):
            return step
    return None


def abstract_like(tree, shardings):
    """ShapeDtypeStructs carrying `shardings`: the restore target for a (possibly new) mesh."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)
