"""Shared helpers of the numpy peers (numpy only; scipy where noted by the callers).

Everything here follows DESIGN.md section 2 literally: probabilities in float32
(shift by the row max, then divide by T, exp, normalise), sums over rows in float64.
"""

import math
import statistics
import time

import numpy as np

T_MIN, T_MAX = 1e-3, 1e3  # temperature bracket (DESIGN 2.2)
NEWTON_REL_TOL = 1e-7  # |delta b| <= 1e-7 b (DESIGN 2.2)
NEWTON_MAX_ITER = 50
ECE_BINS = 15


# ------------------------------------------------------------------ data

def load_npz(path):
    """Reads a prediction set (DESIGN 1): returns dict(logits f32 [N,K], labels i64 [N],
    hospital, slide (i64 [N] or None))."""
    with np.load(path, allow_pickle=False) as f:
        z = np.asarray(f["logits"])
        if z.ndim == 1 or (z.ndim == 2 and z.shape[1] == 1):
            z = z.reshape(-1)
            z = np.stack([np.zeros_like(z), z], axis=1)  # binary logit -> (0, z)
        z = np.ascontiguousarray(z, dtype=np.float32)
        n = z.shape[0]
        y = np.asarray(f["labels"], dtype=np.int64) if "labels" in f else np.full(n, -1, np.int64)
        out = {"logits": z, "labels": y}
        for g in ("hospital", "slide"):
            out[g] = np.asarray(f[g], dtype=np.int64) if g in f else None
    return out


