"""tokenizer.json in and out of the format.

dlmjax requires ids 0-3 to be its special tokens (BOS, EOS, PAD, MASK spelled `<|bos|>` …). The
study's tokenizer has the same ids but may spell them differently; on import such a tokenizer
gets its four special tokens renamed (everywhere the JSON names them), which changes no id and
no encoding of ordinary text, and the old spellings are reported. Export writes the tokenizer
with `tokenizer_config.json` and `special_tokens_map.json`, so AutoTokenizer knows the roles.
"""

import json

import tokenizers

from dlmjax import fs
from dlmjax.data import tokenizer as tok_lib
from dlmjax.hf.format import FormatError

ROLES = ("bos_token", "eos_token", "pad_token", "mask_token")


def _special_at_ids(data, where):
    by_id = {t.get("id"): t for t in data.get("added_tokens", [])}
    names = []
    for token_id, role in enumerate(ROLES):
        entry = by_id.get(token_id)
        if entry is None or not entry.get("special", False):
            raise FormatError(f"{where}: id {token_id} is not a special token; dlmjax needs "
                              f"{role.split('_')[0].upper()} at id {token_id} (ids 0-3 = BOS, "
                              f"EOS, PAD, MASK)")
        names.append(entry["content"])
    return names


def _rename(node, mapping):
    if isinstance(node, str):
        return mapping.get(node, node)
    if isinstance(node, list):
        return [_rename(item, mapping) for item in node]
    if isinstance(node, dict):
        return {mapping.get(k, k): _rename(v, mapping) for k, v in node.items()}
    return node


def import_tokenizer(text, where="tokenizer.json"):
    """(tokenizer.json text with dlmjax's special spellings, {old: new} renames done)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise FormatError(f"{where}: not valid JSON ({e})") from None
    old = _special_at_ids(data, where)
    mapping = {o: n for o, n in zip(old, tok_lib.SPECIAL_TOKENS) if o != n}
    clash = [n for n in mapping.values() if n in json.dumps(data)]
    if clash:
        raise FormatError(f"{where}: already contains {clash} at other ids; cannot rename the "
                          f"special tokens at ids 0-3 to them")
    out = json.dumps(_rename(data, mapping), ensure_ascii=False) if mapping else text
    try:
        tok = tokenizers.Tokenizer.from_str(out)
    except Exception as e:  # the Rust side raises a bare Exception on a malformed tokenizer
        raise FormatError(f"{where}: cannot load ({e})") from None
    tok_lib.check_special_tokens(tok, where)
    return out, mapping


def export_files(tokenizer_text, seq_len):
    """{file name: text} of the tokenizer files of an exported directory."""
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": seq_len,
              **dict(zip(ROLES, tok_lib.SPECIAL_TOKENS))}
    return {"tokenizer.json": tokenizer_text,
            "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
            "special_tokens_map.json": json.dumps(dict(zip(ROLES, tok_lib.SPECIAL_TOKENS)),
                                                  indent=2) + "\n"}


def run_tokenizer_text(config, workdir):
    """The run's tokenizer.json text: workdir/tokenizer.json (the run's record of it) first, else
    data.tokenizer of a text source; None for synthetic data."""
    from dlmjax.data.pipeline import TEXT_SOURCES

    recorded = fs.join(workdir, "tokenizer.json")
    if fs.isfile(recorded):
        return fs.read_text(recorded)
    if config.data.source in TEXT_SOURCES:
        return tok_lib.load_tokenizer(config.data.tokenizer).to_str()
    return None
