//! Every `#[repr(C)]` Pod struct a shader reads (the `kernel::*Params` uniforms) has the
//! layout of the WGSL struct it mirrors: size and field offsets by `size_of`/`offset_of!`
//! against fixed numbers, and against naga's layout of `Params` in the composed shader
//! source (`conformal_gpu::shaders::source`): span, member names, offsets and sizes. The
//! constants the shaders repeat (`WG`, `BINS`, `NCOUNT`, `MAXP`) are compared the same way.
//! Keep in sync with the `Params` structs in shaders/*.wgsl and with src/kernel/*.rs.

use std::mem::{offset_of, size_of};

use conformal_gpu::kernel::bootstrap::{BootstrapParams, PLAN_WORDS, REP_WORDS};
use conformal_gpu::kernel::calibration::{CalibrationParams, BINS, NCOUNT};
use conformal_gpu::kernel::copy::CopyParams;
use conformal_gpu::kernel::cot_collect::{self, CollectParams};
use conformal_gpu::kernel::cot_two_class::{self, CotPassParams};
use conformal_gpu::kernel::lac_scores::LacParams;
use conformal_gpu::kernel::pvalues::PvalueParams;
use conformal_gpu::kernel::radix_sort::RadixParams;
use conformal_gpu::kernel::row_stats::RowStatsParams;
use conformal_gpu::kernel::score_ranks::{ScoreRankParams, RANK_WORDS};
use conformal_gpu::kernel::select_histogram::{SelectParams, MAXP};
use conformal_gpu::kernel::softmax::SoftmaxParams;
use conformal_gpu::kernel::tally::{device_words, TallyParams, DEVICE_HEAD, DEVICE_PER_LEVEL};
use conformal_gpu::kernel::temperature_nll::NllParams;
use conformal_gpu::kernel::WG;
use conformal_gpu::shaders::{source, NAMES};

