//! The crate's estimators (CPU and GPU paths) against the independent f64 oracle
//! (`tests/oracle`) and `fixtures/tiny4/expected.json`, within DESIGN.md section 4's
//! tolerances: rates within 2 rows + 1e-6, continuous values 1e-5, probabilities 1e-6,
//! temperature 1e-7 (CPU) / 1e-5 (GPU) relative.

mod common;
mod oracle;

use common::*;
use conformal_gpu::backend::{Backend, CpuBackend};
use conformal_gpu::data::{load_npz, PredictionSet};
use conformal_gpu::methods::evaluate::{
    cpc_sweep, evaluate, AtcThreshold, EvalOptions, Evaluation, TargetReport, TemperatureChoice,
};
use ndarray::{Array1, Array2};
use rand::Rng;
use serde_json::Value;

/// Collects every mismatch so one run shows all of them.
#[derive(Default)]
struct Check(Vec<String>);

impl Check {
    fn close(&mut self, what: &str, got: f64, want: f64, tol: f64) {
        let diff = (got - want).abs();
        if diff.is_nan() || diff > tol {
            self.0.push(format!(
                "{what}: got {got:.12} want {want:.12} (diff {:.2e} > {tol:.1e})",
                got - want
            ));
        }
    }
    fn rate(&mut self, what: &str, got: f64, want: f64, n: usize) {
        self.close(what, got, want, 2.0 / n as f64 + 1e-6);
    }
    fn opt(&mut self, what: &str, got: Option<f64>, want: Option<f64>, tol: f64) {
        match (got, want) {
            (Some(g), Some(w)) => self.close(what, g, w, tol),
            (None, None) => {}
            (g, w) => self.0.push(format!("{what}: got {g:?} want {w:?}")),
        }
    }
    fn finish(self, context: &str) {
        assert!(
            self.0.is_empty(),
            "{context}: {} mismatches:\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

fn tiny4(name: &str) -> PredictionSet {
    load_npz(&common::tiny4(&format!("{name}.npz"))).unwrap()
}

fn run<B: Backend>(
    b: &B,
    source: &PredictionSet,
    targets: &[PredictionSet],
    alphas: &[f64],
) -> Evaluation {
    let opts = EvalOptions {
        alphas: alphas.to_vec(),
        ..Default::default()
    };
    evaluate(b, source, targets, None, &opts).unwrap()
}

fn target<'a>(e: &'a Evaluation, name: &str) -> &'a TargetReport {
    e.targets.iter().find(|t| t.name == name).unwrap()
}

/// Compares an evaluation with expected.json (tiny4).
fn check_tiny4(e: &Evaluation, t_rel: f64) {
    let exp: Value =
        serde_json::from_str(&std::fs::read_to_string(common::tiny4("expected.json")).unwrap())
            .unwrap();
    let mut c = Check::default();
    let s = &e.source;
    let t_want = exp["temperature"].as_f64().unwrap();
    c.close(
        "temperature (rel)",
        (s.temperature - t_want).abs() / t_want,
        0.0,
        t_rel,
    );
    for key in ["nll_before", "nll_after", "ece_before", "ece_after"] {
        let got = match key {
            "nll_before" => s.nll_before,
            "nll_after" => s.nll_after,
            "ece_before" => s.ece_before,
            _ => s.ece_after,
        };
        c.close(key, got, exp[key].as_f64().unwrap(), 1e-5);
    }
    for (mode, ts) in [("raw", false), ("ts", true)] {
        for (a, alpha) in e.alphas.iter().enumerate() {
            let block = &exp[mode][format!("{alpha}")];
            let src = &block["source"];
            c.close(
                &format!("{mode} a={alpha} source.accuracy"),
                s.accuracy,
                src["accuracy"].as_f64().unwrap(),
                1e-12,
            );
            let q = if ts { s.qhat.ts[a] } else { s.qhat.raw[a] };
            c.opt(
                &format!("{mode} a={alpha} qhat"),
                q,
                src["qhat"].as_f64(),
                1e-6,
            );
            for (name, want) in block["targets"].as_object().unwrap() {
                let t = target(e, name);
                let w = |k: &str| want[k].as_f64().unwrap();
                let est = if ts {
                    &t.estimates.ts
                } else {
                    &t.estimates.raw
                };
                let what = format!("{mode} a={alpha} {name}");
                c.close(&format!("{what} AC"), est.ac, w("AC"), 1e-5);
                c.close(&format!("{what} DoC"), est.doc, w("DoC"), 1e-5);
                c.rate(&format!("{what} ATC-MC"), est.atc_mc, w("ATC-MC"), t.n);
                c.rate(&format!("{what} ATC-NE"), est.atc_ne, w("ATC-NE"), t.n);
                c.rate(&format!("{what} CPC"), est.cpc, w("CPC"), t.n);
                let cpc = if ts { &t.cpc.ts } else { &t.cpc.raw };
                c.opt(
                    &format!("{what} cpc_q"),
                    cpc.q,
                    want["cpc_q"].as_f64(),
                    1e-5,
                );
                c.close(
                    &format!("{what} cpc_alpha"),
                    cpc.alpha,
                    w("cpc_alpha"),
                    2.0 / (s.n as f64 + 1.0) + 1e-9,
                );
                let conf = if ts {
                    &t.conformal.ts[a]
                } else {
                    &t.conformal.raw[a]
                };
                c.close(
                    &format!("{what} mean_set_size"),
                    conf.mean_set_size,
                    w("mean_set_size"),
                    2.0 / t.n as f64 + 1e-6,
                );
                c.rate(
                    &format!("{what} singleton"),
                    conf.singleton_rate,
                    w("singleton_rate"),
                    t.n,
                );
                c.rate(
                    &format!("{what} empty"),
                    conf.empty_rate,
                    w("empty_rate"),
                    t.n,
                );
                c.opt(
                    &format!("{what} coverage"),
                    conf.coverage,
                    want["coverage"].as_f64(),
                    2.0 / t.n as f64 + 1e-6,
                );
                c.opt(
                    &format!("{what} true_accuracy"),
                    t.true_accuracy,
                    want["true_accuracy"].as_f64(),
                    1e-12,
                );
            }
        }
    }
    c.finish(&format!("tiny4 on {}", e.device));
}

#[test]
fn tiny4_expected_cpu() {
    let e = run(
        &CpuBackend,
        &tiny4("id_val"),
        &[tiny4("shifted"), tiny4("unlabeled")],
        &[0.1, 0.05],
    );
    check_tiny4(&e, 1e-7);
    let u = target(&e, "unlabeled");
    assert!(!u.labelled && u.true_accuracy.is_none() && u.n_labelled == 0);
    assert!(u.conformal.raw.iter().all(|c| c.coverage.is_none()));
    // Running twice gives the same report but for timings.
    let mut again = run(
        &CpuBackend,
        &tiny4("id_val"),
        &[tiny4("shifted"), tiny4("unlabeled")],
        &[0.1, 0.05],
    );
    again.timings_ms = e.timings_ms.clone();
    assert_eq!(again, e);
}

#[cfg(feature = "gpu")]
#[test]
fn tiny4_expected_gpu() {
    let Some(ctx) = shared_gpu() else { return };
    let gb = conformal_gpu::backend::GpuBackend::new(ctx);
    let e = run(
        &gb,
        &tiny4("id_val"),
        &[tiny4("shifted"), tiny4("unlabeled")],
        &[0.1, 0.05],
    );
    check_tiny4(&e, 1e-5);
    let mut again = run(
        &gb,
        &tiny4("id_val"),
        &[tiny4("shifted"), tiny4("unlabeled")],
        &[0.1, 0.05],
    );
    again.timings_ms = e.timings_ms.clone();
    assert_eq!(again, e, "GPU reports differ between runs");
}

/// Random prediction sets: logits `scale * (signal + noise)`, optionally quantised to
/// multiples of 1/8 (tied probabilities), labels known with probability `known`.
fn random_set(
    seed: u64,
    name: &str,
    n: usize,
    k: usize,
    signal: f32,
    quantise: bool,
    known: f64,
) -> PredictionSet {
    let mut r = rng(seed);
    let mut logits = Array2::<f32>::zeros((n, k));
    let mut labels = Array1::<i64>::zeros(n);
    let mut slide = Array1::<i64>::zeros(n);
    for i in 0..n {
        let y = r.random_range(0..k);
        labels[i] = if r.random_bool(known) { y as i64 } else { -1 };
        slide[i] = r.random_range(0..5);
        for j in 0..k {
            let mut z = 2.0 * (if j == y { signal } else { 0.0 } + r.random_range(-1.0f32..1.0));
            if quantise {
                z = (z * 8.0).round() / 8.0;
            }
            logits[[i, j]] = z;
        }
    }
    let mut set = PredictionSet::new(name, logits).with_labels(labels);
    set.slide = Some(slide);
    set
}

fn oracle_source(s: &PredictionSet) -> oracle::Source<'_> {
    oracle::Source {
        logits: s.logits.as_slice().unwrap(),
        k: s.k(),
        labels: s.labels.as_ref().unwrap().as_slice().unwrap(),
    }
}

