"""Our parameter tree ↔ the format's per-layer state dict (NumPy on the host).

PyTorch Linear weights are [out, in] (y = x·Wᵀ); ours are [in, out] with the heads split out,
and the layers are stacked on a leading L axis by nn.scan:

    ours (see dlmjax.model.transformer)     format
    embedding        [V, D]                 model.embed_tokens.weight               [V, D]
    layers/attn_norm [L, D]                 model.layers.{i}.attn_layernorm.weight  [D]
    layers/attn/q_kernel [L, D, H, K]       model.layers.{i}.self_attn.q_proj.weight [H·K, D]
      (also k_, v_kernel)
    layers/attn/o_kernel [L, H, K, D]       model.layers.{i}.self_attn.o_proj.weight [D, H·K]
    layers/attn/q_norm [L, H, K]            model.layers.{i}.self_attn.q_norm.weight [D]
      (also k_norm)
    layers/attn/sink_key [L, H, K]          model.layers.{i}.self_attn.k_bias       [H, K]
    layers/attn/sink_value [L, H, K]        model.layers.{i}.self_attn.v_bias       [H, K]
    layers/mlp_norm  [L, D]                 model.layers.{i}.mlp_layernorm.weight   [D]
    layers/mlp/up_kernel [L, D, F]          model.layers.{i}.mlp.up_proj.weight     [F, D]
    layers/mlp/up_bias [L, F]               model.layers.{i}.mlp.up_proj.bias       [F]
    layers/mlp/down_kernel [L, F, D]        model.layers.{i}.mlp.down_proj.weight   [D, F]
    layers/mlp/down_bias [L, D]             model.layers.{i}.mlp.down_proj.bias     [D]
    final_norm       [D]                    model.norm.weight                       [D]
    unembedding      [D, V]                 lm_head.weight                          [V, D]

The norm gains are γ in both (applied as 1 + γ). The row-major reshape of H·K keeps head h's
features at h·K … h·K + K − 1, which is the format's head split.
"""

import numpy as np

from dlmjax.hf.format import FormatError
from dlmjax.model import ModelConfig


def _layer_entries(cfg: ModelConfig):
    """(path under params["layers"], format suffix, ours → format, format → ours) per tensor."""
    D, H, K = cfg.d_model, cfg.heads, cfg.head_dim
    entries = [(("attn_norm",), "attn_layernorm.weight", None, None),
               (("mlp_norm",), "mlp_layernorm.weight", None, None)]
    for name in ("q", "k", "v"):
        entries.append((("attn", f"{name}_kernel"), f"self_attn.{name}_proj.weight",
                        lambda w: w.reshape(D, H * K).T, lambda w: w.T.reshape(D, H, K)))
    entries.append((("attn", "o_kernel"), "self_attn.o_proj.weight",
                    lambda w: w.reshape(H * K, D).T, lambda w: w.T.reshape(H, K, D)))
    if cfg.qk_norm:
        for name in ("q", "k"):
            entries.append((("attn", f"{name}_norm"), f"self_attn.{name}_norm.weight",
                            lambda w: w.reshape(H * K), lambda w: w.reshape(H, K)))
    if cfg.attention_sink:
        entries += [(("attn", "sink_key"), "self_attn.k_bias", None, None),
                    (("attn", "sink_value"), "self_attn.v_bias", None, None)]
    entries += [(("mlp", "up_kernel"), "mlp.up_proj.weight", np.transpose, np.transpose),
                (("mlp", "down_kernel"), "mlp.down_proj.weight", np.transpose, np.transpose)]
    if cfg.mlp_bias:
        entries += [(("mlp", "up_bias"), "mlp.up_proj.bias", None, None),
                    (("mlp", "down_bias"), "mlp.down_proj.bias", None, None)]
    return entries


