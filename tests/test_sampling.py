"""Next-token choice against a plain reference implementation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edge_runtime.model.sampling import Sampler, SamplingParams, _top_candidates

NONE = np.empty(0, dtype=np.int64)


def reference_candidates(scores: np.ndarray, top_k: int, top_p: float) -> set[int]:
    """Top-k then top-p by a full sort, as transformers' warpers do."""
    order = np.argsort(-scores, kind="stable")
    if 0 < top_k < scores.size:
        order = order[:top_k]
    if top_p >= 1.0:
        return {int(i) for i in order}
    probs = np.exp(scores[order] - scores[order].max())
    probs /= probs.sum()
    keep = int(np.searchsorted(np.cumsum(probs), top_p, side="left")) + 1
    return {int(i) for i in order[:keep]}


# Distinct by at least 0.01 so that no two tokens tie and the nucleus is unambiguous.
logits = arrays(np.int64, st.integers(2, 400), elements=st.integers(-2000, 2000), unique=True).map(
    lambda a: a / 100.0
)


@settings(max_examples=200, deadline=None)
@given(logits, st.integers(0, 50), st.floats(0.05, 1.0))
def test_candidates_match_a_full_sort(scores: np.ndarray, top_k: int, top_p: float) -> None:
    head, probs = _top_candidates(scores.copy(), top_k, top_p)
    assert set(head.tolist()) == reference_candidates(scores, top_k, top_p)
    assert probs.sum() == pytest.approx(1.0)
    assert list(probs) == sorted(probs, reverse=True)


def test_greedy_takes_argmax() -> None:
    scores = np.array([0.1, 3.0, 2.9, -1.0], dtype=np.float32)
    assert Sampler(SamplingParams(), np.random.default_rng(0))(scores, NONE) == 1


def test_repetition_penalty_demotes_seen_tokens() -> None:
    scores = np.array([0.1, 3.0, 2.9, -1.0], dtype=np.float32)
    sampler = Sampler(SamplingParams(repetition_penalty=1.5), np.random.default_rng(0))
    assert sampler(scores, np.array([1], dtype=np.int64)) == 2
    # Negative logits are multiplied, so the penalty still lowers them.
    negative = np.array([-1.0, -1.2], dtype=np.float32)
    assert sampler(negative, np.array([0], dtype=np.int64)) == 1


def test_top_k_one_is_greedy_even_when_sampling() -> None:
    rng = np.random.default_rng(1)
    sampler = Sampler(SamplingParams(do_sample=True, top_k=1), rng)
    scores = rng.normal(size=1000).astype(np.float32)
    assert {sampler(scores, NONE) for _ in range(20)} == {int(np.argmax(scores))}


def test_sampling_follows_the_distribution() -> None:
    scores = np.log(np.array([0.7, 0.2, 0.1], dtype=np.float32))
    sampler = Sampler(SamplingParams(do_sample=True), np.random.default_rng(3))
    counts = np.bincount([sampler(scores, NONE) for _ in range(4000)], minlength=3) / 4000
    assert counts == pytest.approx([0.7, 0.2, 0.1], abs=0.03)


def test_low_temperature_sharpens() -> None:
    scores = np.log(np.array([0.5, 0.3, 0.2], dtype=np.float32))
    sampler = Sampler(SamplingParams(do_sample=True, temperature=0.05), np.random.default_rng(3))
    assert {sampler(scores, NONE) for _ in range(200)} == {0}


def test_same_seed_same_draws() -> None:
    scores = np.random.default_rng(0).normal(size=5000).astype(np.float32)
    params = SamplingParams(do_sample=True, top_p=0.9)

    def draws(seed: int) -> list[int]:
        sampler = Sampler(params, np.random.default_rng(seed))
        return [sampler(scores, NONE) for _ in range(30)]

    assert draws(11) == draws(11)
    assert draws(11) != draws(12)


def test_top_k_keeps_every_token_tied_with_the_kth() -> None:
    scores = np.array([5.0, 3.0, 3.0, 3.0, 1.0])
    head, _probs = _top_candidates(scores, 2, 1.0)
    assert set(head.tolist()) == {0, 1, 2, 3}
