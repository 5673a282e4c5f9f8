"""The transformer: parameter counts, a float64 NumPy transcription of the forward pass, masking,
precision, init scales, the CompleteP coordinate check and a short training run."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlmjax.diffusion.elbo import token_losses_from_hidden
from dlmjax.model import (
    ModelConfig,
    NoisyMask,
    abstract_params,
    apply,
    head_kernel,
    init_params,
    logical_axes,
)
from dlmjax.model.coord_check import coord_check
from dlmjax.optim import make_optimizer
from dlmjax.scaling.flops import embedding_params, non_embedding_params

STUDY_SIZES = [(8, 512), (10, 640), (12, 768), (16, 1024), (20, 1536), (34, 4608)]
V_STUDY = 131072
MATRIX_NAMES = {"q_kernel", "k_kernel", "v_kernel", "o_kernel", "up_kernel", "down_kernel"}


def _leaves_by_name(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(k.key for k in path): leaf for path, leaf in flat}


@pytest.mark.parametrize("num_layers,d_model", STUDY_SIZES)
def test_parameter_count_matches_flops_convention(num_layers, d_model):
    cfg = ModelConfig(vocab_size=V_STUDY, num_layers=num_layers, d_model=d_model)
    leaves = _leaves_by_name(abstract_params(cfg))  # eval_shape: nothing is allocated
    count = lambda pred: sum(math.prod(v.shape) for k, v in leaves.items() if pred(k))  # noqa: E731
    total = count(lambda k: True)
    L, d, V = num_layers, d_model, V_STUDY
    sinks = count(lambda k: "sink_" in k)
    assert sinks == cfg.sink_params == 2 * L * d  # a key and a value of head_dim per head
    assert count(lambda k: k.split("/")[-1] in MATRIX_NAMES) == 12 * L * d * d
    assert count(lambda k: k in ("embedding", "unembedding")) == embedding_params(V, d) == 2 * V * d
    # Per layer: 2 pre-norm gains + q/k-norm gains (4d) and MLP biases (4d + d); plus final norm.
    assert total - sinks - 2 * V * d == L * (12 * d * d + 9 * d) + d
    # The study's P = L(12d² + 14d) + d counts 5d per layer that this architecture does not have.
    assert total == non_embedding_params(L, d) - 5 * L * d + sinks + 2 * V * d


def test_config_derivations_and_errors():
    assert ModelConfig(vocab_size=8, num_layers=34, d_model=4608).heads == 36
    assert ModelConfig(vocab_size=8, num_layers=34, d_model=4608).head_dim == 128
    cfg = ModelConfig(vocab_size=8, num_layers=8, d_model=512)
    assert (cfg.heads, cfg.head_dim, cfg.mlp_dim, cfg.logit_multiplier) == (8, 64, 2048, 1.0)
    assert cfg.residual_multiplier == 0.5 and cfg.matrix_init_std == pytest.approx(0.4 / 512**0.5)
    with pytest.raises(ValueError, match="model.d_model"):
        ModelConfig(vocab_size=8, num_layers=2, d_model=100)
    with pytest.raises(ValueError, match="model.num_heads"):
        ModelConfig(vocab_size=8, num_layers=2, d_model=96, num_heads=5)
    with pytest.raises(ValueError, match="model.remat"):
        ModelConfig(vocab_size=8, num_layers=2, d_model=64, remat="some")
    with pytest.raises(ValueError, match="model.num_layers"):
        ModelConfig(vocab_size=8, num_layers=0, d_model=64)


def test_logical_axes_name_every_dimension():
    cfg = ModelConfig(vocab_size=32, num_layers=2, d_model=64)
    specs = {k: tuple(v) for k, v in _leaves_by_name(logical_axes(cfg)).items()}
    shapes = _leaves_by_name(abstract_params(cfg))
    assert specs["embedding"] == ("vocab", "embed") and specs["unembedding"] == ("embed", "vocab")
    assert specs["layers/attn/q_kernel"] == ("layers", "embed", "heads", "kv")
    assert specs["layers/mlp/down_kernel"] == ("layers", "mlp", "embed")
    for name, spec in specs.items():
        assert len(spec) == len(shapes[name].shape), name
        assert (spec[0] == "layers") == name.startswith("layers/"), name


# ---------------------------------------------------------------------------------------------
# Float64 NumPy transcription of docs/science.md


def _np_rms_norm(x, gain, axes=-1):
    return x / np.sqrt(np.mean(x**2, axis=axes, keepdims=True) + 1e-6) * (1.0 + gain)


def _np_rope(x, theta):
    seq_len, head_dim = x.shape[1], x.shape[-1]
    freq = theta ** (-np.arange(0, head_dim, 2) / head_dim)
    angle = np.arange(seq_len)[:, None] * freq[None, :]
    cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    x1, x2 = x[..., : head_dim // 2], x[..., head_dim // 2:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _np_forward(params, tokens, mask, cfg):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    lay = p["layers"]
    r, cap, K = 4.0 / cfg.num_layers, cfg.attn_softcap, cfg.head_dim
    B, S = tokens.shape
    if cfg.causal:
        causal = np.tril(np.ones((S, S), bool))[None]
        mask = causal if mask is None else mask & causal
    h = p["embedding"][tokens]
    for i in range(cfg.num_layers):
        a = lay["attn"]
        x = _np_rms_norm(h, lay["attn_norm"][i])
        q = np.einsum("bld,dhk->blhk", x, a["q_kernel"][i])
        k = np.einsum("bld,dhk->blhk", x, a["k_kernel"][i])
        v = np.einsum("bld,dhk->blhk", x, a["v_kernel"][i])
        # QK-norm over the whole d-dimensional vector (all heads together).
        q = _np_rope(_np_rms_norm(q, a["q_norm"][i], (-2, -1)), cfg.rope_theta) / np.sqrt(K)
        k = _np_rope(_np_rms_norm(k, a["k_norm"][i], (-2, -1)), cfg.rope_theta)
        s = cap * np.tanh(np.einsum("bqhk,bshk->bhqs", q, k) / cap)
        s_sink = cap * np.tanh(np.einsum("bqhk,hk->bhq", q, a["sink_key"][i]) / cap)
        if mask is not None:
            s = np.where(mask[:, None], s, -np.inf)
        s_all = np.concatenate([s_sink[..., None], s], axis=-1)
        w = np.exp(s_all - s_all.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        o = np.einsum("bhqs,bshk->bqhk", w[..., 1:], v)
        o += np.einsum("bhq,hk->bqhk", w[..., 0], a["sink_value"][i])
        h = h + r * np.einsum("blhk,hkd->bld", o, a["o_kernel"][i])
        m = lay["mlp"]
        x = _np_rms_norm(h, lay["mlp_norm"][i])
        u = np.maximum(x @ m["up_kernel"][i] + m["up_bias"][i], 0.0) ** 2
        h = h + r * (u @ m["down_kernel"][i] + m["down_bias"][i])
    h = _np_rms_norm(h, p["final_norm"])
    return 512.0 / cfg.d_model * h @ p["unembedding"], h


def _random_params(seed, cfg, scale=0.3):
    """Every parameter random (gains, sinks and head too), so that every term is exercised."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), jnp.float32),
                        abstract_params(cfg))


