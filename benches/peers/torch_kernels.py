#!/usr/bin/env python3
"""PyTorch CUDA peers of the crate's kernels (same CLI and JSON shape as numpy_kernels.py).

    python3 benches/peers/torch_kernels.py --data FILE.npz|FILE.npy [--n 1e6,1e7,1e8]
        [--repeat R] [--warmup W] [--ops ...] [--json [FILE]]
    python3 benches/peers/torch_kernels.py --synthetic --n 1e8 --json out.json

Inputs are tiled on the device, in order, from the loaded file up to N rows (or generated on
the device with a fixed seed with --synthetic). Without CUDA the script says so (and writes
{"error": ...} with --json) and exits with status 2. Ops:
- softmax        torch.softmax(z / T, dim=1), float32
- lac            1 - softmax(z / T).gather(y)
- sort           torch.sort of N float32 scores (torch always also writes int64 indices)
- kthvalue_1     torch.kthvalue once, k of DESIGN 2.5 at alpha = 0.1
- kthvalue_10    torch.kthvalue once per level for the 10 levels of numpy_kernels.py (total)
- pvalues        torch.searchsorted of all N*K entries 1 - p_k in the sorted scores of the first
                 --n-cal rows, p = (1 + #{s >= r}) / (n+1), then credibility / confidence
- temperature_newton  DESIGN 2.2's safeguarded Newton on b = 1/T, float64 sums on the device:
                 the exact optimum every LBFGS run is measured against
- temperature_lbfgs   torch.optim.LBFGS on ln T (lr = 1, strong Wolfe line search, tight
                 tolerances) with F.cross_entropy(z / T, y): iterations, closure calls and the
                 final T's relative error against the Newton optimum
- temperature_lbfgs_naive  the widespread recipe (T = 1.5 as a parameter, LBFGS(lr=0.01,
                 max_iter=50), one .step()): its T's relative error shows it stops short
Timing: W untimed warm-ups, then R runs each bracketed by CUDA events (torch.cuda.synchronize()
before and after); median, min, max, quartiles in seconds; bytes = the minimum the op must
read and write; GB/s at the median.
"""

import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

LEVELS = (0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05, 0.02, 0.01)
ALL_OPS = ("softmax", "lac", "sort", "kthvalue_1", "kthvalue_10", "pvalues",
           "temperature_newton", "temperature_lbfgs", "temperature_lbfgs_naive")
SCORE_OPS = ("sort", "kthvalue_1", "kthvalue_10")
F32, I64 = 4, 8


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help=".npz prediction set or .npy float32 scores")
    ap.add_argument("--synthetic", action="store_true", help="generate K=2 logits on the device")
    ap.add_argument("--seed", type=int, default=0, help="seed of --synthetic")
    ap.add_argument("--n", default="1000000,10000000,100000000", help="row counts, comma-separated")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--fit-repeat", type=int, default=None, help="repeats of the fits (default --repeat)")
    ap.add_argument("--ops", default=",".join(ALL_OPS), help="comma-separated subset of " + ",".join(ALL_OPS))
    ap.add_argument("--temperature", type=float, default=1.5, help="T of softmax/lac/pvalues")
    ap.add_argument("--n-cal", type=int, default=33560, help="calibration rows of the p-value pass")
    ap.add_argument("--lbfgs-dtype", choices=("float32", "float64"), default="float32",
                    help="dtype of the logits the LBFGS fits see")
    ap.add_argument("--json", nargs="?", const="-", help="write JSON to FILE (or stdout with no FILE)")
    args = ap.parse_args()
    args.ops = [o for o in args.ops.split(",") if o]
    unknown = set(args.ops) - set(ALL_OPS)
    if unknown:
        ap.error(f"unknown ops: {sorted(unknown)}")
    if not args.data and not args.synthetic:
        ap.error("give --data FILE or --synthetic")
    args.fit_repeat = args.fit_repeat or args.repeat
    return args


