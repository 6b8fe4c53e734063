"""Independent check of the crate's conformal scores, thresholds, prediction sets and set
metrics against TorchCP 1.2.1 (DESIGN 2.4, 2.5, 2.13, 2.14), where the definitions match,
with the documented differences counted.

What it checks, on seeded untied data (K = 4, 12, 114; 2000 source rows, 3000 shifted
target rows, every label known; for K = 114 the last class is absent from the source, so
its class-conditional threshold is +inf on both sides), for the deterministic LAC, APS,
RAPS (lambda 0.05, k_reg 2), SAPS (lambda 0.3) and TopK scores at alpha 0.05, 0.1, 0.2,
marginal (SplitPredictor) and class-conditional (ClassConditionalPredictor):

* "ours" is a float64 transcription of DESIGN 2.13 (u = 1) on the crate's float32
  probabilities (``cg.softmax``), held to the crate exactly: the crate's k is DESIGN 2.5's,
  its qhat is this transcription's order statistic bit for bit, and ``predict_sets`` is
  ``ours <= qhat`` cell for cell. TorchCP gets the same float32 probabilities
  (``score_type="identity"``, ``randomized=False``).
* All-label scores ``score_fn(p)`` and label scores ``score_fn(p, y)`` equal ours within
  the float32 summation bound ``tol(s) = (K + 1) 2^-24 max(1, |s|)`` (TorchCP's float32
  cumsum and penalties; our division by Sigma).
* qhat: TorchCP's threshold equals the crate's within tol, +inf together, and TorchCP's
  order statistic is at the crate's k (read off TorchCP's own sorted label scores).
* Sets: ``predict_with_logits`` vs the crate's ``predict_sets``; every differing cell must
  hold a score within 2 tol of qhat (a float32 tie at the threshold).
* Metrics: TorchCP's ``coverage_rate``, ``average_size``, ``CovGap`` (/ 100), ``SSCV``,
  class coverage as ``coverage_rate`` per label, and singleton / empty rates, on TorchCP's
  sets and on the crate's sets, vs the crate's report entry (tolerance 1e-6 max(1, |v|):
  TorchCP computes them in float32). A difference on TorchCP's own sets is only allowed
  where those sets differ (then it is printed, not failed).
* k rule: over n = 1..2000 and a list of levels, TorchCP's k (``calculate_conformal_value``
  on 0..n-1, with alpha a float and, as ClassConditionalPredictor passes it, a float32
  tensor) vs the crate's (``cg.conformal_quantile``), counted; the crate's must be
  DESIGN 2.5's rounding rule.

Documented differences (DESIGN 2.13), counted, not failed:

* SAPS: TorchCP's label score is 0 for a row whose label is its top class, its all-label
  score there is p_max; ours is p_max in both places. Rows "saps" use TorchCP as it is
  (qhat and sets then differ); rows "saps*" give TorchCP's predictors its own all-label
  score read at the label, and these are held to the tolerances above.
* k: TorchCP takes ``ceil((n+1)(1-alpha))`` naively (float alpha for the marginal
  threshold, a float32 alpha tensor for the class-conditional one); DESIGN 2.5 rounds when
  within 1e-9 (n+1) of an integer.
* Randomised scores are not compared (TorchCP draws one U per (row, class), ours one u
  per row; its U is 1 - our u).

How to run (a venv with TorchCP and the crate's Python package)::

    python3 -m venv /tmp/tvenv
    /tmp/tvenv/bin/python -m pip install torch torchcp==1.2.1
    cd conformal-gpu   # the repository root
    CARGO_TARGET_DIR=$PWD/python/target /tmp/tvenv/bin/python -m pip install numpy ./python
    /tmp/tvenv/bin/python scripts/torchcp_compare.py            # --device gpu to try the GPU

Exit status 0 when every check holds, 1 otherwise (the failures are listed).

``--fixture PATH`` (with ``--rows 400,200``) also writes the data and TorchCP's thresholds,
sets and metrics of every held entry to an .npz: python/tests/test_torchcp_fixture.py holds
the crate to them in CI, where torch is not installed.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings

import conformal_gpu as cg
import numpy as np

with warnings.catch_warnings():  # torch's import-time FutureWarning (torch.jit)
    warnings.simplefilter("ignore", FutureWarning)
    import torch
    from torchcp.classification.predictor import (
        ClassConditionalPredictor,
        SplitPredictor,
    )
    from torchcp.classification.score import APS, LAC, RAPS, SAPS, TOPK
    from torchcp.classification.utils.metrics import (
        SSCV,
        CovGap,
        average_size,
        coverage_rate,
    )
    from torchcp.utils.common import calculate_conformal_value

# TorchCP's predictors warn that their (unused) temperature argument is deprecated.
warnings.filterwarnings("ignore", category=DeprecationWarning)

KS = (4, 12, 114)
N_SOURCE, N_TARGET = 2000, 3000
# With --fixture: TorchCP's thresholds, sets and metrics, for the CI test that holds the
# crate to them without torch (python/tests/test_torchcp_fixture.py).
FIXTURE: dict[str, np.ndarray] = {}
ALPHAS = (0.05, 0.1, 0.2)
SCORES = ("lac", "aps", "raps", "saps", "topk")
RAPS_LAMBDA, RAPS_K_REG, SAPS_LAMBDA = 0.05, 2, 0.3
U32 = 2.0**-24
METRICS = (
    "coverage",
    "mean_set_size",
    "singleton_rate",
    "empty_rate",
    "sscv",
    "covgap",
)


# ---------------------------------------------------------------- data and our scores


def make_set(seed: int, n: int, k: int, shift: float, skip_last: bool) -> tuple:
    """Continuous logits float32 [n, k] that favour the label (less so when shifted)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k - 1 if skip_last else k, size=n)
    z = rng.normal(0.0, 1.0 + shift, size=(n, k))
    z[np.arange(n), y] += 2.5 - shift
    return z.astype(np.float32), y.astype(np.int64)


