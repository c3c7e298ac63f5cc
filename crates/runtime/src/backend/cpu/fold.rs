//! Embedding projections folded into their tables (CPU backend): a linear layer that alone reads
//! a feature's pooled rows is applied to the table once, at load.
//!
//! Pooling is a sum (or a mean) of table rows, and a linear layer is linear:
//! `W · Σ e_i + b = Σ (W · e_i) + b`. So when a square linear layer (`dim -> dim`, as the first
//! layer of each of streamrec-26's per-feature branches) is the only reader of a feature's pooled
//! rows, the backend computes the projected table `T' = T · Wᵀ` once and pools `T'` instead; only
//! the layer's bias and activation are left. That removes one GEMM per feature from every
//! request and leaves each output within the f32 rounding of the unfolded order (the end-to-end
//! reference tests bound it against f64).
//!
//! The layer's bias and activation are applied by the lookup itself as it writes each pooled row,
//! straight into the layer's output (its own buffer or its columns of a concat), and the layer
//! then does nothing. A separate bias pass over the pooled rows measured twice the GEMM it
//! replaced on an AVX2-only EPYC (its ordinary stores into a concat's cold lines; issue 28);
//! in the lookup's final write it costs nothing a request would notice, so a fold always pays
//! per request: it saves one GEMM per feature for one projection at load. Its price is paid at
//! load (time and a second copy of each folded table, bounded by [`FOLD_MAX_BYTES`]); the first
//! load that projects tables prints what it folded, what that cost and what a request saves
//! ([`report`]).
//!
//! Every plan of an engine folds the same layers, so outputs stay bit-identical across plans,
//! stream counts and fused lookups. A projected table is as large as its table, so folding is
//! skipped when a model's projected tables would take more than [`FOLD_MAX_BYTES`], and engines
//! of one process over the same weights share each projected table (built once while any engine
//! holds it). [`CpuBackend::with_fold(false)`](super::CpuBackend::with_fold) turns folding off,
//! for comparisons.

use std::sync::{Arc, Mutex, OnceLock, Weak};

use streamrec_graph::{OpGraph, OpId, OpKind, Source};
use streamrec_kernels::cpu::{self, PackedLinear};
use streamrec_kernels::{Activation, MatMut, MatRef};

use crate::backend::shared::OpWeights;
use crate::error::{Result, RuntimeError, WeightsError};
use crate::weights::Tensor;

/// Projected tables beyond this many bytes in all are not built (the model's tables would need
/// twice their memory): the layers then run as GEMMs.
pub const FOLD_MAX_BYTES: usize = 4 << 30;

/// One fold: linear op `linear` reads all of one feature's pooled rows, which lookup op `lookup`
/// computes from its table number `slot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fold {
    pub(crate) linear: OpId,
    pub(crate) lookup: OpId,
    pub(crate) slot: usize,
}

/// The linear layers of `graph` that can be folded into their feature's table: a linear op whose
/// one input is exactly one feature's pooled rows (a lookup's whole output, or that feature's
/// columns of a table-batched lookup), with as many outputs as the table has columns, and nothing
/// else reading those rows. Empty when the projected tables would outgrow [`FOLD_MAX_BYTES`].
pub(crate) fn plan(graph: &OpGraph) -> Vec<Fold> {
    let mut folds = Vec::new();
    let mut bytes = 0usize;
    for (id, op) in graph.ops().enumerate() {
        if !matches!(op.kind, OpKind::Linear { .. }) || op.inputs.len() != 1 {
            continue;
        }
        let input = &op.inputs[0];
        let Source::Op(lookup) = input.src else {
            continue;
        };
        let features: Vec<usize> = match &graph.op(lookup).kind {
            OpKind::EmbeddingBag { feature } => vec![*feature],
            OpKind::TableBatchedEmbeddingBag { features } => features.clone(),
            _ => continue,
        };
        // The feature whose columns the input covers exactly.
        let mut col = 0;
        let mut found = None;
        for (slot, &f) in features.iter().enumerate() {
            let dim = graph.spec.features[f].dim;
            if col == input.col && dim == input.width {
                found = Some((slot, f));
            }
            col += dim;
        }
        let Some((slot, feature)) = found else {
            continue;
        };
        let f = &graph.spec.features[feature];
        if op.width != f.dim || lookup == graph.output() {
            continue;
        }
        // Nothing else reads these columns of the lookup.
        let shared = graph.ops().enumerate().any(|(other, o)| {
            o.inputs.iter().any(|t| {
                t.src == Source::Op(lookup)
                    && other != id
                    && t.col < input.col + input.width
                    && input.col < t.col + t.width
            })
        });
        if shared {
            continue;
        }
        let Some(b) = f
            .rows
            .checked_mul(f.dim)
            .and_then(|n| n.checked_mul(4))
            .and_then(|n| bytes.checked_add(n))
        else {
            return Vec::new();
        };
        bytes = b;
        folds.push(Fold {
            linear: id,
            lookup,
            slot,
        });
    }
    if bytes > FOLD_MAX_BYTES {
        return Vec::new();
    }
    folds
}

