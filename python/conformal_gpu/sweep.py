"""The sweep (README "The sweep"): every (dataset, model, run) cell of a layout
``ROOT/DATASET/MODEL/RUN/*.npz`` or a TOML manifest, evaluated exactly as
``conformal-gpu sweep`` does it (the same parser, cells, fingerprints and files: this
calls the crate's sweep), its tables read back as pandas DataFrames.

    import conformal_gpu as cg
    results = cg.sweep("preds/", "out/", alphas=(0.1, 0.05), bootstrap=200)
    tables = cg.read_sweep("out/")          # summary, paired, conformal, scores, ...

Numbers in the DataFrames are the CSV files' shortest round-trip decimals read back with
``float`` (so they equal the cells' JSON reports bit for bit); names stay strings (a run
``"01"`` is not the integer 1); empty fields are NaN (floats) or <NA> (integers).
Needs pandas: ``pip install 'conformal-gpu[sweep]'``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import _native

# Per table: its text columns and integer columns; every other column is a float.
_TABLES: dict[str, tuple[set[str], set[str]]] = {
    "results": (
        {"dataset", "model", "run", "mode", "target", "group_kind", "method"},
        {"group_id", "n", "n_labelled"},
    ),
    "conformal": (
        {"dataset", "model", "run", "mode", "target", "group_kind", "score",
         "class_conditional"},
        {"group_id", "n", "n_labelled"},
    ),
    "summary": ({"dataset", "model", "mae_key", "method"}, {"runs"}),
    "paired": (
        {"dataset", "mae_key", "method_a", "method_b"},
        {"cells", "wins", "losses", "ties"},
    ),
    "scores": ({"dataset", "model", "mode", "score"}, {"points"}),
    "timings": ({"dataset", "model", "run"}, set()),
    "failures": ({"dataset", "model", "run", "error"}, {"exit_code"}),
}


def _pandas():
    try:
        import pandas
    except ImportError as e:  # pragma: no cover - exercised without pandas only
        raise ImportError(
            "conformal_gpu.sweep needs pandas: pip install 'conformal-gpu[sweep]'"
        ) from e
    return pandas


def _read_table(path: Path, text: set[str], ints: set[str]):
    pd = _pandas()
    raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    out = {}
    for col in raw.columns:
        values = raw[col].tolist()
        if col in text:
            out[col] = pd.Series(values, dtype=object)
        elif col in ints:
            out[col] = pd.array([int(v) if v else None for v in values], dtype="Int64")
        else:
            out[col] = pd.Series([float(v) if v else math.nan for v in values],
                                 dtype="float64")
    return pd.DataFrame(out, columns=list(raw.columns))


def read_sweep(out: str | os.PathLike[str]) -> dict[str, Any]:
    """Every table a sweep wrote into ``out`` (results, conformal, summary, paired,
    scores, timings, failures) as DataFrames, typed as :func:`sweep` returns them."""
    out = Path(out)
    return {name: _read_table(out / f"{name}.csv", *cols) for name, cols in _TABLES.items()}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def sweep(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    device: str = "auto",
    source: str | None = None,
    alphas: float | Sequence[float] | None = None,
    temperature: float | None = None,
    temperature_source: str | None = None,
    bootstrap: int | None = None,
    confidence: float | None = None,
    seed: int | None = None,
    score: str | Sequence[str] | None = None,
    randomize: bool | None = None,
    raps_lambda: float | None = None,
    raps_k_reg: int | None = None,
    saps_lambda: float | None = None,
    class_conditional: bool | None = None,
    exclude: Sequence[str] | None = None,
    cot_reference: bool | str | None = None,
):
    """``conformal-gpu sweep --data DATA --out OUT`` with these options; returns
    ``results.csv`` as a DataFrame (:func:`read_sweep` gives every table).

    ``data`` is a layout root or a ``.toml`` manifest. An option left ``None`` is not
    given: the manifest's ``[options]`` or the command line's default applies, and one
    given here wins over the manifest's, as on the command line (``class_conditional=False``
    cannot switch off a manifest's ``class_conditional = true``). Resumable as the
    command is: cells whose report is current are kept. A failed cell raises
    ``RuntimeError`` (``exit_code`` 7) after the other cells are done and every file is
    written (``failures.csv`` names it); a sweep already running into ``out`` raises
    ``RuntimeError`` (``exit_code`` 8); a bad option or manifest raises ``InvalidInput``.
    ``cot_reference`` (``True``, ``"source"`` or ``"uniform"``) adds COT's reference mode
    (``COT-ref``, ``COTT-ref`` rows in ``results.csv``: ts, target level, never in the
    summaries).
    """
    pd = _pandas()  # before any work: a missing pandas is said at once
    del pd
    args: list[str | os.PathLike[str]] = ["--data", data, "--out", out, "--device", device]
    options: dict[str, Any] = {
        "source": source,
        "alpha": alphas,
        "temperature": temperature,
        "temperature_source": temperature_source,
        "bootstrap": bootstrap,
        "confidence": confidence,
        "seed": seed,
        "score": score,
        "raps_lambda": raps_lambda,
        "raps_k_reg": raps_k_reg,
        "saps_lambda": saps_lambda,
        "exclude": exclude,
    }
    for name, value in options.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            raise TypeError(f"sweep: {name} must not be a bool")
        args += [_flag(name), str(value)]
    if randomize is not None:
        args += ["--randomize", "true" if randomize else "false"]
    if class_conditional:
        args.append("--class-conditional")
    if cot_reference:
        args.append("--cot-reference")
        if isinstance(cot_reference, str):
            args += ["--cot-prior", cot_reference]
    cells, failed = _native._sweep([os.fspath(a) for a in args])
    del cells
    frame = _read_table(Path(out) / "results.csv", *_TABLES["results"])
    if failed:
        error = RuntimeError(
            f"{failed} sweep cell(s) failed; see {Path(out) / 'failures.csv'}"
        )
        error.exit_code = 7  # type: ignore[attr-defined]
        raise error
    return frame
