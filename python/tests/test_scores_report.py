"""Conformal scores in the reports (DESIGN 2.13-2.15): every entry (score, marginal and
class-conditional, level), its qhat, set metrics (coverage, sizes, SSCV, class coverage,
CovGap), per target and group, and CPC per score, equal an independent float64
implementation written here from DESIGN's text, on the crate's float32 probabilities
(`cg.softmax` on the CPU path). Exact on the CPU backend; on the GPU backend within
DESIGN 4's tolerances (a marginal LAC entry keeps the device's own counts). Randomised
scores shard exactly; bad options are typed errors naming them."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import make_set

import conformal_gpu as cg

SCORES = ["lac", "aps", "raps", "saps", "topk"]
ALPHAS = [0.1, 0.3]
RAPS_LAMBDA, RAPS_K_REG, SAPS_LAMBDA = 0.05, 2, 0.3


def conformal_rank(n: int, alpha: float) -> int:
    x = (n + 1) * (1.0 - alpha)
    r = round(x)
    k = r if abs(x - r) <= 1e-9 * (n + 1) else math.ceil(x)
    return max(1, int(k))


def oracle_scores(p: np.ndarray, score: str) -> np.ndarray:
    """Every class's score of every row (deterministic, u = 1), float64."""
    n, k = p.shape
    if score == "lac":
        return (np.float32(1.0) - p).astype(np.float64)
    grid = np.rint(p.astype(np.float64) * 2.0**40).astype(np.int64)
    out = np.empty((n, k))
    for i in range(n):
        sigma = int(grid[i].sum())
        pmax = float(p[i].max())
        for c in range(k):
            above = int(grid[i][p[i] > p[i, c]].sum())
            tie = int(grid[i][p[i] == p[i, c]].sum())
            o = int((p[i] >= p[i, c]).sum())
            aps = (float(above) + 1.0 * float(tie)) / float(sigma)
            if score == "aps":
                s = aps
            elif score == "raps":
                s = aps + RAPS_LAMBDA * max(0, o - RAPS_K_REG)
            elif score == "saps":
                s = 1.0 * pmax if o == 1 else pmax + SAPS_LAMBDA * (o - 2 + 1.0)
            else:
                s = o - 1 + 1.0
            out[i, c] = s
    return out


def stratum(size: int) -> int:
    for i, hi in enumerate([1, 3, 10, 100, 1000]):
        if size <= hi:
            return i
    return 5


def metrics(sets: np.ndarray, y: np.ndarray, alpha: float, k: int, by_class: bool) -> dict:
    """Set metrics of boolean sets [n, K] against labels y (-1 unknown)."""
    size = sets.sum(axis=1)
    lab = y >= 0
    out = {
        "mean_set_size": size.mean(),
        "singleton_rate": (size == 1).mean(),
        "empty_rate": (size == 0).mean(),
        "coverage": None,
        "sscv": None,
    }
    if lab.any():
        cov = sets[lab][np.arange(lab.sum()), y[lab]]
        out["coverage"] = cov.mean()
        st = np.array([stratum(int(s)) for s in size[lab]])
        out["sscv"] = max(
            abs(cov[st == s].mean() - (1 - alpha)) for s in range(6) if (st == s).any()
        )
    if by_class:
        if not lab.any():
            out["class_coverage"], out["covgap"] = None, None
        else:
            cc = []
            for c in range(k):
                rows = lab & (y == c)
                cc.append(sets[rows, c].mean() if rows.any() else None)
            out["class_coverage"] = cc
            gaps = [abs(v - (1 - alpha)) for v in cc if v is not None]
            out["covgap"] = sum(gaps) / len(gaps)
    return out


def cpc_threshold(label: np.ndarray, first: np.ndarray, second: np.ndarray, correct: int):
    """DESIGN 2.8 on a score: q* over the sorted label scores and +inf (ties: smallest)."""
    best_q, best_diff = math.inf, math.inf
    for q in np.unique(label):
        count = int(((first <= q) & (second > q)).sum())
        if abs(count - correct) < best_diff:
            best_q, best_diff = float(q), abs(count - correct)
    # +inf (no singleton) only when strictly better than every finite candidate.
    return math.inf if correct < best_diff else best_q


def close(a, b, tol):
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= tol


