"""The released checkpoint format: export → import round trip, sharding, an independent float64
NumPy forward that reads only the exported files, refusals, tokenizers, tied embeddings."""

import copy
import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import tokenizers
from interop_fixtures import random_params, tiny_config

from dlmjax import config as config_lib
from dlmjax import evaluation, rundir
from dlmjax import model as model_lib
from dlmjax.data import tokenizer as tok_lib
from dlmjax.hf import (
    export_checkpoint,
    import_checkpoint,
    safetensors_io,
    state_dict,
    tokenizer_files,
)
from dlmjax.hf import format as format_lib
from dlmjax.hf.exporter import export_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _params(workdir):
    run = config_lib.derive(rundir.load_config(workdir), jax.device_count())
    params, step = evaluation.restore_params(run, workdir)
    return jax.device_get(params), step, run


@pytest.fixture(scope="module")
def trained(interop_run):
    """The shared tiny model: imported from random weights, then trained 6 steps."""
    return interop_run["run"], rundir.load_config(interop_run["run"])


@pytest.fixture(scope="module")
def round_trip(trained, tmp_path_factory):
    workdir, config = trained
    out = str(tmp_path_factory.mktemp("export"))
    result = export_checkpoint(workdir, out)
    imported = str(tmp_path_factory.mktemp("imported") / "run")
    report = import_checkpoint(out, imported, config)
    return workdir, out, imported, result, report


def test_export_writes_the_format(round_trip):
    _, out, _, result, _ = round_trip
    assert result["step"] == 6
    assert set(result["files"]) == {"config.json", "generation_config.json", "model.safetensors",
                                    "tokenizer.json", "tokenizer_config.json",
                                    "special_tokens_map.json"}
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["model_type"] == "gidd" and cfg["architectures"] == ["GiddForDiffusionLM"]
    assert cfg["auto_map"]["AutoModelForCausalLM"] == (
        "dvruette/gidd-unif-3b--modeling_gidd.GiddForDiffusionLM")
    assert set(format_lib.FORWARD_DEFAULTS) <= set(cfg)  # every forward key written explicitly
    assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["head_dim"]) == (64, 1, 64)
    assert cfg["head_scaling"] == 512 / 64 and cfg["resid_scale"] == 4.0
    assert cfg["weight_scaling"] == 1.0 and cfg["noise_type"] == 0.0  # balanced
    gen = json.load(open(os.path.join(out, "generation_config.json")))
    assert (gen["sampling_method"], gen["steps"], gen["noise_schedule"], gen["temperature"],
            gen["block_length"], gen["max_length"]) == ("adaptive", 4, "cosine", 0.0, 8, 16)
    names = safetensors.numpy.load_file(os.path.join(out, "model.safetensors"))
    assert names["model.layers.1.self_attn.q_proj.weight"].shape == (64, 64)
    assert names["lm_head.weight"].shape == (4096, 64)


def test_export_then_import_is_bitwise_with_the_same_elbo(round_trip):
    workdir, _, imported, _, report = round_trip
    original, _, run = _params(workdir)
    restored, step, imported_run = _params(imported)
    assert step == 0 and report["defaulted_keys"] == [] and not report["tie_word_embeddings"]
    assert jax.tree.structure(original) == jax.tree.structure(restored)
    for a, b in zip(jax.tree.leaves(original), jax.tree.leaves(restored)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)  # bitwise
    assert _forward_fields(imported_run.model) == _forward_fields(run.model)
    assert imported_run.shift == run.shift
    for key in ("method", "steps", "schedule", "temperature", "block_size", "length"):
        assert imported_run.config.sample[key] == run.config.sample[key], key
    elbo_original = evaluation.evaluate_checkpoint(run, workdir)
    elbo_imported = evaluation.evaluate_checkpoint(imported_run, imported)
    assert np.isfinite(elbo_original["elbo_nats_per_token"])
    for key in ("elbo_nats_per_token", "stderr", "perplexity", "bits_per_byte", "num_tokens"):
        assert elbo_imported[key] == elbo_original[key], key


