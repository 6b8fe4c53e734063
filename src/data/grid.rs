//! The sweep's synthetic grid (DESIGN.md 3, "the generator's other shapes"): four
//! dataset shapes of the seed paper and its successors x three model profiles x five
//! training runs, written in the sweep's layout form `DATASET/MODEL/RUN/*.npz`.
//!
//! # Shapes
//! Sizes are at `scale = 1`; `scale` multiplies each (rounded, at least 1 row). Every set
//! is labelled. The group column (`hospital` in the file) carries what the shift is
//! about, so per-group reports split by it.
//!
//! | dataset | K | source `id_val` | targets | groups (`hospital`) |
//! |---------|---|-----------------|---------|---------------------|
//! | `camelyon17` | 2 | 33,560 (hospitals 0, 3, 4: 94.0, 92.4, 93.2%) | `ood_val` 34,904 (hospital 1, 84.9%), `test` 85,054 (hospital 2, 70.3%) | WILDS hospital |
//! | `cifar10` | 10 | 5,000 (94%) | `test` 10,000 (94%), `cifar10_1` 2,000 (87%), `corrupt_s1`, `corrupt_s3`, `corrupt_s5` 10,000 each (86, 75, 58%) | none |
//! | `fitzpatrick17k` | 114 | 1,901 (atlas DermaAmin) | `test` 1,901 (DermaAmin), `atlas_dermatologico` 3,905 | Fitzpatrick skin type 1..6 |
//! | `dmist` | 4 | 2,000 (scanner 0, 78%) | `scanner_0` .. `scanner_3`, 2,500 each (78, 72, 66, 60%) | scanner 0..3 |
//!
//! Fitzpatrick17K-like: the 16,577 images of its two atlases as Lu et al. (2022) shift
//! them (atlas shift: trained on DermaAmin, tested on Atlas Dermatologico): DermaAmin's
//! 12,672 images are train (8,870, not written: no estimator reads it), `id_val` and
//! `test`; Atlas Dermatologico's 3,905 are the target. Skin types 1..6 take shares
//! 20/30/20/17/8/5% of DermaAmin rows (accuracy 56, 55, 54, 52, 48, 44%) and
//! 10/20/22/22/15/11% of Atlas Dermatologico's (48, 47, 46, 44, 40, 36%): darker skin is
//! rarer and harder, and more so on the other atlas. DMIST-like: breast density
//! (BI-RADS A..D, K = 4) under a scanner shift, each scanner's rows one target file.
//! These sizes and accuracies are this crate's choice (the published figures vary by
//! model), documented so results are read against them.
//!
//! # Models and runs
//! | profile | accuracy shift (points) | logit scale `kappa` |
//! |---------|-------------------------|---------------------|
//! | `densenet121` | 0.0 | 6.0 (overconfident, as the Camelyon generator) |
//! | `resnet50` | -2.0 | 4.0 |
//! | `vit_b16` | +1.5 | 2.5 (nearly calibrated) |
//!
//! Run `r` (0..5) shifts every accuracy by `0.5 (r - 2)` points more and draws its own
//! noise, so runs differ as training runs do. Accuracies are clamped to [1%, 99.9%].
//!
//! # Model of a row
//! Row `i` has label `y = i mod K` (balanced classes) and a group `g` whose accuracy is
//! `a` (the table, plus the profile's and the run's shifts); `mu = Phi^-1(a)`. It draws
//! `eps ~ N(0, 1)`, a uniform `u` and noise `n_k ~ N(0, 1)` for every class (Box-Muller
//! on ChaCha8), and with margin `m = mu + eps`:
//! - the prediction `c` is `y` when `m > 0`, else class `(y + 1 + floor(u (K - 1))) mod K`
//!   (uniform over the wrong ones); so the group's accuracy is `a` in expectation;
//! - logits are `z_k = n_k` except `z_c = max_{k != c} n_k + kappa |m|`, and when wrong the
//!   true class is the runner-up: `z_y = max_{k != c, y} n_k + kappa |m| / 2` (K > 2).
//!
//! # Determinism
//! Each set draws from ChaCha8 keyed by `SHA-256("conformal-gpu grid v1" | seed | dataset |
//! model | run | set)`, stream `b` for block `b` of [`BLOCK`] rows, so the same seed and
//! scale give the same bytes on any machine and thread count.

use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::camelyon::{check_scale, normals, phi_inv, BLOCK};
use super::npz::save_npz;
use super::PredictionSet;
use crate::error::{Error, Result};

