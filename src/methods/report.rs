//! A target's report from its merged tally (DESIGN.md 2.3-2.10): the estimates, the
//! conformal diagnostics, the groups, the truth and errors where labelled, the intervals;
//! and an evaluation's MAE rows over its targets and groups.

use std::collections::BTreeMap;

use crate::error::Result;
use crate::kernel::bootstrap::{name_key, percentile_interval, RepCounts};
use crate::kernel::tally::{count, level, Counts, GroupKey, GROUP_ARRAYS};
use crate::methods::bootstrap::{Intervals, MethodIntervals, ReplicateValues};
use crate::methods::calibration::Calibration;
use crate::methods::quantile::conformal_rank;
use crate::methods::sets::{cpc_method, report_entries, score_cpc};
use crate::methods::shift_scores::shift_scores;
use crate::methods::tally::Tally;
use crate::methods::thresholds::ModeCalibration;
use crate::report::model::{
    BootstrapMeta, ConformalStats, CpcChoice, Estimates, Evaluation, GroupReport, MaeRow, Method,
    Modes, PerClass, RowOutputs, TargetReport, Timings,
};

impl Counts {
    /// The count-based estimates from these counts under mode calibration `cal` (COT,
    /// which needs the rows, is added by the report).
    pub fn estimates(&self, cal: &ModeCalibration) -> Estimates {
        let c = &self.counts;
        let n = self.n();
        let ac = self.mean_p1();
        Estimates {
            ac,
            doc: cal.accuracy() + ac - cal.ac,
            atc_mc: cal
                .atc_mc
                .estimate(c[count::MC_ABOVE], c[count::MC_EQUAL], n),
            atc_ne: cal
                .atc_ne
                .estimate(c[count::NE_ABOVE], c[count::NE_EQUAL], n),
            cpc: c[count::CPC] as f64 / n as f64,
            cot: None,
            ..Default::default()
        }
    }

    /// Accuracy over the labelled rows (`None` without any).
    pub fn true_accuracy(&self) -> Option<f64> {
        let l = self.labelled();
        (l > 0).then(|| self.counts[count::CORRECT] as f64 / l as f64)
    }

    /// Conformal diagnostics per level.
    pub fn conformal(&self, cal: &ModeCalibration, alphas: &[f64]) -> Vec<ConformalStats> {
        let n = self.n() as f64;
        let labelled = self.labelled();
        alphas
            .iter()
            .zip(&self.levels)
            .enumerate()
            .map(|(a, (&alpha, lv))| ConformalStats {
                score: "lac".into(),
                class_conditional: false,
                alpha,
                k: PerClass::One(conformal_rank(cal.n, alpha)),
                qhat: PerClass::One(cal.qhats[a].map(|q| q as f64)),
                mean_set_size: lv[level::SIZE_SUM] as f64 / n,
                singleton_rate: lv[level::SINGLETON] as f64 / n,
                empty_rate: lv[level::EMPTY] as f64 / n,
                coverage: (labelled > 0).then(|| lv[level::COVERED] as f64 / labelled as f64),
                sscv: None,
                by_class: None,
            })
            .collect()
    }
}

