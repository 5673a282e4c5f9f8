"""tools/prepare_data.py and tools/train_tokenizer.py: exact tokens, determinism, resumption.

The shipped KJV text (1,189 chapters, ~1M tokens with its 4,096-token BPE) is the corpus.
"""

import gzip
import importlib.resources
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dlmjax import data
from dlmjax.data import kjv, prepare, tokenizer_training
from dlmjax.data import tokenizer as tok_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KJV_TXT = str(importlib.resources.files("dlmjax.data").joinpath("assets/kjv_chapters.txt.gz"))
SHARD_MB = 0.1  # ~40 shards


def _cli(tool, *args, **popen):
    command = [sys.executable, os.path.join(ROOT, "tools", tool), *args]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)


def _shard_bytes(directory):
    names = sorted(n for n in os.listdir(directory) if n.startswith("part-"))
    return {n: open(os.path.join(directory, n), "rb").read() for n in names}


@pytest.fixture(scope="module")
def kjv_stream():
    """The pipeline's own tokenisation of the KJV: all chapters, each followed by EOS."""
    cfg = data.default_data_config()
    parts = [data.packed_rows(cfg, split=s, seq_len=64).stream for s in ("train", "eval")]
    return np.concatenate([p.read(0, len(p)) for p in parts])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The KJV, prepared in this process with one worker (parquet)."""
    out = str(tmp_path_factory.mktemp("prep") / "ref")
    manifest = data.prepare_corpus([KJV_TXT], out, "kjv", shard_mb=SHARD_MB,
                                   row_length=256, progress=False)
    return out, manifest


def test_prepared_tokens_are_the_pipelines_tokens(reference, kjv_stream):
    out, manifest = reference
    expected = kjv_stream
    cfg = data.default_data_config()
    cfg.update(source="tokenized", paths=(out,))
    rows = data.packed_rows(cfg, split="train", seq_len=64)
    held = data.packed_rows(cfg, split="eval", seq_len=64)
    assert len(rows.stream) == len(expected) == manifest["tokens"]
    np.testing.assert_array_equal(rows.stream.read(0, len(rows.stream)), expected)
    assert held.start == rows.stop  # the held-out tail of the same stream
    # The manifest describes the data exactly.
    with gzip.open(KJV_TXT, "rt", encoding="utf-8") as f:
        chapters = f.read().splitlines()
    assert manifest["documents"] == len(chapters) == kjv.NUM_CHAPTERS
    text_bytes = sum(len(c.encode()) for c in chapters)
    assert manifest["text_bytes"] == text_bytes
    assert manifest["bytes_per_token"] == text_bytes / (len(expected) - kjv.NUM_CHAPTERS)
    assert manifest["tokenizer_sha256"] == tok_lib.tokenizer_sha256("kjv")
    assert manifest["vocab_size"] == 4096 and manifest["max_id"] == int(expected.max())
    assert len(manifest["shards"]) >= 30
    for shard in manifest["shards"]:
        blob = open(os.path.join(out, shard["path"]), "rb").read()
        assert tok_lib.sha256_hex(blob) == shard["sha256"]
        assert sum(shard["row_group_tokens"]) == shard["tokens"]
        assert shard["records"] == -(-shard["tokens"] // 256)
    assert sum(s["tokens"] for s in manifest["shards"]) == manifest["tokens"]
    assert not os.path.exists(os.path.join(out, prepare.PROGRESS_DIR))
    # Same inputs, other settings, same directory: refused, nothing overwritten.
    with pytest.raises(ValueError, match="other inputs or settings"):
        data.prepare_corpus([KJV_TXT], out, "kjv", shard_mb=SHARD_MB, row_length=128,
                            progress=False)


def test_two_workers_and_kill_9_then_rerun_give_identical_shards(reference, tmp_path):
    ref_dir, _ = reference
    expected = _shard_bytes(ref_dir)
    out = str(tmp_path / "killed")
    args = (f"--input={KJV_TXT}", "--tokenizer=kjv", f"--output={out}",
            f"--shard_mb={SHARD_MB}", "--row_length=256", "--workers=2")
    # Killed (kill -9 of the whole process group) as soon as a shard is recorded as done.
    process = _cli("prepare_data.py", *args, start_new_session=True)
    progress = os.path.join(out, prepare.PROGRESS_DIR)
    deadline = time.monotonic() + 120
    while not [n for n in (os.listdir(progress) if os.path.isdir(progress) else [])
               if n.startswith("part-")]:
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no shard finished"
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = [n[: -len(".json")] for n in os.listdir(progress) if n.startswith("part-")]
    assert 0 < len(finished) < len(expected), finished  # really interrupted mid-run
    stamps = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in finished}
    rerun = _cli("prepare_data.py", *args)
    _, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr[-3000:]
    assert f"{len(finished)} shards already done" in stderr
    assert _shard_bytes(out) == expected  # byte-identical to the 1-worker, uninterrupted run
    for name, stamp in stamps.items():  # finished shards were not redone
        assert os.stat(os.path.join(out, name)).st_mtime_ns == stamp
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
    ref_manifest = json.load(open(os.path.join(ref_dir, "manifest.json")))
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["shards"] == ref_manifest["shards"]


def test_array_record_shards_one_and_two_workers(tmp_path, kjv_stream):
    one = str(tmp_path / "one")
    data.prepare_corpus([KJV_TXT], one, "kjv", shard_format="array_record", shard_mb=0.5,
                        row_length=200, progress=False)
    two = str(tmp_path / "two")
    process = _cli("prepare_data.py", f"--input={KJV_TXT}", "--tokenizer=kjv", f"--output={two}",
                   "--format=array_record", "--shard_mb=0.5", "--row_length=200", "--workers=2")
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    assert "1189 documents" in stdout
    assert _shard_bytes(one) == _shard_bytes(two)
    assert json.load(open(os.path.join(two, "manifest.json")))["token_dtype"] == "uint16"
    cfg = data.default_data_config()
    cfg.update(source="tokenized", paths=(two,))
    rows = data.packed_rows(cfg, split="train", seq_len=64)
    np.testing.assert_array_equal(rows.stream.read(0, len(rows.stream)), kjv_stream)


def test_bad_inputs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="--input.*matches no file"):
        data.prepare_corpus([str(tmp_path / "none*.txt")], str(tmp_path / "o"), "kjv")
    with pytest.raises(ValueError, match="does not exist"):
        data.prepare_corpus([KJV_TXT], str(tmp_path / "o"), str(tmp_path / "tok.json"))
    with pytest.raises(ValueError, match="--format"):
        data.prepare_corpus([KJV_TXT], str(tmp_path / "o"), "kjv", shard_format="csv")


# -------------------------------------------------------------------------- train_tokenizer


def test_train_tokenizer_study_size_from_a_bounded_sample(tmp_path):
    """131,072 ids with the study's names at 0-3, from a sampled jsonl.gz corpus.

    The KJV has about 20,000 distinct BPE pieces, far too few for 131,072 ids, so the corpus is
    synthetic: 140,000 distinct random words, 2 copies, plus a third copy that the sample must
    skip (--sample_mb stops before it).
    """
    rng = np.random.default_rng(0)
    letters_Nx8 = rng.integers(ord("a"), ord("z") + 1, size=(140_000, 8), dtype=np.uint8)
    lengths_N = rng.integers(5, 9, size=140_000)
    words = list(dict.fromkeys(
        row[:n].tobytes().decode() for row, n in zip(letters_Nx8, lengths_N)))
    docs = [" ".join(words[i : i + 100]) for i in range(0, len(words), 100)]
    corpus = tmp_path / "corpus.jsonl.gz"
    with gzip.open(corpus, "wt", encoding="utf-8") as f:
        for doc in docs * 3:
            f.write(json.dumps({"body": doc}) + "\n")
    sample_mb = 2 * sum(len(d) for d in docs) / 1e6
    out = tmp_path / "tok.json"
    process = _cli("train_tokenizer.py", f"--input={corpus}", "--text_field=body",
                   "--vocab_size=131072", f"--sample_mb={sample_mb}", "--special_tokens=study",
                   f"--output={out}")
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    tok = data.load_tokenizer(str(out))
    assert tok.get_vocab_size() == 131072
    assert [tok.id_to_token(i) for i in range(4)] == list(tok_lib.STUDY_SPECIAL_TOKENS)
    assert f"from {2 * len(docs)} documents" in stderr  # the third copy was never read
    for doc in docs[::100]:
        assert tok_lib.decode(tok, tok.encode(doc, add_special_tokens=False).ids) == doc
    # A KJV sample cannot reach the study's size: a clear error, exit 2.
    process = _cli("train_tokenizer.py", "--kjv", "--vocab_size=131072", "--sample_mb=0.5",
                   f"--output={tmp_path / 'kjv.json'}")
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 2 and "too few distinct words" in stderr


def test_sample_is_streamed_and_bounded():
    """An endless corpus: the sample stops at sample_bytes, so the stream is never collected."""

    def endless():
        i = 0
        while True:
            yield f"document {i} " + "x" * 90
            i += 1

    stats = tokenizer_training.SampleStats()
    sample = list(tokenizer_training.sample_documents(endless(), sample_bytes=10_000, every=3,
                                                      stats=stats))
    assert stats.bytes >= 10_000 > stats.bytes - len(sample[-1].encode())
    assert [int(d.split()[1]) for d in sample] == list(range(0, 3 * len(sample), 3))
