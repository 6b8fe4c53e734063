//! The conformal scores of DESIGN.md 2.13 against a brute-force float64 oracle written
//! from the definitions (A, E, o, Sigma by scanning every class, not by sorting), bit for
//! bit, on seeded rows with ties (quantised logits) at K = 2, 3, 10, 114 and 1000; the
//! invariances the definitions promise; the quantile, class-conditional thresholds and
//! sets; randomised u; bad parameters.

mod common;

use conformal_gpu::methods::scores::{
    class_qhats, label_scores, prediction_set, randomized_u, row_scores, score_qhat, Score,
};
use rand::Rng;

fn grid(p: f32) -> f64 {
    (p as f64 * 2f64.powi(40)).round_ties_even()
}

/// The oracle: every quantity by a scan over the classes.
fn oracle(p: &[f32], k: usize, score: Score, u: f64) -> f64 {
    let pk = p[k];
    let a: f64 = p.iter().filter(|&&q| q > pk).map(|&q| grid(q)).sum();
    let e: f64 = p.iter().filter(|&&q| q == pk).map(|&q| grid(q)).sum();
    let sigma: f64 = p.iter().map(|&q| grid(q)).sum();
    let o = p.iter().filter(|&&q| q >= pk).count() as f64;
    let p_max = p.iter().copied().fold(0.0f32, f32::max) as f64;
    let aps = (a + u * e) / sigma;
    match score {
        Score::Lac => (1.0 - pk) as f64,
        Score::Aps => aps,
        Score::Raps { lambda, k_reg } => aps + lambda * (o - k_reg as f64).max(0.0),
        Score::Saps { lambda } => {
            if o == 1.0 {
                u * p_max
            } else {
                p_max + lambda * (o - 2.0 + u)
            }
        }
        Score::TopK => o - 1.0 + u,
    }
}

/// Softmax of quantised logits (steps of 0.5: many ties within a row).
fn rows(seed: u64, n: usize, k: usize) -> Vec<f32> {
    let mut r = common::rng(seed);
    let mut out = Vec::with_capacity(n * k);
    for _ in 0..n {
        let z: Vec<f32> = (0..k)
            .map(|_| r.random_range(-6..=6) as f32 * 0.5)
            .collect();
        let m = z.iter().copied().fold(f32::MIN, f32::max);
        let e: Vec<f32> = z.iter().map(|&v| (v - m).exp()).collect();
        let s: f32 = e.iter().sum();
        out.extend(e.iter().map(|&v| v / s));
    }
    out
}

const SCORES: [Score; 6] = [
    Score::Lac,
    Score::Aps,
    Score::Raps {
        lambda: 0.01,
        k_reg: 1,
    },
    Score::Raps {
        lambda: 0.3,
        k_reg: 5,
    },
    Score::Saps { lambda: 0.2 },
    Score::TopK,
];

