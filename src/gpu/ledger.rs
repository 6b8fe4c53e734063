//! The transfer ledger: bytes uploaded to the device, bytes read back, and queue
//! submissions, counted by every [`GpuContext`](super::GpuContext) method that moves data
//! (`upload`, `uniform`, `write_buffer`, `readback`, batch submissions with their staging
//! copies and timestamp readbacks). GPU runs report it in their JSON `meta.transfers`.
//!
//! Code that uses `ctx.queue` or `ctx.device` directly bypasses the ledger; use the
//! context's methods (or its `count_*` helpers) instead.

use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::report::model::Transfers;

/// Atomic counters behind [`Transfers`] (one per context; relaxed: each counter is exact,
/// a snapshot taken while another thread transfers may mix before and after).
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    upload: AtomicU64,
    download: AtomicU64,
    submissions: AtomicU64,
}

impl Ledger {
    pub(crate) fn upload(&self, bytes: u64) {
        self.upload.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn download(&self, bytes: u64) {
        self.download.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn submission(&self) {
        self.submissions.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Transfers {
        Transfers {
            upload_bytes: self.upload.load(Ordering::Relaxed),
            download_bytes: self.download.load(Ordering::Relaxed),
            submissions: self.submissions.load(Ordering::Relaxed),
        }
    }

    /// Zeroes the counters, returning what they held.
    pub(crate) fn take(&self) -> Transfers {
        Transfers {
            upload_bytes: self.upload.swap(0, Ordering::Relaxed),
            download_bytes: self.download.swap(0, Ordering::Relaxed),
            submissions: self.submissions.swap(0, Ordering::Relaxed),
        }
    }
}
