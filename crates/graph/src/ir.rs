//! The operator graph: ops with shapes as a function of the batch size, FLOPs and bytes per op.
//!
//! Every tensor is `[B, width]` f32 (the table-batched embedding's `[B, T, D]` is stored as
//! `[B, T * D]`), so an op's output is described by its width alone. Inputs are column slices of
//! a producer's output ([`TensorRef`]), which lets a rewrite feed each consumer its part of a
//! fused op's output without a copy.

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use serde::Serialize;

use crate::spec::{Interaction, ModelSpec, PoolingMode};

/// Index of an op in its graph (dense, `0..graph.len()`, and a topological order).
pub type OpId = usize;

/// Activation fused into a linear op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Act {
    /// None.
    None,
    /// max(x, 0).
    Relu,
    /// 1 / (1 + e^-x).
    Sigmoid,
}

/// Where an op input comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Source {
    /// The dense request input `[B, dense]`.
    Dense,
    /// The indices and offsets of a sparse feature (only read by embedding ops).
    Sparse(usize),
    /// The output of another op.
    Op(OpId),
}

/// A column slice `[col, col + width)` of a source's `[B, _]` tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct TensorRef {
    /// Producer.
    pub src: Source,
    /// First column.
    pub col: usize,
    /// Number of columns.
    pub width: usize,
}

/// What an op computes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum OpKind {
    /// One feature's embedding bag: `[B, dim]`.
    EmbeddingBag {
        /// The feature (and table) index.
        feature: usize,
    },
    /// Several features' bags in one launch: `[B, sum of dims]`, features in this order.
    TableBatchedEmbeddingBag {
        /// The features, in output column order.
        features: Vec<usize>,
    },
    /// `act(x W^T + b)`, W is `[out, in]`.
    Linear {
        /// Weight tensor name.
        weight: String,
        /// Bias tensor name.
        bias: String,
        /// Fused activation.
        act: Act,
    },
    /// Column-wise concatenation of the inputs.
    Concat,
    /// DLRM dot interaction over the inputs (the first is the bottom output).
    DotInteraction,
    /// DCNv2 low-rank cross layer; inputs are `[x0, xl]`.
    DcnCross {
        /// Layer number (weights `cross.{layer}.u|v|bias`).
        layer: usize,
        /// Low-rank size.
        rank: usize,
    },
    /// A stand-in with given costs, for scheduler tests and generated graphs; not executable.
    Synthetic {
        /// FLOPs per sample.
        flops: f64,
        /// Bytes per sample.
        bytes: f64,
        /// Bytes independent of the batch size (weights).
        fixed_bytes: f64,
    },
}

/// The part of the model an op belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Stage {
    /// Bottom MLP.
    Bottom,
    /// A feature's lookup.
    Embedding,
    /// A feature's branch layers.
    Branch,
    /// The interaction.
    Interaction,
    /// The top MLP.
    Top,
    /// Synthetic ops.
    Other,
}

/// One operator.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Op {
    /// Unique name, e.g. `emb.C1`, `branch.C1.0`, `bottom.0`, `interaction`, `top.3`.
    pub name: String,
    /// What it computes.
    pub kind: OpKind,
    /// Inputs in argument order.
    pub inputs: Vec<TensorRef>,
    /// Output width: the output is `[B, width]`.
    pub width: usize,
    /// The feature whose pipeline this op belongs to, if any.
    pub feature: Option<usize>,
    /// Model stage.
    pub stage: Stage,
}

/// A weight tensor the model needs: name and shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WeightSpec {
    /// Tensor name (the safetensors key).
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
}

/// The operator DAG of a model.
#[derive(Clone, Debug)]
pub struct OpGraph {
    /// The spec it was built from (synthetic graphs carry an empty stand-in).
    pub spec: ModelSpec,
    dag: DiGraph<Op, ()>,
    output: OpId,
}

