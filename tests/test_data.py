"""Tests of dlmjax.data: sources, tokenizer, packing, determinism, resumption, sharding, entropy."""

import gzip
import json
import os
import re
import subprocess
import sys
import time

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import flags

from dlmjax import data
from dlmjax.data import kjv, synthetic, synthetic_topics, tokenized
from dlmjax.data import tokenizer as tok_lib

S, B = 256, 32  # the tiny_cpu-like shape


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data_cache"))


@pytest.fixture
def kjv_cfg(cache_dir):
    cfg = data.default_data_config()
    cfg.cache_dir = cache_dir  # tokenise KJV once for the whole session
    return cfg


@pytest.fixture(scope="session")
def kjv_tok():
    return data.load_tokenizer("kjv")


@pytest.fixture(scope="session")
def unique_token_docs():
    """Documents whose ids are all distinct (4..3003), so every row identifies itself."""
    rng = np.random.default_rng(0)
    ids = np.arange(4, 3004, dtype=np.uint32)
    cuts = np.sort(rng.choice(np.arange(1, len(ids)), size=150, replace=False))
    return np.split(ids, cuts)


@pytest.fixture
def parquet_cfg(tmp_path, unique_token_docs, cache_dir):
    path = str(tmp_path / "shard.parquet")
    tokenized.write_token_shard(path, unique_token_docs)
    cfg = data.default_data_config()
    cfg.update(
        source="tokenized", paths=(path,), append_eos=True, vocab_size=4096, cache_dir=cache_dir
    )
    return cfg


def take(it, n):
    return [next(it)["tokens"] for _ in range(n)]


def assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        np.testing.assert_array_equal(a, b)


def all_rows(rows):
    return np.stack([rows[i] for i in range(len(rows))])


# ------------------------------------------------------------------------------- tokenizer


def test_kjv_tokenizer_round_trip_is_lossless(kjv_tok):
    """Every KJV chapter (train and held-out) decodes back to exactly its text."""
    chapters = kjv.kjv_chapters("train") + kjv.kjv_chapters("heldout")
    assert len(chapters) == kjv.NUM_CHAPTERS == 1189
    encoded = tok_lib.encode_documents(kjv_tok, chapters)
    for text, ids in zip(chapters, encoded):
        assert tok_lib.decode(kjv_tok, ids) == text
    assert kjv_tok.get_vocab_size() == 4096
    assert [kjv_tok.id_to_token(i) for i in range(4)] == list(tok_lib.SPECIAL_TOKENS)
    # A 4096-token BPE on English: ~4 bytes per token, i.e. mostly whole words.
    n_bytes = sum(len(t.encode()) for t in chapters)
    assert 3.5 < n_bytes / sum(len(e) for e in encoded) < 5.0


def test_decode_strips_specials_and_padded_ids(kjv_tok):
    ids = tok_lib.encode_documents(kjv_tok, ["And God said, Let there be light."])[0]
    noisy = np.concatenate(
        [[data.BOS_ID], ids[:3], [data.MASK_ID, data.PAD_ID], ids[3:], [data.EOS_ID, 5000]]
    )  # 5000: an id of a padded model vocabulary
    assert data.decode(kjv_tok, noisy) == "And God said, Let there be light."
    texts = data.decode_batch(kjv_tok, np.stack([ids, ids]))
    assert texts == ["And God said, Let there be light."] * 2


def test_trained_tokenizer_has_specials_at_0_to_3_and_reloads(tmp_path):
    texts = ["the quick brown fox jumps over the lazy dog"] * 50 + ["ünïcödé text ✓"]
    tok = data.train_bpe_tokenizer(texts, 300)
    assert [tok.token_to_id(t) for t in tok_lib.SPECIAL_TOKENS] == [0, 1, 2, 3]
    path = tmp_path / "tok.json"
    tok.save(str(path))
    loaded = data.load_tokenizer(str(path))
    for text in texts:
        assert loaded.encode(text).ids == tok.encode(text).ids
        assert tok_lib.decode(loaded, loaded.encode(text).ids) == text


def test_tokenizer_without_specials_is_rejected(tmp_path):
    import tokenizers

    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.add_special_tokens(["<s>", "</s>"])
    path = tmp_path / "bad.json"
    tok.save(str(path))
    with pytest.raises(ValueError, match="special token"):
        data.load_tokenizer(str(path))
    with pytest.raises(ValueError, match="does not exist"):
        data.load_tokenizer(str(tmp_path / "missing.json"))


# --------------------------------------------------------------------------------- packing


def test_kjv_stream_is_documents_joined_by_eos(kjv_cfg, kjv_tok):
    """EOS after every chapter, nothing else inserted: splitting at EOS recovers the chapters."""
    for split, kjv_split in (("train", "train"), ("eval", "heldout")):
        rows = data.packed_rows(kjv_cfg, split=split, seq_len=S)
        stream = rows.stream.read(0, len(rows.stream))
        chapters = kjv.kjv_chapters(kjv_split)
        eos_at = np.flatnonzero(stream == data.EOS_ID)
        assert len(eos_at) == len(chapters) and eos_at[-1] == len(stream) - 1
        docs = np.split(stream, eos_at + 1)[:-1]
        for text, doc in list(zip(chapters, docs))[::10]:  # the full round trip is tested above
            assert tok_lib.decode(kjv_tok, doc[:-1]) == text
        assert len(rows) == len(stream) // S


