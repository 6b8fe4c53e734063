"""conformal_gpu: a classifier's accuracy under distribution shift, estimated from its
logits on a labelled source set and on unlabelled targets (CPC, AC, DoC, ATC-MC, ATC-NE,
raw and temperature-scaled), on the GPU (WGSL through wgpu) or the CPU.

The numbers are the Rust crate's, bit for bit: a report here equals the JSON report of
``conformal-gpu evaluate`` / ``merge`` on the same arrays.

Calibrate once, tally anywhere, merge exactly::

    import conformal_gpu as cg
    cal = cg.Calibration.fit(src_logits, src_labels, alphas=(0.1, 0.05))
    t = cal.tally(tgt_logits[:500_000], row_offset=0)
    t += cal.tally(tgt_logits[500_000:], row_offset=500_000)
    report = cal.report({"test": t})

Bootstrap confidence intervals (the CLI's ``--bootstrap B --confidence C --seed N``):
``Calibration.fit(..., bootstrap=200, confidence=0.95, seed=1)`` or the same keywords of
``evaluate``; reports then carry ``ci``, ``true_accuracy_ci``, ``error_ci`` and
``mae_ci``, and ``cal.report(..., confidence=0.9)`` overrides the level.

The paper's protocol over many datasets x models x runs: :func:`sweep` (the crate's
``conformal-gpu sweep``, results as a pandas DataFrame; needs the ``sweep`` extra) and
:func:`read_sweep`.

Exceptions: :class:`InvalidInput` (a ``ValueError``: bad arguments or data, the command
line's exit codes 2 and 5), :class:`MalformedFile` (an ``InvalidInput``: a damaged .npz,
calibration or tally, exit code 4), :class:`GpuError` (a ``RuntimeError``: exit code 6),
and ``OSError`` (``FileNotFoundError``, ``PermissionError``) for I/O (exit code 3). Each
carries the crate's message and an ``exit_code`` attribute.
"""

from ._native import (
    Calibration,
    CotCensus,
    CotPasses,
    CotPassPart,
    CotPassPlan,
    GpuError,
    InvalidInput,
    MalformedFile,
    Tally,
    __version__,
    conformal_quantile,
    cot_from_probabilities,
    device_name,
    evaluate,
    fit_temperature,
    pvalues,
    softmax,
)
from .sweep import read_sweep, sweep


def _calibration_from_json(text: str, device: str = "auto") -> Calibration:
    """Unpickles a calibration (its versioned JSON, checked against its id)."""
    cal = Calibration._from_pickle(text, device)
    return cal


def _tally_from_json(text: str) -> Tally:
    """Unpickles a tally (its versioned JSON, every count checked)."""
    return Tally.from_json(text, "<pickled tally>")


def _cot_census_from_json(text: str) -> CotCensus:
    """Unpickles a COT census."""
    return CotCensus.from_json(text)


def _cot_pass_plan_from_json(text: str) -> CotPassPlan:
    """Unpickles a COT pass plan (its shapes checked)."""
    return CotPassPlan.from_json(text)


def _cot_pass_part_from_json(text: str) -> CotPassPart:
    """Unpickles a COT pass part (checked when merged and advanced)."""
    return CotPassPart.from_json(text)


__all__ = [
    "Calibration",
    "CotCensus",
    "CotPassPart",
    "CotPassPlan",
    "CotPasses",
    "GpuError",
    "InvalidInput",
    "MalformedFile",
    "Tally",
    "__version__",
    "conformal_quantile",
    "cot_from_probabilities",
    "device_name",
    "evaluate",
    "fit_temperature",
    "pvalues",
    "read_sweep",
    "softmax",
    "sweep",
]