def check(report: dict, source: dict, target: dict, k: int, exact: bool) -> None:
    n_src, n = source["logits"].shape[0], target["logits"].shape[0]
    ys, yt = source["labels"], target["labels"]
    rate_tol = 0.0 if exact else 2.0 / n + 1e-6
    rep = report["targets"][0]
    correct = int((source["logits"].argmax(axis=1) == ys).sum())
    for mode, t in (("raw", 1.0), ("ts", report["source"]["temperature"])):
        ps = cg.softmax(source["logits"], t=t, device="cpu")
        pt = cg.softmax(target["logits"], t=t, device="cpu")
        entries = iter(rep["conformal"][mode])
        group_entries = {g["id"]: iter(g["conformal"][mode]) for g in rep["groups"]["slide"]}
        for score in SCORES:
            ss, st = oracle_scores(ps, score), oracle_scores(pt, score)
            label = ss[np.arange(n_src), ys]
            srt = np.sort(label)
            for cc in (False, True):
                for alpha in ALPHAS:
                    e = next(entries)
                    assert (e["score"], e["class_conditional"], e["alpha"]) == (score, cc, alpha)
                    if cc:
                        ks, qs = [], []
                        for c in range(k):
                            v = np.sort(label[ys == c])
                            r = conformal_rank(len(v), alpha)
                            ks.append(r)
                            qs.append(float(v[r - 1]) if r <= len(v) else None)
                        thr = np.array([math.inf if q is None else q for q in qs])
                        sets = st <= thr[None, :]
                        assert e["k"] == ks
                        want_q = qs
                    else:
                        r = conformal_rank(n_src, alpha)
                        q = float(srt[r - 1]) if r <= n_src else None
                        sets = st <= (math.inf if q is None else q)
                        assert e["k"] == r
                        want_q = q
                    if exact or score != "lac":
                        assert e["qhat"] == want_q, (mode, score, cc, alpha)
                    want = metrics(sets, yt, alpha, k, by_class=True)
                    lac_device = score == "lac" and not cc
                    tol = rate_tol if lac_device else 0.0
                    for key in ("mean_set_size", "singleton_rate", "empty_rate", "coverage"):
                        assert close(e[key], want[key], tol + 1e-12), (mode, score, cc, key)
                    for key in ("sscv", "covgap"):
                        assert close(e[key], want[key], rate_tol + 1e-12), (mode, score, key)
                    for got, w in zip(e["class_coverage"], want["class_coverage"]):
                        assert close(got, w, rate_tol + 1e-12)
                    # Groups: the same list on the group's rows, no class coverage.
                    for g in rep["groups"]["slide"]:
                        ge = next(group_entries[g["id"]])
                        rows = target["slide"] == g["id"]
                        gw = metrics(sets[rows], yt[rows], alpha, k, by_class=False)
                        assert "class_coverage" not in ge and "covgap" not in ge
                        assert g["n_labelled"] == int((yt[rows] >= 0).sum())
                        for key in ("mean_set_size", "coverage", "sscv", "empty_rate"):
                            assert close(ge[key], gw[key], rate_tol + 1e-12), (g["id"], key)
            if score in ("aps", "raps", "saps"):
                srt_first = np.sort(ss, axis=1)
                q = cpc_threshold(label, srt_first[:, 0], srt_first[:, 1], correct)
                tt = np.sort(st, axis=1)
                want = float(((tt[:, 0] <= q) & (tt[:, 1] > q)).mean())
                got = rep["estimates"][mode][f"CPC-{score.upper()}"]
                assert got == want, (mode, score, got, want)
                for g in rep["groups"]["slide"]:
                    rows = target["slide"] == g["id"]
                    gw = float(((tt[rows, 0] <= q) & (tt[rows, 1] > q)).mean())
                    assert g["estimates"][mode][f"CPC-{score.upper()}"] == gw
                if rep["true_accuracy"] is not None:
                    err = abs(got - rep["true_accuracy"])
                    assert abs(report["mae"][mode][f"CPC-{score.upper()}"] - err) <= 1e-12
        assert next(entries, None) is None


def case(k: int, ties: bool):
    source = make_set(10 + k, 300, k)
    target = make_set(20 + k, 400, k, shift=0.6)
    # A quarter of the target's labels unknown.
    target["labels"][::4] = -1
    if ties:
        for s in (source, target):
            s["logits"] = (np.round(s["logits"] * 2.0) / 2.0).astype(np.float32)
    return source, target