def test_one_epoch_sees_every_token_once(kjv_cfg):
    """Count check: the tokens of the first epoch's rows are exactly the stream minus its tail."""
    rows = data.packed_rows(kjv_cfg, split="train", seq_len=S)
    n = len(rows)
    it = data.make_train_iterator(kjv_cfg, seq_len=S, batch_size=B, seed=7)
    epoch = np.concatenate(take(it, -(-n // B)))[:n]  # positions [0, n) are epoch 0
    stream = rows.stream.read(0, len(rows.stream))
    assert len(stream) - n * S < S  # only the final partial row is dropped
    np.testing.assert_array_equal(
        np.bincount(epoch.ravel(), minlength=4096), np.bincount(stream[: n * S], minlength=4096)
    )
    # ... and as whole rows: the epoch is a permutation of the rows.
    ref = all_rows(rows)
    np.testing.assert_array_equal(epoch[np.lexsort(epoch.T[::-1])], ref[np.lexsort(ref.T[::-1])])


def test_tokenized_parquet_rows_and_epochs(parquet_cfg, unique_token_docs):
    seq_len, batch = 16, 4
    rows = data.packed_rows(parquet_cfg, split="train", seq_len=seq_len)
    held = data.packed_rows(parquet_cfg, split="eval", seq_len=seq_len)
    expected = np.concatenate([np.append(d, data.EOS_ID) for d in unique_token_docs])
    np.testing.assert_array_equal(rows.stream.read(0, len(rows.stream)), expected)
    assert held.start == rows.stop == len(expected) - round(0.05 * len(expected))
    index_of = {r.tobytes(): i for i, r in enumerate(all_rows(rows))}
    it = data.make_train_iterator(parquet_cfg, seq_len=seq_len, batch_size=batch, seed=3)
    order = [index_of[r.tobytes()] for r in np.concatenate(take(it, -(-3 * len(rows) // batch)))]
    n = len(rows)
    epochs = [order[e * n : (e + 1) * n] for e in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(n))  # no row lost or repeated within an epoch
    assert epochs[0] != epochs[1] != epochs[2]  # reshuffled each epoch
    assert epochs[0] != list(range(n))


# ------------------------------------------------------------------------------ determinism


def test_same_seed_same_batches_other_seed_other_batches(kjv_cfg):
    a = take(data.make_train_iterator(kjv_cfg, seq_len=S, batch_size=B, seed=1), 3)
    b = take(data.make_train_iterator(kjv_cfg, seq_len=S, batch_size=B, seed=1), 3)
    c = take(data.make_train_iterator(kjv_cfg, seq_len=S, batch_size=B, seed=2), 3)
    assert_same(a, b)
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (B, S) and a[0].dtype == np.int32


@pytest.mark.parametrize("source", ["kjv", "synthetic_markov"])
def test_restored_state_continues_with_next_batch(kjv_cfg, source):
    kjv_cfg.update(source=source, vocab_size=0 if source == "kjv" else 64)
    it = data.make_train_iterator(kjv_cfg, seq_len=S, batch_size=B, seed=5)
    take(it, 4)
    state = it.get_state()
    expected = take(it, 3)
    resumed = data.make_train_iterator(kjv_cfg, seq_len=S, batch_size=B, seed=5)
    resumed.set_state(state)
    assert_same(take(resumed, 3), expected)


def test_orbax_checkpoint_of_the_iterator(kjv_cfg, tmp_path):
    import orbax.checkpoint as ocp

    it = data.make_train_iterator(kjv_cfg, seq_len=S, batch_size=B, seed=9)
    take(it, 3)
    with ocp.CheckpointManager(
        str(tmp_path / "ckpt"), options=ocp.CheckpointManagerOptions(max_to_keep=1)
    ) as mgr:
        mgr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mgr.wait_until_finished()
        expected = take(it, 2)
        resumed = data.make_train_iterator(kjv_cfg, seq_len=S, batch_size=B, seed=9)
        mgr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
    assert_same(take(resumed, 2), expected)


def test_two_processes_split_each_global_batch(parquet_cfg):
    """Process shards are disjoint, cover the data, and join into the 1-process global batch."""
    seq_len, batch = 16, 4
    n = len(data.packed_rows(parquet_cfg, split="train", seq_len=seq_len))
    steps = n // (2 * batch)
    single = take(
        data.make_train_iterator(parquet_cfg, seq_len=seq_len, batch_size=2 * batch, seed=4), steps
    )
    shards = [
        take(
            data.make_train_iterator(
                parquet_cfg,
                seq_len=seq_len,
                batch_size=batch,
                seed=4,
                process_index=p,
                process_count=2,
            ),
            steps,
        )
        for p in range(2)
    ]
    for t in range(steps):
        np.testing.assert_array_equal(np.concatenate([shards[0][t], shards[1][t]]), single[t])
    seen = [{r.tobytes() for r in np.concatenate(s)} for s in shards]
    assert not seen[0] & seen[1]
    assert len(seen[0]) + len(seen[1]) == 2 * batch * steps > n - 2 * batch


def test_worker_processes_give_the_same_batches(kjv_cfg):
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # grain workers read absl flags
    ref = take(data.make_train_iterator(kjv_cfg, seq_len=S, batch_size=B, seed=2), 6)
    kjv_cfg.worker_count = 2
    it = data.make_train_iterator(kjv_cfg, seq_len=S, batch_size=B, seed=2)
    got = take(it, 3)
    state = it.get_state()
    got += take(it, 3)
    assert_same(got, ref)
    resumed = data.make_train_iterator(kjv_cfg, seq_len=S, batch_size=B, seed=2)
    resumed.set_state(state)
    assert_same(take(resumed, 3), ref[3:])


def test_eval_batches_are_fixed_and_held_out(kjv_cfg):
    a = list(data.make_eval_batches(kjv_cfg, seq_len=S, batch_size=B, num_batches=4))
    b = list(data.make_eval_batches(kjv_cfg, seq_len=S, batch_size=B, num_batches=4))
    assert_same([x["tokens"] for x in a], [x["tokens"] for x in b])
    held = data.packed_rows(kjv_cfg, split="eval", seq_len=S)
    held_rows = {r.tobytes() for r in all_rows(held)}
    assert all(r.tobytes() in held_rows for x in a for r in x["tokens"])
    halves = [
        list(
            data.make_eval_batches(
                kjv_cfg,
                seq_len=S,
                batch_size=B // 2,
                num_batches=4,
                process_index=p,
                process_count=2,
            )
        )
        for p in range(2)
    ]
    for t in range(4):
        joined = np.concatenate([halves[0][t]["tokens"], halves[1][t]["tokens"]])
        np.testing.assert_array_equal(joined, a[t]["tokens"])


# -------------------------------------------------------------------------- synthetic


def _dense_chain(chain):
    n = chain.num_states
    p_NxN = np.zeros((n, n))
    np.add.at(p_NxN, (np.arange(n)[:, None], chain.successors_NxK), chain.probs_NxK)
    return p_NxN


def test_markov_source_matches_its_entropy_rate():
    cfg = data.default_data_config()
    cfg.update(source="synthetic_markov", vocab_size=68, markov_branching=4, synthetic_seed=3)
    seq_len, batch, num = 128, 64, 8
    chain = synthetic.make_markov_chain(68, 4, 3)
    # Float64 reference from the dense matrix: stationary vector by eigendecomposition.
    p_NxN = _dense_chain(chain)
    np.testing.assert_allclose(p_NxN.sum(1), 1.0, atol=1e-12)
    w, v = np.linalg.eig(p_NxN.T)
    pi_N = np.real(v[:, np.argmin(np.abs(w - 1))])
    pi_N /= pi_N.sum()
    np.testing.assert_allclose(chain.stationary_N, pi_N, atol=1e-12)
    logp_NxN = np.log(np.where(p_NxN > 0, p_NxN, 1.0))
    rate = -np.sum(pi_N[:, None] * p_NxN * logp_NxN)
    h_first = -np.sum(pi_N * np.log(pi_N))
    stated = data.known_entropy(cfg, seq_len)
    np.testing.assert_allclose(stated["entropy_rate"], rate, rtol=1e-10)
    np.testing.assert_allclose(
        stated["row_entropy_per_token"], (h_first + (seq_len - 1) * rate) / seq_len, rtol=1e-10
    )
    # Empirical NLL under the true model; rows are i.i.d., so the CLT bounds their mean.
    rows = np.concatenate(
        take(data.make_train_iterator(cfg, seq_len=seq_len, batch_size=batch, seed=0), num)
    ).astype(np.int64)
    assert rows.min() >= 4 and rows.max() < 68
    s = rows - 4
    trans_nll_R = -logp_NxN[s[:, :-1], s[:, 1:]].sum(1)
    assert np.all(p_NxN[s[:, :-1], s[:, 1:]] > 0)  # only transitions the chain allows
    row_nll_R = trans_nll_R - np.log(pi_N[s[:, 0]])
    for nll_R, expected in (
        (trans_nll_R, (seq_len - 1) * rate),
        (row_nll_R, seq_len * stated["row_entropy_per_token"]),
    ):
        bound = 4.5 * nll_R.std(ddof=1) / np.sqrt(len(nll_R))
        assert abs(nll_R.mean() - expected) < bound
    np.testing.assert_allclose(synthetic.markov_log_prob_rows(chain, rows), -row_nll_R, rtol=1e-12)


def test_markov_successor_start_row_entropy_is_exact():
    """A row that starts as the successor of hidden state 0: float64 dense reference and the CLT."""
    from dlmjax import validate

    assert validate.MARKOV_STARTS == synthetic.MARKOV_STARTS
    cfg = data.default_data_config()
    cfg.update(source="synthetic_markov", vocab_size=68, markov_branching=4, synthetic_seed=3,
               markov_start="successor")
    seq_len = 32
    chain = synthetic.make_markov_chain(68, 4, 3, "successor")
    p_NxN = _dense_chain(chain)
    h_N = -np.sum(p_NxN * np.log(np.where(p_NxN > 0, p_NxN, 1.0)), axis=1)
    mu_N = p_NxN[0]   # the first state's distribution
    total = -np.sum(mu_N[mu_N > 0] * np.log(mu_N[mu_N > 0]))
    for _ in range(seq_len - 1):
        total, mu_N = total + mu_N @ h_N, mu_N @ p_NxN
    stated = data.known_entropy(cfg, seq_len)
    np.testing.assert_allclose(stated["row_entropy_per_token"], total / seq_len, rtol=1e-10)
    # Close to the rate: the first token costs one transition, not the stationary entropy.
    assert abs(stated["row_entropy_per_token"] / stated["entropy_rate"] - 1) < 0.03
    rows = np.concatenate(
        take(data.make_train_iterator(cfg, seq_len=seq_len, batch_size=64, seed=0), 8))
    assert np.all(p_NxN[0, rows[:, 0] - 4] > 0)   # first tokens are successors of state 0
    nll_R = -synthetic.markov_log_prob_rows(chain, rows)
    bound = 4.5 * nll_R.std(ddof=1) / np.sqrt(len(nll_R))
    assert abs(nll_R.mean() - total) < bound


def test_iid_source_matches_its_distribution_and_entropy():
    cfg = data.default_data_config()
    cfg.update(source="synthetic_iid", vocab_size=36, iid_zipf_exponent=1.0)
    p_V = np.zeros(36)
    p_V[4:] = 1.0 / np.arange(1, 33)
    p_V /= p_V.sum()
    h = -np.sum(p_V[4:] * np.log(p_V[4:]))
    np.testing.assert_allclose(data.known_entropy(cfg, 64)["entropy_rate"], h, rtol=1e-12)
    tokens = np.concatenate(
        take(data.make_train_iterator(cfg, seq_len=64, batch_size=32, seed=0), 8)
    ).ravel()
    n = len(tokens)
    freq = np.bincount(tokens, minlength=36) / n
    assert np.all(np.abs(freq - p_V) <= 5 * np.sqrt(p_V * (1 - p_V) / n) + 1e-12)
    nll = -np.log(p_V[tokens])
    sigma = np.sqrt(np.sum(p_V[4:] * np.log(p_V[4:]) ** 2) - h**2)  # exact, i.i.d. tokens
    assert abs(nll.mean() - h) < 4.5 * sigma / np.sqrt(n)


def test_topic_source_entropy_is_exact_on_an_enumerable_mixture():
    """Every row of a 3-topic mixture over 3 ids, S = 5, enumerated in float64: H(row) exactly."""
    import itertools

    mix = synthetic_topics.make_topic_mixture(7, 3, 1.0, 0.5, seed=1)
    rows = np.array(list(itertools.product(range(4, 7), repeat=5)))
    log_p = synthetic_topics.topic_log_prob_rows(mix, rows)
    np.testing.assert_allclose(np.exp(log_p).sum(), 1.0, rtol=1e-12)   # a distribution
    # Brute force: p(row) = Σ_k w_k Π_t p_k(x_t).
    brute = np.log((mix.weights_K[None] * np.prod(mix.probs_KxN[:, rows - 4], axis=-1).T).sum(1))
    np.testing.assert_allclose(log_p, brute, rtol=1e-12)
    exact = -np.sum(np.exp(log_p) * log_p) / 5
    h, se = synthetic_topics.topic_row_entropy(mix, 5, num_rows=50_000)
    assert 0 < se < 1e-3 and abs(h - exact) < 4.5 * se
    # One topic: no Monte Carlo term, H = H(p) per token.
    one = synthetic_topics.make_topic_mixture(7, 1, 1.0, 0.5, seed=1)
    h1, se1 = synthetic_topics.topic_row_entropy(one, 5)
    p = one.probs_KxN[0]
    np.testing.assert_allclose(h1, -np.sum(p * np.log(p)), rtol=1e-12)
    assert se1 == 0


def test_topic_source_rows_follow_the_mixture():
    cfg = data.default_data_config()
    cfg.update(source="synthetic_topics", vocab_size=36, num_topics=16, topic_zipf_exponent=1.0,
               topic_concentration=0.2, synthetic_seed=2)
    mix = synthetic_topics.make_topic_mixture(36, 16, 1.0, 0.2, 2)
    np.testing.assert_allclose(mix.weights_K, (w := 1 / np.arange(1, 17)) / w.sum(), rtol=1e-12)
    np.testing.assert_allclose(mix.probs_KxN.sum(1), 1.0, rtol=1e-12)
    seq_len = 32
    stated = data.known_entropy(cfg, seq_len)
    assert stated["entropy_rate"] == stated["row_entropy_per_token"]
    rows = np.concatenate(
        take(data.make_train_iterator(cfg, seq_len=seq_len, batch_size=64, seed=0), 8))
    assert rows.min() >= 4 and rows.max() < 36
    # Rows are i.i.d. draws of the mixture: their mean NLL estimates H(row), CLT-bounded.
    nll_R = -synthetic_topics.topic_log_prob_rows(mix, rows)
    bound = 4.5 * nll_R.std(ddof=1) / np.sqrt(len(nll_R))
    assert abs(nll_R.mean() - seq_len * stated["row_entropy_per_token"]) < bound
    # The tokens' marginal is the topic-weighted mixture.
    p_N = mix.weights_K @ mix.probs_KxN
    n = rows.size
    freq_N = np.bincount(rows.ravel() - 4, minlength=32) / n
    # Tokens of a row share a topic, so counts vary more than multinomial: S-fold at most.
    assert np.all(np.abs(freq_N - p_N) <= 5 * np.sqrt(seq_len * p_N * (1 - p_N) / n))
    with pytest.raises(ValueError, match="data.topic_concentration"):
        synthetic_topics.make_topic_mixture(36, 16, 1.0, 0.0, 2)


@pytest.mark.parametrize("source", ["synthetic_markov", "synthetic_topics"])
def test_synthetic_rows_independent_of_process_split_and_eval_of_seed(source):
    cfg = data.default_data_config()
    cfg.update(source=source, vocab_size=64)
    single = take(data.make_train_iterator(cfg, seq_len=32, batch_size=8, seed=1), 2)
    halves = [
        take(
            data.make_train_iterator(
                cfg, seq_len=32, batch_size=4, seed=1, process_index=p, process_count=2
            ),
            2,
        )
        for p in range(2)
    ]
    for t in range(2):
        np.testing.assert_array_equal(np.concatenate([halves[0][t], halves[1][t]]), single[t])
    other_seed = take(data.make_train_iterator(cfg, seq_len=32, batch_size=8, seed=2), 1)
    assert not np.array_equal(other_seed[0], single[0])
    ev = [x["tokens"] for x in data.make_eval_batches(cfg, seq_len=32, batch_size=8, num_batches=2)]
    assert not any(np.array_equal(e, s) for e in ev for s in single)
    assert_same(
        ev,
        [x["tokens"] for x in data.make_eval_batches(cfg, seq_len=32, batch_size=8, num_batches=2)],
    )


# ------------------------------------------------------------------------ other sources


def _write_corpus(tmp_path, chapters):
    """The same chapters as .txt, .jsonl.gz and .parquet files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    third = len(chapters) // 3
    (tmp_path / "a.txt").write_text("\n\n".join(chapters[:third]) + "\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        for c in chapters[third : 2 * third]:
            f.write(json.dumps({"body": c, "id": 0}) + "\n")
    pq.write_table(pa.table({"body": chapters[2 * third :]}), tmp_path / "c.parquet")
    return [str(tmp_path / n) for n in ("a.txt", "b.jsonl.gz", "c.parquet")]


def test_local_files_source(tmp_path, kjv_tok):
    chapters = kjv.kjv_chapters("heldout")[:30]
    cfg = data.default_data_config()
    cfg.update(
        source="files",
        paths=tuple(_write_corpus(tmp_path, chapters)),
        text_field="body",
        data_dir=str(tmp_path / "tfds"),
        cache_dir=str(tmp_path / "cache"),
        heldout_fraction=0.1,
    )
    train = data.packed_rows(cfg, split="train", seq_len=32)
    held = data.packed_rows(cfg, split="eval", seq_len=32)
    docs = []
    for rows in (train, held):
        stream = rows.stream.read(0, len(rows.stream))
        eos_at = np.flatnonzero(stream == data.EOS_ID)
        docs += [tok_lib.decode(kjv_tok, d[:-1]) for d in np.split(stream, eos_at + 1)[:-1]]
    assert len(docs) == 30 and sorted(docs) == sorted(chapters)  # 27 train + 3 held out
    assert len(np.flatnonzero(held.stream.read(0, len(held.stream)) == data.EOS_ID)) == 3
    batch = next(data.make_train_iterator(cfg, seq_len=32, batch_size=4, seed=0))["tokens"]
    assert batch.shape == (4, 32)


class TinyText(tfds.core.GeneratorBasedBuilder):
    """A catalogue-style TFDS dataset with train/validation splits and a nested text field."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = None

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({"doc": {"body": tfds.features.Text()}}),
        )

    def _split_generators(self, dl_manager):
        chapters = kjv.kjv_chapters("heldout")
        return {
            "train": self._generate_examples(chapters[:40]),
            "validation": self._generate_examples(chapters[40:]),
        }

    def _generate_examples(self, chapters):
        for i, c in enumerate(chapters):
            yield i, {"doc": {"body": c}}


def test_tfds_source_by_name(tmp_path):
    TinyText(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    cfg = data.default_data_config()
    cfg.update(
        source="tfds",
        tfds_name="tiny_text",
        data_dir=str(tmp_path),
        text_field="doc/body",
        eval_split="validation",
    )
    eval_rows = data.packed_rows(cfg, split="eval", seq_len=32)
    stream = eval_rows.stream.read(0, len(eval_rows.stream))
    assert np.count_nonzero(stream == data.EOS_ID) == 59 - 40
    batch = next(data.make_train_iterator(cfg, seq_len=32, batch_size=4, seed=0))["tokens"]
    assert batch.shape == (4, 32)
    cfg.tfds_name = "no_such_dataset_xyz"
    with pytest.raises(ValueError, match="no_such_dataset_xyz"):
        data.make_train_iterator(cfg, seq_len=32, batch_size=4, seed=0)
    cfg.update(tfds_name="tiny_text", text_field="doc/title")
    with pytest.raises(ValueError, match="doc/title"):
        data.packed_rows(cfg, split="train", seq_len=32)


@pytest.mark.parametrize("record_length", [0, 16])
def test_tokenized_array_record_read_in_place(tmp_path, record_length, cache_dir):
    rng = np.random.default_rng(1)
    if record_length:  # pre-packed rows, as large runs store them
        docs = [rng.integers(4, 500, size=record_length) for _ in range(40)]
    else:
        docs = [rng.integers(4, 500, size=rng.integers(1, 30)) for _ in range(60)]
    half = len(docs) // 2
    paths = [str(tmp_path / "s0.array_record"), str(tmp_path / "s1.array_record")]
    tokenized.write_token_shard(paths[0], docs[:half], token_dtype="uint16")
    tokenized.write_token_shard(paths[1], docs[half:], token_dtype="uint16")
    cfg = data.default_data_config()
    cfg.update(
        source="tokenized",
        paths=(str(tmp_path / "s*.array_record"),),
        token_dtype="uint16",
        append_eos=not record_length,
        record_length=record_length,
        vocab_size=512,
        cache_dir=cache_dir,
    )
    rows = data.packed_rows(cfg, split="train", seq_len=8)
    tail = [data.EOS_ID] if not record_length else []
    expected = np.concatenate([np.append(d, tail) for d in docs]).astype(np.int32)
    np.testing.assert_array_equal(rows.stream.read(0, len(rows.stream)), expected)
    np.testing.assert_array_equal(all_rows(rows).ravel(), expected[: len(rows) * 8])
    assert rows.stop == len(expected) - round(0.05 * len(expected))


# ---------------------------------------------------------------------------------- errors


def test_clear_errors(tmp_path, unique_token_docs, kjv_cfg):
    cfg = data.default_data_config()
    cfg.update(source="files", paths=(str(tmp_path / "nothing*.txt"),))
    with pytest.raises(ValueError, match="data.paths.*matches no file"):
        data.packed_rows(cfg, split="train", seq_len=8)
    (tmp_path / "empty.txt").write_text("")
    cfg.paths = (str(tmp_path / "empty.txt"),)
    with pytest.raises(ValueError, match="empty"):
        data.packed_rows(cfg, split="train", seq_len=8)
    # Ids beyond the vocabulary: parquet (checked on load) and ArrayRecord (checked on read).
    tokenized.write_token_shard(str(tmp_path / "t.parquet"), unique_token_docs)
    tokenized.write_token_shard(str(tmp_path / "t.array_record"), unique_token_docs)
    cfg.update(source="tokenized", vocab_size=1000)
    for name in ("t.parquet", "t.array_record"):
        cfg.paths = (str(tmp_path / name),)
        with pytest.raises(ValueError, match=r"token id \d+ >= vocab_size 1000"):
            rows = data.packed_rows(cfg, split="train", seq_len=8)
            all_rows(rows)
    # Too small for one batch: the message gives the tokens found and needed.
    kjv_cfg.source = "kjv"
    with pytest.raises(ValueError, match=r"found \d+ tokens .*need at least 1073741824 tokens"):
        data.make_train_iterator(kjv_cfg, seq_len=2**20, batch_size=1024, seed=0)
    with pytest.raises(ValueError, match="data.source"):
        data.vocab_size_of(_with(data.default_data_config(), source="wikipedia"))
    with pytest.raises(ValueError, match="data.vocab_size"):
        data.vocab_size_of(_with(data.default_data_config(), source="synthetic_iid"))


def _with(cfg, **kw):
    cfg.update(**kw)
    return cfg


def test_default_config_and_benchmark(kjv_cfg):
    assert data.default_data_config().source in data.SOURCES
    assert data.vocab_size_of(data.default_data_config()) == 4096
    stats = data.benchmark_pipeline(kjv_cfg, seq_len=S, batch_size=B, num_batches=20)
    assert stats["seq_len"] == S and stats["batch_size"] == B
    np.testing.assert_allclose(
        stats["pipeline_tokens_per_s"], stats["pipeline_batches_per_s"] * S * B, rtol=1e-9
    )
    assert stats["pipeline_tokens_per_s"] > 0 and stats["pipeline_setup_s"] > 0


# ------------------------------------------------------------------------- study corpus


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = os.path.join(ROOT, "tests", "micro_config.py")
GRID_POINT = "experiments/grid.py:noise=masked,size=L8-D512,batch=64,lr=0.3"


def _main(*args):
    return subprocess.Popen(
        [sys.executable, "-m", "dlmjax.main", *args], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu",
                 XLA_FLAGS="--xla_force_host_platform_device_count=1"))


def _finish(process):
    started = time.monotonic()
    _, stderr = process.communicate(timeout=600)
    return process.returncode, stderr, time.monotonic() - started


def _bad_shards(tmp_path):
    """An ArrayRecord and a parquet shard whose every record holds an id >= 4096."""
    rng = np.random.default_rng(0)
    docs = [np.append(rng.integers(4, 4096, size=63), 4096 + i) for i in range(256)]
    paths = {}
    for name in ("bad.array_record", "bad.parquet"):
        paths[name] = str(tmp_path / name)
        tokenized.write_token_shard(paths[name], docs)
    return paths


def test_bad_data_exits_2_naming_the_key_or_file(tmp_path):
    """Study experiments without data.paths (train, eval), and out-of-range ids in an ArrayRecord
    and in a parquet shard: exit 2 with a message naming data.paths or the file."""
    bad = _bad_shards(tmp_path)
    tokenized_run = ("--config.data.source=tokenized", "--config.data.vocab_size=0",
                     "--config.data.tokenizer=kjv", "--config.model.vocab_size=4096",
                     "--config.train.steps=2")
    cases = {}
    for config in ("experiments/uniform_10b.py", GRID_POINT):
        for mode in ("train", "eval"):
            cases[(config, mode)] = _main(f"--config={config}", f"--workdir={tmp_path / mode}",
                                          f"--mode={mode}")
    for name, path in bad.items():
        cases[name] = _main(f"--config={MICRO}", f"--workdir={tmp_path / name}-run",
                            *tokenized_run, f"--config.data.paths={path}")
    for case, process in cases.items():
        code, stderr, seconds = _finish(process)
        print(f"{case}: exit {code} after {seconds:.1f} s: {stderr.strip().splitlines()[-1]}")
        assert code == 2, stderr[-3000:]
        if case in bad:
            assert re.search(rf"error: {re.escape(bad[case])}.*: token id 4\d\d\d "
                             r">= vocab_size 4096", stderr), stderr[-3000:]
        else:
            assert "error: data.paths: not set" in stderr
            assert 'README section "Data for the study"' in stderr
            assert "--config.data.paths=" in stderr and "list<int>" in stderr


def test_special_tokens_checked_by_id_with_configurable_names(tmp_path):
    texts = kjv.kjv_chapters("heldout")[:20]
    study = data.train_bpe_tokenizer(texts, 400, special_tokens=tok_lib.STUDY_SPECIAL_TOKENS)
    study.save(str(tmp_path / "study.json"))
    loaded = data.load_tokenizer(str(tmp_path / "study.json"))  # default: ours or the study's
    assert [loaded.id_to_token(i) for i in range(4)] == list(tok_lib.STUDY_SPECIAL_TOKENS)
    with pytest.raises(ValueError, match="special tokens at ids 0-3"):
        data.load_tokenizer(str(tmp_path / "study.json"), ",".join(tok_lib.SPECIAL_TOKENS))
    names = ("<s>", "</s>", "<pad>", "<m>")
    own = data.train_bpe_tokenizer(texts, 400, special_tokens=names)
    own.save(str(tmp_path / "own.json"))
    with pytest.raises(ValueError, match="data.special_tokens"):
        data.load_tokenizer(str(tmp_path / "own.json"))
    assert data.load_tokenizer(str(tmp_path / "own.json"), "<s>,</s>,<pad>,<m>") is not None
    cfg = data.default_data_config()
    cfg.update(source="files", paths=("x.txt",), tokenizer=str(tmp_path / "own.json"),
               special_tokens="<s>,</s>,<pad>,<m>")
    assert data.vocab_size_of(cfg) == 400


def _prepared(tmp_path, name, tokenizer="kjv"):
    corpus = tmp_path / f"{name}.txt"
    corpus.write_text("\n".join(kjv.kjv_chapters("heldout")) + "\n")
    return data.prepare_corpus([str(corpus)], str(tmp_path / name), tokenizer, shard_mb=0.05,
                               row_length=128, progress=False)["directory"]


def test_validate_data_config(tmp_path):
    check = data.validate_data_config
    study = data.study_data_config()
    with pytest.raises(ValueError, match=r"^data\.paths: not set"):
        check(study, model_vocab_size=131072, mode="train")
    assert check(study, model_vocab_size=131072, mode="describe") is None
    assert check(study, model_vocab_size=131072, mode="sample") is None
    kjv_cfg = data.default_data_config()
    with pytest.raises(ValueError, match="model.vocab_size=131072 is larger than the data's "
                                         "vocabulary of 4096"):
        check(kjv_cfg, model_vocab_size=131072, mode="eval")
    with pytest.raises(ValueError, match="model.vocab_size=64 is smaller than"):
        check(kjv_cfg, model_vocab_size=64, mode="train")
    kjv_cfg.vocab_size = 4224  # padded on purpose, to a multiple of 128
    assert check(kjv_cfg, model_vocab_size=4224, mode="train").size == 4224
    # Prepared shards: the vocabulary and tokenizer come from the manifest's directory.
    shards = _prepared(tmp_path, "kjv_tok")
    study.paths = (shards,)
    with pytest.raises(ValueError, match="model.vocab_size=131072 is larger"):
        check(study, model_vocab_size=131072, mode="train")
    vocab = check(study, model_vocab_size=4096, mode="train")
    assert vocab.tokenizer == f"{shards}/tokenizer.json"
    assert vocab.tokenizer_sha256 == tok_lib.tokenizer_sha256("kjv")
    study.paths = (f"{shards}/part-*.parquet",)
    assert check(study, model_vocab_size=4096, mode="train").tokenizer_sha256 == \
        vocab.tokenizer_sha256
    # ... and a different tokenizer than the shards were prepared with is an error.
    other = data.train_bpe_tokenizer(kjv.kjv_chapters("heldout"), 4096)
    other.save(str(tmp_path / "other.json"))
    study.tokenizer = str(tmp_path / "other.json")
    with pytest.raises(ValueError, match="is not the tokenizer the shards were prepared with"):
        check(study, model_vocab_size=4096, mode="train")
    study.tokenizer = ""
    study.tokenizer_sha256 = "0" * 64
    with pytest.raises(ValueError, match="data.tokenizer_sha256"):
        check(study, model_vocab_size=4096, mode="train")
    # Shards without manifest or tokenizer: the vocabulary must be declared.
    bare = data.study_data_config()
    bare.update(paths=(str(tmp_path / "kjv_tok" / "part-00000.parquet"),), tokenizer="")
    import shutil

    shutil.copy(bare.paths[0], tmp_path / "bare.parquet")
    bare.paths = (str(tmp_path / "bare.parquet"),)
    with pytest.raises(ValueError, match="^data.vocab_size: the vocabulary of the shards"):
        check(bare, model_vocab_size=4096, mode="train")
    bare.vocab_size = 4096
    assert check(bare, model_vocab_size=4096, mode="train").tokenizer is None


def test_tokenizer_recorded_with_the_run(tmp_path):
    cfg = data.default_data_config()
    workdir = str(tmp_path / "run")
    sha = data.record_tokenizer(cfg, workdir)
    assert sha == tok_lib.tokenizer_sha256("kjv")
    copy = tmp_path / "run" / "tokenizer.json"
    assert copy.read_bytes() == tok_lib.tokenizer_bytes("kjv")
    assert data.record_tokenizer(cfg, workdir) == sha  # a resumed run with the same tokenizer
    other = data.train_bpe_tokenizer(kjv.kjv_chapters("heldout"), 300)
    other.save(str(tmp_path / "other.json"))
    cfg.tokenizer = str(tmp_path / "other.json")
    with pytest.raises(ValueError, match="not the tokenizer this run was started with"):
        data.record_tokenizer(cfg, workdir)
    # Decoding uses the run's copy, whatever the config now says.
    assert data.run_tokenizer(workdir, cfg).get_vocab_size() == 4096
    assert data.run_tokenizer(str(tmp_path / "new"), cfg).get_vocab_size() == 300
    synthetic_cfg = data.default_data_config()
    synthetic_cfg.update(source="synthetic_iid", vocab_size=64)
    assert data.record_tokenizer(synthetic_cfg, str(tmp_path / "syn")) == ""
    assert data.run_tokenizer(str(tmp_path / "syn"), synthetic_cfg) is None


def test_parquet_is_read_by_row_group(tmp_path):
    """Each read decodes only the row groups it overlaps; the stream is the records in order."""
    rng = np.random.default_rng(3)
    docs = [rng.integers(4, 1000, size=rng.integers(1, 40)) for _ in range(400)]
    paths = [str(tmp_path / f"s{i}.parquet") for i in range(2)]
    tokenized.write_token_shard(paths[0], docs[:250], row_group_size=10)
    tokenized.write_token_shard(paths[1], docs[250:], row_group_size=10)
    cfg = data.default_data_config()
    cfg.update(source="tokenized", paths=(str(tmp_path / "s*.parquet"),), append_eos=True,
               vocab_size=1000, cache_dir=str(tmp_path / "cache"))
    rows = data.packed_rows(cfg, split="train", seq_len=16)
    stream = rows.stream
    assert isinstance(stream, tokenized.ParquetTokens)
    assert [layout.num_units for layout in stream.layouts] == [25, 15]
    expected = np.concatenate([np.append(d, data.EOS_ID) for d in docs])
    loads = []
    original = stream._load
    stream._load = lambda reader, shard, unit: loads.append((shard, unit)) or original(
        reader, shard, unit)
    layout = stream.layouts[1]
    begin = int(stream.shard_starts[1] + layout.unit_starts[3]) + 1  # inside row group 3
    np.testing.assert_array_equal(stream.read(begin, begin + 5), expected[begin : begin + 5])
    assert loads == [(1, 3)]
    np.testing.assert_array_equal(stream.read(0, len(stream)), expected)
    # A sequential pass decodes every row group exactly once, in order.
    assert loads[1:] == [(0, g) for g in range(25)] + [(1, g) for g in range(15)]
    # Variable-length records: the per-row-group token counts were indexed once and cached.
    assert len(os.listdir(tmp_path / "cache")) == 2
    again = data.packed_rows(cfg, split="train", seq_len=16).stream
    for a, b in zip(again.layouts, stream.layouts):
        np.testing.assert_array_equal(a.unit_starts, b.unit_starts)


def test_pipeline_memory_does_not_grow_with_the_shard_set(tmp_path):
    """Peak RSS of building the pipeline and reading 100 shuffled batches (which touch every
    shard) over 20 vs 64 shards of 1 MiB of ids each (as uint32): a pipeline that loaded its
    shards would grow by the 44 MiB between them. Measured above the RSS after the imports."""
    rows_per_shard, row = 128, 2048
    ramp = np.arange(row, dtype=np.int64)
    for shard_format in ("parquet", "array_record"):
        (tmp_path / shard_format).mkdir()
        for s in range(64):
            records = [(ramp + 7 * (s * rows_per_shard + r)) % 997 + 4
                       for r in range(rows_per_shard)]
            blob = tokenized.encode_shard(records, shard_format=shard_format,
                                          token_dtype="uint16", row_group_size=16)
            (tmp_path / shard_format / f"s{s:03d}.{shard_format}").write_bytes(blob)
    probes = {}
    for shard_format in ("parquet", "array_record"):
        for count, pattern in ((20, "s0[01]?"), (64, "s*")):  # s000-s019, all
            glob_ = str(tmp_path / shard_format / f"{pattern}.{shard_format}")
            probes[shard_format, count] = subprocess.Popen(
                [sys.executable, os.path.join(ROOT, "tests", "pipeline_rss.py"), shard_format,
                 glob_, "100"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    growth = {}
    for key, process in probes.items():
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
        report = json.loads(stdout)
        growth[key] = report["peak_rss_bytes"] - report["baseline_rss_bytes"]
    loaded_difference = 44 * rows_per_shard * row * 4  # the ids of 44 shards as uint32
    for shard_format in ("parquet", "array_record"):
        few, many = growth[shard_format, 20], growth[shard_format, 64]
        print(f"{shard_format}: pipeline peak RSS +{few / 2**20:.1f} MiB (20 shards), "
              f"+{many / 2**20:.1f} MiB (64 shards); the data differ by "
              f"{loaded_difference / 2**20:.0f} MiB")
        assert many - few < loaded_difference / 8
