//! Compiling ahead: which pipelines an evaluation dispatches, compiled on a thread beside
//! the start of the work. Here, not in `context`, so the context knows no kernel.

use crate::gpu::context::GpuContext;

impl GpuContext {
    /// Compiles the pipelines an evaluation of rows of `k` classes at `levels` levels uses
    /// (with `bootstrap`, the bootstrap kernel's too), in the order it first needs them.
    /// Meant for a thread beside the start of the work (reading the data, fitting the
    /// source): pipeline creation is tens of milliseconds each on a software rasteriser.
    /// Errors are left for the call that needs the pipeline to report.
    pub fn warm_up_evaluation(&self, k: usize, levels: usize, bootstrap: bool) {
        use crate::kernel::row_stats::{pipeline_constants, MAX_ALPHA_PER_PASS};
        let _ = self.compile("temperature_nll", &[], true);
        let _ = self.compile("calibration", &[], true);
        let _ = self.compile("row_stats", &pipeline_constants(k, 0), true);
        for name in ["radix_histogram", "radix_scan", "radix_scatter"] {
            let _ = self.compile(name, &[], true);
        }
        // Past MAX_ALPHA_PER_PASS levels the targets are tallied on the host.
        if levels <= MAX_ALPHA_PER_PASS {
            let constants = crate::gpu::tally::tally_constants(self, k, levels);
            let _ = self.compile("tally", &constants, true);
        }
        if bootstrap {
            let _ = self.compile("bootstrap", &pipeline_constants(k, 0), true);
        }
    }
}
