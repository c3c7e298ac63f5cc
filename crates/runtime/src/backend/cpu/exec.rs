//! Runs one op of the graph with the CPU kernels, on its resolved weights and on views of its
//! inputs (earlier ops' buffers, the staged request).

use streamrec_graph::{Act, OpGraph, OpId, OpKind, PoolingMode, Source, TensorRef};
use streamrec_kernels::cpu;
use streamrec_kernels::cpu::Parallel;
use streamrec_kernels::{Activation, Index, MatMut, MatRef, Pooling, TableRef};

use super::memory::BufInner;
use crate::backend::shared::{synthetic_value, OpWeights, Placement};
use crate::batch::{Batch, IndexVec, SparseInput};

fn pooling(m: PoolingMode) -> Pooling {
    match m {
        PoolingMode::Sum => Pooling::Sum,
        PoolingMode::Mean => Pooling::Mean,
    }
}

fn activation(a: Act) -> Activation {
    match a {
        Act::None => Activation::None,
        Act::Relu => Activation::Relu,
        Act::Sigmoid => Activation::Sigmoid,
    }
}

/// One op to run on the CPU.
pub(crate) struct OpCall<'a> {
    pub(crate) graph: &'a OpGraph,
    pub(crate) id: OpId,
    pub(crate) weights: &'a OpWeights,
    /// The op's prepacked linear weights, when it is a linear layer.
    pub(crate) packed: Option<&'a cpu::PackedLinear>,
    /// A linear layer folded into its feature's table: its lookup applied its bias and
    /// activation as it wrote the layer's output, nothing is left to do.
    pub(crate) folded: bool,
    /// On a lookup: the layers folded into its tables, as (table slot, layer); their outputs are
    /// written by the lookup, with their bias and activation ([`epilogue_of`]).
    pub(crate) fused: &'a [(usize, OpId)],
    /// The instruction set of the lookups' pooling loops.
    pub(crate) isa: cpu::Isa,
    /// Where each op's output lives ([`Placement`]).
    pub(crate) place: &'a Placement,
    pub(crate) bufs: &'a BufInner,
    pub(crate) input: Option<&'a Batch>,
    pub(crate) batch: usize,
    /// Where large kernels hand their tiles (the backend's worker pool).
    pub(crate) par: &'a dyn cpu::Parallel,
    /// Every op's weights (a lookup applies its folded layers' biases).
    pub(crate) by_op: &'a [OpWeights],
}

/// The bias and activation of folded layer `linear`, for its lookup's final write.
fn epilogue_of<'a>(
    graph: &OpGraph,
    by_op: &'a [OpWeights],
    linear: OpId,
) -> std::result::Result<(&'a [f32], Activation), String> {
    match (&graph.op(linear).kind, &by_op[linear]) {
        (OpKind::Linear { act, .. }, OpWeights::Linear { bias, .. }) => {
            Ok((&bias.data, activation(*act)))
        }
        _ => Err(format!(
            "folded op `{}` is not a linear layer",
            graph.op(linear).name
        )),
    }
}

/// The output view of `op`'s columns `[col, col + width)` for `batch` samples: in its concat's
/// buffer when it is written there, else in its own.
///
/// # Safety
///
/// As [`BufInner`]'s `block_mut`: nothing else reads or writes those elements while the view is
/// alive (the plan orders `op`'s writer before its readers).
unsafe fn out_block<'b>(
    graph: &OpGraph,
    place: &Placement,
    bufs: &'b BufInner,
    op: OpId,
    col: usize,
    width: usize,
    batch: usize,
) -> std::result::Result<MatMut<'b>, String> {
    let (buf, col, ld) = match place.into[op] {
        Some((c, ccol)) => (c, ccol + col, graph.op(c).width),
        None => (op, col, graph.op(op).width),
    };
    // SAFETY: the caller's contract.
    unsafe { bufs.acts[buf].block_mut(col, batch, width, ld) }
        .ok_or_else(|| format!("`{}` does not fit in its buffer", graph.op(op).name))
}

