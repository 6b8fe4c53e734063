"""Ray Data integration: tally a dataset's blocks where they live, merge the tallies in a
tree of Ray tasks, report.

    import conformal_gpu.ray as cgr
    report = cgr.evaluate(cal, {"test": ds}, logits="logits", labels="labels",
                          groups=("slide",))

The calibration is put in the object store once (``ray.put``) and each worker process
decodes it once. Every block is tallied with its true row offset (prefix sums of the
blocks' row counts, in the dataset's order), so tallies never overlap and the merged
counts are exactly those of the whole target: the report equals ``cal.report`` of a
single-process tally bit for bit, whatever the number of blocks or the merge order.
With a bootstrap calibration (``Calibration.fit(..., bootstrap=B, seed=N)``) the same
holds for the intervals: a row's replicate weights are keyed by its index in the whole
target (the block's offset plus its index in the block), never by the block.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from . import Calibration, CotCensus, CotPassPart, CotPassPlan, Tally

__all__ = ["cot", "evaluate", "tally"]

# Per worker process: the calibration last fetched, by object ref.
_CAL_CACHE: dict[str, Calibration] = {}


def _calibration(box: list[Any]) -> Calibration:
    import ray

    ref = box[0]
    key = ref.hex()
    cal = _CAL_CACHE.get(key)
    if cal is None:
        cal = ray.get(ref)
        _CAL_CACHE.clear()
        _CAL_CACHE[key] = cal
    return cal


def _column(batch: Mapping[str, Any], name: str, what: str) -> np.ndarray:
    if name not in batch:
        from . import InvalidInput

        raise InvalidInput(f"{what}: the dataset has no column {name!r} (it has {sorted(batch)})")
    arr = batch[name]
    if isinstance(arr, np.ndarray) and arr.dtype == object:
        # Variable-shaped or list columns come back as arrays of arrays.
        arr = np.stack(list(arr)) if len(arr) else np.empty((0, 0), dtype=np.float32)
    return np.asarray(arr)


def _group_columns(groups: Iterable[str] | Mapping[str, str] | None) -> dict[str, str]:
    if groups is None:
        return {}
    if isinstance(groups, str):
        return {groups: groups}
    if isinstance(groups, Mapping):
        return dict(groups)
    return {g: g for g in groups}


def _block_rows(block: Any) -> int:
    from ray.data.block import BlockAccessor

    return BlockAccessor.for_block(block).num_rows()


def _block_arrays(
    block: Any,
    part: tuple[int, int] | None,
    name: str,
    logits: str,
    labels: str | None,
    groups: dict[str, str],
    k: int,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray] | None]:
    """A block's (or its slice's) logits, labels and group ids as numpy arrays."""
    from ray.data.block import BlockAccessor

    acc = BlockAccessor.for_block(block)
    if part is not None:
        acc = BlockAccessor.for_block(acc.slice(part[0], part[1], copy=False))
    cols = [logits] + ([labels] if labels else []) + list(groups.values())
    batch = acc.to_numpy(cols) if len(cols) > 1 else {logits: acc.to_numpy(logits)}
    y = _column(batch, labels, name) if labels else None
    g = {k: _column(batch, col, name) for k, col in groups.items()} or None
    x = _column(batch, logits, name)
    if x.ndim != 2 and len(x) == 0:
        x = np.empty((0, k), dtype=np.float32)
    return x, y, g


def _tally_block(
    box: list[Any],
    block: Any,
    part: tuple[int, int] | None,
    row_offset: int,
    name: str,
    logits: str,
    labels: str | None,
    groups: dict[str, str],
    device: str | None,
) -> Tally:
    cal = _calibration(box)
    x, y, g = _block_arrays(block, part, name, logits, labels, groups, cal.k)
    return cal.tally(x, labels=y, groups=g, row_offset=row_offset, device=device, name=name)


def _census_block(
    box: list[Any], block: Any, part: tuple[int, int] | None, logits: str, groups: dict[str, str]
) -> CotCensus:
    cal = _calibration(box)
    x, _, g = _block_arrays(block, part, "COT census", logits, None, groups, cal.k)
    return cal.cot_census(x, groups=g)


def _pass_block(
    plan_box: list[Any],
    shard: int,
    block: Any,
    part: tuple[int, int] | None,
    logits: str,
    groups: dict[str, str],
    device: str | None,
) -> CotPassPart:
    import ray

    plan: CotPassPlan = ray.get(plan_box[0])
    x, _, g = _block_arrays(block, part, f"COT pass, block {shard}", logits, None, groups, plan.k)
    return plan.tally(shard, x, groups=g, device=device)


def _get(ref: Any) -> Any:
    """``ray.get``, re-raising a task's own exception (the crate's typed error with its
    message) instead of Ray's wrapper."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause: BaseException = e
        while isinstance(cause, ray.exceptions.RayTaskError) and cause.cause is not None:
            cause = cause.cause
        if cause is e:
            raise
        raise cause from None


def _merge(*parts: Any) -> Any:
    out = parts[0]
    for p in parts[1:]:
        out.merge(p)
    return out


def _blocks(ds: Any) -> list[tuple[Any, int | None, tuple[int, int] | None]]:
    """The dataset's blocks in order: (ref, rows where the metadata knows them, the slice
    of the block the bundle covers or None for all of it)."""
    out: list[tuple[Any, int | None, tuple[int, int] | None]] = []
    if hasattr(ds, "iter_internal_ref_bundles"):
        for bundle in ds.iter_internal_ref_bundles():
            slices = getattr(bundle, "slices", None) or (None,) * len(bundle.blocks)
            for entry, sl in zip(bundle.blocks, slices):
                ref, meta = (entry.ref, entry.metadata) if hasattr(entry, "ref") else entry
                if sl is not None:
                    out.append((ref, sl.end_offset - sl.start_offset,
                                (sl.start_offset, sl.end_offset)))
                else:
                    out.append((ref, meta.num_rows, None))
        return out
    return [(r, None, None) for r in ds.get_internal_block_refs()]  # older Ray