#[test]
fn scores_equal_the_float64_oracle_bit_for_bit() {
    // K = 2 (the binary task), 3, 10 (CIFAR-10), 114 (Fitzpatrick17K), 1000.
    for (k, n) in [
        (2usize, 200usize),
        (3, 200),
        (10, 100),
        (114, 20),
        (1000, 3),
    ] {
        let p = rows(k as u64, n, k);
        for score in SCORES {
            for u in [1.0, 0.25, randomized_u(3, "t", 7)] {
                for i in 0..n {
                    let row = &p[i * k..(i + 1) * k];
                    let got = row_scores(row, score, u);
                    for (c, got) in got.iter().enumerate() {
                        let want = oracle(row, c, score, u);
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "{score:?} k={k} row {i} class {c}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn scores_follow_the_classes_when_they_are_permuted() {
    let k = 10;
    let p = rows(5, 50, k);
    let mut r = common::rng(6);
    for i in 0..50 {
        let row = &p[i * k..(i + 1) * k];
        let mut perm: Vec<usize> = (0..k).collect();
        for j in (1..k).rev() {
            perm.swap(j, r.random_range(0..=j));
        }
        let permuted: Vec<f32> = perm.iter().map(|&j| row[j]).collect();
        for score in SCORES {
            let a = row_scores(row, score, 1.0);
            let b = row_scores(&permuted, score, 1.0);
            for (c, &j) in perm.iter().enumerate() {
                assert_eq!(b[c].to_bits(), a[j].to_bits(), "{score:?}");
            }
        }
    }
}

#[test]
fn deterministic_aps_reaches_one_at_the_last_tie_group_and_ties_enter_together() {
    let k = 10;
    let p = rows(8, 100, k);
    let q = Some(0.5);
    for i in 0..100 {
        let row = &p[i * k..(i + 1) * k];
        let s = row_scores(row, Score::Aps, 1.0);
        let low = row.iter().copied().fold(f32::MAX, f32::min);
        for c in 0..k {
            if row[c] == low {
                assert_eq!(s[c], 1.0, "row {i}");
            }
        }
        // Tied probabilities: both in the set or both out, for every score.
        for score in SCORES {
            let set = prediction_set(&row_scores(row, score, 1.0), &[q]);
            for a in 0..k {
                for b in 0..k {
                    if row[a] == row[b] {
                        assert_eq!(set.contains(&a), set.contains(&b), "{score:?} row {i}");
                    }
                }
            }
        }
    }
    // TopK at qhat 1.5 (u = 1): exactly the classes ranked first (a tied top group
    // ranks last among itself, so a tie at the top leaves the set empty at 0.5).
    let row = [0.5f32, 0.3, 0.2];
    assert_eq!(
        prediction_set(&row_scores(&row, Score::TopK, 1.0), &[Some(1.5)]),
        vec![0]
    );
    let tied = [0.4f32, 0.4, 0.2];
    assert_eq!(
        prediction_set(&row_scores(&tied, Score::TopK, 1.0), &[Some(1.5)]),
        Vec::<usize>::new()
    );
    assert_eq!(
        prediction_set(&row_scores(&tied, Score::TopK, 1.0), &[Some(2.0)]),
        vec![0, 1]
    );
}

#[test]
fn quantiles_and_class_conditional_thresholds() {
    // DESIGN 2.5's k: n = 9, alpha = 0.7 gives k = 3.
    let s: Vec<f64> = (1..=9).rev().map(|i| i as f64 / 10.0).collect();
    assert_eq!(score_qhat(&s, 0.7).unwrap(), Some(0.3));
    // k > n: +inf (None), every class in the set.
    assert_eq!(score_qhat(&s[..2], 0.1).unwrap(), None);
    assert_eq!(prediction_set(&[5.0, 7.0], &[None]), vec![0, 1]);
    // Mondrian: class 2 has no labelled row, so +inf.
    let labels = [0i64, 1, 0, 1, 0, 1, 0, 1, 0];
    let q = class_qhats(&s, &labels, 3, 0.5).unwrap();
    assert_eq!(q[2], None);
    assert!(q[0].is_some() && q[1].is_some());
    assert_eq!(prediction_set(&[0.0, 100.0, 100.0], &q), vec![0, 2]);
    // The label scores are the scores of the labels.
    let p = rows(9, 30, 4);
    let y: Vec<i64> = (0..30).map(|i| (i % 4) as i64).collect();
    let ls = label_scores(&p, 4, &y, Score::Aps, |_| 1.0).unwrap();
    for i in 0..30 {
        assert_eq!(
            ls[i],
            row_scores(&p[i * 4..i * 4 + 4], Score::Aps, 1.0)[y[i] as usize]
        );
    }
    assert!(label_scores(&p, 4, &[9; 30], Score::Aps, |_| 1.0).is_err());
    assert!(score_qhat(&s, 1.5).is_err());
}

#[test]
fn randomized_u_is_keyed_by_seed_name_and_row() {
    let u = randomized_u(7, "test", 12);
    assert!(u > 0.0 && u < 1.0);
    // Same key, same draw (so shards agree); another row, name or seed draws anew.
    assert_eq!(u, randomized_u(7, "test", 12));
    let others = [
        randomized_u(7, "test", 13),
        randomized_u(7, "other", 12),
        randomized_u(8, "test", 12),
    ];
    assert!(others.iter().all(|&v| v != u));
    // Uniform enough: the mean of 10,000 draws within 0.01 of 1/2.
    let mean: f64 = (0..10_000).map(|i| randomized_u(1, "m", i)).sum::<f64>() / 10_000.0;
    assert!((mean - 0.5).abs() < 0.01, "{mean}");
}

#[test]
fn bad_parameters_are_errors_naming_them() {
    let e = Score::named("raps", -0.1, 1, 0.2).unwrap_err().to_string();
    assert!(e.contains("--raps-lambda"), "{e}");
    let e = Score::named("saps", 0.01, 1, 0.0).unwrap_err().to_string();
    assert!(e.contains("--saps-lambda"), "{e}");
    let e = Score::named("saps", 0.01, 1, f64::NAN)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--saps-lambda"), "{e}");
    let e = Score::named("thr", 0.01, 1, 0.2).unwrap_err().to_string();
    assert!(e.contains("--score"), "{e}");
    assert_eq!(Score::named("topk", 0.01, 1, 0.2).unwrap().name(), "topk");
}
