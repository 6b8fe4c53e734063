//! Conformal quantile (DESIGN.md 2.5). Placeholder until the sort/select branch lands.

use crate::error::{Error, Result};

/// Checks a miscoverage level: finite and strictly inside (0, 1).
pub fn validate_alpha(alpha: f64) -> Result<()> {
    if alpha > 0.0 && alpha < 1.0 {
        Ok(())
    } else {
        Err(Error::BadAlpha(alpha))
    }
}

/// `k = ceil((n+1)(1-alpha))` on the decimal alpha: `round(x)` when `x` is within
/// `1e-9 (n+1)` of an integer, else `ceil(x)`. `None` when `k > n` (qhat = +inf).
pub fn conformal_k(n: usize, alpha: f64) -> Option<usize> {
    let x = (n as f64 + 1.0) * (1.0 - alpha);
    let r = x.round();
    let k = if (x - r).abs() <= 1e-9 * (n as f64 + 1.0) {
        r
    } else {
        x.ceil()
    };
    let k = k.max(1.0) as usize;
    (k <= n).then_some(k)
}
