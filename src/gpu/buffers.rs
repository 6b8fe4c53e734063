//! Buffers and submissions: upload, readback, 2-D dispatch past 65535 workgroups,
//! timestamp queries, and waiting on the exact submission. Every upload, readback and
//! submission here is counted in the context's transfer ledger (`gpu::ledger`).

use std::sync::mpsc;

use wgpu::util::DeviceExt;

use super::context::{Fault, GpuContext};
use crate::error::{Error, Result};
use crate::kernel::WG;

/// Splits `groups` workgroups into an `(x, y)` grid within the per-dimension limit.
/// Shaders rebuild the linear id as `wid.x + wid.y * nwg.x` (`group_id` in
/// shaders/common.wgsl) and return at once for ids past the end: the `x * y - groups`
/// padding workgroups of the last row write nothing (tests/gpu_grid.rs).
pub fn grid(groups: u64, max_per_dim: u32) -> Result<(u32, u32)> {
    if groups == 0 {
        return Ok((0, 0));
    }
    let max = max_per_dim as u64;
    let x = groups.min(max);
    let y = groups.div_ceil(x);
    if y > max {
        return Err(Error::Invalid(format!(
            "{groups} workgroups exceed a {max}x{max} grid: chunk the input"
        )));
    }
    Ok((x as u32, y as u32))
}

/// Number of `WG`-wide workgroups covering `n` items. Keep in sync with `groups_of` in
/// shaders/common.wgsl (the shaders' padding-workgroup guard).
pub fn groups_for(n: u64) -> u64 {
    n.div_ceil(WG as u64)
}

impl GpuContext {
    fn oom_fault(&self, what: &str) -> Result<()> {
        if self.take_fault(&[Fault::OutOfMemory]).is_some() {
            return Err(Error::GpuOutOfMemory(format!(
                "injected fault allocating {what}"
            )));
        }
        Ok(())
    }