def run(source, target, device, **kw):
    return cg.evaluate(
        source,
        {"shifted": target},
        alphas=ALPHAS,
        device=device,
        score=",".join(SCORES),
        raps_lambda=RAPS_LAMBDA,
        raps_k_reg=RAPS_K_REG,
        saps_lambda=SAPS_LAMBDA,
        class_conditional=True,
        **kw,
    )


# K = 4 and 12: ties inside rows (quantised logits) exercise tie groups and the o rule;
# K = 12 puts sets into the {4..10} and {11..} strata.
@pytest.mark.parametrize("k", [4, 12])
@pytest.mark.parametrize("ties", [False, True])
def test_scores_equal_float64_oracle_cpu(k, ties):
    source, target = case(k, ties)
    rep = run(source, target, "cpu")
    check(rep, source, target, k, exact=True)
    assert rep["source"]["conformal"] == {
        "scores": SCORES,
        "randomize": False,
        "seed": 0,
        "raps_lambda": RAPS_LAMBDA,
        "raps_k_reg": RAPS_K_REG,
        "saps_lambda": SAPS_LAMBDA,
        "class_conditional": True,
    }


@pytest.mark.parametrize("ties", [False, True])
def test_scores_equal_float64_oracle_gpu(gpu, ties):
    source, target = case(4, ties)
    check(run(source, target, gpu), source, target, 4, exact=False)


def test_default_report_has_lac_entries_only():
    source, target = case(4, False)
    rep = cg.evaluate(source, {"t": target}, alphas=[0.1], device="cpu")
    t = rep["targets"][0]
    assert [(e["score"], e["class_conditional"]) for e in t["conformal"]["raw"]] == [("lac", False)]
    assert "CPC-APS" not in t["estimates"]["raw"] and "CPC-APS" not in rep["mae"]["raw"]
    assert len(t["conformal"]["raw"][0]["class_coverage"]) == 4


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_randomized_sets_shard_exactly(device, request):
    if device == "gpu":
        device = request.getfixturevalue("gpu")
    source, target = case(6, True)
    opts = dict(score="aps,raps,saps,topk", randomize=True, seed=7, alphas=ALPHAS)
    cal = cg.Calibration.fit(source["logits"], source["labels"], device=device, **opts)
    whole = cal.report({"t": [cal.tally(target["logits"], target["labels"], name="t")]})
    rng = np.random.default_rng(3)
    cuts = sorted(rng.choice(np.arange(1, 400), size=4, replace=False).tolist())
    parts = []
    for a, b in zip([0, *cuts], [*cuts, 400]):
        parts.append(
            cal.tally(target["logits"][a:b], target["labels"][a:b], row_offset=a, name="t")
        )
    rng.shuffle(parts)
    sharded = cal.report({"t": parts})
    strip = lambda r: {k: v for k, v in r.items() if k not in ("timings_ms", "meta")}  # noqa: E731
    assert strip(whole) == strip(sharded)
    # The draws change the sets: deterministic APS differs somewhere.
    det = cg.Calibration.fit(
        source["logits"], source["labels"], device=device, score="aps", alphas=ALPHAS
    )
    rd = det.report({"t": [det.tally(target["logits"], target["labels"], name="t")]})
    aps_rand = whole["targets"][0]["conformal"]["raw"][0]
    assert aps_rand["score"] == "aps"
    assert aps_rand != rd["targets"][0]["conformal"]["raw"][0]


