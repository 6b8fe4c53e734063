#!/usr/bin/env python3
"""Compares two evaluation reports (the crate's `--json` and/or numpy_evaluate.py's) within
DESIGN.md section 4's tolerances and prints every mismatch.

    python3 benches/peers/compare_reports.py A.json B.json [--verbose]

Tolerances (n = rows of the set the number is about: target, group, or source):
- rates (ATC-MC, ATC-NE, CPC, accuracies, coverage, set statistics, CPC alpha*):
  2/n + 1e-6 (a probability can sit on a threshold);
- continuous (AC, DoC, NLL, ECE, qhat, CPC q*): 1e-5 absolute;
- temperature: 1e-5 relative;
- MAE rows: 1e-5 for AC/DoC, the mean of 2/n over the contributing (target, group) pairs
  + 1e-6 for the rate methods;
- counts, names, ids, booleans, alphas: exact. `iterations`, `device`, `meta`, `timings_ms`
  are implementation details and skipped.
Exit status 0 when everything agrees, 1 otherwise.
"""

import argparse
import json
import sys

RATE_METHODS = {"ATC-MC", "ATC-NE", "CPC"}
CONT_METHODS = {"AC", "DoC"}
RATE_KEYS = {"accuracy", "true_accuracy", "coverage", "singleton_rate", "empty_rate",
             "mean_set_size"} | RATE_METHODS
CONT_KEYS = {"nll_before", "nll_after", "ece_before", "ece_after", "qhat"} | CONT_METHODS
SKIP = {"iterations", "device", "meta", "timings_ms", "timings_ms_runs"}
CONT_TOL = 1e-5
T_REL_TOL = 1e-5


class Cmp:
    def __init__(self):
        self.mismatches = []
        self.checked = 0
        self.worst = {}  # kind -> (excess ratio |d|/tol, path, a, b)

    def num(self, path, a, b, tol, kind):
        self.checked += 1
        if a is None or b is None:
            if a is not b:
                self.mismatches.append(f"{path}: {a} vs {b}")
            return
        d = abs(a - b)
        ratio = d / tol if tol > 0 else (0.0 if d == 0 else float("inf"))
        if ratio > self.worst.get(kind, (-1,))[0]:
            self.worst[kind] = (ratio, path, a, b)
        if d > tol:
            self.mismatches.append(f"{path}: {a!r} vs {b!r} (|diff| {d:.3g} > tol {tol:.3g})")

    def exact(self, path, a, b):
        self.checked += 1
        if a != b:
            self.mismatches.append(f"{path}: {a!r} vs {b!r} (must be equal)")


def rate_tol(n):
    return 2.0 / n + 1e-6


def cmp_estimates(c, path, a, b, n):
    for m in sorted(set(a) | set(b)):
        tol = rate_tol(n) if m in RATE_METHODS else CONT_TOL
        c.num(f"{path}.{m}", a.get(m), b.get(m), tol, "rate" if m in RATE_METHODS else "continuous")


def cmp_target(c, path, a, b):
    for key in ("name", "n", "n_labelled", "labelled"):
        c.exact(f"{path}.{key}", a.get(key), b.get(key))
    n = a["n"]
    nl = a.get("n_labelled") or n
    c.num(f"{path}.true_accuracy", a.get("true_accuracy"), b.get("true_accuracy"), rate_tol(nl), "rate")
    for mode in ("raw", "ts"):
        cmp_estimates(c, f"{path}.estimates.{mode}", a["estimates"][mode], b["estimates"][mode], n)
        ca, cb = a["cpc"][mode], b["cpc"][mode]
        c.num(f"{path}.cpc.{mode}.q", ca["q"], cb["q"], CONT_TOL, "continuous")
        # alpha* = 1 - i/(n+1) is about the source (n_source rows): checked against it below
        c.cpc_alpha.append((f"{path}.cpc.{mode}.alpha", ca["alpha"], cb["alpha"]))
        la, lb = a["conformal"][mode], b["conformal"][mode]
        c.exact(f"{path}.conformal.{mode}.len", len(la), len(lb))
        for i, (x, y) in enumerate(zip(la, lb)):
            p = f"{path}.conformal.{mode}[{i}]"
            c.exact(f"{p}.alpha", x["alpha"], y["alpha"])
            c.num(f"{p}.qhat", x["qhat"], y["qhat"], CONT_TOL, "continuous")
            for key in ("mean_set_size", "singleton_rate", "empty_rate"):
                c.num(f"{p}.{key}", x[key], y[key], rate_tol(n), "rate")
            c.num(f"{p}.coverage", x["coverage"], y["coverage"], rate_tol(nl), "rate")
    ga, gb = a.get("groups", {}), b.get("groups", {})
    c.exact(f"{path}.groups.keys", sorted(ga), sorted(gb))
    for g in sorted(set(ga) & set(gb)):
        xa = {e["id"]: e for e in ga[g]}
        xb = {e["id"]: e for e in gb[g]}
        c.exact(f"{path}.groups.{g}.ids", sorted(xa), sorted(xb))
        for gid in sorted(set(xa) & set(xb)):
            ea, eb = xa[gid], xb[gid]
            p = f"{path}.groups.{g}[{gid}]"
            c.exact(f"{p}.n", ea["n"], eb["n"])
            c.num(f"{p}.true_accuracy", ea["true_accuracy"], eb["true_accuracy"], rate_tol(ea["n"]), "rate")
            for mode in ("raw", "ts"):
                cmp_estimates(c, f"{p}.estimates.{mode}", ea["estimates"][mode], eb["estimates"][mode], ea["n"])