def tied_rows(p: np.ndarray) -> int:
    s = np.sort(p, axis=1)
    return int((np.diff(s, axis=1) == 0).any(axis=1).sum())


def untied_set(seed: int, n: int, k: int, shift: float, skip_last: bool) -> tuple:
    """make_set at the first of seed, seed + 1000, ... whose float32 probabilities (the
    crate's softmax, T = 1) have no tie in any row (f32 exp collides now and then at
    K = 114); returns logits, labels, probabilities and the seed used."""
    for s in range(seed, seed + 50_000, 1000):
        z, y = make_set(s, n, k, shift, skip_last)
        p = cg.softmax(z, t=1.0, device="cpu")
        if tied_rows(p) == 0:
            return z, y, p, s
    raise AssertionError("no untied seed found")


def conformal_rank(n: int, alpha: float) -> int:
    """DESIGN 2.5's k."""
    x = (n + 1) * (1.0 - alpha)
    r = round(x)
    return int(r if abs(x - r) <= 1e-9 * (n + 1) else math.ceil(x))


def our_scores(p: np.ndarray) -> dict[str, np.ndarray]:
    """DESIGN 2.13, deterministic (u = 1), untied rows, float64 from the f32 p: every
    class's score [n, K] per score name."""
    n, k = p.shape
    order = np.argsort(-p, axis=1, kind="stable")
    grid = np.rint(p.astype(np.float64) * 2.0**40).astype(np.int64)
    cum = np.empty_like(grid)  # A + E on the grid (untied: E = the class's own p)
    np.put_along_axis(cum, order, np.cumsum(np.take_along_axis(grid, order, 1), axis=1), 1)
    rank = np.empty((n, k), dtype=np.int64)  # o
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(1, k + 1), (n, k)), 1)
    sigma = grid.sum(axis=1).astype(np.float64)[:, None]
    aps = cum.astype(np.float64) / sigma
    pmax = p.max(axis=1).astype(np.float64)[:, None]
    return {
        "lac": (np.float32(1.0) - p).astype(np.float64),
        "aps": aps,
        "raps": aps + RAPS_LAMBDA * np.maximum(0, rank - RAPS_K_REG),
        "saps": np.where(rank == 1, pmax, pmax + SAPS_LAMBDA * (rank - 1).astype(np.float64)),
        "topk": rank.astype(np.float64),
        "_rank": rank,
    }


def tol(s, k: int):
    """float32 summation bound for a score (or threshold) of size s with K classes."""
    return (k + 1) * U32 * np.maximum(1.0, np.abs(s))


