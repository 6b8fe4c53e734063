//! The Camelyon17-shaped generator: sizes, balance, accuracy, spread, determinism.

use conformal_gpu::data::camelyon::{phi, slide_accuracy, KAPPA};
use conformal_gpu::data::{generate_dataset, generate_split, split_specs, GeneratorConfig};
use conformal_gpu::data::{load_npz, PredictionSet};

/// Accuracy against the hidden labels: generated label of row i is i % 2 (module docs),
/// so unlabelled splits can be scored too.
fn accuracy(set: &PredictionSet) -> f64 {
    let correct = set
        .logits
        .rows()
        .into_iter()
        .enumerate()
        .filter(|(i, r)| (r[1] > r[0]) == (i % 2 == 1))
        .count();
    correct as f64 / set.n() as f64
}

/// Binary NLL minimiser in b = 1/T by Newton (f64), for the overconfidence check.
fn fit_temperature(set: &PredictionSet) -> f64 {
    let labels = set.labels.as_ref().unwrap();
    // Margin of the true class over the other: z_y - z_other.
    let m: Vec<f64> = set
        .logits
        .rows()
        .into_iter()
        .zip(labels)
        .map(|(r, &y)| {
            let d = (r[1] - r[0]) as f64;
            if y == 1 {
                d
            } else {
                -d
            }
        })
        .collect();
    // NLL(b) = mean softplus(-b m) is convex in b; bisect on the sign of its derivative
    // mean(-m sigma(-b m)) over b in [1e-3, 1e3].
    let grad = |b: f64| -> f64 { m.iter().map(|&mi| -mi / (1.0 + (b * mi).exp())).sum() };
    let (mut lo, mut hi) = (1e-3f64, 1e3f64);
    for _ in 0..200 {
        let mid = (lo * hi).sqrt();
        if grad(mid) < 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let b = (lo * hi).sqrt();
    1.0 / b
}

#[test]
fn split_sizes_at_scale_one() {
    let specs = split_specs(1.0);
    let sizes: Vec<(&str, usize, bool)> = specs
        .iter()
        .map(|s| (s.name.as_str(), s.n, s.labelled))
        .collect();
    assert_eq!(
        sizes,
        vec![
            ("train", 302_436, true),
            ("id_val", 33_560, true),
            ("ood_val", 34_904, true),
            ("test", 85_054, true),
            ("unlabeled_train", 1_799_247, false),
            ("unlabeled_ood_val", 600_030, false),
            ("unlabeled_test", 600_030, false),
        ]
    );
    assert_eq!(specs[0].hospitals, vec![0, 3, 4]);
    assert_eq!(specs[2].hospitals, vec![1]);
    assert_eq!(specs[3].hospitals, vec![2]);
    assert_eq!(specs[4].hospitals, vec![0, 3, 4]);
    assert_eq!(specs[5].hospitals, vec![1]);
    assert_eq!(specs[6].hospitals, vec![2]);
    let unlabelled: usize = specs[4..].iter().map(|s| s.n).sum();
    assert_eq!(unlabelled, 2_999_307);
    // Scaling rounds to nearest, never below one row.
    assert_eq!(split_specs(0.01)[1].n, 336);
    assert!(split_specs(1e-9).iter().all(|s| s.n == 1));
    assert_eq!(split_specs(100.0)[0].n, 30_243_600);
}

#[test]
fn slide_targets_span_50_to_99() {
    let all: Vec<f64> = (0..5)
        .flat_map(|h| (0..10).map(move |j| slide_accuracy(h, j)))
        .collect();
    let lo = all.iter().cloned().fold(1.0, f64::min);
    let hi = all.iter().cloned().fold(0.0, f64::max);
    assert!((0.49..0.52).contains(&lo), "min slide accuracy {lo}");
    assert!((0.98..=0.991).contains(&hi), "max slide accuracy {hi}");
    // The hospital means are the ERM figures (train hospitals average to 93.2).
    let mean = |h: i64| (0..10).map(|j| slide_accuracy(h, j)).sum::<f64>() / 10.0;
    assert!((mean(1) - 0.849).abs() < 1e-9);
    assert!((mean(2) - 0.703).abs() < 1e-9);
    assert!(((mean(0) + mean(3) + mean(4)) / 3.0 - 0.932).abs() < 1e-9);
    assert!((phi(1.0) - 0.841_344_746).abs() < 1e-6);
}

#[test]
fn small_scale_structure_and_balance() {
    let cfg = GeneratorConfig {
        scale: 0.01,
        seed: 7,
    };
    for spec in split_specs(cfg.scale) {
        let set = generate_split(&cfg, &spec);
        set.validate().unwrap();
        assert_eq!(set.n(), spec.n);
        assert_eq!(set.k(), 2);
        assert_eq!(set.name, spec.name);
        let labels = set.labels.as_ref().unwrap();
        if spec.labelled {
            let ones = labels.iter().filter(|&&y| y == 1).count();
            let zeros = labels.iter().filter(|&&y| y == 0).count();
            assert_eq!(ones + zeros, spec.n);
            assert!(
                ones.abs_diff(zeros) <= 1,
                "{}: {ones} vs {zeros}",
                spec.name
            );
        } else {
            assert!(labels.iter().all(|&y| y == -1), "{}", spec.name);
        }
        let hosp = set.hospital.as_ref().unwrap();
        let slide = set.slide.as_ref().unwrap();
        for (&h, &s) in hosp.iter().zip(slide) {
            assert!(spec.hospitals.contains(&h));
            assert_eq!(s / 10, h, "slide {s} belongs to hospital {h}");
        }
        // Every slide of the split's hospitals is present.
        let mut seen: Vec<i64> = slide.to_vec();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 10 * spec.hospitals.len(), "{}", spec.name);
        // Logits are (0, z).
        assert!(set.logits.column(0).iter().all(|&v| v == 0.0));
    }
}