impl Calibration {
    /// The report of target `name` from its (merged) tally: estimates, diagnostics,
    /// groups, true accuracy where labelled. The tally must come from this calibration.
    pub fn report(&self, name: &str, tally: &Tally) -> Result<TargetReport> {
        tally.check_against(self)?;
        let a = self.alphas.len();
        let all = Modes {
            raw: Tally::total(&tally.modes.raw, a),
            ts: Tally::total(&tally.modes.ts, a),
        };
        // With a bootstrap: every replicate's values, then the intervals.
        let boot = match (&self.bootstrap, &tally.bootstrap) {
            (Some(cb), Some(tb)) => Some((cb, tb)),
            _ => None,
        };
        // The sets of every score, where the calibration and the tally carry them.
        let sets = match (&self.sets, &tally.sets) {
            (Some(c), Some(t)) => Some((c, t)),
            _ => None,
        };
        let optional: Vec<&str> = sets
            .map(|(c, _)| {
                c.modes
                    .raw
                    .cpc
                    .iter()
                    .filter_map(|s| cpc_method(&s.score))
                    .collect()
            })
            .unwrap_or_default();
        let values = |counts: &Modes<RepCounts>,
                      cb: &crate::methods::bootstrap::CalibrationBootstrap| {
            let mut v = cb.replicate_values(counts);
            v.mark_optional(&optional);
            v
        };
        let intervals = |counts: &Modes<RepCounts>, labelled: bool| {
            boot.map(|(cb, _)| Intervals::new(values(counts, cb), labelled, cb.confidence))
        };
        // A mode's entries and CPC-score estimates over the pairs `keep` accepts, on top
        // of the backend's LAC entries `lac` (`classes`: target level).
        let with_sets = |est: &mut Estimates,
                         lac: Vec<ConformalStats>,
                         ts: bool,
                         keep: &dyn Fn(&GroupKey) -> bool,
                         classes: bool|
         -> Vec<ConformalStats> {
            let Some((sc, st)) = sets else {
                return lac;
            };
            let c = st.summed(sc, ts, keep);
            let mode = sc.modes.of(ts);
            for (name, v) in score_cpc(mode, &c) {
                est.set_optional(name, v);
            }
            let cl = classes.then(|| st.classes.of(ts).as_slice());
            report_entries(mode, &self.alphas, &c, cl, &lac)
        };
        // COT where the tally carries its rows (not from files) and the target has rows.
        let cot_rows = tally
            .cot
            .as_ref()
            .filter(|_| all.raw.n() > 0 && !self.class_counts.is_empty());
        let t = Modes {
            raw: self.modes.raw.t,
            ts: self.modes.ts.t,
        };
        // COT and the shift scores read the same rows and nothing of each other: side by
        // side, the one's serial steps (a selection a set) overlap the other's blocks.
        let (cot, scores) = rayon::join(
            || {
                cot_rows
                    .map(|c| c.solve(self.k, &self.class_counts, t.clone(), self.cott.as_ref()))
                    .transpose()
            },
            || cot_rows.and_then(|rows| shift_scores(rows, self.k, t.clone())),
        );
        let cot = cot?;
        // The reference mode's values: ts, the whole target only.
        let reference = match (&self.cot_reference, cot_rows) {
            (Some(r), Some(rows)) => {
                let logits: Vec<f32> = rows.logits().flatten().copied().collect();
                Some(r.estimate(&logits, self.k, self.modes.ts.t)?)
            }
            _ => None,
        };
        let mut groups = BTreeMap::new();
        for (g, group) in GROUP_ARRAYS.iter().enumerate() {
            if !tally.group_arrays.iter().any(|x| x == group) {
                continue;
            }
            let group_cot = cot.as_ref().map(|c| &c.groups[g]);
            let group_cott = cot.as_ref().map(|c| &c.cott_groups[g]);
            let raw = Tally::by_group(&tally.modes.raw, g, a);
            let ts = Tally::by_group(&tally.modes.ts, g, a);
            let reps = boot.map(|(_, tb)| tb.by_group(g));
            let list = raw
                .iter()
                .zip(ts.values())
                .map(|((&id, r), t)| {
                    let mut estimates = with_cot(
                        Modes {
                            raw: r.estimates(&self.modes.raw),
                            ts: t.estimates(&self.modes.ts),
                        },
                        group_cot.as_ref().and_then(|m| m.get(&id)),
                        group_cott.as_ref().and_then(|m| m.get(&id)),
                    );
                    let keep = move |key: &GroupKey| key[g] == Some(id);
                    let conformal = Modes {
                        raw: with_sets(
                            &mut estimates.raw,
                            r.conformal(&self.modes.raw, &self.alphas),
                            false,
                            &keep,
                            false,
                        ),
                        ts: with_sets(
                            &mut estimates.ts,
                            t.conformal(&self.modes.ts, &self.alphas),
                            true,
                            &keep,
                            false,
                        ),
                    };
                    GroupReport {
                        id,
                        n: r.n() as usize,
                        n_labelled: r.labelled() as usize,
                        true_accuracy: r.true_accuracy(),
                        estimates,
                        conformal,
                        intervals: reps
                            .as_ref()
                            .and_then(|m| m.get(&id))
                            .and_then(|c| intervals(c, r.labelled() > 0)),
                    }
                })
                .collect();
            groups.insert(group.to_string(), list);
        }
        let cpc = |c: &ModeCalibration| CpcChoice {
            q: c.cpc_q.map(|q| q as f64),
            alpha: c.cpc_alpha,
        };
        let mut estimates = with_cot(
            Modes {
                raw: all.raw.estimates(&self.modes.raw),
                ts: all.ts.estimates(&self.modes.ts),
            },
            cot.as_ref().map(|c| &c.target),
            cot.as_ref().and_then(|c| c.cott.as_ref()),
        );
        if let Some((cot_ref, cott_ref)) = reference {
            estimates.ts.cot_ref = Some(Some(cot_ref));
            estimates.ts.cott_ref = Some(cott_ref);
        }
        let everything = |_: &GroupKey| true;
        let conformal = Modes {
            raw: with_sets(
                &mut estimates.raw,
                all.raw.conformal(&self.modes.raw, &self.alphas),
                false,
                &everything,
                true,
            ),
            ts: with_sets(
                &mut estimates.ts,
                all.ts.conformal(&self.modes.ts, &self.alphas),
                true,
                &everything,
                true,
            ),
        };
        Ok(TargetReport {
            name: name.to_string(),
            n: all.raw.n() as usize,
            n_labelled: all.raw.labelled() as usize,
            labelled: all.raw.labelled() == all.raw.n(),
            true_accuracy: all.raw.true_accuracy(),
            estimates,
            cpc: Modes {
                raw: cpc(&self.modes.raw),
                ts: cpc(&self.modes.ts),
            },
            conformal,
            scores,
            groups,
            intervals: match (boot, cot_rows) {
                (Some((cb, tb)), Some(rows)) => {
                    // The target's intervals with COT's replicates (groups: none yet).
                    let mut values = values(&tb.total(), cb);
                    let temps = Modes {
                        raw: cb.modes.raw.iter().map(|r| r.t).collect(),
                        ts: cb.modes.ts.iter().map(|r| r.t).collect(),
                    };
                    // COTT's replicates where the calibration has the replicates'
                    // thresholds and the point COTT is there.
                    let cott = cb.cott.as_ref().filter(|_| self.cott.is_some());
                    let (reps, cott_reps) = rows.replicates(
                        self.k,
                        &temps,
                        cb.seed,
                        name_key(&tally.name),
                        &cb.class_counts,
                        cott,
                    )?;
                    for (est, v) in [
                        (&mut values.estimates.raw, &reps.raw),
                        (&mut values.estimates.ts, &reps.ts),
                    ] {
                        for (e, &v) in est.iter_mut().zip(v) {
                            e.cot = Some(v);
                        }
                    }
                    if let Some(c) = cott_reps {
                        for (est, v) in [
                            (&mut values.estimates.raw, &c.raw),
                            (&mut values.estimates.ts, &c.ts),
                        ] {
                            for (e, &v) in est.iter_mut().zip(v) {
                                e.cott = Some(v);
                            }
                        }
                    }
                    Some(Intervals::new(
                        values,
                        all.raw.labelled() > 0,
                        cb.confidence,
                    ))
                }
                _ => boot.and_then(|(_, tb)| intervals(&tb.total(), all.raw.labelled() > 0)),
            },
        })
    }
}