    /// A storage buffer holding `data` (STORAGE | COPY_SRC | COPY_DST).
    pub fn upload<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> Result<wgpu::Buffer> {
        self.oom_fault(label)?;
        // wgpu rejects zero-sized bindings; keep one element so empty inputs still bind.
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let buf = if bytes.is_empty() {
            self.storage(label, 4)?
        } else {
            self.count_upload(bytes.len() as u64);
            self.device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents: bytes,
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                })
        };
        self.check()?;
        Ok(buf)
    }

    /// An output storage buffer of `bytes` bytes (rounded up to 4). Its initial contents
    /// are unspecified to callers: wgpu zeroes it, and tests poison it
    /// ([`GpuOptions::poison_outputs`](super::GpuOptions)), so kernels must write every
    /// element they hand back. Accumulators that need zeros use [`Self::zeroed`].
    pub fn storage(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer> {
        self.make_storage(label, bytes, self.poisons_outputs())
    }

    /// A storage buffer of `bytes` bytes that starts at zero (accumulators that kernels
    /// add into); never poisoned.
    pub fn zeroed(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer> {
        self.make_storage(label, bytes, false)
    }

    fn make_storage(&self, label: &str, bytes: u64, poison: bool) -> Result<wgpu::Buffer> {
        self.oom_fault(label)?;
        let size = bytes.max(4).div_ceil(4) * 4;
        if size > self.limits().max_buffer_bytes {
            return Err(Error::GpuOutOfMemory(format!(
                "{label}: {size} bytes exceed the device's max buffer size {}",
                self.limits().max_buffer_bytes
            )));
        }
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: poison,
        });
        if poison {
            // Written through the creation mapping, not the queue: a test aid, outside the
            // transfer ledger.
            let words: Vec<u32> = (0..size / 4).map(poison_word).collect();
            buf.slice(..)
                .get_mapped_range_mut()
                .map_err(|e| Error::Gpu(format!("{label}: mapping at creation: {e}")))?
                .copy_from_slice(bytemuck::cast_slice(&words));
            buf.unmap();
        }
        self.check()?;
        Ok(buf)
    }

    /// Writes `data` into `buf` at byte `offset` through the queue (counted as upload).
    pub fn write_buffer<T: bytemuck::Pod>(&self, buf: &wgpu::Buffer, offset: u64, data: &[T]) {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        self.count_upload(bytes.len() as u64);
        self.queue.write_buffer(buf, offset, bytes);
    }

    /// A uniform buffer holding one params struct.
    pub fn uniform<T: bytemuck::Pod>(&self, label: &str, value: &T) -> wgpu::Buffer {
        self.count_upload(std::mem::size_of::<T>() as u64);
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::bytes_of(value),
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }

    /// Reads `len` elements of `T` starting at element `offset` of `buf` back to the host.
    pub fn readback<T: bytemuck::Pod>(
        &self,
        buf: &wgpu::Buffer,
        offset: u64,
        len: usize,
    ) -> Result<Vec<T>> {
        let size = (len * std::mem::size_of::<T>()) as u64;
        if size == 0 {
            return Ok(Vec::new());
        }
        let elem = std::mem::size_of::<T>() as u64;
        let staging = self.staging_buffer(size.div_ceil(4) * 4);
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("readback"),
            });
        enc.copy_buffer_to_buffer(buf, offset * elem, &staging, 0, size.div_ceil(4) * 4);
        self.count_download(size.div_ceil(4) * 4);
        self.count_submission();
        let idx = self.queue.submit(Some(enc.finish()));
        let out = self.map_and_read(&staging, idx, len)?;
        self.staging.give_back(staging);
        Ok(out)
    }

    /// A mappable buffer of at least `bytes` bytes to copy a readback into: one kept from
    /// an earlier readback of the same size class, or a new one.
    pub(crate) fn staging_buffer(&self, bytes: u64) -> wgpu::Buffer {
        let size = super::staging::StagingPool::size_class(bytes);
        self.staging.take(size).unwrap_or_else(|| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })
    }

    /// Maps `staging` after submission `idx` completes and copies `len` elements out.
    pub(crate) fn map_and_read<T: bytemuck::Pod>(
        &self,
        staging: &wgpu::Buffer,
        idx: wgpu::SubmissionIndex,
        len: usize,
    ) -> Result<Vec<T>> {
        let (tx, rx) = mpsc::channel();
        let slice = staging.slice(..);
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait(idx)?;
        let mapped = rx
            .recv()
            .map_err(|_| Error::Gpu("map callback never ran".into()))?;
        if self.take_fault(&[Fault::MapFailure]).is_some() {
            staging.unmap();
            return Err(Error::Gpu("injected fault: buffer map failed".into()));
        }
        mapped.map_err(|e| Error::Gpu(format!("buffer map failed: {e}")))?;
        let out = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| Error::Gpu(format!("mapped range: {e}")))?;
            let bytes = &view[..len * std::mem::size_of::<T>()];
            // The staging buffer is 4-aligned but T may need more; copy through pod_collect.
            bytemuck::pod_collect_to_vec::<u8, T>(bytes)
        };
        staging.unmap();
        Ok(out)
    }

    /// Blocks until submission `idx` has finished (no busy loop: the driver waits).
    pub(crate) fn wait(&self, idx: wgpu::SubmissionIndex) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(idx),
                timeout: None,
            })
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        self.check()
    }

    /// Starts a batch of dispatches recorded into one command buffer.
    pub(crate) fn batch(&self, label: &str) -> Batch<'_> {
        Batch {
            ctx: self,
            encoder: self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) }),
            queries: None,
            used_queries: 0,
            timed: Vec::new(),
        }
    }
}

/// Timestamp pairs one batch can record.
const MAX_TIMED_PASSES: u32 = 512;

/// Dispatches recorded into one command encoder and submitted together.
pub(crate) struct Batch<'a> {
    ctx: &'a GpuContext,
    encoder: wgpu::CommandEncoder,
    queries: Option<wgpu::QuerySet>,
    used_queries: u32,
    /// Shader of each timed pass, in query order.
    timed: Vec<Option<&'static str>>,
}

