"""COT in the reports (DESIGN 2.11): every target and group, raw and ts, equals an exact
LP (POT's network simplex) on the crate's float32 probabilities to 1e-7, on the CPU and
on the GPU backend (lavapipe in CI); tallies cut at random rows and merged in any order
give the unsharded COT bit for bit; bad input is a typed error."""

from __future__ import annotations

import numpy as np
import ot  # POT: the exact LP reference, installed in the test venv by scripts/test.sh
import pytest
from conftest import make_set

import conformal_gpu as cg


def lp_cot(p: np.ndarray, counts: np.ndarray) -> float:
    n = p.shape[0]
    a = np.full(n, 1.0 / n)
    b = counts / counts.sum()
    return 1.0 - float(ot.emd2(a, b, 1.0 - p.astype(np.float64), numItermax=10_000_000))


def tied(target: dict, k: int) -> dict:
    """Quantised logits (ties inside rows) and the first half repeated (ties across rows),
    group ids kept: tied rows fall in the same and in different groups."""
    x = np.round(target["logits"] * 2.0) / 2.0
    n = x.shape[0]
    x[n // 2 :] = x[: n - n // 2]
    return {**target, "logits": x.astype(np.float32)}


def check_report(report: dict, source: dict, target: dict, k: int) -> None:
    counts = np.bincount(source["labels"], minlength=k)
    t_ts = report["source"]["temperature"]
    rep = report["targets"][0]
    for mode, t in (("raw", 1.0), ("ts", t_ts)):
        p = cg.softmax(target["logits"], t=t, device="cpu")
        got = rep["estimates"][mode]["COT"]
        want = lp_cot(p, counts)
        assert abs(got - want) <= 1e-7, (mode, got, want)
        for g in rep["groups"]["slide"]:
            rows = target["slide"] == g["id"]
            got = g["estimates"][mode]["COT"]
            want = lp_cot(p[rows], counts)
            assert abs(got - want) <= 1e-7, (mode, g["id"], got, want)
    # MAE rows average COT's errors like every other method's.
    err = abs(rep["estimates"]["ts"]["COT"] - rep["true_accuracy"])
    assert abs(report["mae"]["ts"]["COT"] - err) <= 1e-12


# Sizes: K = 2 at a few thousand rows (the closed form), K = 10 and 100 through the
# transport solver at sizes the LP solves in seconds.
CASES = [(2, 3000), (10, 500), (100, 150)]


@pytest.mark.parametrize(("k", "n"), CASES)
@pytest.mark.parametrize("ties", [False, True])
def test_report_cot_equals_exact_lp_cpu(k, n, ties):
    source = make_set(k, 400, k)
    target = make_set(k + 1, n, k, shift=0.7)
    if ties:
        target = tied(target, k)
    report = cg.evaluate(source, {"t": target}, device="cpu")
    check_report(report, source, target, k)


@pytest.mark.parametrize(("k", "n"), CASES)
def test_report_cot_equals_exact_lp_gpu(gpu, k, n):
    source = make_set(k + 5, 400, k)
    target = tied(make_set(k + 6, n, k, shift=0.7), k)
    report = cg.evaluate(source, {"t": target}, device=gpu)
    check_report(report, source, target, k)


@pytest.mark.parametrize("k", [2, 10])
def test_cot_sharded_in_random_cuts_is_bit_identical(k):
    rng = np.random.default_rng(k)
    source = make_set(20 + k, 300, k)
    target = tied(make_set(21 + k, 1200, k, shift=0.5), k)
    cal = cg.Calibration.fit(source["logits"], source["labels"], device="cpu")
    groups = {g: target[g] for g in ("hospital", "slide")}
    whole = cal.report({"t": cal.tally(target["logits"], target["labels"], groups=groups)})
    for _ in range(3):
        cuts = np.sort(rng.choice(np.arange(1, 1200), size=5, replace=False))
        bounds = [0, *cuts.tolist(), 1200]
        parts = [
            cal.tally(target["logits"][a:b], target["labels"][a:b],
                      groups={g: v[a:b] for g, v in groups.items()}, row_offset=a)
            for a, b in zip(bounds[:-1], bounds[1:])
        ]
        # Through the tally's JSON (as a file or a Ray object would carry it), merged
        # in a random order.
        parts = [cg.Tally.from_json(t.to_json()) for t in parts]
        order = rng.permutation(len(parts))
        merged = parts[order[0]]
        for i in order[1:]:
            merged.merge(parts[i])
        sharded = cal.report({"t": merged})
        for mode in ("raw", "ts"):
            a = whole["targets"][0]
            b = sharded["targets"][0]
            assert a["estimates"][mode]["COT"] == b["estimates"][mode]["COT"]
            for ga, gb in zip(a["groups"]["slide"], b["groups"]["slide"]):
                assert ga["estimates"][mode]["COT"] == gb["estimates"][mode]["COT"]
        assert whole["targets"] == sharded["targets"]


def test_cot_bad_input_is_typed():
    source = make_set(1, 200, 3)
    target = make_set(2, 100, 4)
    with pytest.raises(cg.InvalidInput):  # K differs from the source's
        cg.evaluate(source, {"t": target}, device="cpu")
    unlabelled = {"logits": source["logits"]}
    with pytest.raises(cg.InvalidInput):  # no labels in the source
        cg.evaluate(unlabelled, {"t": make_set(3, 50, 3)}, device="cpu")