/// `estimates` with COT's values, where computed.
fn with_cot(
    mut estimates: Modes<Estimates>,
    cot: Option<&Modes<f64>>,
    cott: Option<&Modes<f64>>,
) -> Modes<Estimates> {
    if let Some(c) = cot {
        estimates.raw.cot = Some(c.raw);
        estimates.ts.cot = Some(c.ts);
    }
    if let Some(c) = cott {
        estimates.raw.cott = Some(c.raw);
        estimates.ts.cott = Some(c.ts);
    }
    estimates
}

impl Evaluation {
    /// Assembles an evaluation from a calibration and its targets' reports: the MAE rows
    /// and the source summary come from them.
    pub fn assemble(
        cal: &Calibration,
        device: String,
        targets: Vec<TargetReport>,
        rows: Vec<RowOutputs>,
        timings_ms: Timings,
    ) -> Self {
        let bootstrap = cal.bootstrap.as_ref().map(|b| BootstrapMeta {
            replicates: b.replicates,
            confidence: b.confidence,
            seed: b.seed,
        });
        Evaluation {
            device,
            alphas: cal.alphas.clone(),
            source: cal.source.clone(),
            mae: mae_rows(&targets),
            mae_ci: bootstrap.map(|b| mae_intervals(&targets, b.confidence)),
            bootstrap,
            targets,
            rows,
            timings_ms,
            mae_exclude: Vec::new(),
        }
    }

