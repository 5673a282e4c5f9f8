"""ELBO evaluation: quadrature, oracle entropy, Monte-Carlo agreement, prompts, units."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from dlmjax.diffusion import NOISE_SHIFTS
from dlmjax.diffusion import likelihood as LK

V = 8
MASK = 3
# Probabilities k/64, so data with exactly these frequencies has empirical entropy = entropy.
COUNTS_V = np.array([10, 6, 4, 0, 20, 8, 12, 4])
P_V = COUNTS_V / 64
ENTROPY = -np.sum(P_V[P_V > 0] * np.log(P_V[P_V > 0]))
LOG_P_V = jnp.asarray(np.where(P_V > 0, np.log(np.maximum(P_V, 1e-30)), 0.0), jnp.float32)


def oracle(z_BxL):
    return jnp.broadcast_to(LOG_P_V, (*z_BxL.shape, V))


def uniform_model(z_BxL):
    return jnp.zeros((*z_BxL.shape, V), jnp.float32)


def stratified_tokens(batch, length, seed=0):
    tokens = np.repeat(np.arange(V), COUNTS_V * (batch * length // 64))
    return np.random.default_rng(seed).permutation(tokens).reshape(batch, length)


# 262,144 tokens. The z noise of the grid estimate is then about 0.05% (masked, 64 nodes) and
# 0.06% (uniform-containing noise, 128 nodes: rare z ≠ x draws near α → 1 carry large weights);
# the truncation to λ ∈ [−9, 9] lowers the bound by a further ~0.06%.
DATA = stratified_tokens(256, 1024)


def test_quadrature_integrates_in_alpha():
    lo, hi = special.expit(-9.0), special.expit(9.0)
    for rule, num_points, degree in (("gauss", 8, 15), ("midpoint", 8, 1)):
        log_snr, weight = LK.quadrature(num_points, rule)
        alpha = special.expit(log_snr)
        assert np.all((alpha > lo) & (alpha < hi))
        exact = (hi ** (degree + 1) - lo ** (degree + 1)) / (degree + 1)
        assert np.sum(weight * alpha**degree) == pytest.approx(exact, rel=1e-12)
    with pytest.raises(ValueError, match="rule"):
        LK.quadrature(8, "simpson")


@pytest.mark.parametrize("noise", list(NOISE_SHIFTS))
def test_grid_elbo_of_the_oracle_is_the_entropy(noise):
    result = LK.evaluate_elbo(jax.random.key(0), oracle, [DATA[:128], DATA[128:]], mask_id=MASK,
                              shift=NOISE_SHIFTS[noise], method="grid",
                              num_points=64 if noise == "masked" else 128)
    assert result.num_tokens == DATA.size and result.num_sequences == 256
    assert abs(result.elbo_nats_per_token / ENTROPY - 1) < 2e-3
    assert result.stderr > 0


@pytest.mark.parametrize("noise", ["masked", "balanced", "uniform"])
def test_monte_carlo_elbo_agrees_within_three_standard_errors(noise):
    result = LK.evaluate_elbo(jax.random.key(1), oracle, [DATA], mask_id=MASK,
                              shift=NOISE_SHIFTS[noise], method="monte_carlo", num_samples=4)
    assert 0 < result.stderr < 0.02 * ENTROPY
    assert abs(result.elbo_nats_per_token - ENTROPY) < 3 * result.stderr


@pytest.mark.parametrize("noise", ["masked", "uniform"])
def test_uniform_prediction_costs_log_n_on_any_data(noise):
    """x̂ = uniform is the exact model of uniform data, so its bound is log N for every x."""
    result = LK.evaluate_elbo(jax.random.key(2), uniform_model, [DATA[:128]], mask_id=MASK,
                              shift=NOISE_SHIFTS[noise], num_points=64)
    assert result.elbo_nats_per_token == pytest.approx(math.log(V - 1), rel=3e-3)


def test_completions_given_prompts_count_only_completion_tokens():
    received = []

    def oracle_with_mask(z_BxL, attn_BxLxL):
        jax.debug.callback(lambda a: received.append(np.asarray(a)), attn_BxLxL)
        return oracle(z_BxL)

    tokens = DATA.reshape(1024, 256)[:256]
    prompt_len = np.arange(256) * 7 % 200
    result = LK.evaluate_elbo(jax.random.key(3), oracle_with_mask,
                              [{"tokens": tokens, "prompt_len": prompt_len}], mask_id=MASK,
                              shift=NOISE_SHIFTS["balanced"], num_points=32,
                              logits_fn_accepts_mask=True, bytes_per_token=3.5)
    assert result.num_tokens == int(np.sum(256 - prompt_len))
    noisy = np.arange(256)[None, :] >= prompt_len[:, None]
    np.testing.assert_array_equal(received[0], noisy[:, :, None] >= noisy[:, None, :])
    completion_entropy = -np.mean(np.log(P_V[tokens[noisy]]))
    assert result.elbo_nats_per_token == pytest.approx(completion_entropy, rel=1e-2)
    assert result.perplexity == pytest.approx(math.exp(result.elbo_nats_per_token))
    assert result.bits_per_byte == pytest.approx(
        result.elbo_nats_per_token / math.log(2) / 3.5)


def test_summarize_is_the_ratio_estimator():
    nats = np.array([10.0, 14.0, 9.0, 13.0])
    tokens = np.array([4, 6, 4, 6])
    result = LK.summarize(nats, tokens)
    ratio = nats.sum() / tokens.sum()
    residual = nats - ratio * tokens
    assert result.elbo_nats_per_token == pytest.approx(ratio)
    assert result.stderr == pytest.approx(math.sqrt(4 / 3 * np.sum(residual**2)) / tokens.sum())
    assert result.bits_per_byte is None and result.as_dict()["num_tokens"] == 20
    with pytest.raises(ValueError, match="no noised tokens"):
        LK.summarize(nats, np.zeros(4))
    with pytest.raises(ValueError, match="method"):
        LK.evaluate_elbo(jax.random.key(0), oracle, [DATA[:2]], mask_id=MASK, shift=0.0,
                         method="exact")
