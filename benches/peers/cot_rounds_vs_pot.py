#!/usr/bin/env python3
"""COT of a target file without holding its rows (`conformal-gpu cot`: K = 2 the
mergeable passes, K > 2 the dual's rounds) against POT's network simplex (ot.emd2) on the
same float32 probabilities, interleaved rounds.

    .venv/bin/python benches/peers/cot_rounds_vs_pot.py [--rounds 3] [--bin target/release/conformal-gpu]

Seeded data written to a temporary directory: a labelled source (20,000 rows, skewed
label shares, one class absent for K > 2) and a target of N rows, logits N(0, 1) plus 2
on the label, hospital ids 0..3. `cot` computes raw and ts for the target and its
groups from the file (a process of its own, timed end to end); POT solves the raw
target alone in memory on the crate's CPU softmax at T = 1 (its time excludes that
softmax). Prints per case the median seconds, their ratio (POT / cot: above 1 means the
crate is faster although it does more), |COT_cot - COT_POT| (raw) and `cot`'s passes and
held rows. POT solves the N x K problem; cases past POT_MAX_CELLS are `cot` only.
"""

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import conformal_gpu as cg
import numpy as np
import ot

CASES = [(10, 100_000), (100, 10_000), (10, 2_000_000), (100, 500_000)]
POT_MAX_CELLS = 1_000_000  # N x K cells POT is run on


def make(rng, n, k, shares):
    y = rng.choice(k, size=n, p=shares)
    z = rng.normal(0.0, 1.0, size=(n, k)).astype(np.float32)
    z[np.arange(n), y] += np.float32(2.0)
    return {
        "logits": z,
        "labels": y.astype(np.int64),
        "hospital": rng.integers(0, 4, n).astype(np.int64),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bin", default="target/release/conformal-gpu")
    args = ap.parse_args()
    for k, n in CASES:
        rng = np.random.default_rng(k * 11 + n)
        shares = rng.dirichlet(np.full(k, 2.0))
        shares[-1] = 0.0
        shares /= shares.sum()
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            source = make(rng, 20_000, k, shares)
            target = make(rng, n, k, np.full(k, 1.0 / k))
            np.savez(
                d / "id_val.npz",
                **{key: v for key, v in source.items() if key != "hospital"},
            )
            np.savez(d / "test.npz", **target)
            cal = d / "cal.json"
            subprocess.run(
                [
                    args.bin,
                    "calibrate",
                    "--data",
                    str(d),
                    "--device",
                    "cpu",
                    "--out",
                    str(cal),
                ],
                check=True,
                capture_output=True,
            )
            counts = np.bincount(source["labels"], minlength=k)
            p = cg.softmax(target["logits"], t=1.0, device="cpu").astype(np.float64)
            run_pot = n * k <= POT_MAX_CELLS
            times = {"cot": [], "pot": []}
            out = d / "cot.json"
            for _ in range(args.rounds):
                t = time.perf_counter()
                subprocess.run(
                    [
                        args.bin,
                        "cot",
                        "--calibration",
                        str(cal),
                        str(d / "test.npz"),
                        "--device",
                        "cpu",
                        "--json",
                        str(out),
                    ],
                    check=True,
                    capture_output=True,
                )
                times["cot"].append(time.perf_counter() - t)
                got = json.loads(out.read_text())
                if run_pot:
                    t = time.perf_counter()
                    want = 1.0 - float(
                        ot.emd2(
                            np.full(n, 1.0 / n),
                            counts / counts.sum(),
                            1.0 - p,
                            numItermax=100_000_000,
                        )
                    )
                    times["pot"].append(time.perf_counter() - t)
            line = (
                f"K = {k}, N = {n:,}: cot {statistics.median(times['cot']):.3f} s "
                f"(rounds {', '.join(f'{x:.3f}' for x in times['cot'])}; passes {got['passes']}, "
                f"held rows {got['held_rows']})"
            )
            if run_pot:
                pot = statistics.median(times["pot"])
                line += (
                    f", POT {pot:.3f} s (rounds {', '.join(f'{x:.3f}' for x in times['pot'])}), "
                    f"POT / cot {pot / statistics.median(times['cot']):.2f}x, "
                    f"|COT cot - COT POT| raw {abs(got['cot']['raw'] - want):.1e}"
                )
            else:
                line += ", POT not run (past its cells budget)"
            print(line, flush=True)


if __name__ == "__main__":
    main()
