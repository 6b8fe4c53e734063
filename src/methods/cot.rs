//! COT, confidence optimal transport (Lu, Y. et al. 2023; DESIGN.md 2.11), exact: one
//! minus the optimal transport cost between a target's rows (mass `1/N` each) and the
//! source's label shares `pi_k = n_k / n`, a row's cost to class k being `c_ik = 1 - p_ik`.
//!
//! The masses are made integers (`n` units a row, `n_k N` units a class) and the costs
//! grid integers ([`transport::grid_cost`]), so the optimum is found exactly:
//! - K = 2, closed form: the `n_1 N` units class 1 needs come from the rows that gain
//!   most by going there (largest `c_i0 - c_i1`, i.e. `p_i1 - p_i0`), whole rows first and
//!   a fraction of the next; tied rows cost the same, so which one moves does not matter.
//! - K > 2: [`transport::solve`], successive shortest paths over the K classes.
//!
//! This is the in-memory reference; COT is not yet in the reports (see the README).

use crate::error::{Error, Result};
use crate::methods::transport::{self, grid_cost, COST_GRID_BITS};

/// The share of each class among the labelled rows, as counts (`-1` = unknown, skipped).
pub fn class_counts(labels: &[i64], k: usize) -> Result<Vec<u64>> {
    let mut counts = vec![0u64; k];
    for (row, &y) in labels.iter().enumerate() {
        if y == -1 {
            continue;
        }
        if y < -1 || y >= k as i64 {
            return Err(Error::LabelOutOfRange {
                what: "COT source labels".into(),
                row,
                label: y,
                k,
            });
        }
        counts[y as usize] += 1;
    }
    Ok(counts)
}

/// The grid costs `1 - p_ik` of row-major f32 probabilities.
fn grid_costs(probs: &[f32]) -> Vec<i64> {
    probs.iter().map(|&p| grid_cost(1.0 - p as f64)).collect()
}

/// COT's transport cost per unit of target mass (the error COT predicts): the optimal
/// cost of moving `N = probs.len() / k` rows of mass `1/N` to the classes in the shares
/// of `class_counts`. `probs` are f32 probabilities, row-major.
pub fn cot_cost(probs: &[f32], k: usize, class_counts: &[u64]) -> Result<f64> {
    if k < 2 {
        return Err(Error::TooFewClasses {
            what: "COT".into(),
            k,
        });
    }
    if class_counts.len() != k {
        return Err(Error::LengthMismatch {
            what: "COT class counts".into(),
            detail: format!("{} counts for K = {k}", class_counts.len()),
        });
    }
    if !probs.len().is_multiple_of(k) {
        return Err(Error::LengthMismatch {
            what: "COT probabilities".into(),
            detail: format!("{} values do not make rows of K = {k}", probs.len()),
        });
    }
    if let Some(i) = probs.iter().position(|p| !(0.0..=1.0).contains(p)) {
        return Err(Error::Invalid(format!(
            "COT: probability {} of row {} is not in [0, 1]",
            probs[i],
            i / k
        )));
    }
    let n_source: u64 = class_counts.iter().sum();
    if n_source == 0 {
        return Err(Error::Empty {
            what: "COT source labels".into(),
            detail: "no labelled source row: the class shares are unknown".into(),
        });
    }
    let n = probs.len() / k;
    if n == 0 {
        return Err(Error::Empty {
            what: "COT target".into(),
            detail: "no rows".into(),
        });
    }
    let costs = grid_costs(probs);
    let demand: Vec<u64> = class_counts
        .iter()
        .map(|&c| {
            c.checked_mul(n as u64)
                .ok_or_else(|| Error::Invalid(format!("COT: {c} x {n} units overflow")))
        })
        .collect::<Result<_>>()?;
    let cost_units = if k == 2 {
        two_class_cost(&costs, n_source, demand[1])
    } else {
        transport::solve(&costs, k, n_source, &demand)?.cost_units
    };
    Ok(mean(cost_units, n as u128 * n_source as u128))
}

/// COT's estimate of the target's accuracy: `1 - cot_cost`.
pub fn cot(probs: &[f32], k: usize, class_counts: &[u64]) -> Result<f64> {
    Ok(1.0 - cot_cost(probs, k, class_counts)?)
}

/// `cost_units / (units 2^40)`, rounded once.
fn mean(cost_units: u128, units: u128) -> f64 {
    let scale = units << COST_GRID_BITS;
    (cost_units / scale) as f64 + (cost_units % scale) as f64 / scale as f64
}

