"""conformal_gpu.sweep: the crate's sweep run from Python equals the command line's, file
for file; its DataFrames hold the CSV numbers exactly; a cell equals one ``evaluate``;
bad options and failed cells raise the documented errors."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
from conftest import comparable, make_set, save

import conformal_gpu as cg

TABLES = ("results", "conformal", "summary", "paired", "scores", "failures")
TARGETS = {"tgt_a": 0.3, "tgt_b": 0.8, "tgt_c": 1.2}


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """d/m1/{0,1,10} and d/m2/{0,1}: K = 4, a source and three shifted targets per cell
    (three names, so the score estimators have points to fit; run 10 sorts after 1)."""
    root = tmp_path_factory.mktemp("layout")
    seed = 0
    for model, runs in (("m1", ("0", "1", "10")), ("m2", ("0", "1"))):
        for run in runs:
            cell = root / "d" / model / run
            cell.mkdir(parents=True)
            seed += 1
            save(cell / "id_val.npz", make_set(100 + seed, 600, k=4))
            noise = np.random.default_rng(seed)
            for i, (name, shift) in enumerate(TARGETS.items()):
                # The same rows and labels in every run (as GDE needs), other logits.
                target = make_set(200 + i, 400, k=4, shift=shift)
                target["logits"] += noise.normal(0, 0.7, target["logits"].shape).astype(
                    np.float32)
                save(cell / f"{name}.npz", target)
    return root


def cells(out):
    return sorted(p.relative_to(out) for p in (out / "cells").rglob("*.json"))


def test_sweep_equals_the_command_line(cli, layout, tmp_path):
    out_cli, out_py = tmp_path / "cli", tmp_path / "py"
    cli("sweep", "--data", str(layout), "--out", str(out_cli), "--device", "cpu",
        "--alpha", "0.1,0.05", "--score", "lac,aps", "--bootstrap", "20", "--seed", "3")
    frame = cg.sweep(layout, out_py, device="cpu", alphas=(0.1, 0.05), score=["lac", "aps"],
                     bootstrap=20, seed=3)
    for name in TABLES:
        a = (out_cli / f"{name}.csv").read_bytes()
        assert a == (out_py / f"{name}.csv").read_bytes(), name
    assert cells(out_cli) == cells(out_py) and len(cells(out_py)) == 5
    for rel in cells(out_py):
        a = json.loads((out_cli / rel).read_text())
        b = json.loads((out_py / rel).read_text())
        # Same options, inputs and device: the same fingerprint, so either run's cells
        # would be kept by the other.
        assert a["meta"]["fingerprint"] == b["meta"]["fingerprint"]
        assert comparable(a) == comparable(b)

    # The DataFrame is results.csv, numbers read back exactly, names kept as text.
    with open(out_py / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(frame) == len(rows) > 0
    assert list(frame.columns) == list(rows[0])
    assert frame["run"].tolist() == [r["run"] for r in rows]
    assert "10" in set(frame["run"])
    for col in ("estimate", "true_accuracy", "lo", "hi"):
        for got, r in zip(frame[col].tolist(), rows):
            assert (math.isnan(got) and r[col] == "") or got == float(r[col]), col
    assert str(frame["n"].dtype) == "Int64"
    tables = cg.read_sweep(out_py)
    assert set(tables) >= set(TABLES)
    assert tables["summary"]["runs"].max() == 3
    assert len(tables["failures"]) == 0


def test_a_cell_equals_one_evaluate(layout, tmp_path):
    out = tmp_path / "out"
    frame = cg.sweep(layout, out, device="cpu", alphas=0.1, exclude=["tgt_a"])
    cell = layout / "d" / "m1" / "10"
    report = cg.evaluate(cell / "id_val.npz", {n: cell / f"{n}.npz" for n in TARGETS},
                         alphas=0.1, device="cpu", exclude=["tgt_a"])
    stored = json.loads((out / "cells" / "d" / "m1" / "10.json").read_text())
    assert comparable(stored) == comparable(report)
    mine = frame[(frame["model"] == "m1") & (frame["run"] == "10") & (frame["method"] == "CPC")
                 & (frame["group_kind"] == "")]
    assert len(mine) == 2 * len(TARGETS)  # raw and ts
    by_name = {t["name"]: t for t in report["targets"]}
    for row in mine.itertuples():
        est = by_name[row.target]["estimates"][row.mode]["CPC"]
        assert row.estimate == est


def test_bad_options_and_failed_cells(layout, tmp_path):
    with pytest.raises(cg.InvalidInput, match="alpha"):
        cg.sweep(layout, tmp_path / "a", device="cpu", alphas=(1.5,))
    with pytest.raises(cg.InvalidInput, match="nonsense"):
        cg.sweep(layout, tmp_path / "b", device="cpu", score="nonsense")
    manifest = tmp_path / "m.toml"
    manifest.write_text('[[cell]]\ndataset = "d"\nmodel = "m"\nrun = 0\nsource = "x.npz"\n'
                        'targets = []\ncolour = "red"\n')
    with pytest.raises(cg.InvalidInput, match="m.toml"):
        cg.sweep(manifest, tmp_path / "c", device="cpu")

    broken = tmp_path / "broken"
    shutil.copytree(layout, broken)
    (broken / "d" / "m2" / "1" / "id_val.npz").write_bytes(b"not a zip")
    with pytest.raises(RuntimeError) as err:
        cg.sweep(broken, tmp_path / "d", device="cpu")
    assert err.value.exit_code == 7
    failures = cg.read_sweep(tmp_path / "d")["failures"]
    assert failures[["model", "run"]].values.tolist() == [["m2", "1"]]
    assert failures["exit_code"].tolist() == [4]
    assert len(cells(tmp_path / "d")) == 4


def test_manifest_options_and_keywords(layout, tmp_path):
    """A manifest sweeps as its layout does; a keyword given here wins over the
    manifest's ``[options]``, one left ``None`` does not."""
    lines = ["[options]", "alpha = [0.2]", "score = [\"lac\", \"aps\"]", ""]
    for model, run in (("m1", "0"), ("m1", "1")):
        cell = layout / "d" / model / run
        lines += ["[[cell]]", 'dataset = "d"', f'model = "{model}"', f"run = {run}",
                  f'source = "{cell / "id_val.npz"}"', f'targets = ["{cell}/tgt_*.npz"]', ""]
    manifest = tmp_path / "sweep.toml"
    manifest.write_text("\n".join(lines))
    cg.sweep(manifest, tmp_path / "a", device="cpu")
    conformal = cg.read_sweep(tmp_path / "a")["conformal"]
    assert set(conformal["alpha"]) == {0.2}
    assert set(conformal["score"]) == {"lac", "aps"}
    cg.sweep(manifest, tmp_path / "b", device="cpu", alphas=(0.1,))
    conformal = cg.read_sweep(tmp_path / "b")["conformal"]
    assert set(conformal["alpha"]) == {0.1}
    assert set(conformal["score"]) == {"lac", "aps"}
    # The manifest's cells are the layout's: the same estimates.
    layout_frame = cg.sweep(layout, tmp_path / "c", device="cpu", alphas=(0.1,),
                            score=["lac", "aps"])
    manifest_frame = cg.read_sweep(tmp_path / "b")["results"]
    keep = layout_frame["run"].isin(["0", "1"]) & (layout_frame["model"] == "m1")
    a = layout_frame[keep & ~layout_frame["method"].isin(["GDE", "NuclearNorm", "MaNo"])]
    b = manifest_frame[~manifest_frame["method"].isin(["GDE", "NuclearNorm", "MaNo"])]
    def exact(col):
        return [None if math.isnan(x) else x for x in col.tolist()]

    assert len(a) == len(b) > 0
    assert exact(a["estimate"]) == exact(b["estimate"])


