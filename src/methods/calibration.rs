//! Calibrate once (DESIGN.md 3, "The pipeline"): everything the source decides, per mode
//! (`raw` at T = 1, `ts` at the fitted or given temperature): T, NLL and ECE before and
//! after, accuracy, AC(S), the ATC thresholds and tie shares, CPC's q* and alpha*, qhat
//! per level and the sorted LAC scores. A [`Calibration`] is serialisable (versioned
//! JSON) and carries an `id`: the SHA-256 of its content, which every [`Tally`] made with
//! it records, so tallies of another calibration are refused and a damaged file is found.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::backend::{labels_i32, Backend};
use crate::data::PredictionSet;
use crate::error::{Error, Result};
use crate::kernel::bootstrap::{name_key, BootstrapTallyPlan, ReplicatePlan};
use crate::kernel::calibration::{CalibrationStats, BINS};
use crate::kernel::tally::GROUP_ARRAYS;
use crate::methods::bootstrap::{fit_replicates, BootstrapOptions, CalibrationBootstrap};
use crate::methods::cot_reference::{CotReference, CotReferenceOptions};
use crate::methods::cott::{source_threshold, CottThreshold};
use crate::methods::quantile::check_alpha;
use crate::methods::row_outputs::prepared_row_outputs;
pub use crate::methods::sets::SetOptions;
use crate::methods::sets::{SetCalibration, SetRows, SetSource};
use crate::methods::tally::{Tally, TallyShape, TargetRows};
pub use crate::methods::temperature::Temperature;
use crate::methods::temperature::{
    fit_temperature, validate_source, validate_temperature, TemperatureFit,
};
pub use crate::methods::thresholds::{cpc_sweep, AtcThreshold, ModeCalibration};
use crate::report::model::{InputFile, Modes, RowOutputs, SourceReport};

/// `format` of a calibration file.
pub const CALIBRATION_FORMAT: &str = "conformal-gpu calibration";
/// `version` of the calibration files this build writes and reads.
pub const CALIBRATION_VERSION: u32 = 2;

/// Options of [`Calibration::fit`].
#[derive(Clone, Debug)]
pub struct CalibrationOptions<'a> {
    /// Miscoverage levels for the conformal diagnostics (each in (0, 1)).
    pub alphas: Vec<f64>,
    /// Temperature of the `ts` mode.
    pub temperature: Temperature<'a>,
    /// Bootstrap replicates (0 = none), their seed and the intervals' confidence.
    pub bootstrap: BootstrapOptions,
    /// Conformal scores and their options (the randomised draws use the bootstrap's
    /// seed: `sets.seed` is overwritten by it).
    pub sets: SetOptions,
    /// COT's reference mode (`COT-ref`, `COTT-ref`; DESIGN.md 2.16), when asked for.
    pub cot_reference: Option<CotReferenceOptions>,
}

impl Default for CalibrationOptions<'_> {
    fn default() -> Self {
        CalibrationOptions {
            alphas: vec![0.1],
            temperature: Temperature::FitSource,
            bootstrap: BootstrapOptions::default(),
            sets: SetOptions::default(),
            cot_reference: None,
        }
    }
}

/// How the `ts` temperature was chosen, as recorded in a calibration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TemperatureSource {
    /// `"fit_source"`, `"fixed"` or `"fit_other"`.
    pub kind: String,
    /// The set fitted on (`fit_other`).
    pub set: Option<String>,
    /// SHA-256 of that set's arrays (`fit_other`).
    pub set_sha256: Option<String>,
}

/// Milliseconds of the fit's phases.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FitTimings {
    /// Temperature fit and calibration statistics.
    pub temperature: f64,
    /// Source row statistics, sorting, thresholds.
    pub sort: f64,
}

