"""Corpus preparation: text files (local or gs://) -> tokenised, packed shards + manifest.json.

The documents of the inputs, in order, are cut into chunks of about `shard_mb` MB of text; chunk
k becomes shard part-<k>: its documents tokenised (no special tokens added), each followed by
EOS, the resulting stream cut into records of `row_length` tokens (the last one shorter). The
concatenated records of all shards are therefore exactly the stream the pipeline's own
tokenisation of the same documents gives. A shard depends only on its chunk and the settings,
which is what makes the output

- parallel: chunks are tokenised by `workers` processes;
- deterministic: the bytes do not depend on the number of workers or on interruptions;
- resumable: a shard is written in one atomic step (a temporary file renamed locally, one object
  upload on a bucket), then a record of it under _progress/; a rerun skips the recorded shards
  and rewrites any other, so an interruption (Ctrl-C, kill -9) never leaves a torn or duplicated
  shard. The first run writes _progress/plan.json (inputs, tokenizer, settings); a rerun with
  other inputs or settings into the same directory is refused.

At the end the manifest (documents, tokens, bytes per token, tokenizer hash, shard list and
layouts) is written and a copy of the tokenizer stored as tokenizer.json next to it.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import multiprocessing
import os
import signal
import tempfile
import time

import numpy as np
from absl import logging

from dlmjax import fs
from dlmjax.data import files as files_lib
from dlmjax.data import manifest as manifest_lib
from dlmjax.data import shard_format
from dlmjax.data import tokenizer as tok_lib

PROGRESS_DIR = "_progress"
PLAN_FILE = "plan.json"
DOCS_PER_ENCODE = 256
SHARD_FORMATS = ("parquet", "array_record")
SUFFIX = {"parquet": ".parquet", "array_record": ".array_record"}


@dataclasses.dataclass(frozen=True)
class PrepareSettings:
    text_field: str = "text"  # jsonl key / parquet column of the text
    shard_format: str = "parquet"  # "parquet" or "array_record"
    row_length: int = 2048  # tokens per record (the study's rows); the pipeline cuts its own S
    shard_mb: float = 256.0  # MB of input text per shard
    rows_per_row_group: int = 16  # parquet: rows decoded by one read of the pipeline
    token_field: str = "tokens"  # parquet: the list<int32> column
    token_dtype: str = "auto"  # ArrayRecord ids: uint16 when the vocabulary fits, else uint32
    special_tokens: str = ""  # names of ids 0-3 ("" = ours or the study's)

    def check(self) -> None:
        if self.shard_format not in SHARD_FORMATS:
            raise ValueError(f"--format={self.shard_format!r} must be one of {SHARD_FORMATS}")
        if self.row_length < 1 or self.rows_per_row_group < 1 or self.shard_mb <= 0:
            raise ValueError("--row_length, --rows_per_row_group and --shard_mb must be positive")
        if self.token_dtype not in ("auto",) + shard_format.TOKEN_DTYPES:
            raise ValueError(f"--token_dtype={self.token_dtype!r} must be auto or one of "
                             f"{shard_format.TOKEN_DTYPES}")


def shard_name(index: int, settings: PrepareSettings) -> str:
    return f"part-{index:05d}{SUFFIX[settings.shard_format]}"


# --------------------------------------------------------------------------- worker side

_WORKER: dict = {}


def _init_state(tokenizer_json: str, settings: dict, output_dir: str, token_dtype: str) -> None:
    import pyarrow.parquet  # noqa: F401 - imported once per worker, not inside the first shard

    _WORKER.update(
        tok=tok_lib.tokenizer_from_bytes(tokenizer_json.encode(), "--tokenizer",
                                         settings["special_tokens"]),
        settings=PrepareSettings(**settings), output_dir=output_dir, token_dtype=token_dtype)


def _init_worker(*args) -> None:
    # One core per worker: parallelism comes from the processes, and tokens/s per worker is a
    # per-core figure. Ctrl-C is the parent's to handle (it terminates the pool).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _init_state(*args)


def _make_shard(index: int, texts: list[str], text_bytes: int) -> dict:
    """Tokenises one chunk, writes its shard and its progress record; returns the record."""
    tok, settings = _WORKER["tok"], _WORKER["settings"]
    started = time.process_time()
    eos = np.array([tok_lib.EOS_ID], dtype=np.uint32)
    pieces = []
    for begin in range(0, len(texts), DOCS_PER_ENCODE):
        for ids in tok_lib.encode_documents(tok, texts[begin : begin + DOCS_PER_ENCODE]):
            pieces.extend((ids, eos))
    stream = np.concatenate(pieces)
    rows = np.split(stream, np.arange(settings.row_length, len(stream), settings.row_length))
    blob = shard_format.encode_shard(
        rows, shard_format=settings.shard_format, token_field=settings.token_field,
        token_dtype=_WORKER["token_dtype"], row_group_size=settings.rows_per_row_group)
    name = shard_name(index, settings)
    fs.write_bytes_atomic(fs.join(_WORKER["output_dir"], name), blob)
    record = {"path": name, "documents": len(texts), "tokens": len(stream), "records": len(rows),
              "text_bytes": text_bytes, "max_id": int(stream.max()),
              "sha256": tok_lib.sha256_hex(blob)}
    if settings.shard_format == "parquet":
        per_group = settings.rows_per_row_group
        record["row_group_tokens"] = [
            int(sum(len(r) for r in rows[g : g + per_group]))
            for g in range(0, len(rows), per_group)]
    record["cpu_seconds"] = time.process_time() - started  # not in the manifest: varies
    progress = fs.join(_WORKER["output_dir"], PROGRESS_DIR, f"{name}.json")
    fs.write_text_atomic(progress, json.dumps(record))
    return record


# --------------------------------------------------------------------------- parent side


def _chunks(files: list[str], text_field: str, shard_bytes: int, on_bytes):
    """(index, documents, text bytes) of consecutive chunks of about `shard_bytes` of text."""
    index, docs, size = 0, [], 0
    done_bytes = 0
    for path in files:
        for doc in files_lib.read_documents(path, text_field,
                                            lambda n, base=done_bytes: on_bytes(base + n)):
            docs.append(doc)
            size += len(doc.encode("utf-8"))
            if size >= shard_bytes:
                yield index, docs, size
                index, docs, size = index + 1, [], 0
        done_bytes += fs.size(path)
    if docs:
        yield index, docs, size


def _plan(files, tokenizer_sha: str, settings: PrepareSettings) -> dict:
    return {"inputs": files_lib.parallel_map(files_lib.file_identity, files),
            "tokenizer_sha256": tokenizer_sha, "settings": dataclasses.asdict(settings)}


def _start_or_resume(output_dir: str, plan: dict, overwrite: bool) -> dict[str, dict]:
    """Progress records of the shards already written by an interrupted run with this plan."""
    plan_path = fs.join(output_dir, PROGRESS_DIR, PLAN_FILE)
    if overwrite:  # only what a preparation writes: the directory may hold other files
        for name in fs.listdir(output_dir):
            if name.startswith("part-") or name in (
                    PROGRESS_DIR, manifest_lib.MANIFEST_FILE, manifest_lib.TOKENIZER_FILE):
                fs.remove(fs.join(output_dir, name))
    if fs.isfile(plan_path) and json.loads(fs.read_text(plan_path)) != plan:
        raise ValueError(
            f"--output={output_dir} holds an unfinished preparation of other inputs or settings "
            f"({plan_path}); use another --output, or --overwrite to start afresh")
    if not fs.is_remote(output_dir):  # temporary files of shards a kill interrupted
        for directory in (output_dir, fs.join(output_dir, PROGRESS_DIR)):
            for stale in fs.glob(fs.join(directory, ".*.tmp")):
                fs.remove(stale)
    fs.write_text_atomic(plan_path, json.dumps(plan, indent=1))
    done = {}
    for name in fs.listdir(fs.join(output_dir, PROGRESS_DIR)):
        if name.endswith(".json") and name != PLAN_FILE:
            record = json.loads(fs.read_text(fs.join(output_dir, PROGRESS_DIR, name)))
            done[record["path"]] = record
    return done


def _run_chunks(chunks, settings, done, workers, init_args, on_record):
    """Makes every chunk's shard not in `done`, inline or in `workers` processes."""
    if workers <= 1:
        previous = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core, as one worker process has
        _init_state(*init_args)
        try:
            for index, texts, size in chunks:
                if shard_name(index, settings) not in done:
                    on_record(_make_shard(index, texts, size))
        finally:
            if previous is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = previous
        return
    # spawn: workers start clean (no inherited threads or event loops of a bucket client).
    pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, init_args)
    pending = collections.deque()
    try:
        for index, texts, size in chunks:
            if shard_name(index, settings) in done:
                continue
            pending.append(pool.apply_async(_make_shard, (index, texts, size)))
            # Bounded read-ahead: at most two chunks per worker are held in memory.
            while len(pending) >= 2 * workers or (pending and pending[0].ready()):
                on_record(pending.popleft().get())
        while pending:
            on_record(pending.popleft().get())
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def prepare_corpus(
    inputs,
    output_dir: str,
    tokenizer: str,
    *,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    **settings,
) -> dict:
    """Tokenises and packs `inputs` (files or globs, local or gs://) into shards in output_dir
    with `tokenizer` ("kjv" or a tokenizer.json); returns the manifest. See the module docstring.
    Settings: the fields of PrepareSettings."""
    from tqdm import tqdm

    settings = PrepareSettings(**settings)
    settings.check()
    files = files_lib.expand_paths(inputs, "--input")
    tok_blob = tok_lib.tokenizer_bytes(tokenizer)
    tok = tok_lib.tokenizer_from_bytes(tok_blob, repr(tokenizer), settings.special_tokens)
    vocab_size = tok.get_vocab_size()
    token_dtype = settings.token_dtype
    if settings.shard_format == "parquet":
        token_dtype = "int32"
    elif token_dtype == "auto":
        token_dtype = "uint16" if vocab_size <= 2**16 else "uint32"
    plan = _plan(files, tok_lib.sha256_hex(tok_blob), settings)
    existing = manifest_lib.read_manifest(output_dir) if not overwrite else None
    if existing is not None:
        if existing.get("plan") != plan:
            raise ValueError(f"--output={output_dir} already holds a prepared corpus of other "
                             "inputs or settings; use another --output, or --overwrite")
        logging.info("%s is already prepared (%d shards)", output_dir, len(existing["shards"]))
        return existing
    done = _start_or_resume(output_dir, plan, overwrite)
    total_bytes = sum(files_lib.parallel_map(fs.size, files))
    logging.info("preparing %d files (%.1f MB) into %s with %d worker(s); %d shards already done",
                 len(files), total_bytes / 1e6, output_dir, workers, len(done))
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="prepare", disable=not progress,
               dynamic_ncols=True)
    started, counted = time.perf_counter(), {"tokens": 0}
    records = dict(done)

    def on_bytes(n):
        bar.update(max(0, n - bar.n))

    def on_record(record):
        records[record["path"]] = record
        counted["tokens"] += record["tokens"]
        rate = counted["tokens"] / (time.perf_counter() - started)
        bar.set_postfix(shards=len(records), tokens_per_s=f"{rate:,.0f}")

    init_args = (tok_blob.decode("utf-8"), dataclasses.asdict(settings), output_dir, token_dtype)
    try:
        chunks = _chunks(files, settings.text_field, int(settings.shard_mb * 1e6), on_bytes)
        _run_chunks(chunks, settings, done, workers, init_args, on_record)
    finally:
        bar.close()
    return _finish(output_dir, records, plan, tok, tok_blob, token_dtype, settings)


