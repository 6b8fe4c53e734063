#!/usr/bin/env python3
"""numpy peer of `conformal-gpu evaluate`: DESIGN.md section 2 end to end, vectorised.

    python3 benches/peers/numpy_evaluate.py --data DIR [--source id_val] [--alpha 0.1,0.05]
        [--json REPORT.json] [--repeat R] [--pvalues] [--timings T.json] [--full]

Source = DIR/<source>.npz (every label known), targets = every other .npz in DIR in name
order. T is fitted on the source (safeguarded Newton on b = 1/T, float64 sums); the `raw`
mode uses T = 1, the `ts` mode the fitted T (cast to float32 for the probabilities, as the
crate does). Probabilities are float32 (DESIGN 2.1); sums over rows float64. The JSON report
uses the crate's field names (issue 4). Timings (ms) per phase: load, temperature, sort
(source statistics, sorting, thresholds), estimate (targets), total (including load).
With --repeat R the whole job runs R times and the median of each phase is printed.
--pvalues also computes per-row credibility/confidence on every target (DESIGN 2.6), which
the crate does only with --rows; it is timed in `estimate` and not written to the report.
--full also computes what the crate's default report holds beyond the five methods above,
so the two sides do the same work: COT and COTT (DESIGN 2.11 and 2.16, K = 2 only: the
order statistic and its plan, per target and per group) and the score estimators (2.17:
nuclear norm and MaNo, per target), timed in `sort` (COTT's source threshold) and
`estimate`; at K > 2 it skips COT and COTT (and says so): not equal work there. Its costs
are on the crate's 2^-40 grid and its sums exact (Python integers),
but ties at a boundary and f64 rounding are its own: it agrees with the crate within
compare_reports.py's tolerances, not bit for bit.
"""

import argparse
import hashlib
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

METHODS = ("AC", "DoC", "ATC-MC", "ATC-NE", "CPC")
GROUPS = ("hospital", "slide")


# ------------------------------------------------------------------ per-row statistics

def row_stats(zt, y, t):
    """Per-row float32 summaries at temperature t from class-major logits zt [K, N]:
    p1 = max p, ne = sum p ln p, lac = 1 - p_y (-1 unknown), r1 = 1 - p_(1), r2 = 1 - p_(2),
    and r = 1 - p ([K, N], all classes)."""
    p = C.softmax_f32_cm(zt, t)
    r = np.float32(1.0) - p
    p1 = C.reduce_rows(np.maximum, p)
    if r.shape[0] == 2:
        r1, r2 = np.minimum(r[0], r[1]), np.maximum(r[0], r[1])
    else:
        part = np.partition(r, 1, axis=0)
        r1, r2 = part[0].copy(), part[1].copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = p * np.log(p)
    plogp[p == 0] = 0.0  # 0 ln 0 = 0
    ne = C.reduce_rows(np.add, plogp)  # float32, class order, as the crate
    known = np.nonzero(y >= 0)[0]
    lac = np.full(y.shape[0], -1.0, np.float32)
    lac[known] = r[y[known], known]
    return dict(p1=p1, ne=ne, lac=lac, r1=r1, r2=r2, r=r, p=p)


def atc_threshold(sorted_g, c):
    """DESIGN 2.7: t = c-th largest score, lambda = (c - #{g > t}) / #{g = t}; None when c = 0."""
    if c == 0:
        return None
    n = sorted_g.shape[0]
    t = sorted_g[n - c]
    upper = np.searchsorted(sorted_g, t, side="right")
    lower = np.searchsorted(sorted_g, t, side="left")
    return t, (c - (n - upper)) / (upper - lower)


def cpc_choice(lac_sorted, r1_sorted, r2_sorted, c):
    """DESIGN 2.8: over q in {s_(1..n), +inf} minimise |#singletons(q) - c| (ties: smallest q).
    #singletons(q) = #{r1 <= q} - #{r2 <= q}, by searchsorted at every candidate at once.
    Returns (q or None for +inf, i = 1-based index of q's first occurrence)."""
    n = lac_sorted.shape[0]
    cnt = (np.searchsorted(r1_sorted, lac_sorted, side="right")
           - np.searchsorted(r2_sorted, lac_sorted, side="right"))
    dist = np.abs(cnt - c)
    i0 = int(np.argmin(dist))  # first minimum: smallest q, first occurrence
    if c < dist[i0]:  # +inf: no singleton (K >= 2), distance c, strictly better
        return None, n + 1
    return lac_sorted[i0], i0 + 1


