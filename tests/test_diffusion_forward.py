"""Forward noising and λ sampling match their distributions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
from scipy import stats

from dlmjax.diffusion import NOISE_SHIFTS, forward, schedule

V, MASK = 11, 3


@pytest.mark.parametrize("noise", list(NOISE_SHIFTS))
@pytest.mark.parametrize("lam", [-3.0, 0.0, 2.5])
def test_sample_zt_matches_q(noise, lam):
    shift = NOISE_SHIFTS[noise]
    n, x_value = 200_000, 6
    x = jnp.full((1, n), x_value, jnp.int32)
    z = forward.sample_zt(jax.random.key(7), x, jnp.full((1, n), lam), vocab_size=V, mask_id=MASK,
                          shift=shift)
    counts = np.bincount(np.asarray(z).ravel(), minlength=V)
    a = reference.sigmoid(lam)
    q = (1 - a) * reference.pi_vector(lam, V, MASK, shift)
    q[x_value] += a
    support = q > 1e-12
    assert counts[~support].sum() == 0
    chi2 = stats.chisquare(counts[support], n * q[support] / q[support].sum())
    assert chi2.pvalue > 1e-3, (counts, q * n)


def test_clean_tokens_are_kept():
    x = jnp.arange(4, 11)[None]
    z = forward.sample_zt(jax.random.key(0), x, jnp.full(x.shape, jnp.inf), vocab_size=V,
                          mask_id=MASK, shift=0.0)
    np.testing.assert_array_equal(np.asarray(z), np.asarray(x))


def test_log_snr_sampling_range_density_and_per_token_fraction():
    lam = schedule.sample_log_snr(jax.random.key(1), 4000, 64, per_token_fraction=0.25)
    lam = np.asarray(lam)
    assert lam.min() >= -9.0 - 1e-4 and lam.max() <= 9.0 + 1e-4
    per_token_rows = np.mean(np.any(lam != lam[:, :1], axis=1))
    assert abs(per_token_rows - 0.25) < 0.03
    # λ = logit(1 − t), t uniform: the CDF of λ is (σ(λ) − σ(−9)) / (σ(9) − σ(−9)).
    lo, hi = reference.sigmoid(-9.0), reference.sigmoid(9.0)
    ks = stats.kstest(lam[:, 0], lambda v: (reference.sigmoid(v) - lo) / (hi - lo))
    assert ks.pvalue > 1e-3


def test_pi_and_derivative_against_reference():
    ids = jnp.arange(V)
    for shift in NOISE_SHIFTS.values():
        for lam in (-9.0, -1.0, 0.0, 4.0, 9.0):
            kw = dict(vocab_size=V, mask_id=MASK, shift=shift)
            np.testing.assert_allclose(schedule.pi_at(ids, lam, **kw),
                                       reference.pi_vector(lam, V, MASK, shift), rtol=1e-6)
            np.testing.assert_allclose(schedule.pi_derivative_at(ids, lam, **kw),
                                       reference.pi_derivative_vector(lam, V, MASK, shift),
                                       rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(schedule.log_snr_density(jnp.array([0.0, 9.0])),
                               [0.25, reference.sigmoid(9) * reference.sigmoid(-9)], rtol=1e-6)


def test_unknown_noise_type_is_named():
    with pytest.raises(ValueError, match="unknown noise type 'hybrid'"):
        schedule.noise_shift("hybrid")