/// Linear layers below this many FLOPs run on one thread: handing out tiles costs a few
/// microseconds.
const SPLIT_MIN_FLOPS: f64 = 2e6;
/// ... unless they stream at least this many bytes of packed weights (a small-batch GEMV is
/// bound by memory bandwidth, which a second core adds to).
const SPLIT_MIN_WEIGHT_BYTES: usize = 512 << 10;

/// Runs `op` for `batch` samples, reading its inputs from the buffers and the request.
pub(crate) fn run_op(call: &OpCall<'_>) -> std::result::Result<(), String> {
    let &OpCall {
        graph,
        id,
        weights,
        packed,
        folded,
        fused,
        isa,
        place,
        bufs,
        input,
        batch,
        par,
        by_op,
    } = call;
    if folded {
        // Its lookup wrote its output, bias and activation applied.
        return Ok(());
    }
    let op = graph.op(id);
    let request = || input.ok_or_else(|| "no request staged".to_string());
    // A feature's own lookup with a folded layer writes that layer's output.
    let dst = match (&op.kind, fused) {
        (OpKind::EmbeddingBag { .. }, [(0, linear)]) => *linear,
        _ => id,
    };
    let dst_op = graph.op(dst);
    let (out, scratch) = match place.into[dst] {
        Some((c, col)) => {
            // Written straight into its concat's buffer, at its own columns.
            let ld = graph.op(c).width;
            // SAFETY: the plan orders this op after every producer it reads and before every
            // consumer of the concat; the concat's other producers write other columns, and
            // nothing reads the buffer until all of them are done. A lookup writing its folded
            // layer's columns runs before that layer, which writes nothing, and before the
            // layer's consumers, which wait for it.
            let out = unsafe { bufs.acts[c].block_mut(col, batch, dst_op.width, ld) }
                .ok_or_else(|| format!("`{}` does not fit in its concat's buffer", dst_op.name))?;
            (out, &mut [][..])
        }
        None => {
            // SAFETY: the plan orders this op after every producer it reads and before every
            // consumer of its output; no other op writes this op's buffer (nor, for a lookup
            // with a folded layer, that layer's, which the layer leaves alone).
            let out_buf = unsafe { bufs.acts[dst].get_mut() };
            let (out_act, scratch) = out_buf.split_at_mut(dst_op.width * batch);
            (
                MatMut::new(out_act, batch, dst_op.width, dst_op.width),
                scratch,
            )
        }
    };
    let view = |t: &TensorRef| -> std::result::Result<MatRef<'_>, String> {
        match t.src {
            Source::Op(p) => {
                // Its own buffer, or its columns of the concat it was written into.
                let (buf, col, w) = match place.into[p] {
                    Some((c, col)) => (c, col + t.col, graph.op(c).width),
                    None => (p, t.col, graph.op(p).width),
                };
                // SAFETY: producer `p` finished before this op (plan order or an event wait).
                let data = unsafe { bufs.acts[buf].get() };
                Ok(MatRef::new(&data[col..], batch, t.width, w))
            }
            Source::Dense => {
                let b = request()?;
                let w = graph.spec.dense;
                Ok(MatRef::new(&b.dense[t.col..], batch, t.width, w))
            }
            Source::Sparse(_) => Err("a sparse input cannot be read as a matrix".into()),
        }
    };
    match (&op.kind, weights) {
        (OpKind::EmbeddingBag { feature }, OpWeights::Tables(t)) => {
            let b = request()?;
            let f = &graph.spec.features[*feature];
            let s = &b.sparse[*feature];
            let mode = pooling(f.mode);
            let bag_opts = match fused {
                [(0, linear)] => {
                    let (bias, act) = epilogue_of(graph, by_op, *linear)?;
                    cpu::BagOpts::new(isa).with_epilogue(Some(bias), act)
                }
                _ => cpu::BagOpts::new(isa),
            };
            macro_rules! bag {
                ($i:expr, $o:expr) => {
                    cpu::embedding_bag_par(
                        &t[0].data, f.rows, f.dim, $i, $o, mode, out, par, &bag_opts,
                    )
                };
            }
            match bags(s, batch)? {
                Bags::I64(i, o) => bag!(i, o),
                Bags::I32(i, o) => bag!(i, o),
            }
        }
        (OpKind::TableBatchedEmbeddingBag { features }, OpWeights::Tables(t)) => {
            let b = request()?;
            let tables: Vec<TableRef<'_>> = features
                .iter()
                .zip(t)
                .map(|(&f, t)| {
                    let f = &graph.spec.features[f];
                    TableRef {
                        data: &t.data,
                        rows: f.rows,
                        dim: f.dim,
                        mode: pooling(f.mode),
                    }
                })
                .collect();
            let all = features
                .iter()
                .map(|&f| bags(&b.sparse[f], batch))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let outs = if fused.is_empty() {
                Outs::One(out)
            } else {
                // Each table's rows to their own place: a folded layer's output (its bias and
                // activation applied) or the lookup's columns.
                let mut outs = Vec::with_capacity(features.len());
                let mut col = 0;
                for (slot, &f) in features.iter().enumerate() {
                    let dim = graph.spec.features[f].dim;
                    let (view, opts) = match fused.iter().find(|(s, _)| *s == slot) {
                        Some(&(_, linear)) => {
                            let (bias, act) = epilogue_of(graph, by_op, linear)?;
                            (
                                // SAFETY: as for a feature's own lookup above.
                                unsafe { out_block(graph, place, bufs, linear, 0, dim, batch) }?,
                                cpu::BagOpts::new(isa).with_epilogue(Some(bias), act),
                            )
                        }
                        // SAFETY: the lookup's own columns of its output, which only it writes
                        // (each table's block apart from the others).
                        None => (
                            unsafe { out_block(graph, place, bufs, id, col, dim, batch) }?,
                            cpu::BagOpts::new(isa),
                        ),
                    };
                    outs.push((view, opts));
                    col += dim;
                }
                Outs::Each(outs)
            };
            if let Some(v) = all.iter().map(Bags::as_i64).collect::<Option<Vec<_>>>() {
                table_batched(isa, &tables, v, outs, par);
            } else if let Some(v) = all.iter().map(Bags::as_i32).collect::<Option<Vec<_>>>() {
                table_batched(isa, &tables, v, outs, par);
            } else {
                // Features of both integer types: all widened to i64.
                let wide: Vec<(Vec<i64>, Vec<i64>)> = all.iter().map(|b| b.widened()).collect();
                let v = wide.iter().map(|(i, o)| (&i[..], &o[..])).collect();
                table_batched(isa, &tables, v, outs, par);
            }
        }
        (OpKind::Linear { act, .. }, OpWeights::Linear { .. }) => {
            // The input, or the parts of a concat that is read in place.
            let parts = match op.inputs[0].src {
                Source::Op(c) if place.in_place[c] => graph.op(c).inputs.iter().map(view).collect(),
                _ => view(&op.inputs[0]).map(|x| vec![x]),
            }?;
            let act = activation(*act);
            // The CPU backend packs every linear layer's weights at load.
            let p = packed.ok_or_else(|| "linear weights were not packed".to_string())?;
            // Split by output panels only: every element is summed in the same order.
            let big = graph.flops(id, batch) >= SPLIT_MIN_FLOPS
                || p.weight_bytes() >= SPLIT_MIN_WEIGHT_BYTES;
            let par: &dyn Parallel = if big { par } else { &cpu::Sequential };
            cpu::linear_packed_cat_par(&parts, p, act, out, par);
        }
        (OpKind::Concat, _) if place.in_place[id] || place.assembled[id] => {
            // Its consumers read the parts where their producers wrote them, or its producers
            // wrote their columns of its buffer.
        }
        (OpKind::Concat, _) => {
            let xs = op
                .inputs
                .iter()
                .map(view)
                .collect::<std::result::Result<Vec<_>, _>>()?;
            cpu::concat(&xs, out);
        }
        (OpKind::DotInteraction, _) => {
            let xs = op
                .inputs
                .iter()
                .map(view)
                .collect::<std::result::Result<Vec<_>, _>>()?;
            cpu::dot_interaction(&xs, out);
        }
        (OpKind::DcnCross { rank, .. }, OpWeights::Cross { v, u, bias }) => {
            let x0 = view(&op.inputs[0])?;
            let xl = view(&op.inputs[1])?;
            cpu::dcn_cross(
                x0,
                xl,
                &v.data,
                &u.data,
                &bias.data,
                *rank,
                &mut scratch[..batch * rank],
                out,
            );
        }
        (OpKind::Synthetic { flops, .. }, _) => {
            // A deterministic stand-in computation for scheduler and runtime tests: each sample
            // mixes the op id, the dense input and every input op's value; `flops` is spent as
            // busy time (nanoseconds per sample, at most 200 us) so that streams overlap.
            let spin =
                std::time::Duration::from_nanos((flops * batch as f64).min(200_000.0) as u64);
            let t0 = std::time::Instant::now();
            while t0.elapsed() < spin {
                std::hint::spin_loop();
            }
            let ins = op
                .inputs
                .iter()
                .map(view)
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let dense = request()?;
            let mut out = out;
            for r in 0..batch {
                out.row_mut(r)[0] = synthetic_value(
                    id,
                    dense.dense[r * graph.spec.dense],
                    ins.iter().map(|m| m.row(r)[0]),
                );
            }
        }
        _ => return Err(format!("op `{}` has weights of the wrong kind", op.name)),
    }
    Ok(())
}

