"""Ray on a local cluster: the report of a target split over many blocks equals the
single-process one bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import comparable, make_set

import conformal_gpu as cg

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
import conformal_gpu.ray as cgr  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             ignore_reinit_error=True)
    # Blocks in the order of the rows they were made from, so row numbers in errors are
    # the arrays' (the report itself does not depend on the order).
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    yield
    ray.shutdown()


def as_dataset(arrays: dict[str, np.ndarray], blocks: int):
    n = len(arrays["logits"])

    def rows(batch):
        idx = batch["id"]
        return {k: v[idx] for k, v in arrays.items()}

    ds = ray.data.range(n, override_num_blocks=blocks).map_batches(rows, batch_format="numpy")
    return ds.materialize()


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


def test_ray_errors_carry_the_crate_message(cluster):
    src = make_set(44, 1000, groups=False)
    cal = cg.Calibration.fit(src["logits"], src["labels"], device="cpu")
    bad = make_set(45, 2000)
    bad["labels"][1500] = 9
    with pytest.raises(Exception, match=r"label 9 at row 1500 is not a class"):
        cgr.evaluate(cal, {"t": as_dataset(bad, 4)}, groups=("slide",))