class Bench:
    def __init__(self, torch, args, log):
        self.torch, self.args, self.log = torch, args, log

    def timed(self, fn, repeat):
        torch = self.torch
        out = None
        for _ in range(self.args.warmup):
            out = fn()
        torch.cuda.synchronize()
        times, walls = [], []
        for _ in range(repeat):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            w0 = time.perf_counter()
            start.record()
            out = fn()
            end.record()
            torch.cuda.synchronize()
            walls.append(time.perf_counter() - w0)
            times.append(start.elapsed_time(end) / 1e3)
        stats = C.summarize(times)
        stats["wall_median_s"] = C.summarize(walls)["median_s"]
        return stats, out


def nll_sums_f64(torch, z, y, b, block=1 << 24):
    """NLL, dNLL/db, d2NLL/db2 at b = 1/T in float64 on the device (DESIGN 2.2)."""
    tot = torch.zeros(3, dtype=torch.float64, device=z.device)
    for i in range(0, z.shape[0], block):
        d = z[i:i + block].double()
        d = d - d.max(dim=1, keepdim=True).values
        e = torch.exp(b * d)
        s = e.sum(dim=1)
        p = e / s[:, None]
        ez = (p * d).sum(dim=1)
        var = (p * (d - ez[:, None]) ** 2).sum(dim=1)
        dy = d.gather(1, y[i:i + block, None])[:, 0]
        tot += torch.stack([(torch.log(s) - b * dy).sum(), (ez - dy).sum(), var.sum()])
    t = (tot / z.shape[0]).tolist()
    return t[0], t[1], t[2]


def fit_newton(torch, z, y):
    """common.fit_temperature_newton with the passes on the device."""
    sums = lambda b: nll_sums_f64(torch, z, y, b)  # noqa: E731
    lo, hi = 1.0 / C.T_MAX, 1.0 / C.T_MIN
    b = 1.0
    nll, g, h = sums(b)
    it = 1
    if g == 0.0:
        return dict(temperature=1.0, nll=nll, iterations=it, converged=True)
    if g < 0.0:
        nb, gb, hb = sums(hi)
        it += 1
        if gb < 0.0 or (gb == 0.0 and hb == 0.0):
            return dict(temperature=C.T_MIN, nll=nb, iterations=it, converged=False)
        lo = b
    else:
        nb, gb, hb = sums(lo)
        it += 1
        if gb > 0.0:
            return dict(temperature=C.T_MAX, nll=nb, iterations=it, converged=False)
        hi = b
    while True:
        newton = b - g / h if h > 0.0 else float("nan")
        nxt = newton if lo < newton < hi else math.sqrt(lo * hi)
        if abs(nxt - b) <= C.NEWTON_REL_TOL * b:
            return dict(temperature=1.0 / nxt, nll=nll, iterations=it, converged=True)
        if it >= C.NEWTON_MAX_ITER:
            return dict(temperature=1.0 / b, nll=nll, iterations=it, converged=False)
        b = nxt
        nll, g, h = sums(b)
        it += 1
        if g > 0.0:
            hi = b
        elif g < 0.0:
            lo = b
        else:
            return dict(temperature=1.0 / b, nll=nll, iterations=it, converged=True)


def fit_lbfgs(torch, z, y):
    """LBFGS on u = ln T (T stays positive), run to convergence: strong Wolfe line search,
    tolerances below float32 resolution, up to 200 iterations."""
    import torch.nn.functional as F

    u = torch.zeros(1, dtype=z.dtype, device=z.device, requires_grad=True)
    opt = torch.optim.LBFGS([u], lr=1.0, max_iter=200, max_eval=400, tolerance_grad=1e-12,
                            tolerance_change=1e-15, history_size=10, line_search_fn="strong_wolfe")
    calls = [0]

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z / torch.exp(u), y)
        loss.backward()
        calls[0] += 1
        return loss

    opt.step(closure)
    n_iter = opt.state[opt.param_groups[0]["params"][0]]["n_iter"]
    return dict(temperature=math.exp(u.item()), closure_calls=calls[0], iterations=int(n_iter))


def fit_lbfgs_naive(torch, z, y):
    """The common recipe: T = 1.5 as the parameter, LBFGS(lr=0.01, max_iter=50), one step."""
    import torch.nn.functional as F

    t = torch.full((1,), 1.5, dtype=z.dtype, device=z.device, requires_grad=True)
    opt = torch.optim.LBFGS([t], lr=0.01, max_iter=50)
    calls = [0]

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z / t, y)
        loss.backward()
        calls[0] += 1
        return loss

    opt.step(closure)
    n_iter = opt.state[opt.param_groups[0]["params"][0]]["n_iter"]
    return dict(temperature=t.item(), closure_calls=calls[0], iterations=int(n_iter))


