//! Pipelines specialised on their shape (override constants CLASSES and LEVELS, see
//! kernel::row_stats::pipeline_constants; LANES, the tally's threads per row for large K,
//! kernel::tally::tally_lanes) compute the same bits as the generic ones that read K and
//! the level count from the uniform, one thread a row: row_stats, the device tally and the
//! bootstrap tally, on quantised logits (ties at the thresholds) and noise.

mod common;

#[cfg(feature = "gpu")]
mod gpu {
    use super::common;
    use conformal_gpu::backend::{Backend, GpuBackend};
    use conformal_gpu::gpu::tally::DeviceTally;
    use conformal_gpu::gpu::{GpuContext, GpuOptions};
    use conformal_gpu::kernel::bootstrap::{name_key, BootstrapTallyPlan, ReplicatePlan};
    use conformal_gpu::kernel::row_stats::{pipeline_constants, SPECIALISE_MAX_CLASSES};
    use conformal_gpu::kernel::tally::{
        tally_lanes, tile_rows, TallyPlan, TALLY_LANES, TALLY_ROWS_PER_THREAD,
    };
    use conformal_gpu::kernel::WG;
    use rand::Rng;

    /// Every statistic's bits, `info` included.
    fn stats_bits(
        ctx: &GpuContext,
        logits: &[f32],
        labels: &[i32],
        k: usize,
        q: &[f32],
    ) -> Vec<u32> {
        let rows = GpuBackend::new(ctx).prepare(logits, labels, k).unwrap();
        let st = conformal_gpu::gpu::row_stats::row_stats(ctx, &rows, 0.7, q).unwrap();
        let mut out: Vec<u32> = st.stats.iter().flatten().map(|x| x.to_bits()).collect();
        out.extend(&st.info);
        out
    }

    fn generic() -> Option<GpuContext> {
        common::gpu_with(GpuOptions {
            generic_pipelines: true,
            ..Default::default()
        })
    }

    /// K: 1 and 2 (the common cases), 3 and 5 (order-invariant class sums), the largest
    /// specialised K and one past it (generic either way). Levels 0, 1, 4. Rows: three
    /// workgroups and a ragged end.
    #[test]
    fn specialised_pipelines_compute_the_generic_bits() {
        let (Some(special), Some(generic)) = (common::shared_gpu(), generic()) else {
            return;
        };
        for k in [
            1,
            2,
            3,
            5,
            SPECIALISE_MAX_CLASSES,
            SPECIALISE_MAX_CLASSES + 1,
        ] {
            assert_eq!(
                pipeline_constants(k, 1)[0].1 != 0,
                k <= SPECIALISE_MAX_CLASSES,
                "K = {k}"
            );
            compare(special, &generic, 3 * WG + 17, k, 100, &[0, 1, 4], true);
        }
    }

    /// The tally's team of lanes per row (what hardware adapters run for K >=
    /// TALLY_LANES_MIN_K; forced here) against one thread a row. K: the smallest with lanes (64: two classes a lane), 100 (three and four
    /// classes a lane), 1000. Rows: 0, 1, a block of teams (WG / TALLY_LANES rows) -1,
    /// exactly, +1 (the last block's teams past the end still take every barrier), a
    /// tile -1, exactly, +1, and several tiles. Slides in runs of 5 (tiles of several
    /// slots: row by row to global words) and of 1000 (one slot: registers, workgroup
    /// atomics); 0, 1 and 31 levels (every row of lane_sizes). On a grid capped at 7
    /// workgroups per dimension (padding workgroups), outputs poisoned.
    #[test]
    fn tally_lanes_compute_the_one_thread_bits() {
        let (Some(special), Some(generic)) = (
            common::gpu_with(GpuOptions {
                max_workgroups_per_dim: Some(7),
                poison_outputs: true,
                // The team kernel on any adapter (software ones choose one thread a row).
                tally_lanes: Some(TALLY_LANES),
                ..Default::default()
            }),
            generic(),
        ) else {
            return;
        };
        let block = WG / TALLY_LANES as usize;
        let tile = tile_rows(TALLY_ROWS_PER_THREAD, TALLY_LANES) as usize;
        for k in [64, 100, 1000] {
            assert_eq!(tally_lanes(k), TALLY_LANES);
            for n in [
                0,
                1,
                block - 1,
                block,
                block + 1,
                tile - 1,
                tile,
                tile + 1,
                3 * tile + 5,
            ] {
                for run in [5, 1000] {
                    compare(&special, &generic, n, k, run, &[0, 1, 31], false);
                }
            }
        }
    }