#[test]
fn accuracy_per_split_and_slide_spread() {
    // Labelled splits at full scale (456k rows, fast); the big unlabelled ones at 0.1.
    let full = GeneratorConfig {
        scale: 1.0,
        seed: 0,
    };
    let tenth = GeneratorConfig {
        scale: 0.1,
        seed: 0,
    };
    let targets = [
        ("train", 0.932),
        ("id_val", 0.932),
        ("ood_val", 0.849),
        ("test", 0.703),
        ("unlabeled_train", 0.932),
        ("unlabeled_ood_val", 0.849),
        ("unlabeled_test", 0.703),
    ];
    let mut slide_acc = Vec::new();
    let specs = split_specs(1.0)
        .into_iter()
        .take(4)
        .map(|s| (full, s))
        .chain(split_specs(0.1).into_iter().skip(4).map(|s| (tenth, s)));
    for ((cfg, spec), (name, target)) in specs.zip(targets) {
        assert_eq!(spec.name, name);
        let set = generate_split(&cfg, &spec);
        let acc = accuracy(&set);
        println!("{name}: n = {}, accuracy = {:.4}", set.n(), acc);
        assert!((acc - target).abs() < 0.015, "{name}: {acc} vs {target}");
        if name.starts_with("unlabeled") {
            // Per-slide accuracy on the biggest splits (well estimated per slide).
            let slides = set.slide.as_ref().unwrap();
            let mut ids: Vec<i64> = slides.to_vec();
            ids.sort_unstable();
            ids.dedup();
            for s in ids {
                let (mut n, mut c) = (0usize, 0usize);
                for (i, (r, &sl)) in set.logits.rows().into_iter().zip(slides).enumerate() {
                    if sl == s {
                        n += 1;
                        c += usize::from((r[1] > r[0]) == (i % 2 == 1));
                    }
                }
                slide_acc.push(c as f64 / n as f64);
            }
        }
        if name == "id_val" {
            let t = fit_temperature(&set);
            println!("id_val fitted temperature T = {t:.3} (KAPPA = {KAPPA})");
            assert!((1.3..3.0).contains(&t), "T = {t}");
        }
    }
    let lo = slide_acc.iter().cloned().fold(1.0, f64::min);
    let hi = slide_acc.iter().cloned().fold(0.0, f64::max);
    println!(
        "slide accuracies: {lo:.3} .. {hi:.3} over {} slides",
        slide_acc.len()
    );
    assert_eq!(slide_acc.len(), 50);
    assert!(lo < 0.55 && hi > 0.97, "{lo} .. {hi}");
}

#[test]
fn deterministic_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let write = |seed: u64, sub: &str| {
        let cfg = GeneratorConfig { scale: 0.02, seed };
        let out = dir.path().join(sub);
        let paths = generate_dataset(&cfg, &out, None).unwrap();
        paths
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect::<Vec<_>>()
    };
    let a = write(1, "a");
    let b = write(1, "b");
    let c = write(2, "c");
    assert_eq!(a.len(), 7);
    assert_eq!(a, b, "same seed, same bytes");
    for (x, y) in a.iter().zip(&c) {
        assert_ne!(x, y, "different seed, different bytes");
    }
    // What was written reads back as what was generated.
    let cfg = GeneratorConfig {
        scale: 0.02,
        seed: 1,
    };
    let spec = &split_specs(0.02)[1];
    let back = load_npz(&dir.path().join("a").join("id_val.npz")).unwrap();
    assert_eq!(back, generate_split(&cfg, spec));
}

#[test]
fn bad_scale_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    for scale in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let cfg = GeneratorConfig { scale, seed: 0 };
        assert!(generate_dataset(&cfg, dir.path(), None).is_err());
    }
}