    /// Keeps the targets whose name matches one of `globs` (`*`, `?`, `[..]`) out of the
    /// MAE rows and their intervals (they are still reported); a bad glob is an error
    /// naming it.
    pub fn exclude_from_mae(&mut self, globs: &[String]) -> Result<()> {
        if globs.is_empty() {
            return Ok(());
        }
        let patterns = globs
            .iter()
            .map(|g| {
                glob::Pattern::new(g)
                    .map_err(|e| crate::Error::Invalid(format!("--exclude {g:?}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let kept: Vec<TargetReport> = self
            .targets
            .iter()
            .filter(|t| !patterns.iter().any(|p| p.matches(&t.name)))
            .cloned()
            .collect();
        self.mae = mae_rows(&kept);
        if let Some(b) = &self.bootstrap {
            self.mae_ci = Some(mae_intervals(&kept, b.confidence));
        }
        self.mae_exclude = globs.to_vec();
        Ok(())
    }
}

fn mae_of(pairs: &[(Estimates, f64)], methods: &[Method]) -> MaeRow {
    methods
        .iter()
        .copied()
        .map(|m| {
            // NaN (a method not computed for some member) leaves the row empty.
            let v = (!pairs.is_empty())
                .then(|| {
                    pairs.iter().map(|(e, t)| (e.get(m) - t).abs()).sum::<f64>()
                        / pairs.len() as f64
                })
                .filter(|v| !v.is_nan());
            (m.name(), v)
        })
        .collect()
}

/// Per replicate, the mean over `members` of method `m`'s absolute error (errors taken
/// within a replicate), then its interval.
fn mae_interval(
    members: &[&ReplicateValues],
    ts: bool,
    m: Method,
    confidence: f64,
) -> Option<[f64; 2]> {
    let first = members.first()?;
    let reps = first.truth.len();
    let mut per_rep = vec![0.0f64; reps];
    for v in members {
        for (acc, e) in per_rep.iter_mut().zip(v.errors(ts, m)) {
            *acc += e;
        }
    }
    let n = members.len() as f64;
    let per_rep: Vec<f64> = per_rep.into_iter().map(|s| s / n).collect();
    percentile_interval(&per_rep, confidence)
}

/// MAE intervals keyed as [`mae_rows`]: over the same labelled targets and groups.
pub fn mae_intervals(
    reports: &[TargetReport],
    confidence: f64,
) -> BTreeMap<String, MethodIntervals> {
    let mut out = BTreeMap::new();
    let methods = Method::present(reports.first().map(|r| &r.estimates.raw));
    let row = |members: &[&ReplicateValues], ts: bool| -> MethodIntervals {
        methods
            .iter()
            .copied()
            .map(|m| (m.name(), mae_interval(members, ts, m, confidence)))
            .collect()
    };
    let targets: Vec<&ReplicateValues> = reports
        .iter()
        .filter(|r| r.true_accuracy.is_some())
        .filter_map(|r| r.intervals.as_ref().map(|i| &i.values))
        .collect();
    out.insert("raw".to_string(), row(&targets, false));
    out.insert("ts".to_string(), row(&targets, true));
    for name in GROUP_ARRAYS {
        if !reports.iter().any(|r| r.groups.contains_key(name)) {
            continue;
        }
        let members: Vec<&ReplicateValues> = reports
            .iter()
            .flat_map(|r| r.groups.get(name).into_iter().flatten())
            .filter(|g| g.true_accuracy.is_some())
            .filter_map(|g| g.intervals.as_ref().map(|i| &i.values))
            .collect();
        out.insert(format!("{name}_raw"), row(&members, false));
        out.insert(format!("{name}_ts"), row(&members, true));
    }
    out
}

/// MAE per method over labelled targets, and over (target, group) pairs per group array.
pub fn mae_rows(reports: &[TargetReport]) -> BTreeMap<String, MaeRow> {
    let mut out = BTreeMap::new();
    let methods = Method::present(reports.first().map(|r| &r.estimates.raw));
    let pairs = |ts: bool| -> Vec<(Estimates, f64)> {
        reports
            .iter()
            .filter_map(|r| {
                r.true_accuracy
                    .map(|acc| (if ts { r.estimates.ts } else { r.estimates.raw }, acc))
            })
            .collect()
    };
    out.insert("raw".to_string(), mae_of(&pairs(false), &methods));
    out.insert("ts".to_string(), mae_of(&pairs(true), &methods));
    for name in GROUP_ARRAYS {
        if !reports.iter().any(|r| r.groups.contains_key(name)) {
            continue;
        }
        for (suffix, ts) in [("raw", false), ("ts", true)] {
            let pairs: Vec<(Estimates, f64)> = reports
                .iter()
                .flat_map(|r| r.groups.get(name).into_iter().flatten())
                .filter_map(|g| {
                    g.true_accuracy
                        .map(|acc| (if ts { g.estimates.ts } else { g.estimates.raw }, acc))
                })
                .collect();
            out.insert(format!("{name}_{suffix}"), mae_of(&pairs, &methods));
        }
    }
    out
}
