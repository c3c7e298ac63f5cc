//! What both backends share: each op's weights resolved from the model's tensors, where an
//! op's output can live inside the concatenation that reads it, and the synthetic ops' value.
//!
//! Backend-neutral: it knows the graph and the weights, no kernel and no device.

use std::sync::Arc;

use streamrec_graph::{OpGraph, OpId, OpKind, Source, TensorRef};

use crate::error::{Result, WeightsError};
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
            return Err(WeightsError::Shape {
                path: None,
                tensor: name.to_string(),
                shape: t.shape.clone(),
                needed_by: format!("op `{}` needs", op.name),
                expected: shape.to_vec(),
            }
            .into());
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
/// [`streamrec_kernels::cpu::linear_packed_cat_par`]). A concat that is the graph's output, or that anything else
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
