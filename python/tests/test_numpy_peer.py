"""The numpy peer of the end-to-end benchmark (benches/peers/numpy_evaluate.py) does the
crate's work when asked (`--full`): its COT, COTT (K = 2, per target and per group) and
score estimators agree with the crate's report, so a ratio measured against it compares
equal work. The peer is independent code (numpy's f32 exp, its own tie handling), so it
agrees within DESIGN's tolerances, not bit for bit."""

from __future__ import annotations

import importlib.util

import numpy as np
from conftest import REPO, make_set, save


def load_peer():
    path = REPO / "benches" / "peers" / "numpy_evaluate.py"
    spec = importlib.util.spec_from_file_location("numpy_evaluate", path)
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    return peer


def test_full_peer_does_the_crates_work(tmp_path, cli):
    save(tmp_path / "id_val.npz", make_set(21, 3000, 2))
    save(tmp_path / "shifted.npz", make_set(22, 5000, 2, shift=0.6))
    # Coarse logits: many rows share a gain, so the order statistic sits among ties.
    coarse = make_set(23, 4000, 2, shift=0.3, labels=False)
    coarse["logits"] = np.round(coarse["logits"] * 2.0).astype(np.float32) / np.float32(2.0)
    coarse["labels"] = np.full(4000, -1, np.int64)
    save(tmp_path / "unlabelled.npz", coarse)
    out = tmp_path / "crate.json"
    crate = cli("evaluate", "--data", str(tmp_path), "--device", "cpu", "--json", str(out),
                json_out=out)
    peer = load_peer().evaluate(str(tmp_path), "id_val", [0.1], full=True)
    plain = load_peer().evaluate(str(tmp_path), "id_val", [0.1])
    assert "COT" not in plain["targets"][0]["estimates"]["raw"]
    checked = 0
    for a, b in zip(crate["targets"], peer["targets"], strict=True):
        assert a["name"] == b["name"]
        n = a["n"]
        for mode in ("raw", "ts"):
            ea, eb = a["estimates"][mode], b["estimates"][mode]
            assert abs(ea["COT"] - eb["COT"]) <= 1e-7, (a["name"], mode, ea, eb)
            assert abs(ea["COTT"] - eb["COTT"]) <= 2.0 / n, (a["name"], mode, ea, eb)
            # Relative 1e-6: the peer's f32 probabilities come from numpy's exp, an ulp
            # away from the crate's on some rows (test_shift_scores holds the crate to
            # 1e-9 on its own probabilities).
            for score in ("nuclear_norm", "mano"):
                sa, sb = a["scores"][mode][score], b["scores"][mode][score]
                assert abs(sa - sb) <= 1e-6 * abs(sa), (a["name"], mode, score, sa, sb)
            checked += 1
        for g, rows in a["groups"].items():
            by_id = {r["id"]: r for r in b["groups"][g]}
            assert sorted(by_id) == [r["id"] for r in rows]
            for r in rows:
                for mode in ("raw", "ts"):
                    ea, eb = r["estimates"][mode], by_id[r["id"]]["estimates"][mode]
                    assert abs(ea["COT"] - eb["COT"]) <= 1e-7, (g, r["id"], mode)
                    assert abs(ea["COTT"] - eb["COTT"]) <= 2.0 / r["n"], (g, r["id"], mode)
                    checked += 1
    assert checked > 20
