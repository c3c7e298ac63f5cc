//! One execution context's device memory: the activation arena, the metadata of its
//! concatenations and dot interactions, the input staging and the score staging; staging a
//! request into it and copying the scores out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use streamrec_graph::{OpGraph, OpId, OpKind, Source, TensorRef};
use streamrec_kernels::cuda::cudarc::driver::{CudaEvent, CudaSlice, CudaStream, PinnedHostSlice};
use streamrec_kernels::cuda::{concat_meta, dot_meta, ConcatPart, DevPtr, IndexWidth};

use super::arena::{ArenaLayout, Loc};
use super::capture::exclusive;
use super::device::{cuda_err, device_ptr, exec_err, f32_at, lock, Device};
use super::packet::{packet_words, stage_packet, InputStage};
use crate::batch::Batch;
use crate::error::{BatchError, Result, RuntimeError};

/// The pinned host copy of a context's scores.
struct ScoreStage {
    host: PinnedHostSlice<f32>,
    done: CudaEvent,
}

/// One execution context's device memory.
pub struct CudaBuffers {
    pub(super) max_batch: usize,
    pub(super) slots: usize,
    dense_width: usize,
    rows: Vec<usize>,
    pub(super) index: IndexWidth,
    arena: CudaSlice<f32>,
    pub(super) loc: Vec<Loc>,
    pub(super) scratch: Vec<DevPtr>,
    pub(super) concat: Vec<Option<(DevPtr, usize, usize)>>,
    pub(super) dot: Vec<Option<DevPtr>>,
    _meta: Vec<CudaSlice<i32>>,
    pub(super) dense_ptr: DevPtr,
    pub(super) packet_ptr: AtomicU64,
    /// Bumped whenever the packet moves; graphs remember the value they were captured with.
    pub(super) generation: Arc<AtomicU64>,
    input: Mutex<InputStage>,
    scores: Mutex<ScoreStage>,
    id: u64,
}

impl CudaBuffers {
    /// How many times the input packet has been reallocated (graphs captured before the last
    /// reallocation are stale).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current input-packet capacity in 32-bit words.
    pub fn packet_capacity_words(&self) -> usize {
        lock(&self.input).capacity
    }

