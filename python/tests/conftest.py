"""Shared fixtures: seeded synthetic prediction sets, the crate's CLI binary, the GPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import conformal_gpu as cg

REPO = Path(__file__).resolve().parents[2]


def make_set(
    seed: int,
    n: int,
    k: int = 3,
    shift: float = 0.0,
    labels: bool = True,
    groups: bool = True,
) -> dict[str, np.ndarray]:
    """A seeded prediction set: logits [n, k] float32 that favour the label, shifted
    targets less confident; labels int64; hospital/slide int64 group ids."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    logits = rng.normal(0.0, 1.0 + shift, size=(n, k)).astype(np.float32)
    logits[np.arange(n), y] += np.float32(2.0 - shift)
    out: dict[str, np.ndarray] = {"logits": logits}
    if labels:
        out["labels"] = y.astype(np.int64)
    if groups:
        out["hospital"] = rng.integers(0, 3, size=n).astype(np.int64)
        out["slide"] = (out["hospital"] * 10 + rng.integers(0, 4, size=n)).astype(np.int64)
    return out


def cli_path() -> Path | None:
    env = os.environ.get("CONFORMAL_GPU_CLI")
    if env:
        return Path(env)
    p = REPO / "target" / "release" / "conformal-gpu"
    if p.exists():
        return p
    found = shutil.which("conformal-gpu")
    return Path(found) if found else None


@pytest.fixture(scope="session")
def cli():
    """Runs the crate's command line; returns its parsed JSON output when asked."""
    path = cli_path()
    if path is None:
        pytest.fail("the conformal-gpu binary is not built (cargo build --release)")

    def run(*args: str, json_out: Path | None = None, check: bool = True):
        proc = subprocess.run(
            [str(path), *args], capture_output=True, text=True, env=os.environ.copy()
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"conformal-gpu {' '.join(args)}: {proc.stderr}")
        if json_out is not None:
            return json.loads(json_out.read_text())
        return proc

    return run


@pytest.fixture(scope="session")
def gpu() -> str:
    """'gpu' when an adapter (lavapipe included) opens; skipped otherwise, failed when
    CONFORMAL_GPU_REQUIRED=1."""
    try:
        cg.device_name("gpu")
    except cg.GpuError as e:
        if os.environ.get("CONFORMAL_GPU_REQUIRED") == "1":
            pytest.fail(f"CONFORMAL_GPU_REQUIRED=1 but no GPU adapter: {e}")
        pytest.skip(f"no GPU adapter: {e}")
    return "gpu"


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs for a test module. Blocks keep the order of the rows
    they were made from: row numbers in errors are the arrays', and the COT rounds sample
    the rows a single process samples (values never depend on it; passes may)."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             ignore_reinit_error=True)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    yield
    ray.shutdown()


def as_dataset(arrays: dict[str, np.ndarray], blocks: int):
    """A materialised Ray dataset of `arrays`' rows in `blocks` blocks, in row order."""
    import ray

    n = len(arrays["logits"])

    def rows(batch):
        idx = batch["id"]
        return {k: v[idx] for k, v in arrays.items()}

    ds = ray.data.range(n, override_num_blocks=blocks).map_batches(rows, batch_format="numpy")
    return ds.materialize()


def save(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)
    return path


def comparable(report: dict) -> dict:
    """The parts of a report that must be identical across the CLI and Python (not
    timings, meta or the device's adapter string); with a bootstrap, the MAE intervals
    and the bootstrap settings too (the targets carry their own intervals)."""
    out = {k: report[k] for k in ("alphas", "source", "targets", "mae")}
    if "mae_ci" in report:
        out["mae_ci"] = report["mae_ci"]
    if "bootstrap" in report.get("meta", {}):
        out["bootstrap"] = report["meta"]["bootstrap"]
    return out


CI_KEYS = ("ci", "true_accuracy_ci", "error_ci", "mae_ci")


def intervals(obj, path: str = "", inside: bool = False):
    """Every (key path, [lo, hi]) interval in a report, wherever a CI key holds it."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from intervals(v, f"{path}/{k}", inside or k in CI_KEYS)
    elif isinstance(obj, list):
        if inside and len(obj) == 2 and all(isinstance(x, float) for x in obj):
            yield path, obj
        else:
            for i, v in enumerate(obj):
                yield from intervals(v, f"{path}/{i}", inside)


def has_ci_keys(obj) -> bool:
    """Whether any CI key occurs anywhere in a report."""
    if isinstance(obj, dict):
        return any(k in CI_KEYS for k in obj) or any(has_ci_keys(v) for v in obj.values())
    if isinstance(obj, list):
        return any(has_ci_keys(v) for v in obj)
    return False


def without_ci(obj):
    """A report with every CI key removed."""
    if isinstance(obj, dict):
        return {k: without_ci(v) for k, v in obj.items() if k not in CI_KEYS}
    if isinstance(obj, list):
        return [without_ci(v) for v in obj]
    return obj
