"""The session-15 targets of BENCHMARKS.md (COT's rounds at K > 2), as generated:
/tmp/k10 (2M rows, K = 10), /tmp/k10b + /tmp/k10c (10M rows, K = 10, two shards and one
file), /tmp/k100 (500K rows, K = 100). Calibrations: `conformal-gpu calibrate --data DIR
--device cpu --out CAL.json` on each directory (k10c for the 10M shards)."""

import os

import numpy as np


def make(rng, k, n, shift, groups, p=None, scale=1.5, boost=2.0, choice=True):
    y = rng.choice(k, n, p=p) if choice else rng.integers(0, k, n)
    z = rng.normal(0, 1, (n, k)).astype(np.float32)
    z[np.arange(n), y] += boost + shift
    z *= scale
    h = rng.integers(0, groups, n) if groups else None
    return z.astype(np.float32), y.astype(np.int64), h


for d in ("/tmp/k10", "/tmp/k10b", "/tmp/k10c", "/tmp/k100"):
    os.makedirs(d, exist_ok=True)

rng = np.random.default_rng(0)
z, y, _ = make(rng, 10, 200_000, 0.5, 0, choice=False)
np.savez("/tmp/k10/id_val.npz", logits=z, labels=y)
z, y, h = make(rng, 10, 2_000_000, -0.5, 5, choice=False)
np.savez("/tmp/k10/test.npz", logits=z, labels=y, hospital=h)

rng = np.random.default_rng(1)
p = np.array([0.3, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.0])
z, y, _ = make(rng, 10, 300_000, 0.5, 0, p)
np.savez("/tmp/k10b/id_val.npz", logits=z, labels=y)
parts = [make(rng, 10, 5_000_000, -0.5, 4) for _ in range(2)]
for i, (z, y, h) in enumerate(parts):
    np.savez(f"/tmp/k10b/test_part{i}.npz", logits=z, labels=y, hospital=h)
os.system("ln -sf /tmp/k10b/id_val.npz /tmp/k10c/id_val.npz")
np.savez(
    "/tmp/k10c/test.npz",
    logits=np.concatenate([q[0] for q in parts]),
    labels=np.concatenate([q[1] for q in parts]),
    hospital=np.concatenate([q[2] for q in parts]),
)

rng = np.random.default_rng(2)
p = rng.dirichlet(np.ones(100) * 2)
z, y, _ = make(rng, 100, 100_000, 0.5, 0, p, scale=1.0, boost=3.0)
np.savez("/tmp/k100/id_val.npz", logits=z, labels=y)
z, y, h = make(rng, 100, 500_000, -0.5, 3, scale=1.0, boost=3.0)
np.savez("/tmp/k100/test.npz", logits=z, labels=y, hospital=h)
