"""lm-eval adapter: offline simple_evaluate on the repo's tasks (a sharded model from a run
directory) and on the exact i.i.d. oracle, where loglikelihood must equal the exact log-prob."""

import json
import os

import jax
import jax.numpy as jnp
import lm_eval
import numpy as np
import pytest
import tokenizers
from tokenizers import models, pre_tokenizers

import dlmjax.harness  # registers "dlmjax"
from dlmjax import scoring
from dlmjax.data import tokenizer as tok_lib
from dlmjax.diffusion import NOISE_SHIFTS

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The oracle: i.i.d. tokens over the 12 symbols a…l (ids 4-15) with P ∝ 1…12.
V = 16
SYMBOLS = "abcdefghijkl"
P_V = np.zeros(V)
P_V[4:] = np.arange(1, 13)
P_V /= P_V.sum()
LOG_P_V = jnp.asarray(np.where(P_V > 0, np.log(np.maximum(P_V, 1e-30)), -1e9), jnp.float32)
ORACLE_SAMPLES = 1024  # z draws per grid node, averaged: z noise ≈ 0.11% of a 96-token answer


def oracle(z_BxL, attn_BxLxL):
    """The exact denoiser of i.i.d. data: x̂ = P whatever it is shown."""
    del attn_BxLxL
    return jnp.broadcast_to(LOG_P_V, (*z_BxL.shape, V))


def symbol_tokenizer():
    vocab = {t: i for i, t in enumerate([*tok_lib.SPECIAL_TOKENS, *SYMBOLS])}
    tok = tokenizers.Tokenizer(models.WordLevel(vocab=vocab, unk_token=tok_lib.SPECIAL_TOKENS[2]))
    tok.add_special_tokens(list(tok_lib.SPECIAL_TOKENS))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


def oracle_backend(noise):
    return scoring.Backend(logits_fn=jax.tree_util.Partial(oracle), vocab_size=V, seq_len=128,
                           shift=NOISE_SHIFTS[noise], tokenizer=symbol_tokenizer(),
                           sample=dict(method="ancestral", num_steps=8))


def _text(ids):
    return " ".join(SYMBOLS[i - 4] for i in ids)


@pytest.fixture(scope="module")
def oracle_tasks(tmp_path_factory):
    """A loglikelihood task (8-token contexts, 96-token answers) and a rolling one (250-token
    texts: two windows of the 128-token model each), drawn from P, in a temporary task dir."""
    directory = tmp_path_factory.mktemp("oracle_tasks")
    rng = np.random.default_rng(0)
    docs = []
    for _ in range(4):
        context, answer = rng.choice(V, 8, p=P_V), rng.choice(V, 96, p=P_V)
        text = rng.choice(V, 250, p=P_V)
        docs.append({"context": _text(context), "continuation": " " + _text(answer),
                     "text": _text(text), "exact": float(np.sum(np.log(P_V[answer]))),
                     "exact_text": float(np.sum(np.log(P_V[text])))})
    data = directory / "oracle.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    common = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
              f"test_split: test\nmetadata:\n  version: 1.0\n")
    (directory / "oracle_ll.yaml").write_text(
        "task: oracle_ll\noutput_type: loglikelihood\ndoc_to_text: '{{context}}'\n"
        "doc_to_target: '{{continuation}}'\ntarget_delimiter: ''\n"
        "metric_list:\n  - metric: perplexity\n" + common)
    (directory / "oracle_rolling.yaml").write_text(
        "task: oracle_rolling\noutput_type: loglikelihood_rolling\ndoc_to_text: ''\n"
        "doc_to_target: '{{text}}'\nmetric_list:\n  - metric: word_perplexity\n" + common)
    return str(directory), docs


def _evaluate(model_args, tasks, include_path, **kwargs):
    return lm_eval.simple_evaluate(
        model="dlmjax", model_args=model_args, tasks=tasks, bootstrap_iters=0,
        task_manager=lm_eval.tasks.TaskManager(include_path=include_path, include_defaults=False),
        **kwargs)


def _responses(result, task):
    samples = sorted(result["samples"][task], key=lambda s: s["doc_id"])
    return [s["resps"][0][0] for s in samples], [s["doc"] for s in samples]


@pytest.mark.parametrize("noise,task,limit", [("masked", "oracle_ll", 4),
                                               ("uniform", "oracle_rolling", 2)])
