//! Runs one op of the graph with the CPU kernels: resolves its weights and its input slices.

use std::sync::Arc;

use streamrec_graph::{Act, OpGraph, OpId, OpKind, PoolingMode, Source, TensorRef};
use streamrec_kernels::cpu;
use streamrec_kernels::cpu::Parallel;
use streamrec_kernels::{Activation, Index, MatMut, MatRef, Pooling, TableRef};

use crate::backend::cpu::BufInner;
use crate::batch::{Batch, IndexVec, SparseInput};
use crate::error::{Result, RuntimeError};
use crate::weights::{Tensor, Weights};

/// The weights one op reads, looked up once when the engine starts.
pub enum OpWeights {
    /// Ops without weights.
    None,
    /// Embedding tables (one for a bag, several for a table-batched op).
    Tables(Vec<Arc<Tensor>>),
    /// A linear layer.
    Linear {
        /// `[out, in]`.
        weight: Arc<Tensor>,
        /// `[out]`.
        bias: Arc<Tensor>,
    },
    /// A DCNv2 cross layer.
    Cross {
        /// `[rank, width]`.
        v: Arc<Tensor>,
        /// `[width, rank]`.
        u: Arc<Tensor>,
        /// `[width]`.
        bias: Arc<Tensor>,
    },
}

