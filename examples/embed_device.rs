//! Embedding: run the kernels on a `wgpu::Device`/`Queue` the caller already owns (e.g.
//! a renderer's or a training loop's), instead of letting the crate open its own.
//!
//! `cargo run --release --example embed_device`

#[cfg(feature = "gpu")]
fn main() -> conformal_gpu::Result<()> {
    use conformal_gpu::backend::GpuBackend;
    use conformal_gpu::data::{generate_split, split_specs, GeneratorConfig};
    use conformal_gpu::gpu::{GpuContext, GpuOptions};
    use conformal_gpu::methods::evaluate::{evaluate, EvalOptions};

    // The caller's own device, created however the application likes.
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        match pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
        {
            Ok(a) => a,
            Err(e) => {
                eprintln!("no adapter ({e}); nothing to embed into");
                return Ok(());
            }
        };
    let info = adapter.get_info();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("application device"),
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .map_err(|e| conformal_gpu::Error::Gpu(e.to_string()))?;

    // Share it (wgpu handles are cheap clones): the application keeps using `device`.
    let ctx = GpuContext::from_device(device.clone(), queue.clone(), info, GpuOptions::default())?;
    let cfg = GeneratorConfig {
        scale: 0.01,
        seed: 1,
    };
    let specs = split_specs(cfg.scale);
    let split = |n: &str| generate_split(&cfg, specs.iter().find(|s| s.name == n).expect("split"));
    let report = evaluate(
        &GpuBackend::new(&ctx),
        &split("id_val"),
        &[split("ood_val")],
        None,
        &EvalOptions::default(),
    )?;
    let t = &report.targets[0];
    println!(
        "{}: {} true {:.4}, CPC {:.4} (TS, T = {:.3})",
        report.device,
        t.name,
        t.true_accuracy.unwrap_or(f64::NAN),
        t.estimates.ts.cpc,
        report.source.temperature
    );
    Ok(())
}

#[cfg(not(feature = "gpu"))]
fn main() {
    eprintln!("built without the `gpu` feature");
}