def test_grid_loglikelihood_of_the_oracle_is_the_exact_log_prob(noise, task, limit,
                                                                oracle_tasks):
    """Both requests types, both extreme noise types; one compiled program serves all four."""
    include_path, _ = oracle_tasks
    args = {"backend": oracle_backend(noise), "grid_points": 32, "num_samples": ORACLE_SAMPLES,
            "samples_per_forward": 256, "batch_size": 4}
    result = _evaluate(args, [task], include_path, limit=limit)
    responses, docs = _responses(result, task)
    if task == "oracle_ll":
        assert not any(greedy for _, greedy in responses)  # 96 i.i.d. tokens: never all argmax
        responses, exact = [ll for ll, _ in responses], [d["exact"] for d in docs]
    else:
        exact = [d["exact_text"] for d in docs]
    errors = [ll / e - 1 for ll, e in zip(responses, exact)]
    assert len(errors) == limit and max(map(abs, errors)) < 5e-3, errors


def test_monte_carlo_loglikelihood_of_the_oracle_within_3_standard_errors(oracle_tasks):
    include_path, docs = oracle_tasks
    backend = oracle_backend("balanced")
    args = {"method": "monte_carlo", "num_samples": 128, "samples_per_forward": 128,
            "batch_size": 4}
    result = _evaluate({"backend": backend, **args}, ["oracle_ll"], include_path)
    responses, docs = _responses(result, "oracle_ll")
    # The same per-request noise keys give the scorer's standard error of each estimate.
    lm = dlmjax.harness.DlmjaxLM(backend=backend, **args)
    pairs = [lm._split(d["context"], d["continuation"]) for d in docs]
    assert all(len(p) == 9 and len(c) == 96 for p, c in pairs)
    scores = scoring.score(backend, pairs, **lm.options)
    for (ll, _), s, doc in zip(responses, scores, docs):
        assert ll == pytest.approx(-s.nats, rel=1e-6)
        assert 0 < s.stderr < 0.15 * abs(doc["exact"])  # 128 antithetic pairs: ~5%
        assert abs(ll - doc["exact"]) < 3 * s.stderr, (ll, doc["exact"], s.stderr)


def test_padding_and_batching_do_not_change_a_score():
    """A request scored alone (16-wide rows) and next to a longer one (32-wide rows) gets the
    same value: padding is invisible and every request draws its own noise."""
    backend = oracle_backend("masked")
    options = dict(num_points=8, num_samples=4, batch_size=2)
    long_pair = ([0, 4, 5], list(range(4, 16)) * 2)  # 27 tokens
    short_pair = ([0, 6], [7, 8, 9])  # 5 tokens
    alone = scoring.score(backend, [short_pair], **options)[0]
    together = scoring.score(backend, [long_pair, short_pair], **options)[1]
    assert together.nats == pytest.approx(alone.nats, rel=1e-6)
    assert together.stderr == pytest.approx(alone.stderr, rel=1e-4) and alone.stderr > 0
    with pytest.raises(ValueError, match="model.seq_len=128"):
        scoring.score(backend, [([0], [4] * 128)])


def test_rolling_windows_cover_the_text_once_with_context():
    tokens = list(range(100, 150))
    for context in (1, 5):
        windows = scoring.rolling_windows(tokens, 16, context=context)
        assert sum((c for _, c in windows), []) == tokens
        assert windows[0][0] == [scoring.BOS_ID]
        for (prompt, continuation), start in zip(windows[1:], np.cumsum(
                [len(c) for _, c in windows])[:-1]):
            assert len(prompt) + len(continuation) == 16 and len(prompt) >= context
            assert prompt == tokens[start - len(prompt):start]


def test_repo_tasks_run_offline_on_a_sharded_run_directory(interop_run):
    """The shared tiny KJV model (trained a few steps, parameters sharded fsdp=2 × data=4)."""
    sharded_workdir = interop_run["run"]
    result = _evaluate(f"workdir={sharded_workdir},batch_size=4", ["dlmjax_kjv"],
                       dlmjax.harness.TASKS_DIR, limit=3)
    metrics = result["results"]
    assert 0.0 <= metrics["dlmjax_kjv_choice"]["acc,none"] <= 1.0
    assert 1.0 < metrics["dlmjax_kjv_ppl"]["byte_perplexity,none"] < 1e6
    generated, docs = _responses(result, "dlmjax_kjv_complete")
    assert len(generated) == 3 and all(isinstance(g, str) and "." not in g for g in generated)
    choices, docs = zip(*[(s["resps"], s["doc"]) for s in result["samples"]["dlmjax_kjv_choice"]])
    assert all(len(r) == 4 and all(np.isfinite(x[0][0]) for x in r) for r in choices)
    # The parameters really are sharded over the mesh the run was configured with.
    backend, _ = scoring.backend_from_workdir(sharded_workdir)
    embedding = backend.logits_fn.args[0]["embedding"]
    assert embedding.sharding.mesh.shape["fsdp"] == 2
    assert embedding.addressable_shards[0].data.shape == (4096, 32)
