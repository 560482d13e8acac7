"""Next-token choice: repetition penalty, temperature, top-k, top-p, then a draw or argmax."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Logits = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How the next token is picked; ``do_sample=False`` (or temperature 0) is greedy."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")

    @property
    def greedy(self) -> bool:
        """True when no randomness is involved."""
        return not self.do_sample or self.temperature == 0.0


class Sampler:
    """Picks tokens from logits with an injected random generator (reproducible by seed)."""

    def __init__(self, params: SamplingParams, rng: np.random.Generator):
        self.params = params
        self._rng = rng

    def __call__(self, logits: Logits, seen: npt.NDArray[np.int64]) -> int:
        """Choose the next token from one row of logits; ``seen`` is every id so far."""
        params = self.params
        # float64 so temperature and softmax don't lose the tail of a large vocabulary.
        scores = logits.astype(np.float64)
        if params.repetition_penalty != 1.0 and seen.size:
            ids = np.unique(seen)
            picked = scores[ids]
            scores[ids] = np.where(
                picked < 0, picked * params.repetition_penalty, picked / params.repetition_penalty
            )
        if params.greedy:
            return int(np.argmax(scores))
        scores /= params.temperature
        candidates, probs = _top_candidates(scores, params.top_k, params.top_p)
        cdf = np.cumsum(probs)
        choice = int(np.searchsorted(cdf, self._rng.random() * cdf[-1], side="right"))
        return int(candidates[min(choice, candidates.size - 1)])


def _top_candidates(
    scores: npt.NDArray[np.float64], top_k: int, top_p: float
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """Candidate ids (most likely first) and their probabilities after top-k then top-p."""
    vocab = scores.size
    probs_all = np.exp(scores - scores.max())
    probs_all /= probs_all.sum()
    if 0 < top_k < vocab:
        head = _largest(probs_all, top_k)
        # Like transformers, keep every token tied with the k-th: the cut is by score.
        kth = probs_all[head[-1]]
        if np.count_nonzero(probs_all >= kth) > top_k:
            head = np.flatnonzero(probs_all >= kth)
            head = head[np.argsort(-probs_all[head], kind="stable")]
        probs = probs_all[head] / probs_all[head].sum()
    else:
        # Sorting a 150k vocabulary every step is costly and the nucleus is almost always
        # small: grow a partitioned head until it holds mass top_p (the same result).
        width = 64
        while True:
            head = _largest(probs_all, width)
            probs = probs_all[head]
            if width >= vocab or probs.sum() >= top_p:
                break
            width *= 4
    if top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(probs), top_p, side="left")) + 1
        head, probs = head[:keep], probs[:keep]
    return head, probs / probs.sum()


def _largest(probs: npt.NDArray[np.float64], count: int) -> npt.NDArray[np.intp]:
    """Ids of the ``count`` largest probabilities, largest first (ties by id)."""
    if count >= probs.size:
        head = np.arange(probs.size)
    else:
        head = np.argpartition(-probs, count - 1)[:count]
    return head[np.argsort(-probs[head], kind="stable")]
