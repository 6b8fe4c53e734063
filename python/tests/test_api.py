"""Pickling, typed exceptions with the crate's messages, dtypes and layouts, the GIL."""

from __future__ import annotations

import pickle
import threading
import time

import numpy as np
import pytest
from conftest import comparable, make_set

import conformal_gpu as cg


@pytest.fixture(scope="module")
def cal() -> cg.Calibration:
    s = make_set(21, 2000, groups=False)
    return cg.Calibration.fit(s["logits"], s["labels"], alphas=(0.1, 0.2), device="cpu")


@pytest.fixture(scope="module")
def target() -> dict:
    return make_set(22, 3000, shift=0.5)


def groups_of(t):
    return {"hospital": t["hospital"], "slide": t["slide"]}


def test_pickle_round_trips(cal, target):
    t = cal.tally(target["logits"], target["labels"], groups=groups_of(target), name="x")
    cal2 = pickle.loads(pickle.dumps(cal))
    t2 = pickle.loads(pickle.dumps(t))
    assert cal2 == cal and cal2.id == cal.id and cal2.to_json() == cal.to_json()
    assert t2 == t and t2.to_json() == t.to_json()
    assert comparable(cal2.report({"x": t2})) == comparable(cal.report({"x": t}))
    assert cg.Calibration.from_json(cal.to_json()) == cal
    assert cg.Tally.from_json(t.to_json()) == t
    assert "Calibration(" in repr(cal) and "Tally(" in repr(t)


def test_merge_in_place_add_and_iadd(cal, target):
    x, y = target["logits"], target["labels"]
    whole = cal.tally(x, y)
    a = cal.tally(x[:1000], y[:1000])
    b = cal.tally(x[1000:], y[1000:], row_offset=1000)
    c = a + b
    assert c == whole and a.n == 1000  # + makes a new tally
    a += b
    assert a == whole
    b.merge(cal.tally(x[:1000], y[:1000]))
    assert b == whole
    assert comparable(cal.report({"t": [cal.tally(x[:10], y[:10]),
                                        cal.tally(x[10:], y[10:], row_offset=10)]})) \
        == comparable(cal.report({"t": whole}))


def test_overlap_and_foreign_tallies_refused(cal, target):
    x = target["logits"]
    a = cal.tally(x[:100])
    with pytest.raises(cg.InvalidInput, match=r"rows 50\.\.100 are tallied twice") as e:
        a.merge(cal.tally(x[50:150], row_offset=50))
    assert e.value.exit_code == 5
    other = cg.Calibration.fit(x[:500], target["labels"][:500], device="cpu")
    with pytest.raises(cg.InvalidInput, match="made with different calibrations"):
        a.merge(other.tally(x[100:200], row_offset=100))
    with pytest.raises(cg.InvalidInput, match="target names differ"):
        a.merge(cal.tally(x[100:200], row_offset=100, name="other"))
    with pytest.raises(cg.InvalidInput, match="not with this one"):
        other.report({"t": a})
    with pytest.raises(TypeError):
        a + 1  # noqa: B018


def test_bad_input_raises_typed_with_crate_message(cal, target):
    x = target["logits"].copy()
    x[7, 1] = np.nan
    with pytest.raises(cg.InvalidInput,
                       match=r"^t: logits: non-finite value NaN at row 1007, column 1$") as e:
        cal.tally(x, row_offset=1000, name="t")
    assert isinstance(e.value, ValueError) and e.value.exit_code == 5
    y = target["labels"].copy()
    y[5] = 3
    with pytest.raises(cg.InvalidInput, match=r"label 3 at row 5 is not a class: K = 3"):
        cal.tally(target["logits"], y)
    with pytest.raises(cg.InvalidInput, match=r"label 3 at row 5 is not a class"):
        cal.tally(target["logits"], y.astype(np.int32))
    with pytest.raises(cg.InvalidInput, match=r"label 3 at row 1005 is not a class"):
        cal.tally(target["logits"], y, row_offset=1000)
    y[5] = 2**40
    with pytest.raises(cg.InvalidInput, match=r"label 1099511627776 at row 5 is not a class"):
        cal.tally(target["logits"], y)
    with pytest.raises(cg.InvalidInput, match=r"labels: length mismatch: 2999 entries for 3000"):
        cal.tally(target["logits"], target["labels"][1:])
    with pytest.raises(cg.InvalidInput, match=r"^alpha = 1.5 is not in \(0, 1\)$") as e:
        cg.Calibration.fit(target["logits"], target["labels"], alphas=1.5)
    assert e.value.exit_code == 2
    with pytest.raises(cg.InvalidInput, match=r"temperature T = -1 must be finite and > 0"):
        cg.Calibration.fit(target["logits"], target["labels"], temperature=-1.0)
    y = target["labels"].copy()
    y[3] = -1
    with pytest.raises(cg.InvalidInput, match=r"calibration needs every label; row 3 has"):
        cg.Calibration.fit(target["logits"], y)
    with pytest.raises(cg.InvalidInput, match=r"rows have K = 4 classes but the source"):
        cal.tally(np.zeros((5, 4), np.float32))
    with pytest.raises(cg.InvalidInput, match=r"--device \"tpu\": expected auto, gpu or cpu"):
        cal.tally(target["logits"], device="tpu")
    with pytest.raises(cg.MalformedFile, match=r"^<calibration>: not a calibration file") as e:
        cg.Calibration.from_json("{}")
    assert e.value.exit_code == 4 and isinstance(e.value, cg.InvalidInput)
    forged = cal.to_json().replace('"k": 3', '"k": 4', 1)
    with pytest.raises(cg.MalformedFile, match="damaged calibration"):
        cg.Calibration.from_json(forged, "cal.json")
    with pytest.raises(cg.MalformedFile, match="not a tally file"):
        cg.Tally.from_json("[]")