/// One set of a dataset shape: its name, rows at scale 1 and groups
/// `(group id, accuracy, share weight)`; rows are dealt to groups in contiguous blocks by
/// share.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GridSet {
    /// File stem.
    pub name: &'static str,
    /// Rows at scale 1.
    pub n: usize,
    /// `(group id, accuracy, share weight)`.
    pub groups: &'static [(i64, f64, u32)],
}

/// A dataset shape: classes, whether its sets carry group ids, and its sets (the first
/// is the source, `id_val`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GridShape {
    /// The dataset's directory name.
    pub name: &'static str,
    /// Classes.
    pub k: usize,
    /// Whether the sets store their group ids (in `hospital`).
    pub grouped: bool,
    /// The sets, the source first.
    pub sets: &'static [GridSet],
}

/// A model profile: how good and how overconfident its runs are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelProfile {
    /// The model's directory name.
    pub name: &'static str,
    /// Added to every group's accuracy (fraction).
    pub accuracy_shift: f64,
    /// Logit scale (see the module docs).
    pub kappa: f64,
}

/// Training runs per model.
pub const RUNS: usize = 5;

const FITZ_ID: &[(i64, f64, u32)] = &[
    (1, 0.56, 20),
    (2, 0.55, 30),
    (3, 0.54, 20),
    (4, 0.52, 17),
    (5, 0.48, 8),
    (6, 0.44, 5),
];
const FITZ_ATLAS: &[(i64, f64, u32)] = &[
    (1, 0.48, 10),
    (2, 0.47, 20),
    (3, 0.46, 22),
    (4, 0.44, 22),
    (5, 0.40, 15),
    (6, 0.36, 11),
];

/// The four dataset shapes (see the module table).
pub const SHAPES: [GridShape; 4] = [
    GridShape {
        name: "camelyon17",
        k: 2,
        grouped: true,
        sets: &[
            GridSet {
                name: "id_val",
                n: 33_560,
                groups: &[(0, 0.940, 1), (3, 0.924, 1), (4, 0.932, 1)],
            },
            GridSet {
                name: "ood_val",
                n: 34_904,
                groups: &[(1, 0.849, 1)],
            },
            GridSet {
                name: "test",
                n: 85_054,
                groups: &[(2, 0.703, 1)],
            },
        ],
    },
    GridShape {
        name: "cifar10",
        k: 10,
        grouped: false,
        sets: &[
            GridSet {
                name: "id_val",
                n: 5_000,
                groups: &[(0, 0.94, 1)],
            },
            GridSet {
                name: "test",
                n: 10_000,
                groups: &[(0, 0.94, 1)],
            },
            GridSet {
                name: "cifar10_1",
                n: 2_000,
                groups: &[(0, 0.87, 1)],
            },
            GridSet {
                name: "corrupt_s1",
                n: 10_000,
                groups: &[(0, 0.86, 1)],
            },
            GridSet {
                name: "corrupt_s3",
                n: 10_000,
                groups: &[(0, 0.75, 1)],
            },
            GridSet {
                name: "corrupt_s5",
                n: 10_000,
                groups: &[(0, 0.58, 1)],
            },
        ],
    },
    GridShape {
        name: "fitzpatrick17k",
        k: 114,
        grouped: true,
        sets: &[
            GridSet {
                name: "id_val",
                n: 1_901,
                groups: FITZ_ID,
            },
            GridSet {
                name: "test",
                n: 1_901,
                groups: FITZ_ID,
            },
            GridSet {
                name: "atlas_dermatologico",
                n: 3_905,
                groups: FITZ_ATLAS,
            },
        ],
    },
    GridShape {
        name: "dmist",
        k: 4,
        grouped: true,
        sets: &[
            GridSet {
                name: "id_val",
                n: 2_000,
                groups: &[(0, 0.78, 1)],
            },
            GridSet {
                name: "scanner_0",
                n: 2_500,
                groups: &[(0, 0.78, 1)],
            },
            GridSet {
                name: "scanner_1",
                n: 2_500,
                groups: &[(1, 0.72, 1)],
            },
            GridSet {
                name: "scanner_2",
                n: 2_500,
                groups: &[(2, 0.66, 1)],
            },
            GridSet {
                name: "scanner_3",
                n: 2_500,
                groups: &[(3, 0.60, 1)],
            },
        ],
    },
];