impl OpGraph {
    /// Builds the graph of a validated spec.
    pub fn from_spec(spec: &ModelSpec) -> Self {
        let mut b = Builder {
            dag: DiGraph::new(),
        };
        let mut x = TensorRef {
            src: Source::Dense,
            col: 0,
            width: spec.dense,
        };
        for (i, &w) in spec.bottom.iter().enumerate() {
            x = b.linear(format!("bottom.{i}"), x, w, Act::Relu, None, Stage::Bottom);
        }
        let mut vectors = vec![x];
        for (f, feat) in spec.features.iter().enumerate() {
            let id = b.add(Op {
                name: format!("emb.{}", feat.name),
                kind: OpKind::EmbeddingBag { feature: f },
                inputs: vec![TensorRef {
                    src: Source::Sparse(f),
                    col: 0,
                    width: 0,
                }],
                width: feat.dim,
                feature: Some(f),
                stage: Stage::Embedding,
            });
            let mut v = whole(id, feat.dim);
            for (i, &w) in feat.branch.iter().enumerate() {
                v = b.linear(
                    format!("branch.{}.{i}", feat.name),
                    v,
                    w,
                    Act::Relu,
                    Some(f),
                    Stage::Branch,
                );
            }
            vectors.push(v);
        }
        let cat_width: usize = vectors.iter().map(|v| v.width).sum();
        let mut x = match spec.interaction {
            Interaction::Dot => {
                let id = b.add(Op {
                    name: "interaction".into(),
                    kind: OpKind::DotInteraction,
                    inputs: vectors,
                    width: spec.interaction_out(),
                    feature: None,
                    stage: Stage::Interaction,
                });
                whole(id, spec.interaction_out())
            }
            Interaction::Cat | Interaction::Dcn { .. } => {
                let id = b.add(Op {
                    name: "concat".into(),
                    kind: OpKind::Concat,
                    inputs: vectors,
                    width: cat_width,
                    feature: None,
                    stage: Stage::Interaction,
                });
                whole(id, cat_width)
            }
        };
        if let Interaction::Dcn { layers, rank } = spec.interaction {
            let x0 = x;
            for layer in 0..layers {
                let id = b.add(Op {
                    name: format!("cross.{layer}"),
                    kind: OpKind::DcnCross { layer, rank },
                    inputs: vec![x0, x],
                    width: cat_width,
                    feature: None,
                    stage: Stage::Interaction,
                });
                x = whole(id, cat_width);
            }
        }
        let n = spec.top.len();
        for (i, &w) in spec.top.iter().enumerate() {
            let act = if i + 1 == n { Act::Sigmoid } else { Act::Relu };
            x = b.linear(format!("top.{i}"), x, w, act, None, Stage::Top);
        }
        let output = match x.src {
            Source::Op(id) => id,
            _ => unreachable!("the top MLP has at least one layer"),
        };
        Self {
            spec: spec.clone(),
            dag: b.dag,
            output,
        }
    }

    /// Builds a graph from ops given in topological order (every `Source::Op` input refers to an
    /// earlier op); the last op is the output.
    pub fn from_ops(spec: ModelSpec, ops: Vec<Op>) -> Result<Self, crate::GraphError> {
        let mut b = Builder {
            dag: DiGraph::new(),
        };
        for (i, op) in ops.into_iter().enumerate() {
            for inp in &op.inputs {
                if let Source::Op(p) = inp.src {
                    if p >= i {
                        return Err(crate::GraphError::Invalid(format!(
                            "op {i} ({}) reads op {p}, which does not come before it",
                            op.name
                        )));
                    }
                }
            }
            b.add(op);
        }
        let n = b.dag.node_count();
        if n == 0 {
            return Err(crate::GraphError::Invalid(
                "a graph needs at least one op".into(),
            ));
        }
        Ok(Self {
            spec,
            dag: b.dag,
            output: n - 1,
        })
    }

    /// A synthetic graph of `n` ops with the given edges `(from, to)`, `from < to`, and per-op
    /// costs `(flops, bytes)` per sample. Used by tests and benchmarks of the scheduler.
    pub fn synthetic(
        n: usize,
        edges: &[(usize, usize)],
        costs: &[(f64, f64)],
    ) -> Result<Self, crate::GraphError> {
        let mut preds: Vec<Vec<usize>> = vec![Vec::new(); n];
        for &(a, b) in edges {
            if a >= b || b >= n {
                return Err(crate::GraphError::Invalid(format!(
                    "edge ({a}, {b}) is not forward in 0..{n}"
                )));
            }
            if !preds[b].contains(&a) {
                preds[b].push(a);
            }
        }
        let ops = (0..n)
            .map(|i| Op {
                name: format!("op{i}"),
                kind: OpKind::Synthetic {
                    flops: costs.get(i).map_or(1.0, |c| c.0),
                    bytes: costs.get(i).map_or(1.0, |c| c.1),
                    fixed_bytes: 0.0,
                },
                inputs: preds[i]
                    .iter()
                    .map(|&p| TensorRef {
                        src: Source::Op(p),
                        col: 0,
                        width: 1,
                    })
                    .collect(),
                width: 1,
                feature: None,
                stage: Stage::Other,
            })
            .collect();
        Self::from_ops(ModelSpec::placeholder(), ops)
    }