def mae_rate_tol(a, row):
    """Mean of 2/n over the (target or group) entries a MAE row averages, + 1e-6."""
    if "_" in row:
        g = row.split("_")[0]
        ns = [e["n"] for t in a["targets"] for e in t.get("groups", {}).get(g, [])
              if e["true_accuracy"] is not None]
    else:
        ns = [t["n"] for t in a["targets"] if t["true_accuracy"] is not None]
    return (sum(2.0 / n for n in ns) / len(ns) if ns else 0.0) + 1e-6


def compare(a, b):
    c = Cmp()
    c.cpc_alpha = []
    c.exact("alphas", a.get("alphas"), b.get("alphas"))
    sa, sb = a["source"], b["source"]
    for key in ("name", "n", "k", "converged"):
        c.exact(f"source.{key}", sa.get(key), sb.get(key))
    ns = sa["n"]
    c.num("source.accuracy", sa["accuracy"], sb["accuracy"], rate_tol(ns), "rate")
    c.num("source.temperature", sa["temperature"], sb["temperature"],
          T_REL_TOL * abs(sa["temperature"]), "temperature (rel)")
    for key in ("nll_before", "nll_after", "ece_before", "ece_after"):
        c.num(f"source.{key}", sa[key], sb[key], CONT_TOL, "continuous")
    ta = {t["name"]: t for t in a["targets"]}
    tb = {t["name"]: t for t in b["targets"]}
    c.exact("targets (names, in order)", [t["name"] for t in a["targets"]], [t["name"] for t in b["targets"]])
    for name in [t["name"] for t in a["targets"] if t["name"] in tb]:
        cmp_target(c, f"targets[{name}]", ta[name], tb[name])
    for path, x, y in c.cpc_alpha:
        c.num(path, x, y, rate_tol(ns), "rate")
    ma, mb = a.get("mae", {}), b.get("mae", {})
    c.exact("mae.keys", sorted(ma), sorted(mb))
    for row in sorted(set(ma) & set(mb)):
        for m in sorted(set(ma[row]) | set(mb[row])):
            tol = mae_rate_tol(a, row) if m in RATE_METHODS else CONT_TOL
            c.num(f"mae.{row}.{m}", ma[row].get(m), mb[row].get(m), tol,
                  "rate" if m in RATE_METHODS else "continuous")
    return c


def main():
    ap = argparse.ArgumentParser(description="compare two conformal-gpu reports")
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--verbose", action="store_true", help="also print the worst case per kind")
    args = ap.parse_args()
    with open(args.a) as f:
        a = json.load(f)
    with open(args.b) as f:
        b = json.load(f)
    c = compare(a, b)
    for m in c.mismatches:
        print("MISMATCH", m)
    for kind, (ratio, path, x, y) in sorted(c.worst.items()):
        if args.verbose or ratio > 1:
            print(f"worst {kind}: {path}: {x!r} vs {y!r} ({ratio:.3g} of tolerance)")
    print(f"{c.checked} values checked, {len(c.mismatches)} mismatches")
    sys.exit(1 if c.mismatches else 0)


if __name__ == "__main__":
    main()