def test_io_errors_are_oserrors(tmp_path, target):
    with pytest.raises(FileNotFoundError, match="nope.npz") as e:
        cg.evaluate(tmp_path / "nope.npz", {"t": target})
    assert e.value.exit_code == 3
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(cg.MalformedFile, match="bad.npz: not a readable .npz"):
        cg.evaluate({"logits": target["logits"], "labels": target["labels"]},
                    {"t": tmp_path / "bad.npz"})


def test_dtypes_and_layouts_give_the_same_report(cal, target):
    x, y, g = target["logits"], target["labels"], groups_of(target)
    want = comparable(cal.report({"t": cal.tally(x, y, groups=g)}))
    variants = [
        (x.astype(np.float64), y.astype(np.int32)),       # float64 rounded to float32
        (np.asfortranarray(x), y),                         # Fortran order
        (np.ascontiguousarray(np.repeat(x, 2, axis=0)[::2]), y),
        (np.repeat(x, 2, axis=0)[::2], y[::1]),            # strided rows
        (x.tolist(), y.tolist()),                          # plain lists
    ]
    for xv, yv in variants:
        got = comparable(cal.report({"t": cal.tally(xv, yv, groups=g)}))
        assert got == want
    g32 = {k: v.astype(np.int32) for k, v in g.items()}
    assert comparable(cal.report({"t": cal.tally(x, y, groups=g32)})) == want
    # float16 logits: converted exactly, so equal to their float32 values.
    h = x.astype(np.float16)
    assert comparable(cal.report({"t": cal.tally(h, y, groups=g)})) == comparable(
        cal.report({"t": cal.tally(h.astype(np.float32), y, groups=g)}))
    # A source in float64 / Fortran order fits the same calibration as float32.
    s = make_set(21, 2000, groups=False)
    for xv in (np.asfortranarray(s["logits"]), s["logits"].astype(np.float64)):
        assert cg.Calibration.fit(xv, s["labels"], alphas=(0.1, 0.2), device="cpu") == cal


def test_binary_logits_read_as_zero_z():
    rng = np.random.default_rng(5)
    z = rng.normal(size=500).astype(np.float32)
    y = (z + rng.normal(size=500) > 0).astype(np.int64)
    two = np.stack([np.zeros_like(z), z], axis=1)
    a = cg.Calibration.fit(z, y, device="cpu")
    b = cg.Calibration.fit(two, y, device="cpu")
    assert a == b


def test_gil_released_during_compute(cal):
    s = make_set(31, 3_000_000, groups=False)
    x, y = s["logits"], s["labels"].astype(np.int32)
    ticks = 0
    stop = threading.Event()

    def spin():
        nonlocal ticks
        while not stop.is_set():
            ticks += 1

    th = threading.Thread(target=spin)
    th.start()
    try:
        time.sleep(0.05)
        before = ticks
        t0 = time.perf_counter()
        rounds = 0
        while time.perf_counter() - t0 < 0.5 or rounds == 0:
            cal.tally(x, y)
            rounds += 1
        during = ticks - before
    finally:
        stop.set()
        th.join()
    # With the GIL held for the whole call the other thread would count (almost) nothing;
    # released, it runs freely while Rust computes.
    assert during > 10_000, (during, rounds)


def test_alphas_scalar_and_report_shape(target):
    c = cg.Calibration.fit(target["logits"], target["labels"], alphas=0.2, device="cpu")
    assert c.alphas == [0.2]
    r = c.report({"t": c.tally(target["logits"], groups={"slide": target["slide"]})})
    assert set(r) >= {"device", "alphas", "meta", "source", "targets", "mae", "timings_ms"}
    (t,) = r["targets"]
    assert t["name"] == "t" and t["n"] == 3000 and not t["labelled"]
    assert set(t["groups"]) == {"slide"}
    assert c.source["n"] == 3000
