//! GPU failures (DESIGN.md section 6): injected out-of-memory, device-lost and map
//! failures come back as typed errors (never a panic); `with_backend!` under
//! `DeviceChoice::Auto` reruns on the CPU and gets the CPU's numbers; under
//! `DeviceChoice::Gpu` the error surfaces. Needs an adapter (lavapipe will do): skips
//! without one, fails under CONFORMAL_GPU_REQUIRED=1.
#![cfg(feature = "gpu")]

mod common;

use conformal_gpu::backend::{Backend, CpuBackend, GpuBackend};
use conformal_gpu::data::PredictionSet;
use conformal_gpu::device::{DeviceChoice, Engine};
use conformal_gpu::gpu::{Fault, GpuContext, GpuOptions};
use conformal_gpu::methods::evaluate::{evaluate, EvalOptions, Evaluation, Timings};
use conformal_gpu::methods::temperature::temperature_report;
use conformal_gpu::{with_backend, Error};
use ndarray::{Array1, Array2};

const FAULTS: [Fault; 3] = [Fault::OutOfMemory, Fault::DeviceLost, Fault::MapFailure];

fn sets() -> (PredictionSet, Vec<PredictionSet>) {
    let k = 3;
    let mk = |name: &str, seed: u64, n: usize, labelled: bool| {
        let logits =
            Array2::from_shape_vec((n, k), common::random_logits(seed, n, k, 3.0)).expect("shape");
        let y = Array1::from_shape_fn(n, |i| if labelled { (i % k) as i64 } else { -1 });
        let mut s = PredictionSet::new(name, logits).with_labels(y);
        s.hospital = Some(Array1::from_shape_fn(n, |i| (i % 2) as i64));
        s
    };
    (
        mk("source", 1, 300, true),
        vec![mk("a", 2, 200, true), mk("b", 3, 150, false)],
    )
}

fn options() -> EvalOptions {
    EvalOptions {
        alphas: vec![0.05, 0.1, 0.2],
        rows: true,
        ..Default::default()
    }
}

fn ctx_with(fault: Fault) -> Option<GpuContext> {
    common::gpu_with(GpuOptions {
        inject_fault: Some(fault),
        ..Default::default()
    })
}

#[track_caller]
fn assert_kind(fault: Fault, e: &Error) {
    let ok = match fault {
        Fault::OutOfMemory => matches!(e, Error::GpuOutOfMemory(_)),
        Fault::DeviceLost => matches!(e, Error::DeviceLost(_)),
        Fault::MapFailure => matches!(e, Error::Gpu(_)),
    };
    assert!(ok, "{fault:?} gave {e:?}");
    assert!(e.is_gpu_failure(), "{e:?}");
    assert_eq!(e.exit_code(), 6, "{e:?}");
}

/// The evaluation without the fields that legitimately differ between runs.
fn comparable(mut e: Evaluation) -> Evaluation {
    e.timings_ms = Timings::default();
    e
}

#[test]
fn injected_faults_are_typed_errors_from_every_entry_point() {
    let (source, targets) = sets();
    for fault in FAULTS {
        let Some(ctx) = ctx_with(fault) else { return };
        let e = evaluate(&GpuBackend::new(&ctx), &source, &targets, None, &options())
            .expect_err("fault must surface");
        assert_kind(fault, &e);

        let Some(ctx) = ctx_with(fault) else { return };
        let e = temperature_report(&GpuBackend::new(&ctx), &source).expect_err("temperature");
        assert_kind(fault, &e);

        let Some(ctx) = ctx_with(fault) else { return };
        let e = GpuBackend::new(&ctx)
            .softmax(&common::random_logits(4, 50, 3, 2.0), 3, 1.0)
            .expect_err("softmax");
        assert_kind(fault, &e);
    }
}

#[test]
fn fault_injected_after_creation_surfaces_too() {
    let (source, targets) = sets();
    let Some(ctx) = common::gpu() else { return };
    // A healthy run first, then a fault in the middle of the next one.
    evaluate(&GpuBackend::new(&ctx), &source, &targets, None, &options()).expect("healthy");
    ctx.inject_fault(Fault::MapFailure);
    let e = evaluate(&GpuBackend::new(&ctx), &source, &targets, None, &options())
        .expect_err("map failure");
    assert_kind(Fault::MapFailure, &e);
    // The fault is one-shot: the context works again afterwards.
    evaluate(&GpuBackend::new(&ctx), &source, &targets, None, &options()).expect("recovered");
}