/// Projected tables alive in this process, by (table, weight) allocation: engines over the same
/// weights share them.
type Cache = Mutex<Vec<((usize, usize), Weak<Tensor>)>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(Vec::new()))
}

/// `table · weightᵀ` (`[rows, dim]` by `[dim, dim]`), from the cache or computed now on
/// `threads` threads (then `computed` is set). An allocation the machine cannot make is an
/// error.
pub(crate) fn project(
    table: &Arc<Tensor>,
    weight: &Arc<Tensor>,
    threads: usize,
    computed: &mut bool,
) -> Result<Arc<Tensor>> {
    let key = (Arc::as_ptr(table) as usize, Arc::as_ptr(weight) as usize);
    // The cache holds only weak references: while an entry is alive, so is some engine that
    // holds both keys' tensors, so their addresses cannot have been reused.
    if let Some(t) = cache()
        .lock()
        .expect("fold cache")
        .iter()
        .find(|(k, _)| *k == key)
        .and_then(|(_, w)| w.upgrade())
    {
        return Ok(t);
    }
    *computed = true;
    let (rows, dim) = match table.shape[..] {
        [r, d] => (r, d),
        _ => return Err(WeightsError::Fold("a table is not 2-D".into()).into()),
    };
    if weight.shape[..] != [dim, dim] {
        return Err(WeightsError::Fold(format!(
            "a folded layer's weight has shape {:?}, not [{dim}, {dim}]",
            weight.shape
        ))
        .into());
    }
    let len = rows
        .checked_mul(dim)
        .ok_or_else(|| WeightsError::Fold("a table's size overflows".into()))?;
    let mut data = crate::weights::alloc_f32(len, 0.0).map_err(|e| RuntimeError::Alloc {
        what: format!("a projected table of {len} floats"),
        reason: e.to_string(),
        hint: "a backend with folding off needs none",
    })?;
    let packed = PackedLinear::new(&weight.data, dim, dim, None);
    cpu::linear_packed_parallel(
        MatRef::contiguous(&table.data[..len], rows, dim),
        &packed,
        Activation::None,
        MatMut::contiguous(&mut data, rows, dim),
        threads,
    );
    let t = Arc::new(Tensor {
        shape: vec![rows, dim],
        data,
    });
    let mut c = cache().lock().expect("fold cache");
    c.retain(|(_, w)| w.strong_count() > 0);
    c.push((key, Arc::downgrade(&t)));
    Ok(t)
}

/// Applies `folds` to the resolved weights: each folded lookup reads its projected table. The
/// folded linear ops keep their weights (their bias is still applied). When it projected any
/// table (not all came from the cache), it prints [`report`] to stderr.
pub(crate) fn apply(
    graph: &OpGraph,
    folds: &[Fold],
    by_op: &mut [OpWeights],
    threads: usize,
) -> Result<()> {
    let t0 = std::time::Instant::now();
    let mut computed = false;
    for f in folds {
        let OpWeights::Linear { weight, .. } = &by_op[f.linear] else {
            return Err(
                WeightsError::Fold(format!("op {} is not a linear layer", f.linear)).into(),
            );
        };
        let weight = Arc::clone(weight);
        let OpWeights::Tables(tables) = &mut by_op[f.lookup] else {
            return Err(WeightsError::Fold(format!("op {} is not a lookup", f.lookup)).into());
        };
        let table = tables.get_mut(f.slot).ok_or_else(|| {
            WeightsError::Fold(format!("lookup op {} has no table {}", f.lookup, f.slot))
        })?;
        *table = project(table, &weight, threads, &mut computed)?;
    }
    if computed {
        eprintln!(
            "{}",
            report(graph, folds, t0.elapsed().as_secs_f64(), threads)
        );
    }
    Ok(())
}

