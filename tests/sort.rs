//! GPU LSD radix sort vs its CPU mirror (bit for bit, payload order included) and the
//! `total_cmp` oracle: boundary sizes, adversarial keys, chunked bindings, and the
//! large sizes (2^24 + 1; past 2^25 with a 128 MiB binding) once each.

mod common;
mod keys;

use common::{assert_bits_eq, rng};
use conformal_gpu::backend::{Backend, CpuBackend};
use conformal_gpu::cpu::radix_histogram::radix_histogram;
use conformal_gpu::cpu::radix_scan::radix_scan;
use conformal_gpu::cpu::radix_sort::{radix_sort, sort_pairs};
use conformal_gpu::Error;
use keys::{keys, DISTS, SIZES};
use proptest::prelude::*;
use rand::seq::SliceRandom;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn mirror_matches_oracle_on_every_distribution() {
    for &n in SIZES {
        for (s, &dist) in DISTS.iter().enumerate() {
            let k = keys(dist, n, 7 + s as u64);
            let idx: Vec<u32> = (0..n as u32).collect();
            let (ok, ov) = sort_pairs(&k, &idx);
            for (chunk, tile) in [(1 << 20, 4096), (1024, 256), (4096, 4096)] {
                let (mk, mv) = radix_sort(&k, Some(&idx), chunk, tile);
                assert_bits_eq(
                    &format!("{dist} n={n} keys"),
                    &bits(&mk),
                    &bits(&ok),
                    |a, b| a == b,
                );
                assert_eq!(mv.unwrap(), ov, "{dist} n={n} payload");
            }
        }
    }
}

#[cfg(feature = "gpu")]
mod gpu {
    use super::*;
    use common::{gpu_with, shared_gpu};
    use conformal_gpu::backend::GpuBackend;
    use conformal_gpu::gpu::radix_sort::{first_pass_offsets, plan, radix_sort as gpu_sort};
    use conformal_gpu::gpu::GpuOptions;

    fn check(ctx: &conformal_gpu::gpu::GpuContext, k: &[f32], what: &str, with_payload: bool) {
        let p = plan(ctx);
        let idx: Vec<u32> = (0..k.len() as u32).collect();
        let payload = with_payload.then_some(&idx[..]);
        let (gk, gv) = gpu_sort(ctx, k, payload).unwrap();
        let (mk, mv) = radix_sort(k, payload, p.chunk, p.tile);
        assert_bits_eq(&format!("{what} keys"), &bits(&gk), &bits(&mk), |a, b| {
            a == b
        });
        if with_payload {
            assert_bits_eq(
                &format!("{what} payload"),
                &gv.unwrap(),
                &mv.unwrap(),
                |a, b| a == b,
            );
        } else {
            assert!(gv.is_none());
        }
    }

    #[test]
    fn gpu_sort_matches_mirror_at_boundary_sizes() {
        let Some(ctx) = shared_gpu() else { return };
        for &n in SIZES {
            for (s, &dist) in DISTS.iter().enumerate() {
                let k = keys(dist, n, 100 + s as u64);
                check(ctx, &k, &format!("{dist} n={n} +payload"), true);
                if n == 4097 || n == 257 {
                    check(ctx, &k, &format!("{dist} n={n}"), false);
                }
            }
        }
    }

    #[test]
    fn gpu_first_pass_offsets_match_mirror() {
        let Some(ctx) = shared_gpu() else { return };
        let p = plan(ctx);
        for n in [1usize, 4095, 4097, 20000] {
            let k = keys("mixed", n, 3);
            let (gh, gc) = first_pass_offsets(ctx, &k).unwrap();
            let raw = bits(&k);
            let mut carry = [0u32; 256];
            for (c, src) in raw.chunks(p.chunk).enumerate() {
                let mut h = radix_histogram(src, p.tile, 0, true);
                radix_scan(&mut h, src.len().div_ceil(p.tile), &mut carry, c == 0);
                assert_bits_eq(&format!("n={n} chunk {c} offsets"), &gh[c], &h, |a, b| {
                    a == b
                });
            }
            assert_bits_eq(&format!("n={n} totals"), &gc, &carry, |a, b| a == b);
        }
    }

