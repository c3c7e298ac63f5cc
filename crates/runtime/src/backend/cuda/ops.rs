//! Op launches on a CUDA stream: one function per op kind (lookups, table-batched lookups,
//! linear layers, concatenations, dot interactions, DCN cross layers), the checks and the span
//! around each launch, and the count of kernel launches and library calls each one issues.

use std::sync::atomic::Ordering;

use streamrec_graph::{Op, OpGraph, OpId, OpKind};
use streamrec_kernels::cuda::{
    self as kc, CudaKernels, DevPtr, EmbeddingBagArgs, FusedEpilogue, TbeArgs,
};
use streamrec_kernels::Activation;

use super::arena::Loc;
use super::buffers::CudaBuffers;
use super::capture::{capturing, note_buffers};
use super::device::{cuda_err, exec_err, lock, Device};
use super::stream::CudaStreamHandle;
use super::weights::{CudaWeights, OpW};
use crate::backend::SpanKind;
use crate::error::{Result, RuntimeError};

/// Enqueues op `op_id` on `stream` for `batch` samples (see
/// [`Backend::launch`](crate::backend::Backend::launch)): remembers the buffers a capture in
/// progress reads, times the launch when tracing (eagerly), and counts its calls.
pub(super) fn launch(
    dev: &Device,
    stream: &CudaStreamHandle,
    graph: &OpGraph,
    op_id: OpId,
    weights: &CudaWeights,
    bufs: &CudaBuffers,
    batch: usize,
) -> Result<()> {
    if batch > bufs.max_batch {
        return Err(RuntimeError::BatchTooLarge {
            batch,
            max: bufs.max_batch,
        });
    }
    let capture = capturing();
    if capture {
        // Remember which buffers (and which packet) this graph reads.
        note_buffers(&bufs.generation);
    }
    let trace = !capture && stream.tracing();
    let start = stream.span_start(dev, trace)?;
    if op_id >= graph.len() || op_id >= weights.ops.len() || op_id >= bufs.loc.len() {
        return Err(exec_err(format!(
            "op {op_id} is not in the graph the weights and buffers were made for"
        )));
    }
    let op = graph.op(op_id);
    let l = Launch {
        k: &dev.kernels,
        stream,
        graph,
        id: op_id,
        op,
        bufs,
        out: bufs.loc[op_id],
        batch,
    };
    match (&op.kind, weights.ops[op_id]) {
        (
            OpKind::EmbeddingBag { feature },
            OpW::Table {
                table,
                dim,
                vec,
                mean,
            },
        ) => embedding_bag(&l, *feature, table, dim, vec, mean)?,
        (
            OpKind::TableBatchedEmbeddingBag { .. },
            OpW::Tbe {
                meta,
                tables,
                max_lanes,
            },
        ) => table_batched(&l, meta, tables, max_lanes)?,
        (OpKind::Linear { .. }, OpW::Linear { weight, bias, act }) => {
            linear(&l, weight, bias, act)?
        }
        (OpKind::Concat, _) => concat(&l)?,
        (OpKind::DotInteraction, _) => dot_interaction(&l)?,
        (OpKind::DcnCross { rank, .. }, OpW::Cross { v, u, bias }) => {
            dcn_cross(&l, *rank, v, u, bias)?
        }
        (OpKind::Synthetic { .. }, _) => {
            return Err(exec_err(format!(
                "op `{}` is synthetic and has no CUDA kernel",
                op.name
            )))
        }
        _ => {
            return Err(exec_err(format!(
                "op `{}` has weights of the wrong kind",
                op.name
            )))
        }
    }
    let calls = calls_of(stream, graph, op_id, weights.ops[op_id], bufs, batch);
    stream.launches.fetch_add(calls, Ordering::Relaxed);
    stream.span_end(dev, SpanKind::Op(op_id), start)
}

/// What every op's launch reads: the kernels, the stream, the op and where its output lives.
struct Launch<'a> {
    k: &'a CudaKernels,
    stream: &'a CudaStreamHandle,
    graph: &'a OpGraph,
    id: OpId,
    op: &'a Op,
    bufs: &'a CudaBuffers,
    /// Where the op's output lives.
    out: Loc,
    batch: usize,
}

