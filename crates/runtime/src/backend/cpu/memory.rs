//! The CPU backend's memory: per-context activation buffers shared between the pool's threads,
//! the staged request, the scores, and the weights resolved (and packed) per op at load.
//!
//! Every op owns one `[max_batch, width]` activation buffer, allocated once per context, except
//! the inputs of an assembled concat ([`Placement`]), which write their columns of the concat's
//! buffer instead. Kernels on different streams read and write these buffers concurrently; that
//! is sound because a validated plan orders every reader after its writer (events give the
//! happens-before edge), no two ops write the same elements, and a context runs one request at
//! a time.

use std::sync::{Arc, Mutex};

use streamrec_kernels::cpu::PackedLinear;

use streamrec_graph::{OpGraph, OpId, OpKind};

use crate::backend::shared::{concat_slots, OpWeights, Placement};
use crate::batch::Batch;
use crate::error::{Result, RuntimeError};

/// A host-visible f32 buffer shared between pool threads (see the module docs for why the
/// unsynchronised access is sound). It is kept as a raw allocation, so that producers on
/// different threads can write disjoint columns of one buffer through views of their own.
pub(crate) struct SharedBuf {
    /// The first 64-byte aligned float of the allocation (kernels may stream whole cache lines
    /// into it).
    ptr: *mut f32,
    len: usize,
    /// The allocation: `ptr` lies at most 15 floats into it.
    alloc: *mut f32,
    alloc_len: usize,
}

// SAFETY: access is ordered by the plan's stream order and events (module docs); the buffer is
// never resized after creation.
unsafe impl Sync for SharedBuf {}
// SAFETY: the buffer owns its allocation of f32, which can move between threads.
unsafe impl Send for SharedBuf {}

/// Floats an activation buffer allocates beyond its length, to start on a 64-byte boundary.
const ALIGN_FLOATS: usize = 15;

impl SharedBuf {
    /// A buffer of `len` floats, poisoned with NaN so unwritten elements show; an allocation
    /// the machine cannot make is an error, not an abort.
    pub(super) fn new(len: usize) -> Result<Self> {
        let v =
            crate::weights::alloc_f32(len.saturating_add(ALIGN_FLOATS), f32::NAN).map_err(|e| {
                RuntimeError::Alloc {
                    what: format!("an activation buffer of {len} floats"),
                    reason: e.to_string(),
                    hint: "use a smaller batch",
                }
            })?;
        let b = v.into_boxed_slice();
        let alloc_len = b.len();
        let alloc = Box::into_raw(b).cast::<f32>();
        // f32 allocations are 4-byte aligned: at most 15 floats to the next 64-byte boundary.
        let skip = alloc.align_offset(64).min(ALIGN_FLOATS);
        Ok(Self {
            // SAFETY: `skip <= ALIGN_FLOATS` and the allocation holds `len + ALIGN_FLOATS`.
            ptr: unsafe { alloc.add(skip) },
            len,
            alloc,
            alloc_len,
        })
    }

    /// # Safety
    /// No other thread may write this buffer while the returned slice is alive.
    pub(crate) unsafe fn get(&self) -> &[f32] {
        // SAFETY: the allocation holds `len` floats; the caller guarantees no concurrent writer.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// # Safety
    /// No other thread may read or write this buffer while the returned slice is alive.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn get_mut(&self) -> &mut [f32] {
        // SAFETY: the allocation holds `len` floats; the caller guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// The `rows x cols` block at column `col` of this buffer read as rows of `ld` floats, as
    /// an output view (`None` if it does not fit in the buffer).
    ///
    /// # Safety
    /// No other thread may read or write the block's elements while the view is alive. Other
    /// threads may write other columns of the same rows meanwhile: the view's slice spans them,
    /// but a kernel writes only its `rows x cols` block (the contract of the CPU kernels).
    pub(crate) unsafe fn block_mut(
        &self,
        col: usize,
        rows: usize,
        cols: usize,
        ld: usize,
    ) -> Option<streamrec_kernels::MatMut<'_>> {
        let span = match rows {
            0 => 0,
            r => (r - 1).checked_mul(ld)?.checked_add(cols)?,
        };
        if cols > ld || col.checked_add(span)? > self.len {
            return None;
        }
        // SAFETY: `col + span <= len` keeps the slice inside the allocation; the caller
        // guarantees that no one else touches the block's elements.
        let data = unsafe { std::slice::from_raw_parts_mut(self.ptr.add(col), span) };
        Some(streamrec_kernels::MatMut::new(data, rows, cols, ld))
    }
}

impl Drop for SharedBuf {
    fn drop(&mut self) {
        // SAFETY: `alloc` and `alloc_len` came from `Box::into_raw` of a boxed slice in `new`,
        // and the buffer is dropped once.
        drop(unsafe {
            Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.alloc,
                self.alloc_len,
            ))
        });
    }
}

/// Per-context memory of the CPU backend.
pub struct CpuBuffers {
    pub(super) inner: Arc<BufInner>,
}

/// A context's buffers, shared with the streams that run its requests.
pub(crate) struct BufInner {
    /// One activation buffer per op (DCN layers carry their `[B, rank]` scratch after it).
    pub(crate) acts: Vec<SharedBuf>,
    /// The scores of the last download.
    pub(super) scores: SharedBuf,
    /// The staged request.
    pub(super) input: Mutex<Option<Arc<Batch>>>,
    pub(super) max_batch: usize,
}

/// Weights of the CPU backend, resolved per op once.
pub struct CpuWeights {
    pub(crate) by_op: Vec<OpWeights>,
    /// Each linear layer's weight and bias, packed once into the panels the kernels stream.
    pub(crate) packed: Vec<Option<PackedLinear>>,
    /// Per op: a linear layer folded into its feature's table (its lookup pools the projected
    /// table and writes the layer's output, bias and activation applied), see `super::fold`.
    pub(crate) folded: Vec<bool>,
    /// Per lookup op: the layers folded into its tables, as (table slot, layer op).
    pub(crate) fused: Vec<Vec<(usize, OpId)>>,
    /// The instruction set of the lookups' pooling loops.
    pub(crate) isa: streamrec_kernels::cpu::Isa,
    /// Where each op's output lives, and which concats copy nothing ([`Placement`]).
    pub(crate) place: Placement,
}

impl CpuBuffers {
    /// Buffers for every op of `graph` at up to `max_batch` samples.
    pub(super) fn alloc(graph: &OpGraph, max_batch: usize) -> Result<Self> {
        // An op written straight into its concat's buffer needs none of its own.
        let into = concat_slots(graph);
        let acts = graph
            .ops()
            .zip(&into)
            .map(|(op, into)| {
                if into.is_some() {
                    return SharedBuf::new(0);
                }
                let extra = match op.kind {
                    OpKind::DcnCross { rank, .. } => rank,
                    _ => 0,
                };
                let len = op
                    .width
                    .checked_add(extra)
                    .and_then(|w| w.checked_mul(max_batch))
                    .ok_or_else(|| RuntimeError::ActivationOverflow {
                        op: op.name.clone(),
                        batch: max_batch,
                        width: op.width.saturating_add(extra),
                    })?;
                SharedBuf::new(len)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(CpuBuffers {
            inner: Arc::new(BufInner {
                acts,
                scores: SharedBuf::new(max_batch)?,
                input: Mutex::new(None),
                max_batch,
            }),
        })
    }
}