/// Looks up the weights of `op`, checking their shapes.
pub fn resolve_weights(graph: &OpGraph, id: OpId, w: &Weights) -> Result<OpWeights> {
    let op = graph.op(id);
    let get = |name: &str, shape: &[usize]| -> Result<Arc<Tensor>> {
        let t = w.get(name)?;
        if t.shape != shape {
            return Err(RuntimeError::Weights(format!(
                "tensor `{name}` has shape {:?}, op `{}` needs {:?}",
                t.shape, op.name, shape
            )));
        }
        Ok(Arc::clone(t))
    };
    let table = |f: usize| {
        let feat = &graph.spec.features[f];
        get(
            &streamrec_graph::ir::table_name(&feat.name),
            &[feat.rows, feat.dim],
        )
    };
    Ok(match &op.kind {
        OpKind::EmbeddingBag { feature } => OpWeights::Tables(vec![table(*feature)?]),
        OpKind::TableBatchedEmbeddingBag { features } => {
            OpWeights::Tables(features.iter().map(|&f| table(f)).collect::<Result<_>>()?)
        }
        OpKind::Linear { weight, bias, .. } => OpWeights::Linear {
            weight: get(weight, &[op.width, op.inputs[0].width])?,
            bias: get(bias, &[op.width])?,
        },
        OpKind::DcnCross { layer, rank } => OpWeights::Cross {
            v: get(&format!("cross.{layer}.v"), &[*rank, op.width])?,
            u: get(&format!("cross.{layer}.u"), &[op.width, *rank])?,
            bias: get(&format!("cross.{layer}.bias"), &[op.width])?,
        },
        OpKind::Concat | OpKind::DotInteraction | OpKind::Synthetic { .. } => OpWeights::None,
    })
}

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
    /// A linear layer folded into its feature's table: only its bias and activation are left.
    pub(crate) folded: bool,
    /// Where each op's output lives ([`Placement`]).
    pub(crate) place: &'a Placement,
    pub(crate) bufs: &'a BufInner,
    pub(crate) input: Option<&'a Batch>,
    pub(crate) batch: usize,
    /// Where large kernels hand their tiles (the backend's worker pool).
    pub(crate) par: &'a dyn cpu::Parallel,
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
        place,
        bufs,
        input,
        batch,
        par,
    } = call;
    let op = graph.op(id);
    let request = || input.ok_or_else(|| "no request staged".to_string());
    let (out, scratch) = match place.into[id] {
        Some((c, col)) => {
            // Written straight into its concat's buffer, at its own columns.
            let ld = graph.op(c).width;
            // SAFETY: the plan orders this op after every producer it reads and before every
            // consumer of the concat; the concat's other producers write other columns, and
            // nothing reads the buffer until all of them are done.
            let out = unsafe { bufs.acts[c].block_mut(col, batch, op.width, ld) }
                .ok_or_else(|| format!("`{}` does not fit in its concat's buffer", op.name))?;
            (out, &mut [][..])
        }
        None => {
            // SAFETY: the plan orders this op after every producer it reads and before every
            // consumer of its output; no other op writes this op's buffer.
            let out_buf = unsafe { bufs.acts[id].get_mut() };
            let (out_act, scratch) = out_buf.split_at_mut(op.width * batch);
            (MatMut::new(out_act, batch, op.width, op.width), scratch)
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
            macro_rules! bag {
                ($i:expr, $o:expr) => {
                    cpu::embedding_bag_par(&t[0].data, f.rows, f.dim, $i, $o, mode, out, par)
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
            if let Some(v) = all.iter().map(Bags::as_i64).collect::<Option<Vec<_>>>() {
                table_batched(&tables, v, out, par);
            } else if let Some(v) = all.iter().map(Bags::as_i32).collect::<Option<Vec<_>>>() {
                table_batched(&tables, v, out, par);
            } else {
                // Features of both integer types: all widened to i64.
                let wide: Vec<(Vec<i64>, Vec<i64>)> = all.iter().map(|b| b.widened()).collect();
                let v = wide.iter().map(|(i, o)| (&i[..], &o[..])).collect();
                table_batched(&tables, v, out, par);
            }
        }
        (OpKind::Linear { act, .. }, OpWeights::Linear { bias, .. }) if folded => {
            // The lookup pooled the projected table: `W · Σ e` is already there.
            cpu::bias_act_par(view(&op.inputs[0])?, &bias.data, activation(*act), out, par);
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

/// The value a synthetic op computes for one sample (also used by sequential references).
pub fn synthetic_value(id: OpId, dense: f32, inputs: impl Iterator<Item = f32>) -> f32 {
    let mut acc = (id as f32 + 1.0) * dense;
    for v in inputs {
        acc = acc * 0.5 + v;
    }
    acc
}

/// Where the CPU backend keeps each op's output, and which concats copy nothing.
pub(crate) struct Placement {
    /// Per op: a concat whose consumers read its parts in place ([`in_place_concats`]).
    pub(crate) in_place: Vec<bool>,
    /// Per op: its output is written straight into a concat's buffer, at this column
    /// ([`concat_slots`]).
    pub(crate) into: Vec<Option<(OpId, usize)>>,
    /// Per op: a concat whose producers all write into its buffer (it copies nothing, and its
    /// consumers read it whole).
    pub(crate) assembled: Vec<bool>,
}

impl Placement {
    pub(crate) fn new(graph: &OpGraph) -> Self {
        let into = concat_slots(graph);
        let mut assembled = vec![false; graph.len()];
        for &(c, _) in into.iter().flatten() {
            assembled[c] = true;
        }
        let mut in_place = in_place_concats(graph);
        for (p, a) in in_place.iter_mut().zip(&assembled) {
            *p &= !a;
        }
        Self {
            in_place,
            into,
            assembled,
        }
    }
}

/// The concat that is op `id`'s only consumer and reads its whole output once, with the column
/// it starts at there: where the op's output can live inside the concat's (`None` for the
/// graph's output). The CUDA arena places such ops there one by one (`ArenaLayout`); the CPU
/// backend when every input of the concat is one ([`concat_slots`]).
pub(crate) fn concat_slot(graph: &OpGraph, id: OpId) -> Option<(OpId, usize)> {
    if id == graph.output() {
        return None;
    }
    let [c] = graph.succs(id)[..] else {
        return None;
    };
    let cop = graph.op(c);
    if !matches!(cop.kind, OpKind::Concat) {
        return None;
    }
    let mut uses = cop
        .inputs
        .iter()
        .enumerate()
        .filter(|(_, t)| t.src == Source::Op(id));
    let (i, t) = match (uses.next(), uses.next()) {
        (Some(u), None) => u,
        _ => return None,
    };
    (t.col == 0 && t.width == graph.op(id).width)
        .then(|| (c, cop.inputs[..i].iter().map(|t| t.width).sum()))
}

/// Per op: the concat whose buffer its output is written into, and at which column. A concat
/// is assembled this way when every one of its inputs has it as its [`concat_slot`] and is
/// neither a concat nor a DCN layer (which keeps scratch after its activation), and its width
/// is theirs. Its consumers
/// then read one matrix: the linear kernel streams that faster than the same input in parts
/// (streamrec-26's `top.0`, whose 27 parts of 128 columns cost 7.5% against one 3456-column
/// matrix on a Xeon, one thread).
pub(crate) fn concat_slots(graph: &OpGraph) -> Vec<Option<(OpId, usize)>> {
    let mut into = vec![None; graph.len()];
    for c in 0..graph.len() {
        let op = graph.op(c);
        // (A concat's width is its inputs' by construction; checked, as its producers' views
        // rely on it.)
        let width = op
            .inputs
            .iter()
            .try_fold(0usize, |w, t| w.checked_add(t.width));
        if !matches!(op.kind, OpKind::Concat) || width != Some(op.width) {
            continue;
        }
        let slots: Option<Vec<(OpId, usize)>> = op
            .inputs
            .iter()
            .map(|t| match t.src {
                Source::Op(p)
                    if !matches!(graph.op(p).kind, OpKind::Concat | OpKind::DcnCross { .. }) =>
                {
                    concat_slot(graph, p)
                        .filter(|&(to, _)| to == c)
                        .map(|(_, col)| (p, col))
                }
                _ => None,
            })
            .collect();
        for (p, col) in slots.into_iter().flatten() {
            into[p] = Some((c, col));
        }
    }
    into
}

/// Per op: whether it is a concat whose copy can be skipped, because every consumer is a
/// linear layer reading all of it (the kernel then reads the parts in place,
/// [`cpu::linear_packed_cat_par`]). A concat that is the graph's output, or that anything else
/// reads, is copied as usual.
pub(crate) fn in_place_concats(graph: &OpGraph) -> Vec<bool> {
    (0..graph.len())
        .map(|c| {
            let op = graph.op(c);
            let whole = TensorRef {
                src: Source::Op(c),
                col: 0,
                width: op.width,
            };
            let succs = graph.succs(c);
            matches!(op.kind, OpKind::Concat)
                && c != graph.output()
                && !succs.is_empty()
                && succs.iter().all(|&s| {
                    let s = graph.op(s);
                    matches!(s.kind, OpKind::Linear { .. }) && s.inputs == [whole]
                })
        })
        .collect()
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

/// The table-batched bag kernel on per-table (indices, offsets).
fn table_batched<I: Index>(
    tables: &[TableRef<'_>],
    v: Vec<(&[I], &[I])>,
    out: MatMut<'_>,
    par: &dyn Parallel,
) {
    let (i, o): (Vec<_>, Vec<_>) = v.into_iter().unzip();
    cpu::table_batched_embedding_bag_par(tables, &i, &o, out, par);
}

/// A small model for unit tests: 4 dense features, bottom `[8]`, `count` features of `rows` x 8
/// (with `sparse` added to their section, e.g. `branch = [8]`), the given interaction, top
/// `[8, 1]`.
#[cfg(test)]
pub(crate) fn small_graph(count: usize, rows: usize, sparse: &str, interaction: &str) -> OpGraph {
    let spec = streamrec_graph::ModelSpec::parse(
        &format!(
            r#"
            dense = 4
            [bottom]
            layers = [8]
            [sparse]
            count = {count}
            rows = {rows}
            dim = 8
            {sparse}
            [interaction]
            {interaction}
            [top]
            layers = [8, 1]
            "#
        ),
        "inline",
        None,
    )
    .expect("a valid spec");
    OpGraph::from_spec(&spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamrec_graph::{Op, Stage};

    fn graph(interaction: &str) -> OpGraph {
        small_graph(2, 10, "", interaction)
    }

    #[test]
    fn a_concat_of_outputs_read_nowhere_else_is_assembled_in_its_buffer() {
        for kind in [r#"kind = "cat""#, "kind = \"dcn\"\nlayers = 1\nrank = 2"] {
            let g = graph(kind);
            let cat = g.find("concat").expect("a concat op");
            let place = Placement::new(&g);
            assert!(place.assembled[cat], "{kind}");
            assert!(!place.in_place[cat], "{kind}: assembled, so read whole");
            // Every input at its own columns, in the concat's order.
            let mut col = 0;
            for t in &g.op(cat).inputs {
                let Source::Op(p) = t.src else {
                    panic!("{kind}: an input that is not an op")
                };
                assert_eq!(place.into[p], Some((cat, col)), "{kind}: {}", g.op(p).name);
                col += t.width;
            }
            assert_eq!(col, g.op(cat).width);
            assert_eq!(
                place.into.iter().flatten().count(),
                g.op(cat).inputs.len(),
                "{kind}: only the concat's inputs"
            );
        }
        // No concat under a dot interaction.
        assert!(Placement::new(&graph(r#"kind = "dot""#))
            .into
            .iter()
            .all(Option::is_none));
    }

    #[test]
    fn a_concat_is_not_assembled_when_an_input_is_read_elsewhere_or_twice() {
        let spec = graph(r#"kind = "cat""#).spec.clone();
        let op = |name: &str, kind: OpKind, inputs: Vec<TensorRef>, width: usize| Op {
            name: name.into(),
            kind,
            inputs,
            width,
            feature: None,
            stage: Stage::Other,
        };
        let syn = || OpKind::Synthetic {
            flops: 1.0,
            bytes: 1.0,
            fixed_bytes: 0.0,
        };
        let dense = TensorRef {
            src: Source::Dense,
            col: 0,
            width: 4,
        };
        let of = |id: OpId, width: usize| TensorRef {
            src: Source::Op(id),
            col: 0,
            width,
        };
        let ops = vec![
            op("a", syn(), vec![dense], 3),
            op("b", syn(), vec![dense], 2),
            // `a` is read by this concat and by `c`.
            op("cat1", OpKind::Concat, vec![of(0, 3), of(1, 2)], 5),
            op("c", syn(), vec![of(0, 3)], 2),
            op("d", syn(), vec![of(2, 5)], 2),
            // `c` read twice.
            op("cat2", OpKind::Concat, vec![of(3, 2), of(3, 2)], 4),
            op("e", syn(), vec![of(5, 4)], 2),
            // Part of an input only.
            op(
                "cat3",
                OpKind::Concat,
                vec![of(4, 2), TensorRef { col: 1, ..of(6, 1) }],
                3,
            ),
            op("f", syn(), vec![of(7, 3)], 2),
            op("g", syn(), vec![dense], 3),
            op("h", syn(), vec![dense], 1),
            // The graph's output reads `g` and `h` only: this one is assembled.
            op("cat4", OpKind::Concat, vec![of(9, 3), of(10, 1)], 4),
        ];
        let g = OpGraph::from_ops(spec, ops).expect("a valid graph");
        let place = Placement::new(&g);
        let assembled: Vec<&str> = (0..g.len())
            .filter(|&i| place.assembled[i])
            .map(|i| g.op(i).name.as_str())
            .collect();
        assert_eq!(assembled, ["cat4"]);
        assert_eq!(place.into[9], Some((11, 0)));
        assert_eq!(place.into[10], Some((11, 3)));
        assert_eq!(place.into.iter().flatten().count(), 2);
    }

    #[test]
    fn only_a_concat_read_whole_by_linear_layers_is_read_in_place() {
        let g = graph(r#"kind = "cat""#);
        let cat = g.find("concat").expect("a concat op");
        let flags = in_place_concats(&g);
        assert!(flags[cat]);
        assert_eq!(flags.iter().filter(|&&f| f).count(), 1);
        // The cross layers of DCN read the concat too: it is copied.
        let g = graph("kind = \"dcn\"\nlayers = 1\nrank = 2");
        assert!(in_place_concats(&g).iter().all(|&f| !f));
    }
}
