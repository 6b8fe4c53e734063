"""Every function against the crate's command line on the same arrays: identical numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import comparable, make_set, save

import conformal_gpu as cg

ALPHAS = (0.1, 0.05)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("data")
    source = make_set(1, 3000, labels=True, groups=False)
    test = make_set(2, 5000, shift=0.6)
    ood = make_set(3, 4000, shift=1.2, labels=False)
    save(d / "source.npz", source)
    save(d / "test.npz", test)
    save(d / "ood.npz", ood)
    return {"dir": d, "source": source, "targets": {"ood": ood, "test": test}}


def cli_evaluate(cli, data, tmp_path, device="cpu", extra=()):
    out = tmp_path / f"cli_{device}.json"
    return cli(
        "evaluate", "--data", str(data["dir"]), "--source", "source",
        "--alpha", ",".join(map(str, ALPHAS)), "--device", device, "--json", str(out), *extra,
        json_out=out,
    )


def test_evaluate_dicts_equal_cli(cli, data, tmp_path):
    want = cli_evaluate(cli, data, tmp_path)
    got = cg.evaluate(data["source"], data["targets"], alphas=ALPHAS, device="cpu")
    assert comparable(got) == comparable(want)
    assert got["device"] == want["device"] == "cpu"
    assert set(got["timings_ms"]) == set(want["timings_ms"])


def test_evaluate_paths_equal_cli(cli, data, tmp_path):
    want = cli_evaluate(cli, data, tmp_path)
    d = data["dir"]
    got = cg.evaluate(
        d / "source.npz", {"ood": d / "ood.npz", "test": str(d / "test.npz")},
        alphas=ALPHAS, device="cpu",
    )
    assert comparable(got) == comparable(want)
    # Files are hashed on the way, as the CLI does.
    assert got["meta"]["inputs"] == want["meta"]["inputs"]


def test_evaluate_fixed_and_other_temperature(cli, data, tmp_path):
    want = cli_evaluate(cli, data, tmp_path, extra=("--temperature", "1.7"))
    got = cg.evaluate(data["source"], data["targets"], alphas=ALPHAS, device="cpu",
                      temperature=1.7)
    assert comparable(got) == comparable(want)
    want = cli_evaluate(cli, data, tmp_path, extra=("--temperature-source", "test"))
    t = data["targets"]["test"]
    cal = cg.Calibration.fit(data["source"]["logits"], data["source"]["labels"],
                             alphas=ALPHAS, temperature=(t["logits"], t["labels"]),
                             device="cpu")
    assert cal.temperature == want["source"]["temperature"]


def test_calibrate_tally_merge_equal_cli(cli, data, tmp_path):
    d = data["dir"]
    cal_file = tmp_path / "cal.json"
    cli("calibrate", "--data", str(d), "--source", "source", "--alpha", "0.1,0.05",
        "--device", "cpu", "--out", str(cal_file))
    cli_cal = json.loads(cal_file.read_text())
    src = data["source"]
    cal = cg.Calibration.fit(src["logits"], src["labels"], alphas=ALPHAS, device="cpu")
    # The id is the SHA-256 of everything the source decides: same arrays, same id.
    assert cal.id == cli_cal["id"]
    assert cal.k == 3 and cal.alphas == list(ALPHAS)
    # Python tallies in pieces (any order, any sizes) == the CLI's merge of its tallies.
    test = data["targets"]["test"]
    groups = {"hospital": test["hospital"], "slide": test["slide"]}
    cuts = [0, 1234, 1235, 4000, 5000]
    parts = [
        cal.tally(test["logits"][a:b], test["labels"][a:b],
                  groups={g: v[a:b] for g, v in groups.items()}, row_offset=a, name="test")
        for a, b in zip(cuts, cuts[1:])
    ]
    whole = parts[3]
    for p in (parts[0], parts[2], parts[1]):
        whole.merge(p)
    assert whole.n == 5000 and whole.rows == [(0, 5000)]
    t_files = []
    for i, (a, b) in enumerate([(0, 2500), (2500, 5000)]):
        f = tmp_path / f"t{i}.json"
        cli("tally", "--calibration", str(cal_file), "--data", str(d / "test.npz"),
            "--rows", f"{a}:{b}", "--device", "cpu", "--out", str(f))
        t_files.append(f)
    out = tmp_path / "merged.json"
    want = cli("merge", "--calibration", str(cal_file), *map(str, t_files), "--json", str(out),
               json_out=out)
    got = cal.report({"test": whole})
    assert comparable(got) == comparable(want)
    # The CLI's tally files read back as Tally objects and merge into the same counts.
    cli_tallies = [cg.Tally.from_json(f.read_text(), str(f)) for f in t_files]
    merged = cli_tallies[0] + cli_tallies[1]
    assert comparable(cal.report({"test": merged})) == comparable(want)
    assert comparable(cal.report({"test": cli_tallies})) == comparable(want)
    # A calibration file written by the CLI is read here, and ours by the CLI.
    cal2 = cg.Calibration.from_json(cal_file.read_text())
    assert cal2 == cal and cal2.id == cal.id
    ours = tmp_path / "ours.json"
    ours.write_text(cal.to_json())
    (tmp_path / "py_t.json").write_text(whole.to_json())
    out2 = tmp_path / "merged2.json"
    want2 = cli("merge", "--calibration", str(ours), str(tmp_path / "py_t.json"),
                "--json", str(out2), json_out=out2)
    assert comparable(want2) == comparable(want)


def test_fit_temperature_equal_cli(cli, data, tmp_path):
    out = tmp_path / "t.json"
    want = cli("temperature", "--data", str(data["dir"] / "test.npz"), "--device", "cpu",
               "--json", str(out), json_out=out)
    t = data["targets"]["test"]
    got = cg.fit_temperature(t["logits"], t["labels"], device="cpu")
    assert got == want


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conformal_quantile_equal_cli(cli, tmp_path, dtype):
    rng = np.random.default_rng(7)
    scores = rng.random(10_001).astype(dtype)
    np.save(tmp_path / "s.npy", scores)
    out = tmp_path / "q.json"
    want = cli("quantile", "--scores", str(tmp_path / "s.npy"), "--alpha", "0.1,0.05,0.00001",
               "--device", "cpu", "--json", str(out), json_out=out)
    got = cg.conformal_quantile(scores, alphas=(0.1, 0.05, 0.00001), device="cpu")
    assert got == want
    assert got["precision"] == ("float64" if dtype == np.float64 else "float32")
    assert got["qhat"][2] is None  # k > n: +inf


def test_softmax_matches_float64_oracle():
    rng = np.random.default_rng(11)
    x = (rng.normal(size=(1000, 5)) * 4).astype(np.float32)
    for t in (1.0, 0.5, 3.0):
        got = cg.softmax(x, t, device="cpu")
        z = x.astype(np.float64) / t
        e = np.exp(z - z.max(axis=1, keepdims=True))
        want = e / e.sum(axis=1, keepdims=True)
        assert got.dtype == np.float32 and got.shape == x.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_gpu_equals_cli_gpu(cli, data, tmp_path, gpu):
    want = cli_evaluate(cli, data, tmp_path, device="gpu")
    got = cg.evaluate(data["source"], data["targets"], alphas=ALPHAS, device=gpu)
    assert got["device"].startswith("gpu")
    assert comparable(got) == comparable(want)
    src, test = data["source"], data["targets"]["test"]
    cal = cg.Calibration.fit(src["logits"], src["labels"], alphas=ALPHAS, device=gpu)
    assert cal.device.startswith("gpu")
    t = cal.tally(test["logits"], test["labels"], groups={"slide": test["slide"],
                  "hospital": test["hospital"]}, name="test")
    ood = data["targets"]["ood"]
    o = cal.tally(ood["logits"], groups={"slide": ood["slide"], "hospital": ood["hospital"]},
                  name="ood")
    assert comparable(cal.report({"ood": o, "test": t})) == comparable(want)
    got = cg.conformal_quantile(np.linspace(0, 1, 1001, dtype=np.float32), device=gpu)
    assert got["qhat"] == cg.conformal_quantile(
        np.linspace(0, 1, 1001, dtype=np.float32), device="cpu")["qhat"]
    p = cg.softmax(test["logits"], 1.3, device=gpu)
    np.testing.assert_allclose(p, cg.softmax(test["logits"], 1.3, device="cpu"), rtol=1e-5,
                               atol=1e-7)


BOOT = ("--bootstrap", "10", "--seed", "7", "--confidence", "0.9")


def test_bootstrap_evaluate_equal_cli(cli, data, tmp_path):
    want = cli_evaluate(cli, data, tmp_path, extra=BOOT)
    assert want["meta"]["bootstrap"] == {"replicates": 10, "confidence": 0.9, "seed": 7}
    got = cg.evaluate(data["source"], data["targets"], alphas=ALPHAS, device="cpu",
                      bootstrap=10, seed=7, confidence=0.9)
    assert "mae_ci" in got and got["targets"][1]["ci"]
    assert comparable(got) == comparable(want)
    d = data["dir"]
    got = cg.evaluate(d / "source.npz", {"ood": d / "ood.npz", "test": d / "test.npz"},
                      alphas=ALPHAS, device="cpu", bootstrap=10, seed=7, confidence=0.9)
    assert comparable(got) == comparable(want)


def test_bootstrap_calibrate_tally_merge_equal_cli(cli, data, tmp_path):
    d = data["dir"]
    cal_file = tmp_path / "cal.json"
    cli("calibrate", "--data", str(d), "--source", "source", "--alpha", "0.1,0.05",
        "--device", "cpu", "--out", str(cal_file), *BOOT)
    src, test = data["source"], data["targets"]["test"]
    cal = cg.Calibration.fit(src["logits"], src["labels"], alphas=ALPHAS, device="cpu",
                             bootstrap=10, seed=7, confidence=0.9)
    assert cal.id == json.loads(cal_file.read_text())["id"]
    assert cg.Calibration.from_json(cal_file.read_text()) == cal
    groups = {"hospital": test["hospital"], "slide": test["slide"]}
    parts = [
        cal.tally(test["logits"][a:b], test["labels"][a:b],
                  groups={g: v[a:b] for g, v in groups.items()}, row_offset=a, name="test")
        for a, b in [(3000, 5000), (0, 1234), (1234, 3000)]
    ]
    t_files = []
    for i, (a, b) in enumerate([(0, 2500), (2500, 5000)]):
        f = tmp_path / f"t{i}.json"
        cli("tally", "--calibration", str(cal_file), "--data", str(d / "test.npz"),
            "--rows", f"{a}:{b}", "--device", "cpu", "--out", str(f))
        t_files.append(f)
    for conf in (None, 0.8):
        out = tmp_path / f"merged_{conf}.json"
        extra = () if conf is None else ("--confidence", str(conf))
        want = cli("merge", "--calibration", str(cal_file), *map(str, t_files), "--json",
                   str(out), *extra, json_out=out)
        assert want["meta"]["bootstrap"]["confidence"] == (conf or 0.9)
        assert comparable(cal.report({"test": parts}, confidence=conf)) == comparable(want)
        cli_tallies = [cg.Tally.from_json(f.read_text(), str(f)) for f in t_files]
        assert comparable(cal.report({"test": cli_tallies}, confidence=conf)) == \
            comparable(want)


def test_bootstrap_gpu_equals_cli_gpu(cli, data, tmp_path, gpu):
    want = cli_evaluate(cli, data, tmp_path, device="gpu", extra=BOOT)
    got = cg.evaluate(data["source"], data["targets"], alphas=ALPHAS, device=gpu,
                      bootstrap=10, seed=7, confidence=0.9)
    assert got["device"].startswith("gpu") and "mae_ci" in got
    assert comparable(got) == comparable(want)


@pytest.mark.parametrize("shape", ["[N]", "[N, 1]"])
def test_binary_logit_shapes_equal_cli(cli, tmp_path, shape):
    # DESIGN 1: a single binary logit z, as [N] or [N, 1], is the two-class row (0, z) in
    # every reader: Python's arrays, the .npz files the CLI reads, and both agree with the
    # same sets written as explicit [N, 2] rows.
    rng = np.random.default_rng(7)

    def binary(n, shift):
        y = rng.integers(0, 2, n)
        z = ((2 * y - 1) * rng.gamma(2.0, 1.5, n) + shift * rng.normal(size=n)).astype(np.float32)
        if shape == "[N, 1]":
            z = z[:, None]
        return {"logits": z, "labels": y.astype(np.int64)}

    source, test = binary(2000, 0.0), binary(3000, 1.5)
    d = tmp_path / "data"
    d.mkdir()
    save(d / "source.npz", source)
    save(d / "test.npz", test)
    out = tmp_path / "cli.json"
    want = cli("evaluate", "--data", str(d), "--source", "source", "--device", "cpu",
               "--json", str(out), json_out=out)
    got = cg.evaluate(source, {"test": test}, device="cpu")
    assert comparable(got) == comparable(want)
    # The same rows written out as (0, z).
    rows = {
        name: {**s, "logits": np.stack(
            [np.zeros(len(s["labels"]), np.float32), s["logits"].reshape(-1)], axis=1)}
        for name, s in (("source", source), ("test", test))
    }
    two = cg.evaluate(rows["source"], {"test": rows["test"]}, device="cpu")
    assert comparable(two) == comparable(got)
    # Calibrate/tally take the same shapes.
    cal = cg.Calibration.fit(source["logits"], source["labels"], device="cpu")
    assert cal.k == 2
    t = cal.tally(test["logits"], labels=test["labels"], name="test", device="cpu")
    assert t.n == 3000


def test_exclude_equals_cli(cli, data, tmp_path):
    """`exclude=` (evaluate, Calibration.report) is the CLI's `--exclude`: the matching
    targets are reported but kept out of the MAE rows, whose members are the others."""
    want = cli_evaluate(cli, data, tmp_path, extra=("--exclude", "te*"))
    got = cg.evaluate(data["source"], data["targets"], alphas=ALPHAS, device="cpu", exclude=["te*"])
    assert comparable(got) == comparable(want)
    assert got["mae_exclude"] == ["te*"]
    # test is the only labelled target: nothing is left to average.
    assert got["mae"]["ts"]["CPC"] is None
    plain = cg.evaluate(data["source"], data["targets"], alphas=ALPHAS, device="cpu")
    assert plain["mae"]["ts"]["CPC"] is not None and "mae_exclude" not in plain
    assert [t["estimates"] for t in got["targets"]] == [t["estimates"] for t in plain["targets"]]
    src, t = data["source"], data["targets"]["test"]
    cal = cg.Calibration.fit(src["logits"], src["labels"], alphas=ALPHAS, device="cpu")
    rep = cal.report({"test": cal.tally(t["logits"], t["labels"], name="test")}, exclude=["te*"])
    assert rep["mae"]["ts"]["CPC"] is None
    with pytest.raises(cg.InvalidInput, match="exclude"):
        cg.evaluate(data["source"], data["targets"], device="cpu", exclude=["[unclosed"])
