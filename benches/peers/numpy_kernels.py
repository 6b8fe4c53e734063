#!/usr/bin/env python3
"""numpy (CPU) peers of the crate's kernels, timed one op at a time.

    python3 benches/peers/numpy_kernels.py --data FILE.npz|FILE.npy [--n 1000000,10000000]
        [--repeat R] [--warmup W] [--ops softmax,sort,...] [--json [FILE]]

Input: a prediction set `.npz` (logits [N, K], labels) or a `.npy` of float32 scores (then only
sort, select_10, select_1 run). `--n` takes the first N rows or tiles the file in order up to N
rows (several comma-separated sizes run one after another). Ops (DESIGN.md section 2):
- softmax      p = exp((z - m)/T) / sum, float32, on [N, K] with axis=1 reductions (the usual code)
- softmax_cm   the same on class-major [K, N] logits (the transpose is made before timing)
- lac          s = 1 - p_y from the class-major logits and the labels (float32)
- sort         np.sort of the N float32 LAC scores at T = 1
- select_10    exact order statistics for 10 levels at once: one np.partition with 10 kth
               (k of DESIGN 2.5 for alpha in LEVELS), then the 10 elements
- select_1     the same for alpha = 0.1 alone
- pvalues      conformal p-values (DESIGN 2.6) of all N*K entries 1 - p_k against the sorted
               LAC scores of the first --n-cal rows (searchsorted), then per-row credibility and
               confidence
- temperature  safeguarded Newton on b = 1/T (float64 sums, DESIGN 2.2), to |db| <= 1e-7 b
- temperature_scipy  scipy.optimize.minimize_scalar (bounded Brent on ln T), then brentq on
               dNLL/db to pin the minimiser; the final T and NLL are reported and checked
               against the Newton optimum
Each op: W untimed warm-up runs, then R timed runs (time.perf_counter): median, min, max,
quartiles (s), bytes moved (the minimum an implementation must read and write) and GB/s at the
median. numpy here is single-threaded for every op (no BLAS call is involved).
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

LEVELS = (0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05, 0.02, 0.01)
ALL_OPS = ("softmax", "softmax_cm", "lac", "sort", "select_10", "select_1", "pvalues",
           "temperature", "temperature_scipy")
SCORE_OPS = ("sort", "select_10", "select_1")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed(fn, repeat, warmup):
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return C.summarize(times), out


def run_size(src, n, args, log):
    """Every requested op at n rows. Returns the run's JSON dict."""
    ops = {}
    extra = {}
    is_scores = "scores" in src
    if is_scores:
        scores = C.resize_rows(src["scores"], n)
        k = 1
    else:
        z = C.resize_rows(src["logits"], n)
        y = C.resize_rows(src["labels"], n)
        if np.any(y < 0):
            y = np.where(y < 0, np.argmax(z, axis=1), y)  # unknown labels: use yhat (timing only)
        k = z.shape[1]
        zt = np.ascontiguousarray(z.T)  # class-major copy for the *_cm ops and lac
        scores = C.lac_scores_f32(zt, y, 1.0)
    t = np.float32(args.temperature)
    F32, I64 = 4, 8

    def record(name, fn, nbytes, reps=None):
        if name not in args.ops or (is_scores and name not in SCORE_OPS):
            return None
        stats, out = timed(fn, reps or args.repeat, args.warmup)
        if callable(nbytes):  # depends on the result (passes of a fit)
            nbytes = nbytes(out)
        stats.update(n=n, bytes=nbytes, gbps=nbytes / stats["median_s"] / 1e9)
        ops[name] = stats
        log(f"  {name:<18} median {stats['median_s'] * 1e3:10.2f} ms  [{stats['min_s'] * 1e3:.2f}, "
            f"{stats['max_s'] * 1e3:.2f}]  {stats['gbps']:6.2f} GB/s")
        return out

    if not is_scores:
        record("softmax", lambda: C.softmax_f32(z, t), 2 * n * k * F32)
        record("softmax_cm", lambda: C.softmax_f32_cm(zt, t), 2 * n * k * F32)
        record("lac", lambda: C.lac_scores_f32(zt, y, t), n * k * F32 + n * I64 + n * F32)

    srt = record("sort", lambda: np.sort(scores), 2 * n * F32)
    if srt is not None:
        assert np.all(srt[1:] >= srt[:-1])
    ks = [C.conformal_k(n, a) for a in LEVELS]
    kth = np.array([kk - 1 for kk in ks if kk is not None])

    def select(kth_):
        part = np.partition(scores, kth_)
        return part[kth_]

    sel = record("select_10", lambda: select(kth), 2 * n * F32)
    if sel is not None:
        extra["select_levels"] = {"alphas": list(LEVELS), "k": ks, "values": [float(v) for v in sel]}
        if srt is not None:
            assert np.array_equal(sel, srt[kth]), "partition disagrees with sort"
    k1 = C.conformal_k(n, 0.1)
    record("select_1", lambda: select(np.array([k1 - 1])), 2 * n * F32)

    if not is_scores and "pvalues" in args.ops:
        n_cal = min(args.n_cal, n)
        cal = np.sort(scores[:n_cal])
        r = np.float32(1.0) - C.softmax_f32(z, t)

        def pv():
            p = C.pvalues(cal, r)
            if k == 2:
                cred, second = p.max(axis=1), p.min(axis=1)
            else:
                part = np.partition(p, k - 2, axis=1)
                cred, second = part[:, k - 1], part[:, k - 2]
            return cred.astype(np.float32), (1.0 - second).astype(np.float32)

        record("pvalues", pv, n * k * F32 + 2 * n * F32 + n_cal * F32)
        extra["pvalues_n_cal"] = n_cal
        del r

    if not is_scores:
        per_pass = n * k * F32 + n * I64
        # bytes: one read of logits and labels per pass over the data
        fit = record("temperature", lambda: C.fit_temperature_newton(z, y),
                     lambda f: f["iterations"] * per_pass, reps=args.fit_repeat)
        if fit is not None:
            extra["temperature"] = fit
        fs = record("temperature_scipy", lambda: C.fit_temperature_scipy(z, y),
                    lambda f: f["nfev"] * per_pass, reps=args.fit_repeat)
        if fs is not None:
            if fit is not None:
                fs["rel_diff_vs_newton"] = abs(fs["temperature"] - fit["temperature"]) / fit["temperature"]
                fs["brent_only_rel_diff_vs_newton"] = abs(fs["t_brent"] - fit["temperature"]) / fit["temperature"]
                fs["nll_minus_newton_nll"] = fs["nll"] - fit["nll"]
            extra["temperature_scipy"] = fs
        for key in ("temperature", "temperature_scipy"):
            if key in extra:
                log(f"    {key}: " + ", ".join(f"{a}={b:.10g}" if isinstance(b, float) else f"{a}={b}"
                                              for a, b in extra[key].items()))
    return {"n": n, "k": k, "ops": ops, **extra}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help=".npz prediction set or .npy float32 scores")
    ap.add_argument("--n", default=None, help="row counts (comma-separated); default: the file's")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--fit-repeat", type=int, default=None,
                    help="repeats of the temperature fits (default: --repeat)")
    ap.add_argument("--ops", default=",".join(ALL_OPS), help="comma-separated subset of " + ",".join(ALL_OPS))
    ap.add_argument("--temperature", type=float, default=1.5, help="T of softmax/lac/pvalues")
    ap.add_argument("--n-cal", type=int, default=33560, help="calibration rows of the p-value pass")
    ap.add_argument("--json", nargs="?", const="-", help="write JSON to FILE (or stdout with no FILE)")
    args = ap.parse_args()
    args.ops = [o for o in args.ops.split(",") if o]
    unknown = set(args.ops) - set(ALL_OPS)
    if unknown:
        sys.exit(f"unknown ops: {sorted(unknown)}")
    args.fit_repeat = args.fit_repeat or args.repeat
    to_stdout = args.json == "-"

    def log(msg):
        print(msg, file=sys.stderr if to_stdout else sys.stdout, flush=True)

    if args.data.endswith(".npy"):
        s = np.load(args.data).astype(np.float32, copy=False).reshape(-1)
        src = {"scores": np.ascontiguousarray(s)}
        n0 = s.shape[0]
    else:
        src = C.load_npz(args.data)
        n0 = src["logits"].shape[0]
    sizes = [int(float(v)) for v in args.n.split(",")] if args.n else [n0]

    result = {"tool": "numpy", "numpy": np.__version__, "python": platform.python_version(),
              "cpu": cpu_model(), "cpus": os.cpu_count(), "data": args.data, "file_rows": n0,
              "repeat": args.repeat, "warmup": args.warmup, "fit_repeat": args.fit_repeat,
              "temperature_T": args.temperature, "argv": sys.argv, "runs": []}
    try:
        import scipy
        result["scipy"] = scipy.__version__
    except ImportError:
        result["scipy"] = None
    for n in sizes:
        log(f"n = {n} ({args.data}, numpy {np.__version__}, {result['cpu']})")
        result["runs"].append(run_size(src, n, args, log))
    if args.json:
        text = json.dumps(result, indent=1)
        if to_stdout:
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
            log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