def test_an_imported_run_trains_on_and_samples(interop_run, round_trip):
    # The shared run was imported at step 0 and trained from there (preempted once).
    lines = [json.loads(line) for line in open(os.path.join(interop_run["run"], "metrics.jsonl"))]
    assert [m["step"] for m in lines] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(m["loss"]) for m in lines)
    assert json.load(open(os.path.join(interop_run["run"], "hf_import.json")))["source"] == (
        interop_run["source"])
    params, _, run = _params(round_trip[2])
    texts = evaluation.sample_texts(params, run, num_samples=2, prompts=["And God said"])
    assert len(texts) == 2 and all(t.startswith("And God said") for t in texts)


def test_sharded_export_and_import(trained, tmp_path):
    workdir, config = trained
    out = str(tmp_path / "sharded")
    result = export_checkpoint(workdir, out, max_shard_bytes=300_000)
    shards = sorted(f for f in result["files"] if f.endswith(".safetensors"))
    assert len(shards) > 2 and "model.safetensors" not in shards
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.load(open(os.path.join(out, safetensors_io.INDEX_FILE)))
    seen, total = {}, 0
    for shard in shards:  # the official reader opens every shard
        tensors = safetensors.numpy.load_file(os.path.join(out, shard))
        size = sum(t.nbytes for t in tensors.values())
        assert size <= 300_000 or len(tensors) == 1
        total += size
        seen.update(dict.fromkeys(tensors, shard))
    assert seen == index["weight_map"] and total == index["metadata"]["total_size"]
    # The 4096 × 64 float32 embedding (1 MB) exceeds the limit and gets a shard of its own.
    assert list(safetensors.numpy.load_file(os.path.join(out, seen["lm_head.weight"]))) == [
        "lm_head.weight"]
    imported = str(tmp_path / "imported")
    import_checkpoint(out, imported, config)
    for a, b in zip(jax.tree.leaves(_params(workdir)[0]), jax.tree.leaves(_params(imported)[0])):
        np.testing.assert_array_equal(a, b)
    # Re-exporting over it as one file removes the stale shards.
    export_checkpoint(workdir, out, overwrite=True)
    assert sorted(f for f in os.listdir(out) if f.startswith("model")) == ["model.safetensors"]
    with pytest.raises(FileExistsError, match="overwrite"):
        export_checkpoint(workdir, out)


def test_bfloat16_export_imports_the_rounded_weights(trained, tmp_path):
    workdir, config = trained
    out = str(tmp_path / "bf16")
    export_checkpoint(workdir, out, dtype="bfloat16")
    assert json.load(open(os.path.join(out, "config.json")))["torch_dtype"] == "bfloat16"
    imported = str(tmp_path / "imported")
    import_checkpoint(out, imported, config)
    for a, b in zip(jax.tree.leaves(_params(workdir)[0]), jax.tree.leaves(_params(imported)[0])):
        np.testing.assert_array_equal(a.astype(ml_dtypes.bfloat16).astype(np.float32), b)


# ------------------------------------------------------------ independent float64 reference


def _load_exported(directory):
    """config.json and every tensor (float64) of an exported directory, via safetensors."""
    cfg = json.load(open(os.path.join(directory, "config.json")))
    index = os.path.join(directory, "model.safetensors.index.json")
    files = (sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index)
             else ["model.safetensors"])
    tensors = {}
    for file in files:
        tensors.update(safetensors.numpy.load_file(os.path.join(directory, file)))
    return cfg, {k: v.astype(np.float64) for k, v in tensors.items()}