/// An embedding-bag lookup of one feature's table.
fn embedding_bag(
    l: &Launch<'_>,
    feature: usize,
    table: DevPtr,
    dim: usize,
    vec: bool,
    mean: bool,
) -> Result<()> {
    let a = EmbeddingBagArgs {
        table,
        dim,
        vec,
        packet: l.bufs.packet_ptr.load(Ordering::Acquire),
        slots: l.bufs.slots,
        slot: feature,
        batch: l.batch,
        mean,
        out: l.out.ptr,
        out_ld: l.out.ld,
        index: l.bufs.index,
    };
    // SAFETY: the table is a live `[rows, dim]` region of the weights (16-byte aligned when
    // `vec`); the packet is either zeroed (no sample staged yet: every bag is empty) or was
    // staged by `upload` with `slots` slots and range-checked indices of type `bufs.index`;
    // `out` is this op's `[max_batch, dim]` output (or its slice of a concatenation) and
    // `batch <= max_batch`.
    unsafe { l.k.embedding_bag(&l.stream.stream, &a) }.map_err(cuda_err)
}

/// A table-batched lookup of several features' tables in one kernel.
fn table_batched(l: &Launch<'_>, meta: DevPtr, tables: usize, max_lanes: usize) -> Result<()> {
    let a = TbeArgs {
        meta,
        tables,
        max_lanes,
        packet: l.bufs.packet_ptr.load(Ordering::Acquire),
        slots: l.bufs.slots,
        batch: l.batch,
        out: l.out.ptr,
        out_ld: l.out.ld,
        index: l.bufs.index,
    };
    // SAFETY: the metadata lists live tables of the weights with their dims and output columns
    // summing to this op's width; packet and output as in `embedding_bag`.
    unsafe { l.k.tbe(&l.stream.stream, &a) }.map_err(cuda_err)
}