def _finish(output_dir, records, plan, tok, tok_blob, token_dtype, settings) -> dict:
    shards = sorted(records.values(), key=lambda r: int(r["path"][len("part-"):].split(".")[0]))
    cpu_seconds = 0.0
    for index, shard in enumerate(shards):  # every chunk index must be there, once
        if shard["path"] != shard_name(index, settings):
            raise RuntimeError(f"{output_dir}: shard {shard_name(index, settings)} is missing")
        cpu_seconds += shard.pop("cpu_seconds", 0.0)
    tokens = sum(s["tokens"] for s in shards)
    documents = sum(s["documents"] for s in shards)
    text_bytes = sum(s["text_bytes"] for s in shards)
    fs.write_bytes_atomic(fs.join(output_dir, manifest_lib.TOKENIZER_FILE), tok_blob)
    manifest = {
        "format": manifest_lib.FORMAT, "shard_format": settings.shard_format,
        "token_field": settings.token_field, "token_dtype": token_dtype,
        "row_length": settings.row_length, "append_eos": False,
        "documents": documents, "tokens": tokens, "text_bytes": text_bytes,
        # EOS tokens carry no text: bytes per token counts the document tokens only.
        "bytes_per_token": text_bytes / max(tokens - documents, 1),
        "tokenizer_sha256": plan["tokenizer_sha256"], "vocab_size": tok.get_vocab_size(),
        "special_tokens": [tok.id_to_token(i) for i in range(tok_lib.NUM_SPECIAL)],
        "max_id": max(s["max_id"] for s in shards), "shards": shards, "plan": plan,
    }
    manifest_lib.write_manifest(output_dir, manifest)
    fs.remove(fs.join(output_dir, PROGRESS_DIR))
    logging.info("prepared %s: %d documents, %d tokens in %d shards (%.2f bytes/token)",
                 output_dir, documents, tokens, len(shards), manifest["bytes_per_token"])
    manifest["directory"] = output_dir
    manifest["worker_cpu_seconds"] = cpu_seconds  # returned, not written: it varies per run
    return manifest


