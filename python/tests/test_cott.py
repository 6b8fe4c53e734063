"""COTT in the reports (DESIGN 2.16): the threshold from the source's own optimal plan
and its tie weight lambda, then the target's plan's mass above the threshold, equal an
exact LP (POT's network simplex) on the crate's float32 probabilities to 1e-7, per target
and per group, raw and ts, K = 2, 3, 10, CPU and lavapipe; on the source itself COTT is
its accuracy; the CLI's calibrate/tally/merge gives the same COTT as evaluate."""

from __future__ import annotations

import numpy as np
import ot  # POT: the exact LP reference, installed in the test venv by scripts/test.sh
import pytest
from conftest import comparable, make_set, save

import conformal_gpu as cg


def plan(p: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An optimal plan (rows mass 1/N against the label shares) and its costs 1 - p."""
    n = p.shape[0]
    cost = 1.0 - p.astype(np.float64)
    g = ot.emd(np.full(n, 1.0 / n), counts / counts.sum(), cost, numItermax=10_000_000)
    return g, cost


def threshold(p: np.ndarray, labels: np.ndarray, yhat: np.ndarray, k: int):
    """t = the e-th largest transported source cost, lambda its tie weight."""
    counts = np.bincount(labels, minlength=k)
    g, cost = plan(p, counts)
    n = len(labels)
    e = int((yhat != labels).sum())
    live = g > 1e-15
    pieces = sorted(zip(cost[live], g[live]), key=lambda x: -x[0])
    if e == 0:
        return pieces[0][0], 0.0
    acc = 0.0
    for c, m in pieces:
        acc += m
        if acc >= e / n - 1e-12:
            t = c
            break
    above, at_least = g[cost > t].sum(), g[cost >= t].sum()
    return t, (e / n - above) / (at_least - above)


def lp_cott(p: np.ndarray, counts: np.ndarray, t: float, lam: float) -> float:
    g, cost = plan(p, counts)
    above, at_least = g[cost > t].sum(), g[cost >= t].sum()
    return 1.0 - above - lam * (at_least - above)


def check_cott(k: int, n: int, device: str) -> None:
    source = make_set(40 + k, 500, k)
    target = make_set(50 + k, n, k, shift=0.8)
    report = cg.evaluate(source, {"target": target, "source_again": source}, device=device)
    counts = np.bincount(source["labels"], minlength=k)
    yhat = source["logits"].argmax(axis=1)
    by_name = {t["name"]: t for t in report["targets"]}
    for mode, temp in (("raw", 1.0), ("ts", report["source"]["temperature"])):
        ps = cg.softmax(source["logits"], t=temp, device="cpu")
        t, lam = threshold(ps, source["labels"], yhat, k)
        assert -1e-9 <= lam <= 1.0 + 1e-9
        p = cg.softmax(target["logits"], t=temp, device="cpu")
        rep = by_name["target"]
        got = rep["estimates"][mode]["COTT"]
        want = lp_cott(p, counts, t, lam)
        assert abs(got - want) <= 1e-7, (mode, got, want)
        for grp in rep["groups"]["hospital"]:
            rows = target["hospital"] == grp["id"]
            got = grp["estimates"][mode]["COTT"]
            assert abs(got - lp_cott(p[rows], counts, t, lam)) <= 1e-7, (mode, grp["id"])
        # On the source itself COTT is its accuracy (as ATC is).
        again = by_name["source_again"]
        assert abs(again["estimates"][mode]["COTT"] - again["true_accuracy"]) <= 1e-12
    err = abs(by_name["target"]["estimates"]["ts"]["COTT"] - by_name["target"]["true_accuracy"])
    assert "COTT" in report["mae"]["ts"]
    assert np.isfinite(err)


@pytest.mark.parametrize(("k", "n"), [(2, 2000), (3, 600), (10, 400)])
def test_report_cott_equals_exact_lp(k, n):
    check_cott(k, n, "cpu")


@pytest.mark.parametrize(("k", "n"), [(2, 2000), (10, 400)])
def test_report_cott_equals_exact_lp_gpu(k, n, gpu):
    """On the GPU backend the temperature is the GPU's fit; COTT's costs are the CPU
    softmax's at it (as COT's), so the same oracle at the report's temperature holds."""
    check_cott(k, n, gpu)


def test_cott_through_calibrate_tally_merge(cli, tmp_path):
    """The calibration file carries COTT's thresholds; merged tallies report the COTT of
    evaluate, and of Python's report of the same arrays."""
    source, target = make_set(61, 700, 4), make_set(62, 900, 4, shift=0.6)
    save(tmp_path / "id_val.npz", source)
    save(tmp_path / "test.npz", target)
    out = tmp_path / "e.json"
    want = cli("evaluate", "--data", str(tmp_path), "--device", "cpu", "--json", str(out),
               json_out=out)
    cal = tmp_path / "cal.json"
    cli("calibrate", "--data", str(tmp_path), "--device", "cpu", "--out", str(cal))
    parts = []
    for i, (a, b) in enumerate(((0, 400), (400, 900))):
        t = tmp_path / f"t{i}.json"
        cli("tally", "--calibration", str(cal), "--data", str(tmp_path / "test.npz"),
            "--rows", f"{a}:{b}", "--device", "cpu", "--out", str(t))
        parts.append(str(t))
    merged_out = tmp_path / "m.json"
    merged = cli("merge", "--calibration", str(cal), *reversed(parts), "--json",
                 str(merged_out), json_out=merged_out)
    for mode in ("raw", "ts"):
        assert merged["targets"][0]["estimates"][mode]["COTT"] == \
            want["targets"][0]["estimates"][mode]["COTT"] is not None
    got = cg.evaluate(tmp_path / "id_val.npz", {"test": tmp_path / "test.npz"}, device="cpu")
    assert comparable(got) == comparable(want)


@pytest.mark.parametrize("k", [2, 4])
def test_cott_intervals_on_the_source_itself(k):
    """Every bootstrap replicate refits COTT's threshold on its weighted source (DESIGN
    2.12). On the source itself as a target of the same name (so the same weights) each
    replicate's COTT is that replicate's weighted accuracy, as the point COTT is: COTT's
    interval is the true accuracy's and its error's is [0, 0], raw and ts. Another
    target's COTT interval holds its point estimate."""
    s = make_set(3 + k, 600, k)
    other = make_set(4 + k, 500, k, shift=0.5)
    r = cg.evaluate(dict(s, name="src"), {"src": s, "other": other}, device="cpu",
                    bootstrap=40, seed=5)
    same, t = r["targets"]
    for mode in ("raw", "ts"):
        lo, hi = same["ci"][mode]["COTT"]
        want = same["true_accuracy_ci"]
        assert abs(lo - want[0]) <= 1e-12 and abs(hi - want[1]) <= 1e-12, mode
        assert max(abs(v) for v in same["error_ci"][mode]["COTT"]) <= 1e-12
        lo, hi = t["ci"][mode]["COTT"]
        assert lo <= t["estimates"][mode]["COTT"] <= hi
        assert hi - lo > 0.01  # a real spread, not a point
        assert r["mae_ci"][mode]["COTT"] is not None
