"""Orbax checkpoints of a run: train state (params, optimizer, step, RNG) and the data iterator.

Saves are asynchronous; `latest_step` only ever reports finalised checkpoints, so a run killed
mid-save resumes from the previous one. Restoring takes an abstract state whose leaves carry the
target shardings, which is also how a run moves to a different mesh.
"""

import grain
import jax
import orbax.checkpoint as ocp


def make_manager(directory, *, keep=3, async_save=True) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    return ocp.CheckpointManager(directory, options=options)


def save(manager, step, state, data_iterator=None, *, force=False) -> bool:
    args = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
        args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return manager.save(step, args=ocp.args.Composite(**args), force=force)


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


def abstract_like(tree, shardings):
    """ShapeDtypeStructs carrying `shardings`: the restore target for a (possibly new) mesh."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)