# ---------------------------------------------------------------- TorchCP side


def torchcp_score(name: str):
    if name == "lac":
        return LAC(score_type="identity")
    if name == "aps":
        return APS(score_type="identity", randomized=False)
    if name == "raps":
        return RAPS(
            score_type="identity",
            randomized=False,
            penalty=RAPS_LAMBDA,
            kreg=RAPS_K_REG,
        )
    if name == "saps":
        return SAPS(score_type="identity", randomized=False, weight=SAPS_LAMBDA)
    return TOPK(score_type="identity", randomized=False)


class AtLabel:
    """A TorchCP score whose label score is its own all-label score read at the label
    (the "saps*" rows: SAPS with our label-score convention, computed by TorchCP)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, probs, label=None):
        s = self.fn(probs)
        return s if label is None else s[torch.arange(len(label)), label]


def torchcp_metrics(sets: np.ndarray, y: np.ndarray, alpha: float, k: int) -> dict:
    """TorchCP's metric functions (CovGap back to a fraction) on boolean sets [n, K]."""
    s, t = torch.from_numpy(sets), torch.from_numpy(y)
    size = sets.sum(axis=1)
    return {
        "coverage": coverage_rate(s, t),
        "mean_set_size": average_size(s),
        "singleton_rate": float((size == 1).mean()),
        "empty_rate": float((size == 0).mean()),
        "sscv": SSCV(s, t, alpha),
        "covgap": CovGap(s, t, alpha, k) / 100.0,
        "class_coverage": [
            coverage_rate(s[t == c], t[t == c]) if (y == c).any() else None for c in range(k)
        ],
    }


def metric_diff(want: dict, entry: dict) -> tuple[float, bool]:
    """Max |TorchCP - crate| / max(1, |crate|) over the metrics and class coverage;
    whether each is within 1e-6 (TorchCP's float32) and null where the other is."""
    worst, ok = 0.0, True
    pairs = [(want[m], entry[m]) for m in METRICS]
    pairs += list(zip(want["class_coverage"], entry["class_coverage"]))
    for a, b in pairs:
        if a is None or b is None:
            ok &= a is None and b is None
            continue
        d = abs(a - b) / max(1.0, abs(b))
        worst = max(worst, d)
        ok &= d <= 1e-6
    return worst, ok


def k_range(scores: np.ndarray, q: float) -> tuple[int, int]:
    """The ranks k at which q is the k-th smallest of scores ((n+1, n+1) for +inf)."""
    n = len(scores)
    if math.isinf(q):
        return n + 1, n + 1
    return int((scores < q).sum()) + 1, int((scores <= q).sum())


# ---------------------------------------------------------------- the comparison


class Checks:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def __call__(self, ok: bool, what: str) -> None:
        if not ok:
            self.failures.append(what)


def compare_k(n: int, alpha: float, qs: np.ndarray, q_tcp: float, k_ours: int) -> str:
    """'=' when TorchCP's threshold sits at our k, 'naive' when at the naive
    ceil((n+1)(1-alpha)) (float or float32 alpha) instead, '?' otherwise."""
    lo, hi = k_range(qs, q_tcp)
    if lo <= min(k_ours, n + 1) <= hi:
        return "="
    a32 = np.float32(alpha)
    naive = {
        min(math.ceil((n + 1) * (1 - alpha)), n + 1),
        min(math.ceil(float((n + 1) * (np.float32(1) - a32))), n + 1),
    }
    return "naive" if any(lo <= kk <= hi for kk in naive) else "?"