/// The three model profiles (see the module table).
pub const PROFILES: [ModelProfile; 3] = [
    ModelProfile {
        name: "densenet121",
        accuracy_shift: 0.0,
        kappa: 6.0,
    },
    ModelProfile {
        name: "resnet50",
        accuracy_shift: -0.02,
        kappa: 4.0,
    },
    ModelProfile {
        name: "vit_b16",
        accuracy_shift: 0.015,
        kappa: 2.5,
    },
];

/// Grid settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GridConfig {
    /// Multiplies every set's rows (rounded, at least 1).
    pub scale: f64,
    /// Same seed and scale, same bytes.
    pub seed: u64,
    /// Dataset shapes to write (names of [`SHAPES`]); empty = all.
    pub datasets: Vec<String>,
}

impl GridConfig {
    /// The shapes selected, in [`SHAPES`] order; an unknown name is an error listing the
    /// known ones.
    pub fn shapes(&self) -> Result<Vec<&'static GridShape>> {
        for d in &self.datasets {
            if !SHAPES.iter().any(|s| s.name == d) {
                let known: Vec<&str> = SHAPES.iter().map(|s| s.name).collect();
                return Err(Error::Invalid(format!(
                    "unknown grid dataset {d:?} (known: {})",
                    known.join(", ")
                )));
            }
        }
        Ok(SHAPES
            .iter()
            .filter(|s| self.datasets.is_empty() || self.datasets.iter().any(|d| d == s.name))
            .collect())
    }

    /// Rows of `set` at this scale.
    pub fn rows(&self, set: &GridSet) -> usize {
        let scaled = (set.n as f64 * self.scale).round();
        if scaled.is_finite() && scaled >= 1.0 {
            scaled as usize
        } else {
            1
        }
    }
}

/// The group index of every row: contiguous blocks, block `j` ending at
/// `round(n * W_j / W)` for the cumulative share weight `W_j`.
fn group_of_rows(n: usize, groups: &[(i64, f64, u32)]) -> Vec<u16> {
    let total: u64 = groups.iter().map(|g| g.2 as u64).sum::<u64>().max(1);
    let mut out = Vec::with_capacity(n);
    let mut cum = 0u64;
    for (j, g) in groups.iter().enumerate() {
        cum += g.2 as u64;
        // Integer rounding of n * cum / total, exact for any n that fits.
        let end = ((n as u128 * cum as u128 * 2 + total as u128) / (2 * total as u128)) as usize;
        let end = if j + 1 == groups.len() { n } else { end };
        out.resize(end.max(out.len()), j as u16);
    }
    out
}

/// The 32-byte ChaCha key of one set of one run.
fn set_key(seed: u64, shape: &str, model: &str, run: usize, set: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"conformal-gpu grid v1");
    h.update(seed.to_le_bytes());
    for part in [shape, model, &run.to_string(), set] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

/// Generates one set of one run in memory (see the module docs for the model).
pub fn generate_grid_set(
    cfg: &GridConfig,
    shape: &GridShape,
    profile: &ModelProfile,
    run: usize,
    set: &GridSet,
) -> PredictionSet {
    let n = cfg.rows(set);
    let k = shape.k;
    let group = group_of_rows(n, set.groups);
    let run_shift = 0.005 * (run as f64 - 2.0);
    let mus: Vec<f64> = set
        .groups
        .iter()
        .map(|g| phi_inv((g.1 + profile.accuracy_shift + run_shift).clamp(0.01, 0.999)))
        .collect();
    let key = set_key(cfg.seed, shape.name, profile.name, run, set.name);
    let mut logits = vec![0f32; k * n];
    logits
        .par_chunks_mut(k * BLOCK)
        .enumerate()
        .for_each(|(b, chunk)| {
            let mut rng = ChaCha8Rng::from_seed(key);
            rng.set_stream(b as u64);
            let mut noise = vec![0f64; k + 1];
            for (r, row) in chunk.chunks_exact_mut(k).enumerate() {
                let i = b * BLOCK + r;
                let y = i % k;
                normals(&mut rng, &mut noise);
                let u: f64 = rng.random::<f64>();
                let m = mus[group[i] as usize] + noise[k];
                let c = if m > 0.0 {
                    y
                } else {
                    (y + 1 + ((u * (k - 1) as f64) as usize).min(k - 2)) % k
                };
                let gap = profile.kappa * m.abs();
                let top_other = (0..k)
                    .filter(|&j| j != c)
                    .map(|j| noise[j])
                    .fold(f64::NEG_INFINITY, f64::max);
                for (j, z) in row.iter_mut().enumerate() {
                    *z = noise[j] as f32;
                }
                row[c] = (top_other + gap) as f32;
                if c != y && k > 2 {
                    let rest = (0..k)
                        .filter(|&j| j != c && j != y)
                        .map(|j| noise[j])
                        .fold(f64::NEG_INFINITY, f64::max);
                    row[y] = (rest + gap / 2.0) as f32;
                }
            }
        });
    let labels: Array1<i64> = (0..n).map(|i| (i % k) as i64).collect();
    let hospital = shape
        .grouped
        .then(|| group.iter().map(|&g| set.groups[g as usize].0).collect());
    // Shape (n, k) always matches a k n-long vector.
    let logits = Array2::from_shape_vec((n, k), logits)
        .unwrap_or_else(|_| unreachable!("k n values make an (n, k) array"));
    PredictionSet {
        name: set.name.to_string(),
        logits,
        labels: Some(labels),
        hospital,
        slide: None,
    }
}