    /// The scan's two shapes (kernel::radix_sort::scan_workgroups): one workgroup walking
    /// rows serially up to SERIAL_SCAN_TILES tiles a chunk, a workgroup per digit past it.
    /// Tiles of 256 keys (max_tile_blocks = 1) put the switch at 65,536 keys: 255, 256
    /// and 257 tiles, a partial last tile, and two chunks of different shapes (a 257-tile
    /// chunk then a 1-tile one, through 256 KiB bindings) carrying digits across.
    #[test]
    fn gpu_sort_matches_mirror_across_the_scan_shapes() {
        use conformal_gpu::kernel::radix_sort::SERIAL_SCAN_TILES;
        let Some(ctx) = gpu_with(GpuOptions {
            max_tile_blocks: Some(1),
            ..Default::default()
        }) else {
            return;
        };
        let p = plan(&ctx);
        assert_eq!(p.tile, 256);
        let t = SERIAL_SCAN_TILES * p.tile;
        for n in [t - p.tile, t - 1, t, t + 1, t + p.tile] {
            check(&ctx, &keys("mixed", n, n as u64), &format!("n={n}"), true);
        }
        let Some(ctx) = gpu_with(GpuOptions {
            max_tile_blocks: Some(1),
            max_binding_bytes: Some(4 * (t + p.tile) as u64),
            ..Default::default()
        }) else {
            return;
        };
        let p = plan(&ctx);
        assert_eq!(p.chunk, t + p.tile);
        let n = p.chunk + 100;
        check(&ctx, &keys("few-distinct", n, 5), "two chunks", true);
        let k = keys("mixed", n, 6);
        let (gh, gc) = first_pass_offsets(&ctx, &k).unwrap();
        let mut carry = [0u32; 256];
        for (c, src) in bits(&k).chunks(p.chunk).enumerate() {
            let mut h = radix_histogram(src, p.tile, 0, true);
            radix_scan(&mut h, src.len().div_ceil(p.tile), &mut carry, c == 0);
            assert_bits_eq(&format!("chunk {c} offsets"), &gh[c], &h, |a, b| a == b);
        }
        assert_bits_eq("totals", &gc, &carry, |a, b| a == b);
    }

    #[test]
    fn gpu_sort_crosses_small_binding_chunks() {
        // 1 KiB bindings: 256-key chunks and tiles; 4 KiB: 1024-key chunks and tiles.
        for cap in [1024u64, 4096] {
            let Some(ctx) = gpu_with(GpuOptions {
                max_binding_bytes: Some(cap),
                ..Default::default()
            }) else {
                return;
            };
            let p = plan(&ctx);
            assert!(p.chunk * 4 <= cap as usize);
            for n in [p.chunk - 1, p.chunk, p.chunk + 1, 3 * p.chunk + 7, 2500] {
                for dist in ["mixed", "few-distinct", "reverse"] {
                    let k = keys(dist, n, n as u64);
                    check(&ctx, &k, &format!("cap={cap} {dist} n={n}"), true);
                    let idx: Vec<u32> = (0..n as u32).collect();
                    let (ok, ov) = sort_pairs(&k, &idx);
                    let (gk, gv) = gpu_sort(&ctx, &k, Some(&idx)).unwrap();
                    assert_eq!(bits(&gk), bits(&ok));
                    assert_eq!(gv.unwrap(), ov);
                }
            }
            // Selection and p-values chunk the same way.
            let k = keys("mixed", 3000, 9);
            let b = GpuBackend::new(&ctx);
            let ks = [1usize, 2, 1500, 2999, 3000];
            assert_eq!(
                bits(&b.select(&k, &ks).unwrap()),
                bits(&CpuBackend.select(&k, &ks).unwrap())
            );
        }
    }

