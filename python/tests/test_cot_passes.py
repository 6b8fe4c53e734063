"""COT's passes over shards as a protocol (`Calibration.cot_census`, `cot_passes`,
`CotPassPlan.tally`, `CotPassPart.merge`; DESIGN 2.11's rounds): shards folded in any
order, every plan and part through pickle, parts merged in any order, give
`cot_files`'s values and passes bit for bit (and so the report's COT), K = 2 and K = 10
with a small sample, ties included; on a local Ray cluster `conformal_gpu.ray.cot` over
a dataset of many blocks gives the same; parts that do not belong are typed errors that
leave the passes usable."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from conftest import as_dataset, make_set, save

import conformal_gpu as cg


def target_of(k: int, n: int, ties: bool) -> dict[str, np.ndarray]:
    target = make_set(70 + k, n, k=k, shift=1.0, labels=False)
    if ties:
        # Quantised logits (ties inside rows), the first half repeated (across rows).
        x = np.round(target["logits"] * 2.0) / 2.0
        x[n // 2 :] = x[: n - n // 2]
        target["logits"] = x.astype(np.float32)
    return target


def by_hand(cal, target: dict, cuts: list[int], sample_rows, seed: int) -> dict:
    """The protocol in one process: shards at `cuts`, folded in a shuffled order, plans
    and parts pickled, parts merged in another shuffled order."""
    rng = np.random.default_rng(seed)
    bounds = [0, *cuts, len(target["logits"])]
    shards = [
        {key: v[a:b] for key, v in target.items()} for a, b in zip(bounds, bounds[1:])
    ]
    groups = [{g: s[g] for g in ("hospital", "slide")} for s in shards]
    census = [cal.cot_census(s["logits"], groups=g) for s, g in zip(shards, groups)]
    census = [pickle.loads(pickle.dumps(c)) for c in census]
    passes = cal.cot_passes(census, sample_rows=sample_rows)
    while (plan := passes.plan()) is not None:
        plan = pickle.loads(pickle.dumps(plan))
        parts = [
            pickle.loads(pickle.dumps(plan.tally(int(i), shards[i]["logits"], groups=groups[i],
                                                 device="cpu")))
            for i in rng.permutation(len(shards))
        ]
        order = rng.permutation(len(parts))
        merged = parts[order[0]]
        for i in order[1:]:
            merged.merge(parts[i])
        passes.advance(merged)
    assert passes.done
    return passes.result()


# K = 2 (seven passes, both modes in each); K = 10 with a 200-row sample (sample, refine
# and collect passes; rows tie at class boundaries) and without ties.
@pytest.mark.parametrize(("k", "n", "sample_rows", "ties"),
                         [(2, 3000, None, True), (10, 2500, 200, True), (10, 2000, 150, False)])
def test_passes_by_hand_equal_cot_files(tmp_path, k, n, sample_rows, ties):
    source = make_set(60 + k, 1500, k=k, groups=False)
    cal = cg.Calibration.fit(source["logits"], source["labels"], device="cpu")
    target = target_of(k, n, ties)
    want = cal.cot_files([save(tmp_path / "t.npz", target)], device="cpu",
                         sample_rows=sample_rows)
    for cuts, seed in (([], 1), ([1, 999, 1000, 1700], 2), ([n // 3, n // 2], 3)):
        got = by_hand(cal, target, cuts, sample_rows, seed)
        for key in ("calibration", "n", "passes", "held_rows", "cot", "groups"):
            assert got[key] == want[key], (key, cuts)
    assert got["passes"] == 7 if k == 2 else got["passes"] >= 4


def test_parts_that_do_not_belong_are_typed_errors():
    source = make_set(5, 800, k=4, groups=False)
    cal = cg.Calibration.fit(source["logits"], source["labels"], device="cpu")
    target = target_of(4, 900, False)
    halves = [{key: v[a:b] for key, v in target.items()} for a, b in ((0, 400), (400, 900))]
    g = [{"hospital": h["hospital"]} for h in halves]
    passes = cal.cot_passes([cal.cot_census(h["logits"], groups=gg) for h, gg in zip(halves, g)],
                            sample_rows=50)
    plan = passes.plan()
    p0 = plan.tally(0, halves[0]["logits"], groups=g[0])
    p1 = plan.tally(1, halves[1]["logits"], groups=g[1])
    with pytest.raises(cg.InvalidInput, match="shards \\[1\\] of 2 missing"):
        passes.advance(p0)
    twice = pickle.loads(pickle.dumps(p0))
    with pytest.raises(cg.InvalidInput, match="shard 0 in two parts"):
        twice.merge(p0)
    with pytest.raises(cg.InvalidInput, match="other rows than its census"):
        plan.tally(1, halves[1]["logits"][:-1], groups={"hospital": g[1]["hospital"][:-1]})
    with pytest.raises(cg.InvalidInput, match="K = 3, the plan's K = 4"):
        plan.tally(0, halves[0]["logits"][:, :3], groups=g[0])
    with pytest.raises(cg.InvalidInput, match="group array slide given here"):
        plan.tally(0, halves[0]["logits"], groups={**g[0], "slide": halves[0]["slide"]})
    with pytest.raises(cg.InvalidInput, match="group arrays differ"):
        cal.cot_passes([cal.cot_census(halves[0]["logits"], groups=g[0]),
                        cal.cot_census(halves[1]["logits"])])
    with pytest.raises(cg.InvalidInput, match="K = 3"):
        cal.cot_census(halves[0]["logits"][:, :3])
    with pytest.raises(cg.InvalidInput, match="not a part"):
        cg.CotPassPart.from_json("{}")
    with pytest.raises(cg.InvalidInput, match="merged into itself"):
        p0.merge(p0)
    with pytest.raises(cg.InvalidInput, match="ids for 400 rows"):
        plan.tally(0, halves[0]["logits"], groups={"hospital": target["hospital"][:401]})
    # A part of another calibration's plan (the same census).
    other = cg.Calibration.fit(source["logits"][::-1].copy(), source["labels"][::-1].copy(),
                               temperature=1.5, device="cpu")
    foreign = other.cot_passes([other.cot_census(h["logits"], groups=gg)
                                for h, gg in zip(halves, g)], sample_rows=50).plan()
    with pytest.raises(cg.InvalidInput, match="another plan"):
        p0.merge(foreign.tally(1, halves[1]["logits"], groups=g[1]))
    # The refusals left the passes usable: the honest part advances.
    p0.merge(p1)
    passes.advance(p0)
    assert passes.passes == 1


# K = 2 over 7 blocks; K = 10 over 5 blocks with a small sample (several rounds).
@pytest.mark.parametrize(("k", "n", "blocks", "sample_rows"), [(2, 4000, 7, None),
                                                                (10, 2500, 5, 200)])
def test_ray_cot_equals_cot_files(cluster, tmp_path, k, n, blocks, sample_rows):
    import conformal_gpu.ray as cgr

    source = make_set(80 + k, 1500, k=k, groups=False)
    cal = cg.Calibration.fit(source["logits"], source["labels"], device="cpu")
    target = target_of(k, n, True)
    want = cal.cot_files([save(tmp_path / "t.npz", target)], device="cpu",
                         sample_rows=sample_rows)
    got = cgr.cot(cal, as_dataset(target, blocks), groups=("hospital", "slide"), device="cpu",
                  sample_rows=sample_rows, fan_in=2)
    for key in ("calibration", "n", "passes", "held_rows", "cot", "groups"):
        assert got[key] == want[key], key
    assert got["blocks"] >= blocks  # Ray may split a block further
