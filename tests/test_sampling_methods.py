"""Threshold, entropy-bound and remasking samplers, greedy float64, and the clean-prefix cache."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_sampling import MASK, P_V, Recorder, V, _mixing_logits_fn, chi_square_pvalue, oracle

from dlmjax import config as config_lib
from dlmjax.diffusion import NOISE_SHIFTS
from dlmjax.diffusion import sampling as S

# An oracle with a restricted support: ids 0, 2, 5, 9 and 13 only (the mask has mass 0).
SUPPORT = np.array([0, 2, 5, 9, 13])
Q_V = np.zeros(V)
Q_V[SUPPORT] = [0.4, 0.25, 0.15, 0.12, 0.08]
LOG_Q_V = jnp.asarray(np.where(Q_V > 0, np.log(np.maximum(Q_V, 1e-30)), -1e9), jnp.float32)


def sparse_oracle(z_BxL, *unused):
    return jnp.broadcast_to(LOG_Q_V, (*z_BxL.shape, V))


@pytest.mark.parametrize("noise", ["masked", "balanced"])
def test_greedy_adaptive_runs_in_float64_and_float32(noise):
    options = dict(vocab_size=V, mask_id=MASK, shift=NOISE_SHIFTS[noise], num_steps=8,
                   method="adaptive", temperature=0.0)
    f64 = S.sample(jax.random.key(0), oracle, 4, 8, float64=True, **options)
    f32 = S.sample(jax.random.key(0), oracle, 4, 8, float64=False, **options)
    np.testing.assert_array_equal(np.asarray(f64), np.argmax(P_V))
    np.testing.assert_array_equal(np.asarray(f64), np.asarray(f32))


@pytest.mark.parametrize("noise", ["masked", "balanced"])
@pytest.mark.parametrize("num_steps", [8, 64, 512])
def test_remask_samples_follow_the_data_distribution(noise, num_steps):
    """Every σ schedule, with heavy remasking (η = 0.5), keeps the marginals exact."""
    for i, schedule in enumerate(S.REMASK_SCHEDULES):
        tokens = S.sample(jax.random.key(100 * num_steps + i), oracle, 32, 64, vocab_size=V,
                          mask_id=MASK, shift=NOISE_SHIFTS[noise], num_steps=num_steps,
                          method="remask", remask_schedule=schedule, remask_eta=0.5)
        assert chi_square_pvalue(tokens, P_V) > 1e-3, schedule


def test_remask_returns_decoded_tokens_to_the_mask():
    recorder = Recorder(oracle)
    S.sample(jax.random.key(1), recorder, 8, 16, vocab_size=V, mask_id=MASK,
             shift=NOISE_SHIFTS["masked"], num_steps=16, method="remask", remask_eta=0.5,
             reuse_logits=False)
    masks = [(state == MASK) for state in recorder.inputs]
    remasked = sum(int(np.sum(after & ~before)) for before, after in zip(masks[:-1], masks[1:]))
    assert remasked > 0


def _run_steps(step_fn, z_BxL, update_BxL, num_steps):
    """Applies a committing step until it commits nothing; yields (z, committed) after each."""
    committed_BxL = jnp.zeros(z_BxL.shape, bool)
    for i in range(num_steps):
        z_BxL, new_committed_BxL = step_fn(jax.random.key(i), z_BxL, committed_BxL, update_BxL)
        if not bool(jnp.any(new_committed_BxL & ~committed_BxL)):
            return
        committed_BxL = new_committed_BxL
        yield np.asarray(z_BxL), np.asarray(committed_BxL)


@pytest.mark.parametrize("method, noise, temperature", [
    ("threshold", "masked", 0.0), ("threshold", "balanced", 0.7),
    ("entropy_bound", "uniform", 0.0), ("entropy_bound", "balanced", 0.7)])
def test_committing_steps_commit_at_least_one_in_the_support(method, noise, temperature):
    shift = NOISE_SHIFTS[noise]
    batch, length, num_steps = 4, 16, 16
    z_BxL = S.sample_prior(jax.random.key(2), batch, length, vocab_size=V, mask_id=MASK,
                           shift=shift)
    update_BxL = jnp.arange(length)[None, :] >= jnp.array([[0], [3], [8], [15]])  # 4 prompts
    options = dict(mask_id=MASK, shift=shift, temperature=temperature, tokens_per_step=1)
    if method == "threshold":
        step = jax.jit(lambda key, z, c, u: S.threshold_step(
            key, z, sparse_oracle(z), c, threshold=0.35, update_BxL=u, **options))
    else:
        log_snr = S.step_log_snrs(num_steps)
        step = jax.jit(lambda key, z, c, u: S.entropy_bound_step(
            key, z, sparse_oracle(z), c, jnp.float32(log_snr[1]), bound=3.0, update_BxL=u,
            **options))
    states = list(_run_steps(step, z_BxL, update_BxL, num_steps))
    update = np.asarray(update_BxL)
    previous_z, previous = np.asarray(z_BxL), np.zeros((batch, length), bool)
    for z, committed in states:
        assert np.all(previous <= committed)
        np.testing.assert_array_equal(z[previous], previous_z[previous])  # commits are final
        assert np.all(np.isin(z[committed], SUPPORT))
        assert not np.any(committed & ~update)  # prompts are never committed or changed
        np.testing.assert_array_equal(z[~update], np.asarray(z_BxL)[~update])
        previous_z, previous = z, committed
    # Done: everything committed, except (threshold, hybrid) positions already at the arg-max,
    # which no step would change; and in fewer steps than positions.
    done = previous | ~update | ((previous_z == SUPPORT[0]) & (method == "threshold"))
    assert np.all(done) and not np.any(previous_z[update] == MASK)
    assert len(states) < update.sum(-1).max()


@pytest.mark.parametrize("method, noise, temperature", [
    ("threshold", "masked", 0.7), ("threshold", "balanced", 0.0),
    ("entropy_bound", "uniform", 0.7), ("entropy_bound", "balanced", 0.0)])
def test_committing_samplers_end_in_the_support_with_no_mask(method, noise, temperature):
    prompt = np.full((4, 6), 7)
    prompt_len = np.array([0, 2, 4, 6])
    tokens, num_evals = S.sample(
        jax.random.key(3), sparse_oracle, 4, 24, vocab_size=V, mask_id=MASK,
        shift=NOISE_SHIFTS[noise], num_steps=24, method=method, temperature=temperature,
        prompt_BxL=prompt, prompt_len_B=prompt_len, confidence_threshold=0.35,
        entropy_bound=3.0, return_num_evals=True)
    tokens = np.asarray(tokens)
    for b, n in enumerate(prompt_len):
        np.testing.assert_array_equal(tokens[b, :n], prompt[b, :n])
        assert np.all(np.isin(tokens[b, n:], SUPPORT))
    assert 1 <= int(num_evals) < 24  # committing several per step finishes early


@pytest.mark.parametrize("method, noise", [("threshold", "balanced"),
                                           ("entropy_bound", "masked"), ("remask", "balanced")])
def test_new_methods_never_change_prompts(method, noise):
    rng = np.random.default_rng(8)
    prompt = rng.integers(0, V, size=(4, 20))
    prompt[prompt == MASK] = 0
    prompt_len = np.array([0, 7, 13, 20])
    tokens = np.asarray(S.sample(jax.random.key(9), _mixing_logits_fn, 4, 32, vocab_size=V,
                                 mask_id=MASK, shift=NOISE_SHIFTS[noise], num_steps=16,
                                 method=method, prompt_BxL=prompt, prompt_len_B=prompt_len,
                                 block_size=16))
    for b, n in enumerate(prompt_len):
        np.testing.assert_array_equal(tokens[b, :n], prompt[b, :n])
    assert not np.any(tokens == MASK)


@pytest.mark.parametrize("logits_fn, noise", [(_mixing_logits_fn, "masked"),
                                              (oracle, "balanced")])
def test_unreachable_threshold_is_adaptive_one_token_per_step(logits_fn, noise):
    prompt = np.random.default_rng(2).integers(4, V, size=(4, 8))
    options = dict(vocab_size=V, mask_id=MASK, shift=NOISE_SHIFTS[noise], num_steps=24,
                   tokens_per_step=1, prompt_BxL=prompt, prompt_len_B=np.array([0, 3, 8, 5]))
    adaptive = S.sample(jax.random.key(5), logits_fn, 4, 24, method="adaptive", **options)
    threshold = S.sample(jax.random.key(5), logits_fn, 4, 24, method="threshold",
                         confidence_threshold=1.5, **options)
    np.testing.assert_array_equal(np.asarray(threshold), np.asarray(adaptive))


@pytest.fixture(scope="module")
def tiny_model():
    from micro_config import get_config

    model_cfg = config_lib.derive(get_config(), num_devices=1).model
    from dlmjax.model import transformer

    params = transformer.init_params(jax.random.key(0), model_cfg)
    return params, model_cfg


@pytest.mark.parametrize("method, block_size", [("ancestral", None), ("threshold", 8),
                                               ("adaptive", None), ("entropy_bound", 8),
                                               ("remask", None)])
def test_prefix_cache_gives_the_same_tokens(tiny_model, method, block_size):
    """Cached steps see logits of the positions after the prefix only: same tokens, every method."""
    params, model_cfg = tiny_model
    logits_fn, cache = S.model_prefix_cache(params, model_cfg)
    vocab, length = model_cfg.vocab_size, model_cfg.seq_len
    prompt = np.random.default_rng(4).integers(4, vocab, size=(4, 12))
    run = functools.partial(
        S.sample, jax.random.key(6), logits_fn, 4, length, vocab_size=vocab, mask_id=3,
        shift=NOISE_SHIFTS["balanced"], num_steps=8, method=method, prompt_BxL=prompt,
        prompt_len_B=np.array([12, 9, 10, 12]), block_size=block_size,
        logits_fn_accepts_mask=True, float64=False, return_num_evals=True)
    plain, plain_evals = run()
    cached, cached_evals = run(prefix_cache=cache)
    np.testing.assert_array_equal(np.asarray(cached), np.asarray(plain))
    blocks = 1 if block_size is None else -(-(length - 9) // block_size)
    assert int(cached_evals) <= int(plain_evals) + blocks


def test_config_validation_knows_every_method():
    from dlmjax import validate

    assert validate.SAMPLE_METHODS == S.METHODS
    assert validate.REMASK_SCHEDULES == S.REMASK_SCHEDULES