    /// Row statistics and the device tally at each of `levels` of `n` rows of `k` classes
    /// on both contexts: the same bits, and tallies equal to the host count. With `full`,
    /// their bootstrap tallies too. Half
    /// the rows are quantised to 1/4 (ties at thresholds taken from the data), a fifth
    /// unlabelled, slides in runs of `run` rows.
    fn compare(
        special: &GpuContext,
        generic: &GpuContext,
        n: usize,
        k: usize,
        run: i64,
        levels: &[usize],
        full: bool,
    ) {
        let mut r = common::rng(k as u64 * 7919 + n as u64);
        let logits: Vec<f32> = (0..n * k)
            .map(|i| {
                let z: f32 = r.random_range(-6.0..6.0);
                if (i / k).is_multiple_of(2) {
                    (z * 4.0).round() / 4.0
                } else {
                    z
                }
            })
            .collect();
        let labels: Vec<i32> = (0..n)
            .map(|i| {
                if i % 5 == 0 {
                    -1
                } else {
                    r.random_range(0..k as i32)
                }
            })
            .collect();
        let slide: Vec<i64> = (0..n as i64).map(|i| i / run).collect();
        let hospital: Vec<i64> = slide.iter().map(|s| s % 2).collect();
        for &levels in levels {
            let q: Vec<f32> = (0..levels).map(|a| 0.2 + 0.15 * a as f32).collect();
            let what = format!("K = {k}, {levels} levels");
            let s = stats_bits(special, &logits, &labels, k, &q);
            assert_eq!(
                s,
                stats_bits(generic, &logits, &labels, k, &q),
                "{what}: row_stats"
            );
            let qhats: Vec<Option<f32>> = q.iter().map(|&x| Some(x)).collect();
            // Thresholds on a quantised row's own statistics: ties in both kernels.
            let st = conformal_gpu::gpu::row_stats::row_stats(
                special,
                &GpuBackend::new(special)
                    .prepare(&logits, &labels, k)
                    .unwrap(),
                0.7,
                &q,
            )
            .unwrap();
            let plan = TallyPlan {
                t: 0.7,
                atc_mc: st.stats.get(n / 2).map(|s| s[0]),
                atc_ne: st.stats.get(n / 2).map(|s| s[1]),
                cpc_q: st.stats.last().map(|s| s[3]),
                qhats: &qhats,
                labels: &labels,
                groups: [Some(&hospital), Some(&slide)],
            };
            let tally = |ctx: &GpuContext| {
                let rows = GpuBackend::new(ctx).prepare(&logits, &labels, k).unwrap();
                let mut dev = DeviceTally::new(levels).unwrap();
                dev.add(ctx, &rows, &plan).unwrap();
                dev.finish(ctx).unwrap()
            };
            let got = tally(special);
            // Both equal the host count of the same statistics (the contract, as in
            // tests/tally.rs), and so each other. At K = 1000 with 31 levels this is the
            // case that found llvmpipe's loop cap (kernel::loop_budget): one thread took
            // 16 rows of ~34,000 iterations and miscounted all but its first.
            let mut host = conformal_gpu::kernel::tally::PairCounts::new();
            conformal_gpu::kernel::tally::count_block(st.all(), 0, &plan, &mut host);
            assert_eq!(got, host, "{what}: tally vs the host count");
            assert_eq!(got, tally(generic), "{what}: tally");
        }
        if !full {
            return;
        }
        let reps: Vec<ReplicatePlan> = (0..6)
            .map(|i| ReplicatePlan {
                t: 0.8 + i as f32 / 8.0,
                atc_mc: Some(0.6),
                atc_ne: Some(-0.7),
                cpc_q: Some(0.4),
            })
            .collect();
        let plan = BootstrapTallyPlan {
            seed: 7,
            name_key: name_key("target"),
            row_offset: 0,
            modes: [&reps, &reps],
            labels: &labels,
            groups: [Some(&hospital), Some(&slide)],
        };
        let boot = |ctx: &GpuContext| {
            let b = GpuBackend::new(ctx);
            b.bootstrap_tally(&b.prepare(&logits, &labels, k).unwrap(), &plan)
                .unwrap()
        };
        assert_eq!(boot(special), boot(generic), "K = {k}: bootstrap tally");
    }

