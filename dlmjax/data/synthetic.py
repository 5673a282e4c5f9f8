"""Synthetic token sources whose entropy is known exactly.

A model's loss on these data can never go below the true entropy, so they give scaling runs a known
irreducible loss and the ELBO/sampler tests an exact oracle. Token ids start at NUM_SPECIAL so the
special ids (BOS, EOS, PAD, MASK) stay free. Every row is generated from its own seeded generator,
keyed by (key, row index): rows are i.i.d., random access is free, and a row's content does
not depend on how rows are grouped into batches or processes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import scipy.special

from dlmjax.data.tokenizer import NUM_SPECIAL

TRAIN_STREAM, EVAL_STREAM = 0, 1


def row_key(synthetic_seed: int, stream: int, seed: int = 0) -> tuple[int, int, int]:
    """The generator key of a stream: train rows differ per run seed, held-out rows never do."""
    return (synthetic_seed, stream, seed if stream == TRAIN_STREAM else 0)


@dataclasses.dataclass(frozen=True)
class MarkovChain:
    """A sparse first-order Markov chain over ids [NUM_SPECIAL, vocab_size).

    Row s of `successors_NxK` / `probs_NxK` lists the next states of state s (state s is id
    s + NUM_SPECIAL); duplicate successors are merged into the first entry (later copies get
    probability 0) so the entropies below are exact.
    """

    vocab_size: int
    successors_NxK: np.ndarray  # int64 state indices
    probs_NxK: np.ndarray  # float64, rows sum to 1
    stationary_N: np.ndarray  # float64, stationary distribution over states
    start_N: np.ndarray  # float64, distribution of a row's first state

    @property
    def num_states(self) -> int:
        return self.successors_NxK.shape[0]


def _stationary(successors_NxK: np.ndarray, probs_NxK: np.ndarray) -> np.ndarray:
    """Stationary distribution by power iteration on the sparse chain (works for 100k+ states)."""
    n = successors_NxK.shape[0]
    pi_N = np.full(n, 1.0 / n)
    for _ in range(200_000):
        new_N = _step_distribution(pi_N, successors_NxK, probs_NxK)
        new_N /= new_N.sum()
        if np.abs(new_N - pi_N).sum() < 1e-14:
            return new_N
        pi_N = new_N
    raise ValueError("Markov chain stationary distribution did not converge")


MARKOV_STARTS = ("stationary", "successor")


def make_markov_chain(vocab_size: int, branching: int, seed: int,
                      start: str = "stationary") -> MarkovChain:
    """A seeded random chain: each state has `branching` successors with Dirichlet(1) weights.

    Successors always include s+1 and s+2 (mod N): cycles of lengths N and N-1 make the chain
    irreducible and aperiodic, so the stationary distribution and the entropy rate are well defined
    whatever the random part turns out to be. start: a row's first state is stationary, or the
    successor of a fixed hidden state 0 ("successor"): then every token of a row, the first too,
    carries one transition's entropy and a row's entropy per token is close to the entropy rate
    (a stationary first state costs its whole entropy, log N or so, once per row).
    """
    if start not in MARKOV_STARTS:
        raise ValueError(f"data.markov_start={start!r} must be one of {MARKOV_STARTS}")
    n = vocab_size - NUM_SPECIAL
    if n < 3:
        raise ValueError(
            f"data.vocab_size={vocab_size} must be >= {NUM_SPECIAL + 3} (Markov chain)"
        )
    if branching < 2:
        raise ValueError(f"data.markov_branching={branching} must be >= 2")
    rng = np.random.default_rng([seed, 0x4D61726B])
    offsets_NxK = np.empty((n, branching), dtype=np.int64)
    offsets_NxK[:, 0], offsets_NxK[:, 1] = 1, 2
    offsets_NxK[:, 2:] = rng.integers(1, n, size=(n, branching - 2))
    successors_NxK = np.sort((np.arange(n)[:, None] + offsets_NxK) % n, axis=1)
    probs_NxK = rng.dirichlet(np.ones(branching), size=n)
    # Merge duplicate successors: after sorting, a run of equal successors pools its mass on its
    # first entry; zero-probability entries are never sampled by `_categorical`.
    for j in range(branching - 1, 0, -1):
        dup_N = successors_NxK[:, j] == successors_NxK[:, j - 1]
        probs_NxK[dup_N, j - 1] += probs_NxK[dup_N, j]
        probs_NxK[dup_N, j] = 0.0
    stationary_N = _stationary(successors_NxK, probs_NxK)
    start_N = stationary_N if start == "stationary" else _step_distribution(
        np.eye(1, n)[0], successors_NxK, probs_NxK)   # from state 0 (a one-hot row, not [N, N])
    return MarkovChain(vocab_size, successors_NxK, probs_NxK, stationary_N, start_N)


def _step_distribution(mu_N, successors_NxK, probs_NxK):
    """The distribution of the next state when the current one is distributed as mu_N."""
    return np.bincount(successors_NxK.ravel(), weights=(mu_N[:, None] * probs_NxK).ravel(),
                       minlength=len(mu_N))


def markov_entropy_rate(chain: MarkovChain) -> float:
    """H = sum_s pi_s H(P(.|s)) in nats per token: the loss floor of a model with full context."""
    h_N = -scipy.special.xlogy(chain.probs_NxK, chain.probs_NxK).sum(axis=1)
    return float(chain.stationary_N @ h_N)


def markov_row_entropy(chain: MarkovChain, seq_len: int) -> float:
    """Entropy of a row in nats/token: H(first state) + Σ_t E[H(P(.|x_t))] over its transitions."""
    h_N = -scipy.special.xlogy(chain.probs_NxK, chain.probs_NxK).sum(axis=1)
    total = -float(scipy.special.xlogy(chain.start_N, chain.start_N).sum())
    mu_N = chain.start_N
    for _ in range(seq_len - 1):
        total += float(mu_N @ h_N)
        mu_N = _step_distribution(mu_N, chain.successors_NxK, chain.probs_NxK)
    return total / seq_len


def iid_distribution(vocab_size: int, zipf_exponent: float) -> np.ndarray:
    """Zipf-like p(v) proportional to (v - NUM_SPECIAL + 1)^-a on ordinary ids, 0 on specials."""
    n = vocab_size - NUM_SPECIAL
    if n < 1:
        raise ValueError(f"data.vocab_size={vocab_size} must be > {NUM_SPECIAL}")
    if zipf_exponent < 0:
        raise ValueError(f"data.iid_zipf_exponent={zipf_exponent} must be >= 0")
    p_V = np.zeros(vocab_size)
    p_V[NUM_SPECIAL:] = np.arange(1, n + 1, dtype=np.float64) ** -zipf_exponent
    return p_V / p_V.sum()


def iid_entropy(p_V: np.ndarray) -> float:
    """Entropy in nats per token of i.i.d. tokens drawn from p_V."""
    return -float(scipy.special.xlogy(p_V, p_V).sum())


def _row_uniforms(key: Sequence[int], row_ids: np.ndarray, seq_len: int) -> np.ndarray:
    """[R, S] uniforms; row r's values depend only on (key, row_ids[r])."""
    return np.stack(
        [np.random.default_rng([*key, int(i)]).random(seq_len) for i in row_ids]
    ).reshape(len(row_ids), seq_len)


