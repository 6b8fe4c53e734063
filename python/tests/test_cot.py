"""COT (DESIGN 2.11) against an exact LP solver: POT's network simplex (ot.emd2) on the
same float32 probabilities, to 1e-7, at K = 2, 10 and 100, with tied rows (probabilities
quantised, rows repeated) and shares that split a row."""

from __future__ import annotations

import numpy as np
import ot  # POT: the exact LP reference, installed in the test venv by scripts/test.sh
import pytest

import conformal_gpu as cg


def probabilities(seed: int, n: int, k: int, ties: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, size=(n, k)).astype(np.float32)
    if ties:
        # Quantised logits (ties inside rows) and repeated rows (ties across rows).
        logits = np.round(logits * 2.0) / 2.0
        logits[n // 2 :] = logits[: n - n // 2]
    return cg.softmax(logits, device="cpu")


def lp_cot(p: np.ndarray, counts: np.ndarray) -> float:
    n = p.shape[0]
    a = np.full(n, 1.0 / n)
    b = counts / counts.sum()
    cost = 1.0 - p.astype(np.float64)
    return 1.0 - float(ot.emd2(a, b, cost, numItermax=10_000_000))


@pytest.mark.parametrize(
    ("k", "n"), [(2, 1), (2, 7), (2, 2000), (10, 1), (10, 600), (100, 150)]
)
@pytest.mark.parametrize("ties", [False, True])
def test_cot_equals_exact_lp(k, n, ties):
    p = probabilities(k * 1000 + n, n, k, ties)
    rng = np.random.default_rng(n + k)
    # Source label counts with an empty class and shares that do not divide N.
    counts = rng.integers(0, 40, size=k)
    counts[0] = 0
    counts[-1] += 3
    got = cg.cot_from_probabilities(p, counts.tolist())
    want = lp_cot(p, counts)
    assert abs(got - want) <= 1e-7, (got, want)


@pytest.mark.parametrize("n", [1, 257, 4097, 20_000])
def test_cot_two_classes_on_the_device(gpu, n):
    """K = 2 by the device's passes (shaders/cot_two_class.wgsl): the CPU's bits (the
    kernel's CPU mirror, which tests/cot_two_class.rs holds to the host solver bit for
    bit), and the LP's value to 1e-7, with tied rows and a share that splits a row."""
    p = probabilities(n, n, 2, ties=True)
    counts = [17, 29]
    host = cg.cot_from_probabilities(p, counts, device="cpu")
    device = cg.cot_from_probabilities(p, counts, device=gpu)
    assert device == host
    if n <= 4097:
        assert abs(device - lp_cot(p, np.array(counts))) <= 1e-7
    with pytest.raises(cg.InvalidInput):
        bad = p.copy()
        bad[n // 2, 1] = np.nan
        cg.cot_from_probabilities(bad, counts, device=gpu)


def test_cot_bad_input_is_typed():
    p = probabilities(1, 10, 3, False)
    with pytest.raises(cg.InvalidInput):
        cg.cot_from_probabilities(p, [0, 0, 0])  # no labelled source row
    with pytest.raises(cg.InvalidInput):
        cg.cot_from_probabilities(p, [1, 2])  # K differs from the source's
    with pytest.raises(cg.InvalidInput):
        cg.cot_from_probabilities(p[0], [1, 2, 3])  # not [N, K]
