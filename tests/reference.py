"""Independent float64 NumPy transcription of docs/science.md, building q and p over the whole
vocabulary (fine for the small vocabularies of tests)."""

import numpy as np


def sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))


def pi_vector(lam, vocab_size, mask_id, shift, scale=1.0):
    s = sigmoid(scale * lam + shift)
    pi = np.full(vocab_size, s / (vocab_size - 1))
    pi[mask_id] = 1.0 - s
    return pi


def pi_derivative_vector(lam, vocab_size, mask_id, shift, scale=1.0):
    s = sigmoid(scale * lam + shift)
    u = np.full(vocab_size, 1.0 / (vocab_size - 1))
    u[mask_id] = 0.0
    e_mask = np.zeros(vocab_size)
    e_mask[mask_id] = 1.0
    return scale * s * (1.0 - s) * (u - e_mask)


def token_loss_and_elbo(logits, z, x, lam, mask_id, shift, scale=1.0):
    """One token: (training loss, ELBO) straight from the formulas."""
    vocab_size = logits.shape[-1]
    logits = np.asarray(logits, np.float64).copy()
    logits[mask_id] = -np.inf
    xhat = np.exp(logits - logits.max())
    xhat /= xhat.sum()
    a = sigmoid(lam)
    pi = pi_vector(lam, vocab_size, mask_id, shift, scale)
    dpi = pi_derivative_vector(lam, vocab_size, mask_id, shift, scale)
    onehot_x = np.zeros(vocab_size)
    onehot_x[x] = 1.0
    q = a * onehot_x + (1 - a) * pi
    p = a * xhat + (1 - a) * pi
    support = q > 0
    kl = np.sum(q[support] * (np.log(q[support]) - np.log(p[support])))
    r = q[z] / p[z]
    itakura_saito = r - np.log(r) - 1.0
    w = (pi[z] - dpi[z]) / (pi[z] + np.exp(lam) * (z == x))
    density = sigmoid(lam) * sigmoid(-lam)
    loss = np.clip(w, 0, 1e3) * (kl + itakura_saito)
    elbo = np.clip(w / density, 0, 1e6) * (kl + itakura_saito)
    return loss, elbo
