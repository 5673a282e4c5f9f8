"""generation_config.json: the sampler settings a model was evaluated with, both ways.

Keys follow the arguments of the released class's `generate()` (sampling_method, steps per
block, noise_schedule, temperature, block_length, max_length = tokens generated, top_p, top_k),
so users of the remote code get our defaults; `float64` is ours (the released sampler has no
such switch). Keys we do not read are ignored here: they never change the forward pass.
"""

from dlmjax.hf.format import SPECIAL_IDS, FormatError

FILE = "generation_config.json"


def generation_config(sample_cfg, seq_len):
    """The `sample.*` settings of a run as generation_config.json."""
    length = sample_cfg.length or seq_len
    return {
        "sampling_method": sample_cfg.method,
        "steps": sample_cfg.steps,
        "noise_schedule": sample_cfg.schedule,
        "temperature": sample_cfg.temperature,
        "block_length": sample_cfg.block_size or length,
        "max_length": length,
        "top_p": None if sample_cfg.top_p >= 1.0 else sample_cfg.top_p,
        "top_k": None,
        "float64": sample_cfg.float64,
        **SPECIAL_IDS,
    }


def sample_overrides(gen, seq_len, where=FILE):
    """Dotted `sample.*` overrides from a generation_config.json dict."""
    out = {}
    simple = (("sampling_method", "sample.method"), ("steps", "sample.steps"),
              ("noise_schedule", "sample.schedule"), ("temperature", "sample.temperature"),
              ("float64", "sample.float64"))
    for key, target in simple:
        if gen.get(key) is not None:
            out[target] = gen[key]
    if gen.get("top_k") not in (None, 0):
        raise FormatError(f"{where}: top_k={gen['top_k']!r}: dlmjax's samplers have top_p only")
    if "top_p" in gen:
        out["sample.top_p"] = 1.0 if gen["top_p"] is None else float(gen["top_p"])
    length = gen.get("max_length")
    if length is not None:
        if not isinstance(length, int) or length < 1:
            raise FormatError(f"{where}: max_length={length!r} must be a positive integer")
        out["sample.length"] = 0 if length >= seq_len else length
    block = gen.get("block_length")
    if block is not None:
        if not isinstance(block, int) or block < 1:
            raise FormatError(f"{where}: block_length={block!r} must be a positive integer")
        out["sample.block_size"] = 0 if block >= (length or seq_len) else block
    return out
