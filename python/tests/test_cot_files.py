"""COT of a target's files without holding its rows (DESIGN 2.11's rounds;
`Calibration.cot_files`, the driver of `conformal-gpu cot`): on shards given in any
order, the target's and every slide's COT equal an exact LP (POT's network simplex) to
1e-7 and the in-memory report's bit for bit, K = 2 (the mergeable passes) and K = 10
(the dual's rounds, a small sample so that refine and collect passes run), ties
included; the CLI's JSON is the same dict; bad input is a typed error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import ot  # POT: the exact LP reference, installed in the test venv by scripts/test.sh
import pytest
from conftest import make_set, save

import conformal_gpu as cg


def lp_cot(p: np.ndarray, counts: np.ndarray) -> float:
    n = p.shape[0]
    a = np.full(n, 1.0 / n)
    b = counts / counts.sum()
    return 1.0 - float(ot.emd2(a, b, 1.0 - p.astype(np.float64), numItermax=10_000_000))


def shards(target: dict, tmp: Path, seed: int) -> list[Path]:
    """The target's rows shuffled into three shards of random sizes, in reverse order."""
    rng = np.random.default_rng(seed)
    n = target["logits"].shape[0]
    order = rng.permutation(n)
    cuts = np.sort(rng.choice(np.arange(1, n), size=2, replace=False))
    parts = np.split(order, cuts)
    paths = [
        save(tmp / f"part{i}.npz", {key: v[rows] for key, v in target.items()})
        for i, rows in enumerate(parts)
    ]
    return paths[::-1]


# Sizes: K = 2 at 3000 rows (seven passes, both modes in each); K = 10 at 2500 rows with a
# 200-row sample (sample, refine and collect passes) and with the sample holding the set.
@pytest.mark.parametrize(
    ("k", "n", "sample_rows"), [(2, 3000, None), (10, 2500, 200), (10, 2500, 5000)]
)
@pytest.mark.parametrize("ties", [False, True])
def test_cot_files_equal_the_lp_and_the_report(tmp_path, cli, k, n, sample_rows, ties):
    source = make_set(30 + k, 600, k)
    target = make_set(31 + k, n, k, shift=0.7)
    if ties:
        # Quantised logits (ties inside rows), the first half repeated (across rows).
        x = np.round(target["logits"] * 2.0) / 2.0
        x[n // 2 :] = x[: n - n // 2]
        target = {**target, "logits": x.astype(np.float32)}
    cal = cg.Calibration.fit(source["logits"], source["labels"], device="cpu")
    files = shards(target, tmp_path, k + ties)
    got = cal.cot_files(files, device="cpu", sample_rows=sample_rows)
    assert got["n"] == n
    assert got["calibration"] == cal.id
    if k == 2:
        assert got["passes"] == 7  # both modes in each pass
    elif sample_rows < n:
        assert got["passes"] >= 4, got["passes"]
    else:
        assert got["passes"] == 2

    counts = np.bincount(source["labels"], minlength=k)
    # The in-memory report (same source, so the same temperature and class counts).
    rep = cg.evaluate(source, {"t": target}, device="cpu")["targets"][0]
    for mode, t in (("raw", 1.0), ("ts", cal.temperature)):
        p = cg.softmax(target["logits"], t=t, device="cpu")
        assert abs(got["cot"][mode] - lp_cot(p, counts)) <= 1e-7, mode
        assert got["cot"][mode] == rep["estimates"][mode]["COT"], mode
        for g in got["groups"]["slide"]:
            rows = target["slide"] == g["id"]
            assert g["n"] == int(rows.sum())
            assert abs(g[mode] - lp_cot(p[rows], counts)) <= 1e-7, (mode, g["id"])
            (r,) = [x for x in rep["groups"]["slide"] if x["id"] == g["id"]]
            assert g[mode] == r["estimates"][mode]["COT"], (mode, g["id"])
    assert {g["id"] for g in got["groups"]["hospital"]} == set(np.unique(target["hospital"]))

    # The CLI: the same values from the same driver.
    cal_path = tmp_path / "cal.json"
    cal_path.write_text(cal.to_json())
    out = tmp_path / "cot.json"
    args = ["cot", "--calibration", str(cal_path), *map(str, files), "--device", "cpu"]
    if sample_rows is not None:
        args += ["--sample-rows", str(sample_rows)]
    via_cli = cli(*args, "--json", str(out), json_out=out)
    for key in ("n", "passes", "held_rows", "cot", "groups"):
        assert via_cli[key] == got[key], key


@pytest.mark.parametrize("ties", [False, True])
def test_collect_passes_on_the_device_give_the_cpu_rounds(tmp_path, gpu, ties):
    """K = 10 with a small sample (sample, refine and collect passes): the collect passes
    on the device (shaders/cot_collect.wgsl) fix and free the CPU's rows, so the values,
    the passes and the rows held are the CPU's; the protocol's parts too."""
    k, n = 10, 2500
    source = make_set(50, 600, k)
    target = make_set(51, n, k, shift=0.7)
    if ties:
        x = np.round(target["logits"] * 2.0) / 2.0
        x[n // 2 :] = x[: n - n // 2]
        target = {**target, "logits": x.astype(np.float32)}
    cal = cg.Calibration.fit(source["logits"], source["labels"], device="cpu")
    files = shards(target, tmp_path, 5 + ties)
    on_cpu = cal.cot_files(files, device="cpu", sample_rows=200)
    on_gpu = cal.cot_files(files, device=gpu, sample_rows=200)
    assert on_cpu["passes"] >= 4
    assert on_gpu["device"].startswith("gpu"), on_gpu["device"]
    for key in ("n", "passes", "held_rows", "cot", "groups"):
        assert on_gpu[key] == on_cpu[key], key
    # One pass of the protocol by hand: a collect plan's part on the device is the CPU's.
    census = cal.cot_census(target["logits"], {"slide": target["slide"]})
    passes = cal.cot_passes([census], sample_rows=200)
    plan = passes.plan()
    while True:
        parts = [plan.tally(0, target["logits"], {"slide": target["slide"]}, device=d)
                 for d in ("cpu", gpu)]
        assert parts[0].to_json() == parts[1].to_json(), plan.number
        passes.advance(parts[0])
        if passes.done:
            break
        plan = passes.plan()


def test_cot_files_bad_input_is_typed(tmp_path):
    k = 4
    source = make_set(1, 300, k)
    cal = cg.Calibration.fit(source["logits"], source["labels"], device="cpu")
    other_k = save(tmp_path / "k3.npz", make_set(2, 50, 3))
    with pytest.raises(cg.InvalidInput, match="k3.npz"):
        cal.cot_files([other_k])
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        cal.cot_files([tmp_path / "missing.npz"])
    one = save(tmp_path / "t.npz", make_set(3, 50, k))
    with pytest.raises(cg.InvalidInput, match="given twice"):
        cal.cot_files([one, one])
    with pytest.raises(cg.InvalidInput, match="at least 1 row"):
        cal.cot_files([one], sample_rows=0)
