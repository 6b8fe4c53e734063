"""Poisson bootstrap intervals (DESIGN.md 2.12) through the Python API: the keywords
`bootstrap`, `confidence` and `seed` of `Calibration.fit` and `evaluate`, `confidence` of
`Calibration.report`, the intervals in the report, row offsets keying the weights."""

from __future__ import annotations

import pickle

import pytest
from conftest import comparable, has_ci_keys, intervals, make_set, without_ci

import conformal_gpu as cg

B = 10


@pytest.fixture(scope="module")
def sets() -> dict:
    return {
        "source": make_set(51, 1500, groups=False),
        "test": make_set(52, 2500, shift=0.6),
        "ood": make_set(53, 1200, shift=1.1, labels=False),
    }


def fit(sets, **kw) -> cg.Calibration:
    s = sets["source"]
    return cg.Calibration.fit(s["logits"], s["labels"], alphas=(0.1, 0.05), device="cpu", **kw)


def groups_of(t: dict) -> dict:
    return {"hospital": t["hospital"], "slide": t["slide"]}


def report_of(cal: cg.Calibration, sets, **kw) -> dict:
    test, ood = sets["test"], sets["ood"]
    return cal.report({
        "test": cal.tally(test["logits"], test["labels"], groups=groups_of(test), name="test"),
        "ood": cal.tally(ood["logits"], groups=groups_of(ood), name="ood"),
    }, **kw)


def test_intervals_in_the_report(sets):
    cal = fit(sets, bootstrap=B, seed=3)
    assert cal.bootstrap == {"replicates": B, "confidence": 0.95, "seed": 3}
    r = report_of(cal, sets)
    assert r["meta"]["bootstrap"] == {"replicates": B, "confidence": 0.95, "seed": 3}
    # The MAE intervals, keyed as the MAE rows, one per method.
    assert set(r["mae_ci"]) == set(r["mae"])
    assert set(r["mae_ci"]["ts"]) == {"AC", "ATC-MC", "ATC-NE", "CPC", "DoC", "COT", "COTT"}
    # COT's and COTT's intervals are built at the target level, not per group.
    for m in ("COT", "COTT"):
        assert r["mae_ci"]["ts"][m] is not None
        assert r["mae_ci"]["slide_ts"][m] is None
    test, ood = r["targets"]
    assert (test["name"], ood["name"]) == ("test", "ood")
    for t, labelled in ((test, True), (ood, False)):
        assert set(t["ci"]) == {"raw", "ts"}
        assert set(t["ci"]["ts"]) == {"AC", "ATC-MC", "ATC-NE", "CPC", "DoC", "COT", "COTT"}
        assert t["ci"]["ts"]["COT"] is not None and t["ci"]["ts"]["COTT"] is not None
        assert (t["true_accuracy_ci"] is not None) == labelled
        assert (t["error_ci"] is not None) == labelled
        assert set(t["groups"]) == {"hospital", "slide"}
        for entries in t["groups"].values():
            for g in entries:
                assert set(g["ci"]) == {"raw", "ts"}
                assert g["ci"]["ts"]["COT"] is None and g["ci"]["ts"]["COTT"] is None
                assert (g["true_accuracy_ci"] is not None) == labelled
                assert (g["error_ci"] is not None) == labelled
    found = list(intervals(r))
    assert len(found) > 100
    for path, (lo, hi) in found:
        assert lo <= hi, path
    # The point estimates are those of a calibration without a bootstrap.
    plain = report_of(fit(sets), sets)
    assert without_ci(comparable(r))["targets"] == comparable(plain)["targets"]
    assert comparable(r)["mae"] == comparable(plain)["mae"]


def test_same_seed_same_intervals_other_seed_others(sets):
    a, b, c = fit(sets, bootstrap=B, seed=3), fit(sets, bootstrap=B, seed=3), fit(
        sets, bootstrap=B, seed=4)
    assert a == b and a.id == b.id  # the id: SHA-256 of everything fitted (not timings)
    ra, rb, rc = report_of(a, sets), report_of(b, sets), report_of(c, sets)
    assert comparable(ra) == comparable(rb)
    assert a != c
    assert list(intervals(ra)) != list(intervals(rc))
    assert ra["targets"][0]["ci"] != rc["targets"][0]["ci"]
    assert ra["mae_ci"] != rc["mae_ci"]
    assert without_ci(ra["targets"]) == without_ci(rc["targets"])


