"""The GIDD loss and ELBO against a float64 reference, known limits, gradients and memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference

from dlmjax.diffusion import NOISE_SHIFTS, elbo
from dlmjax.diffusion.schedule import log_snr_density

V, MASK = 37, 3


def _cases(seed, shift):
    """Random logits; z = x, z = mask and z = another token; λ over [−9, 9]."""
    rng = np.random.default_rng(seed)
    lam = np.linspace(-9, 9, 37)
    n = lam.size * 3
    x = rng.choice([v for v in range(V) if v != MASK], size=n)
    other = (x + rng.integers(1, V - 1, size=n)) % V
    other = np.where(other == MASK, (other + 1) % V, other)
    other = np.where(other == x, (x + 1) % V, other)
    other = np.where(other == MASK, (other + 1) % V, other)
    z = np.concatenate([x[: lam.size], np.full(lam.size, MASK), other[2 * lam.size:]])
    if shift >= 1000:  # uniform noise never produces the mask
        z = np.where(z == MASK, other, z)
    if shift <= -1000:  # masked noise never produces another ordinary token
        z = np.where(z == x, z, MASK)
    logits = rng.normal(0, 3, size=(n, V)).astype(np.float32)
    return logits, z, x, np.tile(lam, 3)


@pytest.mark.parametrize("noise", list(NOISE_SHIFTS))
def test_matches_float64_reference(noise):
    shift = NOISE_SHIFTS[noise]
    logits, z, x, lam = _cases(0, shift)
    loss, el = elbo.token_losses(jnp.asarray(logits)[None], jnp.asarray(z)[None],
                                 jnp.asarray(x)[None], jnp.asarray(lam, jnp.float32)[None],
                                 mask_id=MASK, shift=shift)
    assert loss.dtype == jnp.float32 and el.dtype == jnp.float32
    ref = np.array([reference.token_loss_and_elbo(logits[i], z[i], x[i], lam[i], MASK, shift)
                    for i in range(len(z))])
    got = np.stack([np.asarray(loss[0]), np.asarray(el[0])], axis=1).astype(np.float64)
    high = lam >= -4
    np.testing.assert_allclose(got[high], ref[high], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got[~high], ref[~high], atol=1e-3)


def test_masked_limit_is_weighted_cross_entropy():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, size=(4, 16, V)).astype(np.float32)
    x = rng.integers(4, V, size=(4, 16))
    lam = rng.uniform(-9, 9, size=(4, 16)).astype(np.float32)
    z = np.where(rng.random((4, 16)) < 0.5, MASK, x)
    _, el = elbo.token_losses(logits, z, x, lam, mask_id=MASK, shift=NOISE_SHIFTS["masked"])
    masked_logits = logits.astype(np.float64).copy()
    masked_logits[..., MASK] = -np.inf
    log_xhat = masked_logits - np.log(np.exp(masked_logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_xhat, x[..., None], -1)[..., 0]
    expected = np.where(z == MASK, ce / reference.sigmoid(-lam), 0.0)
    np.testing.assert_allclose(np.asarray(el), expected, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("noise", list(NOISE_SHIFTS))
def test_oracle_elbo_integrates_to_entropy(noise):
    """x i.i.d. from p and x̂ = p: ∫ E_x E_z [ELBO] p(λ) dλ over [−9, 9] equals H(p)."""
    shift = NOISE_SHIFTS[noise]
    vocab, mask = 16, 3
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(vocab))
    p[mask] = 0.0
    p /= p.sum()
    entropy = -np.sum(p[p > 0] * np.log(p[p > 0]))
    ordinary = [v for v in range(vocab) if v != mask]
    x_grid, z_grid = (g.ravel() for g in np.meshgrid(ordinary, range(vocab), indexing="ij"))
    lam = np.linspace(-9, 9, 1801)
    logits = jnp.broadcast_to(jnp.log(jnp.asarray(np.maximum(p, 1e-30), jnp.float32)),
                              (lam.size, x_grid.size, vocab))
    lam_b = jnp.broadcast_to(jnp.asarray(lam, jnp.float32)[:, None], (lam.size, x_grid.size))
    z_b = jnp.broadcast_to(z_grid, lam_b.shape)
    x_b = jnp.broadcast_to(x_grid, lam_b.shape)
    _, el = elbo.token_losses(logits, z_b, x_b, lam_b, mask_id=mask, shift=shift)
    alpha = reference.sigmoid(lam)[:, None]
    pi = np.stack([reference.pi_vector(l, vocab, mask, shift) for l in lam])
    q_z = alpha * (z_grid == x_grid) + (1 - alpha) * np.take_along_axis(
        pi, np.broadcast_to(z_grid, (lam.size, z_grid.size)), 1)
    expected_per_lam = np.sum(np.asarray(el, np.float64) * q_z * p[x_grid], axis=1)
    integral = np.trapezoid(expected_per_lam * np.asarray(log_snr_density(lam)), lam)
    assert abs(integral / entropy - 1) < 2e-3, (integral, entropy)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("noise", ["masked", "balanced", "uniform"])
def test_gradients_finite_at_extremes(dtype, noise):
    rng = np.random.default_rng(2)
    x = rng.integers(4, V, size=(2, 8))
    z = np.where(rng.random((2, 8)) < 0.5, x, MASK if noise == "masked" else 5)
    lam = np.where(rng.random((2, 8)) < 0.5, -9.0, 9.0).astype(np.float32)
    # Logits far from the target: the target gets −80 relative to a +80 competitor.
    logits = np.zeros((2, 8, V), np.float32)
    logits[..., 7] = 80.0
    np.put_along_axis(logits, x[..., None], -80.0, -1)

    def total(lg):
        loss, el = elbo.token_losses(lg, z, x, lam, mask_id=MASK, shift=NOISE_SHIFTS[noise])
        return loss.sum() + 1e-6 * el.sum()

    value, grad = jax.value_and_grad(total)(jnp.asarray(logits, dtype))
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(np.asarray(grad, np.float32)))


def test_clean_tokens_contribute_nothing():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(1, 6, V)).astype(np.float32)
    x = rng.integers(4, V, size=(1, 6))
    lam = np.array([[np.inf, np.inf, 0.5, -3.0, np.inf, 2.0]], np.float32)
    loss, el = elbo.token_losses(logits, x, x, lam, mask_id=MASK, shift=0.0)
    clean = np.isinf(lam)
    assert np.all(np.asarray(loss)[clean] == 0) and np.all(np.asarray(el)[clean] == 0)
    g = jax.grad(lambda lg: elbo.token_losses(lg, x, x, lam, mask_id=MASK, shift=0.0)[0].sum())(
        jnp.asarray(logits))
    assert np.all(np.asarray(g)[clean] == 0)


@pytest.mark.parametrize("chunk_size", [5, 16, 64])
def test_from_hidden_equals_logits_version(chunk_size):
    rng = np.random.default_rng(4)
    b, length, d = 2, 13, 8
    h = rng.normal(size=(b, length, d)).astype(np.float32)
    w = rng.normal(size=(d, V)).astype(np.float32)
    x = rng.integers(4, V, size=(b, length))
    z = np.where(rng.random((b, length)) < 0.4, MASK, x)
    lam = rng.uniform(-9, 9, size=(b, length)).astype(np.float32)
    kw = dict(mask_id=MASK, shift=-2.0)

    def via_logits(h, w):
        return elbo.token_losses(2.5 * h @ w, z, x, lam, **kw)

    def via_hidden(h, w):
        return elbo.token_losses_from_hidden(h, w, z, x, lam, logit_multiplier=2.5,
                                             chunk_size=chunk_size, **kw)

    for a, b_ in zip(via_logits(h, w), via_hidden(h, w)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b_), rtol=2e-5, atol=1e-6)
    grads_ref = jax.grad(lambda h, w: via_logits(h, w)[0].sum(), argnums=(0, 1))(h, w)
    grads = jax.grad(lambda h, w: via_hidden(h, w)[0].sum(), argnums=(0, 1))(h, w)
    for a, b_ in zip(grads_ref, grads):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b_), rtol=1e-4, atol=1e-5)


def test_chunked_loss_memory_is_under_a_tenth_of_naive():
    """Compiled temp memory at B=2, L=2048, D=512, V=131072 (deterministic, nothing allocated)."""
    from dlmjax.benchmarks import loss_memory_report

    report = loss_memory_report()
    assert report["ratio"] <= 0.10, report
