"""Samplers: exact posterior weights, oracle exactness, adaptive/prompt/block invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from dlmjax.diffusion import NOISE_SHIFTS
from dlmjax.diffusion import sampling as S

V = 16
MASK = 3
# Oracle distribution over the 15 ordinary ids (mask has probability 0); smallest mass 0.02.
P_V = np.array([0.12, 0.02, 0.09, 0.0, 0.05, 0.11, 0.03, 0.08, 0.04, 0.10, 0.06, 0.07, 0.03,
                0.09, 0.06, 0.05])
LOG_P_V = jnp.asarray(np.where(P_V > 0, np.log(np.maximum(P_V, 1e-30)), 0.0), jnp.float32)


def oracle(z_BxL):
    """The ideal prediction for i.i.d. data from P_V: ignores its input."""
    return jnp.broadcast_to(LOG_P_V, (*z_BxL.shape, V))


def chi_square_pvalue(tokens, probs):
    counts = np.bincount(np.asarray(tokens).ravel(), minlength=len(probs))
    support = probs > 0
    assert counts[~support].sum() == 0, "tokens outside the support"
    if support.sum() == 1:
        return 1.0
    return stats.chisquare(counts[support], counts.sum() * probs[support]).pvalue


class Recorder:
    """logits_fn wrapper that records every network input (ordered host callback; tests only)."""

    def __init__(self, fn):
        self.fn, self.inputs = fn, []

    def __call__(self, z_BxL, *rest):
        jax.debug.callback(lambda z: self.inputs.append(np.asarray(z)), z_BxL, ordered=True)
        return self.fn(z_BxL, *rest)


def test_step_log_snrs_follow_the_schedules():
    t = np.linspace(0.999, 0.001, 9)
    alpha = 0.5 + 0.5 * np.cos(np.pi * t)
    cosine = S.step_log_snrs(8, "cosine")
    np.testing.assert_allclose(cosine[:-1], np.clip(special.logit(alpha), -9, 9)[:-1], atol=1e-9)
    linear = S.step_log_snrs(8, "linear")
    np.testing.assert_allclose(linear[:-1], special.logit(1 - t)[:-1], atol=1e-9)
    for log_snr in (cosine, linear):
        assert log_snr[-1] == np.inf and np.all(np.diff(log_snr) > 0)
    assert cosine[0] == -9.0
    with pytest.raises(ValueError, match="schedule"):
        S.step_log_snrs(8, "exponential")


def _posterior_reference(z, xhat_V, lam_t, lam_s, shift):
    """p(z_s = v | z_t = z) ∝ q_s(v)·q(z | v) from the [V, V] transition matrix (float64)."""
    def level(lam):
        a = special.expit(lam)
        s = special.expit(lam + shift)
        pi = np.where(np.arange(V) == MASK, 1 - s, s / (V - 1))
        return a, 1 - a, pi

    a_t, b_t, pi_t = level(lam_t)
    a_s, b_s, pi_s = level(lam_s)
    a_ts = a_t / a_s
    transition_VxV = a_ts * np.eye(V) + (b_t * pi_t - a_ts * b_s * pi_s)[None, :]
    assert transition_VxV.min() >= -1e-12
    unnormalised = (a_s * xhat_V + b_s * pi_s) * transition_VxV[:, z]
    return unnormalised / max(unnormalised.sum(), 1e-300), unnormalised.sum()


@pytest.mark.parametrize("noise", list(NOISE_SHIFTS))
def test_posterior_weights_match_the_transition_matrix(noise):
    shift = NOISE_SHIFTS[noise]
    rng = np.random.default_rng(0)
    xhat_V = np.where(np.arange(V) == MASK, 0.0, rng.dirichlet(np.ones(V)))
    xhat_V /= xhat_V.sum()
    pairs = [(-9.0, -9.0), (-9.0, -8.99), (-3.0, -2.5), (0.0, 4.0), (2.0, np.inf), (-9.0, np.inf)]
    z_Z = np.arange(V)
    for lam_t, lam_s in pairs:
        with np.errstate(divide="ignore"):
            log_xhat_Z = np.log(xhat_V[z_Z])
        keep, from_xhat, from_pi = (np.exp(np.asarray(w, np.float64)) for w in
                                    S.posterior_log_weights(
                                        jnp.asarray(z_Z), jnp.asarray(log_xhat_Z, jnp.float32),
                                        lam_t, lam_s, vocab_size=V, mask_id=MASK, shift=shift))
        pi_s = np.where(z_Z == MASK, 1 - special.expit(lam_s + shift),
                        special.expit(lam_s + shift) / (V - 1))
        for z in z_Z:
            reference, evidence = _posterior_reference(z, xhat_V, lam_t, lam_s, shift)
            if evidence < 1e-30:  # z impossible at λ_t (the mask under pure uniform noise)
                continue
            mixture = keep[z] * (z_Z == z) + from_xhat[z] * xhat_V + from_pi[z] * pi_s
            np.testing.assert_allclose(mixture, reference, atol=2e-6,
                                       err_msg=f"{noise} z={z} λ={lam_t}->{lam_s}")


_one_step = jax.jit(lambda key, z, logits, shift: S.ancestral_step(
    key, z, logits, -1.0, 1.0, mask_id=MASK, shift=shift))


@pytest.mark.parametrize("noise", list(NOISE_SHIFTS))
def test_one_ancestral_step_samples_the_posterior(noise):
    """8192 draws of z_s from a fixed z_t (mask, or an ordinary id) against the [V, V] reference."""
    xhat_V = np.where(np.arange(V) == MASK, 0.0, np.random.default_rng(3).dirichlet(np.ones(V)))
    xhat_V /= xhat_V.sum()
    logits = jnp.broadcast_to(jnp.asarray(np.log(np.maximum(xhat_V, 1e-30)), jnp.float32),
                              (64, 128, V))
    for z in (MASK, 5):
        reference, evidence = _posterior_reference(z, xhat_V, -1.0, 1.0, NOISE_SHIFTS[noise])
        if evidence < 1e-30:
            continue
        z_s = _one_step(jax.random.key(z), jnp.full((64, 128), z, jnp.int32), logits,
                        jnp.float32(NOISE_SHIFTS[noise]))
        assert chi_square_pvalue(z_s, reference) > 1e-3


@pytest.mark.parametrize("noise", list(NOISE_SHIFTS))
@pytest.mark.parametrize("num_steps", [8, 64, 512])
def test_oracle_ancestral_samples_follow_the_data_distribution(noise, num_steps):
    tokens = S.sample(jax.random.key(num_steps), oracle, 64, 128, vocab_size=V, mask_id=MASK,
                      shift=NOISE_SHIFTS[noise], num_steps=num_steps)
    assert tokens.dtype == jnp.int32 and tokens.shape == (64, 128)
    assert chi_square_pvalue(tokens, P_V) > 1e-3


def test_predicted_logits_apply_temperature_top_k_top_p():
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, V)), jnp.float32)
    ref = np.asarray(logits, np.float64)
    ref[..., MASK] = -np.inf
    tempered = np.asarray(S.predicted_logits(logits, mask_id=MASK, temperature=0.7))
    np.testing.assert_allclose(tempered, ref / 0.7, rtol=1e-6)
    top3 = np.asarray(S.predicted_logits(logits, mask_id=MASK, top_k=3))
    assert np.all(np.isfinite(top3).sum(-1) == 3)
    np.testing.assert_array_equal(np.isfinite(top3), ref >= np.sort(ref, -1)[..., -3:-2])
    nucleus = np.asarray(S.predicted_logits(logits, mask_id=MASK, temperature=0.5, top_p=0.6))
    probs = special.softmax(ref / 0.5, axis=-1)
    order = np.argsort(-probs, axis=-1)
    sorted_probs = np.take_along_axis(probs, order, -1)
    kept_sorted = np.cumsum(sorted_probs, -1) - sorted_probs < 0.6
    expected = np.zeros_like(kept_sorted)
    np.put_along_axis(expected, order, kept_sorted, -1)
    np.testing.assert_array_equal(np.isfinite(nucleus), expected)
    greedy = np.asarray(S.predicted_logits(logits, mask_id=MASK, temperature=0.0))
    np.testing.assert_array_equal(np.isfinite(greedy).sum(-1), 1)
    np.testing.assert_array_equal(np.argmax(greedy, -1), np.argmax(ref, -1))


@pytest.mark.parametrize("options, allowed", [
    (dict(temperature=0.7, top_k=3), "top_k"), (dict(top_p=0.5), "top_p")])
def test_top_k_top_p_restrict_the_support_exactly(options, allowed):
    tempered = P_V ** (1 / options.get("temperature", 1.0))
    order = np.argsort(-P_V, kind="stable")
    if allowed == "top_k":
        keep = np.isin(np.arange(V), order[:options["top_k"]])
    else:
        sorted_p = P_V[order]
        keep = np.zeros(V, bool)
        keep[order[np.cumsum(sorted_p) - sorted_p < options["top_p"]]] = True
        keep |= P_V >= P_V[keep].min()  # ties at the threshold are kept
    target = np.where(keep, tempered, 0.0)
    tokens = S.sample(jax.random.key(5), oracle, 64, 128, vocab_size=V, mask_id=MASK,
                      shift=NOISE_SHIFTS["balanced"], num_steps=16, **options)
    assert set(np.unique(np.asarray(tokens))) <= set(np.flatnonzero(keep))
    assert chi_square_pvalue(tokens, target / target.sum()) > 1e-3


def test_float64_draw_resolves_masses_float32_cannot():
    logits = jnp.asarray(np.log([[[1.0 - 1e-12, 1e-12]]]), jnp.float32)
    all_ones = jnp.full((2, 1, 1), 0xFFFFFFFF, jnp.uint32)  # u = 1 − 2^-53 (f64), 1 − 2^-24 (f32)
    assert int(S.categorical_from_bits(all_ones, logits, float64=True)[0, 0]) == 1
    assert int(S.categorical_from_bits(all_ones, logits, float64=False)[0, 0]) == 0

    def lowered(float64):
        return jax.jit(lambda key: S.sample(
            key, oracle, 2, 8, vocab_size=V, mask_id=MASK, shift=0.0, num_steps=4,
            float64=float64)).lower(jax.random.key(0)).as_text()

    assert "f64" in lowered(True) and "f64" not in lowered(False)
    tokens = S.sample(jax.random.key(6), oracle, 64, 128, vocab_size=V, mask_id=MASK,
                      shift=NOISE_SHIFTS["balanced"], num_steps=64, float64=True)
    assert chi_square_pvalue(tokens, P_V) > 1e-3


def test_draws_skip_the_max_pass_only_where_the_logits_allow():
    """need_top=False exps the logits unshifted when every updated position's mass is in
    [e^-60, e^60], else shifts by the top; both give the float64 log-normaliser, and the draws
    agree but for ties of the uniform with a rounded cumulative sum."""
    rng = np.random.default_rng(7)
    base = np.round(rng.normal(0.0, 2.0, (64, 128, V)) * 64) / 64  # exact after a shift of 128
    bits = jax.random.bits(jax.random.key(7), (2, 64, 128), jnp.uint32)
    reference = special.logsumexp(np.where(np.arange(V) == MASK, -np.inf, base), axis=-1)
    draws = {}
    for offset in (0.0, 128.0, -128.0):
        logits = jnp.asarray(base + offset, jnp.float32)
        xhat = S._make_xhat(logits, mask_id=MASK, need_top=False)
        assert bool(jnp.all(xhat.shift_BxL == 0)) == (offset == 0)
        np.testing.assert_allclose(np.asarray(S._log_normalizer(xhat)) - offset, reference,
                                   atol=2e-5)
        draws[offset] = np.asarray(S._draw(xhat, S._uniform_from_bits(bits, jnp.float32)))
    assert MASK not in draws[0.0]
    for offset in (128.0, -128.0):
        assert np.mean(draws[offset] == draws[0.0]) > 0.999
    # One out-of-range position outside the updated ones does not choose the form.
    logits = jnp.asarray(base, jnp.float32).at[0, 0].add(128.0)
    updated = jnp.ones((64, 128), bool).at[0, 0].set(False)
    assert bool(jnp.all(S._make_xhat(logits, mask_id=MASK, need_top=False).shift_BxL != 0))
    assert bool(jnp.all(S._make_xhat(logits, mask_id=MASK, need_top=False,
                                     positions_BxL=updated).shift_BxL == 0))


def test_adaptive_masked_fills_exactly_one_masked_position_per_step():
    recorder = Recorder(oracle)
    prompt_len = np.array([0, 3, 8, 5])
    prompt = np.random.default_rng(2).integers(4, V, size=(4, 8))
    tokens = np.asarray(S.sample(jax.random.key(3), recorder, 4, 24, vocab_size=V, mask_id=MASK,
                                 shift=NOISE_SHIFTS["masked"], num_steps=24, method="adaptive",
                                 tokens_per_step=1, prompt_BxL=prompt, prompt_len_B=prompt_len))
    states = recorder.inputs + [tokens]
    assert len(states) == 25  # row 0 changes at every one of the 24 steps
    for before, after in zip(states[:-1], states[1:]):
        changed = before != after
        masks_left = (before == MASK).sum(-1)
        np.testing.assert_array_equal(changed.sum(-1), np.minimum(masks_left, 1))
        assert np.all(before[changed] == MASK) and np.all(after[changed] != MASK)
    for b, n in enumerate(prompt_len):
        np.testing.assert_array_equal(tokens[b, :n], prompt[b, :n])
    assert not np.any(tokens == MASK)
    np.testing.assert_array_equal(tokens[0], np.argmax(P_V))  # greedy: the mode everywhere


@pytest.mark.parametrize("noise", ["uniform", "balanced"])
def test_adaptive_greedy_ends_at_the_mode_under_uniform_noise(noise):
    tokens = S.sample(jax.random.key(4), oracle, 4, 24, vocab_size=V, mask_id=MASK,
                      shift=NOISE_SHIFTS[noise], num_steps=32, method="adaptive",
                      tokens_per_step=1)
    np.testing.assert_array_equal(np.asarray(tokens), np.argmax(P_V))


def _mixing_logits_fn(z_BxL, *unused):
    """A deterministic network whose output depends on every input token."""
    table_VxV = jnp.asarray(np.random.default_rng(7).normal(size=(V, V)), jnp.float32)
    context_BxV = jnp.mean(table_VxV[z_BxL], axis=1)
    return 2.0 * table_VxV[(z_BxL + 1) % V] + context_BxV[:, None, :]


@pytest.mark.parametrize("method", ["ancestral", "adaptive"])
@pytest.mark.parametrize("noise", ["masked", "balanced", "uniform"])
def test_prompt_tokens_are_never_changed(method, noise):
    rng = np.random.default_rng(8)
    prompt = rng.integers(0, V, size=(4, 20))
    prompt[prompt == MASK] = 0
    prompt_len = np.array([0, 7, 13, 20])
    tokens = np.asarray(S.sample(jax.random.key(9), _mixing_logits_fn, 4, 32, vocab_size=V,
                                 mask_id=MASK, shift=NOISE_SHIFTS[noise], num_steps=32,
                                 method=method, prompt_BxL=prompt, prompt_len_B=prompt_len,
                                 block_size=16))
    for b, n in enumerate(prompt_len):
        np.testing.assert_array_equal(tokens[b, :n], prompt[b, :n])
    assert not np.any(tokens == MASK)


def test_attention_mask_is_the_training_mask():
    noisy = np.array([[False, False, True, True], [True, False, True, False]])
    attn = np.asarray(S.attention_mask(jnp.asarray(noisy)))
    for b in range(2):
        for q in range(4):
            for k in range(4):
                assert attn[b, q, k] == (noisy[b, q] or not noisy[b, k])


def test_blocks_see_the_clean_prefix_through_the_attention_mask():
    """Each generated id encodes how many queries may not see it: the clean positions."""
    vocab = 40

    def count_hidden_fn(z_BxL, attn_BxLxL):
        hidden_BxL = jnp.sum(~attn_BxLxL, axis=1)  # clean queries that cannot see key k
        ordinary_BxL = hidden_BxL + (hidden_BxL >= MASK)
        return 30.0 * jax.nn.one_hot(ordinary_BxL, vocab)

    prompt_len = np.array([0, 5, 12, 20])
    prompt = np.full((4, 20), 1)
    tokens = np.asarray(S.sample(jax.random.key(10), count_hidden_fn, 4, 32, vocab_size=vocab,
                                 mask_id=MASK, shift=NOISE_SHIFTS["masked"], num_steps=4,
                                 block_size=8, prompt_BxL=prompt, prompt_len_B=prompt_len,
                                 logits_fn_accepts_mask=True))
    for b, n in enumerate(prompt_len):
        for pos in range(n, 32):
            clean = max(n, (pos // 8) * 8)
            assert tokens[b, pos] == clean + (clean >= MASK), (b, pos)


@pytest.mark.parametrize("context_len", [32, 16])
def test_block_generation_keeps_earlier_blocks_fixed(context_len):
    recorder = Recorder(_mixing_logits_fn)
    num_steps, block, length = 6, 8, 32
    tokens = np.asarray(S.sample(jax.random.key(11), recorder, 4, length, vocab_size=V,
                                 mask_id=MASK, shift=NOISE_SHIFTS["balanced"],
                                 num_steps=num_steps, block_size=block, context_len=context_len,
                                 reuse_logits=False))
    assert len(recorder.inputs) == num_steps * length // block
    first_seen = {}
    for call, window in enumerate(recorder.inputs):
        j = call // num_steps
        start = min(max((j + 1) * block - context_len, 0), length - context_len)
        assert window.shape == (4, context_len)
        for offset, pos in enumerate(range(start, start + context_len)):
            first_seen.setdefault(pos, window[:, offset])
            if pos < j * block:  # earlier blocks: already final
                np.testing.assert_array_equal(window[:, offset], tokens[:, pos])
            elif pos >= (j + 1) * block:  # later blocks: still at the prior
                np.testing.assert_array_equal(window[:, offset], first_seen[pos])
    assert not np.any(tokens == MASK)


def test_logits_are_reused_when_no_token_changed():
    recorder = Recorder(oracle)
    options = dict(vocab_size=V, mask_id=MASK, shift=NOISE_SHIFTS["masked"], num_steps=64)
    reused = S.sample(jax.random.key(12), recorder, 2, 4, **options)
    # Each call but the first follows a step that unmasked at least one of the 8 positions.
    assert len(recorder.inputs) <= 1 + 8
    always = S.sample(jax.random.key(12), oracle, 2, 4, reuse_logits=False, **options)
    np.testing.assert_array_equal(np.asarray(reused), np.asarray(always))


def test_batch_sharding_gives_the_same_tokens():
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = jax.NamedSharding(mesh, jax.P("data", None))
    options = dict(vocab_size=V, mask_id=MASK, shift=NOISE_SHIFTS["balanced"], num_steps=8)
    sharded = S.sample(jax.random.key(13), oracle, 16, 8, batch_sharding=sharding, **options)
    plain = S.sample(jax.random.key(13), oracle, 16, 8, **options)
    assert sharded.sharding.is_equivalent_to(sharding, 2)
    np.testing.assert_array_equal(np.asarray(sharded), np.asarray(plain))


def test_bad_arguments_raise_value_errors():
    options = dict(vocab_size=V, mask_id=MASK, shift=0.0, num_steps=4)
    key = jax.random.key(0)
    for bad, match in [(dict(method="greedy"), "method"), (dict(schedule="log"), "schedule"),
                       (dict(block_size=64), "block_size"), (dict(top_p=1.5), "top_p"),
                       (dict(method="adaptive", tokens_per_step=1), "tokens_per_step"),
                       (dict(prompt_BxL=np.zeros((3, 4))), "prompt_BxL"),
                       (dict(prompt_len_B=np.zeros(2)), "prompt_len_B")]:
        with pytest.raises(ValueError, match=match):
            S.sample(key, oracle, 2, 8, **{**options, **bad})
    with pytest.raises(ValueError, match="vocab_size"):
        S.sample(key, oracle, 2, 8, **{**options, "vocab_size": V + 1})


def test_benchmark_sampler_step_reports_both_times():
    result = S.benchmark_sampler_step(oracle, 2, 8, vocab_size=V, mask_id=MASK, shift=0.0,
                                      num_repeats=3, num_warmup=1)
    assert result["step_s"] > 0 and result["forward_s"] > 0
    low, high = result["ratio_quartiles"]
    assert 0 < low <= result["ratio"] <= high  # the median of the rounds' ratios
    assert result["draw_s"] > 0 and result["forward_plus_draw_ratio"] > 1