# Jitted entry points (eager Flax dispatches op by op, which costs far more than compiling).
@functools.partial(jax.jit, static_argnames=("cfg",))
def _logits_and_hidden(params, tokens, mask=None, *, cfg):
    return (apply(params, tokens, mask, cfg=cfg),
            apply(params, tokens, mask, cfg=cfg, return_hidden=True))


_init = jax.jit(init_params, static_argnums=1)
SMALL = dict(vocab_size=24, num_layers=2, d_model=64, num_heads=4, seq_len=12, remat="none")
# Also the training test's model, so that its init program is compiled once. Its "dots" policy
# and the parallel tests' "full" exercise rematerialisation inside nn.scan.
TINY = ModelConfig(vocab_size=32, num_layers=2, d_model=64, seq_len=16, dtype="float32",
                   remat="dots")


def _prompt_mask(noisy_BxL):
    """Prompt conditioning: attn[q, k] = noisy[q] >= noisy[k] (clean queries see clean keys)."""
    return noisy_BxL[:, :, None] >= noisy_BxL[:, None, :]


@pytest.mark.parametrize("causal", [False, True])
def test_forward_matches_numpy_float64(causal):
    cfg = ModelConfig(**SMALL, dtype="float32", causal=causal)
    params = _random_params(0, cfg)
    rng = np.random.default_rng(1)
    tokens, mask = rng.integers(0, 24, (2, 12)), _prompt_mask(rng.random((2, 12)) < 0.5)
    logits, hidden = _logits_and_hidden(params, jnp.asarray(tokens), jnp.asarray(mask), cfg=cfg)
    ref_logits, ref_hidden = _np_forward(params, tokens, mask, cfg)
    assert logits.dtype == jnp.float32 and logits.shape == (2, 12, 24)
    np.testing.assert_allclose(np.asarray(logits), ref_logits, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(np.asarray(hidden), ref_hidden, rtol=2e-4, atol=2e-4)


def test_structured_noisy_mask_equals_dense_mask():
    """NoisyMask(noisy, noisy) is the dense prompt mask noisy[q] >= noisy[k], bit for bit."""
    cfg = ModelConfig(**SMALL, dtype="float32")
    params = _random_params(0, cfg)
    rng = np.random.default_rng(3)
    tokens, noisy = jnp.asarray(rng.integers(0, 24, (2, 12))), jnp.asarray(rng.random((2, 12)) < .5)
    dense, _ = _logits_and_hidden(params, tokens, jnp.asarray(_prompt_mask(noisy)), cfg=cfg)
    structured, _ = _logits_and_hidden(params, tokens, NoisyMask(noisy, noisy), cfg=cfg)
    np.testing.assert_array_equal(np.asarray(dense), np.asarray(structured))


def test_mask_and_causality_hide_keys():
    """Tokens a query may not attend to (mask False / future positions) do not change its output."""
    params = _random_params(0, ModelConfig(**SMALL, dtype="float32"))
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 24, (2, 12)))
    changed = tokens.at[:, 7:].set((tokens[:, 7:] + 1) % 24)  # positions 7..11 differ
    mask = _prompt_mask(jnp.broadcast_to(jnp.arange(12) >= 7, (2, 12)))  # 0..6: clean prompt
    for causal, mask_or_none in ((False, mask), (True, None)):
        cfg = ModelConfig(**SMALL, dtype="float32", causal=causal)
        (out, _), (out_changed, _) = (_logits_and_hidden(params, t, mask_or_none, cfg=cfg)
                                      for t in (tokens, changed))
        np.testing.assert_array_equal(out[:, :7], out_changed[:, :7])
        assert np.abs(out[:, 7:] - out_changed[:, 7:]).max() > 1e-3


