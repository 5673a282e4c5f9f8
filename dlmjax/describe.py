"""`--mode=describe`: sizes, FLOPs and compiled per-device memory of a run, nothing allocated."""

import math
import time

import jax

from dlmjax import model as model_lib
from dlmjax import parallel, train
from dlmjax.config import Run
from dlmjax.scaling import flops


def compiled_memory(run: Run):
    """AOT-compiles the train step on the configured mesh and reads its memory analysis."""
    mesh = parallel.make_mesh(**{k: run.mesh_shape[k] for k in ("data", "fsdp", "tensor")})
    optimizer = train.make_optimizer(run)
    shardings = train.Shardings(run, mesh, optimizer)
    state = train.abstract_state(run, shardings, optimizer)
    batch = jax.ShapeDtypeStruct((run.batch_size, run.model.seq_len), jax.numpy.int32,
                                 sharding=shardings.batch)
    start = time.perf_counter()
    with parallel.sharding_context(mesh, run.config.mesh.strategy):
        compiled = train.compile_train_step(run, shardings, optimizer).lower(state, batch).compile()
    analysis = compiled.memory_analysis()
    per_device = {
        "argument_bytes": analysis.argument_size_in_bytes,
        "output_bytes": analysis.output_size_in_bytes,
        "temp_bytes": analysis.temp_size_in_bytes,
        "alias_bytes": analysis.alias_size_in_bytes,
    }
    # Donated state aliases the outputs, so arguments + temporaries bound the live bytes.
    per_device["total_bytes"] = (per_device["argument_bytes"] + per_device["output_bytes"]
                                 - per_device["alias_bytes"] + per_device["temp_bytes"])
    per_device["total_gib"] = per_device["total_bytes"] / 2**30
    return per_device, time.perf_counter() - start


def describe(run: Run) -> dict:
    m = run.model
    abstract = model_lib.abstract_params(m)
    total_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract))
    memory, compile_s = compiled_memory(run)
    return {
        "name": run.config.name,
        "objective": run.config.objective,
        "noise": run.config.noise.type,
        "model": {"num_layers": m.num_layers, "d_model": m.d_model, "heads": m.heads,
                  "head_dim": m.head_dim, "vocab_size": m.vocab_size, "seq_len": m.seq_len,
                  "attention": m.attention, "remat": m.remat, "dtype": m.dtype},
        "non_embedding_params": flops.non_embedding_params(m.num_layers, m.d_model),
        "embedding_params": flops.embedding_params(m.vocab_size, m.d_model),
        "total_params": total_params,
        "flops_per_token": {"deepseek": run.flops_per_token, "6p": run.flops_per_token_6p},
        "batch_sequences": run.batch_size,
        "microbatches": run.microbatches,
        "steps": run.steps,
        "tokens": run.total_tokens,
        "training_flops": {"deepseek": run.flops_per_token * run.total_tokens,
                           "6p": run.flops_per_token_6p * run.total_tokens},
        "learning_rate": run.optimizer.lr,
        "mesh": {**run.mesh_shape, "strategy": run.config.mesh.strategy,
                 "devices": jax.device_count(), "platform": jax.default_backend()},
        "per_device_memory": memory,
        "compile_seconds": compile_s,
    }
