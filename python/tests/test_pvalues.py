"""Conformal p-values (DESIGN.md 2.6) of every class of every row: ``cg.pvalues`` and
``Calibration.pvalues`` against a numpy oracle on the crate's own float32 probabilities
(exact on the CPU; on lavapipe the GPU's probabilities, a few ulp away, may move a count
where a probability sits on a score)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_set

import conformal_gpu as cg


def oracle(scores: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(1 + #{s_i >= 1 - p_k}) / (n + 1), the difference taken in float32 as the kernel
    takes it."""
    s = np.sort(scores.astype(np.float32))
    r = (np.float32(1.0) - probs).astype(np.float32)
    count = len(s) - np.searchsorted(s, r, side="left")
    return (1 + count) / (len(s) + 1)


def source_scores(logits: np.ndarray, labels: np.ndarray, t: float, device="cpu"):
    p = cg.softmax(logits, t=t, device=device)
    return (np.float32(1.0) - p[np.arange(len(labels)), labels]).astype(np.float32)


# Rows: 0 (empty), 1, and 255/256/257 around a GPU workgroup; K = 2, 3, 10.
@pytest.mark.parametrize("n,k", [(0, 3), (1, 2), (255, 3), (256, 10), (257, 2)])
def test_pvalues_equal_the_oracle(n, k):
    src = make_set(11, 300, k=k)
    tgt = make_set(12, n, k=k, shift=0.5) if n else {"logits": np.zeros((0, k), np.float32)}
    scores = source_scores(src["logits"], src["labels"], 1.3)
    # Ties: half the target rows are source rows, so 1 - p_k meets scores exactly.
    logits = tgt["logits"].copy()
    logits[: n // 2] = src["logits"][: n // 2]
    got = cg.pvalues(scores, logits, t=1.3, device="cpu")
    want = oracle(scores, cg.softmax(logits, t=1.3, device="cpu"))
    assert got.dtype == np.float64 and got.shape == (n, k)
    assert np.array_equal(got, want)
    # Any order of the scores gives the same p-values.
    rng = np.random.default_rng(3)
    assert np.array_equal(cg.pvalues(rng.permutation(scores), logits, t=1.3, device="cpu"), got)


def test_calibration_pvalues_use_its_scores_and_temperature():
    src, tgt = make_set(21, 800, k=4), make_set(22, 500, k=4, shift=0.8)
    cal = cg.Calibration.fit(src["logits"], src["labels"], device="cpu")
    for mode, t in (("ts", cal.temperature), ("raw", 1.0)):
        got = cal.pvalues(tgt["logits"], mode=mode)
        want = cg.pvalues(source_scores(src["logits"], src["labels"], t), tgt["logits"], t=t,
                          device="cpu")
        assert np.array_equal(got, want), mode
        # Credibility (the largest p-value) of a source row is at least 1/(n+1).
        assert got.max(axis=1).min() >= 1 / 801


def test_pvalues_on_the_gpu(gpu):
    src, tgt = make_set(31, 700, k=5), make_set(32, 600, k=5, shift=0.5)
    scores = source_scores(src["logits"], src["labels"], 0.9, device=gpu)
    got = cg.pvalues(scores, tgt["logits"], t=0.9, device=gpu)
    want = oracle(scores, cg.softmax(tgt["logits"], t=0.9, device=gpu))
    # Counts move only where a probability sits on a score: a few entries, by a few ranks.
    diff = np.abs(got - want) * (len(scores) + 1)
    assert (diff > 0).mean() < 0.01 and diff.max() <= 3


def test_bad_input_is_named():
    src = make_set(41, 50, k=3)
    scores = source_scores(src["logits"], src["labels"], 1.0)
    with pytest.raises(cg.InvalidInput, match="calibration scores"):
        cg.pvalues(np.array([0.1, np.nan], np.float32), src["logits"], device="cpu")
    with pytest.raises(cg.InvalidInput, match="calibration scores"):
        cg.pvalues(np.zeros(0, np.float32), src["logits"], device="cpu")
    with pytest.raises(cg.InvalidInput, match="temperature"):
        cg.pvalues(scores, src["logits"], t=0.0, device="cpu")
    bad = src["logits"].copy()
    bad[7, 1] = np.inf
    with pytest.raises(cg.InvalidInput, match="row 7"):
        cg.pvalues(scores, bad, device="cpu")
    cal = cg.Calibration.fit(src["logits"], src["labels"], device="cpu")
    with pytest.raises(cg.InvalidInput, match="K"):
        cal.pvalues(np.zeros((4, 5), np.float32))
    with pytest.raises(cg.InvalidInput, match="mode"):
        cal.pvalues(src["logits"], mode="both")


@pytest.mark.parametrize("score", ["aps", "raps", "saps", "topk"])
def test_other_scores_pvalues_equal_the_float64_oracle(score):
    """Every score's p-values (DESIGN 2.6 with items 13's scores): the source's label
    scores and the target's class scores from the float64 oracle of test_scores_report
    (deterministic), counted and divided as DESIGN says; equal exactly, both modes. A
    randomised calibration's p-values depend on the name and the row offset as a tally's
    draws do, and rows cut at an offset give the whole's."""
    from test_scores_report import RAPS_K_REG, RAPS_LAMBDA, SAPS_LAMBDA, oracle_scores

    src, tgt = make_set(51, 600, k=5), make_set(52, 300, k=5, shift=0.6)
    tgt["logits"][::7] = tgt["logits"][::7].round()  # tied classes in some rows
    opts = dict(raps_lambda=RAPS_LAMBDA, raps_k_reg=RAPS_K_REG, saps_lambda=SAPS_LAMBDA)
    cal = cg.Calibration.fit(src["logits"], src["labels"], device="cpu",
                             score=["lac", score], **opts)
    for mode, t in (("ts", cal.temperature), ("raw", 1.0)):
        ps = cg.softmax(src["logits"], t=t, device="cpu")
        label = oracle_scores(ps, score)[np.arange(len(src["labels"])), src["labels"]]
        cls = oracle_scores(cg.softmax(tgt["logits"], t=t, device="cpu"), score)
        want = (1 + (label[None, None, :] >= cls[:, :, None]).sum(axis=2)) / (len(label) + 1)
        got = cal.pvalues(tgt["logits"], mode=mode, score=score)
        assert got.shape == want.shape and np.array_equal(got, want), mode
    # LAC still comes from the mode calibration's scores, on any device.
    assert np.array_equal(cal.pvalues(tgt["logits"], score="lac"), cal.pvalues(tgt["logits"]))
    rnd = cg.Calibration.fit(src["logits"], src["labels"], device="cpu", score=score,
                             randomize=True, seed=9, **opts)
    whole = rnd.pvalues(tgt["logits"], score=score, name="t")
    part = rnd.pvalues(tgt["logits"][100:], score=score, name="t", row_offset=100)
    assert np.array_equal(whole[100:], part)
    assert not np.array_equal(whole, rnd.pvalues(tgt["logits"], score=score, name="u"))
    with pytest.raises(cg.InvalidInput, match="no sorted source scores"):
        cal.pvalues(tgt["logits"], score="aps" if score != "aps" else "raps")