def benchmark_prepare(workers: int = 2, shard_mb: float = 0.5) -> dict[str, float]:
    """prepare_corpus on the shipped KJV text (~1M tokens), with 1 worker (inline) and with
    `workers` processes, measured in this process.

    tokens_per_cpu_s: tokens over the CPU time the workers spent making shards (tokenising,
    packing, encoding, writing): the per-core rate, which other load on the machine barely
    changes (goal >= 0.5M). tokens_per_s_per_worker: wall-clock throughput over the worker count,
    start-up of the processes and the reading parent included.
    """
    import importlib.resources

    asset = importlib.resources.files("dlmjax.data").joinpath("assets/kjv_chapters.txt.gz")
    result = {}
    with importlib.resources.as_file(asset) as corpus, tempfile.TemporaryDirectory() as tmp:
        for count in (1, workers):
            started = time.perf_counter()
            manifest = prepare_corpus([str(corpus)], os.path.join(tmp, f"w{count}"), "kjv",
                                      workers=count, shard_mb=shard_mb, progress=False)
            elapsed = time.perf_counter() - started
            result[f"{count}_workers_tokens_per_cpu_s"] = (
                manifest["tokens"] / manifest["worker_cpu_seconds"])
            result[f"{count}_workers_tokens_per_s_per_worker"] = (
                manifest["tokens"] / elapsed / count)
        result["tokens"] = manifest["tokens"]
    result["goal_tokens_per_cpu_s"] = 5e5
    return result
