"""The tokenizer recorded with a run: workdir/tokenizer.json and its hash in config.json.

Training copies the tokenizer it uses into the run directory, so eval and sample decode with
exactly that tokenizer wherever the run is later opened (another machine, a bucket), and a
resumed run that would switch tokenizers stops instead of mixing them.
"""

from __future__ import annotations

from dlmjax import fs
from dlmjax.data import checks
from dlmjax.data import tokenizer as tok_lib

RUN_TOKENIZER_FILE = "tokenizer.json"


def record_tokenizer(data_cfg, workdir: str, *, write: bool = True) -> str:
    """Copies the run's tokenizer to workdir/tokenizer.json; returns its SHA-256 ("" if none).

    The caller stores the hash as data.tokenizer_sha256 in the run's config. ValueError when the
    workdir already holds a different tokenizer (a resumed run must keep its tokenizer) or the
    config pins another hash. Only one process should `write`.
    """
    spec = checks.resolve_tokenizer_spec(data_cfg)
    if spec is None:
        return ""
    blob = tok_lib.tokenizer_bytes(spec)
    sha = tok_lib.sha256_hex(blob)
    pinned = data_cfg.get("tokenizer_sha256", "")
    if pinned and pinned != sha:
        raise ValueError(f"data.tokenizer_sha256={pinned} but {spec} has sha256 {sha}")
    dest = fs.join(workdir, RUN_TOKENIZER_FILE)
    if fs.isfile(dest):
        recorded = tok_lib.sha256_hex(fs.read_bytes(dest))
        if recorded != sha:
            raise ValueError(
                f"data.tokenizer: {spec} (sha256 {sha[:12]}...) is not the tokenizer this run was "
                f"started with ({dest}, sha256 {recorded[:12]}...); resume with that tokenizer or "
                "start a new workdir"
            )
    elif write:
        fs.write_bytes_atomic(dest, blob)
    return sha


def run_tokenizer(workdir: str | None, data_cfg):
    """The tokenizer to decode a run's samples with: workdir/tokenizer.json when the run recorded
    one, else the data config's (None when there is none: samples print as ids)."""
    special = data_cfg.get("special_tokens", "")
    if workdir:
        path = fs.join(workdir, RUN_TOKENIZER_FILE)
        if fs.isfile(path):
            return tok_lib.tokenizer_from_bytes(fs.read_bytes(path), path, special)
    spec = checks.resolve_tokenizer_spec(data_cfg)
    return tok_lib.load_tokenizer(spec, special) if spec else None
