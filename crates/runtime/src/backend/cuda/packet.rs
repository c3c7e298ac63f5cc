//! Input staging: the packet of one request's sparse inputs as the lookup kernels read it
//! (sample count, every feature's offsets, all indices, checked on the way), and the pinned
//! staging and device buffers a context copies it and the dense rows through.

use streamrec_kernels::cuda::cudarc::driver::{CudaEvent, CudaSlice, PinnedHostSlice};
use streamrec_kernels::cuda::{IndexWidth, PACKET_HEADER_WORDS};

use super::device::{exec_err, Device};
use crate::batch::{Batch, IndexVec};
use crate::error::{BatchError, Result, RuntimeError};

/// Input staging of one context (guarded by a mutex; its device addresses are mirrored in
/// atomics for the launches).
pub(super) struct InputStage {
    pub(super) packet: CudaSlice<i32>,
    pub(super) host: PinnedHostSlice<i32>,
    pub(super) dense: CudaSlice<f32>,
    pub(super) dense_host: PinnedHostSlice<f32>,
    /// Packet capacity in 32-bit words.
    pub(super) capacity: usize,
    /// Recorded after the copies out of the pinned staging; waited on before rewriting it.
    pub(super) done: CudaEvent,
}

impl InputStage {
    /// Staging for a packet of `words` 32-bit words and `dense_len` dense values.
    pub(super) fn alloc(dev: &Device, words: usize, dense_len: usize) -> Result<Self> {
        Ok(InputStage {
            packet: dev.zeros::<i32>(words)?,
            host: dev.pinned::<i32>(words)?,
            dense: dev.zeros::<f32>(dense_len)?,
            dense_host: dev.pinned::<f32>(dense_len)?,
            capacity: words,
            done: dev.ctx.new_event(None).map_err(exec_err)?,
        })
    }
}

/// The input-packet capacity in 32-bit words for `indices` indices.
pub(super) fn packet_words(
    slots: usize,
    max_batch: usize,
    indices: usize,
    index: IndexWidth,
) -> usize {
    let head = PACKET_HEADER_WORDS + (max_batch + 1) * slots;
    head + 2 + indices * index.bytes() / 4
}