fn oracle_target(s: &PredictionSet) -> oracle::Target<'_> {
    let labels = s
        .labels
        .as_ref()
        .map(|l| l.as_slice().unwrap())
        .filter(|l| l.iter().any(|&y| y >= 0));
    oracle::Target {
        name: &s.name,
        logits: s.logits.as_slice().unwrap(),
        k: s.k(),
        labels,
    }
}

/// Every estimate, qhat and set statistic against the oracle at the oracle's temperature
/// (passed as a fixed T so both modes compare like with like), whole targets and slides.
fn check_against_oracle<B: Backend>(
    b: &B,
    source: &PredictionSet,
    targets: &[PredictionSet],
    alphas: &[f64],
    t_rel: f64,
) {
    let o_fit = oracle::fit_temperature(
        source.logits.as_slice().unwrap(),
        source.k(),
        source.labels.as_ref().unwrap().as_slice().unwrap(),
    );
    let fitted = run(b, source, targets, alphas);
    let mut c = Check::default();
    c.close(
        "temperature (rel)",
        (fitted.source.temperature - o_fit.temperature).abs() / o_fit.temperature,
        0.0,
        t_rel,
    );
    let opts = EvalOptions {
        alphas: alphas.to_vec(),
        temperature: TemperatureChoice::Fixed(o_fit.temperature),
        rows: false,
        ..Default::default()
    };
    let e = evaluate(b, source, targets, None, &opts).unwrap();
    for (mode, t) in [("raw", 1.0), ("ts", o_fit.temperature)] {
        let fit = oracle::fit_source(oracle_source(source), t);
        for (a, &alpha) in alphas.iter().enumerate() {
            for tset in targets {
                let want = oracle::target_alpha(&fit, oracle_target(tset), alpha);
                let got = target(&e, &tset.name);
                let ts = mode == "ts";
                let est = if ts {
                    &got.estimates.ts
                } else {
                    &got.estimates.raw
                };
                let what = format!("{} {mode} a={alpha} {}", e.device, tset.name);
                let n = tset.n();
                c.close(&format!("{what} AC"), est.ac, want.ac, 1e-5);
                c.close(&format!("{what} DoC"), est.doc, want.doc, 1e-5);
                c.rate(&format!("{what} ATC-MC"), est.atc_mc, want.atc_mc, n);
                c.rate(&format!("{what} ATC-NE"), est.atc_ne, want.atc_ne, n);
                c.rate(&format!("{what} CPC"), est.cpc, want.cpc, n);
                let conf = if ts {
                    &got.conformal.ts[a]
                } else {
                    &got.conformal.raw[a]
                };
                let qhat = want_qhat(&fit, alpha);
                c.opt(
                    &format!("{what} qhat"),
                    conf.qhat.marginal().flatten(),
                    qhat,
                    1e-6,
                );
                // Rows tied with qhat in exact arithmetic but not in floating point (the
                // same differences z_j - z_k in another class order sum in another order)
                // fall either side of it in any implementation: they widen the tolerance.
                let tol = (2 + rows_near(tset, t, qhat)) as f64 / n as f64 + 1e-6;
                c.close(
                    &format!("{what} mean_set_size"),
                    conf.mean_set_size,
                    want.mean_set_size,
                    tol,
                );
                c.close(
                    &format!("{what} singleton"),
                    conf.singleton_rate,
                    want.singleton_rate,
                    tol,
                );
                c.close(
                    &format!("{what} empty"),
                    conf.empty_rate,
                    want.empty_rate,
                    tol,
                );
                c.opt(
                    &format!("{what} coverage"),
                    conf.coverage,
                    want.coverage,
                    tol,
                );
                c.opt(
                    &format!("{what} true_accuracy"),
                    got.true_accuracy,
                    want.true_accuracy,
                    1e-12,
                );
                // Per slide (and hospital, where given): every group's estimates against
                // the oracle on its rows.
                let arrays = [("slide", &tset.slide), ("hospital", &tset.hospital)];
                for (name, ids) in arrays.into_iter().filter(|_| a == 0) {
                    let Some(ids) = ids else { continue };
                    let by = oracle::target_alpha_by_group(
                        &fit,
                        oracle_target(tset),
                        alpha,
                        ids.as_slice().unwrap(),
                    );
                    let groups = &got.groups[name];
                    assert_eq!(groups.len(), by.len());
                    for g in groups {
                        let w = &by[&g.id];
                        let est = if ts {
                            &g.estimates.ts
                        } else {
                            &g.estimates.raw
                        };
                        let gw = format!("{what} {name} {}", g.id);
                        c.close(&format!("{gw} AC"), est.ac, w.ac, 1e-5);
                        c.close(&format!("{gw} DoC"), est.doc, w.doc, 1e-5);
                        c.rate(&format!("{gw} ATC-MC"), est.atc_mc, w.atc_mc, g.n);
                        c.rate(&format!("{gw} ATC-NE"), est.atc_ne, w.atc_ne, g.n);
                        c.rate(&format!("{gw} CPC"), est.cpc, w.cpc, g.n);
                        c.opt(
                            &format!("{gw} true_accuracy"),
                            g.true_accuracy,
                            w.true_accuracy,
                            1e-12,
                        );
                    }
                }
            }
        }
    }
    c.finish("oracle");
}