#[test]
fn auto_falls_back_to_the_cpu_with_the_cpu_numbers() {
    let (source, targets) = sets();
    let cpu =
        comparable(evaluate(&CpuBackend, &source, &targets, None, &options()).expect("cpu run"));
    for fault in FAULTS {
        let Some(ctx) = ctx_with(fault) else { return };
        let engine = Engine::Gpu(Box::new(ctx));
        let got: Result<Evaluation, Error> = with_backend!(&engine, DeviceChoice::Auto, |b| {
            evaluate(b, &source, &targets, None, &options())
        });
        let got = comparable(got.expect("auto falls back"));
        assert_eq!(got.device, "cpu", "{fault:?}: the fallback ran on the CPU");
        assert_eq!(got, cpu, "{fault:?}: fallback numbers equal the CPU run");
    }
}

#[test]
fn gpu_choice_surfaces_the_error() {
    let (source, targets) = sets();
    for fault in FAULTS {
        let Some(ctx) = ctx_with(fault) else { return };
        let engine = Engine::Gpu(Box::new(ctx));
        let got: Result<Evaluation, Error> = with_backend!(&engine, DeviceChoice::Gpu, |b| {
            evaluate(b, &source, &targets, None, &options())
        });
        assert_kind(fault, &got.expect_err("no fallback under --device gpu"));
    }
}

#[test]
fn invalid_input_is_not_a_gpu_failure_and_does_not_fall_back() {
    let (mut source, targets) = sets();
    source.logits[[7, 1]] = f32::NAN;
    let Some(ctx) = common::gpu() else { return };
    let engine = Engine::Gpu(Box::new(ctx));
    let got: Result<Evaluation, Error> = with_backend!(&engine, DeviceChoice::Auto, |b| {
        evaluate(b, &source, &targets, None, &options())
    });
    match got {
        Err(Error::NonFinite { row: 7, col: 1, .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn backends_reject_inconsistent_shapes() {
    let Some(ctx) = common::shared_gpu() else {
        return;
    };
    let gpu = GpuBackend::new(ctx);
    let logits = [0.0f32; 7];
    for r in [
        gpu.softmax(&logits, 2, 1.0).map(|_| ()),
        gpu.softmax(&logits, 0, 1.0).map(|_| ()),
        gpu.prepare(&logits[..6], &[0, 1], 2).map(|_| ()),
        gpu.prepare(&logits[..6], &[0, 1, 5], 2).map(|_| ()),
        CpuBackend.softmax(&logits, 2, 1.0).map(|_| ()),
        CpuBackend.prepare(&logits[..6], &[], 2).map(|_| ()),
        CpuBackend.prepare(&logits[..6], &[0, -2, 1], 2).map(|_| ()),
    ] {
        let e = r.expect_err("inconsistent shapes");
        assert!(!e.is_gpu_failure(), "{e:?}");
    }
}

/// The evaluation driver (`methods::evaluate::run`, what the CLI and Python call) under
/// `auto` on a device that is lost: the fit and the targets (rows in memory, borrowed
/// again; a file, opened again) rerun on the CPU, with the CPU's numbers.
#[test]
fn the_driver_falls_back_for_rows_in_memory_and_files() {
    use conformal_gpu::data::npz::save_npz;
    use conformal_gpu::methods::calibration::{CalibrationOptions, Temperature};
    use conformal_gpu::methods::evaluate::{run, EvaluationJob};
    use conformal_gpu::methods::files::FileJob;
    use conformal_gpu::methods::target::{TargetArrays, TargetInput};
    let (source, targets) = sets();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("b.npz");
    save_npz(&file, &targets[1], false).expect("save");
    let job = || EvaluationJob {
        source: &source,
        options: CalibrationOptions {
            alphas: options().alphas,
            temperature: Temperature::FitSource,
            bootstrap: Default::default(),
            sets: Default::default(),
            cot_reference: None,
        },
        inputs: Vec::new(),
        targets: vec![
            TargetInput::Arrays(TargetArrays::of_set(&targets[0]).expect("standard")),
            TargetInput::File(Box::new(FileJob::open(&file, "b", None).expect("open"))),
        ],
        rows: true,
        started: std::time::Instant::now(),
    };
    let cpu = run(&Engine::Cpu, DeviceChoice::Cpu, job()).expect("cpu run");
    let Some(ctx) = ctx_with(Fault::DeviceLost) else {
        return;
    };
    let engine = Engine::Gpu(Box::new(ctx));
    let got = run(&engine, DeviceChoice::Auto, job()).expect("auto falls back");
    assert_eq!(got.evaluation.device, "cpu");
    assert_eq!(
        comparable(got.evaluation),
        comparable(cpu.evaluation),
        "fallback numbers equal the CPU run"
    );
    assert_eq!(got.inputs, cpu.inputs);
    // Under `gpu` the loss is the error.
    let Some(ctx) = ctx_with(Fault::DeviceLost) else {
        return;
    };
    let e = run(&Engine::Gpu(Box::new(ctx)), DeviceChoice::Gpu, job())
        .err()
        .expect("device lost");
    assert_kind(Fault::DeviceLost, &e);
}
