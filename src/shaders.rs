//! WGSL sources, embedded at compile time. Every shader gets `common.wgsl` prepended
//! (WGSL has no includes), and the shaders that need them `class_sum.wgsl` and
//! `row_summary.wgsl`; the naga test in `tests/shaders.rs` validates each composed source.

/// `common.wgsl`: constants and helpers shared by every kernel.
pub const COMMON: &str = include_str!("../shaders/common.wgsl");

/// `(name, body)` of every kernel shader, one entry point `main` each.
pub const SHADERS: &[(&str, &str)] = &[
    ("softmax", include_str!("../shaders/softmax.wgsl")),
    (
        "temperature_nll",
        include_str!("../shaders/temperature_nll.wgsl"),
    ),
    ("calibration", include_str!("../shaders/calibration.wgsl")),
    ("row_stats", include_str!("../shaders/row_stats.wgsl")),
    ("copy", include_str!("../shaders/copy.wgsl")),
    (
        "radix_histogram",
        include_str!("../shaders/radix_histogram.wgsl"),
    ),
    ("radix_scan", include_str!("../shaders/radix_scan.wgsl")),
    (
        "radix_scatter",
        include_str!("../shaders/radix_scatter.wgsl"),
    ),
    (
        "select_histogram",
        include_str!("../shaders/select_histogram.wgsl"),
    ),
    ("lac_scores", include_str!("../shaders/lac_scores.wgsl")),
    ("score_ranks", include_str!("../shaders/score_ranks.wgsl")),
    ("pvalues", include_str!("../shaders/pvalues.wgsl")),
    (
        "cot_two_class",
        include_str!("../shaders/cot_two_class.wgsl"),
    ),
    ("cot_collect", include_str!("../shaders/cot_collect.wgsl")),
    ("tally", include_str!("../shaders/tally.wgsl")),
    ("bootstrap", include_str!("../shaders/bootstrap.wgsl")),
];

/// Names of every kernel shader.
pub const NAMES: [&str; SHADERS.len()] = {
    let mut names = [""; SHADERS.len()];
    let mut i = 0;
    while i < SHADERS.len() {
        names[i] = SHADERS[i].0;
        i += 1;
    }
    names
};

/// `row_summary.wgsl`: the per-row summary shared by `row_stats` and `tally`.
pub const ROW_SUMMARY: &str = include_str!("../shaders/row_summary.wgsl");

/// Shaders that call `row_summary` (it reads their `params`, `logits`, `labels`, `qhats`).
const WITH_ROW_SUMMARY: [&str; 3] = ["row_stats", "tally", "bootstrap"];

/// `row_summary_lanes.wgsl`: the same summary by a team of threads per row (large K).
pub const ROW_SUMMARY_LANES: &str = include_str!("../shaders/row_summary_lanes.wgsl");

/// Shaders that may run a team of threads per row (after `row_summary.wgsl`).
const WITH_ROW_SUMMARY_LANES: [&str; 1] = ["tally"];

/// `class_sum.wgsl`: the order-invariant sums over classes and the fixed 2^-40 grid
/// (DESIGN.md 2.1; the contract is `kernel::class_sum`).
pub const CLASS_SUM: &str = include_str!("../shaders/class_sum.wgsl");

/// Shaders that sum over classes (every softmax, row_summary's callers) or put values on
/// the grid (tally, bootstrap): they get `class_sum.wgsl`.
const WITH_CLASS_SUM: [&str; 7] = [
    "softmax",
    "calibration",
    "pvalues",
    "lac_scores",
    "row_stats",
    "tally",
    "bootstrap",
];

/// `word_sums.wgsl`: exact counts into u32 words (pairs with carry), shared by the two
/// tally kernels.
pub const WORD_SUMS: &str = include_str!("../shaders/word_sums.wgsl");

/// Shaders that add counts into words (they declare `wg_words` and `words`).
const WITH_WORD_SUMS: [&str; 2] = ["tally", "bootstrap"];

/// `grid_sums.wgsl`: costs on the 2^-40 grid from f32 bits and exact 96-bit sums, shared
/// by the COT kernels (they declare `wsum` and `out`).
pub const GRID_SUMS: &str = include_str!("../shaders/grid_sums.wgsl");

/// Shaders that make grid costs and sum them.
const WITH_GRID_SUMS: [&str; 2] = ["cot_two_class", "cot_collect"];

/// The composed source (common + shared helpers + body) of shader `name`.
pub fn source(name: &str) -> Option<String> {
    SHADERS.iter().find(|(n, _)| *n == name).map(|(_, body)| {
        let mut src = format!("{COMMON}\n");
        if name == "bootstrap" {
            // Its Poisson table and word count come from the contract (one source).
            src.push_str(&crate::kernel::bootstrap::wgsl_constants());
            src.push('\n');
        }
        if WITH_CLASS_SUM.contains(&name) {
            src.push_str(CLASS_SUM);
            src.push('\n');
        }
        src.push_str(body);
        if WITH_GRID_SUMS.contains(&name) {
            src.push('\n');
            src.push_str(GRID_SUMS);
        }
        if WITH_WORD_SUMS.contains(&name) {
            src.push('\n');
            src.push_str(WORD_SUMS);
        }
        if WITH_ROW_SUMMARY.contains(&name) {
            src.push('\n');
            src.push_str(ROW_SUMMARY);
        }
        if WITH_ROW_SUMMARY_LANES.contains(&name) {
            src.push('\n');
            src.push_str(ROW_SUMMARY_LANES);
        }
        src
    })
}