/// Lays out the input packet of `batch` (see `crates/kernels/kernels/embedding.cu`) into `out`
/// and returns the number of 32-bit words used: word 0 = the sample count `n`, offsets
/// sample-major from word [`PACKET_HEADER_WORDS`] (`(n + 1) x slots` of them, each an element
/// position in the packet viewed as an array of the index type), then the indices of all
/// features packed from an 8-byte boundary. Checks every offset and index on the way (`rows[f]`
/// per feature), so no kernel ever reads out of bounds. Returns `Ok(None)` when `out` is too
/// short.
pub fn stage_packet(
    batch: &Batch,
    rows: &[usize],
    index: IndexWidth,
    out: &mut [i32],
) -> Result<Option<usize>> {
    let n = batch.size;
    let slots = batch.sparse.len();
    if slots != rows.len() {
        return Err(BatchError::FeatureCount {
            expected: rows.len(),
            got: slots,
        }
        .into());
    }
    let head = PACKET_HEADER_WORDS + (n + 1) * slots;
    let idx_start = head.div_ceil(2) * 2;
    let per = index.bytes() / 4;
    let total: usize = batch.sparse.iter().map(|s| s.indices.len()).sum();
    let words = idx_start + total * per;
    if words > i32::MAX as usize {
        return Err(BatchError::PacketOverflow { indices: total }.into());
    }
    if words > out.len() {
        return Ok(None);
    }
    // Element position of the first index, in units of the index type.
    let base = idx_start / per;
    out[0] = n as i32;
    out[1..PACKET_HEADER_WORDS].fill(0);
    // Offsets, written in packet order (sample-major).
    let mut starts = Vec::with_capacity(slots);
    let mut acc = 0usize;
    for (f, s) in batch.sparse.iter().enumerate() {
        if s.offsets.len() != n {
            return Err(BatchError::OffsetCount {
                feature: f,
                expected: n,
                got: s.offsets.len(),
            }
            .into());
        }
        starts.push(base + acc);
        acc += s.indices.len();
    }
    let offs = &mut out[PACKET_HEADER_WORDS..head];
    let mut prev = vec![0i64; slots];
    for b in 0..=n {
        for (f, s) in batch.sparse.iter().enumerate() {
            let len = s.indices.len() as i64;
            let o = if b < n { s.offsets.get(b) } else { len };
            if (b == 0 && o != 0) || o < prev[f] || o > len {
                return Err(BatchError::OffsetOrder {
                    feature: f,
                    offset: o,
                    position: b,
                    len,
                }
                .into());
            }
            prev[f] = o;
            offs[b * slots + f] = (starts[f] + o as usize) as i32;
        }
    }
    out[head..idx_start].fill(0);
    // Indices, feature by feature into disjoint parts of the packet (in parallel for large
    // batches), converted and range-checked in one pass.
    let mut rest = &mut out[idx_start..words];
    let mut jobs = Vec::with_capacity(slots);
    for (f, s) in batch.sparse.iter().enumerate() {
        let (dst, r) = std::mem::take(&mut rest).split_at_mut(s.indices.len() * per);
        rest = r;
        jobs.push((f, &s.indices, dst));
    }
    let run = |(f, idx, dst): (usize, &IndexVec, &mut [i32])| {
        if stage_indices(idx, rows[f] as u64, index, dst) {
            Ok(())
        } else {
            let bad = (0..idx.len())
                .map(|i| idx.get(i))
                .find(|&v| v < 0 || v >= rows[f] as i64)
                .unwrap_or(-1);
            Err(RuntimeError::from(BatchError::IndexRange {
                feature: f,
                index: bad,
                rows: rows[f],
            }))
        }
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(slots);
    if total < PARALLEL_STAGING || threads < 2 {
        jobs.into_iter().try_for_each(run)?;
    } else {
        let mut groups: Vec<Vec<_>> = (0..threads).map(|_| Vec::new()).collect();
        for (i, j) in jobs.into_iter().enumerate() {
            groups[i % threads].push(j);
        }
        std::thread::scope(|sc| {
            let handles: Vec<_> = groups
                .into_iter()
                .map(|g| sc.spawn(move || g.into_iter().try_for_each(run)))
                .collect();
            handles.into_iter().try_for_each(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(exec_err("index staging thread panicked")))
            })
        })?;
    }
    Ok(Some(words))
}

/// Indices at which [`stage_packet`] splits the index copy over threads.
const PARALLEL_STAGING: usize = 1 << 19;

/// Writes `idx` into `dst` as `index` words and returns whether every index is in
/// `0..rows` (one branch-free pass).
fn stage_indices(idx: &IndexVec, rows: u64, index: IndexWidth, dst: &mut [i32]) -> bool {
    let mut ok = true;
    match (idx, index) {
        (IndexVec::I32(v), IndexWidth::I32) => {
            for (d, &x) in dst.iter_mut().zip(v) {
                ok &= (i64::from(x) as u64) < rows;
                *d = x;
            }
        }
        (IndexVec::I64(v), IndexWidth::I32) => {
            for (d, &x) in dst.iter_mut().zip(v) {
                ok &= (x as u64) < rows;
                *d = x as i32;
            }
        }
        (IndexVec::I32(v), IndexWidth::I64) => {
            for (d, &x) in dst.chunks_exact_mut(2).zip(v) {
                ok &= (i64::from(x) as u64) < rows;
                d[0] = x;
                d[1] = if x < 0 { -1 } else { 0 };
            }
        }
        (IndexVec::I64(v), IndexWidth::I64) => {
            for (d, &x) in dst.chunks_exact_mut(2).zip(v) {
                ok &= (x as u64) < rows;
                d[0] = x as u64 as u32 as i32;
                d[1] = ((x as u64) >> 32) as u32 as i32;
            }
        }
    }
    ok
}
