//! The device tally (shaders/tally.wgsl) against the host count of the same row
//! statistics: equal word for word (the CPU mirror, cpu::tally) and pair for pair
//! (kernel::tally::count_block), at workgroup edges, with slots changing inside a
//! workgroup, with no groups, on tied thresholds, for 0 to 31 levels, across chunks, and
//! past the first word-buffer capacity.

mod common;

#[cfg(feature = "gpu")]
mod gpu {
    use super::common;
    use conformal_gpu::backend::{Backend, GpuBackend};
    use conformal_gpu::gpu::tally::DeviceTally;
    use conformal_gpu::kernel::row_stats::RowStats;
    use conformal_gpu::kernel::tally::{
        count_block, device_words, merge_pairs, PairCounts, SlotMap, TallyPlan,
    };
    use conformal_gpu::kernel::WG;
    use rand::Rng;

    struct Case {
        logits: Vec<f32>,
        labels: Vec<i32>,
        hospital: Vec<i64>,
        slide: Vec<i64>,
    }

    /// Quantised logits (ties, so thresholds taken from the data sit on tie groups),
    /// a quarter of labels unknown, slides in runs of `run` rows (a run length that is not
    /// a multiple of WG makes workgroups with two slots).
    fn case(seed: u64, n: usize, k: usize, run: usize) -> Case {
        let mut r = common::rng(seed);
        Case {
            logits: (0..n * k)
                .map(|_| r.random_range(0..16) as f32 / 4.0)
                .collect(),
            labels: (0..n)
                .map(|_| {
                    if r.random_range(0..4) == 0 {
                        -1
                    } else {
                        r.random_range(0..k as i32)
                    }
                })
                .collect(),
            hospital: (0..n).map(|i| (i / (3 * run.max(1))) as i64 % 5).collect(),
            slide: (0..n).map(|i| (i / run.max(1)) as i64).collect(),
        }
    }