def synthetic(torch, n, seed, dev):
    """K = 2 logits (0, z): labels balanced, z = (2y - 1) * |N(2.5, 2)| flipped with prob 0.12."""
    g = torch.Generator(device=dev)
    g.manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g, device=dev)
    margin = torch.randn(n, generator=g, device=dev) * 2.0 + 2.5
    flip = torch.rand(n, generator=g, device=dev) < 0.12
    sign = (2 * y - 1).float() * torch.where(flip, -1.0, 1.0)
    z = torch.stack([torch.zeros(n, device=dev), sign * margin.abs()], dim=1).contiguous()
    return z, y


def run_size(torch, bench, src, n, args):
    dev = torch.device("cuda")
    log = bench.log
    ops, extra = {}, {}
    is_scores = src is not None and "scores" in src
    if src is None:
        z, y = synthetic(torch, n, args.seed, dev)
    elif is_scores:
        s0 = torch.from_numpy(src["scores"]).to(dev)
        scores = s0[torch.arange(n, device=dev) % s0.shape[0]].contiguous()
        del s0
    else:
        z0 = torch.from_numpy(src["logits"]).to(dev)
        y0 = torch.from_numpy(src["labels"]).to(dev)
        idx = torch.arange(n, device=dev) % z0.shape[0]
        z, y = z0[idx].contiguous(), y0[idx].contiguous()
        del z0, y0, idx
        y = torch.where(y < 0, z.argmax(dim=1), y)  # unknown labels: yhat (timing only)
    k = 1 if is_scores else z.shape[1]
    t = args.temperature
    if not is_scores:
        scores = 1.0 - torch.softmax(z, dim=1).gather(1, y[:, None])[:, 0]
    torch.cuda.synchronize()

    def record(name, fn, nbytes, reps=None):
        if name not in args.ops or (is_scores and name not in SCORE_OPS):
            return None
        stats, out = bench.timed(fn, reps or args.repeat)
        if callable(nbytes):
            nbytes = nbytes(out)
        stats.update(n=n, bytes=nbytes, gbps=nbytes / stats["median_s"] / 1e9)
        ops[name] = stats
        log(f"  {name:<24} median {stats['median_s'] * 1e3:10.3f} ms  [{stats['min_s'] * 1e3:.3f}, "
            f"{stats['max_s'] * 1e3:.3f}]  {stats['gbps']:7.1f} GB/s")
        return out

    if not is_scores:
        record("softmax", lambda: torch.softmax(z / t, dim=1), 2 * n * k * F32)
        record("lac", lambda: 1.0 - torch.softmax(z / t, dim=1).gather(1, y[:, None])[:, 0],
               n * k * F32 + n * I64 + n * F32)

    srt = record("sort", lambda: torch.sort(scores), 2 * n * F32)
    ks = [C.conformal_k(n, a) for a in LEVELS]
    valid = [kk for kk in ks if kk is not None]
    k1 = C.conformal_k(n, 0.1)
    one = record("kthvalue_1", lambda: torch.kthvalue(scores, k1).values, n * F32)
    ten = record("kthvalue_10", lambda: [torch.kthvalue(scores, kk).values for kk in valid],
                 len(valid) * n * F32)
    if ten is not None:
        vals = [v.item() for v in ten]
        extra["select_levels"] = {"alphas": list(LEVELS), "k": ks, "values": vals}
        if srt is not None:
            sv = srt.values
            ok = all(sv[kk - 1].item() == v for kk, v in zip(valid, vals))
            extra["select_levels"]["equal_to_sort"] = ok
            if not ok:
                log("  WARNING: kthvalue disagrees with sort")
    del srt, one, ten

    if not is_scores and "pvalues" in args.ops:
        n_cal = min(args.n_cal, n)
        cal = torch.sort(scores[:n_cal]).values
        r = 1.0 - torch.softmax(z / t, dim=1)

        def pv():
            at_least = n_cal - torch.searchsorted(cal, r, right=False)
            p = (1.0 + at_least.double()) / (n_cal + 1.0)
            top = torch.topk(p, 2, dim=1).values
            return top[:, 0].float(), (1.0 - top[:, 1]).float()

        record("pvalues", pv, n * k * F32 + 2 * n * F32 + n_cal * F32)
        extra["pvalues_n_cal"] = n_cal
        del r, cal

    if not is_scores:
        per_pass = n * k * F32 + n * I64
        exact = record("temperature_newton", lambda: fit_newton(torch, z, y),
                       lambda f: f["iterations"] * per_pass, reps=args.fit_repeat)
        if exact is None and any(o.startswith("temperature_lbfgs") for o in args.ops):
            exact = fit_newton(torch, z, y)  # the reference, untimed
        if exact is not None:
            extra["temperature_newton"] = exact
        zf = z if args.lbfgs_dtype == "float32" else z.double()
        for name, fn in (("temperature_lbfgs", fit_lbfgs), ("temperature_lbfgs_naive", fit_lbfgs_naive)):
            res = record(name, lambda fn=fn: fn(torch, zf, y), lambda f: f["closure_calls"] * per_pass,
                         reps=args.fit_repeat)
            if res is None:
                continue
            res["dtype"] = args.lbfgs_dtype
            res["nll"] = nll_sums_f64(torch, z, y, 1.0 / res["temperature"])[0]
            if exact is not None:
                res["rel_err_vs_newton"] = abs(res["temperature"] - exact["temperature"]) / exact["temperature"]
                res["nll_minus_newton_nll"] = res["nll"] - exact["nll"]
            extra[name] = res
        for key in ("temperature_newton", "temperature_lbfgs", "temperature_lbfgs_naive"):
            if key in extra:
                log(f"    {key}: " + ", ".join(f"{a}={b:.10g}" if isinstance(b, float) else f"{a}={b}"
                                              for a, b in extra[key].items()))
    return {"n": n, "k": k, "ops": ops, **extra}