    /// A unique id of these buffers within their backend.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub(super) fn input_loc(&self, graph: &OpGraph, t: &TensorRef) -> Result<(DevPtr, usize)> {
        match t.src {
            Source::Op(p) => {
                let l = self.loc[p];
                Ok((f32_at(l.ptr, t.col), l.ld))
            }
            Source::Dense => Ok((f32_at(self.dense_ptr, t.col), graph.spec.dense)),
            Source::Sparse(f) => Err(exec_err(format!(
                "sparse feature {f} cannot be read as a matrix"
            ))),
        }
    }

    /// Buffers for every op of `graph` at up to `max_batch` samples, numbered by `next_id`.
    pub(super) fn alloc(
        dev: &Device,
        graph: &OpGraph,
        max_batch: usize,
        next_id: &AtomicU64,
    ) -> Result<Self> {
        let _gate = exclusive();
        if max_batch == 0 {
            return Err(RuntimeError::Config {
                option: "max batch",
                reason: "must be > 0".into(),
            });
        }
        let n = graph.len();
        let spec = &graph.spec;
        let index = dev.index_width(graph)?;
        let lay = ArenaLayout::new(graph, max_batch, dev.cfg.alias_concat);
        let alias = &lay.alias;
        // The arena starts as NaN so that an element no kernel wrote poisons the scores.
        let arena = {
            let nan = vec![f32::NAN; lay.len.max(1)];
            dev.alloc.clone_htod(&nan).map_err(exec_err)?
        };
        let base = device_ptr(&arena, &dev.alloc);
        let loc: Vec<Loc> = (0..n)
            .map(|id| {
                let (o, ld) = lay.out[id];
                Loc {
                    ptr: f32_at(base, o),
                    ld,
                    arena: alias[id].is_none().then_some(o),
                }
            })
            .collect();
        let scratch = lay
            .scratch
            .iter()
            .map(|o| o.map_or(0, |o| f32_at(base, o)))
            .collect();

        // Input staging.
        let slots = spec.features.len();
        let indices: usize = spec
            .features
            .iter()
            .map(|f| max_batch * f.pooling.max(1) * dev.cfg.index_headroom.max(1))
            .sum();
        let words = packet_words(slots, max_batch, indices, index);
        let input = InputStage::alloc(dev, words, max_batch * spec.dense)?;
        let dense_ptr = device_ptr(&input.dense, &dev.alloc);
        let packet_ptr = device_ptr(&input.packet, &dev.alloc);
        let scores = ScoreStage {
            host: dev.pinned::<f32>(max_batch)?,
            done: dev.ctx.new_event(None).map_err(exec_err)?,
        };

        // Metadata of concatenations (non-aliased parts) and dot interactions.
        let view = |t: &TensorRef| -> Result<(DevPtr, usize)> {
            match t.src {
                Source::Op(p) => Ok((f32_at(loc[p].ptr, t.col), loc[p].ld)),
                Source::Dense => Ok((f32_at(dense_ptr, t.col), spec.dense)),
                Source::Sparse(f) => Err(exec_err(format!(
                    "sparse feature {f} cannot be read as a matrix"
                ))),
            }
        };
        let mut metas = Vec::new();
        let mut concat = vec![None; n];
        let mut dot = vec![None; n];
        for (id, op) in graph.ops().enumerate() {
            match op.kind {
                OpKind::Concat => {
                    let mut parts = Vec::new();
                    let mut col = 0;
                    for t in &op.inputs {
                        let aliased = matches!(t.src, Source::Op(p) if alias[p].is_some_and(|(c, _)| c == id));
                        if !aliased {
                            let (src, src_ld) = view(t)?;
                            parts.push(ConcatPart {
                                src,
                                src_ld,
                                width: t.width,
                                out_col: col,
                            });
                        }
                        col += t.width;
                    }
                    if col != op.width {
                        return Err(exec_err(format!(
                            "op `{}`: inputs are {col} wide, output {}",
                            op.name, op.width
                        )));
                    }
                    if !parts.is_empty() {
                        let max_w = parts.iter().map(|p| p.width).max().unwrap_or(0);
                        let m = dev.upload_meta(&concat_meta(&parts).map_err(cuda_err)?)?;
                        concat[id] = Some((device_ptr(&m, &dev.alloc), parts.len(), max_w));
                        metas.push(m);
                    }
                }
                OpKind::DotInteraction => {
                    let d = op.inputs.first().map_or(0, |t| t.width);
                    let k = op.inputs.len();
                    if k == 0
                        || op.inputs.iter().any(|t| t.width != d)
                        || op.width != d + k * (k - 1) / 2
                    {
                        return Err(exec_err(format!(
                            "op `{}`: dot interaction shapes disagree",
                            op.name
                        )));
                    }
                    let ins = op.inputs.iter().map(view).collect::<Result<Vec<_>>>()?;
                    let m = dev.upload_meta(&dot_meta(&ins).map_err(cuda_err)?)?;
                    dot[id] = Some(device_ptr(&m, &dev.alloc));
                    metas.push(m);
                }
                _ => {}
            }
        }
        dev.alloc.synchronize().map_err(exec_err)?;
        Ok(Self {
            max_batch,
            slots,
            dense_width: spec.dense,
            rows: spec.features.iter().map(|f| f.rows).collect(),
            index,
            arena,
            loc,
            scratch,
            concat,
            dot,
            _meta: metas,
            dense_ptr,
            packet_ptr: AtomicU64::new(packet_ptr),
            generation: Arc::new(AtomicU64::new(0)),
            input: Mutex::new(input),
            scores: Mutex::new(scores),
            id: next_id.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Stages `batch` into the input packet and the dense rows, copied on `stream` (the packet
    /// grows, with a new generation, when the batch has more indices than it holds).
    pub(super) fn stage(
        &self,
        dev: &Device,
        stream: &Arc<CudaStream>,
        batch: &Batch,
    ) -> Result<()> {
        let n = batch.size;
        if n > self.max_batch {
            return Err(RuntimeError::BatchTooLarge {
                batch: n,
                max: self.max_batch,
            });
        }
        if batch.dense.len() != n * self.dense_width {
            return Err(BatchError::DenseCount {
                expected: n * self.dense_width,
                size: n,
                width: self.dense_width,
                got: batch.dense.len(),
            }
            .into());
        }
        let mut st = lock(&self.input);
        // The previous request's copies out of the staging must be done before rewriting it.
        st.done.synchronize().map_err(exec_err)?;
        let words = {
            let host = st.host.as_mut_slice().map_err(exec_err)?;
            stage_packet(batch, &self.rows, self.index, host)?
        };
        let words = match words {
            Some(w) => w,
            None => {
                // Grow the packet (and its staging) to what this batch needs, at least doubling.
                let total: usize = batch.sparse.iter().map(|s| s.indices.len()).sum();
                let need = packet_words(self.slots, self.max_batch, total, self.index);
                let cap = need.max(st.capacity * 2);
                let _gate = exclusive();
                st.packet = dev.zeros::<i32>(cap)?;
                st.host = dev.pinned::<i32>(cap)?;
                st.capacity = cap;
                dev.alloc.synchronize().map_err(exec_err)?;
                self.packet_ptr
                    .store(device_ptr(&st.packet, &dev.alloc), Ordering::Release);
                self.generation.fetch_add(1, Ordering::AcqRel);
                let host = st.host.as_mut_slice().map_err(exec_err)?;
                stage_packet(batch, &self.rows, self.index, host)?
                    .ok_or_else(|| exec_err("the grown input packet is still too small"))?
            }
        };
        let dl = batch.dense.len();
        let st = &mut *st;
        st.dense_host.as_mut_slice().map_err(exec_err)?[..dl].copy_from_slice(&batch.dense);
        let s = stream;
        if dl > 0 {
            let src = &st.dense_host.as_slice().map_err(exec_err)?[..dl];
            s.memcpy_htod(src, &mut st.dense.slice_mut(..dl))
                .map_err(exec_err)?;
        }
        let src = &st.host.as_slice().map_err(exec_err)?[..words];
        s.memcpy_htod(src, &mut st.packet.slice_mut(..words))
            .map_err(exec_err)?;
        st.done.record(s).map_err(exec_err)?;
        Ok(())
    }

    /// Copies op `op`'s `[batch, 1]` output to the score staging on `stream`.
    pub(super) fn download(&self, stream: &Arc<CudaStream>, op: OpId, batch: usize) -> Result<()> {
        if batch > self.max_batch {
            return Err(RuntimeError::BatchTooLarge {
                batch,
                max: self.max_batch,
            });
        }
        let l = self.loc[op];
        let o = match l.arena {
            Some(o) if l.ld == 1 => o,
            _ => {
                return Err(exec_err(format!(
                    "op {op} is not a contiguous [batch, 1] output and cannot be downloaded"
                )))
            }
        };
        // scores() reads the staging under the same lock, after waiting for `done`.
        let mut sc = lock(&self.scores);
        let sc = &mut *sc;
        let dst = &mut sc.host.as_mut_slice().map_err(exec_err)?[..batch];
        let s = stream;
        s.memcpy_dtoh(&self.arena.slice(o..o + batch), dst)
            .map_err(exec_err)?;
        sc.done.record(s).map_err(exec_err)
    }

    /// The scores of the last download, once its copy has completed.
    pub(super) fn scores(&self, batch: usize) -> Result<Vec<f32>> {
        if batch > self.max_batch {
            return Err(RuntimeError::BatchTooLarge {
                batch,
                max: self.max_batch,
            });
        }
        let sc = lock(&self.scores);
        sc.done.synchronize().map_err(exec_err)?;
        Ok(sc.host.as_slice().map_err(exec_err)?[..batch].to_vec())
    }
}
