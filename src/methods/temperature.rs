//! Temperature scaling (DESIGN.md 2.2): `T* = argmin NLL(T)` by a safeguarded Newton
//! iteration on `b = 1/T`, where NLL is convex. Each iteration is one pass over the data
//! (the backend returns NLL, dNLL/db and d2NLL/db2 together).

use serde::Serialize;

use crate::backend::{Backend, NllSums};
use crate::data::PredictionSet;
use crate::error::{Error, Result};

/// How the temperature of the `ts` mode is chosen.
#[derive(Clone, Copy, Debug)]
pub enum Temperature<'a> {
    /// Fitted on the source (default).
    FitSource,
    /// Given by the user.
    Fixed(f64),
    /// Fitted on another labelled set.
    FitOn(&'a PredictionSet),
}

/// Smallest and largest temperature the fit returns.
pub const T_MIN: f64 = 1e-3;
/// See [`T_MIN`].
pub const T_MAX: f64 = 1e3;
/// Newton stops when `|delta b| <= REL_TOL * b`.
pub const REL_TOL: f64 = 1e-7;
/// Iteration cap.
pub const MAX_ITER: u32 = 50;

/// Result of a temperature fit.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TemperatureFit {
    /// Fitted temperature, in `[T_MIN, T_MAX]`.
    pub temperature: f64,
    /// Passes over the data (each evaluates NLL and both derivatives).
    pub iterations: u32,
    /// False when the minimum lies outside the bracket (the bound is returned) or the
    /// iteration cap was hit.
    pub converged: bool,
    /// Mean NLL at `temperature`.
    pub nll: f64,
    /// Why `converged` is false, for the user.
    pub warning: Option<String>,
}

/// What `conformal-gpu temperature` reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TemperatureReport {
    /// Fitted temperature.
    pub temperature: f64,
    /// Newton passes.
    pub iterations: u32,
    /// See [`TemperatureFit::converged`].
    pub converged: bool,
    /// Mean NLL at T = 1.
    pub nll_before: f64,
    /// Mean NLL at the fitted T.
    pub nll_after: f64,
    /// ECE (15 bins) at T = 1.
    pub ece_before: f64,
    /// ECE at the fitted T.
    pub ece_after: f64,
    /// Accuracy of the argmax of the logits.
    pub accuracy: f64,
    /// Rows.
    pub n: usize,
    /// Classes.
    pub k: usize,
    /// `"cpu"` or `"gpu: <adapter>"`.
    pub device: String,
    /// Set when the fit did not converge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// Checks a given temperature: finite, > 0, and a normal f32 (the kernels divide by it
/// in f32, so 1e-300 or 1e300 would silently become 0 or inf).
pub fn validate_temperature(t: f64) -> Result<()> {
    if t.is_finite() && t > 0.0 && (t as f32).is_normal() {
        Ok(())
    } else {
        Err(Error::BadTemperature(t))
    }
}

/// Checks that `set` can calibrate: valid, non-empty, every label known.
pub fn validate_source(set: &PredictionSet) -> Result<()> {
    set.validate()?;
    if set.n() == 0 {
        return Err(Error::Empty {
            what: format!("{}: logits", set.name),
            detail: "the calibration set has no rows".into(),
        });
    }
    match &set.labels {
        None => Err(Error::UnlabelledSource {
            what: set.name.clone(),
            row: 0,
        }),
        Some(l) => match l.iter().position(|&y| y < 0) {
            Some(row) => Err(Error::UnlabelledSource {
                what: set.name.clone(),
                row,
            }),
            None => Ok(()),
        },
    }
}

/// Fits T on prepared rows (every row labelled; see [`validate_source`]).
///
/// Starts at T = 1, then checks the bound on the side the gradient points to: if NLL
/// still falls there, the minimiser lies outside `[T_MIN, T_MAX]` and the bound comes
/// back with `converged: false`. Otherwise Newton steps run inside the verified bracket,
/// falling back to log-space bisection whenever a step would leave it.
pub fn fit_temperature<B: Backend>(backend: &B, rows: &B::Rows<'_>) -> Result<TemperatureFit> {
    fit_temperature_with(|b| backend.nll_sums(rows, b), 1.0)
}

