//! The GPU context's bookkeeping: the transfer ledger gives exact figures for a known
//! sequence of uploads, dispatches and readbacks; a run without `XDG_RUNTIME_DIR` starts
//! quietly (no driver noise on stderr).
#![cfg(feature = "gpu")]

mod common;

use std::ffi::OsString;
use std::process::Command;

use common::*;
use conformal_gpu::gpu::{self, context::needs_device_select_off, GpuOptions, Transfers};

#[test]
fn ledger_counts_uploads_readbacks_and_submissions_exactly() {
    // A context of its own: tests sharing one would add their traffic to the figures.
    let Some(ctx) = gpu_with(GpuOptions::default()) else {
        return;
    };
    ctx.reset_transfers();
    assert_eq!(ctx.transfers(), Transfers::default());

    let src: Vec<u32> = (0..64).collect();
    let sbuf = ctx.upload("src", &src).unwrap(); // 256 bytes up
    let dbuf = ctx.storage("dst", 256).unwrap(); // nothing moves
    ctx.write_buffer(&sbuf, 0, &[7u32; 8]); // 32 bytes up
    gpu::copy::copy(&ctx, &sbuf, &dbuf, 256).unwrap(); // 16-byte uniform up, 1 submission
    let back: Vec<u32> = ctx.readback(&dbuf, 0, 64).unwrap(); // 256 down, 1 submission
    let odd: Vec<u8> = ctx.readback(&dbuf, 0, 5).unwrap(); // 5 bytes: 8 copied, 1 submission
    let mut want = src.clone();
    want[..8].fill(7);
    assert_eq!(back, want);
    assert_eq!(odd, [7, 0, 0, 0, 7]);
    let t = ctx.transfers();
    assert_eq!(
        t,
        Transfers {
            upload_bytes: 256 + 32 + 16,
            download_bytes: 256 + 8,
            submissions: 3,
        }
    );
    assert_eq!(
        ctx.reset_transfers(),
        t,
        "reset returns what the ledger held"
    );
    assert_eq!(ctx.transfers(), Transfers::default());

    // A batch that dispatches and reads back in one submission (softmax of 3 rows, K = 2):
    // 24 bytes of logits and a 16-byte uniform up, 24 bytes of probabilities down.
    let p = gpu::softmax::softmax(&ctx, &[0.0, 1.0, 2.0, 2.0, -1.0, 3.0], 2, 1.0).unwrap();
    assert_eq!(p.len(), 6);
    assert_eq!(
        ctx.transfers(),
        Transfers {
            upload_bytes: 24 + 16,
            download_bytes: 24,
            submissions: 1,
        }
    );
    // The JSON `meta.transfers` shape.
    assert_eq!(
        serde_json::to_string(&ctx.transfers()).unwrap(),
        r#"{"upload_bytes":40,"download_bytes":24,"submissions":1}"#
    );
}

#[test]
fn device_select_is_turned_off_only_where_it_could_only_print_noise() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| OsString::from(v))
        }
    };
    assert!(needs_device_select_off(env(&[])));
    assert!(needs_device_select_off(env(&[("XDG_RUNTIME_DIR", "")])));
    assert!(needs_device_select_off(env(&[("XDG_RUNTIME_DIR", "run")])));
    assert!(!needs_device_select_off(env(&[(
        "XDG_RUNTIME_DIR",
        "/run/user/1"
    )])));
    assert!(!needs_device_select_off(env(&[(
        "WAYLAND_DISPLAY",
        "/tmp/wl.sock"
    )])));
    // A user who asks the layer for something keeps it.
    for k in [
        "NODEVICE_SELECT",
        "MESA_VK_DEVICE_SELECT",
        "MESA_VK_DEVICE_SELECT_FORCE_DEFAULT_DEVICE",
        "DRI_PRIME",
    ] {
        let get = move |q: &str| (q == k).then(|| OsString::from("1"));
        assert!(!needs_device_select_off(get), "{k} set");
    }
}

#[test]
fn gpu_run_without_xdg_runtime_dir_is_quiet() {
    // Before the quiet start, Mesa's device-select layer printed "error: XDG_RUNTIME_DIR is
    // invalid or not set in the environment." twice on stderr here (libwayland-client).
    let out = Command::new(env!("CARGO_BIN_EXE_conformal-gpu"))
        .args(["temperature", "--device", "gpu", "--data"])
        .arg(tiny4("id_val.npz"))
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("NODEVICE_SELECT")
        .env_remove("MESA_VK_DEVICE_SELECT")
        .env_remove("MESA_VK_DEVICE_SELECT_FORCE_DEFAULT_DEVICE")
        .env_remove("DRI_PRIME")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if std::env::var("CONFORMAL_GPU_REQUIRED").is_ok_and(|v| v == "1") {
            panic!("CONFORMAL_GPU_REQUIRED=1 but the GPU run failed:\n{stderr}");
        }
        eprintln!("skipped: no GPU adapter ({stderr})");
        return;
    }
    for line in stderr.lines() {
        assert!(
            !line.contains("XDG_RUNTIME_DIR") && !line.starts_with("error"),
            "driver noise on stderr: {line:?}\nall of stderr:\n{stderr}"
        );
    }
}

/// Readbacks reuse staging buffers of their size class (powers of two, at least 256
/// bytes): a long stream of readbacks of changing sizes, each reading through a buffer an
/// earlier readback of another length used, returns exactly its own elements, and the
/// ledger counts the bytes copied, not the buffer's size.
#[test]
fn pooled_staging_reads_back_exactly() {
    let Some(ctx) = gpu_with(GpuOptions::default()) else {
        return;
    };
    let src: Vec<u32> = (0..4096u32)
        .map(|i| i.wrapping_mul(2_654_435_761))
        .collect();
    let buf = ctx.upload("src", &src).unwrap();
    ctx.reset_transfers();
    // 1 and 64 words share the 256-byte class; 65 and 128 the 512-byte one; 1000 then 5
    // again (back to a used 256-byte buffer, its tail holding older data).
    let mut copied = 0;
    for (offset, len) in [
        (0, 64),
        (3, 1),
        (10, 65),
        (7, 128),
        (0, 1000),
        (4000, 5),
        (1, 64),
    ] {
        let got: Vec<u32> = ctx.readback(&buf, offset, len).unwrap();
        assert_eq!(
            got,
            src[offset as usize..offset as usize + len],
            "{offset} {len}"
        );
        copied += 4 * len as u64;
    }
    assert_eq!(ctx.transfers().download_bytes, copied);
}
