"""A mixture of topics: each row draws one hidden topic, then its tokens i.i.d. from that topic.

Topic k has weight ∝ k^-a (a few common topics, a long tail of rare ones) and a sparse
Dirichlet(c) distribution over the ordinary ids. A model learns the common topics first and the
rare ones only with more data and more capacity, so its excess loss falls like a power law, and
it falls to a floor known in closed form up to a tiny Monte Carlo term:

  H(row) = H(T) + S·H(X | T) − H(T | row),

where H(T | row), the topic left uncertain after seeing all S tokens, is averaged over a fixed
set of seeded rows with the exact posterior. A perfect model of the rows scores H(row)/S per
token, which is also the entropy rate of the stream of independent rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import scipy.special

from dlmjax.data.synthetic import _row_uniforms
from dlmjax.data.tokenizer import NUM_SPECIAL

# Rows averaged for H(T | row): its standard error per token is reported with the entropy.
ENTROPY_ROWS = 16_384
_ENTROPY_STREAM = 2     # a generator stream of its own, apart from the train and held-out rows


@dataclasses.dataclass(frozen=True)
class TopicMixture:
    vocab_size: int
    weights_K: np.ndarray  # float64, topic probabilities
    probs_KxN: np.ndarray  # float64, each topic's distribution over ids NUM_SPECIAL..V-1

    @property
    def num_topics(self) -> int:
        return self.weights_K.shape[0]


def make_topic_mixture(vocab_size: int, num_topics: int, zipf_exponent: float,
                       concentration: float, seed: int) -> TopicMixture:
    """A seeded mixture: Zipf(zipf_exponent) topic weights, Dirichlet(concentration) topics."""
    n = vocab_size - NUM_SPECIAL
    if n < 2:
        raise ValueError(f"data.vocab_size={vocab_size} must be >= {NUM_SPECIAL + 2} (topics)")
    if num_topics < 1:
        raise ValueError(f"data.num_topics={num_topics} must be >= 1")
    if zipf_exponent < 0:
        raise ValueError(f"data.topic_zipf_exponent={zipf_exponent} must be >= 0")
    if concentration <= 0:
        raise ValueError(f"data.topic_concentration={concentration} must be > 0")
    rng = np.random.default_rng([seed, 0x546F7069])
    weights_K = np.arange(1, num_topics + 1, dtype=np.float64) ** -zipf_exponent
    # Gamma draws normalised = Dirichlet; the floor keeps every id possible in every topic, so
    # log-probabilities stay finite (the mass it adds is below 1e-12 per id).
    gamma_KxN = np.maximum(rng.gamma(concentration, size=(num_topics, n)), 1e-12)
    return TopicMixture(vocab_size, weights_K / weights_K.sum(),
                        gamma_KxN / gamma_KxN.sum(axis=1, keepdims=True))


def sample_topic_rows(mix: TopicMixture, row_ids: np.ndarray, seq_len: int, *,
                      key: Sequence[int]) -> np.ndarray:
    """Rows [R, S] int32: uniform 0 of a row picks its topic, the other S its tokens."""
    u_RxS1 = _row_uniforms(key, row_ids, seq_len + 1)
    topic_R = np.minimum(np.searchsorted(np.cumsum(mix.weights_K), u_RxS1[:, 0], side="right"),
                         mix.num_topics - 1)
    cdf_RxN = np.cumsum(mix.probs_KxN, axis=1)[topic_R]
    ids_RxS = (u_RxS1[:, 1:, None] >= cdf_RxN[:, None, :]).sum(axis=-1)
    n = mix.probs_KxN.shape[1]
    return (np.minimum(ids_RxS, n - 1) + NUM_SPECIAL).astype(np.int32)


def _topic_log_joint(mix: TopicMixture, rows_RxS: np.ndarray) -> np.ndarray:
    """log p(topic = k, row) for every row and topic, [R, K] float64."""
    ids_RxS = np.asarray(rows_RxS, np.int64) - NUM_SPECIAL
    log_probs_KxN = np.log(mix.probs_KxN)
    return np.log(mix.weights_K)[None] + log_probs_KxN[:, ids_RxS].sum(axis=-1).T


def topic_log_prob_rows(mix: TopicMixture, rows_RxS: np.ndarray) -> np.ndarray:
    """log p(row) under the true mixture, [R] float64 (an exact oracle)."""
    return scipy.special.logsumexp(_topic_log_joint(mix, rows_RxS), axis=1)


def _topic_left(mix: TopicMixture, rows_RxS: np.ndarray) -> np.ndarray:
    """H(T | row) of each row, [R] nats, from the exact posterior over topics."""
    log_joint_RxK = _topic_log_joint(mix, rows_RxS)
    posterior_RxK = np.exp(log_joint_RxK - scipy.special.logsumexp(log_joint_RxK, axis=1,
                                                                   keepdims=True))
    return -scipy.special.xlogy(posterior_RxK, posterior_RxK).sum(axis=1)


def topic_row_entropy(mix: TopicMixture, seq_len: int, *, seed: int = 0,
                      num_rows: int = ENTROPY_ROWS) -> tuple[float, float]:
    """(H(row)/S in nats per token, standard error of its Monte Carlo term H(T | row)/S)."""
    h_topic = -float(scipy.special.xlogy(mix.weights_K, mix.weights_K).sum())
    h_given_K = -scipy.special.xlogy(mix.probs_KxN, mix.probs_KxN).sum(axis=1)
    left_R = np.concatenate([_topic_left(mix, sample_topic_rows(
        mix, np.arange(start, min(start + 1024, num_rows)), seq_len,
        key=(seed, _ENTROPY_STREAM, 0))) for start in range(0, num_rows, 1024)])
    total = h_topic + seq_len * float(mix.weights_K @ h_given_K) - left_R.mean()
    return float(total / seq_len), float(left_R.std(ddof=1) / np.sqrt(num_rows)) / seq_len