/// K = 2: every row starts at class 0; class 1's `demand1` units come from the rows with
/// the largest gain `c_i0 - c_i1`, `supply` units a row, the last one in part.
fn two_class_cost(costs: &[i64], supply: u64, demand1: u64) -> u128 {
    let mut gains: Vec<i64> = costs.chunks_exact(2).map(|c| c[0] - c[1]).collect();
    gains.sort_unstable_by(|a, b| b.cmp(a));
    let base: i128 = costs.chunks_exact(2).map(|c| c[0] as i128).sum::<i128>() * supply as i128;
    let whole = (demand1 / supply) as usize;
    let part = demand1 % supply;
    let mut moved: i128 = gains[..whole].iter().map(|&g| g as i128).sum::<i128>() * supply as i128;
    if part > 0 {
        moved += gains[whole] as i128 * part as i128;
    }
    (base - moved) as u128
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A seeded generator of small probability rows with ties (quarters), so plans have
    /// tied costs and split rows.
    fn rows(seed: u64, n: usize, k: usize) -> Vec<f32> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut out = Vec::with_capacity(n * k);
        for _ in 0..n {
            let w: Vec<u64> = (0..k)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (x >> 61) + 1
                })
                .collect();
            let s: u64 = w.iter().sum();
            out.extend(w.iter().map(|&v| v as f32 / s as f32));
        }
        out
    }

    /// K = 2: the closed form and the general solver find the same optimum, at sizes
    /// 1 (one row, split), 2, an odd count and a few hundred, with shares that split a row.
    #[test]
    fn two_classes_closed_form_equals_the_solver() {
        for (seed, n, counts) in [
            (1u64, 1usize, [1u64, 2]),
            (2, 2, [3, 1]),
            (3, 7, [5, 4]),
            (4, 300, [7, 13]),
            (5, 300, [0, 9]),
        ] {
            let p = rows(seed, n, 2);
            let costs = grid_costs(&p);
            let supply: u64 = counts.iter().sum();
            let demand: Vec<u64> = counts.iter().map(|&c| c * n as u64).collect();
            let plan = transport::solve(&costs, 2, supply, &demand).unwrap();
            assert_eq!(
                two_class_cost(&costs, supply, demand[1]),
                plan.cost_units,
                "n={n}"
            );
        }
    }

    /// The plan meets every row's supply and every class's demand, splits at most K - 1
    /// rows, and no single row moved to another class makes it cheaper (a necessary
    /// condition of optimality, exact on the grid).
    #[test]
    fn plans_are_feasible_and_locally_optimal() {
        for (seed, n, k) in [(7u64, 50usize, 3usize), (8, 200, 5), (9, 120, 10)] {
            let p = rows(seed, n, k);
            let costs = grid_costs(&p);
            let counts: Vec<u64> = (0..k as u64).map(|c| 1 + (c * 7 + seed) % 5).collect();
            let supply: u64 = counts.iter().sum();
            let demand: Vec<u64> = counts.iter().map(|&c| c * n as u64).collect();
            let plan = transport::solve(&costs, k, supply, &demand).unwrap();
            let mut got = vec![0u64; k];
            let mut split = 0;
            for f in &plan.flows {
                assert_eq!(f.iter().map(|(_, u)| u).sum::<u64>(), supply);
                split += usize::from(f.len() > 1);
                for &(c, u) in f {
                    got[c as usize] += u;
                }
            }
            assert_eq!(got, demand);
            assert!(split < k, "{split} split rows");
            // Swapping one unit between two rows on different classes never saves.
            for i in 0..n {
                for j in 0..n {
                    for &(a, _) in &plan.flows[i] {
                        for &(b, _) in &plan.flows[j] {
                            let (a, b) = (a as usize, b as usize);
                            let now = costs[i * k + a] + costs[j * k + b];
                            let swapped = costs[i * k + b] + costs[j * k + a];
                            assert!(swapped >= now, "seed {seed}: rows {i} {j}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        assert!(matches!(
            cot(&[0.5, 0.5], 2, &[0, 0]),
            Err(Error::Empty { .. })
        ));
        assert!(matches!(cot(&[], 2, &[1, 1]), Err(Error::Empty { .. })));
        assert!(matches!(
            cot(&[0.5, 0.5], 2, &[1]),
            Err(Error::LengthMismatch { .. })
        ));
        assert!(matches!(
            cot(&[1.0], 1, &[1]),
            Err(Error::TooFewClasses { .. })
        ));
        assert!(matches!(
            cot(&[f32::NAN, 0.5], 2, &[1, 1]),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            class_counts(&[0, 3], 2),
            Err(Error::LabelOutOfRange { .. })
        ));
    }

    /// Every row certain of its class and shares that match: nothing moves, COT = 1.
    #[test]
    fn matching_shares_cost_nothing() {
        let p = [
            1.0f32, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0,
        ];
        assert_eq!(cot(&p, 3, &[1, 1, 2]).unwrap(), 1.0);
        // All rows want class 0 but the source is all class 1: every unit moves at cost 1.
        let q = [1.0f32, 0.0, 1.0, 0.0];
        assert_eq!(cot(&q, 2, &[0, 5]).unwrap(), 0.0);
    }
}