def tally(
    cal: Calibration,
    ds: Any,
    *,
    name: str = "target",
    logits: str = "logits",
    labels: str | None = "labels",
    groups: Iterable[str] | Mapping[str, str] | None = (),
    device: str | None = None,
    fan_in: int = 8,
    cal_ref: Any = None,
) -> Tally:
    """Tallies a Ray dataset of target rows: one Ray task per block (at its row offset),
    then a tree of merges (``fan_in`` tallies per merge task). Returns the merged tally."""
    import ray

    if cal_ref is None:
        cal_ref = ray.put(cal)
    box = [cal_ref]  # nested, so Ray passes the ref and each worker caches the decode
    gcols = _group_columns(groups)
    if labels is not None and labels not in ds.columns():
        labels = None  # an unlabelled target
    blocks = _blocks(ds)
    if any(n is None for _, n, _ in blocks):
        count = ray.remote(_block_rows)
        sizes = _get([count.remote(ref) for ref, _, _ in blocks])
        blocks = [(ref, n, sl) for (ref, _, sl), n in zip(blocks, sizes)]
    task = ray.remote(_tally_block)
    refs = []
    offset = 0
    for ref, n, sl in blocks:
        if n == 0:
            continue
        refs.append(task.remote(box, ref, sl, offset, name, logits, labels, gcols, device))
        offset += n
    if not refs:
        return cal.tally(
            np.empty((0, cal.k), dtype=np.float32),
            labels=np.empty(0, dtype=np.int32) if labels else None,
            groups={k: np.empty(0, dtype=np.int64) for k in gcols} or None,
            device=device,
            name=name,
        )
    return _merge_tree(refs, fan_in)


def evaluate(
    cal: Calibration,
    targets: Mapping[str, Any],
    *,
    logits: str = "logits",
    labels: str | None = "labels",
    groups: Iterable[str] | Mapping[str, str] | None = (),
    device: str | None = None,
    fan_in: int = 8,
    confidence: float | None = None,
) -> dict[str, Any]:
    """The report of ``cal`` on each Ray dataset of ``targets`` ({name: dataset}), tallied
    on the cluster (see :func:`tally`): the same dict as ``cal.report``. ``confidence``
    overrides the calibration's for the bootstrap intervals, as in ``cal.report``."""
    import ray

    cal_ref = ray.put(cal)
    tallies = {
        name: tally(
            cal,
            ds,
            name=name,
            logits=logits,
            labels=labels,
            groups=groups,
            device=device,
            fan_in=fan_in,
            cal_ref=cal_ref,
        )
        for name, ds in targets.items()
    }
    return cal.report(tallies, confidence=confidence)


def _merge_tree(refs: list[Any], fan_in: int) -> Any:
    """The merge of the objects behind `refs` (tallies or COT pass parts) in a tree of
    Ray tasks, ``fan_in`` a task."""
    import ray

    merge = ray.remote(_merge)
    fan_in = max(2, fan_in)
    while len(refs) > 1:
        refs = [merge.remote(*refs[i : i + fan_in]) for i in range(0, len(refs), fan_in)]
    return _get(refs[0])


def cot(
    cal: Calibration,
    ds: Any,
    *,
    logits: str = "logits",
    groups: Iterable[str] | Mapping[str, str] | None = (),
    device: str | None = None,
    sample_rows: int | None = None,
    fan_in: int = 8,
    received: list[int] | None = None,
) -> dict[str, Any]:
    """COT raw and ts of a Ray dataset of target rows and of each of its groups, exact,
    without gathering the rows anywhere (DESIGN.md 2.11's rounds as a protocol,
    ``Calibration.cot_passes``): one Ray task per block counts its rows and group ids
    (the census), then each pass is one task per block folding its rows into a part (at
    the block's first row in every set, from the census) and a tree of merges; the
    driver holds only the merged part (K = 2: a few counters a set; K > 2: the samples and
    free rows of the rounds) and takes the step between passes. Returns the dict of
    ``Calibration.cot_files`` less ``files`` and ``device``, plus ``blocks``: the values
    equal ``cot_files`` of the same rows and the report's COT bit for bit, whatever the
    blocks. With ``received`` a list, the pickled size of each merged part the driver
    receives is appended to it (what crosses to the driver, for benchmarks)."""
    import ray

    cal_ref = ray.put(cal)
    box = [cal_ref]
    gcols = _group_columns(groups)
    blocks = _blocks(ds)
    if any(n is None for _, n, _ in blocks):
        count = ray.remote(_block_rows)
        sizes = _get([count.remote(ref) for ref, _, _ in blocks])
        blocks = [(ref, n, sl) for (ref, _, sl), n in zip(blocks, sizes)]
    blocks = [b for b in blocks if b[1]]
    census_task = ray.remote(_census_block)
    census = _get([census_task.remote(box, ref, sl, logits, gcols) for ref, _, sl in blocks])
    passes = cal.cot_passes(census, sample_rows=sample_rows)
    pass_task = ray.remote(_pass_block)
    while (plan := passes.plan()) is not None:
        plan_box = [ray.put(plan)]
        refs = [
            pass_task.remote(plan_box, i, ref, sl, logits, gcols, device)
            for i, (ref, _, sl) in enumerate(blocks)
        ]
        part = _merge_tree(refs, fan_in)
        if received is not None:
            import pickle

            received.append(len(pickle.dumps(part)))
        passes.advance(part)
    out = passes.result()
    out["blocks"] = len(blocks)
    return out