/// A linear layer: one cuBLASLt call with the bias and ReLU in its epilogue where it can, else
/// the plain GEMM and the `bias_act` kernel.
fn linear(l: &Launch<'_>, weight: DevPtr, bias: DevPtr, act: Activation) -> Result<()> {
    let (op, out, batch) = (l.op, l.out, l.batch);
    let t = &op.inputs[0];
    let (x, x_ld) = l.bufs.input_loc(l.graph, t)?;
    let mut blas = lock(&l.stream.blas);
    // SAFETY: x is `batch` rows of `t.width` floats with leading dimension x_ld (a producer's
    // output or the dense input), the weight is `[op.width, t.width]`, the bias has op.width
    // floats, and out is this op's output with leading dimension out.ld >= op.width; the
    // output region is distinct from the inputs'.
    let done = unsafe {
        blas.linear_bias_act(
            batch, op.width, t.width, x, x_ld, weight, bias, out.ptr, out.ld, act,
        )
    }
    .map_err(cuda_err)?;
    drop(blas);
    if done == kc::LinearEpilogue::Pending {
        // SAFETY: out as above, bias has op.width floats.
        unsafe {
            l.k.bias_act(
                &l.stream.stream,
                out.ptr,
                out.ld,
                Some(bias),
                batch,
                op.width,
                act,
            )
        }
        .map_err(cuda_err)?;
        // The count says one call for a layer that could fuse; this one could not (no
        // cuBLASLt plan for the shape, a misaligned bias, ...).
        if FusedEpilogue::for_activation(act).is_some()
            && lock(&l.stream.blas).fused_epilogues().is_ok()
        {
            l.stream.launches.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// A concatenation: copies the inputs that were not placed inside its output (often none).
fn concat(l: &Launch<'_>) -> Result<()> {
    if let Some((meta, parts, max_w)) = l.bufs.concat[l.id] {
        // SAFETY: the metadata lists the non-aliased inputs (live producer outputs or the dense
        // input, `batch` rows each) and their columns inside this op's output, which is
        // `[max_batch, op.width]`.
        unsafe {
            l.k.concat(
                &l.stream.stream,
                meta,
                parts,
                max_w,
                l.out.ptr,
                l.out.ld,
                l.batch,
            )
        }
        .map_err(cuda_err)?;
    }
    Ok(())
}

/// A dot interaction of the op's inputs.
fn dot_interaction(l: &Launch<'_>) -> Result<()> {
    let op = l.op;
    let meta =
        l.bufs.dot[l.id].ok_or_else(|| exec_err(format!("op `{}` has no metadata", op.name)))?;
    let d = op.inputs[0].width;
    // SAFETY: the metadata lists the inputs' live `batch`-row slices of width d; out is this
    // op's `[max_batch, d + n (n - 1) / 2]` output (checked when the buffers were allocated),
    // distinct from every input.
    unsafe {
        l.k.dot_interaction(
            &l.stream.stream,
            meta,
            op.inputs.len(),
            d,
            l.out.ptr,
            l.out.ld,
            l.batch,
        )
    }
    .map_err(cuda_err)
}

/// A DCNv2 cross layer: two GEMMs through its scratch, then its epilogue kernel.
fn dcn_cross(l: &Launch<'_>, rank: usize, v: DevPtr, u: DevPtr, bias: DevPtr) -> Result<()> {
    let (op, out, batch) = (l.op, l.out, l.batch);
    let w = op.width;
    let x0 = l.bufs.input_loc(l.graph, &op.inputs[0])?;
    let xl = l.bufs.input_loc(l.graph, &op.inputs[1])?;
    let t = l.bufs.scratch[l.id];
    let mut blas = lock(&l.stream.blas);
    // SAFETY: T[batch, rank] = xl · Vᵀ with xl `batch` rows of w floats (ld xl.1), V
    // `[rank, w]`, T this op's `[max_batch, rank]` scratch (ld rank); then out[batch, w] =
    // T · Uᵀ with U `[w, rank]` into this op's output (ld out.ld); scratch, inputs and output
    // are distinct regions.
    unsafe {
        blas.linear(batch, rank, w, xl.0, xl.1, v, t, rank)
            .and_then(|_| blas.linear(batch, w, rank, t, rank, u, out.ptr, out.ld))
    }
    .map_err(cuda_err)?;
    drop(blas);
    // SAFETY: out, x0 and xl are `batch` rows of w floats with their leading dimensions; bias
    // has w floats; out overlaps neither input.
    unsafe {
        l.k.dcn_epilogue(&l.stream.stream, out.ptr, out.ld, x0, xl, bias, batch, w)
    }
    .map_err(cuda_err)
}

/// Kernel launches and cuBLAS/cuBLASLt calls that [`launch`] issues for op `id`
/// (what [`Backend::launch_count`](crate::backend::Backend::launch_count) counts). Kept in step with the functions [`launch`] calls:
/// a lookup is one kernel; a linear layer is one cuBLASLt call with the bias and ReLU in
/// its epilogue, or (a sigmoid, or no cuBLASLt on the stream's handle) a cuBLAS GEMM plus
/// the `bias_act` kernel; a concatenation copies only when some input was not aliased into
/// it; a DCN layer is two GEMMs and its epilogue kernel.
fn calls_of(
    stream: &CudaStreamHandle,
    graph: &OpGraph,
    id: OpId,
    w: OpW,
    bufs: &CudaBuffers,
    batch: usize,
) -> u64 {
    if batch == 0 {
        return 0;
    }
    match (&graph.op(id).kind, w) {
        (OpKind::EmbeddingBag { .. }, OpW::Table { dim, .. }) => u64::from(dim > 0),
        (OpKind::TableBatchedEmbeddingBag { .. }, OpW::Tbe { tables, .. }) => u64::from(tables > 0),
        (OpKind::Linear { .. }, OpW::Linear { act, .. }) => {
            let unfused = FusedEpilogue::for_activation(act).is_none()
                || lock(&stream.blas).fused_epilogues().is_err();
            1 + u64::from(unfused)
        }
        (OpKind::Concat, _) => u64::from(bufs.concat[id].is_some()),
        (OpKind::DotInteraction, _) => 1,
        (OpKind::DcnCross { .. }, OpW::Cross { .. }) => 3,
        _ => 0,
    }
}