def run_k(k: int, device: str, check: Checks, rows: list, score_rows: list, seeds: list) -> None:
    src_z, src_y, ps, seed_s = untied_set(100 + k, N_SOURCE, k, 0.0, skip_last=k == 114)
    tgt_z, tgt_y, pt, seed_t = untied_set(200 + k, N_TARGET, k, 0.5, skip_last=False)
    assert ps.dtype == np.float32 and pt.dtype == np.float32
    assert tied_rows(ps) == 0 and tied_rows(pt) == 0
    seeds.append((k, seed_s, seed_t))
    FIXTURE.update(
        {f"k{k}__src_z": src_z, f"k{k}__src_y": src_y, f"k{k}__tgt_z": tgt_z, f"k{k}__tgt_y": tgt_y}
    )
    cal = cg.Calibration.fit(
        src_z,
        src_y,
        alphas=list(ALPHAS),
        temperature=1.0,
        device=device,
        score=",".join(SCORES),
        raps_lambda=RAPS_LAMBDA,
        raps_k_reg=RAPS_K_REG,
        saps_lambda=SAPS_LAMBDA,
        class_conditional=True,
    )
    rep = cal.report({"target": [cal.tally(tgt_z, tgt_y, name="target")]})
    entries = {
        (e["score"], e["class_conditional"], e["alpha"]): e
        for e in rep["targets"][0]["conformal"]["raw"]
    }
    ours_s, ours_t = our_scores(ps), our_scores(pt)
    tps, tpt = torch.from_numpy(ps), torch.from_numpy(pt)
    tys = torch.from_numpy(src_y)
    rank_s = ours_s["_rank"][np.arange(N_SOURCE), src_y]
    counts = np.bincount(src_y, minlength=k)

    for score in SCORES:
        fn = torchcp_score(score)
        tag = f"K={k} {score}"
        # All-label and label scores.
        all_t = fn(tpt).double().numpy()
        all_s = fn(tps).double().numpy()
        d_all = max(np.abs(all_t - ours_t[score]).max(), np.abs(all_s - ours_s[score]).max())
        check(
            (np.abs(all_t - ours_t[score]) <= tol(ours_t[score], k)).all()
            and (np.abs(all_s - ours_s[score]) <= tol(ours_s[score], k)).all(),
            f"{tag}: all-label scores differ beyond tol (max {d_all:.3g})",
        )
        lab_tcp = fn(tps, tys).double().numpy()
        lab_ours = ours_s[score][np.arange(N_SOURCE), src_y]
        documented = np.zeros(N_SOURCE, dtype=bool)
        if score == "saps":
            documented = (lab_tcp == 0.0) & (rank_s == 1)
            check(
                np.array_equal(documented, rank_s == 1),
                f"{tag}: TorchCP's label score is not 0 exactly on the top-class rows",
            )
        d_lab = np.abs(lab_tcp - lab_ours)[~documented]
        check(
            (d_lab <= tol(lab_ours[~documented], k)).all(),
            f"{tag}: label scores differ beyond tol (max {d_lab.max():.3g})",
        )
        oracle_bad = 0  # crate vs our transcription: k, qhat and sets, exactly

        variants = [(score, fn)]
        if score == "saps":
            variants.append(("saps*", AtLabel(fn)))
        for alpha in ALPHAS:
            for cc in (False, True):
                e = entries[(score, cc, alpha)]
                ours_sets = cal.predict_sets(
                    tgt_z,
                    alpha=alpha,
                    score=score,
                    class_conditional=cc,
                    mode="raw",
                    name="target",
                )
                # The crate against our float64 transcription of DESIGN.
                if cc:
                    qo, ko = [], []
                    for c in range(k):
                        v = np.sort(lab_ours[src_y == c])
                        r = conformal_rank(len(v), alpha)
                        ko.append(r)
                        qo.append(float(v[r - 1]) if r <= len(v) else math.inf)
                    q_ours = np.array(qo)
                    got_q = np.array([math.inf if q is None else q for q in e["qhat"]])
                    oracle_bad += int(e["k"] != ko) + int(not np.array_equal(got_q, q_ours))
                else:
                    r = conformal_rank(N_SOURCE, alpha)
                    srt = np.sort(lab_ours)
                    q_ours = np.array([float(srt[r - 1]) if r <= N_SOURCE else math.inf])
                    got_q = np.array([math.inf if e["qhat"] is None else e["qhat"]])
                    oracle_bad += int(e["k"] != r) + int(not np.array_equal(got_q, q_ours))
                oracle_sets = ours_t[score] <= q_ours[None, :]
                oracle_bad += int((oracle_sets != ours_sets).sum())
                own = torchcp_metrics(ours_sets, tgt_y, alpha, k)
                d_own, ok_own = metric_diff(own, e)
                check(
                    ok_own,
                    f"{tag} a={alpha} cc={cc}: TorchCP metrics of our sets "
                    f"differ from the report ({d_own:.3g})",
                )

                for name, vfn in variants:
                    pred = (ClassConditionalPredictor if cc else SplitPredictor)(vfn, alpha=alpha)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        pred.calculate_threshold(tps, tys, alpha=alpha)
                    q_tcp = pred.q_hat.double().reshape(-1).numpy()
                    lab_v = vfn(tps, tys).double().numpy()
                    # k: where TorchCP's threshold sits among its own label scores.
                    if cc:
                        ks = [
                            compare_k(
                                int(counts[c]),
                                alpha,
                                lab_v[src_y == c],
                                q_tcp[c],
                                ko[c],
                            )
                            for c in range(k)
                        ]
                    else:
                        ks = [compare_k(N_SOURCE, alpha, lab_v, q_tcp[0], r)]
                    inf_ok = np.array_equal(np.isinf(q_tcp), np.isinf(q_ours))
                    fin = ~np.isinf(q_tcp) & ~np.isinf(q_ours)
                    dq = np.abs(q_tcp[fin] - q_ours[fin])
                    dq_max = float(dq.max()) if dq.size else 0.0
                    q_ok = bool((dq <= tol(q_ours[fin], k)).all())
                    # Sets.
                    tcp_sets = pred.predict_with_logits(tpt).numpy().astype(bool)
                    diff = tcp_sets != ours_sets
                    qcell = np.broadcast_to(q_ours[None, :], diff.shape)
                    near = np.abs(ours_t[score] - qcell) <= 2 * tol(qcell, k)
                    cells, unexplained = int(diff.sum()), int((diff & ~near).sum())
                    want = torchcp_metrics(tcp_sets, tgt_y, alpha, k)
                    d_met, ok_met = metric_diff(want, e)
                    held = name != "saps"  # TorchCP as-is SAPS: documented difference
                    kk = "=" if all(x == "=" for x in ks) else "naive" if "?" not in ks else "?"
                    if held:
                        where = f"{tag} a={alpha} cc={cc} ({name})"
                        check(inf_ok, f"{where}: +inf thresholds differ")
                        check(q_ok, f"{where}: qhat differs by {dq_max:.3g}")
                        check(
                            "?" not in ks,
                            f"{where}: TorchCP's k is neither ours nor naive",
                        )
                        if kk == "=":
                            check(
                                unexplained == 0,
                                f"{where}: {unexplained} set cells differ away from qhat",
                            )
                            check(
                                ok_met or cells > 0,
                                f"{where}: metrics differ on equal sets",
                            )
                    # Only entries whose sets equal TorchCP's cell for cell (the CI test
                    # holds the crate to them exactly; its completeness test notices a gap).
                    if held and kk == "=" and cells == 0:
                        key = f"k{k}__{name.replace('*', '_at_label')}__{alpha}__{int(cc)}"
                        FIXTURE[key + "__qhat"] = q_tcp
                        FIXTURE[key + "__sets"] = np.packbits(tcp_sets.reshape(-1))
                        FIXTURE[key + "__metrics"] = np.array(
                            [want[m] for m in METRICS]
                            + [math.nan if v is None else v for v in want["class_coverage"]]
                        )
                    rows.append(
                        (
                            k,
                            name,
                            alpha,
                            "cc" if cc else "marg",
                            dq_max,
                            "y" if inf_ok else "n",
                            kk if not cc else f"{sum(x != '=' for x in ks)}/{k}",
                            cells,
                            unexplained,
                            d_met,
                            d_own,
                        )
                    )
        check(
            oracle_bad == 0,
            f"{tag}: the crate differs from DESIGN 2.13/2.5 ({oracle_bad} k/qhat/set mismatches)",
        )
        score_rows.append((k, score, d_all, float(d_lab.max()), int(documented.sum()), oracle_bad))


