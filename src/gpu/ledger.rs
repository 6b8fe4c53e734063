//! The transfer ledger: bytes uploaded to the device, bytes read back, and queue
//! submissions, counted by every [`GpuContext`](super::GpuContext) method that moves data
//! (`upload`, `uniform`, `write_buffer`, `readback`, batch submissions with their staging
//! copies and timestamp readbacks). GPU runs report it in their JSON `meta.transfers`.
//!
//! Code that uses `ctx.queue` or `ctx.device` directly bypasses the ledger; use the
//! context's methods (or its `count_*` helpers) instead.

use std::sync::atomic::{AtomicU64, Ordering};

/// Host-device traffic since the context was built or [`reset`](super::GpuContext::reset_transfers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Transfers {
    /// Bytes written to device buffers: buffers created with contents (data, uniforms)
    /// and `write_buffer` calls. The test-only output poisoning is not counted.
    pub upload_bytes: u64,
    /// Bytes copied into mappable staging buffers and read back (padded to 4 bytes, as
    /// copied), timestamp readbacks included.
    pub download_bytes: u64,
    /// Queue submissions.
    pub submissions: u64,
}

/// Field-wise sum (ledgers of several contexts or runs).
impl std::ops::Add for Transfers {
    type Output = Transfers;

    fn add(self, other: Transfers) -> Transfers {
        Transfers {
            upload_bytes: self.upload_bytes + other.upload_bytes,
            download_bytes: self.download_bytes + other.download_bytes,
            submissions: self.submissions + other.submissions,
        }
    }
}

impl std::ops::AddAssign for Transfers {
    fn add_assign(&mut self, other: Transfers) {
        *self = *self + other;
    }
}

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
