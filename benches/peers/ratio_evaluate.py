#!/usr/bin/env python3
"""End-to-end ratio, crate vs numpy peer, on the same data and machine, runs interleaved.

    python3 benches/peers/ratio_evaluate.py --data DIR [--bin target/release/conformal-gpu]
        [--device cpu] [--alpha 0.1,0.05] [--runs 11] [--full]

Each round runs `conformal-gpu evaluate --json` once and `numpy_evaluate.py` once (in
alternating order, so drift in the machine's load hits both alike) and reads each side's
own `timings_ms` (time inside the process: loading the files through the last estimate;
interpreter and process start-up are outside on both sides). The crate's `load` also
hashes every input (SHA-256 for the report's `meta`), which the numpy peer does not time.
With --full the numpy peer also computes COT, COTT and the score estimators (its `--full`),
the work the crate's default report does beyond the five methods: the same work on both sides.
Prints every round, then per phase the median and the [min, max] of each side, and the
ratio of the median totals (numpy / crate: above 1 means the crate is faster).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def crate_run(args, out):
    cmd = [args.bin, "evaluate", "--data", args.data, "--device", args.device,
           "--alpha", args.alpha, "--json", out]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(out) as f:
        return json.load(f)["timings_ms"]


def numpy_run(args, out):
    cmd = [sys.executable, os.path.join(HERE, "numpy_evaluate.py"), "--data", args.data,
           "--alpha", args.alpha, "--timings", out] + (["--full"] if args.full else [])
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
        return json.load(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--bin", default="target/release/conformal-gpu")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--alpha", default="0.1,0.05")
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--full", action="store_true",
                    help="the numpy peer also computes COT, COTT and the scores (same work)")
    args = ap.parse_args()
    rounds = {"crate": [], "numpy": []}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "t.json")
        for r in range(args.runs):
            order = ("crate", "numpy") if r % 2 == 0 else ("numpy", "crate")
            for side in order:
                t = crate_run(args, out) if side == "crate" else numpy_run(args, out)
                rounds[side].append(t)
            print(f"round {r + 1}: crate {rounds['crate'][-1]['total']:7.1f} ms, "
                  f"numpy {rounds['numpy'][-1]['total']:7.1f} ms", flush=True)
    phases = ("load", "temperature", "sort", "estimate", "total")
    print(f"{'phase':<12} {'crate median [min, max] ms':>32} {'numpy median [min, max] ms':>32}")
    for p in phases:
        cells = []
        for side in ("crate", "numpy"):
            v = sorted(t[p] for t in rounds[side])
            cells.append(f"{statistics.median(v):8.1f} [{v[0]:7.1f}, {v[-1]:7.1f}]")
        print(f"{p:<12} {cells[0]:>32} {cells[1]:>32}")
    mc = statistics.median(t["total"] for t in rounds["crate"])
    mn = statistics.median(t["total"] for t in rounds["numpy"])
    print(f"ratio numpy/crate (median totals, {args.runs} rounds): {mn / mc:.2f}x")


if __name__ == "__main__":
    main()
