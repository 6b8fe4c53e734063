"""COT's reference mode (DESIGN 2.16, `--cot-reference`): COT-ref and COTT-ref equal a
replay of the authors' code (luyuzhe111/COT, run_estimation.py and utils.compute_cott)
written here with numpy, Python's `random` and POT's exact EMD: the same seed(10)
batches (rows drawn with replacement above 10,000 rows, then the sampled label
multiset), the same float32 L1 costs, their threshold rule. CPU and lavapipe; through
calibrate/tally/merge; the CLI flag; bad options are typed errors."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import ot  # POT: the EMD the authors call, installed in the test venv by scripts/test.sh
import pytest
from conftest import make_set, save

import conformal_gpu as cg


def l1_cost(labels: np.ndarray, p: np.ndarray, k: int) -> np.ndarray:
    """Their float32 `torch.cdist(one_hot(labels), p, p=1)` for each class (b x K), summed
    in class order (torch's order for K < 8)."""
    out = np.zeros((p.shape[0], k), dtype=np.float32)
    for c in range(k):
        s = np.zeros(p.shape[0], dtype=np.float32)
        for j in range(k):
            s = s + ((np.float32(1.0) - p[:, j]) if j == c else p[:, j])
        out[:, c] = s
    return out


def plan_costs(p: np.ndarray, counts: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    """The batch EMD of rows p (mass 1/b) against labels in `counts` (their b x b problem
    in its K-column form), and each row's L1 cost under the plan."""
    b = p.shape[0]
    m = l1_cost(np.arange(k), p, k)  # row i, class c
    g = ot.emd(np.full(b, 1.0 / b), counts / b, m.astype(np.float64), numItermax=100_000_000)
    cls = g.argmax(axis=1)
    assert np.allclose(g.max(axis=1), 1.0 / b)  # every row goes to one class
    return float((g * m).sum()), m[np.arange(b), cls]


def sample_labels(shares: list[float], size: int, k: int) -> np.ndarray:
    """Their `sample_label_dist`."""
    labels = sum([[i] * int(shares[i] * size) for i in range(k)], [])
    labels += random.choices(list(range(k)), weights=shares, k=size - len(labels))
    return np.bincount(np.array(labels, dtype=np.int64), minlength=k)


def scale(n: int) -> np.float32:
    """float32 (1/n) * n: their plan entry times M.shape[0]."""
    return np.float32(np.float32(1.0 / n) * np.float32(n))


def source_threshold(ps: np.ndarray, labels: np.ndarray, logits: np.ndarray, k: int):
    counts = np.bincount(labels, minlength=k)
    _, l1 = plan_costs(ps, counts, k)
    costs = np.sort(-(scale(len(labels)) * l1).astype(np.float32))
    e = int((logits.argmax(axis=1) != labels).sum())
    return costs[e - 1]  # Python's -1 when e == 0


def replay(p: np.ndarray, shares: list[float], k: int, t_cott) -> tuple[float, float]:
    """run_estimation.py's COT and COTT (as accuracies), seed(10) for both."""
    n = p.shape[0]
    b = min(10000, n)
    n_batch = math.ceil(n / b)
    random.seed(10)
    cot, cott = 0.0, 0.0
    for _ in range(n_batch):
        rows = p[random.choices(list(range(n)), k=b)] if n_batch > 1 else p
        counts = sample_labels(shares, b, k)
        emd, l1 = plan_costs(rows, counts, k)
        cot += float(np.float32(emd)) / 2
        if t_cott is not None:
            cott += int((-(scale(b) * l1).astype(np.float32) < t_cott).sum()) / b
    return 1.0 - cot / n_batch, (1.0 - cott / n_batch) if t_cott is not None else None


def check(k: int, n_source: int, n_target: int, device: str, prior: str = "source") -> None:
    source = make_set(70 + k, n_source, k)
    target = make_set(80 + k, n_target, k, shift=0.7)
    report = cg.evaluate(source, {"target": target}, device=device, cot_reference=prior)
    temp = report["source"]["temperature"]
    ps = cg.softmax(source["logits"], t=temp, device="cpu")
    p = cg.softmax(target["logits"], t=temp, device="cpu")
    counts = np.bincount(source["labels"], minlength=k)
    shares = [c / n_source for c in counts] if prior == "source" else [1 / k] * k
    t = source_threshold(ps, source["labels"], source["logits"], k)
    want_cot, want_cott = replay(p, shares, k, t)
    est = report["targets"][0]["estimates"]
    assert abs(est["ts"]["COT-ref"] - want_cot) <= 1e-7, (est["ts"]["COT-ref"], want_cot)
    assert abs(est["ts"]["COTT-ref"] - want_cott) <= 1e-12, (est["ts"]["COTT-ref"], want_cott)
    # ts only, out of the MAE and the intervals; the exact COT is still there.
    assert "COT-ref" not in est["raw"] and "COT-ref" not in report["mae"]["ts"]
    assert est["ts"]["COT"] is not None


@pytest.mark.parametrize(("k", "n_source", "n_target"), [(2, 800, 1500), (3, 600, 900),
                                                         (10, 500, 700)])
def test_single_batch_equals_the_replay(k, n_source, n_target):
    """N <= 10,000: one batch of every row in order, the label multiset sampled."""
    check(k, n_source, n_target, "cpu")


def test_uniform_prior():
    check(4, 500, 800, "cpu", prior="uniform")


def test_batched_target_equals_the_replay():
    """N > 10,000: ceil(N / 10000) batches of 10,000 rows drawn with replacement."""
    check(2, 900, 25_001, "cpu")


def test_on_the_gpu(gpu):
    check(3, 500, 800, gpu)


def test_k_column_form_equals_their_square_emd():
    """The replay solves each batch as rows against K label columns; their code solves
    the b x b problem against one-hot rows. Same EMD (checked here once)."""
    k, b = 3, 300
    p = cg.softmax(make_set(5, b, k)["logits"], t=1.0, device="cpu")
    random.seed(3)
    counts = sample_labels([0.2, 0.3, 0.5], b, k)
    labels = np.repeat(np.arange(k), counts)
    m = l1_cost(np.arange(k), p, k)[:, labels].T  # [label row, target row]
    assert m.shape == (b, b)
    emd_square = ot.emd2([], [], m.astype(np.float64), numItermax=100_000_000)
    emd_cols, _ = plan_costs(p, counts, k)
    assert abs(emd_square - emd_cols) <= 1e-12


def test_large_source_needs_the_subsample(tmp_path):
    """A source of more than 10,000 rows: COTT-ref is null without their randperm rows and
    follows the rows given; a bad index list is a typed error."""
    k = 2
    source = make_set(91, 10_050, k)
    target = make_set(92, 600, k, shift=0.5)
    report = cg.evaluate(source, {"target": target}, device="cpu", cot_reference=True)
    est = report["targets"][0]["estimates"]["ts"]
    assert est["COTT-ref"] is None and est["COT-ref"] is not None
    rows = np.random.default_rng(0).permutation(10_050)[:10_000]
    report = cg.evaluate(source, {"target": target}, device="cpu", cot_reference=True,
                         cott_reference_subsample=rows.tolist())
    temp = report["source"]["temperature"]
    ps = cg.softmax(source["logits"][rows], t=temp, device="cpu")
    t = source_threshold(ps, source["labels"][rows], source["logits"][rows], k)
    p = cg.softmax(target["logits"], t=temp, device="cpu")
    counts = np.bincount(source["labels"], minlength=k)
    _, want = replay(p, [c / 10_050 for c in counts], k, t)
    assert report["targets"][0]["estimates"]["ts"]["COTT-ref"] == pytest.approx(want, abs=1e-12)
    with pytest.raises(cg.InvalidInput, match="repeated"):
        cg.evaluate(source, {"target": target}, device="cpu", cot_reference=True,
                    cott_reference_subsample=[0] * 10_000)
    with pytest.raises(cg.InvalidInput, match="cot_reference"):
        cg.evaluate(source, {"target": target}, device="cpu", cot_reference="flat")
    with pytest.raises(cg.InvalidInput, match="cot_reference is off"):
        cg.evaluate(source, {"target": target}, device="cpu", cott_reference_subsample=[1])


def test_cli_flag_and_shards(cli, tmp_path):
    """`evaluate --cot-reference` gives Python's values; the calibration file carries the
    mode (checked on read), and merged tallies of cut rows report the same COT-ref."""
    source, target = make_set(93, 700, 3), make_set(94, 1200, 3, shift=0.6)
    save(tmp_path / "id_val.npz", source)
    save(tmp_path / "test.npz", target)
    out = tmp_path / "e.json"
    want = cli("evaluate", "--data", str(tmp_path), "--device", "cpu", "--cot-reference",
               "--cot-prior", "uniform", "--json", str(out), json_out=out)
    py = cg.evaluate(source, {"test": target}, device="cpu", cot_reference="uniform")
    for key in ("COT-ref", "COTT-ref"):
        assert want["targets"][0]["estimates"]["ts"][key] == \
            py["targets"][0]["estimates"]["ts"][key] is not None
    cal = tmp_path / "cal.json"
    cli("calibrate", "--data", str(tmp_path), "--device", "cpu", "--cot-reference",
        "--cot-prior", "uniform", "--out", str(cal))
    assert json.loads(cal.read_text())["cot_reference"]["prior"] == "uniform"
    parts = []
    for i, (a, b) in enumerate(((700, 1200), (0, 700))):
        t = tmp_path / f"t{i}.json"
        cli("tally", "--calibration", str(cal), "--data", str(tmp_path / "test.npz"),
            "--rows", f"{a}:{b}", "--device", "cpu", "--out", str(t))
        parts.append(str(t))
    merged_out = tmp_path / "m.json"
    merged = cli("merge", "--calibration", str(cal), *parts, "--json", str(merged_out),
                 json_out=merged_out)
    for key in ("COT-ref", "COTT-ref"):
        assert merged["targets"][0]["estimates"]["ts"][key] == \
            want["targets"][0]["estimates"]["ts"][key]
    # A damaged reference part of the calibration is refused on read.
    doc = json.loads(cal.read_text())
    doc["cot_reference"]["cott_threshold"] = 0.5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    proc = cli("tally", "--calibration", str(bad), "--data", str(tmp_path / "test.npz"),
               "--device", "cpu", "--out", str(tmp_path / "x.json"), check=False)
    assert proc.returncode != 0 and "COTT threshold" in proc.stderr
    assert not (tmp_path / "x.json").exists()
    # Without the flag, no reference keys (reports as before).
    plain = cg.evaluate(source, {"test": target}, device="cpu")
    assert "COT-ref" not in plain["targets"][0]["estimates"]["ts"]


def test_cli_subsample_file(cli, tmp_path):
    """`--cott-reference-subsample FILE.npy` (int32 or int64 row indices) gives Python's
    `cott_reference_subsample` values; a float file or a flag without the mode is refused
    before anything is written."""
    source, target = make_set(95, 10_020, 2), make_set(96, 500, 2, shift=0.4)
    save(tmp_path / "id_val.npz", source)
    save(tmp_path / "test.npz", target)
    rows = np.random.default_rng(1).permutation(10_020)[:10_000]
    np.save(tmp_path / "rows.npy", rows.astype(np.int32))
    out = tmp_path / "e.json"
    got = cli("evaluate", "--data", str(tmp_path), "--device", "cpu", "--cot-reference",
              "--cott-reference-subsample", str(tmp_path / "rows.npy"), "--json", str(out),
              json_out=out)
    py = cg.evaluate(source, {"test": target}, device="cpu", cot_reference=True,
                     cott_reference_subsample=rows.tolist())
    ts = got["targets"][0]["estimates"]["ts"]
    assert ts["COTT-ref"] is not None
    assert ts["COTT-ref"] == py["targets"][0]["estimates"]["ts"]["COTT-ref"]
    np.save(tmp_path / "bad.npy", rows.astype(np.float64))
    proc = cli("evaluate", "--data", str(tmp_path), "--device", "cpu", "--cot-reference",
               "--cott-reference-subsample", str(tmp_path / "bad.npy"), "--out",
               str(tmp_path / "never"), check=False)
    assert proc.returncode != 0 and "bad.npy" in proc.stderr
    assert not (tmp_path / "never").exists()
    proc = cli("evaluate", "--data", str(tmp_path), "--device", "cpu",
               "--cott-reference-subsample", str(tmp_path / "rows.npy"), check=False)
    assert proc.returncode == 2 and "cot-reference" in proc.stderr