@pytest.mark.parametrize(
    ("kw", "names"),
    [
        ({"score": "lac,foo"}, "foo"),
        ({"score": "aps,aps"}, "aps"),
        ({"raps_lambda": -1.0}, "raps-lambda"),
        ({"saps_lambda": 0.0}, "saps-lambda"),
        ({"raps_k_reg": -2}, "raps_k_reg"),
    ],
)
def test_bad_score_options_are_typed_errors(kw, names):
    source, target = case(4, False)
    with pytest.raises(cg.InvalidInput, match=names):
        cg.evaluate(source, {"t": target}, device="cpu", **kw)


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_predict_sets_are_the_reported_sets(device, request):
    """Calibration.predict_sets: the oracle's sets, row by row (deterministic scores);
    their mean size and coverage are the report's; randomised sets of row ranges at
    their offsets are the whole's; a missing entry is a typed error."""
    if device == "gpu":
        device = request.getfixturevalue("gpu")
    k = 5
    source, target = case(k, True)
    cal = cg.Calibration.fit(
        source["logits"],
        source["labels"],
        alphas=ALPHAS,
        device=device,
        score="lac,aps,raps,saps,topk",
        raps_lambda=RAPS_LAMBDA,
        raps_k_reg=RAPS_K_REG,
        saps_lambda=SAPS_LAMBDA,
        class_conditional=True,
    )
    rep = cal.report({"t": [cal.tally(target["logits"], target["labels"], name="t")]})
    entries = rep["targets"][0]["conformal"]["ts"]
    t_ts = rep["source"]["temperature"]
    ps = cg.softmax(source["logits"], t=t_ts, device="cpu")
    pt = cg.softmax(target["logits"], t=t_ts, device="cpu")
    for score in ("aps", "raps", "saps", "topk"):
        for alpha in ALPHAS:
            sets = cal.predict_sets(target["logits"], alpha=alpha, score=score, name="t")
            assert sets.shape == (400, k) and sets.dtype == np.bool_
            label = oracle_scores(ps, score)[np.arange(300), source["labels"]]
            r = conformal_rank(300, alpha)
            q = np.sort(label)[r - 1]
            np.testing.assert_array_equal(sets, oracle_scores(pt, score) <= q)
            e = next(
                e
                for e in entries
                if (e["score"], e["class_conditional"], e["alpha"]) == (score, False, alpha)
            )
            assert sets.sum(axis=1).mean() == e["mean_set_size"]
    cc = cal.predict_sets(target["logits"], alpha=0.1, score="aps", class_conditional=True)
    assert cc.shape == (400, k)
    # Randomised: the same draws at each row's index, whole or in two ranges.
    rnd = cg.Calibration.fit(
        source["logits"], source["labels"], device=device, score="aps", randomize=True, seed=3
    )
    whole = rnd.predict_sets(target["logits"], score="aps", name="t")
    halves = np.concatenate(
        [
            rnd.predict_sets(target["logits"][:150], score="aps", name="t"),
            rnd.predict_sets(target["logits"][150:], score="aps", name="t", row_offset=150),
        ]
    )
    np.testing.assert_array_equal(whole, halves)
    with pytest.raises(cg.InvalidInput, match="no prediction-set entry"):
        rnd.predict_sets(target["logits"], score="raps")
    with pytest.raises(cg.InvalidInput, match="mode"):
        rnd.predict_sets(target["logits"], mode="both")


def test_sets_and_pvalues_rank_on_the_device(gpu):
    """The classes of the host's probabilities are ranked by the device's score_ranks
    kernel (`device=`): sets and p-values equal the CPU path's bit for bit, every score,
    deterministic and randomised, at K = 114 with tied classes; the deterministic sets
    are the float64 oracle's."""
    k = 114
    source, target = make_set(61, 400, k=k), make_set(62, 300, k=k, shift=0.5)
    # Ties: a few classes copied over others (softmax keeps them equal).
    for arr in (source["logits"], target["logits"]):
        arr[:, 10:20] = arr[:, :10]
    for randomize in (False, True):
        cal = cg.Calibration.fit(
            source["logits"],
            source["labels"],
            alphas=ALPHAS,
            device="cpu",
            score="lac,aps,raps,saps,topk",
            raps_lambda=RAPS_LAMBDA,
            raps_k_reg=RAPS_K_REG,
            saps_lambda=SAPS_LAMBDA,
            randomize=randomize,
            seed=5,
        )
        for score in SCORES:
            for mode in ("raw", "ts"):
                sets = {
                    d: cal.predict_sets(target["logits"], alpha=0.1, score=score, mode=mode,
                                        name="t", device=d)
                    for d in ("cpu", gpu)
                }
                np.testing.assert_array_equal(sets["cpu"], sets[gpu])
                pv = {
                    d: cal.pvalues(target["logits"], mode=mode, score=score, name="t",
                                   device=d)
                    for d in ("cpu", gpu)
                }
                if score != "lac":
                    # LAC's p-values come from each device's own probabilities.
                    assert np.array_equal(pv["cpu"], pv[gpu]), (score, mode)
                if not randomize and mode == "raw" and score != "lac":
                    ps = cg.softmax(source["logits"], t=1.0, device="cpu")
                    pt = cg.softmax(target["logits"], t=1.0, device="cpu")
                    label = oracle_scores(ps, score)[np.arange(400), source["labels"]]
                    q = np.sort(label)[conformal_rank(400, 0.1) - 1]
                    np.testing.assert_array_equal(sets[gpu], oracle_scores(pt, score) <= q)
