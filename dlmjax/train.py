"""Train state, the pure train step, and the training loop with checkpoints and metrics.

The state is a plain dict {params, opt_state, step, rng} so orbax saves and restores it as is.
The per-step key is fold_in(rng, step): a resumed run draws exactly the noise it would have.
"""

import functools
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from dlmjax import checkpoint, fs, objectives, optim, parallel, runlock, trackers
from dlmjax import model as model_lib
from dlmjax.config import Run
from dlmjax.metrics_log import LogInterval, MetricsWriter


class NonFiniteLossError(RuntimeError):
    pass


def make_optimizer(run: Run) -> optax.GradientTransformation:
    return optim.optimizer_from_hparams(run.optimizer)


def init_state(key, run: Run, optimizer):
    params = model_lib.init_params(key, run.model)
    return {"params": params, "opt_state": optimizer.init(params),
            "step": jnp.zeros([], jnp.int32), "rng": jax.random.key_data(key)}


def train_step(state, x_BxL, *, run: Run, optimizer, logits_fn=None):
    """One optimizer step on a global batch, accumulated over `run.microbatches` passes.

    `elbo` comes from the ELBO rows only (NaN in a step that has none; `elbo_tokens` counts
    them) and `elbo_all_rows` from every row; see dlmjax/objectives.py. Records average these
    over the steps between them (dlmjax/metrics_log.py). logits_fn: see
    objectives.diffusion_loss.
    """
    loss_fn = objectives.loss_fn_for(run, logits_fn=logits_fn)
    key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    micro = run.microbatches
    x_MxBxL = x_BxL.reshape(micro, x_BxL.shape[0] // micro, x_BxL.shape[1])
    grad_fn = jax.grad(loss_fn, has_aux=True)

    def accumulate(carry, inputs):
        grads_acc, stats_acc = carry
        index, x_micro = inputs
        grads, stats = grad_fn(state["params"], x_micro, jax.random.fold_in(key, index))
        return (jax.tree.map(jnp.add, grads_acc, grads),
                jax.tree.map(jnp.add, stats_acc, stats)), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state["params"])
    zero_stats = {k: jnp.zeros([], jnp.float32) for k in objectives.STAT_KEYS}
    (grads, stats), _ = jax.lax.scan(accumulate, (zeros, zero_stats),
                                     (jnp.arange(micro), x_MxBxL))
    # "sum": Σ over each sequence's tokens, averaged over sequences; "mean": per noised token.
    denom = (x_BxL.shape[0] if run.config.noise.loss_aggregation == "sum"
             else jnp.maximum(stats["tokens"], 1.0))
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    tokens = jnp.maximum(stats["tokens"], 1.0)
    elbo_tokens = stats["elbo_tokens"]
    metrics = {"loss": stats["loss_sum"] / tokens,
               "elbo": jnp.where(elbo_tokens > 0, stats["elbo_sum"] / jnp.maximum(elbo_tokens, 1.0),
                                 jnp.nan),
               "elbo_tokens": elbo_tokens,
               "elbo_all_rows": stats["elbo_all_sum"] / tokens,
               "grad_norm": optax.global_norm(grads),
               "lr": run.optimizer.lr * optim.wsd_schedule(
                   total_steps=run.steps, warmup_steps=run.optimizer.warmup_steps,
                   cooldown_fraction=run.optimizer.cooldown_fraction)(state["step"])}
    new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1,
                 "rng": state["rng"]}
    return new_state, metrics


def eval_step(params, x_BxL, key, *, run: Run, logits_fn=None):
    """Σ ELBO and noised-token count of one held-out batch (Monte-Carlo λ, fixed key), with
    one λ per sequence and no prompt in every row, so that it is a true ELBO."""
    _, stats = objectives.elbo_fn_for(run, logits_fn=logits_fn)(params, x_BxL, key)
    return stats["elbo_sum"], stats["elbo_tokens"]


