//! The bandwidth-ceiling copy kernel equals its CPU mirror bit for bit.
#![cfg(feature = "gpu")]

mod common;

use common::*;
use conformal_gpu::{cpu, gpu};

#[test]
fn copy_matches_mirror_at_workgroup_edges() {
    let Some(ctx) = shared_gpu() else { return };
    // 16-byte elements: WG - 1, WG, WG + 1 workgroup-sized copies and a single element.
    for &elems in &[1usize, 255, 256, 257, 5000] {
        let words: Vec<u32> = (0..elems as u32 * 4)
            .map(|i| i.wrapping_mul(2_654_435_761))
            .collect();
        let src = ctx.upload("src", &words).unwrap();
        // Poisoned destination: stale values must not survive.
        let dst = ctx
            .upload("dst", &vec![0xdead_beefu32; words.len()])
            .unwrap();
        gpu::copy::copy(ctx, &src, &dst, elems as u64 * 16).unwrap();
        let got: Vec<u32> = ctx.readback(&dst, 0, words.len()).unwrap();
        let mut want = vec![0u32; words.len()];
        cpu::copy::copy(&words, &mut want);
        assert_bits_eq(&format!("copy {elems}"), &got, &want, |a, b| a == b);
    }
}