def expected_shapes(cfg: ModelConfig, *, tied=False):
    """Format tensor name → shape, in file order."""
    D, H, K, F, V = cfg.d_model, cfg.heads, cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
    per_layer = {"attn_layernorm.weight": (D,), "mlp_layernorm.weight": (D,),
                 "self_attn.q_proj.weight": (H * K, D), "self_attn.k_proj.weight": (H * K, D),
                 "self_attn.v_proj.weight": (H * K, D), "self_attn.o_proj.weight": (D, H * K),
                 "self_attn.q_norm.weight": (H * K,), "self_attn.k_norm.weight": (H * K,),
                 "self_attn.k_bias": (H, K), "self_attn.v_bias": (H, K),
                 "mlp.up_proj.weight": (F, D), "mlp.down_proj.weight": (D, F),
                 "mlp.up_proj.bias": (F,), "mlp.down_proj.bias": (D,)}
    shapes = {"model.embed_tokens.weight": (V, D)}
    suffixes = [suffix for _, suffix, _, _ in _layer_entries(cfg)]
    for i in range(cfg.num_layers):
        for suffix in suffixes:
            shapes[f"model.layers.{i}.{suffix}"] = per_layer[suffix]
    shapes["model.norm.weight"] = (D,)
    if not tied:
        shapes["lm_head.weight"] = (V, D)
    return shapes


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree, path, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def to_state_dict(params, cfg: ModelConfig, dtype=np.float32):
    """{format name: C-contiguous NumPy array of `dtype`} from host (NumPy) parameters."""
    def cast(a):
        return np.ascontiguousarray(np.asarray(a).astype(dtype))

    tensors = {"model.embed_tokens.weight": cast(params["embedding"])}
    entries = _layer_entries(cfg)
    for i in range(cfg.num_layers):
        for path, suffix, to_hf, _ in entries:
            w = np.asarray(_get(params["layers"], path)[i])
            tensors[f"model.layers.{i}.{suffix}"] = cast(to_hf(w) if to_hf else w)
    tensors["model.norm.weight"] = cast(params["final_norm"])
    tensors["lm_head.weight"] = cast(np.asarray(params["unembedding"]).T)
    return tensors


def check_tensors(tensors, cfg: ModelConfig, *, tied=False, where="state dict"):
    """Raises FormatError naming any missing, unexpected or mis-shaped tensor."""
    expected = expected_shapes(cfg, tied=tied)
    names = set(tensors)
    if tied:
        names.discard("lm_head.weight")  # the released code ignores it when tied
    missing = [n for n in expected if n not in names]
    unexpected = sorted(names - set(expected))
    if missing:
        raise FormatError(f"{where}: missing tensor(s) {missing[:8]}"
                          f"{' …' if len(missing) > 8 else ''} for this config.json")
    if unexpected:
        raise FormatError(f"{where}: unexpected tensor(s) {unexpected[:8]}"
                          f"{' …' if len(unexpected) > 8 else ''}: they belong to a forward pass "
                          f"this config.json does not describe")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise FormatError(f"{where}: {name} has shape {tuple(tensors[name].shape)}, "
                              f"expected {shape}")


def from_state_dict(tensors, cfg: ModelConfig, *, tied=False, dtype=np.float32):
    """Our parameter tree (NumPy, `dtype`) from format tensors; checked first."""
    check_tensors(tensors, cfg, tied=tied)

    def cast(a):
        return np.ascontiguousarray(np.asarray(a).astype(dtype))

    embedding = cast(tensors["model.embed_tokens.weight"])
    head = embedding if tied else cast(tensors["lm_head.weight"])
    params = {"embedding": embedding, "final_norm": cast(tensors["model.norm.weight"]),
              "unembedding": np.ascontiguousarray(head.T), "layers": {}}
    for path, suffix, _, from_hf in _layer_entries(cfg):
        per_layer = []
        for i in range(cfg.num_layers):
            w = tensors[f"model.layers.{i}.{suffix}"]
            per_layer.append(cast(from_hf(np.asarray(w)) if from_hf else w))
        _set(params["layers"], path, np.stack(per_layer))
    return params