/// A Rust struct's layout: its size and `(field, offset, size)` in declaration order.
struct Layout {
    rust: &'static str,
    size: usize,
    fields: Vec<(&'static str, usize, usize)>,
}

fn field_size<T, F>(_: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

macro_rules! layout {
    ($t:ty { $($f:ident),* $(,)? }) => {
        Layout {
            rust: stringify!($t),
            size: size_of::<$t>(),
            fields: vec![$((
                stringify!($f),
                offset_of!($t, $f),
                field_size(|x: &$t| &x.$f),
            )),*],
        }
    };
}

/// `(shader, layout of its Rust params)` for every shader.
fn params() -> Vec<(&'static str, Layout)> {
    let radix = || {
        layout!(RadixParams {
            len,
            tiles,
            ipt,
            shift,
            map_in,
            map_out,
            has_payload,
            first,
            dst_lo,
            dst_len,
            _pad0,
            _pad1,
        })
    };
    vec![
        (
            "bootstrap",
            layout!(BootstrapParams {
                rows,
                k,
                t,
                n_alpha,
                reps,
                row_wgs,
                num_wgs,
                one_slot,
                row_offset_lo,
                row_offset_hi,
                seed_lo,
                seed_hi,
                name_key,
                slots,
                first,
                _pad
            }),
        ),
        (
            "tally",
            layout!(TallyParams {
                rows,
                k,
                t,
                n_alpha,
                t_mc,
                t_ne,
                q_cpc,
                flags,
                num_wgs,
                slots,
                one_slot,
                rows_per_thread
            }),
        ),
        ("softmax", layout!(SoftmaxParams { rows, k, t, _pad })),
        ("temperature_nll", layout!(NllParams { rows, k, b, _pad })),
        (
            "calibration",
            layout!(CalibrationParams { rows, k, t, _pad }),
        ),
        (
            "row_stats",
            layout!(RowStatsParams {
                rows,
                k,
                t,
                n_alpha
            }),
        ),
        (
            "copy",
            layout!(CopyParams {
                n,
                _pad0,
                _pad1,
                _pad2
            }),
        ),
        ("radix_histogram", radix()),
        ("radix_scan", radix()),
        ("radix_scatter", radix()),
        (
            "select_histogram",
            layout!(SelectParams {
                len,
                shift,
                nprefix,
                ipt
            }),
        ),
        ("lac_scores", layout!(LacParams { rows, k, t, _pad })),
        (
            "score_ranks",
            layout!(ScoreRankParams {
                rows,
                k,
                _pad0,
                _pad1
            }),
        ),
        (
            "cot_two_class",
            layout!(CotPassParams {
                rows,
                mode,
                shift,
                nprefix,
                ipt,
                _pad0,
                _pad1,
                _pad2,
                key0_lo,
                key0_hi,
                key1_lo,
                key1_hi,
            }),
        ),
        ("cot_collect", layout!(CollectParams { rows, k, ipt, mode })),
        (
            "pvalues",
            layout!(PvalueParams {
                rows,
                row0,
                k,
                t,
                n_chunk,
                nalpha,
                first,
                last,
                want_counts,
                probs,
                _pad1,
                _pad2,
            }),
        ),
    ]
}

/// Sizes and offsets pinned by hand (what the shaders were written against).
#[test]
fn params_sizes_and_offsets() {
    for size in [
        size_of::<SoftmaxParams>(),
        size_of::<NllParams>(),
        size_of::<CalibrationParams>(),
        size_of::<RowStatsParams>(),
        size_of::<CopyParams>(),
        size_of::<SelectParams>(),
        size_of::<LacParams>(),
        size_of::<ScoreRankParams>(),
        size_of::<CollectParams>(),
    ] {
        assert_eq!(size, 16);
    }
    assert_eq!(size_of::<RadixParams>(), 48);
    assert_eq!(size_of::<PvalueParams>(), 48);
    assert_eq!(size_of::<CotPassParams>(), 48);
    assert_eq!(offset_of!(CotPassParams, key0_lo), 32);
    assert_eq!(offset_of!(SoftmaxParams, t), 8);
    assert_eq!(offset_of!(NllParams, b), 8);
    assert_eq!(offset_of!(CalibrationParams, t), 8);
    assert_eq!(offset_of!(LacParams, t), 8);
    assert_eq!(offset_of!(RowStatsParams, t), 8);
    assert_eq!(offset_of!(RowStatsParams, n_alpha), 12);
    assert_eq!(offset_of!(SelectParams, ipt), 12);
    assert_eq!(offset_of!(RadixParams, dst_len), 36);
    assert_eq!(offset_of!(PvalueParams, t), 12);
    assert_eq!(offset_of!(PvalueParams, probs), 36);
    for (shader, l) in params() {
        // Consecutive 4-byte fields with no gap (Pod forbids padding), so the list above
        // names every field; uniform buffers want a multiple of 16 bytes.
        let mut at = 0;
        for &(f, off, size) in &l.fields {
            assert_eq!(off, at, "{}::{f} ({shader})", l.rust);
            assert_eq!(size, 4, "{}::{f} ({shader})", l.rust);
            at += size;
        }
        assert_eq!(at, l.size, "{} ({shader}): fields do not cover it", l.rust);
        assert_eq!(l.size % 16, 0, "{} ({shader}): uniform size", l.rust);
    }
}

fn module(name: &str) -> naga::Module {
    let src = source(name).expect("registered shader");
    naga::front::wgsl::parse_str(&src)
        .unwrap_or_else(|e| panic!("{name}.wgsl: {}", e.emit_to_string(&src)))
}

/// `(member, offset, size)` of a struct, in order.
type Members = Vec<(String, u32, u32)>;

/// Each shader's `Params` as naga lays it out: span and members.
fn naga_params(m: &naga::Module) -> Option<(u32, Members)> {
    let ty = m
        .types
        .iter()
        .find(|(_, t)| t.name.as_deref() == Some("Params"))?
        .1;
    let naga::TypeInner::Struct { members, span } = &ty.inner else {
        panic!("Params is not a struct");
    };
    let fields = members
        .iter()
        .map(|mem| {
            (
                mem.name.clone().unwrap_or_default(),
                mem.offset,
                m.types[mem.ty].inner.size(m.to_ctx()),
            )
        })
        .collect();
    Some((*span, fields))
}

#[test]
fn params_match_naga_layout_of_every_shader() {
    let all = params();
    for name in NAMES {
        let m = module(name);
        let (span, members) =
            naga_params(&m).unwrap_or_else(|| panic!("{name}.wgsl has no struct Params"));
        let (_, l) = all
            .iter()
            .find(|(s, _)| *s == name)
            .unwrap_or_else(|| panic!("{name}.wgsl: no Rust params struct listed here"));
        assert_eq!(
            span as usize, l.size,
            "{name}.wgsl Params span vs {}",
            l.rust
        );
        let rust: Members = l
            .fields
            .iter()
            .map(|&(f, off, size)| (f.to_string(), off as u32, size as u32))
            .collect();
        assert_eq!(members, rust, "{name}.wgsl Params vs {}", l.rust);
    }
}

/// The value of the module-scope `const name: u32` of `m`.
fn const_u32(m: &naga::Module, name: &str) -> Option<u32> {
    let (_, c) = m
        .constants
        .iter()
        .find(|(_, c)| c.name.as_deref() == Some(name))?;
    match m.global_expressions[c.init] {
        naga::Expression::Literal(naga::Literal::U32(v)) => Some(v),
        ref e => panic!("const {name} is not a u32 literal: {e:?}"),
    }
}

#[test]
fn shader_constants_match_kernel() {
    for name in NAMES {
        assert_eq!(
            const_u32(&module(name), "WG"),
            Some(WG as u32),
            "{name}.wgsl WG (common.wgsl) vs kernel::WG"
        );
    }
    let calib = module("calibration");
    assert_eq!(const_u32(&calib, "BINS"), Some(BINS as u32));
    assert_eq!(const_u32(&calib, "NCOUNT"), Some(NCOUNT as u32));
    assert_eq!(
        const_u32(&module("score_ranks"), "RANK_WORDS"),
        Some(RANK_WORDS as u32)
    );
    let cot = module("cot_two_class");
    assert_eq!(const_u32(&cot, "MAXP"), Some(cot_two_class::MAXP as u32));
    assert_eq!(
        const_u32(&cot, "SUM_WORDS"),
        Some(cot_two_class::SUM_WORDS as u32)
    );
    assert_eq!(
        const_u32(&cot, "MODE_HISTOGRAM"),
        Some(cot_two_class::MODE_HISTOGRAM)
    );
    let collect = module("cot_collect");
    for (name, value) in [
        ("MAXK", cot_collect::MAX_DEVICE_CLASSES as u32),
        ("MODE_COLLECT", cot_collect::MODE_COLLECT),
        ("W_DUAL", cot_collect::word::DUAL_SUM as u32),
        ("W_FREE", cot_collect::word::FREE_COUNT as u32),
        ("W_ROWS", cot_collect::word::FIXED_ROWS as u32),
    ] {
        assert_eq!(const_u32(&collect, name), Some(value), "cot_collect {name}");
    }
    assert_eq!(
        const_u32(&module("select_histogram"), "MAXP"),
        Some(MAXP as u32)
    );
    assert_eq!(
        const_u32(&module("radix_scan"), "SERIAL_SCAN_TILES"),
        Some(conformal_gpu::kernel::radix_sort::SERIAL_SCAN_TILES as u32)
    );
}

/// The device tally's word layout: the WGSL constants equal the Rust ones, and the
/// workgroup's word array holds a slot of the most levels one pass takes.
#[test]
fn tally_word_layout_matches_the_shader() {
    let src = source("tally").expect("tally shader");
    let konst = |name: &str| -> usize {
        let line = src
            .lines()
            .find(|l| l.starts_with(&format!("const {name}: u32")))
            .unwrap_or_else(|| panic!("no const {name} in tally.wgsl"));
        line.split('=')
            .nth(1)
            .unwrap()
            .trim()
            .trim_end_matches(';')
            .trim_end_matches('u')
            .parse()
            .unwrap()
    };
    assert_eq!(konst("HEAD"), DEVICE_HEAD);
    assert_eq!(konst("PER_LEVEL"), DEVICE_PER_LEVEL);
    assert_eq!(
        konst("MAX_WORDS"),
        device_words(conformal_gpu::kernel::row_stats::MAX_ALPHA_PER_PASS)
    );
    assert_eq!(size_of::<TallyParams>(), 48);
    // The lanes variant's per-team arrays: WG / TALLY_LANES teams, MAX_LEVELS sizes each.
    let lanes = conformal_gpu::shaders::ROW_SUMMARY_LANES;
    let teams = WG as u32 / conformal_gpu::kernel::tally::TALLY_LANES;
    assert!(lanes.contains(&format!("const LANE_TEAMS: u32 = {teams}u;")));
    let sizes = teams as usize * conformal_gpu::kernel::row_stats::MAX_ALPHA_PER_PASS;
    assert!(lanes.contains(&format!("lane_sizes: array<atomic<u32>, {sizes}>;")));
    // row_summary.wgsl's per-thread size array holds the most levels one pass takes.
    let max_levels = conformal_gpu::shaders::ROW_SUMMARY
        .lines()
        .find(|l| l.starts_with("const MAX_LEVELS: u32"))
        .expect("MAX_LEVELS");
    assert!(
        max_levels.contains(&format!(
            "= {}u;",
            conformal_gpu::kernel::row_stats::MAX_ALPHA_PER_PASS
        )),
        "{max_levels}"
    );
}

/// The bootstrap shader's word and plan strides are the contract's (REP_WORDS is
/// generated from it; PLAN_WORDS is written in the shader).
#[test]
fn bootstrap_word_layout_matches_the_shader() {
    let m = module("bootstrap");
    assert_eq!(const_u32(&m, "REP_WORDS"), Some(REP_WORDS as u32));
    assert_eq!(const_u32(&m, "PLAN_WORDS"), Some(PLAN_WORDS as u32));
    assert_eq!(size_of::<BootstrapParams>(), 64);
}
