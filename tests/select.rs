//! MSD radix select: GPU histograms == CPU mirror bit for bit, GPU select == mirror
//! select == `select_nth_unstable_by` oracle == sort + index.

mod common;
mod keys;

use common::{assert_bits_eq, rng};
use conformal_gpu::backend::{Backend, CpuBackend};
use conformal_gpu::cpu::radix_sort::sort_keys;
use conformal_gpu::cpu::select_histogram::{radix_select, select_oracle};
use proptest::prelude::*;
use rand::Rng;

use keys::{keys, DISTS, SIZES};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn ranks(n: usize, seed: u64, extra: usize) -> Vec<usize> {
    let mut r = rng(seed);
    let mut ks = vec![1, n.div_ceil(2), n];
    ks.extend((0..extra).map(|_| r.random_range(1..=n)));
    ks
}

#[test]
fn cpu_select_paths_agree_with_sort() {
    for &n in SIZES.iter().filter(|&&n| n > 0) {
        for (s, &dist) in DISTS.iter().enumerate() {
            let k = keys(dist, n, 50 + s as u64);
            let sorted = sort_keys(&k);
            let ks = ranks(n, s as u64, 20);
            let want: Vec<f32> = ks.iter().map(|&r| sorted[r - 1]).collect();
            assert_eq!(
                bits(&select_oracle(&k, &ks)),
                bits(&want),
                "{dist} n={n} oracle"
            );
            assert_eq!(
                bits(&radix_select(&k, &ks)),
                bits(&want),
                "{dist} n={n} mirror"
            );
            assert_eq!(bits(&CpuBackend.select(&k, &ks).unwrap()), bits(&want));
        }
    }
}

#[cfg(feature = "gpu")]
mod gpu {
    use super::*;
    use common::shared_gpu;
    use conformal_gpu::backend::GpuBackend;
    use conformal_gpu::cpu::select_histogram::{
        distinct_prefixes, narrow, select_histogram, Narrow,
    };
    use conformal_gpu::gpu::select_histogram::{select_histogram as gpu_hist, upload_keys};

    #[test]
    fn gpu_select_histograms_match_mirror_every_pass() {
        let Some(ctx) = shared_gpu() else { return };
        for &n in SIZES.iter().filter(|&&n| n > 0) {
            for (s, &dist) in DISTS.iter().enumerate() {
                let k = keys(dist, n, 60 + s as u64);
                let dk = upload_keys(ctx, &k).unwrap();
                // 20 ranks: more than 16 distinct prefixes later on, so two dispatch groups.
                let ks = ranks(n, 7, 17);
                let mut state: Vec<Narrow> = ks
                    .iter()
                    .map(|&r| Narrow {
                        prefix: 0,
                        rank: r as u64,
                    })
                    .collect();
                for shift in [24u32, 16, 8, 0] {
                    let pre = distinct_prefixes(&state);
                    let g = gpu_hist(ctx, &dk, shift, &pre).unwrap();
                    let c: Vec<u64> = select_histogram(&k, shift, &pre)
                        .into_iter()
                        .map(u64::from)
                        .collect();
                    assert_bits_eq(&format!("{dist} n={n} shift={shift}"), &g, &c, |a, b| {
                        a == b
                    });
                    narrow(&mut state, &pre, &c, shift);
                }
                let sorted = sort_keys(&k);
                let want: Vec<u32> = ks.iter().map(|&r| sorted[r - 1].to_bits()).collect();
                let got = GpuBackend::new(ctx).select(&k, &ks).unwrap();
                assert_eq!(bits(&got), want, "{dist} n={n}");
            }
        }
    }

    /// 2^24 + 1 keys, once.
    #[test]
    fn gpu_select_2p24_plus_1() {
        let Some(ctx) = shared_gpu() else { return };
        let n = (1 << 24) + 1;
        let k = keys("mixed", n, 77);
        let ks = ranks(n, 3, 5);
        let t = std::time::Instant::now();
        let got = GpuBackend::new(ctx).select(&k, &ks).unwrap();
        eprintln!(
            "GPU select of {} ranks in 2^24+1 keys: {:?}",
            ks.len(),
            t.elapsed()
        );
        assert_eq!(bits(&got), bits(&select_oracle(&k, &ks)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        #[test]
        fn gpu_select_equals_sort_then_index(
            v in prop::collection::vec(any::<u32>().prop_map(f32::from_bits).prop_filter("nan", |x| !x.is_nan()), 1..3000),
            picks in prop::collection::vec(any::<prop::sample::Index>(), 1..8),
        ) {
            let Some(ctx) = shared_gpu() else { return Ok(()) };
            let ks: Vec<usize> = picks.iter().map(|p| p.index(v.len()) + 1).collect();
            let sorted = sort_keys(&v);
            let want: Vec<u32> = ks.iter().map(|&r| sorted[r - 1].to_bits()).collect();
            prop_assert_eq!(bits(&GpuBackend::new(ctx).select(&v, &ks).unwrap()), want);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn cpu_select_equals_sort_then_index(
        v in prop::collection::vec(any::<u32>().prop_map(f32::from_bits).prop_filter("nan", |x| !x.is_nan()), 1..2000),
        picks in prop::collection::vec(any::<prop::sample::Index>(), 1..20),
    ) {
        let ks: Vec<usize> = picks.iter().map(|p| p.index(v.len()) + 1).collect();
        let sorted = sort_keys(&v);
        let want: Vec<u32> = ks.iter().map(|&r| sorted[r - 1].to_bits()).collect();
        prop_assert_eq!(bits(&CpuBackend.select(&v, &ks).unwrap()), want.clone());
        prop_assert_eq!(bits(&radix_select(&v, &ks)), want);
    }
}