def _categorical(u_R: np.ndarray, cdf_RxK: np.ndarray) -> np.ndarray:
    """Index of the bucket of each uniform; clipped so float round-off never runs off the end."""
    return np.minimum((u_R[:, None] >= cdf_RxK).sum(axis=1), cdf_RxK.shape[1] - 1)


def sample_markov_rows(
    chain: MarkovChain, row_ids: np.ndarray, seq_len: int, *, key: Sequence[int]
) -> np.ndarray:
    """Rows [R, S] int32, each an independent run of the chain from its start distribution."""
    u_RxS = _row_uniforms(key, row_ids, seq_len)
    cdf_NxK = np.cumsum(chain.probs_NxK, axis=1)
    state_R = np.minimum(
        np.searchsorted(np.cumsum(chain.start_N), u_RxS[:, 0], side="right"),
        chain.num_states - 1,
    )
    states_RxS = np.empty(u_RxS.shape, dtype=np.int64)
    states_RxS[:, 0] = state_R
    # Sequential in time, vectorised over rows: the batch is generated in one pass.
    for t in range(1, seq_len):
        state_R = chain.successors_NxK[state_R, _categorical(u_RxS[:, t], cdf_NxK[state_R])]
        states_RxS[:, t] = state_R
    return (states_RxS + NUM_SPECIAL).astype(np.int32)


def sample_iid_rows(
    p_V: np.ndarray, row_ids: np.ndarray, seq_len: int, *, key: Sequence[int]
) -> np.ndarray:
    """Rows [R, S] int32 of i.i.d. tokens from p_V."""
    u_RxS = _row_uniforms(key, row_ids, seq_len)
    ids = np.searchsorted(np.cumsum(p_V), u_RxS, side="right")
    # Round-off can push a uniform past the last cdf value; the last ordinary id absorbs it.
    return np.minimum(ids, len(p_V) - 1).astype(np.int32)


def markov_log_prob_rows(chain: MarkovChain, rows_RxS: np.ndarray) -> np.ndarray:
    """log p(row) under the true chain, [R] float64 (an exact oracle for NLL/ELBO checks)."""
    states_RxS = np.asarray(rows_RxS, dtype=np.int64) - NUM_SPECIAL
    prev_RxT, next_RxT = states_RxS[:, :-1], states_RxS[:, 1:]
    hit_RxTxK = chain.successors_NxK[prev_RxT] == next_RxT[..., None]
    step_RxT = (chain.probs_NxK[prev_RxT] * hit_RxTxK).sum(axis=-1)
    return np.log(chain.start_N[states_RxS[:, 0]]) + np.log(step_RxT).sum(axis=1)
