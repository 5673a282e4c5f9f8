"""Every scalar of an experiment config checked once, before jax does anything.

`check_values(config)` checks types, finiteness, ranges and enums of every key it knows (keys
missing from older run configs are skipped); `check_for_mode(config, mode)` adds what one mode
needs: the data's vocabulary against model.vocab_size (train, eval and sample), the sampler's
settings against the sample length. Each failure is a ConfigError "<key>: <reason>".
Structural checks that need the device count (mesh, batch divisibility) stay in config.derive.
"""

from __future__ import annotations

import math
import numbers

from dlmjax.errors import ConfigError

# As dlmjax.diffusion.sampling.METHODS (not imported: validation runs before jax is loaded).
SAMPLE_METHODS = ("ancestral", "adaptive", "threshold", "entropy_bound", "remask")
REMASK_SCHEDULES = ("cap", "rescale", "loop")
SAMPLE_SCHEDULES = ("cosine", "linear")
TOKEN_DTYPES = ("uint16", "uint32", "int32")
MARKOV_STARTS = ("stationary", "successor")  # as dlmjax.data.synthetic.MARKOV_STARTS
_MISSING = object()


def _int(lo=None, hi=None):
    return ("int", lo, hi, False)


def _float(lo=None, hi=None, *, open_lo=False, open_hi=False):
    return ("float", lo, hi, (open_lo, open_hi))


def _enum(*choices):
    return ("enum", choices, None, None)


_BOOL = ("bool", None, None, None)

# key -> rule. Ranges are inclusive unless marked open.
RULES = {
    "seed": _int(0),
    "model.vocab_size": _int(1),  # > the mask id: checked in config.derive
    "model.num_layers": _int(1),
    "model.d_model": _int(1),
    "model.num_heads": _int(0),
    "model.seq_len": _int(1),
    "model.head_dim": _int(0),
    "model.resid_scale": _float(0, open_lo=True),
    "model.head_scaling": _float(0),
    "model.attn_softcap": _float(0),
    "model.rope_theta": _float(0, open_lo=True),
    "model.norm_eps": _float(0, open_lo=True),
    "model.mlp_bias": _BOOL,
    "model.attention_sink": _BOOL,
    "model.qk_norm": _BOOL,
    "noise.scale": _float(0, open_lo=True),
    "noise.per_token_fraction": _float(0, 1),
    "noise.prompt_fraction": _float(0, 1),
    "noise.chunk_size": _int(1),
    "optim.lr": _float(0, open_lo=True),
    "optim.warmup_steps": _int(0),
    "optim.cooldown_fraction": _float(0, 1),
    "optim.b1": _float(0, 1, open_hi=True),
    "optim.b2": _float(0, 1, open_hi=True),
    "optim.weight_decay": _float(0),
    "optim.clip_norm": _float(0),
    "train.batch_size": _int(1),
    "train.microbatches": _int(1),
    "train.steps": _int(0),
    "train.tokens": _int(0),
    "train.log_every": _int(1),
    "train.eval_every": _int(0),
    "train.eval_batches": _int(1),
    "train.checkpoint_every": _int(1),
    "train.keep_checkpoints": _int(1),
    "train.peak_flops_per_device": _float(0),
    "sample.num_samples": _int(0),
    "sample.method": _enum(*SAMPLE_METHODS),
    "sample.steps": _int(1),
    "sample.schedule": _enum(*SAMPLE_SCHEDULES),
    "sample.temperature": _float(0),
    "sample.top_p": _float(0, 1, open_lo=True),
    "sample.float64": _BOOL,
    "sample.length": _int(0),
    "sample.block_size": _int(0),
    "sample.confidence_threshold": _float(0, open_lo=True),
    "sample.entropy_bound": _float(0),
    "sample.remask_schedule": _enum(*REMASK_SCHEDULES),
    "sample.remask_eta": _float(0, 1),
    "eval.grid_points": _int(2),
    "eval.batches": _int(1),
    "mesh.num_devices": _int(0),
    "data.vocab_size": _int(0),
    "data.heldout_fraction": _float(0, 1, open_lo=True, open_hi=True),
    "data.record_length": _int(0),
    "data.token_dtype": _enum(*TOKEN_DTYPES),
    "data.markov_branching": _int(2),
    "data.markov_start": _enum(*MARKOV_STARTS),
    "data.iid_zipf_exponent": _float(0),
    "data.num_topics": _int(1),
    "data.topic_zipf_exponent": _float(0),
    "data.topic_concentration": _float(0, open_lo=True),
    "data.synthetic_seed": _int(0),
    "data.worker_count": _int(0),
    "data.read_threads": _int(1),
    "data.prefetch": _int(1),
}


