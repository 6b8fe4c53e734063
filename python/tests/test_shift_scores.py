"""Score-based estimators in the reports (DESIGN 2.17): each target's `scores[mode]`
(nuclear norm, MaNo) equal a float64 numpy implementation written from DESIGN's text on
the crate's float32 probabilities; MaNo's two branches (delta above and below 5) both
checked; tallies cut at random rows and merged give the same scores bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_set

import conformal_gpu as cg


def oracle(logits: np.ndarray, t: float) -> tuple[float, float]:
    n, k = logits.shape
    p = cg.softmax(logits, t=t, device="cpu").astype(np.float64)
    eig = np.linalg.eigvalsh(p.T @ p)
    nuclear = np.sqrt(np.clip(eig, 0.0, None)).sum() / np.sqrt(n * min(n, k))
    z = logits.astype(np.float64) / np.float64(np.float32(t))
    m = z.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
    delta = (lse - z.mean(axis=1)).mean()
    if delta > 5:
        q = p
    else:
        v = 1.0 + z + z * z / 2.0
        v = v - v.min(axis=1, keepdims=True)
        q = v / v.sum(axis=1, keepdims=True)
    mano = ((q**4).sum() / (n * k)) ** 0.25
    return float(nuclear), float(mano)


@pytest.mark.parametrize("k", [2, 5, 30])
@pytest.mark.parametrize("scale", [1.0, 12.0])  # scale 12: delta > 5 (MaNo's softmax branch)
def test_shift_scores_equal_float64_oracle(k, scale):
    source = make_set(3, 400, k)
    target = make_set(4, 700, k, shift=0.5)
    for s in (source, target):
        s["logits"] = (s["logits"] * scale).astype(np.float32)
    rep = cg.evaluate(source, {"t": target}, device="cpu")
    scores = rep["targets"][0]["scores"]
    for mode, t in (("raw", 1.0), ("ts", rep["source"]["temperature"])):
        nuclear, mano = oracle(target["logits"], t)
        got = scores[mode]
        assert abs(got["nuclear_norm"] - nuclear) <= 1e-9 * nuclear, (mode, got, nuclear)
        assert abs(got["mano"] - mano) <= 1e-9 * mano, (mode, got, mano)


def test_shift_scores_shard_exactly():
    source = make_set(5, 400, 6)
    target = make_set(6, 1500, 6, shift=0.4)
    cal = cg.Calibration.fit(source["logits"], source["labels"], device="cpu")
    whole = cal.report({"t": [cal.tally(target["logits"], target["labels"], name="t")]})
    rng = np.random.default_rng(9)
    cuts = sorted(rng.choice(np.arange(1, 1500), size=5, replace=False).tolist())
    parts = [
        cal.tally(target["logits"][a:b], target["labels"][a:b], row_offset=a, name="t")
        for a, b in zip([0, *cuts], [*cuts, 1500])
    ]
    sharded = cal.report({"t": parts[::-1]})
    assert sharded["targets"][0]["scores"] == whole["targets"][0]["scores"]