impl<'a> Batch<'a> {
    /// Records one dispatch of `pipeline` over `groups` workgroups (any count: the grid
    /// goes 2-D past the per-dimension limit). One pass per dispatch: passes order
    /// dependent dispatches and give each its own timestamps.
    pub fn dispatch(
        &mut self,
        pipeline: &wgpu::ComputePipeline,
        entries: &[wgpu::BindingResource<'_>],
        groups: u64,
    ) -> Result<()> {
        if groups == 0 {
            return Ok(());
        }
        let (x, y) = grid(groups, self.ctx.limits().max_workgroups_per_dim)?;
        let layout = pipeline.get_bind_group_layout(0);
        let bind_entries: Vec<wgpu::BindGroupEntry<'_>> = entries
            .iter()
            .enumerate()
            .map(|(i, r)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: r.clone(),
            })
            .collect();
        let bind = self
            .ctx
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &layout,
                entries: &bind_entries,
            });
        if self.ctx.timestamps_enabled() && self.queries.is_none() {
            self.queries = Some(self.ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * MAX_TIMED_PASSES,
            }));
        }
        let timestamp_writes = match &self.queries {
            Some(q) if self.used_queries < MAX_TIMED_PASSES => {
                let i = self.used_queries;
                self.used_queries += 1;
                self.timed.push(self.ctx.pipeline_name(pipeline));
                Some(wgpu::ComputePassTimestampWrites {
                    query_set: q,
                    beginning_of_pass_write_index: Some(2 * i),
                    end_of_pass_write_index: Some(2 * i + 1),
                })
            }
            _ => None,
        };
        let mut pass = self
            .encoder
            .begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes,
            });
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(x, y, 1);
        Ok(())
    }

    /// Records zeroing `buf` (after the dispatches recorded so far): an accumulator
    /// reused across dispatches instead of a fresh buffer each time.
    pub fn clear(&mut self, buf: &wgpu::Buffer) {
        self.encoder.clear_buffer(buf, 0, None);
    }

    /// Records a device-side copy of `bytes` bytes (after the dispatches recorded so far).
    pub fn copy(&mut self, src: &wgpu::Buffer, src_offset: u64, dst: &wgpu::Buffer, bytes: u64) {
        self.encoder
            .copy_buffer_to_buffer(src, src_offset, dst, 0, bytes);
    }

    /// Submits and waits for exactly this submission; records kernel time if timed.
    pub fn submit(self) -> Result<()> {
        self.submit_then_read::<u8>(None).map(|_| ())
    }

    /// Submits, waits, and reads `len` elements of `T` from `src` starting at byte `offset`.
    pub fn submit_and_read<T: bytemuck::Pod>(
        self,
        src: &wgpu::Buffer,
        offset: u64,
        len: usize,
    ) -> Result<Vec<T>> {
        self.submit_then_read(Some((src, offset, len)))
    }

    fn submit_then_read<T: bytemuck::Pod>(
        mut self,
        read: Option<(&wgpu::Buffer, u64, usize)>,
    ) -> Result<Vec<T>> {
        let ctx = self.ctx;
        // Readback staging is recorded in the same command buffer: one submit, one wait.
        let staging = match read {
            Some((src, offset, len)) if len > 0 => {
                let bytes = (len * std::mem::size_of::<T>()) as u64;
                let padded = bytes.div_ceil(4) * 4;
                let staging = ctx.staging_buffer(padded);
                self.encoder
                    .copy_buffer_to_buffer(src, offset, &staging, 0, padded);
                ctx.count_download(padded);
                Some((staging, len))
            }
            _ => None,
        };
        let timing = match &self.queries {
            Some(q) if self.used_queries > 0 => {
                let n = 2 * self.used_queries;
                let resolve = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("timestamps"),
                    size: n as u64 * 8,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                });
                let read = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("timestamps-read"),
                    size: n as u64 * 8,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                self.encoder.resolve_query_set(q, 0..n, &resolve, 0);
                self.encoder
                    .copy_buffer_to_buffer(&resolve, 0, &read, 0, n as u64 * 8);
                ctx.count_download(n as u64 * 8);
                Some((read, n as usize))
            }
            _ => None,
        };
        ctx.count_submission();
        let idx = ctx.queue.submit(Some(self.encoder.finish()));
        let out = match staging {
            Some((staging, len)) => {
                let out = ctx.map_and_read::<T>(&staging, idx.clone(), len)?;
                ctx.staging.give_back(staging);
                out
            }
            None => {
                ctx.wait(idx.clone())?;
                Vec::new()
            }
        };
        if let Some((read, n)) = timing {
            let stamps: Vec<u64> = ctx.map_and_read(&read, idx, n)?;
            let period = ctx.queue.get_timestamp_period() as f64;
            for (pair, name) in stamps.chunks_exact(2).zip(&self.timed) {
                let ticks = pair[1].saturating_sub(pair[0]);
                ctx.add_kernel_ns(*name, (ticks as f64 * period) as u64);
            }
        }
        Ok(out)
    }
}