/// Everything the source decides, for both modes. See the module docs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Always [`CALIBRATION_FORMAT`].
    pub format: String,
    /// [`CALIBRATION_VERSION`].
    pub version: u32,
    /// SHA-256 of the content (every field but `id`, `device`, `inputs`, `timings_ms`).
    pub id: String,
    /// SHA-256 of the source's arrays as the fit read them (K, N, f32 logits, labels).
    pub source_sha256: String,
    /// Classes.
    pub k: usize,
    /// Levels.
    pub alphas: Vec<f64>,
    /// How the `ts` temperature was chosen.
    pub temperature_source: TemperatureSource,
    /// The source summary of the report.
    pub source: SourceReport,
    /// Thresholds per mode.
    pub modes: Modes<ModeCalibration>,
    /// Source rows per class (COT's label shares `pi_k = n_k / n`; version 2).
    pub class_counts: Vec<u64>,
    /// Every conformal score's thresholds (absent in files written before scores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sets: Option<SetCalibration>,
    /// COTT's threshold and tie weight per mode (DESIGN.md 2.16; absent in files written
    /// before COTT, whose reports then carry no COTT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cott: Option<Modes<CottThreshold>>,
    /// COT's reference mode: its label shares and COTT-ref's threshold (present only when
    /// asked for; see [`crate::methods::cot_reference`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cot_reference: Option<CotReference>,
    /// Every bootstrap replicate's refit of the source (absent without a bootstrap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<CalibrationBootstrap>,
    /// `"cpu"` or `"gpu: <adapter>"`: the backend that fitted (thresholds may differ by
    /// an ulp between backends, so the id differs too).
    pub device: String,
    /// Files the source (and temperature set) came from, when read from disk.
    #[serde(default)]
    pub inputs: Vec<InputFile>,
    /// Phase timings of the fit.
    #[serde(default)]
    pub timings_ms: FitTimings,
}

/// What a tally made with this calibration must agree on.
impl<'a> From<&'a Calibration> for TallyShape<'a> {
    fn from(cal: &'a Calibration) -> Self {
        TallyShape {
            calibration: &cal.id,
            k: cal.k,
            n_alpha: cal.alphas.len(),
            bootstrap: cal.bootstrap.as_ref().map(|b| (b.replicates, b.seed)),
            sets: cal.sets.as_ref(),
        }
    }
}

/// The fields an id covers, borrowed, in a fixed order.
#[derive(Serialize)]
struct IdContent<'a> {
    format: &'a str,
    version: u32,
    source_sha256: &'a str,
    k: usize,
    alphas: &'a [f64],
    temperature_source: &'a TemperatureSource,
    source: &'a SourceReport,
    modes: &'a Modes<ModeCalibration>,
    class_counts: &'a [u64],
    #[serde(skip_serializing_if = "Option::is_none")]
    bootstrap: &'a Option<CalibrationBootstrap>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sets: &'a Option<SetCalibration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cott: &'a Option<Modes<CottThreshold>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cot_reference: &'a Option<CotReference>,
}

pub use crate::provenance::hex;