/// Rows of `set` with some `1 - p_k` within 1e-6 of `q` (f64 probabilities at `t`).
fn rows_near(set: &PredictionSet, t: f64, q: Option<f64>) -> usize {
    let Some(q) = q else { return 0 };
    oracle::softmax(set.logits.as_slice().unwrap(), set.k(), t)
        .iter()
        .filter(|p| p.iter().any(|&pk| ((1.0 - pk) - q).abs() <= 1e-6))
        .count()
}

fn want_qhat(fit: &oracle::SourceFit, alpha: f64) -> Option<f64> {
    oracle::conformal_quantile(&fit.scores_sorted, alpha)
}

/// Binary and multi-class (K up to 100), tied (quantised) logits, unlabelled and
/// partly labelled targets, several levels including one with k > n on a tiny source.
fn oracle_cases() -> Vec<(PredictionSet, Vec<PredictionSet>, Vec<f64>)> {
    let mut cases = Vec::new();
    for (i, &(k, quant)) in [
        (2usize, false),
        (2, true),
        (3, true),
        (10, false),
        (100, false),
    ]
    .iter()
    .enumerate()
    {
        let seed = 100 * i as u64;
        let n = if k == 100 { 300 } else { 700 };
        let source = random_set(seed, "source", n, k, 1.2, quant, 1.0);
        let targets = vec![
            random_set(seed + 1, "shifted", 500, k, 0.7, quant, 1.0),
            random_set(seed + 2, "partial", 400, k, 0.9, quant, 0.5),
            random_set(seed + 3, "unlabelled", 300, k, 0.8, quant, 0.0),
        ];
        cases.push((source, targets, vec![0.1, 0.05, 0.2, 0.5]));
    }
    // A target longer than two row blocks (backend::ROW_BLOCK = 16384 rows), with slides
    // and hospitals in runs that cross the block boundaries: the counts of a group are
    // merged from several blocks.
    let mut long = random_set(9, "long", 2 * 16384 + 3, 2, 0.8, false, 0.7);
    long.slide = Some((0..long.n() as i64).map(|i| i / 5000).collect());
    long.hospital = Some((0..long.n() as i64).map(|i| 7 - i / 12000).collect());
    cases.push((
        random_set(10, "source", 700, 2, 1.2, false, 1.0),
        vec![long],
        vec![0.1, 0.05],
    ));
    // A 9-row source: alpha = 0.7 gives k = 3 (not 4), alpha = 0.05 gives k > n (+inf).
    let source = random_set(7, "source", 9, 3, 1.0, false, 1.0);
    cases.push((
        source,
        vec![random_set(8, "t", 50, 3, 0.5, false, 1.0)],
        vec![0.7, 0.05, 0.5],
    ));
    cases
}