def test_bootstrap_zero_gives_no_intervals(sets):
    for kw in ({}, {"bootstrap": 0}, {"bootstrap": 0, "seed": 9, "confidence": 0.8}):
        cal = fit(sets, **kw)
        assert cal.bootstrap is None
        r = report_of(cal, sets)
        assert not has_ci_keys(r) and "bootstrap" not in r["meta"]
        assert not list(intervals(r))
    s, t = sets["source"], sets["test"]
    r = cg.evaluate({"logits": s["logits"], "labels": s["labels"]},
                    {"test": {"logits": t["logits"], "labels": t["labels"]}}, device="cpu")
    assert not has_ci_keys(r) and "bootstrap" not in r["meta"]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"bootstrap": -1}, r"^bootstrap -1: the number of replicates must be >= 0"),
        ({"bootstrap": 10_001}, r"^--bootstrap 10001: at most 10000 replicates$"),
        ({"bootstrap": B, "confidence": 1.5}, r"^confidence 1.5: must lie strictly between"),
        ({"confidence": 1.5}, r"^confidence 1.5: must lie strictly between 0 and 1$"),
        ({"confidence": 0.0}, r"^confidence 0: must lie strictly"),
        ({"confidence": float("nan")}, r"^confidence NaN: must lie strictly"),
        ({"seed": -1}, r"^seed -1: must be an integer in 0..=2\^64-1$"),
        ({"seed": 1 << 64}, r"^seed 18446744073709551616: must be an integer"),
    ],
)
def test_bad_arguments_raise_value_error(sets, tmp_path, kw, match):
    match = match.replace("^", "^invalid input: ", 1)
    with pytest.raises(ValueError, match=match) as e:
        fit(sets, **kw)
    assert isinstance(e.value, cg.InvalidInput) and e.value.exit_code == 2
    # Checked before anything is read: a missing file is not reached.
    with pytest.raises(cg.InvalidInput, match=match):
        cg.evaluate(tmp_path / "nope.npz", {"t": tmp_path / "nope.npz"}, **kw)


def test_report_confidence_override(sets):
    cal = fit(sets, bootstrap=B, seed=5)
    wide = report_of(cal, sets)
    narrow = report_of(cal, sets, confidence=0.5)
    assert narrow["meta"]["bootstrap"] == {"replicates": B, "confidence": 0.5, "seed": 5}
    assert cal.bootstrap["confidence"] == 0.95  # the calibration itself is unchanged
    assert comparable(report_of(cal, sets)) == comparable(wide)
    # The same as a calibration fitted at that confidence.
    at_half = fit(sets, bootstrap=B, seed=5, confidence=0.5)
    assert comparable(report_of(at_half, sets)) == comparable(narrow)
    assert comparable(report_of(at_half, sets, confidence=0.95)) == comparable(wide)
    # Percentile intervals of the same replicate values at a lower confidence are nested.
    pairs = list(zip(intervals(wide), intervals(narrow)))
    assert pairs
    for (pw, (lo_w, hi_w)), (pn, (lo_n, hi_n)) in pairs:
        assert pw == pn and lo_w <= lo_n <= hi_n <= hi_w, pw
    with pytest.raises(ValueError, match=r"confidence 1.5: must lie strictly between"):
        report_of(cal, sets, confidence=1.5)
    plain = fit(sets)
    with pytest.warns(UserWarning, match="the calibration has no bootstrap replicates"):
        r = report_of(plain, sets, confidence=0.9)
    assert not has_ci_keys(r)


def test_row_offsets_key_the_weights(sets):
    cal = fit(sets, bootstrap=B, seed=7)
    t = sets["test"]
    x, y, g = t["logits"], t["labels"], groups_of(t)

    def part(a, b, offset):
        return cal.tally(x[a:b], y[a:b], groups={k: v[a:b] for k, v in g.items()},
                         row_offset=offset, name="test")

    whole = part(0, 2500, 0)
    cuts = [0, 1, 999, 1000, 2500]
    pieces = [part(a, b, a) for a, b in zip(cuts, cuts[1:])]
    merged = pieces[3] + pieces[1] + pieces[0] + pieces[2]
    assert merged == whole and merged.to_json() == whole.to_json()
    assert comparable(cal.report({"test": pieces})) == comparable(cal.report({"test": whole}))
    # The same rows at other indices draw other weights: same estimates, other intervals.
    shifted = part(0, 1000, 0) + part(1000, 2500, 5000)
    want, got = cal.report({"test": whole}), cal.report({"test": shifted})
    assert without_ci(got["targets"]) == without_ci(want["targets"])
    assert got["targets"][0]["ci"] != want["targets"][0]["ci"]


def test_evaluate_equals_fit_tally_report(sets):
    s, test, ood = sets["source"], sets["test"], sets["ood"]
    got = cg.evaluate(
        {"logits": s["logits"], "labels": s["labels"]},
        {"test": {"logits": test["logits"], "labels": test["labels"], **groups_of(test)},
         "ood": {"logits": ood["logits"], **groups_of(ood)}},
        alphas=(0.1, 0.05), device="cpu", bootstrap=B, confidence=0.9, seed=11,
    )
    cal = fit(sets, bootstrap=B, confidence=0.9, seed=11)
    assert comparable(got) == comparable(report_of(cal, sets))
    assert got["meta"]["bootstrap"] == {"replicates": B, "confidence": 0.9, "seed": 11}


def test_pickle_and_json_keep_the_replicates(sets):
    cal = fit(sets, bootstrap=B, seed=3)
    t = sets["test"]
    tally = cal.tally(t["logits"], t["labels"], name="test")
    cal2, tally2 = pickle.loads(pickle.dumps(cal)), pickle.loads(pickle.dumps(tally))
    assert cal2 == cal and cal2.bootstrap == cal.bootstrap and tally2 == tally
    assert comparable(cal2.report({"test": tally2})) == comparable(cal.report({"test": tally}))
    cal3 = cg.Calibration.from_json(cal.to_json())
    assert comparable(cal3.report({"test": cg.Tally.from_json(tally.to_json())})) == \
        comparable(cal.report({"test": tally}))
    # Tallies of a calibration with replicates and of one without do not mix.
    plain = fit(sets)
    with pytest.raises(cg.InvalidInput):
        plain.report({"test": tally})