/// SHA-256 of a set's arrays as the kernels read them: K, N, the f32 logits row-major and
/// the labels as i64, little-endian (independent of the file's dtype and layout).
pub fn set_fingerprint(set: &PredictionSet) -> String {
    let mut h = Sha256::new();
    h.update((set.k() as u64).to_le_bytes());
    h.update((set.n() as u64).to_le_bytes());
    for v in set.logits_slice().iter() {
        h.update(v.to_le_bytes());
    }
    if let Some(l) = &set.labels {
        for y in l {
            h.update(y.to_le_bytes());
        }
    }
    hex(&h.finalize())
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// Every set must have the source's number of classes (an invalid-data error, exit 5).
pub(crate) fn same_k(what: &str, k: usize, source: &str, source_k: usize) -> Result<()> {
    if k == source_k {
        return Ok(());
    }
    Err(Error::LengthMismatch {
        what: format!("{what}: logits"),
        detail: format!("rows have K = {k} classes but the source {source} has K = {source_k}"),
    })
}

/// Runs `f` on `labels`, or on `n` unknown labels (-1) from a per-thread buffer that is
/// filled once, not per chunk.
pub(crate) fn with_labels<R>(labels: Option<&[i32]>, n: usize, f: impl FnOnce(&[i32]) -> R) -> R {
    thread_local! {
        static UNKNOWN: std::cell::RefCell<Vec<i32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    match labels {
        Some(l) => f(l),
        // A nested call on the same thread (a rayon worker running another tally while
        // it waits) finds the buffer in use and takes its own.
        None => UNKNOWN.with(|u| match u.try_borrow_mut() {
            Ok(mut u) => {
                if u.len() < n {
                    u.resize(n, -1);
                }
                f(&u[..n])
            }
            Err(_) => f(&vec![-1; n]),
        }),
    }
}

/// A set of `k` classes (named `what`) must match the calibration's K (exit 5).
pub fn check_k(what: &str, k: usize, cal: &Calibration) -> Result<()> {
    same_k(what, k, &cal.source.name, cal.k)
}

impl Calibration {
    /// Fits everything the source decides (DESIGN.md 2.2-2.9) on `backend`. The source
    /// (and a temperature set) are validated first: every label known, K >= 2, finite.
    pub fn fit<B: Backend>(
        backend: &B,
        source: &PredictionSet,
        options: &CalibrationOptions<'_>,
    ) -> Result<Self> {
        let alphas = &options.alphas;
        options.bootstrap.validate()?;
        validate_source(source)?;
        if alphas.is_empty() {
            return Err(Error::Invalid("no alpha level given".into()));
        }
        for &a in alphas {
            check_alpha(a)?;
        }
        let k = source.k();
        let temperature_source = match options.temperature {
            Temperature::FitSource => TemperatureSource {
                kind: "fit_source".into(),
                set: None,
                set_sha256: None,
            },
            Temperature::Fixed(t) => {
                validate_temperature(t)?;
                TemperatureSource {
                    kind: "fixed".into(),
                    set: None,
                    set_sha256: None,
                }
            }
            Temperature::FitOn(other) => {
                validate_source(other)?;
                same_k(&other.name, other.k(), &source.name, k)?;
                TemperatureSource {
                    kind: "fit_other".into(),
                    set: Some(other.name.clone()),
                    set_sha256: Some(set_fingerprint(other)),
                }
            }
        };

        let phase = Instant::now();
        let src_logits = source.logits_slice();
        let src_labels = labels_i32(source);
        // Every source label is known and in range (validated above).
        let mut class_counts = vec![0u64; k];
        for &y in &src_labels {
            class_counts[y as usize] += 1;
        }
        let src_rows = backend.prepare(&src_logits, &src_labels, k)?;
        let fit: TemperatureFit = match options.temperature {
            Temperature::FitSource => fit_temperature(backend, &src_rows)?,
            Temperature::Fixed(t) => TemperatureFit {
                temperature: t,
                iterations: 0,
                converged: true,
                nll: f64::NAN,
                warning: None,
            },
            Temperature::FitOn(other) => {
                let (l, y) = (other.logits_slice(), labels_i32(other));
                let rows = backend.prepare(&l, &y, k)?;
                fit_temperature(backend, &rows)?
            }
        };
        let t_ts = fit.temperature as f32;
        let nll_before = backend.nll_sums(&src_rows, 1.0)?;
        let nll_after = backend.nll_sums(&src_rows, 1.0 / fit.temperature)?;
        let cal_before = backend.calibration(&src_rows, 1.0)?;
        let cal_after = backend.calibration(&src_rows, t_ts)?;
        let t_temperature = ms(phase);

        let phase = Instant::now();
        // Every source label is known, so the calibration pass's correct count is the
        // number of rows whose argmax is the label.
        let correct = cal_before.correct as usize;
        let mode = |t: f32| -> Result<ModeCalibration> {
            let cols = backend.sorted_columns(&src_rows, t)?;
            Ok(ModeCalibration::from_columns(cols, correct, t, alphas))
        };
        let modes = Modes {
            raw: mode(1.0)?,
            ts: mode(t_ts)?,
        };
        let mut set_options = options.sets.clone();
        set_options.seed = options.bootstrap.seed;
        let sets = SetCalibration::fit(
            &set_options,
            &SetSource {
                name: &source.name,
                k,
                logits: &src_logits,
                labels: &src_labels,
                correct,
            },
            alphas,
            Modes {
                raw: modes.raw.t,
                ts: modes.ts.t,
            },
            Modes {
                raw: &modes.raw.qhats,
                ts: &modes.ts.qhats,
            },
        )?;
        // COTT's threshold: the source's own plan against its shares, per mode.
        let errors = (source.n() - correct) as u64;
        let threshold = |t: f32| {
            let costs = crate::methods::cot::grid_costs_at(&src_logits, k, t);
            source_threshold(&costs, k, &class_counts, errors)
        };
        let cott = Some(Modes {
            raw: threshold(modes.raw.t)?,
            ts: threshold(modes.ts.t)?,
        });
        let cot_reference = options
            .cot_reference
            .as_ref()
            .map(|o| CotReference::fit(o, &src_logits, &src_labels, k, &class_counts, modes.ts.t))
            .transpose()?;
        let t_sort = ms(phase);
        let bootstrap = (options.bootstrap.replicates > 0)
            .then(|| {
                fit_replicates(
                    backend,
                    &src_rows,
                    source,
                    options.temperature,
                    fit.temperature,
                    &options.bootstrap,
                )
            })
            .transpose()?;
        drop(src_rows);

        let source_report = SourceReport {
            name: source.name.clone(),
            n: source.n(),
            k,
            accuracy: modes.raw.accuracy(),
            temperature: fit.temperature,
            converged: fit.converged,
            iterations: fit.iterations,
            nll_before: nll_before.nll / nll_before.rows,
            nll_after: nll_after.nll / nll_after.rows,
            ece_before: cal_before.ece(),
            ece_after: cal_after.ece(),
            qhat: Modes {
                raw: modes
                    .raw
                    .qhats
                    .iter()
                    .map(|q| q.map(|v| v as f64))
                    .collect(),
                ts: modes.ts.qhats.iter().map(|q| q.map(|v| v as f64)).collect(),
            },
            warning: fit.warning,
            conformal: Some(set_options),
            score_qhat: Some(Modes {
                raw: sets.modes.raw.qhat_by_score(),
                ts: sets.modes.ts.qhat_by_score(),
            }),
            score_cpc: Some(Modes {
                raw: sets.modes.raw.cpc_by_score(&modes.raw),
                ts: sets.modes.ts.cpc_by_score(&modes.ts),
            }),
            calibration: Modes {
                raw: cal_before,
                ts: cal_after,
            },
        };
        let mut cal = Calibration {
            format: CALIBRATION_FORMAT.into(),
            version: CALIBRATION_VERSION,
            id: String::new(),
            source_sha256: set_fingerprint(source),
            k,
            alphas: alphas.clone(),
            temperature_source,
            source: source_report,
            modes,
            class_counts,
            sets: Some(sets),
            cott,
            cot_reference,
            bootstrap,
            device: backend.device_name(),
            inputs: Vec::new(),
            timings_ms: FitTimings {
                temperature: t_temperature,
                sort: t_sort,
            },
        };
        cal.id = cal.content_id()?;
        Ok(cal)
    }

    /// SHA-256 of the fields the id covers.
    fn content_id(&self) -> Result<String> {
        let content = IdContent {
            format: &self.format,
            version: self.version,
            source_sha256: &self.source_sha256,
            k: self.k,
            alphas: &self.alphas,
            temperature_source: &self.temperature_source,
            source: &self.source,
            modes: &self.modes,
            class_counts: &self.class_counts,
            bootstrap: &self.bootstrap,
            sets: &self.sets,
            cott: &self.cott,
            cot_reference: &self.cot_reference,
        };
        let bytes = serde_json::to_vec(&content)
            .map_err(|e| Error::Invalid(format!("calibration encoding: {e}")))?;
        Ok(hex(&Sha256::digest(&bytes)))
    }

    /// Counts one chunk of target rows in both modes. The chunk is validated first
    /// (K, lengths, finite logits, labels in range; rows named by their index in the
    /// whole target).
    pub fn tally<B: Backend>(&self, backend: &B, rows: &TargetRows<'_>) -> Result<Tally> {
        let mut stream = self.tally_stream(backend, rows.name, rows.group_arrays())?;
        stream.add(rows)?;
        stream.finish()
    }

    /// A running tally of target `name` (which has the group arrays `group_arrays`,
    /// hospital then slide): add its chunks, then finish. On the GPU the counts stay on
    /// the device until `finish`.
    pub fn tally_stream<'a, B: Backend>(
        &'a self,
        backend: &'a B,
        name: &str,
        group_arrays: [bool; 2],
    ) -> Result<TallyStream<'a, B>> {
        let a = self.alphas.len();
        Ok(TallyStream {
            cal: self,
            backend,
            tally: Tally::empty(self, name, group_arrays),
            acc: Some(Modes {
                raw: backend.tally_start(a)?,
                ts: backend.tally_start(a)?,
            }),
            plans: self.bootstrap.as_ref().map(|b| b.plans()),
            name_key: name_key(name),
        })
    }

    /// What the user should hear about this calibration: a temperature fit that did not
    /// converge, levels whose qhat is +inf (too few source rows).
    pub fn warnings(&self) -> Vec<String> {
        let mut out: Vec<String> = self.source.warning.iter().cloned().collect();
        for (a, q) in self.alphas.iter().zip(&self.modes.ts.qhats) {
            if q.is_none() {
                out.push(format!(
                    "alpha = {a}: the source has too few rows (k > n), qhat = +inf"
                ));
            }
        }
        out
    }

    /// Per-row outputs of one chunk in both modes (see
    /// [`prepared_row_outputs`]), the chunk validated first.
    pub fn row_outputs<B: Backend>(
        &self,
        backend: &B,
        rows: &TargetRows<'_>,
    ) -> Result<RowOutputs> {
        rows.validate(self.k)?;
        with_labels(rows.labels, rows.rows(), |labels| {
            let prepared = backend.prepare(rows.logits, labels, self.k)?;
            prepared_row_outputs(backend, &prepared, &self.modes, rows.name)
        })
    }

    /// The versioned JSON document (pretty, one trailing newline).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self)
            .map(|s| s + "\n")
            .map_err(|e| Error::Invalid(format!("calibration encoding: {e}")))
    }

    /// Reads a calibration written by [`Calibration::to_json`], checking its format,
    /// version, internal consistency and id (`file` names it in errors; a damaged file is
    /// `Error::Format`).
    pub fn from_json(text: &str, file: &str) -> Result<Self> {
        let bad = |msg: String| Error::format(file, msg);
        let v = crate::methods::tally::versioned_json(
            text,
            file,
            "calibration",
            CALIBRATION_FORMAT,
            CALIBRATION_VERSION,
        )?;
        let cal: Calibration =
            serde_json::from_value(v).map_err(|e| bad(format!("damaged calibration: {e}")))?;
        if let Some(why) = cal.inconsistency() {
            return Err(bad(format!("damaged calibration: {why}")));
        }
        if cal.content_id()? != cal.id {
            return Err(bad(
                "damaged calibration: its content does not match its id".into(),
            ));
        }
        Ok(cal)
    }

    /// Why the fields cannot come from a fit, if they cannot.
    fn inconsistency(&self) -> Option<String> {
        let a = self.alphas.len();
        if self.k < 2 {
            return Some(format!("K = {}", self.k));
        }
        if a == 0 || self.alphas.iter().any(|&x| check_alpha(x).is_err()) {
            return Some("alpha levels outside (0, 1)".into());
        }
        for (name, m) in [("raw", &self.modes.raw), ("ts", &self.modes.ts)] {
            let sorted = m.sorted_lac.windows(2).all(|w| w[0] <= w[1]);
            let ok = m.n > 0
                && m.n == self.source.n
                && m.correct <= m.n
                && m.qhats.len() == a
                && m.sorted_lac.len() == m.n
                && sorted
                && m.t.is_finite()
                && m.t > 0.0;
            if !ok {
                return Some(format!("mode {name}: sizes or thresholds disagree"));
            }
        }
        if self.class_counts.len() != self.k
            || self.class_counts.iter().sum::<u64>() != self.source.n as u64
        {
            return Some("class counts do not match K and the source's rows".into());
        }
        if let Some(b) = &self.bootstrap {
            if b.class_counts.iter().any(|c| c.len() != self.k) {
                return Some("bootstrap class counts do not match K".into());
            }
        }
        if let Some(why) = self.sets.as_ref().and_then(|s| s.inconsistency(self.k, a)) {
            return Some(why);
        }
        if let Some(c) = &self.cott {
            if let Err(e) = c.raw.check().and_then(|_| c.ts.check()) {
                return Some(e.to_string());
            }
        }
        if let Some(why) = self
            .cot_reference
            .as_ref()
            .and_then(|r| r.inconsistency(self.k))
        {
            return Some(why);
        }
        if let Some(why) = self.bootstrap.as_ref().and_then(|b| b.inconsistency()) {
            return Some(why);
        }
        let bins = |s: &CalibrationStats| s.bin_count.len() == BINS;
        if !bins(&self.source.calibration.raw) || !bins(&self.source.calibration.ts) {
            return Some("reliability bins".into());
        }
        None
    }

    /// Names of the group arrays in [`GROUP_ARRAYS`] order.
    pub fn group_names() -> [&'static str; 2] {
        GROUP_ARRAYS
    }
}