    fn plan<'a>(
        c: &'a Case,
        qhats: &'a [Option<f32>],
        groups: bool,
        st: &RowStats,
    ) -> TallyPlan<'a> {
        // Thresholds at data values: the median row's statistics.
        let mid = st
            .stats
            .get(st.len() / 2)
            .copied()
            .unwrap_or([0.5, -0.5, 0.5, 0.5, 0.6]);
        TallyPlan {
            t: 0.7,
            atc_mc: Some(mid[0]),
            atc_ne: Some(mid[1]),
            cpc_q: Some(mid[3]),
            qhats,
            labels: &c.labels,
            groups: if groups {
                [Some(&c.hospital), Some(&c.slide)]
            } else {
                [None, None]
            },
        }
    }

    /// The second pass over the same rows (the other mode's tally) uploads no slot ids:
    /// its uploads are the first pass's less `4 n` bytes, and the counts are unchanged. A
    /// tally that numbered another group first maps the same chunk slots to its own slots:
    /// no upload of ids either, and the same counts for these rows. n spans two
    /// workgroups and a ragged end.
    #[test]
    fn slot_ids_upload_once_per_chunk() {
        // A context of its own: the ledger counts this test's uploads alone.
        let Some(ctx) = common::gpu() else {
            return;
        };
        let ctx = &ctx;
        let b = GpuBackend::new(ctx);
        let (n, k, a) = (2 * WG + 37, 3, 2);
        let c = case(91, n, k, 50);
        let qhats = vec![Some(0.4f32), None];
        let rows = b.prepare(&c.logits, &c.labels, k).unwrap();
        let st = conformal_gpu::gpu::row_stats::row_stats(ctx, &rows, 0.7, &[0.4, 2.0]).unwrap();
        let p = plan(&c, &qhats, true, &st);
        let uploads = |f: &mut dyn FnMut()| {
            let before = ctx.transfers().upload_bytes;
            f();
            ctx.transfers().upload_bytes - before
        };
        let (mut raw, mut ts) = (DeviceTally::new(a).unwrap(), DeviceTally::new(a).unwrap());
        let first = uploads(&mut || raw.add(ctx, &rows, &p).unwrap());
        let second = uploads(&mut || ts.add(ctx, &rows, &p).unwrap());
        assert_eq!(
            first - second,
            4 * n as u64,
            "first {first}, second {second}"
        );
        let (raw, ts) = (raw.finish(ctx).unwrap(), ts.finish(ctx).unwrap());
        assert_eq!(raw, ts);
        let mut want = PairCounts::new();
        count_block(st.all(), 0, &p, &mut want);
        assert_eq!(raw, want);
        // A tally that numbered another group first gives these rows other ids.
        let mut other = DeviceTally::new(a).unwrap();
        let one = case(92, 1, k, 1);
        let one_rows = b.prepare(&one.logits, &one.labels, k).unwrap();
        let mut shifted = plan(&one, &qhats, true, &st);
        let (h, s) = ([-7i64], [-7i64]);
        shifted.groups = [Some(&h), Some(&s)];
        other.add(ctx, &one_rows, &shifted).unwrap();
        // Rows carry chunk slots, so its pass shares the upload too; its map takes them
        // to its own numbering, and its counts of these rows are the same.
        let third = uploads(&mut || other.add(ctx, &rows, &p).unwrap());
        assert_eq!(third, second, "chunk slots are shared across tallies");
        let mut other = other.finish(ctx).unwrap();
        assert!(other.remove(&[Some(-7), Some(-7)]).is_some());
        assert_eq!(other, want);
    }

    #[test]
    fn device_tally_equals_host_count() {
        let Some(ctx) = common::shared_gpu() else {
            return;
        };
        let b = GpuBackend::new(ctx);
        let k = 3;
        // Sizes: empty, one row, one workgroup minus/exactly/plus one row, a few
        // workgroups with a ragged end; a tile (TALLY_ROWS_PER_THREAD x WG rows, one
        // workgroup) minus/exactly/plus one row, with runs that keep a tile in one slot
        // (registers, then workgroup atomics) or split it (row by row to global words).
        let tile = conformal_gpu::kernel::tally::TALLY_ROWS_PER_THREAD as usize * WG;
        for (n, run) in [
            (0, 1),
            (1, 1),
            (WG - 1, 100),
            (WG, WG),
            (WG + 1, 7),
            (3 * WG + 77, 300),
            (tile - 1, tile),
            (tile, tile),
            (tile + 1, tile),
            (2 * tile + 5, 1000),
        ] {
            for a in [0usize, 1, 3, 31] {
                let c = case(n as u64 * 31 + a as u64, n, k, run);
                let qhats: Vec<Option<f32>> = (0..a)
                    .map(|i| (i % 4 != 3).then_some(0.25 * (i % 4) as f32 + 0.3))
                    .collect();
                let rows = b.prepare(&c.logits, &c.labels, k).unwrap();
                let q: Vec<f32> = qhats.iter().map(|q| q.unwrap_or(2.0)).collect();
                let st = if a <= 31 {
                    conformal_gpu::gpu::row_stats::row_stats(ctx, &rows, 0.7, &q).unwrap()
                } else {
                    unreachable!()
                };
                for groups in [true, false] {
                    let p = plan(&c, &qhats, groups, &st);
                    // Host: count_block over the downloaded statistics.
                    let mut want = PairCounts::new();
                    count_block(st.all(), 0, &p, &mut want);
                    // Device: the tally kernel.
                    let mut dev = DeviceTally::new(a).unwrap();
                    dev.add(ctx, &rows, &p).unwrap();
                    let got = dev.finish(ctx).unwrap();
                    assert_eq!(got, want, "n={n} a={a} groups={groups}");
                    // Word for word against the mirror, slots as the device numbered them.
                    let mut slots = SlotMap::default();
                    let ids = slots.assign(p.groups, n);
                    let mut words = vec![0u32; slots.keys.len().max(1) * device_words(a)];
                    let identity: Vec<u32> = (0..slots.keys.len() as u32).collect();
                    conformal_gpu::cpu::tally::tally_words(
                        &st,
                        ids.as_deref(),
                        &identity,
                        &p,
                        &mut words,
                    );
                    let mut mirror = PairCounts::new();
                    for (key, w) in slots.keys.iter().zip(words.chunks_exact(device_words(a))) {
                        let cnt = conformal_gpu::kernel::tally::counts_from_device(w, a);
                        if cnt.n() > 0 {
                            mirror.insert(*key, cnt);
                        }
                    }
                    assert_eq!(mirror, want, "mirror n={n} a={a} groups={groups}");
                }
            }
        }
    }

    /// Chunks accumulate on the device: two chunks added to one tally equal the host
    /// count of both; more slots than the first capacity (64) grow the buffer and keep
    /// the counts already in.
    #[test]
    fn device_tally_accumulates_across_chunks_and_grows() {
        let Some(ctx) = common::shared_gpu() else {
            return;
        };
        let b = GpuBackend::new(ctx);
        let k = 2;
        let n = 5 * WG + 3;
        let qhats = [Some(0.4f32), None];
        let mut dev = DeviceTally::new(2).unwrap();
        let mut want = PairCounts::new();
        for chunk in 0..3u64 {
            // Slots change every 9 rows: ~150 slots per chunk, new ones in each chunk.
            let mut c = case(100 + chunk, n, k, 9);
            for s in &mut c.slide {
                *s += chunk as i64 * 1000;
            }
            let rows = b.prepare(&c.logits, &c.labels, k).unwrap();
            let st =
                conformal_gpu::gpu::row_stats::row_stats(ctx, &rows, 0.7, &[0.4, 2.0]).unwrap();
            let p = plan(&c, &qhats, true, &st);
            let mut part = PairCounts::new();
            count_block(st.all(), 0, &p, &mut part);
            merge_pairs(&mut want, part);
            dev.add(ctx, &rows, &p).unwrap();
        }
        assert!(want.len() > 64, "{} slots", want.len());
        assert_eq!(dev.finish(ctx).unwrap(), want);
    }
}