def numpy_forward(directory, tokens_BxL, noisy_BxL=None):
    """Logits from the format's description alone: PyTorch-layout weights, y = x·Wᵀ·scale + b,
    RMSNorm gain (1 + γ), QK-norm over the whole D-wide q and k, NeoX RoPE, sink key/value
    prepended after RoPE, scores · head_dim^−½, soft-cap, mask, residual scale resid_scale / L."""
    cfg, w = _load_exported(directory)
    D, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    H, K = cfg["num_attention_heads"], cfg["head_dim"]
    eps, cap, branch = cfg["rms_norm_eps"], cfg["attn_soft_cap"], cfg["resid_scale"] / L
    B, S = tokens_BxL.shape

    def scale(fan_in, fan_out, how):
        return {"fan_in": fan_in**-0.5, "fan_out": fan_out**-0.5}.get(how, how)

    def linear(x, name, bias=False):
        weight = w[name + ".weight"]
        y = x @ weight.T * scale(weight.shape[1], weight.shape[0], cfg["weight_scaling"])
        return y + w[name + ".bias"] if bias else y

    def norm(x, gain):
        return x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + eps) * (1.0 + gain)

    def rope(x_BxSxHxK):
        inv = cfg["rope_theta"] ** (-np.arange(0, K, 2) / K)
        angle = np.arange(S)[:, None] * inv[None, :]
        cos, sin = np.cos(angle)[None, :, None, :], np.sin(angle)[None, :, None, :]
        x1, x2 = x_BxSxHxK[..., :K // 2], x_BxSxHxK[..., K // 2:]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)

    visible_BxSxS = (np.ones((B, S, S), bool) if noisy_BxL is None
                     else noisy_BxL[:, :, None] >= noisy_BxL[:, None, :])
    h = w["model.embed_tokens.weight"][tokens_BxL]
    for i in range(L):
        p = f"model.layers.{i}."
        x = norm(h, w[p + "attn_layernorm.weight"])
        q, k, v = (linear(x, p + f"self_attn.{n}_proj") for n in "qkv")
        if cfg["use_qk_norm"]:
            q = norm(q, w[p + "self_attn.q_norm.weight"])
            k = norm(k, w[p + "self_attn.k_norm.weight"])
        q, k, v = (a.reshape(B, S, H, K) for a in (q, k, v))
        q, k = rope(q), rope(k)
        mask = visible_BxSxS
        if cfg["attention_bias"]:  # one extra key/value position, seen by every query
            k = np.concatenate([np.broadcast_to(w[p + "self_attn.k_bias"], (B, 1, H, K)), k], 1)
            v = np.concatenate([np.broadcast_to(w[p + "self_attn.v_bias"], (B, 1, H, K)), v], 1)
            mask = np.concatenate([np.ones((B, S, 1), bool), mask], axis=-1)
        s = np.einsum("bqhk,bshk->bhqs", q, k) * K**-0.5
        s = cap * np.tanh(s / cap)
        s = np.where(mask[:, None], s, -np.inf)
        prob = np.exp(s - s.max(-1, keepdims=True))
        prob /= prob.sum(-1, keepdims=True)
        o = np.einsum("bhqs,bshk->bqhk", prob, v).reshape(B, S, H * K)
        h = h + branch * linear(o, p + "self_attn.o_proj")
        x = norm(h, w[p + "mlp_layernorm.weight"])
        u = np.maximum(linear(x, p + "mlp.up_proj", cfg["mlp_bias"]), 0.0) ** 2
        h = h + branch * linear(u, p + "mlp.down_proj", cfg["mlp_bias"])
    h = norm(h, w["model.norm.weight"])
    if cfg["tie_word_embeddings"]:
        return h @ w["model.embed_tokens.weight"].T
    head = cfg["head_scaling"]
    head = scale(D, cfg["vocab_size"], head)
    return h @ w["lm_head.weight"].T * head


def _forward_fields(m):
    """What the forward pass depends on (num_heads 0 and head_scaling 0 are derived spellings)."""
    return (m.vocab_size, m.num_layers, m.d_model, m.heads, m.head_dim, m.mlp_dim, m.seq_len,
            m.residual_multiplier, m.logit_multiplier, m.projection_scale(3, 5), m.mlp_bias,
            m.attention_sink, m.qk_norm, m.norm_eps, m.attn_softcap, m.rope_theta, m.dtype,
            m.param_dtype, m.causal)


FORWARD_CASES = {
    "study": {},  # our defaults: weight_scaling none, head 512/D, sinks, QK-norm, MLP biases
    "fan_in": dict(weight_scaling="fan_in", head_scaling=2.5, resid_scale=2.0, mlp_bias=False,
                   qk_norm=False, attn_softcap=4.0, rope_theta=500.0, norm_eps=1e-5,
                   num_heads=4),
    "fan_out": dict(weight_scaling="fan_out", head_scaling=0.7, attention_sink=False,
                    num_heads=2),
}


@pytest.mark.parametrize("case", list(FORWARD_CASES))
def test_float64_numpy_forward_of_the_exported_files(case, tmp_path):
    config = tiny_config(dtype="float32", **FORWARD_CASES[case])
    config.model.vocab_size = 96
    config.data.source = "synthetic_iid"
    config.data.vocab_size = 96
    run = config_lib.derive(config, jax.device_count())
    out = str(tmp_path / "export")
    params = random_params(run.model, seed=len(case))
    export_params(params, run, out)
    tokens = np.random.default_rng(0).integers(0, 96, (2, 24))
    noisy = np.arange(24)[None, :] >= np.array([[0], [9]])  # row 1: a clean 9-token prompt
    want = numpy_forward(out, tokens, noisy)
    forward = jax.jit(functools.partial(model_lib.apply, cfg=run.model))
    got = forward(params, jnp.asarray(tokens),
                  model_lib.NoisyMask(jnp.asarray(noisy), jnp.asarray(noisy)))
    assert np.std(want) > 0.5  # the random model is far from the zero-head init
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4 * np.std(want))
    if case == "fan_out":
        return  # importing is checked by the other cases and the round trip
    imported = str(tmp_path / "imported")
    import_checkpoint(out, imported, config)
    restored = _params(imported)
    assert _forward_fields(restored[2].model) == _forward_fields(run.model)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(restored[0])):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------ refusals