def resize_rows(a, n):
    """First n rows of `a`, or `a` tiled (deterministically, in order) up to n rows."""
    if a is None:
        return None
    if n <= a.shape[0]:
        return np.ascontiguousarray(a[:n])
    reps = -(-n // a.shape[0])
    return np.ascontiguousarray(np.concatenate([a] * reps, axis=0)[:n])


# ------------------------------------------------------------------ section 2 kernels

def reduce_rows(ufunc, a):
    """ufunc over the K rows of a class-major [K, N] array, in class order (as the crate's
    sequential per-row loops): K - 1 vectorised passes, faster in numpy than .reduce(axis=0)."""
    out = a[0].copy()
    for j in range(1, a.shape[0]):
        ufunc(out, a[j], out=out)
    return out


def softmax_f32(z, t):
    """DESIGN 2.1: p = exp((z - m)/T) / sum exp((z - m)/T), m = row max, in float32."""
    t = np.float32(t)
    e = z - z.max(axis=1, keepdims=True)
    e /= t
    np.exp(e, out=e)
    e /= e.sum(axis=1, keepdims=True)
    return e


def softmax_f32_cm(zt, t):
    """The same softmax on class-major logits zt [K, N] (the transpose of z): every reduction
    runs across K contiguous rows, which numpy vectorises far better than a reduction over a
    short last axis; sums over classes run in class order, as the crate's do."""
    t = np.float32(t)
    e = zt - reduce_rows(np.maximum, zt)
    e /= t
    np.exp(e, out=e)
    e /= reduce_rows(np.add, e)
    return e


def lac_scores_f32(zt, y, t):
    """DESIGN 2.4 from class-major logits zt [K, N]: s_i = 1 - p_{y_i}, float32; only p_y is
    normalised."""
    t = np.float32(t)
    e = zt - reduce_rows(np.maximum, zt)
    e /= t
    np.exp(e, out=e)
    s = reduce_rows(np.add, e)
    n = zt.shape[1]
    py = e.reshape(-1)[y * n + np.arange(n)] / s
    return np.float32(1.0) - py


def conformal_k(n, alpha):
    """DESIGN 2.5: k = round(x) if |x - round(x)| <= 1e-9 (n+1) else ceil(x), x = (n+1)(1-alpha).
    Returns None when k > n (qhat = +inf); k >= 1."""
    x = (n + 1) * (1.0 - alpha)
    r = float(round(x))  # Python rounds half to even; only matters at x = j + 0.5, where ceil is taken anyway
    k = r if abs(x - r) <= 1e-9 * (n + 1) else math.ceil(x)
    k = max(int(k), 1)
    return k if k <= n else None


def nll_sums_f64(z, y, b, block=1 << 16):
    """NLL, dNLL/db, d2NLL/db2 at b = 1/T, one pass, float64 (DESIGN 2.2). Rows go through in
    blocks, transposed to class-major [K, B] so every reduction over classes is a vectorised
    sum of K contiguous rows, and the float64 temporaries stay in cache; block sums add in
    float64."""
    tot = np.zeros(3)
    for i in range(0, z.shape[0], block):
        d = z[i:i + block].T.astype(np.float64, order="C")  # [K, B]
        d -= reduce_rows(np.maximum, d)
        e = np.exp(b * d)
        s = reduce_rows(np.add, e)
        p = e / s
        ez = reduce_rows(np.add, p * d)
        var = reduce_rows(np.add, p * (d - ez) ** 2)
        yb = y[i:i + block]
        dy = d.reshape(-1)[yb * d.shape[1] + np.arange(d.shape[1])]
        tot += ((np.log(s) - b * dy).sum(), (ez - dy).sum(), var.sum())
    n = z.shape[0]
    return float(tot[0] / n), float(tot[1] / n), float(tot[2] / n)


def fit_temperature_newton(z, y):
    """Safeguarded Newton on b = 1/T in [1/T_MAX, 1/T_MIN] (DESIGN 2.2).
    Returns dict(temperature, nll, iterations, converged)."""
    lo, hi = 1.0 / T_MAX, 1.0 / T_MIN
    b = 1.0
    nll, g, h = nll_sums_f64(z, y, b)
    it = 1
    if g == 0.0:
        return dict(temperature=1.0, nll=nll, iterations=it, converged=True)
    if g < 0.0:  # minimum at larger b (smaller T)
        nb, gb, hb = nll_sums_f64(z, y, hi)
        it += 1
        if gb < 0.0 or (gb == 0.0 and hb == 0.0):
            return dict(temperature=T_MIN, nll=nb, iterations=it, converged=False)
        lo = b
    else:
        nb, gb, hb = nll_sums_f64(z, y, lo)
        it += 1
        if gb > 0.0:
            return dict(temperature=T_MAX, nll=nb, iterations=it, converged=False)
        hi = b
    while True:
        newton = b - g / h if h > 0.0 else float("nan")
        nxt = newton if lo < newton < hi else math.sqrt(lo * hi)
        if abs(nxt - b) <= NEWTON_REL_TOL * b:
            return dict(temperature=1.0 / nxt, nll=nll, iterations=it, converged=True)
        if it >= NEWTON_MAX_ITER:
            return dict(temperature=1.0 / b, nll=nll, iterations=it, converged=False)
        b = nxt
        nll, g, h = nll_sums_f64(z, y, b)
        it += 1
        if g > 0.0:
            hi = b
        elif g < 0.0:
            lo = b
        else:
            return dict(temperature=1.0 / b, nll=nll, iterations=it, converged=True)


def fit_temperature_scipy(z, y):
    """scipy peer: bounded Brent (minimize_scalar) on u = ln T over [ln 1e-3, ln 1e3],
    then the root of dNLL/db by brentq inside the final bracket, which pins the minimiser
    to float64 resolution (a function-value search alone stops near sqrt(eps) relative,
    the NLL being flat at its minimum). Returns dict(temperature, nll, nfev, t_brent)."""
    from scipy.optimize import brentq, minimize_scalar

    nfev = 0

    def f(u):
        nonlocal nfev
        nfev += 1
        return nll_sums_f64(z, y, math.exp(-u))[0]

    res = minimize_scalar(f, bounds=(math.log(T_MIN), math.log(T_MAX)), method="bounded",
                          options={"xatol": 1e-6})
    t_brent = math.exp(res.x)

    def grad(b):
        nonlocal nfev
        nfev += 1
        return nll_sums_f64(z, y, b)[1]

    b0 = 1.0 / t_brent
    lo, hi = b0 * (1 - 1e-4), b0 * (1 + 1e-4)
    if grad(lo) < 0.0 < grad(hi):
        b = brentq(grad, lo, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps)
    else:  # bracket too tight (or the minimum on a bound): keep Brent's answer
        b = b0
    return dict(temperature=1.0 / b, nll=nll_sums_f64(z, y, b)[0], nfev=nfev, t_brent=t_brent)


def pvalues(sorted_scores, r):
    """DESIGN 2.6: pi = (1 + #{s_i >= r}) / (n+1) for every entry of r (= 1 - p_k)."""
    n = sorted_scores.shape[0]
    at_least = n - np.searchsorted(sorted_scores, r, side="left")
    return (1.0 + at_least) / (n + 1.0)


# ------------------------------------------------------------------ timing

def summarize(times):
    """Median, min, max, quartiles of a list of seconds."""
    ts = sorted(times)
    q = statistics.quantiles(ts, n=4, method="inclusive") if len(ts) > 1 else [ts[0]] * 3
    return {"median_s": statistics.median(ts), "min_s": ts[0], "max_s": ts[-1],
            "q1_s": q[0], "q3_s": q[2], "repeats": len(ts)}


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0
