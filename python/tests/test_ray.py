"""Ray on a local cluster: the report of a target split over many blocks equals the
single-process one bit for bit."""

from __future__ import annotations

import pytest
from conftest import as_dataset, comparable, intervals, make_set

import conformal_gpu as cg

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
import conformal_gpu.ray as cgr  # noqa: E402


def test_ray_report_bit_identical(cluster):
    src = make_set(41, 4000, groups=False)
    cal = cg.Calibration.fit(src["logits"], src["labels"], alphas=(0.1, 0.05), device="cpu")
    test = make_set(42, 30_000, shift=0.7)
    ood = make_set(43, 12_345, shift=1.1, labels=False)
    g = ("hospital", "slide")
    single = cal.report({
        "test": cal.tally(test["logits"], test["labels"],
                          groups={k: test[k] for k in g}, name="test"),
        "ood": cal.tally(ood["logits"], groups={k: ood[k] for k in g}, name="ood"),
    })
    ds_test, ds_ood = as_dataset(test, 24), as_dataset(ood, 7)
    assert ds_test.num_blocks() >= 16
    got = cgr.evaluate(cal, {"test": ds_test, "ood": ds_ood}, logits="logits",
                       labels="labels", groups=g, fan_in=3)
    assert comparable(got) == comparable(single)
    # The merged tally covers every row once, at its true offsets.
    t = cgr.tally(cal, ds_test, name="test", groups=g)
    assert t.rows == [(0, 30_000)] and t.n == 30_000
    # Only some groups; a dataset of one block.
    only_slide = cgr.evaluate(cal, {"test": as_dataset(test, 1)}, groups=("slide",))
    want = cal.report({"test": cal.tally(test["logits"], test["labels"],
                                         groups={"slide": test["slide"]}, name="test")})
    assert comparable(only_slide) == comparable(want)


def test_ray_bootstrap_report_bit_identical(cluster):
    """With a bootstrap, tallies of blocks at their row offsets carry the replicate counts
    of the whole target: the intervals equal the single-process ones bit for bit."""
    src = make_set(46, 3000, groups=False)
    cal = cg.Calibration.fit(src["logits"], src["labels"], alphas=(0.1,), device="cpu",
                             bootstrap=10, seed=17)
    test = make_set(47, 20_000, shift=0.7)
    ood = make_set(48, 6_789, shift=1.1, labels=False)
    g = ("hospital", "slide")
    tallies = {
        "test": cal.tally(test["logits"], test["labels"], groups={k: test[k] for k in g},
                          name="test"),
        "ood": cal.tally(ood["logits"], groups={k: ood[k] for k in g}, name="ood"),
    }
    single = cal.report(tallies)
    assert single["meta"]["bootstrap"] == {"replicates": 10, "confidence": 0.95, "seed": 17}
    assert "mae_ci" in single and single["targets"][0]["ci"]
    ds_test, ds_ood = as_dataset(test, 16), as_dataset(ood, 5)
    assert ds_test.num_blocks() >= 12
    got = cgr.evaluate(cal, {"test": ds_test, "ood": ds_ood}, groups=g, fan_in=3)
    assert comparable(got) == comparable(single)
    for path, (lo, hi) in intervals(got):
        assert lo <= hi, path
    # The merged tally is the single-process one, replicate counts included.
    t = cgr.tally(cal, ds_test, name="test", groups=g)
    assert t == tallies["test"] and t.to_json() == tallies["test"].to_json()
    # The confidence override, as cal.report's.
    got = cgr.evaluate(cal, {"test": ds_test, "ood": ds_ood}, groups=g, confidence=0.5)
    assert got["meta"]["bootstrap"]["confidence"] == 0.5
    assert comparable(got) == comparable(cal.report(tallies, confidence=0.5))


def test_ray_errors_carry_the_crate_message(cluster):
    src = make_set(44, 1000, groups=False)
    cal = cg.Calibration.fit(src["logits"], src["labels"], device="cpu")
    bad = make_set(45, 2000)
    bad["labels"][1500] = 9
    with pytest.raises(Exception, match=r"label 9 at row 1500 is not a class"):
        cgr.evaluate(cal, {"t": as_dataset(bad, 4)}, groups=("slide",))