/// The poison of word `i` of a fresh output buffer ([`GpuOptions::poison_outputs`](super::GpuOptions)):
/// even words are quiet NaNs with a payload (also huge as u32 counts), odd words are noise
/// (splitmix64 of the index), so a stray read of either is visible in f32 and u32 outputs.
pub fn poison_word(i: u64) -> u32 {
    if i.is_multiple_of(2) {
        0x7fc0_0000 | (i as u32 & 0x3f_ffff) | 1
    } else {
        let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as u32
    }
}

/// A prediction set resident on the device: logits and labels in row chunks that each
/// fit one storage binding. Uploaded once, reused by every pass (the temperature fit makes
/// several).
pub struct DeviceRows {
    /// Classes per row.
    pub k: usize,
    /// Total rows.
    pub n: usize,
    /// `(first row, rows, logits buffer, labels buffer)` per chunk.
    pub chunks: Vec<(usize, usize, wgpu::Buffer, wgpu::Buffer)>,
    /// The last slot ids uploaded for these rows (one buffer per chunk): both modes'
    /// tallies and the bootstrap number a chunk's slots alike (first appearance in the
    /// chunk), so they upload them once.
    slot_ids: std::sync::Mutex<Option<(Vec<u32>, Vec<wgpu::Buffer>)>>,
}

impl DeviceRows {
    /// Rows already on the device: `(first row, rows, logits, labels)` per chunk.
    pub fn from_chunks(
        k: usize,
        n: usize,
        chunks: Vec<(usize, usize, wgpu::Buffer, wgpu::Buffer)>,
    ) -> Self {
        DeviceRows {
            k,
            n,
            chunks,
            slot_ids: Default::default(),
        }
    }

    /// The device buffers of slot ids `ids` (one per row), one per chunk: the ones
    /// uploaded by the last pass when the ids are the same, else uploaded now.
    pub(crate) fn slot_buffers(
        &self,
        ctx: &GpuContext,
        label: &str,
        ids: &[u32],
    ) -> Result<Vec<wgpu::Buffer>> {
        let mut cached = self
            .slot_ids
            .lock()
            .map_err(|_| Error::Gpu("slot id cache poisoned".into()))?;
        if let Some((known, buffers)) = cached.as_ref() {
            if known.as_slice() == ids {
                return Ok(buffers.clone());
            }
        }
        let buffers = self
            .chunks
            .iter()
            .map(|(start, n, _, _)| ctx.upload(label, &ids[*start..*start + *n]))
            .collect::<Result<Vec<_>>>()?;
        *cached = Some((ids.to_vec(), buffers.clone()));
        Ok(buffers)
    }
}

impl GpuContext {
    /// Rows per chunk so that `row_bytes * rows` fits one binding (and 2^32 indices).
    pub fn rows_per_chunk(&self, row_bytes: u64) -> Result<usize> {
        let max = self.limits().max_binding_bytes.min(u32::MAX as u64);
        let rows = max / row_bytes.max(1);
        if rows == 0 {
            return Err(Error::Invalid(format!(
                "one row of {row_bytes} bytes exceeds the {max}-byte storage binding limit"
            )));
        }
        Ok(rows as usize)
    }

    /// Uploads `logits` (`n * k`, row-major) and `labels` (`n` entries, -1 = unknown, or
    /// empty for all unknown) in binding-sized chunks.
    pub fn upload_rows(&self, logits: &[f32], labels: &[i32], k: usize) -> Result<DeviceRows> {
        let n = logits.len() / k.max(1);
        // Chunks also bound the per-row outputs of later passes (row_stats writes up to
        // 16 + 128 bytes per row), so those fit one binding too.
        let per = self.rows_per_chunk((4 * k as u64).max(128))?;
        let mut chunks = Vec::new();
        let mut start = 0;
        while start < n {
            let rows = per.min(n - start);
            let l = self.upload("logits", &logits[start * k..(start + rows) * k])?;
            let y = if labels.is_empty() {
                self.upload("labels", &vec![-1i32; rows])?
            } else {
                self.upload("labels", &labels[start..start + rows])?
            };
            chunks.push((start, rows, l, y));
            start += rows;
        }
        Ok(DeviceRows::from_chunks(k, n, chunks))
    }
}