/// A target's tally in progress (see [`Calibration::tally_stream`]).
pub struct TallyStream<'a, B: Backend> {
    cal: &'a Calibration,
    backend: &'a B,
    tally: Tally,
    acc: Option<Modes<B::TallyAcc>>,
    /// Every replicate's plan per mode, with a bootstrap.
    plans: Option<Modes<Vec<ReplicatePlan>>>,
    name_key: u32,
}

impl<B: Backend> TallyStream<'_, B> {
    /// A hint that about `rows` rows will be added: COT's copy of the rows makes room
    /// for them at once.
    pub fn reserve_rows(&mut self, rows: usize) {
        if let Some(cot) = self.tally.cot.as_mut() {
            cot.reserve_rows(rows);
        }
    }

    /// Counts one chunk (validated first; see [`Calibration::tally`]).
    pub fn add(&mut self, rows: &TargetRows<'_>) -> Result<()> {
        rows.validate(self.cal.k)?;
        self.add_valid(rows)
    }

    /// [`TallyStream::add`] of a chunk already validated (by the stream reader, which
    /// checks every value it decodes): each input is validated once.
    pub(crate) fn add_valid(&mut self, rows: &TargetRows<'_>) -> Result<()> {
        self.add_valid_with_rows(rows, false).map(drop)
    }

    /// [`TallyStream::add_valid`], and with `want_rows` the chunk's per-row outputs from
    /// the same upload.
    pub(crate) fn add_valid_with_rows(
        &mut self,
        rows: &TargetRows<'_>,
        want_rows: bool,
    ) -> Result<Option<RowOutputs>> {
        if rows.name != self.tally.name || rows.group_arrays() != self.group_arrays() {
            return Err(Error::Incompatible {
                what: format!("chunk of {}", rows.name),
                detail: format!(
                    "added to the tally of {} (with other group arrays, or another target)",
                    self.tally.name
                ),
            });
        }
        let n = rows.rows();
        // Rows first: a chunk that overlaps rows already counted changes nothing.
        self.tally
            .add_rows(rows.row_offset as u64..(rows.row_offset + n) as u64)?;
        if n == 0 {
            return Ok(want_rows.then(|| RowOutputs {
                name: rows.name.to_string(),
                ..Default::default()
            }));
        }
        let acc = self
            .acc
            .as_mut()
            .ok_or_else(|| Error::Invalid("tally stream used after a failure".into()))?;
        let (cal, backend) = (self.cal, self.backend);
        let (plans, key) = (&self.plans, self.name_key);
        let boot = &mut self.tally.bootstrap;
        let (sets, cot) = (self.tally.sets.as_mut(), self.tally.cot.as_mut());
        let result = with_labels(rows.labels, n, |labels| -> Result<Option<RowOutputs>> {
            // Validated first: the set counts and COT's rows below take valid rows only.
            let prepared = backend.prepare(rows.logits, labels, cal.k)?;
            let groups = [rows.hospital, rows.slide];
            // The set counts and COT's copy of the rows (host work on the thread pool)
            // run beside the backend's tallies: each writes its own part of the tally.
            let mut side: Result<()> = Ok(());
            let counted = rayon::in_place_scope(|scope| {
                scope.spawn(|_| {
                    if let (Some(st), Some(sc)) = (sets, cal.sets.as_ref()) {
                        let t = Modes {
                            raw: cal.modes.raw.t,
                            ts: cal.modes.ts.t,
                        };
                        let set_rows = SetRows {
                            name: rows.name,
                            row_offset: rows.row_offset as u64,
                            k: cal.k,
                            logits: rows.logits,
                            labels,
                            groups,
                        };
                        side = st.add(sc, t, &set_rows);
                    }
                    if let Some(cot) = cot {
                        cot.add(rows.row_offset as u64, rows.logits, cal.k, groups);
                    }
                });
                let raw_plan = cal.modes.raw.plan(labels, groups);
                backend.tally_add(&mut acc.raw, &prepared, &raw_plan)?;
                backend.tally_add(&mut acc.ts, &prepared, &cal.modes.ts.plan(labels, groups))?;
                if let (Some(plans), Some(boot), Some(cb)) = (plans, boot.as_mut(), &cal.bootstrap)
                {
                    let plan = BootstrapTallyPlan {
                        seed: cb.seed,
                        name_key: key,
                        row_offset: rows.row_offset as u64,
                        modes: [&plans.raw, &plans.ts],
                        labels,
                        groups,
                    };
                    let [raw, ts] = backend.bootstrap_tally(&prepared, &plan)?;
                    boot.add(raw, ts);
                }
                want_rows
                    .then(|| prepared_row_outputs(backend, &prepared, &cal.modes, rows.name))
                    .transpose()
            });
            // The backend's error first, as when the set counts ran after it.
            let out = counted?;
            side?;
            Ok(out)
        });
        if result.is_err() {
            // Counts of this chunk may be partly in: the stream cannot be finished.
            self.acc = None;
        }
        result
    }

    fn group_arrays(&self) -> [bool; 2] {
        GROUP_ARRAYS.map(|g| self.tally.group_arrays.iter().any(|x| x == g))
    }

    /// The counts of every chunk added.
    pub fn finish(mut self) -> Result<Tally> {
        let acc = self
            .acc
            .take()
            .ok_or_else(|| Error::Invalid("tally stream used after a failure".into()))?;
        self.tally.modes.raw = self.backend.tally_finish(acc.raw)?;
        self.tally.modes.ts = self.backend.tally_finish(acc.ts)?;
        Ok(self.tally)
    }
}