def lookup(config, key: str):
    """config['a']['b'] for 'a.b', or _MISSING."""
    node = config
    for part in key.split("."):
        try:
            node = node[part]
        except (KeyError, AttributeError, TypeError):
            return _MISSING
    return node


def _bound_text(lo, hi, opens):
    open_lo, open_hi = opens if isinstance(opens, tuple) else (False, False)
    if hi is None:
        return f"must be {'>' if open_lo else '>='} {lo}"
    left, right = "(" if open_lo else "[", ")" if open_hi else "]"
    return f"must be in {left}{lo}, {hi}{right}"


def check_value(key: str, value, rule) -> None:
    kind, lo, hi, opens = rule
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be True or False, got {value!r}")
        return
    if kind == "enum":
        if value not in lo:
            raise ConfigError(f"{key}: {value!r} is not one of {lo}")
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{key}: must be a number, got {value!r}")
    if kind == "int" and not float(value).is_integer():
        raise ConfigError(f"{key}: must be an integer, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number, got {value!r}")
    open_lo, open_hi = opens if isinstance(opens, tuple) else (False, False)
    too_low = lo is not None and (value <= lo if open_lo else value < lo)
    too_high = hi is not None and (value >= hi if open_hi else value > hi)
    if too_low or too_high:
        raise ConfigError(f"{key}: {_bound_text(lo, hi, opens)}, got {value!r}")


def _check_floats_finite(node, prefix=""):
    """No NaN or inf anywhere in the config, including keys without a rule."""
    for name in node.keys() if hasattr(node, "keys") else ():
        value, key = node[name], f"{prefix}{name}"
        if hasattr(value, "keys"):
            _check_floats_finite(value, f"{key}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")


def check_values(config) -> None:
    """Types, finiteness, ranges and enums of every known key (ConfigError naming the key)."""
    _check_floats_finite(config)
    for key, rule in RULES.items():
        value = lookup(config, key)
        if value is not _MISSING:
            check_value(key, value, rule)
    _check_sample(config)


def _check_sample(config) -> None:
    s, seq_len = config.get("sample"), lookup(config, "model.seq_len")
    if s is None or seq_len is _MISSING:
        return
    length = s.get("length", 0) or seq_len
    block = s.get("block_size", 0)
    if block > length:
        raise ConfigError(f"sample.block_size: {block} exceeds the sample length {length} "
                          f"(sample.length, 0 = model.seq_len={seq_len})")
    if config.get("objective") == "autoregressive" and length > seq_len:
        raise ConfigError(f"sample.length: {length} exceeds model.seq_len={seq_len}, the longest "
                          "the causal baseline can sample")


def sample_length(config) -> int:
    return config.sample.get("length", 0) or config.model.seq_len


def check_for_mode(config, mode: str) -> None:
    """check_values, then what `mode` reads: data for train/eval, the tokenizer for sample."""
    check_values(config)
    if mode in ("train", "eval"):
        from dlmjax import data

        data.validate_data_config(config.data, model_vocab_size=config.model.vocab_size,
                                  mode=mode)


def check_tokenizer_vocab(tokenizer, config, where: str) -> None:
    """A tokenizer whose ids reach model.vocab_size would feed the model out-of-range ids."""
    if tokenizer is None:
        return
    size = tokenizer.get_vocab_size()
    if size > config.model.vocab_size:
        raise ConfigError(f"model.vocab_size: {config.model.vocab_size} is smaller than the "
                          f"{size} ids of the tokenizer ({where})")


def check_prompts(encoded, config) -> None:
    """Each prompt (token ids) must leave room in the sample and stay inside the vocabulary."""
    length = sample_length(config)
    for number, ids in enumerate(encoded):
        if len(ids) >= length:
            raise ConfigError(f"--prompt: prompt {number} has {len(ids)} tokens, but a sample has "
                              f"{length} (sample.length, 0 = model.seq_len): leave room to "
                              "generate")
        if len(ids) and max(ids) >= config.model.vocab_size:
            raise ConfigError(f"--prompt: prompt {number} holds token id {max(ids)} >= "
                              f"model.vocab_size={config.model.vocab_size}")