#[test]
fn cpu_matches_oracle() {
    for (source, targets, alphas) in oracle_cases() {
        check_against_oracle(&CpuBackend, &source, &targets, &alphas, 1e-7);
    }
}

#[cfg(feature = "gpu")]
#[test]
fn gpu_matches_oracle() {
    let Some(ctx) = shared_gpu() else { return };
    let gb = conformal_gpu::backend::GpuBackend::new(ctx);
    for (source, targets, alphas) in oracle_cases() {
        check_against_oracle(&gb, &source, &targets, &alphas, 1e-5);
    }
}

#[test]
fn atc_threshold_splits_tie_groups() {
    // Scores ascending; c = 4 correct rows: t = 4th largest = 0.5, with 2 rows above and
    // 3 tied at t, so lambda = (4 - 2) / 3 and ATC on the source is exactly c / n.
    let sorted = [0.1f32, 0.5, 0.5, 0.5, 0.8, 0.9];
    let thr = AtcThreshold::new(&sorted, 4);
    assert_eq!(thr.t, Some(0.5));
    assert!((thr.lambda - 2.0 / 3.0).abs() < 1e-15);
    assert!((thr.estimate(2, 3, 6) - 4.0 / 6.0).abs() < 1e-15);
    assert_eq!(AtcThreshold::new(&sorted, 0).estimate(3, 3, 6), 0.0);
    // Untied: lambda = 1 and ATC = mean 1{g >= t}.
    let thr = AtcThreshold::new(&[0.1, 0.2, 0.3], 2);
    assert_eq!((thr.t, thr.lambda), (Some(0.2), 1.0));
}