def test_reference_mode_rows(layout, tmp_path):
    """COT's reference mode in a sweep: results.csv holds COT-ref and COTT-ref rows (ts,
    target level, after the sweep's own methods) equal to one evaluate of the cell; the
    summaries never hold them; without the option there are none."""
    out = tmp_path / "ref"
    res = cg.sweep(layout, out, device="cpu", cot_reference="uniform")
    ref = res[res["method"].isin(["COT-ref", "COTT-ref"])]
    assert len(ref) == 2 * 5 * len(TARGETS)  # two values, five cells, three targets
    assert set(ref["mode"]) == {"ts"} and (ref["group_kind"] == "").all()
    cell = layout / "d" / "m1" / "10"
    rep = cg.evaluate(cell / "id_val.npz", {n: cell / f"{n}.npz" for n in TARGETS},
                      device="cpu", cot_reference="uniform")
    for t in rep["targets"]:
        for m in ("COT-ref", "COTT-ref"):
            row = ref[(ref["model"] == "m1") & (ref["run"] == "10")
                      & (ref["target"] == t["name"]) & (ref["method"] == m)]
            assert row["estimate"].tolist() == [t["estimates"]["ts"][m]]
    summary = cg.read_sweep(out)["summary"]
    assert not summary["method"].isin(["COT-ref", "COTT-ref"]).any()
    res = cg.sweep(layout, tmp_path / "none", device="cpu")
    assert not res["method"].isin(["COT-ref", "COTT-ref"]).any()