def k_rule(check: Checks) -> list:
    """TorchCP's k vs the crate's over n = 1..2000: (alpha, #naive-float differs,
    #float32-alpha differs, #crate differs from DESIGN 2.5)."""
    alphas = (0.05, 0.1, 0.2, 0.15, 0.3, 0.7, 0.9)
    out = []
    n_max = 2000
    for alpha in alphas:
        d64 = d32 = dcrate = 0
        a32 = torch.tensor(alpha)
        for n in range(1, n_max + 1):
            s = torch.arange(n, dtype=torch.float64)
            want = min(conformal_rank(n, alpha), n + 1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ks = []
                for a in (alpha, a32):
                    q = float(calculate_conformal_value(s, a))
                    ks.append(n + 1 if math.isinf(q) else int(q) + 1)
            d64 += ks[0] != want
            d32 += ks[1] != want
            rep = cg.conformal_quantile(s.numpy(), alphas=[alpha], device="cpu")
            got = rep_k(rep, n)
            dcrate += got != want
        check(
            dcrate == 0,
            f"k rule: the crate's k differs from DESIGN 2.5 at alpha {alpha}",
        )
        out.append((alpha, d64, d32, dcrate))
    return out


def rep_k(rep: dict, n: int) -> int:
    """The crate's k from its one-level quantile report (n + 1 stands for any k > n)."""
    return min(int(rep["k"][0]), n + 1)


def main() -> int:
    global N_SOURCE, N_TARGET
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="the crate's device (cpu, gpu, auto)")
    ap.add_argument("--rows", default=f"{N_SOURCE},{N_TARGET}", help="source,target rows")
    ap.add_argument(
        "--fixture",
        help="write TorchCP's thresholds, sets and metrics of every held entry to this .npz",
    )
    args = ap.parse_args()
    N_SOURCE, N_TARGET = (int(x) for x in args.rows.split(","))
    t0 = time.perf_counter()
    check = Checks()
    rows: list = []
    score_rows: list = []
    seeds: list = []
    for k in KS:
        run_k(k, args.device, check, rows, score_rows, seeds)
    krows = k_rule(check)

    print(
        f"conformal_gpu {cg.__version__} (device {args.device}) vs TorchCP "
        f"{__import__('torchcp').__version__}, torch {torch.__version__}"
    )
    print("seeds (K, source, target): " + ", ".join(f"({k}, {a}, {b})" for k, a, b in seeds))
    print(
        "\nScores (source and target, max |TorchCP - ours|; label: source rows, SAPS "
        "top-class rows excluded and counted; crate: k/qhat/set mismatches with DESIGN)"
    )
    print(f"{'K':>4} {'score':6} {'all-label':>10} {'label':>10} {'saps-top':>8} {'crate':>5}")
    for k, s, da, dl, top, bad in score_rows:
        print(f"{k:>4} {s:6} {da:10.3g} {dl:10.3g} {top:8d} {bad:5d}")
    print(
        "\nThresholds, sets, metrics (dq: max |qhat diff| over finite thresholds; inf: +inf "
        "together; k: '=' same k (cc: classes differing/K); cells: differing set cells, "
        "far: of those not within 2 tol of qhat; dmet: max |metric diff| / max(1, |v|), "
        "TorchCP's metrics on TorchCP's sets vs the report; dmet-own: on the crate's sets)"
    )
    print(
        f"{'K':>4} {'score':6} {'alpha':>5} {'mode':4} {'dq':>9} {'inf':>3} {'k':>7} "
        f"{'cells':>6} {'far':>4} {'dmet':>9} {'dmet-own':>9}"
    )
    for k, s, a, m, dq, inf, kk, cells, far, dm, do in rows:
        print(
            f"{k:>4} {s:6} {a:5.2f} {m:4} {dq:9.3g} {inf:>3} {kk:>7} {cells:6d} {far:4d} "
            f"{dm:9.3g} {do:9.3g}"
        )
    print(
        "\nk rule over n = 1..2000 (rows: alpha; counts of n where TorchCP's k differs from "
        "DESIGN 2.5: float alpha (SplitPredictor), float32 alpha (ClassConditionalPredictor); "
        "the crate's differences)"
    )
    for a, d64, d32, dc in krows:
        print(f"  alpha {a:4.2f}: float {d64:4d}  float32 {d32:4d}  crate {dc:d}")
    print(f"\nrun time {time.perf_counter() - t0:.1f} s")
    if args.fixture and not check.failures:
        np.savez_compressed(
            args.fixture,
            torchcp_version=np.array(__import__("torchcp").__version__),
            metrics=np.array(METRICS),
            **FIXTURE,
        )
        print(f"wrote {args.fixture} ({len(FIXTURE)} arrays)")
    if check.failures:
        print(f"\nFAILED ({len(check.failures)}):")
        for f in check.failures:
            print("  " + f)
        return 1
    print("\nall checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