#[test]
fn cpc_sweep_picks_smallest_q_on_ties_and_inf_last() {
    // Two rows; scores 0.2, 0.6. Row singleton intervals [a, b): [0.1, 0.3) and [0.4, 0.7).
    let s = [0.2f32, 0.6];
    let a = [0.1f32, 0.4];
    let b = [0.3f32, 0.7];
    // c = 1: q = 0.2 gives 1 singleton (row 0), q = 0.6 gives 1 (row 1): smallest wins.
    assert_eq!(cpc_sweep(&s, &a, &b, 1), (Some(0.2), 1));
    // c = 0: both finite candidates give 1 singleton, +inf gives 0: +inf (i = n + 1).
    assert_eq!(cpc_sweep(&s, &a, &b, 0), (None, 3));
    // Duplicate candidates: the first index of q* counts.
    assert_eq!(
        cpc_sweep(&[0.2, 0.2, 0.6], &[0.1, 0.1, 0.4], &[0.3, 0.3, 0.7], 2),
        (Some(0.2), 1)
    );
}

#[test]
fn cpc_and_atc_mc_agree_on_binary_untied_data() {
    // K = 2, continuous logits: CPC and ATC-MC both threshold the max probability, so
    // on each target they differ by at most the target rows whose max probability lies
    // between the source thresholds adjacent to ATC's (the c-1, c+1-th largest).
    use conformal_gpu::backend::labels_i32;
    for seed in 0..4u64 {
        let source = random_set(seed * 7 + 1, "source", 2000, 2, 0.8, false, 1.0);
        let targets = vec![
            random_set(seed * 7 + 2, "a", 3000, 2, 0.4, false, 1.0),
            random_set(seed * 7 + 3, "b", 3000, 2, 1.5, false, 0.0),
            PredictionSet {
                name: "source-again".into(),
                ..source.clone()
            },
        ];
        let e = run(&CpuBackend, &source, &targets, &[0.1]);
        let src_again = target(&e, "source-again");
        for ts in [false, true] {
            let t = if ts { e.source.temperature as f32 } else { 1.0 };
            let st = |s: &PredictionSet| {
                let l = s.logits_slice();
                conformal_gpu::cpu::row_stats::row_stats(&l, &labels_i32(s), 2, t, &[])
            };
            let mut g_src: Vec<f32> = st(&source).stats.iter().map(|r| r[0]).collect();
            g_src.sort_by(|a, b| b.total_cmp(a));
            let c = (e.source.accuracy * 2000.0).round() as usize;
            let est = |r: &TargetReport| if ts { r.estimates.ts } else { r.estimates.raw };
            // On the source itself CPC lands within a row of the accuracy (the sweep's goal).
            assert!((est(src_again).cpc - e.source.accuracy).abs() * 2000.0 <= 1.0 + 1e-9);
            let (hi, lo) = (g_src[c.saturating_sub(2)], g_src[c.min(g_src.len() - 1)]);
            for tset in &targets[..2] {
                let r = target(&e, &tset.name);
                let between = st(tset)
                    .stats
                    .iter()
                    .filter(|s| s[0] >= lo && s[0] <= hi)
                    .count();
                let diff = (est(r).cpc - est(r).atc_mc).abs() * tset.n() as f64;
                assert!(
                    diff <= between as f64 + 1e-6,
                    "seed {seed} ts={ts} {}: |CPC - ATC-MC| = {diff} rows > {between} rows between thresholds",
                    tset.name
                );
            }
        }
    }
}