/// One feature's indices and its first `batch` offsets, of one integer type.
#[derive(Clone, Copy)]
enum Bags<'a> {
    I32(&'a [i32], &'a [i32]),
    I64(&'a [i64], &'a [i64]),
}

impl<'a> Bags<'a> {
    fn as_i32(&self) -> Option<(&'a [i32], &'a [i32])> {
        match *self {
            Bags::I32(i, o) => Some((i, o)),
            Bags::I64(..) => None,
        }
    }

    fn as_i64(&self) -> Option<(&'a [i64], &'a [i64])> {
        match *self {
            Bags::I64(i, o) => Some((i, o)),
            Bags::I32(..) => None,
        }
    }

    fn widened(self) -> (Vec<i64>, Vec<i64>) {
        match self {
            Bags::I64(i, o) => (i.to_vec(), o.to_vec()),
            Bags::I32(i, o) => (
                i.iter().map(|&v| i64::from(v)).collect(),
                o.iter().map(|&v| i64::from(v)).collect(),
            ),
        }
    }
}

/// The bags of feature input `s` for a batch of `batch` samples; indices and offsets of
/// different integer types are an error.
fn bags(s: &SparseInput, batch: usize) -> std::result::Result<Bags<'_>, String> {
    match (&s.indices, &s.offsets) {
        (IndexVec::I64(i), IndexVec::I64(o)) => Ok(Bags::I64(i, &o[..batch])),
        (IndexVec::I32(i), IndexVec::I32(o)) => Ok(Bags::I32(i, &o[..batch])),
        _ => Err("indices and offsets must have the same integer type".into()),
    }
}

/// Where a table-batched lookup writes.
enum Outs<'a> {
    /// Every table's columns of its own output.
    One(MatMut<'a>),
    /// Each table's rows to a view of their own, with that table's options (a folded layer's
    /// epilogue).
    Each(Vec<(MatMut<'a>, cpu::BagOpts<'a>)>),
}

/// The table-batched bag kernel on per-table (indices, offsets).
fn table_batched<I: Index>(
    isa: cpu::Isa,
    tables: &[TableRef<'_>],
    v: Vec<(&[I], &[I])>,
    outs: Outs<'_>,
    par: &dyn Parallel,
) {
    let (i, o): (Vec<_>, Vec<_>) = v.into_iter().unzip();
    match outs {
        Outs::One(out) => cpu::table_batched_embedding_bag_par(isa, tables, &i, &o, out, par),
        Outs::Each(outs) => cpu::table_batched_embedding_bag_into(tables, &i, &o, outs, par),
    }
}
