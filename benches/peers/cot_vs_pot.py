#!/usr/bin/env python3
"""COT, exact: the crate (conformal_gpu.cot_from_probabilities) against POT's network
simplex (ot.emd2) on the same float32 probabilities, same process, interleaved rounds.

    .venv/bin/python benches/peers/cot_vs_pot.py [--rounds 3] [--device cpu|gpu|auto]

Seeded data: logits N(0, 2) per class, softmax by the crate (CPU path); source label
counts uniform in 1..99 per class. Prints per case the median seconds of each side, their
ratio (POT / crate: above 1 means the crate is faster) and |COT_crate - COT_POT|. POT
solves the N x K problem; cases past its memory or time budget are crate only.
"""

import argparse
import statistics
import time

import conformal_gpu as cg
import numpy as np
import ot

CASES = [(2, 10_000), (2, 500_000), (2, 1_000_000), (10, 10_000), (10, 100_000), (100, 10_000), (10, 1_000_000)]
POT_MAX_CELLS = 1_000_000  # N x K cells POT is run on


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    # The crate's device: K = 2 runs the passes of kernel::cot_two_class there (the GPU
    # kernel or its CPU mirror), K > 2 the host solver on every device.
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    for k, n in CASES:
        rng = np.random.default_rng(k * 7 + n)
        p = cg.softmax(rng.normal(0.0, 2.0, size=(n, k)).astype(np.float32), device="cpu")
        counts = rng.integers(1, 100, size=k)
        run_pot = n * k <= POT_MAX_CELLS
        times = {"crate": [], "pot": []}
        for _ in range(args.rounds):
            t = time.perf_counter()
            got = cg.cot_from_probabilities(p, counts.tolist(), device=args.device)
            times["crate"].append(time.perf_counter() - t)
            if run_pot:
                t = time.perf_counter()
                want = 1.0 - ot.emd2(
                    np.full(n, 1.0 / n), counts / counts.sum(), 1.0 - p.astype(np.float64),
                    numItermax=100_000_000,
                )
                times["pot"].append(time.perf_counter() - t)
        crate = statistics.median(times["crate"])
        line = f"K={k:4d} N={n:8d}: crate {crate:8.3f} s"
        if run_pot:
            pot = statistics.median(times["pot"])
            line += f", POT {pot:8.3f} s, ratio {pot / crate:6.2f}x, |diff| {abs(got - want):.1e}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