@functools.lru_cache(maxsize=1)
def measured_matmul_flops() -> float:
    """FLOP/s of one 2048³ float32 matmul on the first device: the MFU ceiling when none is set."""
    a = jnp.ones((2048, 2048), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * 2048**3 / best


class Shardings:
    """Every sharding of a run, computed once from the mesh and the model's logical axes."""

    def __init__(self, run: Run, mesh, optimizer):
        strategy = run.config.mesh.strategy
        self.mesh = mesh
        self.params = parallel.param_shardings(run.model, mesh, strategy)
        abstract = model_lib.abstract_params(run.model)
        replicated = parallel.replicated(mesh)
        self.state = {"params": self.params,
                      "opt_state": parallel.opt_state_shardings(optimizer, abstract, self.params,
                                                                mesh),
                      "step": replicated, "rng": replicated}
        self.batch = parallel.batch_sharding(mesh)
        self.replicated = replicated


def compile_train_step(run: Run, shardings: Shardings, optimizer):
    step = functools.partial(train_step, run=run, optimizer=optimizer)
    return jax.jit(step, in_shardings=(shardings.state, shardings.batch),
                   out_shardings=(shardings.state, shardings.replicated), donate_argnums=0)


def abstract_state(run: Run, shardings: Shardings, optimizer):
    shapes = jax.eval_shape(functools.partial(init_state, run=run, optimizer=optimizer),
                            jax.random.key(0))
    return checkpoint.abstract_like(shapes, shardings.state)


class _Preemption:
    """Turns SIGTERM and SIGINT (Ctrl-C) into a flag the loop polls, so the step in flight
    finishes and is saved. A second SIGINT aborts at once (KeyboardInterrupt); the in-flight
    save is still waited for on the way out."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = None  # name of the signal received
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame):
        del frame
        if self.requested and signum == signal.SIGINT:
            self.restore()
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: aborting")
        self.requested = signal.Signals(signum).name
        logging.warning("%s: stopping after this step (saving a checkpoint); Ctrl-C again aborts",
                        self.requested)

    def restore(self):
        for s, previous in self._previous.items():
            signal.signal(s, previous)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.restore()

    def agreed(self) -> bool:
        if jax.process_count() == 1:
            return bool(self.requested)
        flags = multihost_utils.process_allgather(np.array(bool(self.requested)))
        return bool(np.any(flags))


def _global_batch(local_tokens, sharding):
    return jax.make_array_from_process_local_data(sharding, np.asarray(local_tokens, np.int32))


def evaluate(params, eval_batches, run: Run, shardings: Shardings, eval_fn):
    """Held-out ELBO in nats per noised token, with the same λ draws at every evaluation."""
    key = jax.random.key(run.config.seed + 1)
    elbo_sum = tokens = 0.0
    for index, batch in enumerate(eval_batches):
        e, n = eval_fn(params, _global_batch(batch["tokens"], shardings.batch),
                       jax.random.fold_in(key, index))
        elbo_sum, tokens = elbo_sum + float(e), tokens + float(n)
    return elbo_sum / max(tokens, 1.0)


def _process_batch(run: Run) -> int:
    if run.batch_size % jax.process_count():
        raise ValueError(f"train.batch_size={run.batch_size} is not divisible by the "
                         f"{jax.process_count()} processes")
    return run.batch_size // jax.process_count()


def train(run: Run, workdir: str, *, progress=True):
    """Trains (or resumes) the run in `workdir`; returns the final train state.

    Checkpoints go to workdir/checkpoints, metrics to workdir/metrics.jsonl and TensorBoard.
    SIGTERM or SIGINT saves a checkpoint and returns early; a non-finite loss raises
    NonFiniteLossError without saving, so the newest checkpoint stays the last good one.
    Process 0 holds workdir/lock.json (dlmjax.runlock) throughout.
    """
    from dlmjax import data

    cfg = run.config
    mesh = parallel.make_mesh(**{k: run.mesh_shape[k] for k in ("data", "fsdp", "tensor")})
    optimizer = make_optimizer(run)
    shardings = Shardings(run, mesh, optimizer)
    local_batch = _process_batch(run)
    data_vocab = data.vocab_size_of(cfg.data)
    if data_vocab > run.model.vocab_size:
        raise ValueError(f"model.vocab_size={run.model.vocab_size} is smaller than the data's "
                         f"vocabulary of {data_vocab} (data.tokenizer / data.vocab_size)")
    iterator = data.make_train_iterator(cfg.data, seq_len=run.model.seq_len,
                                        batch_size=local_batch, seed=cfg.seed,
                                        process_index=jax.process_index(),
                                        process_count=jax.process_count())
    eval_batch = local_batch // run.microbatches
    eval_batches = data.make_eval_batches(cfg.data, seq_len=run.model.seq_len,
                                          batch_size=eval_batch, num_batches=cfg.train.eval_batches,
                                          process_index=jax.process_index(),
                                          process_count=jax.process_count())
    owner = jax.process_index() == 0
    if owner:
        runlock.acquire(workdir, "train")
    try:
        manager = checkpoint.make_manager(fs.join(fs.absolute(workdir), "checkpoints"),
                                          keep=cfg.train.keep_checkpoints, cleanup=owner)
        # Installed until the last save is written: a signal during compilation or the final
        # wait then means "stop after this step", never a kill halfway through a save.
        with _Preemption() as preemption:
            try:
                with parallel.sharding_context(mesh, cfg.mesh.strategy):
                    step_fn = compile_train_step(run, shardings, optimizer)
                    eval_fn = jax.jit(functools.partial(eval_step, run=run),
                                      in_shardings=(shardings.params, shardings.batch, None))
                    state = _initial_state(run, shardings, optimizer, manager, iterator, workdir)
                    state = _loop(run, state, step_fn, eval_fn, iterator, eval_batches, shardings,
                                  manager, workdir, progress, preemption)
            finally:  # every exit path: an abandoned async save would be lost
                checkpoint.finish(manager)
                manager.close()
    finally:
        if owner:
            runlock.release(workdir)
    return state


def _initial_state(run, shardings, optimizer, manager, iterator, workdir):
    """The newest verified checkpoint's state (falling back past unusable ones), or a fresh one."""
    if manager.latest_step() is None:
        init = jax.jit(functools.partial(init_state, run=run, optimizer=optimizer),
                       out_shardings=shardings.state)
        return init(jax.random.key(run.config.seed))
    state, step = checkpoint.restore_verified(manager, abstract_state(run, shardings, optimizer),
                                              iterator, quarantine=True)
    if step > run.steps:
        raise ValueError(f"train.steps={run.steps} is below the latest checkpoint (step {step} "
                         f"in {workdir}); raise train.steps to continue, or use a new --workdir")
    if step == run.steps:
        logging.warning("%s is already at train.steps=%d: nothing to train", workdir, step)
    else:
        logging.info("resumed from step %d in %s", step, workdir)
    return state


def _loop(run, state, step_fn, eval_fn, iterator, eval_batches, shardings, manager, workdir,
          progress, preemption):
    from tqdm import tqdm

    cfg = run.config.train
    start = int(state["step"])
    writer = MetricsWriter(workdir, start, trackers.make_trackers(run.config, workdir))
    profiler = trackers.StepProfiler(cfg.get("profile_steps", ""), workdir)
    peak = (cfg.peak_flops_per_device or measured_matmul_flops()) * jax.device_count()
    bar = tqdm(total=run.steps, initial=start, desc=run.config.name, unit="step",
               disable=not progress or jax.process_index() != 0, dynamic_ncols=True)
    last_time, last_step, pending = time.perf_counter(), start, []
    interval = LogInterval(checkpoint.read_log_interval(manager, start) if start else None)
    try:
        for step in range(start + 1, run.steps + 1):
            profiler.before_step(step, state)
            x = _global_batch(next(iterator)["tokens"], shardings.batch)
            state, metrics = step_fn(state, x)
            pending.append(metrics)
            bar.update(1)
            is_last = step == run.steps
            stop = preemption.agreed()
            if step % cfg.log_every == 0 or is_last or stop or step % cfg.checkpoint_every == 0:
                # Checking finiteness before any save keeps the newest checkpoint a good one.
                host = jax.device_get(pending)
                pending = []
                # elbo is NaN, not bad, in a step without ELBO rows (see train_step).
                bad = [m for m in host
                       if not all(np.isfinite(v) for k, v in m.items() if k != "elbo")]
                if bad:
                    checkpoint.finish(manager)
                    good = checkpoint.newest_verified(manager)
                    raise NonFiniteLossError(
                        f"non-finite loss or gradient by step {step} ({bad[0]}); stopped without "
                        f"saving. The last good checkpoint is step {good} in {workdir} "
                        f"(verified by its checksums).")
                for m in host:
                    interval.add(m)
                if step % cfg.log_every == 0 or is_last:
                    now = time.perf_counter()
                    tokens_per_s = (step - last_step) * run.tokens_per_step / (now - last_time)
                    record = {"step": step, "tokens": step * run.tokens_per_step,
                              "flops": step * run.tokens_per_step * run.flops_per_token,
                              **interval.record(),
                              "tokens_per_s": tokens_per_s,
                              "flops_per_s": tokens_per_s * run.flops_per_token,
                              "mfu": tokens_per_s * run.flops_per_token / peak}
                    if is_last or (cfg.eval_every and step % cfg.eval_every == 0):
                        record["eval_elbo"] = evaluate(state["params"], eval_batches, run,
                                                       shardings, eval_fn)
                    writer.write(record)
                    bar.set_postfix(loss=f"{record['loss']:.3f}", elbo=f"{record['elbo']:.3f}")
                    last_time, last_step = time.perf_counter(), step
            if step % cfg.checkpoint_every == 0 or is_last or stop:
                checkpoint.save(manager, step, state, iterator, force=True,
                                log_interval=interval.state())
            if stop:
                logging.warning("%s: saved step %d and stopped", preemption.requested or
                                "preemption", step)
                break
    finally:
        bar.close()
        profiler.close()
        writer.close()
    return state
