//! A context's activation arena: where every op's output (and each DCN layer's scratch) lives,
//! with the outputs of a concatenation's producers placed inside its output where they can be.

use streamrec_graph::{OpGraph, OpId, OpKind};
use streamrec_kernels::cuda::DevPtr;

use super::device::align;
use crate::backend::shared;

/// Where an op's output lives: first element and leading dimension (in floats).
#[derive(Clone, Copy, Debug)]
pub(super) struct Loc {
    pub(super) ptr: DevPtr,
    pub(super) ld: usize,
    /// Offset in the arena (f32 elements) when the op owns its buffer.
    pub(super) arena: Option<usize>,
}

/// Where every op's output lives in a context's activation arena, in f32 elements.
///
/// Ops are placed consumers first, so that an op whose only consumer is a concatenation (and
/// which feeds it once, whole) can be placed inside the concatenation's output: its region is
/// the concatenation's offset plus its first column, with the concatenation's leading
/// dimension. Every other op owns a `[max_batch, width]` region (256-byte aligned); each DCN
/// layer also owns a `[max_batch, rank]` scratch region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArenaLayout {
    /// Per op: the offset of its output's first element and its leading dimension.
    pub out: Vec<(usize, usize)>,
    /// Per op: the concatenation it writes into and its first column there, when aliased.
    pub alias: Vec<Option<(OpId, usize)>>,
    /// Per op: the offset of its scratch region (DCN layers).
    pub scratch: Vec<Option<usize>>,
    /// Arena length in f32 elements.
    pub len: usize,
}

impl ArenaLayout {
    /// The layout of `graph`'s outputs for up to `max_batch` samples; `alias_concat` turns the
    /// in-place concatenation on.
    pub fn new(graph: &OpGraph, max_batch: usize, alias_concat: bool) -> Self {
        let n = graph.len();
        let mut own: Vec<Option<usize>> = vec![None; n];
        let mut alias: Vec<Option<(OpId, usize)>> = vec![None; n];
        let mut len = 0usize;
        for id in (0..n).rev() {
            let op = graph.op(id);
            if alias_concat {
                if let Some(slot) = shared::concat_slot(graph, id) {
                    alias[id] = Some(slot);
                    continue;
                }
            }
            own[id] = Some(len);
            len += align(max_batch * op.width);
        }
        let mut scratch: Vec<Option<usize>> = vec![None; n];
        for (id, op) in graph.ops().enumerate() {
            if let OpKind::DcnCross { rank, .. } = op.kind {
                scratch[id] = Some(len);
                len += align(max_batch * rank);
            }
        }
        // Consumers first, so an alias finds its concatenation's place already set.
        let mut out = vec![(0usize, 0usize); n];
        for id in (0..n).rev() {
            out[id] = match (own[id], alias[id]) {
                (Some(o), _) => (o, graph.op(id).width),
                (None, Some((c, col))) => (out[c].0 + col, out[c].1),
                (None, None) => unreachable!("every op is placed or aliased"),
            };
        }
        Self {
            out,
            alias,
            scratch,
            len,
        }
    }
}