def _write_export(directory, cfg, tensors=None):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(cfg, f)
    if tensors is not None:
        safetensors_io.write(str(directory), tensors)


def _small_hf_config(**changes):
    model = config_lib.derive(tiny_config(num_heads=2), 8).model
    return {**format_lib.hf_config(model, shift=0.0), **changes}


@pytest.mark.parametrize("changes,message", [
    ({"use_parallel_residual": True}, "unknown key.*use_parallel_residual"),
    ({"is_causal": True}, "is_causal"),
    ({"intermediate_size": 100}, "intermediate_size=100"),
    ({"head_dim": 16}, "head_dim=16"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
    ({"weight_scaling": "sqrt"}, "weight_scaling='sqrt'"),
    ({"noise_type": 0.5}, "noise_type=0.5"),
    ({"max_log_snr": 12.0}, "max_log_snr=12.0"),
    ({"eos_token_id": 7}, "eos_token_id=7"),
    ({"model_type": "llama"}, "model_type='llama'"),
    ({"attn_soft_cap": None}, "attn_soft_cap"),
])
def test_import_refuses_what_it_cannot_honour(changes, message, tmp_path):
    _write_export(tmp_path / "src", _small_hf_config(**changes))
    with pytest.raises(format_lib.FormatError, match=message):
        import_checkpoint(str(tmp_path / "src"), str(tmp_path / "run"), tiny_config())
    assert not os.path.exists(tmp_path / "run" / "config.json")


def test_missing_keys_take_the_released_defaults_and_tensors_are_checked(tmp_path):
    cfg = _small_hf_config()
    for key in ("weight_scaling", "head_scaling", "attention_bias", "mlp_bias", "noise_type"):
        del cfg[key]
    overrides, defaulted, tied = format_lib.experiment_overrides(cfg)
    assert defaulted == ["attention_bias", "head_scaling", "mlp_bias", "noise_type",
                         "weight_scaling"]
    assert overrides["model.weight_scaling"] == "fan_in" and overrides["model.head_scaling"] == 1.0
    assert not overrides["model.attention_sink"] and not overrides["model.mlp_bias"]
    assert overrides["noise.type"] == "balanced" and not tied
    assert format_lib.noise_type_name(-1000.0) == "masked" == format_lib.noise_type_name(-50)
    # A bias the config does not describe is refused by name.
    model = config_lib.derive(tiny_config(num_heads=2), 8).model
    tensors = {name: np.zeros(shape, np.float32)
               for name, shape in state_dict.expected_shapes(model).items()}
    tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros(64, np.float32)
    _write_export(tmp_path / "src", _small_hf_config(), tensors)
    with pytest.raises(format_lib.FormatError, match="q_proj.bias"):
        import_checkpoint(str(tmp_path / "src"), str(tmp_path / "run"), tiny_config())


def test_import_tool_exits_2_naming_the_key(tmp_path):
    _write_export(tmp_path / "src", _small_hf_config(use_sliding_window=True))
    result = subprocess.run([sys.executable, "tools/import_hf.py", f"--source={tmp_path}/src",
                             f"--workdir={tmp_path}/run"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "use_sliding_window" in result.stderr


def test_tied_embeddings_import_as_a_copied_head(tmp_path):
    config = tiny_config(dtype="float32", num_heads=2, weight_scaling="1.7")
    config.model.vocab_size = 96
    config.data.source = "synthetic_iid"
    config.data.vocab_size = 96
    run = config_lib.derive(config, jax.device_count())
    rng = np.random.default_rng(1)
    tensors = {name: rng.normal(0, 0.3, shape).astype(np.float32)
               for name, shape in state_dict.expected_shapes(run.model, tied=True).items()}
    src = tmp_path / "src"
    cfg = {**format_lib.hf_config(run.model, shift=0.0), "tie_word_embeddings": True,
           "head_scaling": 3.0}  # ignored when tied, as in the released code
    _write_export(src, cfg, tensors)
    import_checkpoint(str(src), str(tmp_path / "run"), config)
    params, _, imported_run = _params(str(tmp_path / "run"))
    np.testing.assert_array_equal(params["unembedding"], tensors["model.embed_tokens.weight"].T)
    assert imported_run.model.logit_multiplier == 1.0
    tokens = rng.integers(0, 96, (1, 16))
    got = jax.jit(functools.partial(model_lib.apply, cfg=imported_run.model))(
        params, jnp.asarray(tokens))
    want = numpy_forward(str(src), tokens)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4 * np.std(want))


def test_tokenizer_special_tokens_are_renamed_not_renumbered():
    tok = tok_lib.train_bpe_tokenizer(["in the beginning god created the heaven"] * 20, 300)
    mapping = dict(zip(tok_lib.SPECIAL_TOKENS, ("<s>", "</s>", "<pad>", "<mask>")))
    data = json.loads(tok.to_str())
    foreign = json.dumps(tokenizer_files._rename(data, mapping))
    text, renamed = tokenizer_files.import_tokenizer(foreign)
    assert renamed == {v: k for k, v in mapping.items()}
    back = tokenizers.Tokenizer.from_str(text)
    tok_lib.check_special_tokens(back, "renamed")
    sentence = "the heaven and the earth"
    assert back.encode(sentence).ids == tok.encode(sentence).ids
    broken = copy.deepcopy(data)
    broken["added_tokens"] = [t for t in broken["added_tokens"] if t["id"] != 3]
    with pytest.raises(format_lib.FormatError, match="id 3"):
        tokenizer_files.import_tokenizer(json.dumps(broken))