    /// Number of ops.
    pub fn len(&self) -> usize {
        self.dag.node_count()
    }

    /// True when the graph has no ops.
    pub fn is_empty(&self) -> bool {
        self.dag.node_count() == 0
    }

    /// The op with this id.
    pub fn op(&self, id: OpId) -> &Op {
        &self.dag[NodeIndex::new(id)]
    }

    /// All ops in id order (a topological order).
    pub fn ops(&self) -> impl Iterator<Item = &Op> + '_ {
        self.dag.node_weights()
    }

    /// The op producing the scores `[B, 1]`.
    pub fn output(&self) -> OpId {
        self.output
    }

    /// Ops this op reads from (deduplicated, ascending).
    pub fn preds(&self, id: OpId) -> Vec<OpId> {
        let mut v: Vec<OpId> = self
            .dag
            .edges_directed(NodeIndex::new(id), Direction::Incoming)
            .map(|e| e.source().index())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Ops that read this op's output (deduplicated, ascending).
    pub fn succs(&self, id: OpId) -> Vec<OpId> {
        let mut v: Vec<OpId> = self
            .dag
            .edges_directed(NodeIndex::new(id), Direction::Outgoing)
            .map(|e| e.target().index())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// All dependency edges `(producer, consumer)`.
    pub fn edges(&self) -> Vec<(OpId, OpId)> {
        self.dag
            .edge_references()
            .map(|e| (e.source().index(), e.target().index()))
            .collect()
    }

    /// The underlying petgraph DAG.
    pub fn dag(&self) -> &DiGraph<Op, ()> {
        &self.dag
    }

    /// Op ids in a topological order (ids are assigned in one).
    pub fn topo_order(&self) -> Vec<OpId> {
        (0..self.len()).collect()
    }

    /// Id of the op with this name.
    pub fn find(&self, name: &str) -> Option<OpId> {
        self.ops().position(|o| o.name == name)
    }

    /// Output shape of an op at batch size `b`.
    pub fn out_shape(&self, id: OpId, batch: usize) -> Vec<usize> {
        let op = self.op(id);
        match &op.kind {
            OpKind::TableBatchedEmbeddingBag { features } => {
                let dims: Vec<usize> = features
                    .iter()
                    .map(|&f| self.spec.features[f].dim)
                    .collect();
                if dims.iter().all(|&d| d == dims[0]) {
                    vec![batch, features.len(), dims[0]]
                } else {
                    vec![batch, op.width]
                }
            }
            _ => vec![batch, op.width],
        }
    }

    /// Width of an input slice's source tensor.
    pub fn source_width(&self, src: Source) -> usize {
        match src {
            Source::Dense => self.spec.dense,
            Source::Sparse(f) => self.spec.features[f].dim,
            Source::Op(p) => self.op(p).width,
        }
    }

    /// Floating-point operations of an op at batch size `b`.
    pub fn flops(&self, id: OpId, batch: usize) -> f64 {
        let b = batch as f64;
        let op = self.op(id);
        let inw = |i: usize| op.inputs.get(i).map_or(0, |t| t.width) as f64;
        match &op.kind {
            OpKind::EmbeddingBag { feature } => {
                let f = &self.spec.features[*feature];
                b * (f.pooling * f.dim) as f64
            }
            OpKind::TableBatchedEmbeddingBag { features } => features
                .iter()
                .map(|&f| {
                    let f = &self.spec.features[f];
                    b * (f.pooling * f.dim) as f64
                })
                .sum(),
            OpKind::Linear { .. } => 2.0 * b * inw(0) * op.width as f64,
            OpKind::Concat => 0.0,
            OpKind::DotInteraction => {
                let n = op.inputs.len() as f64;
                let d = inw(0);
                b * n * (n - 1.0) / 2.0 * 2.0 * d
            }
            OpKind::DcnCross { rank, .. } => {
                let w = op.width as f64;
                b * (4.0 * w * *rank as f64 + 3.0 * w)
            }
            OpKind::Synthetic { flops, .. } => b * flops,
        }
    }

    /// Bytes an op moves at batch size `b` (weights and table rows read, activations read and
    /// written).
    pub fn bytes(&self, id: OpId, batch: usize) -> f64 {
        let b = batch as f64;
        let op = self.op(id);
        let act_in: f64 = op.inputs.iter().map(|t| t.width as f64).sum::<f64>() * 4.0 * b;
        let act_out = op.width as f64 * 4.0 * b;
        let emb = |f: usize| {
            let f = &self.spec.features[f];
            // Rows gathered plus the 8-byte indices and offsets.
            b * (f.pooling as f64 * (f.dim as f64 * 4.0 + 8.0) + 8.0)
        };
        match &op.kind {
            OpKind::EmbeddingBag { feature } => emb(*feature) + act_out,
            OpKind::TableBatchedEmbeddingBag { features } => {
                features.iter().map(|&f| emb(f)).sum::<f64>() + act_out
            }
            OpKind::Linear { .. } => {
                let w = op.inputs[0].width as f64 * op.width as f64 + op.width as f64;
                4.0 * w + act_in + act_out
            }
            OpKind::Concat | OpKind::DotInteraction => act_in + act_out,
            OpKind::DcnCross { rank, .. } => {
                let w = op.width as f64;
                4.0 * (2.0 * w * *rank as f64 + w) + act_in + act_out + 8.0 * b * *rank as f64
            }
            OpKind::Synthetic {
                bytes, fixed_bytes, ..
            } => b * bytes + fixed_bytes,
        }
    }

    /// The weight tensors this graph's ops read, with their shapes, in op order.
    pub fn weights(&self) -> Vec<WeightSpec> {
        let mut out = Vec::new();
        let mut push = |name: String, shape: Vec<usize>| {
            if !out.iter().any(|w: &WeightSpec| w.name == name) {
                out.push(WeightSpec { name, shape });
            }
        };
        for op in self.ops() {
            match &op.kind {
                OpKind::EmbeddingBag { feature } => {
                    let f = &self.spec.features[*feature];
                    push(table_name(&f.name), vec![f.rows, f.dim]);
                }
                OpKind::TableBatchedEmbeddingBag { features } => {
                    for &f in features {
                        let f = &self.spec.features[f];
                        push(table_name(&f.name), vec![f.rows, f.dim]);
                    }
                }
                OpKind::Linear { weight, bias, .. } => {
                    push(weight.clone(), vec![op.width, op.inputs[0].width]);
                    push(bias.clone(), vec![op.width]);
                }
                OpKind::DcnCross { layer, rank } => {
                    push(format!("cross.{layer}.v"), vec![*rank, op.width]);
                    push(format!("cross.{layer}.u"), vec![op.width, *rank]);
                    push(format!("cross.{layer}.bias"), vec![op.width]);
                }
                OpKind::Concat | OpKind::DotInteraction | OpKind::Synthetic { .. } => {}
            }
        }
        out
    }
}

/// Name of a feature's embedding table tensor.
pub fn table_name(feature: &str) -> String {
    format!("emb.{feature}.weight")
}

fn whole(id: OpId, width: usize) -> TensorRef {
    TensorRef {
        src: Source::Op(id),
        col: 0,
        width,
    }
}

struct Builder {
    dag: DiGraph<Op, ()>,
}

impl Builder {
    fn add(&mut self, op: Op) -> OpId {
        let srcs: Vec<OpId> = op
            .inputs
            .iter()
            .filter_map(|t| match t.src {
                Source::Op(p) => Some(p),
                _ => None,
            })
            .collect();
        let id = self.dag.add_node(op);
        let mut seen = Vec::new();
        for p in srcs {
            if !seen.contains(&p) {
                seen.push(p);
                self.dag.add_edge(NodeIndex::new(p), id, ());
            }
        }
        id.index()
    }

    fn linear(
        &mut self,
        name: String,
        x: TensorRef,
        width: usize,
        act: Act,
        feature: Option<usize>,
        stage: Stage,
    ) -> TensorRef {
        let id = self.add(Op {
            kind: OpKind::Linear {
                weight: format!("{name}.weight"),
                bias: format!("{name}.bias"),
                act,
            },
            name,
            inputs: vec![x],
            width,
            feature,
            stage,
        });
        whole(id, width)
    }
}

impl PoolingMode {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolingMode::Sum => "sum",
            PoolingMode::Mean => "mean",
        }
    }
}