/// Writes the grid into `out` as `DATASET/MODEL/RUN/SET.npz` (atomically, uncompressed),
/// `progress` told about each cell. Returns the written paths in order.
pub fn generate_grid(
    cfg: &GridConfig,
    out: &Path,
    progress: Option<&dyn Fn(&str)>,
) -> Result<Vec<PathBuf>> {
    check_scale(cfg.scale)?;
    let mut paths = Vec::new();
    for shape in cfg.shapes()? {
        for profile in &PROFILES {
            for run in 0..RUNS {
                let dir = out
                    .join(shape.name)
                    .join(profile.name)
                    .join(run.to_string());
                std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
                for set in shape.sets {
                    let data = generate_grid_set(cfg, shape, profile, run, set);
                    let path = dir.join(format!("{}.npz", set.name));
                    save_npz(&path, &data, false)?;
                    paths.push(path);
                }
                if let Some(p) = progress {
                    p(&format!("{}/{}/{run}", shape.name, profile.name));
                }
            }
        }
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_cover_rows_in_share_order() {
        // 0 and 1 rows, a size below the group count, and the real sizes.
        for n in [0usize, 1, 5, 1_901, 3_905] {
            let g = group_of_rows(n, FITZ_ATLAS);
            assert_eq!(g.len(), n);
            assert!(g.windows(2).all(|w| w[0] <= w[1]));
        }
        let g = group_of_rows(1000, FITZ_ID);
        let count = |j: u16| g.iter().filter(|&&x| x == j).count();
        assert_eq!(
            (0..6).map(count).collect::<Vec<_>>(),
            [200, 300, 200, 170, 80, 50]
        );
    }

    #[test]
    fn accuracy_follows_the_profile() {
        let cfg = GridConfig {
            scale: 1.0,
            seed: 7,
            datasets: vec![],
        };
        for shape in &SHAPES[1..] {
            let set = &shape.sets[1];
            let data = generate_grid_set(&cfg, shape, &PROFILES[0], 2, set);
            data.validate().unwrap();
            let labels = data.labels.as_ref().unwrap();
            let correct = data
                .logits
                .rows()
                .into_iter()
                .zip(labels)
                .filter(|(row, &y)| {
                    let mut best = 0;
                    for j in 1..row.len() {
                        if row[j] > row[best] {
                            best = j;
                        }
                    }
                    best as i64 == y
                })
                .count();
            let acc = correct as f64 / data.n() as f64;
            let want = set.groups.iter().map(|g| g.1 * g.2 as f64).sum::<f64>()
                / set.groups.iter().map(|g| g.2 as f64).sum::<f64>();
            // Binomial sd at n >= 1901 is below 1.2 points; 4 sd.
            assert!(
                (acc - want).abs() < 0.045,
                "{}: {acc} vs {want}",
                shape.name
            );
        }
    }

    #[test]
    fn same_seed_same_rows_other_run_other_rows() {
        let cfg = GridConfig {
            scale: 0.05,
            seed: 1,
            datasets: vec![],
        };
        let (shape, set) = (&SHAPES[3], &SHAPES[3].sets[2]);
        let a = generate_grid_set(&cfg, shape, &PROFILES[1], 0, set);
        let b = generate_grid_set(&cfg, shape, &PROFILES[1], 0, set);
        let c = generate_grid_set(&cfg, shape, &PROFILES[1], 1, set);
        assert_eq!(a, b);
        assert_ne!(a.logits, c.logits);
        let unknown = GridConfig {
            datasets: vec!["mnist".into()],
            ..cfg
        };
        assert!(unknown.shapes().unwrap_err().to_string().contains("mnist"));
    }
}
