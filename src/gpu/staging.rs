//! Readback staging buffers, kept for the next readback.

/// Readback staging buffers kept between readbacks, so a stream of chunks does not create
/// (and the driver zero) a fresh mappable buffer per readback. Sizes are powers of two
/// (at least 256 bytes); a few buffers of at most [`StagingPool::MAX_BYTES`] are kept.
/// A buffer comes back only after a successful map and unmap.
#[derive(Default)]
pub(crate) struct StagingPool {
    free: std::sync::Mutex<Vec<wgpu::Buffer>>,
}

impl StagingPool {
    /// Buffers kept at most.
    const KEPT: usize = 8;
    /// The largest buffer kept.
    const MAX_BYTES: u64 = 1 << 26;

    /// The size of the buffer that serves a readback of `bytes` bytes.
    pub(crate) fn size_class(bytes: u64) -> u64 {
        bytes.max(256).next_power_of_two()
    }

    /// A kept buffer of exactly `size` bytes, if there is one.
    pub(crate) fn take(&self, size: u64) -> Option<wgpu::Buffer> {
        let mut free = self.free.lock().ok()?;
        let i = free.iter().position(|b| b.size() == size)?;
        Some(free.swap_remove(i))
    }

    /// Keeps `buf` (unmapped) for a later readback, unless the pool is full or it is large.
    pub(crate) fn give_back(&self, buf: wgpu::Buffer) {
        if buf.size() > Self::MAX_BYTES {
            return;
        }
        if let Ok(mut free) = self.free.lock() {
            if free.len() < Self::KEPT {
                free.push(buf);
            }
        }
    }
}
