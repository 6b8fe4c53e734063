"""cg.evaluate on 1M target rows vs the Rust library call, interleaved rounds.

    cargo build --release --example evaluate_timed   # or: cargo test --release
    python python/benches/bench_evaluate.py [--rounds 15] [--rows 1000000]   # from the repo root

Writes the seeded source (100k rows) and target (1M rows, K = 2, hospital and slide ids)
as .npz into a temporary directory; the Rust side (examples/evaluate_timed.rs) loads them
once and times `evaluate(&CpuBackend, ...)`; the Python side holds the same arrays in
memory and times `cg.evaluate(source_dict, {"target": target_dict}, device="cpu")`.
Rounds alternate (Rust then Python, then Python then Rust, ...); both are warm (one
untimed call each). Prints every time, the medians, the minima and the median of the
per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import conformal_gpu as cg

REPO = Path(__file__).resolve().parents[2]


def make(seed: int, n: int, shift: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    x = rng.normal(0.0, 1.0 + shift, size=(n, 2)).astype(np.float32)
    x[np.arange(n), y] += np.float32(2.0 - shift)
    hospital = rng.integers(0, 5, size=n)
    return {
        "logits": x,
        "labels": y.astype(np.int64),
        "hospital": hospital.astype(np.int64),
        "slide": (hospital * 10 + rng.integers(0, 10, size=n)).astype(np.int64),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--source-rows", type=int, default=100_000)
    ap.add_argument("--bin", default=str(REPO / "target/release/examples/evaluate_timed"))
    a = ap.parse_args()
    source = make(1, a.source_rows, 0.0)
    del source["hospital"], source["slide"]
    target = make(2, a.rows, 0.7)
    with tempfile.TemporaryDirectory() as d:
        np.savez(Path(d) / "source.npz", **source)
        np.savez(Path(d) / "target.npz", **target)
        rust = subprocess.Popen(
            [a.bin, str(Path(d) / "source.npz"), str(Path(d) / "target.npz")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert rust.stdin is not None and rust.stdout is not None
        print(rust.stdout.readline().strip(), file=sys.stderr)

        def rust_once() -> tuple[float, float]:
            rust.stdin.write("run\n")
            rust.stdin.flush()
            ms, cpc = rust.stdout.readline().split()
            return float(ms), float(cpc)

        def py_once() -> tuple[float, float]:
            t0 = time.perf_counter()
            r = cg.evaluate(source, {"target": target}, alphas=(0.1, 0.05), device="cpu")
            ms = (time.perf_counter() - t0) * 1e3
            return ms, r["targets"][0]["estimates"]["ts"]["CPC"]

        r0, p0 = rust_once(), py_once()  # warm-up, untimed
        assert r0[1] == p0[1], (r0, p0)  # the same estimate, bit for bit
        rs, ps = [], []
        for i in range(a.rounds):
            # The order flips every round, so neither side always runs first.
            if i % 2 == 0:
                rs.append(rust_once()[0])
                ps.append(py_once()[0])
            else:
                ps.append(py_once()[0])
                rs.append(rust_once()[0])
        rust.stdin.close()
        rust.wait()
    med_r, med_p = statistics.median(rs), statistics.median(ps)
    paired = statistics.median(p / r for p, r in zip(ps, rs))
    print(f"rust   ms: {' '.join(f'{v:.1f}' for v in rs)}")
    print(f"python ms: {' '.join(f'{v:.1f}' for v in ps)}")
    print(f"median rust {med_r:.1f} ms, python {med_p:.1f} ms, python/rust {med_p / med_r:.4f}; "
          f"min {min(rs):.1f} / {min(ps):.1f} ms = {min(ps) / min(rs):.4f}; "
          f"median of paired ratios {paired:.4f}")


if __name__ == "__main__":
    main()
