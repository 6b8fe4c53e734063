"""The crate against TorchCP 1.2.1's own outputs, without torch in CI.

`fixtures/torchcp_1_2_1.npz` was written by `scripts/torchcp_compare.py --rows 400,200
--fixture ...`, which runs TorchCP itself. For K = 4, 12 and 114 it holds:
- the seeded, untied logits and labels (400 source and 200 target rows; at K = 114 the
  last class has no source row);
- for every deterministic score where DESIGN 2.13 says the definitions match, at alpha
  0.05, 0.1 and 0.2, marginal (`SplitPredictor`) and class-conditional
  (`ClassConditionalPredictor`): TorchCP's `q_hat`, its prediction sets
  (`predict_with_logits`), and its metric functions on those sets (`coverage_rate`,
  `average_size`, `SSCV`, `CovGap` / 100, class coverage).

SAPS appears as "saps_at_label": TorchCP's SAPS given its own all-label score at the
label. As shipped, TorchCP scores the top class's label 0 (DESIGN 2.13's documented
difference).

The crate must give the same sets cell for cell, on the CPU and through the GPU's rank
kernel. Its `qhat` must agree within TorchCP's float32 sums, `(K + 1) 2^-24 max(1, |q|)`,
with the same `+inf` thresholds. Its report's metrics must agree within 1e-6 relative,
the precision of TorchCP's float32 metrics.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import conformal_gpu as cg

FIXTURE = Path(__file__).parent / "fixtures" / "torchcp_1_2_1.npz"
ALPHAS = (0.05, 0.1, 0.2)
SCORES = {
    "lac": "lac",
    "aps": "aps",
    "raps": "raps",
    "saps_at_label": "saps",
    "topk": "topk",
}
RAPS_LAMBDA, RAPS_K_REG, SAPS_LAMBDA = 0.05, 2, 0.3


@pytest.fixture(scope="module")
def fixture():
    with np.load(FIXTURE) as f:
        return {k: f[k] for k in f.files}


def entries_checked(fix: dict, k: int, device: str) -> int:
    src_z, src_y = fix[f"k{k}__src_z"], fix[f"k{k}__src_y"]
    tgt_z, tgt_y = fix[f"k{k}__tgt_z"], fix[f"k{k}__tgt_y"]
    cal = cg.Calibration.fit(
        src_z,
        src_y,
        alphas=list(ALPHAS),
        temperature=1.0,
        device=device,
        score=",".join(dict.fromkeys(SCORES.values())),
        raps_lambda=RAPS_LAMBDA,
        raps_k_reg=RAPS_K_REG,
        saps_lambda=SAPS_LAMBDA,
        class_conditional=True,
    )
    rep = cal.report({"target": [cal.tally(tgt_z, tgt_y, name="target")]})
    entries = {
        (e["score"], e["class_conditional"], e["alpha"]): e
        for e in rep["targets"][0]["conformal"]["raw"]
    }
    metrics = [str(m) for m in fix["metrics"]]
    checked = 0
    for stored, score in SCORES.items():
        for alpha in ALPHAS:
            for cc in (False, True):
                key = f"k{k}__{stored}__{alpha}__{int(cc)}"
                what = f"K={k} {stored} alpha={alpha} cc={cc} ({device})"
                e = entries[(score, cc, alpha)]
                # Thresholds.
                q_tcp = fix[key + "__qhat"]
                qhat = e["qhat"] if cc else [e["qhat"]]
                ours = np.array([math.inf if q is None else q for q in qhat])
                assert np.array_equal(np.isinf(ours), np.isinf(q_tcp)), what
                fin = ~np.isinf(ours)
                tol = (k + 1) * 2.0**-24 * np.maximum(1.0, np.abs(ours[fin]))
                assert (np.abs(ours[fin] - q_tcp[fin]) <= tol).all(), what
                # Sets, cell for cell.
                sets = cal.predict_sets(
                    tgt_z, alpha=alpha, score=score, class_conditional=cc, mode="raw",
                    name="target", device=device,
                )
                want = np.unpackbits(fix[key + "__sets"])[: sets.size].reshape(sets.shape)
                assert np.array_equal(sets, want.astype(bool)), what
                # Metrics: TorchCP's functions on its sets vs the report.
                m = fix[key + "__metrics"]
                got = [e[x] for x in metrics] + list(e["class_coverage"])
                assert len(got) == len(m) == len(metrics) + k, what
                for name, a, b in zip(metrics + ["class"] * k, m, got):
                    if math.isnan(a):
                        assert b is None, (what, name)
                    else:
                        assert abs(a - b) <= 1e-6 * max(1.0, abs(b)), (what, name, a, b)
                checked += 1
    return checked


@pytest.mark.parametrize("k", [4, 12, 114])
def test_sets_thresholds_and_metrics_equal_torchcp_cpu(fixture, k):
    assert entries_checked(fixture, k, "cpu") == len(SCORES) * len(ALPHAS) * 2


@pytest.mark.parametrize("k", [4, 114])
def test_sets_thresholds_and_metrics_equal_torchcp_gpu(fixture, k, gpu):
    assert entries_checked(fixture, k, gpu) == len(SCORES) * len(ALPHAS) * 2


def test_fixture_is_torchcp_1_2_1_and_whole(fixture):
    assert str(fixture["torchcp_version"]) == "1.2.1"
    for k in (4, 12, 114):
        for stored in SCORES:
            for alpha in ALPHAS:
                for cc in (0, 1):
                    key = f"k{k}__{stored}__{alpha}__{cc}"
                    assert key + "__sets" in fixture, key
    # At K = 114 the last class has no source row: +inf on both sides.
    assert (fixture["k114__src_y"] != 113).all()
    assert math.isinf(fixture["k114__lac__0.1__1__qhat"][113])