    /// On an adapter that caps loop iterations per invocation (llvmpipe), a kernel whose
    /// single row would pass the cap is a typed error naming the kernel, not short counts;
    /// the tally takes fewer rows a thread instead when one row fits. K = 20,000 with one
    /// level: about 100,000 iterations a row one thread a row, 3,300 with 32 lanes.
    #[test]
    fn kernels_past_the_loop_cap_are_refused() {
        let Some(ctx) = common::shared_gpu() else {
            return;
        };
        let k = 20_000;
        let n = 3;
        let logits: Vec<f32> = (0..n * k).map(|i| (i % 97) as f32 / 8.0).collect();
        let labels = vec![1, 2, -1];
        let rows = GpuBackend::new(ctx).prepare(&logits, &labels, k).unwrap();
        let st = conformal_gpu::gpu::row_stats::row_stats(ctx, &rows, 1.0, &[0.5]);
        let qhats = [Some(0.5f32)];
        let plan = TallyPlan {
            t: 1.0,
            atc_mc: Some(0.5),
            atc_ne: Some(-0.5),
            cpc_q: Some(0.5),
            qhats: &qhats,
            labels: &labels,
            groups: [None, None],
        };
        let mut dev = DeviceTally::new(1).unwrap();
        let one_thread = dev.add(ctx, &rows, &plan);
        match ctx.loop_limit() {
            Some(limit) => {
                for (what, r) in [("row_stats", st.map(|_| ())), ("tally", one_thread)] {
                    match r {
                        Err(conformal_gpu::Error::Gpu(m)) => {
                            assert!(m.contains(what) && m.contains(&limit.to_string()), "{m}")
                        }
                        other => panic!("{what}: {other:?}"),
                    }
                }
                // 32 lanes a row fit: the tally runs and counts every row.
                let lanes = common::gpu_with(GpuOptions {
                    tally_lanes: Some(TALLY_LANES),
                    ..Default::default()
                })
                .unwrap();
                let rows = GpuBackend::new(&lanes)
                    .prepare(&logits, &labels, k)
                    .unwrap();
                let mut dev = DeviceTally::new(1).unwrap();
                dev.add(&lanes, &rows, &plan).unwrap();
                let counts = dev.finish(&lanes).unwrap();
                assert_eq!(counts.values().map(|c| c.n()).sum::<u64>(), n as u64);
            }
            None => {
                st.unwrap();
                one_thread.unwrap();
            }
        }
    }

    /// `GpuOptions::tally_lanes` takes 1 or TALLY_LANES: another value (its teams would
    /// overrun the kernel's per-team arrays, 0 would divide by zero) is refused.
    #[test]
    fn other_lane_counts_are_refused() {
        for lanes in [0, 2, 16, 64] {
            let r = conformal_gpu::gpu::GpuContext::new(GpuOptions {
                allow_software: true,
                tally_lanes: Some(lanes),
                ..Default::default()
            });
            match r {
                Err(conformal_gpu::Error::Invalid(m)) => assert!(m.contains("tally_lanes"), "{m}"),
                // No adapter at all: nothing to check (CI requires one).
                Err(conformal_gpu::Error::NoAdapter(_)) => {}
                other => panic!("tally_lanes = {lanes}: {:?}", other.map(|_| ())),
            }
        }
    }
}