# ------------------------------------------------------------------ COT, COTT, scores (--full)

GRID = float(1 << 40)


def grid_costs(p):
    """DESIGN 2.11's costs 1 - p on the 2^-40 grid (f64 from the f32 probabilities, halves
    up, as the crate rounds them), int64, class-major [K, N]."""
    return np.floor((1.0 - p.astype(np.float64)) * GRID + 0.5).astype(np.int64)


def two_class_plan(c0, c1, supply, d1, t=None):
    """K = 2: the units each row sends to class 1 (a row holds `supply` units, class 1
    needs d1): rows with a gain c0 - c1 above the boundary gain send all, the tied rows
    share the rest in row order, those whose class-1 edge costs no more than t first
    (the plan with the least mass above t). Returns (units to class 1, boundary gain)."""
    n = c0.shape[0]
    to1 = np.zeros(n, np.int64)
    if d1 == 0:
        return to1, None
    g = c0 - c1
    last = min(-(-d1 // supply), n) - 1
    b = np.partition(g, n - 1 - last)[n - 1 - last]
    above = g > b
    to1[above] = supply
    need = d1 - int(np.count_nonzero(above)) * supply
    tied = np.nonzero(g == b)[0]
    if t is not None:
        key = (c1[tied] > t).astype(np.int8) - (c0[tied] > t).astype(np.int8)
        tied = tied[np.argsort(key, kind="stable")]
    to1[tied] = np.clip(need - supply * np.arange(tied.shape[0], dtype=np.int64), 0, supply)
    return to1, b


def exact_sum(a, block=1 << 22):
    """The sum of int64 values of magnitude at most 2^41 as a Python integer: int64 sums
    of 2^22 values at a time cannot overflow."""
    return sum(int(a[i:i + block].sum()) for i in range(0, a.shape[0], block))


def plan_cost_units(c0, c1, to1, supply):
    """The plan's cost in units x grid steps (exact: Python integers). Rows send all or
    nothing but for the few tied rows at the boundary."""
    g = c0 - c1
    full = to1 == supply
    part = np.nonzero((to1 > 0) & ~full)[0]
    moved = supply * exact_sum(g[full])
    moved += sum(int(to1[i]) * int(g[i]) for i in part)
    return supply * exact_sum(c0) - moved


def above_units(c0, c1, to1, supply, t):
    """(E, F): units on edges costing more than t, at least t (counts of whole rows, and
    the few split rows one by one)."""
    full, none = to1 == supply, to1 == 0
    e = supply * (np.count_nonzero(full & (c1 > t)) + np.count_nonzero(none & (c0 > t)))
    f = supply * (np.count_nonzero(full & (c1 >= t)) + np.count_nonzero(none & (c0 >= t)))
    for i in np.nonzero(~full & ~none)[0]:
        u1, u0 = int(to1[i]), supply - int(to1[i])
        e += u1 * int(c1[i] > t) + u0 * int(c0[i] > t)
        f += u1 * int(c1[i] >= t) + u0 * int(c0[i] >= t)
    return e, f


def plan_threshold(c0, c1, to1, supply, need):
    """The largest cost u with F(u) >= need units (need 0: the largest transported cost)."""
    to0 = supply - to1
    cost = np.concatenate([c1[to1 > 0], c0[to0 > 0]])
    units = np.concatenate([to1[to1 > 0], to0[to0 > 0]])
    order = np.argsort(-cost, kind="stable")
    total = np.cumsum(units[order])
    i = int(np.searchsorted(total, max(need, 1)))
    return int(cost[order][min(i, cost.shape[0] - 1)])


def cott_threshold(c, counts, errors):
    """DESIGN 2.16 on the source: t and lambda from its plan (solved, then re-solved
    preferring edges at or below the first t)."""
    n = c.shape[1]
    supply, d1 = int(counts.sum()), int(counts[1]) * n
    need = errors * supply
    to1, _ = two_class_plan(c[0], c[1], supply, d1)
    t0 = plan_threshold(c[0], c[1], to1, supply, need)
    to1, _ = two_class_plan(c[0], c[1], supply, d1, t0)
    t = plan_threshold(c[0], c[1], to1, supply, need)
    if errors == 0:
        return t, 0.0
    e, f = above_units(c[0], c[1], to1, supply, t)
    lam = (need - e) / (f - e) if f > e else 0.0
    return t, min(max(lam, 0.0), 1.0)


def cot_cott(c0, c1, counts, thr):
    """COT and COTT of one set (its rows against the source shares)."""
    n = c0.shape[0]
    supply, d1 = int(counts.sum()), int(counts[1]) * n
    t, lam = thr
    to1, _ = two_class_plan(c0, c1, supply, d1, t)
    total = n * supply
    cot = 1.0 - plan_cost_units(c0, c1, to1, supply) / (total * (1 << 40))
    e, f = above_units(c0, c1, to1, supply, t)
    return cot, 1.0 - (e + lam * (f - e)) / total


def shift_scores(zt, t, p):
    """DESIGN 2.17 from class-major logits zt [K, N] and probabilities p [K, N]."""
    k, n = p.shape
    pd = p.astype(np.float64)
    eig = np.linalg.eigvalsh(pd @ pd.T)
    nuclear = float(np.sqrt(np.clip(eig, 0.0, None)).sum() / np.sqrt(n * min(n, k)))
    v = zt.astype(np.float64)
    v /= np.float64(np.float32(t))
    m = C.reduce_rows(np.maximum, v)
    e = v - m
    np.exp(e, out=e)
    lse = np.log(C.reduce_rows(np.add, e))
    lse += m
    lse -= C.reduce_rows(np.add, v) / k
    delta = float(np.maximum(lse, 0.0, out=lse).mean())
    if delta > 5.0:
        q = pd
    else:
        q = v * v
        q /= 2.0
        q += v
        q += 1.0
        q -= C.reduce_rows(np.minimum, q)
        tot = C.reduce_rows(np.add, q)
        with np.errstate(invalid="ignore", divide="ignore"):
            q = np.where(tot > 0, q / tot, 1.0 / k)
    q *= q
    q *= q
    return {"nuclear_norm": nuclear, "mano": (float(q.sum()) / (n * k)) ** 0.25}


def with_cot(est, cot, mode, key):
    """A set's estimates with its COT and COTT (--full, K = 2), where computed."""
    if cot:
        est["COT"], est["COTT"] = cot[mode][key]
    return est


def calibrate_source(z, y, t, alphas, full=False):
    st = row_stats(np.ascontiguousarray(z.T), y, t)
    n = z.shape[0]
    yhat = np.argmax(z, axis=1)
    c = int(np.count_nonzero(yhat == y))
    lac = np.sort(st["lac"])
    qhats = []
    for a in alphas:
        k = C.conformal_k(n, a)
        qhats.append(None if k is None else lac[k - 1])
    q, i = cpc_choice(lac, np.sort(st["r1"]), np.sort(st["r2"]), c)
    counts = np.bincount(y, minlength=z.shape[1])
    cott = cott_threshold(grid_costs(st["p"]), counts, n - c) if full and z.shape[1] == 2 else None
    return dict(t=t, n=n, correct=c, accuracy=c / n, counts=counts, cott=cott,
                ac=float(np.sum(st["p1"], dtype=np.float64)) / n,
                atc_mc=atc_threshold(np.sort(st["p1"]), c),
                atc_ne=atc_threshold(np.sort(st["ne"]), c),
                qhats=qhats, cpc_q=q, cpc_alpha=1.0 - i / (n + 1.0), sorted_lac=lac)


# ------------------------------------------------------------------ target counts

def row_indicators(st, correct, known, cal):
    """Per-row contributions to every count of a target (mergeable: totals and per group).
    Returns (names of the integer columns, int32 matrix [N, C], float64 sum_p1 column)."""
    names, cols = ["n", "labelled", "correct"], [np.ones_like(known), known, correct]
    for name, g in (("mc", st["p1"]), ("ne", st["ne"])):
        thr = cal["atc_" + name]
        if thr is not None:
            names += [name + "_above", name + "_equal"]
            cols += [g > thr[0], g == thr[0]]
    q = cal["cpc_q"]
    names.append("cpc")
    cols.append((st["r1"] <= q) & (q < st["r2"]) if q is not None else np.zeros_like(known))
    k = st["r"].shape[0]
    for a, qa in enumerate(cal["qhats"]):
        size = C.reduce_rows(np.add, (st["r"] <= qa).astype(np.int32)) if qa is not None else np.full(known.shape[0], k, np.int32)
        names += [f"size_{a}", f"singleton_{a}", f"empty_{a}", f"covered_{a}"]
        cols += [size, size == 1, size == 0, known & (st["lac"] <= qa) if qa is not None else known]
    dt = np.int8 if k < 127 else np.int32
    m = np.empty((len(cols), known.shape[0]), dt)  # one contiguous row per count
    for j, c in enumerate(cols):
        m[j] = c
    return names, m, st["p1"].astype(np.float64)


def totals(names, m, p1):
    s = m.sum(axis=1, dtype=np.int64)
    out = {k: int(v) for k, v in zip(names, s)}
    out["sum_p1"] = float(p1.sum())
    return out


def group_index(ids):
    """How to sum per group id: over the runs of equal ids in file order when there are few
    (data written group by group, as the generator does), else over the rows permuted by a
    stable argsort of the ids. Returns (order or None, run starts, run ends, run ids)."""
    n = ids.shape[0]
    order = None
    cut = np.nonzero(ids[1:] != ids[:-1])[0] + 1
    if cut.shape[0] > max(1000, n // 1000):
        order = np.argsort(ids, kind="stable")
        sid = ids[order]
        cut = np.nonzero(sid[1:] != sid[:-1])[0] + 1
    else:
        sid = ids
    starts = np.concatenate([[0], cut])
    ends = np.concatenate([cut, [n]])
    return order, starts, ends, sid[starts]


def group_totals(names, m, p1, index):
    order, starts, ends, run_ids = index
    if order is not None:
        m, p1 = m[:, order], p1[order]
    out = {}
    for a, b, g in zip(starts, ends, run_ids):
        s = m[:, a:b].sum(axis=1, dtype=np.int64)
        d = out.setdefault(int(g), dict.fromkeys(names, 0) | {"sum_p1": 0.0})
        for k, v in zip(names, s):
            d[k] += int(v)
        d["sum_p1"] += float(p1[a:b].sum())
    return out


def estimates(cnt, cal):
    n = cnt["n"]
    ac = cnt["sum_p1"] / n

    def atc(name):
        thr = cal["atc_" + name]
        if thr is None:
            return 0.0
        return (cnt[name + "_above"] + thr[1] * cnt[name + "_equal"]) / n

    return {"AC": ac, "DoC": cal["accuracy"] + ac - cal["ac"], "ATC-MC": atc("mc"),
            "ATC-NE": atc("ne"), "CPC": cnt["cpc"] / n}


def true_acc(cnt):
    return cnt["correct"] / cnt["labelled"] if cnt["labelled"] > 0 else None


def conformal(cnt, cal, alphas):
    n = cnt["n"]
    return [{"alpha": a, "qhat": None if cal["qhats"][i] is None else float(cal["qhats"][i]),
             "mean_set_size": cnt[f"size_{i}"] / n, "singleton_rate": cnt[f"singleton_{i}"] / n,
             "empty_rate": cnt[f"empty_{i}"] / n,
             "coverage": cnt[f"covered_{i}"] / cnt["labelled"] if cnt["labelled"] > 0 else None}
            for i, a in enumerate(alphas)]


def ece(z, y, t):
    """DESIGN 2.2: 15 (lo, hi] bins of the float32 max probability, bin = clamp(ceil(15c)-1, 0, 14)
    in float64, over labelled rows."""
    known = y >= 0
    z, y = z[known], y[known]
    c = C.softmax_f32(z, t).max(axis=1)
    b = np.clip(np.ceil(15.0 * c.astype(np.float64)) - 1.0, 0, C.ECE_BINS - 1).astype(np.int64)
    correct = (np.argmax(z, axis=1) == y).astype(np.float64)
    conf = np.bincount(b, weights=c.astype(np.float64), minlength=C.ECE_BINS)
    corr = np.bincount(b, weights=correct, minlength=C.ECE_BINS)
    return float(np.abs(conf - corr).sum() / z.shape[0])


# ------------------------------------------------------------------ the job

def evaluate(data_dir, source_name, alphas, want_pvalues=False, full=False):
    tm = {}
    t_start = time.perf_counter()
    files = sorted(f for f in os.listdir(data_dir) if f.endswith(".npz"))
    if source_name + ".npz" not in files:
        sys.exit(f"no {source_name}.npz in {data_dir}")
    sets = {f[:-4]: C.load_npz(os.path.join(data_dir, f)) for f in files}
    src = sets.pop(source_name)
    if np.any(src["labels"] < 0):
        sys.exit(f"{source_name}: every source label must be known")
    tm["load"] = time.perf_counter() - t_start

    t0 = time.perf_counter()
    z, y = src["logits"], src["labels"]
    fit = C.fit_temperature_newton(z, y)
    t_ts = np.float32(fit["temperature"])
    nll_before = C.nll_sums_f64(z, y, 1.0)[0]
    nll_after = C.nll_sums_f64(z, y, 1.0 / fit["temperature"])[0]
    ece_before, ece_after = ece(z, y, np.float32(1.0)), ece(z, y, t_ts)
    tm["temperature"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    cal = {"raw": calibrate_source(z, y, np.float32(1.0), alphas, full),
           "ts": calibrate_source(z, y, t_ts, alphas, full)}
    tm["sort"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    targets = []
    for name, s in sets.items():
        tz, ty = s["logits"], s["labels"]
        zt = np.ascontiguousarray(tz.T)
        known = ty >= 0
        correct = known & (np.argmax(zt, axis=0) == ty)  # argmax ties: lowest index
        per_mode, per_group = {}, {g: {} for g in GROUPS if s[g] is not None}
        index = {g: group_index(s[g]) for g in per_group}
        # --full: each group's rows in row order (a stable sort), for its own COT problem.
        two = full and zt.shape[0] == 2
        if full and not two:
            print(f"warning: {name}: K = {zt.shape[0]}: --full computes COT and COTT at K = 2 "
                  "only (the crate computes them at every K): not equal work", file=sys.stderr)
        members = {}
        if two:
            for g in per_group:
                order = np.argsort(s[g], kind="stable")
                ids, starts = np.unique(s[g][order], return_index=True)
                members[g] = list(zip(ids.tolist(), np.split(order, starts[1:])))
        cot, scores = {}, {}
        for mode in ("raw", "ts"):
            st = row_stats(zt, ty, cal[mode]["t"])
            names, m, p1 = row_indicators(st, correct, known, cal[mode])
            per_mode[mode] = totals(names, m, p1)
            for g in per_group:
                per_group[g][mode] = group_totals(names, m, p1, index[g])
            if full:
                scores[mode] = shift_scores(zt, cal[mode]["t"], st["p"])
            if two:
                c = grid_costs(st["p"])
                counts, thr = cal[mode]["counts"], cal[mode]["cott"]
                cot[mode] = {None: cot_cott(c[0], c[1], counts, thr)}
                for g, sets in members.items():
                    for gid, rows in sets:
                        cot[mode][(g, gid)] = cot_cott(c[0][rows], c[1][rows], counts, thr)
            if want_pvalues and mode == "ts":
                lac = cal[mode]["sorted_lac"]
                credibility = C.pvalues(lac, st["r1"])  # noqa: F841 (timed, not reported)
                confidence = 1.0 - C.pvalues(lac, st["r2"])  # noqa: F841
        all_raw = per_mode["raw"]
        groups = {}
        for g, modes in per_group.items():
            groups[g] = [{"id": gid, "n": cnt["n"], "true_accuracy": true_acc(cnt),
                          "estimates": {m: with_cot(estimates(modes[m][gid], cal[m]), cot, m, (g, gid))
                                        for m in ("raw", "ts")}}
                         for gid, cnt in sorted(modes["raw"].items())]
        targets.append({
            "name": name, "n": all_raw["n"], "n_labelled": all_raw["labelled"],
            "labelled": all_raw["labelled"] == all_raw["n"], "true_accuracy": true_acc(all_raw),
            "estimates": {m: with_cot(estimates(per_mode[m], cal[m]), cot, m, None) for m in ("raw", "ts")},
            "cpc": {m: {"q": None if cal[m]["cpc_q"] is None else float(cal[m]["cpc_q"]),
                        "alpha": cal[m]["cpc_alpha"]} for m in ("raw", "ts")},
            "conformal": {m: conformal(per_mode[m], cal[m], alphas) for m in ("raw", "ts")},
            "groups": groups,
        } | ({"scores": scores} if scores else {}))
    tm["estimate"] = time.perf_counter() - t0
    tm["total"] = time.perf_counter() - t_start

    report = {
        "device": "numpy (cpu)",
        "alphas": list(alphas),
        "meta": {"version": "numpy-peer", "numpy": np.__version__, "args": sys.argv,
                 "inputs": [{"file": os.path.join(data_dir, f)} for f in files]},
        "source": {"name": source_name, "n": int(z.shape[0]), "k": int(z.shape[1]),
                   "accuracy": cal["raw"]["accuracy"], "temperature": fit["temperature"],
                   "converged": fit["converged"], "iterations": fit["iterations"],
                   "nll_before": nll_before, "nll_after": nll_after,
                   "ece_before": ece_before, "ece_after": ece_after},
        "targets": targets,
        "mae": mae_rows(targets),
        "timings_ms": {k: v * 1e3 for k, v in tm.items()},
    }
    return report


def mae_of(pairs):
    methods = [m for m in ("AC", "ATC-MC", "ATC-NE", "COT", "COTT", "CPC", "DoC")
               if m in METHODS or (pairs and m in pairs[0][0])]
    return {m: (sum(abs(e[m] - acc) for e, acc in pairs) / len(pairs) if pairs else None)
            for m in methods}


def mae_rows(targets):
    out = {}
    for mode in ("raw", "ts"):
        out[mode] = mae_of([(t["estimates"][mode], t["true_accuracy"])
                            for t in targets if t["true_accuracy"] is not None])
    for g in GROUPS:
        if not any(g in t["groups"] for t in targets):
            continue
        for mode in ("raw", "ts"):
            out[f"{g}_{mode}"] = mae_of([(e["estimates"][mode], e["true_accuracy"])
                                         for t in targets for e in t["groups"].get(g, [])
                                         if e["true_accuracy"] is not None])
    return out


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="directory of .npz prediction sets")
    ap.add_argument("--source", default="id_val")
    ap.add_argument("--alpha", default="0.1", help="comma-separated levels")
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--repeat", type=int, default=1, help="run the whole job R times")
    ap.add_argument("--pvalues", action="store_true", help="also compute per-row p-values")
    ap.add_argument("--timings", help="write the (median) timings_ms as JSON here")
    ap.add_argument("--full", action="store_true",
                    help="also COT, COTT (K = 2) and the score estimators: the crate's work")
    args = ap.parse_args()
    alphas = [float(a) for a in args.alpha.split(",")]
    if not all(0.0 < a < 1.0 for a in alphas):
        sys.exit("alpha must lie in (0, 1)")

    runs = []
    for r in range(args.repeat):
        report = evaluate(args.data, args.source, alphas, args.pvalues, args.full)
        runs.append(report["timings_ms"])
        print(f"run {r + 1}: " + "  ".join(f"{k} {v:8.1f} ms" for k, v in report["timings_ms"].items()))
    med = {k: statistics.median(t[k] for t in runs) for k in runs[0]}
    if args.repeat > 1:
        print(f"median of {args.repeat}: " + "  ".join(f"{k} {v:8.1f} ms" for k, v in med.items()))
        report["timings_ms"] = med
        report["timings_ms_runs"] = runs
    if args.timings:
        with open(args.timings, "w") as f:
            json.dump(report["timings_ms"], f)
    s = report["source"]
    print(f"source {s['name']}: n = {s['n']}, K = {s['k']}, accuracy {s['accuracy']:.6f}, "
          f"T = {s['temperature']:.9g} ({s['iterations']} passes), NLL {s['nll_before']:.6f} -> "
          f"{s['nll_after']:.6f}, ECE {s['ece_before']:.6f} -> {s['ece_after']:.6f}")
    for t in report["targets"]:
        acc = "-" if t["true_accuracy"] is None else f"{100 * t['true_accuracy']:.2f}"
        for m in ("raw", "ts"):
            e = t["estimates"][m]
            print(f"{t['name']:<20} {t['n']:>9} {acc:>6} {m:>3} "
                  + " ".join(f"{k}={100 * e[k]:6.2f}" for k in METHODS))
    if args.json:
        for inp in report["meta"]["inputs"]:
            inp["sha256"] = sha256(inp["file"])
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1, allow_nan=False)
        os.replace(tmp, args.json)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