/// What a load folded and what it pays: the layers, the projection's cost (seconds at load and
/// bytes of projected tables) and the GEMM work a request saves per sample.
pub(crate) fn report(graph: &OpGraph, folds: &[Fold], secs: f64, threads: usize) -> String {
    let (mut bytes, mut flops) = (0usize, 0.0f64);
    for f in folds {
        let op = graph.op(f.linear);
        let rows = match &graph.op(f.lookup).kind {
            OpKind::EmbeddingBag { feature } => graph.spec.features[*feature].rows,
            OpKind::TableBatchedEmbeddingBag { features } => {
                graph.spec.features[features[f.slot]].rows
            }
            _ => 0,
        };
        bytes += rows * op.width * 4;
        flops += graph.flops(f.linear, 1);
    }
    format!(
        "cpu fold: {} linear layers of {} folded into their tables, bias and activation applied \
         in the lookup's write: it pays (no pass of its own per request; {:.3} MFLOP of GEMM \
         saved per sample) for {:.2} s at load on {threads} thread(s) and {:.2} GB of projected \
         tables",
        folds.len(),
        graph.spec.name,
        flops / 1e6,
        secs,
        bytes as f64 / 1e9,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamrec_graph::{fuse_embeddings, Op, TensorRef};

    fn graph(branch: &str, rows: usize) -> OpGraph {
        crate::backend::shared::small_graph(3, rows, branch, r#"kind = "cat""#)
    }

    #[test]
    fn a_square_layer_that_alone_reads_a_lookup_folds_into_its_table() {
        let g = graph("branch = [8, 4]", 10);
        let folds = plan(&g);
        assert_eq!(folds.len(), 3, "{folds:?}");
        for f in &folds {
            // Each branch's first layer (8 -> 8) over its own lookup's whole output.
            let OpKind::EmbeddingBag { feature } = g.op(f.lookup).kind else {
                panic!("{f:?}: not a lookup");
            };
            assert_eq!(f.slot, 0);
            let input = &g.op(f.linear).inputs[0];
            assert_eq!(
                (input.src, input.col, input.width),
                (Source::Op(f.lookup), 0, 8)
            );
            assert_eq!(g.op(f.linear).feature, Some(feature));
        }
        // Fused lookups (two groups: features 0-1 and 2): the same layers, each at its slot.
        let fused = fuse_embeddings(&g, 2).unwrap();
        let mut slots: Vec<usize> = plan(&fused).iter().map(|f| f.slot).collect();
        slots.sort_unstable();
        assert_eq!(slots, [0, 0, 1]);
    }

    #[test]
    fn nothing_folds_unless_the_layer_is_square_and_the_only_reader_of_its_rows() {
        // The first layer is 8 -> 4: its product is narrower than the table.
        assert!(plan(&graph("branch = [4, 8]", 10)).is_empty());
        // No branches: the lookups feed the concat.
        assert!(plan(&graph("", 10)).is_empty());
        // Projected tables beyond FOLD_MAX_BYTES (3 x 50M rows x 8 floats).
        assert!(plan(&graph("branch = [8]", 50_000_000)).is_empty());
        // A lookup also read by the concat: its layer does not fold, the others do.
        let g = graph("branch = [8]", 10);
        let mut ops: Vec<Op> = g.ops().cloned().collect();
        let lookup = (0..g.len())
            .find(|&i| matches!(g.op(i).kind, OpKind::EmbeddingBag { feature: 1 }))
            .unwrap();
        let cat = g.find("concat").unwrap();
        ops[cat].inputs.push(TensorRef {
            src: Source::Op(lookup),
            col: 0,
            width: 8,
        });
        ops[cat].width += 8;
        let g2 = OpGraph::from_ops(g.spec.clone(), ops).expect("a valid graph");
        let folds = plan(&g2);
        assert_eq!(folds.len(), 2, "{folds:?}");
        assert!(folds.iter().all(|f| f.lookup != lookup));
    }
}
