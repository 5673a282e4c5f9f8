"""Parameter and FLOP accounting with the study's conventions (docs/science.md).

Embeddings (input table and output head) never count towards P or M in the study's numbers;
`include_embeddings=True` exists for cost estimates where the head dominates (tiny models, big V).
"""

CONVENTIONS = ("deepseek", "6p")


def non_embedding_params(num_layers: int, d_model: int) -> int:
    """P = L·(12d² + 14d) + d, the study's count (docs/science.md)."""
    return num_layers * (12 * d_model**2 + 14 * d_model) + d_model


def embedding_params(vocab_size: int, d_model: int) -> int:
    """Input embedding plus the untied head."""
    return 2 * vocab_size * d_model


def _check_vocab(include_embeddings: bool, vocab_size: int | None) -> None:
    if include_embeddings and (vocab_size is None or vocab_size <= 0):
        raise ValueError(f"include_embeddings=True needs a positive vocab_size, got {vocab_size!r}")


def params(num_layers: int, d_model: int, *, include_embeddings: bool = False,
           vocab_size: int | None = None) -> int:
    """P, optionally plus the embedding table and head."""
    _check_vocab(include_embeddings, vocab_size)
    p = non_embedding_params(num_layers, d_model)
    return p + embedding_params(vocab_size, d_model) if include_embeddings else p


def flops_per_token(num_layers: int, d_model: int, seq_len: int, convention: str = "deepseek", *,
                    include_embeddings: bool = False, vocab_size: int | None = None) -> float:
    """Training FLOPs per token (non-embedding unless include_embeddings).

    "deepseek": M = 72·L·d² + 12·L·d·S (forward + backward with full bidirectional attention);
    embeddings add the head matmul, 6·d·V (the input lookup is a gather, no FLOPs).
    "6p": 6·P; embeddings add 6·2·V·d (every parameter counts, as in the 6N rule).
    """
    _check_vocab(include_embeddings, vocab_size)
    if convention == "deepseek":
        m = float(72 * num_layers * d_model**2 + 12 * num_layers * d_model * seq_len)
        return m + 6.0 * d_model * vocab_size if include_embeddings else m
    if convention == "6p":
        return 6.0 * params(num_layers, d_model, include_embeddings=include_embeddings,
                            vocab_size=vocab_size)
    raise ValueError(f"unknown FLOP convention {convention!r}; expected one of {CONVENTIONS}")


def training_flops(num_layers: int, d_model: int, seq_len: int, tokens: float,
                   convention: str = "deepseek", *, include_embeddings: bool = False,
                   vocab_size: int | None = None) -> float:
    """C = M·D."""
    return flops_per_token(num_layers, d_model, seq_len, convention,
                           include_embeddings=include_embeddings,
                           vocab_size=vocab_size) * float(tokens)


def config_value(config: dict, dotted: str, source: str = "config"):
    """config["a"]["b"] for "a.b"; a missing key raises ValueError naming it and `source`."""
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ValueError(f"{source}: missing config key {dotted!r}")
        node = node[part]
    return node


def config_accounting(config: dict, *, convention: str = "deepseek",
                      include_embeddings: bool = False) -> dict:
    """P, M and per-step numbers of a nested experiment config (the trainer's config.json).

    Reads model.num_layers, model.d_model, model.seq_len, model.vocab_size and, when present,
    train.batch_size and train.steps (then also tokens D and compute C = M·D).
    """
    num_layers = int(config_value(config, "model.num_layers"))
    d_model = int(config_value(config, "model.d_model"))
    seq_len = int(config_value(config, "model.seq_len"))
    vocab_size = int(config_value(config, "model.vocab_size"))
    m = flops_per_token(num_layers, d_model, seq_len, convention,
                        include_embeddings=include_embeddings, vocab_size=vocab_size)
    out = {
        "num_layers": num_layers, "d_model": d_model, "seq_len": seq_len, "vocab_size": vocab_size,
        "params": params(num_layers, d_model, include_embeddings=include_embeddings,
                         vocab_size=vocab_size),
        "flops_per_token": m,
    }
    train = config.get("train", {})
    if "batch_size" in train:
        out["tokens_per_step"] = int(train["batch_size"]) * seq_len
        if "steps" in train:
            out["tokens"] = out["tokens_per_step"] * int(train["steps"])
            out["compute"] = m * out["tokens"]
    return out