    #[test]
    fn gpu_sort_rejects_nan_and_bad_payload() {
        let Some(ctx) = shared_gpu() else { return };
        let b = GpuBackend::new(ctx);
        let mut k = keys("uniform", 300, 1);
        k[123] = f32::NAN;
        match b.sort_keys(&k) {
            Err(Error::NonFinite { row, .. }) => assert_eq!(row, 123),
            other => panic!("expected NonFinite, got {other:?}"),
        }
        assert!(matches!(
            b.select(&k, &[1]),
            Err(Error::NonFinite { row: 123, .. })
        ));
        k[123] = 0.5;
        assert!(matches!(
            b.sort_pairs(&k, &[1, 2]),
            Err(Error::LengthMismatch { .. })
        ));
        assert!(matches!(b.select(&k, &[0]), Err(Error::Invalid(_))));
        assert!(matches!(b.select(&k, &[301]), Err(Error::Invalid(_))));
    }

    /// 2^24 + 1 keys with payload, once, on a mix of every distribution.
    #[test]
    fn gpu_sort_2p24_plus_1_matches_mirror() {
        let Some(ctx) = shared_gpu() else { return };
        let n = (1 << 24) + 1;
        let k = keys("mixed", n, 24);
        let t = std::time::Instant::now();
        check(ctx, &k, "2^24+1 mixed", true);
        eprintln!("2^24+1 GPU sort + mirror: {:?}", t.elapsed());
    }

    /// Shuffled distinct floats (consecutive bit patterns) past 2^25, indices as payload,
    /// with 128 MiB bindings so the keys span two chunks.
    #[test]
    fn gpu_argsort_past_2p25_shuffled_distinct() {
        let Some(ctx) = gpu_with(GpuOptions {
            max_binding_bytes: Some(128 << 20),
            ..Default::default()
        }) else {
            return;
        };
        let n = (1usize << 25) + 4097;
        let base = 0x2000_0000u32;
        let mut k: Vec<f32> = (0..n as u32).map(|i| f32::from_bits(base + i)).collect();
        k.shuffle(&mut rng(25));
        let t = std::time::Instant::now();
        let (sk, sv) = GpuBackend::new(&ctx).argsort(&k).unwrap();
        eprintln!("argsort of {n} keys on the GPU: {:?}", t.elapsed());
        assert_eq!(plan(&ctx).chunk, 1 << 25);
        for i in 0..n {
            assert_eq!(sk[i].to_bits(), base + i as u32, "key at {i}");
            assert_eq!(
                k[sv[i] as usize].to_bits(),
                sk[i].to_bits(),
                "payload at {i}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        #[test]
        fn gpu_sort_is_sorted_permutation(v in prop::collection::vec(any::<u32>().prop_map(f32::from_bits).prop_filter("nan", |x| !x.is_nan()), 0..3000)) {
            let Some(ctx) = shared_gpu() else { return Ok(()) };
            let (gk, gv) = GpuBackend::new(ctx).argsort(&v).unwrap();
            let (ok, ov) = CpuBackend.argsort(&v).unwrap();
            prop_assert_eq!(bits(&gk), bits(&ok));
            prop_assert_eq!(gv, ov);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn cpu_sort_is_sorted_permutation(v in prop::collection::vec(any::<u32>().prop_map(f32::from_bits).prop_filter("nan", |x| !x.is_nan()), 0..2000)) {
        let s = CpuBackend.sort_keys(&v).unwrap();
        prop_assert!(s.windows(2).all(|w| w[0].total_cmp(&w[1]).is_le()));
        let mut a = bits(&v);
        let mut b = bits(&s);
        a.sort_unstable();
        b.sort_unstable();
        prop_assert_eq!(a, b);
        let (sk, sv) = CpuBackend.argsort(&v).unwrap();
        prop_assert_eq!(bits(&sk), bits(&s));
        for w in sv.windows(2) {
            let (i, j) = (w[0] as usize, w[1] as usize);
            prop_assert!(v[i].total_cmp(&v[j]).is_lt() || (v[i].to_bits() == v[j].to_bits() && i < j));
        }
        let (mk, mv) = radix_sort(&v, Some(&(0..v.len() as u32).collect::<Vec<_>>()), 1024, 256);
        prop_assert_eq!(bits(&mk), bits(&s));
        prop_assert_eq!(mv.unwrap(), sv);
    }
}