/// The device tally on a padded 2-D grid: with at most 17 workgroups per dimension, 20
/// workgroups of rows make a 17 x 2 grid whose 14 padding workgroups must add nothing
/// (the words would count rows twice or read past the slots), with every other new
/// buffer poisoned. Counts equal the host's.
#[cfg(feature = "gpu")]
#[test]
fn device_tally_on_a_padded_grid() {
    use conformal_gpu::backend::{Backend, GpuBackend};
    use conformal_gpu::gpu::tally::DeviceTally;
    use conformal_gpu::gpu::GpuOptions;
    use conformal_gpu::kernel::tally::{count_block, PairCounts, TallyPlan};
    use rand::Rng;
    let Some(ctx) = common::gpu_with(GpuOptions {
        max_workgroups_per_dim: Some(17),
        poison_outputs: true,
        ..GpuOptions::default()
    }) else {
        return;
    };
    let b = GpuBackend::new(&ctx);
    let (n, k) = (20 * conformal_gpu::kernel::WG - 5, 2);
    let mut r = common::rng(77);
    let logits: Vec<f32> = (0..n * k)
        .map(|_| r.random_range(0..12) as f32 / 4.0)
        .collect();
    let labels: Vec<i32> = (0..n).map(|i| (i % 3) as i32 - 1).collect();
    let slide: Vec<i64> = (0..n).map(|i| (i / 700) as i64).collect();
    let rows = b.prepare(&logits, &labels, k).unwrap();
    let st = conformal_gpu::gpu::row_stats::row_stats(&ctx, &rows, 1.0, &[0.5]).unwrap();
    let qhats = [Some(0.5f32)];
    let plan = TallyPlan {
        t: 1.0,
        atc_mc: Some(st.stats[n / 2][0]),
        atc_ne: None,
        cpc_q: Some(0.5),
        qhats: &qhats,
        labels: &labels,
        groups: [None, Some(&slide)],
    };
    let mut want = PairCounts::new();
    count_block(st.all(), 0, &plan, &mut want);
    let mut dev = DeviceTally::new(1).unwrap();
    dev.add(&ctx, &rows, &plan).unwrap();
    assert_eq!(dev.finish(&ctx).unwrap(), want);
    assert_eq!(want.values().map(|c| c.n()).sum::<u64>(), n as u64);
}