/// The fit of [`fit_temperature`] over any source of NLL sums (a bootstrap replicate's
/// weighted sums), starting at inverse temperature `b_start` (1 for the point fit; a
/// replicate starts at the point fit's, a few Newton steps from its own).
pub fn fit_temperature_with(
    mut sums: impl FnMut(f64) -> Result<NllSums>,
    b_start: f64,
) -> Result<TemperatureFit> {
    let (b_lo, b_hi) = (1.0 / T_MAX, 1.0 / T_MIN);
    let mut eval = |b: f64| -> Result<NllSums> {
        let s = sums(b)?;
        if !(s.nll.is_finite() && s.grad.is_finite() && s.hess.is_finite()) || s.rows == 0.0 {
            return Err(Error::Invalid(format!(
                "temperature fit: non-finite NLL sums at b = {b} (rows = {})",
                s.rows
            )));
        }
        Ok(s)
    };
    let fit = |b: f64, s: &NllSums, iterations, converged, warning| TemperatureFit {
        temperature: 1.0 / b,
        iterations,
        converged,
        nll: s.nll / s.rows,
        warning,
    };
    let mut b = b_start.clamp(b_lo, b_hi);
    let mut s = eval(b)?;
    let mut iterations = 1;
    // grad = hess = 0: every row's softmax is flat in b. With NLL 0 that is separable
    // data whose probabilities underflowed to one-hot (the minimum is at b -> inf);
    // otherwise NLL does not depend on T at all and T = 1 is as good as any.
    let flat = s.grad == 0.0 && s.hess == 0.0;
    if (flat && s.nll > 0.0) || (s.grad == 0.0 && !flat) {
        return Ok(fit(b, &s, iterations, true, None));
    }
    let (mut lo, mut hi);
    if s.grad < 0.0 || flat {
        let sb = eval(b_hi)?;
        iterations += 1;
        if sb.grad < 0.0 || (sb.grad == 0.0 && sb.hess == 0.0) {
            let w = format!(
                "NLL keeps falling as T shrinks below {T_MIN} (separable data?): returning T = {T_MIN}"
            );
            return Ok(fit(b_hi, &sb, iterations, false, Some(w)));
        }
        if sb.grad == 0.0 {
            return Ok(fit(b_hi, &sb, iterations, true, None));
        }
        (lo, hi) = (b, b_hi);
    } else {
        let sb = eval(b_lo)?;
        iterations += 1;
        if sb.grad > 0.0 {
            let w = format!(
                "NLL keeps falling as T grows above {T_MAX} (a model worse than chance?): returning T = {T_MAX}"
            );
            return Ok(fit(b_lo, &sb, iterations, false, Some(w)));
        }
        if sb.grad == 0.0 {
            return Ok(fit(b_lo, &sb, iterations, true, None));
        }
        (lo, hi) = (b_lo, b);
    }
    loop {
        let newton = if s.hess > 0.0 {
            b - s.grad / s.hess
        } else {
            f64::NAN
        };
        let next = if newton > lo && newton < hi {
            newton
        } else {
            // Bisect in log space: b spans six decades.
            (lo * hi).sqrt()
        };
        if (next - b).abs() <= REL_TOL * b {
            // NLL is flat to second order here: the last evaluation's value stands.
            return Ok(fit(next, &s, iterations, true, None));
        }
        if iterations >= MAX_ITER {
            let w = format!("temperature fit: no convergence in {MAX_ITER} passes");
            return Ok(fit(b, &s, iterations, false, Some(w)));
        }
        b = next;
        s = eval(b)?;
        iterations += 1;
        if s.grad > 0.0 {
            hi = b;
        } else if s.grad < 0.0 {
            lo = b;
        } else {
            return Ok(fit(b, &s, iterations, true, None));
        }
    }
}

/// Fits T on `set` and reports NLL/ECE before and after, accuracy, and the device.
pub fn temperature_report<B: Backend>(
    backend: &B,
    set: &PredictionSet,
) -> Result<TemperatureReport> {
    validate_source(set)?;
    let logits = set.logits_slice();
    let labels = crate::backend::labels_i32(set);
    let rows = backend.prepare(&logits, &labels, set.k())?;
    let before = backend.nll_sums(&rows, 1.0)?;
    let fit = fit_temperature(backend, &rows)?;
    let cal_before = backend.calibration(&rows, 1.0)?;
    let cal_after = backend.calibration(&rows, fit.temperature as f32)?;
    Ok(TemperatureReport {
        temperature: fit.temperature,
        iterations: fit.iterations,
        converged: fit.converged,
        nll_before: before.nll / before.rows,
        nll_after: fit.nll,
        ece_before: cal_before.ece(),
        ece_after: cal_after.ece(),
        accuracy: cal_before.accuracy(),
        n: set.n(),
        k: set.k(),
        device: backend.device_name(),
        warning: fit.warning,
    })
}