def main():
    args = parse_args()
    to_stdout = args.json == "-"

    def log(msg):
        print(msg, file=sys.stderr if to_stdout else sys.stdout, flush=True)

    def emit(result):
        if args.json:
            text = json.dumps(result, indent=1)
            if to_stdout:
                print(text)
            else:
                with open(args.json, "w") as f:
                    f.write(text + "\n")
                log(f"wrote {args.json}")

    result = {"tool": "torch", "python": platform.python_version(), "argv": sys.argv}
    try:
        import torch
    except ImportError:
        log("PyTorch is not installed: nothing measured")
        emit({**result, "error": "torch not installed"})
        sys.exit(2)
    result.update(torch=torch.__version__, cuda=torch.version.cuda)
    if not torch.cuda.is_available():
        log("CUDA is not available (torch.cuda.is_available() is False): nothing measured")
        emit({**result, "error": "CUDA is not available"})
        sys.exit(2)
    torch.backends.cuda.matmul.allow_tf32 = False
    props = torch.cuda.get_device_properties(0)
    result.update(gpu=props.name, gpu_memory_bytes=props.total_memory, data=args.data,
                  synthetic=args.synthetic, seed=args.seed, repeat=args.repeat, warmup=args.warmup,
                  fit_repeat=args.fit_repeat, temperature_T=args.temperature, runs=[])

    src = None
    if args.data and args.data.endswith(".npy"):
        src = {"scores": np.ascontiguousarray(np.load(args.data).astype(np.float32).reshape(-1))}
    elif args.data:
        src = C.load_npz(args.data)
    bench = Bench(torch, args, log)
    for n in [int(float(v)) for v in args.n.split(",")]:
        log(f"n = {n} ({args.data or 'synthetic'}, torch {torch.__version__}, {props.name})")
        try:
            result["runs"].append(run_size(torch, bench, src, n, args))
        except torch.cuda.OutOfMemoryError as e:
            log(f"  out of memory at n = {n}: {e}")
            result["runs"].append({"n": n, "error": "out of memory"})
        torch.cuda.empty_cache()
    emit(result)


if __name__ == "__main__":
    main()
