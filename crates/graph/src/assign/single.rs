//! `single`: every op on one stream in topological order, the baseline.

use crate::error::GraphError;
use crate::ir::OpGraph;
use crate::plan::Plan;

/// The single-stream plan.
pub(crate) fn plan(g: &OpGraph) -> Result<Plan, GraphError> {
    Plan::from_streams(g, "single", vec![g.topo_order()])
}