def test_bfloat16_compute_stays_close_to_float32():
    """bf16 matmuls with float32 norms and softmax; parameters keep their float32 dtype."""
    cfg32, cfg16 = (ModelConfig(**SMALL, dtype=d) for d in ("float32", "bfloat16"))
    params = _random_params(0, cfg32, scale=0.1)
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(0, 24, (2, 12)))
    mask = jnp.asarray(_prompt_mask(rng.random((2, 12)) < 0.5))
    logits32, _ = _logits_and_hidden(params, tokens, mask, cfg=cfg32)
    logits16, hidden16 = _logits_and_hidden(params, tokens, mask, cfg=cfg16)
    assert hidden16.dtype == jnp.bfloat16 and logits16.dtype == jnp.float32
    assert np.linalg.norm(logits16 - logits32) / np.linalg.norm(logits32) < 3e-2


def test_init_scales():
    params = _init(jax.random.key(1), TINY)
    tree = _leaves_by_name(params)
    assert np.std(tree["embedding"]) == pytest.approx(0.02, rel=0.05)
    assert np.std(tree["layers/mlp/up_kernel"]) == pytest.approx(0.4 / 8, rel=0.05)
    assert np.std(tree["layers/attn/q_kernel"]) == pytest.approx(0.4 / 8, rel=0.05)
    for name in ("unembedding", "final_norm", "layers/attn/sink_key", "layers/attn/sink_value",
                 "layers/attn/q_norm", "layers/mlp/up_bias", "layers/mlp_norm"):
        assert not np.any(tree[name]), name
    assert head_kernel(params).shape == (64, 32)


def test_coordinate_check_completep_vs_standard():
    """Reduced version of tools/coord_check.py, which prints the full tables (128 → 1024 wide,
    2 → 16 deep); here only the compile-bound minimum: widths 128 and 512, depths 2 and 16."""
    tables = coord_check(widths=(128, 512), depths=(2, 16))
    width, depth, standard = tables["width"], tables["depth"], tables["width_standard"]

    def spread(values):
        return max(values) / min(values)

    for layer in range(2):  # per layer, across widths
        assert spread([s["delta"][layer] for s in width.values()]) < 2.0
        assert spread([s["init_act"][layer] for s in width.values()]) < 2.0
    assert spread([s["logits"] for s in width.values()]) < 2.0
    # Across depths: the last layer's update, the mean update over layers, and the logits.
    assert spread([s["delta"][-1] for s in depth.values()]) < 2.0
    assert spread([np.mean(s["delta"]) for s in depth.values()]) < 2.0
    assert spread([s["logits"] for s in depth.values()]) < 2.0
    # Init activations shrink like 1/√L: within a factor 2 of that law.
    scaled = [s["init_act"][-1] * math.sqrt(n) for n, s in depth.items()]
    assert spread(scaled) < 2.0
    # The control's updates grow by far more than 4x from width 128 to 512.
    assert standard[512]["delta"][-1] / standard[128]["delta"][-1] > 4.0


def test_short_training_halves_the_loss():
    cfg = TINY
    rng = np.random.default_rng(0)
    x = rng.integers(1, 32, (8, 16))
    lam = rng.uniform(-2.0, 2.0, (8, 1)) * np.ones((1, 16), np.float32)
    z = np.where(rng.random(x.shape) < 1.0 / (1.0 + np.exp(-lam)), x, 0)  # 0 = mask
    x, lam, z = jnp.asarray(x), jnp.asarray(lam, jnp.float32), jnp.asarray(z)
    opt = make_optimizer(lr=0.3, d_model=64, num_layers=2, total_steps=20, warmup_steps=2,
                         batch_size=8)

    def loss_fn(params):
        h = apply(params, z, cfg=cfg, return_hidden=True)
        loss, _ = token_losses_from_hidden(h, head_kernel(params), z, x, lam, mask_id=0,
                                           shift=-1000.0, logit_multiplier=cfg.logit_multiplier)
        return jnp.sum(loss) / jnp.sum(z == 0)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return jax.tree.map(jnp.add, params, updates), opt_state, loss

    params = _init(jax.random.key(1), cfg)
    opt_state = opt.init(params)
    losses = []
    for _ in range(20):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses
