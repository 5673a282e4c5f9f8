"""manifest.json: what a directory of tokenised shards holds (written by tools/prepare_data.py).

    {"format": "dlmjax-tokenized-v1",
     "shard_format": "parquet" | "array_record", "token_field": "tokens", "token_dtype": "uint32",
     "row_length": 2048, "append_eos": false,       # records are rows of the packed stream
     "documents": ..., "tokens": ..., "text_bytes": ..., "bytes_per_token": ...,
     "tokenizer_sha256": "...", "vocab_size": 131072, "special_tokens": [...],
     "shards": [{"path": "part-00000.parquet", "documents": ..., "tokens": ..., "records": ...,
                 "max_id": ..., "sha256": ..., "row_group_tokens": [...]}, ...],
     "inputs": [...], "settings": {...}}

The pipeline reads the shard layout from it (no scan of the shards at start-up), checks the ids
against the vocabulary and the tokenizer hash against the run's tokenizer. A copy of the
tokenizer lives next to it as tokenizer.json.
"""

from __future__ import annotations

import json

from dlmjax import errors, fs

MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
FORMAT = "dlmjax-tokenized-v1"


def parent(path: str) -> str:
    """The directory of a local or gs:// file path."""
    return path.rstrip("/").rsplit("/", 1)[0] if "/" in path else "."


def read_manifest(directory: str) -> dict | None:
    """The manifest of a shard directory, or None when it has none."""
    path = fs.join(directory, MANIFEST_FILE)
    if not fs.isfile(path):
        return None
    try:
        with errors.reading(path):
            text = fs.read_text(path)
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} manifest")
    manifest["directory"] = directory
    return manifest


def write_manifest(directory: str, manifest: dict) -> str:
    path = fs.join(directory, MANIFEST_FILE)
    fs.write_text_atomic(path, json.dumps(manifest, indent=1) + "\n")
    return path


def shard_paths(manifest: dict) -> list[str]:
    return [fs.join(manifest["directory"], shard["path"]) for shard in manifest["shards"]]


def manifests_of(files: list[str], key: str) -> dict[str, tuple[dict, dict]]:
    """file -> (manifest, its shard entry) for files in directories that have a manifest.

    A file in such a directory that the manifest does not list is an error: it was not written
    by the preparation the manifest describes.
    """
    found: dict[str, tuple[dict, dict]] = {}
    cache: dict[str, dict | None] = {}
    for f in files:
        directory = parent(f)
        if directory not in cache:
            cache[directory] = read_manifest(directory)
        manifest = cache[directory]
        if manifest is None:
            continue
        entries = manifest.setdefault("_by_name", {s["path"]: s for s in manifest["shards"]})
        name = f.rstrip("/").rsplit("/", 1)[-1]
        if name not in entries:
            raise ValueError(
                f"{key}: {f} is not listed in {fs.join(directory, MANIFEST_FILE)}; give only the "
                "shards that manifest lists (e.g. the directory itself)"
            )
        found[f] = (manifest, entries[name])
    return found


def tokenizer_next_to(manifest: dict) -> str | None:
    """The tokenizer.json stored with the shards, if any."""
    path = fs.join(manifest["directory"], TOKENIZER_FILE)
    return path if fs.isfile(path) else None
