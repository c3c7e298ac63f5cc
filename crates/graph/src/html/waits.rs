//! A plan's cross-stream waits as lines to draw, from the op before the event's record to the
//! op after the wait ([`WaitLine`]): the graph and the timelines both draw them.

use crate::ir::OpId;
use crate::plan::{Plan, Step};

/// A wait of a plan, drawn from the op before its event's record to the op after the wait.
pub(super) struct WaitLine {
    pub(super) event: usize,
    pub(super) from_stream: usize,
    pub(super) to_stream: usize,
    pub(super) from_op: Option<OpId>,
    pub(super) to_op: Option<OpId>,
}

/// The plan's waits, stream by stream, each with the ops it runs between.
pub(super) fn wait_lines(plan: &Plan) -> Vec<WaitLine> {
    let mut rec: Vec<Option<(usize, Option<OpId>)>> = vec![None; plan.num_events];
    for (s, steps) in plan.streams.iter().enumerate() {
        let mut last = None;
        for step in steps {
            match *step {
                Step::Launch(op) => last = Some(op),
                Step::Record(e) => {
                    if let Some(r) = rec.get_mut(e) {
                        *r = Some((s, last));
                    }
                }
                Step::Wait(_) => {}
            }
        }
    }
    let mut out = Vec::new();
    for (s, steps) in plan.streams.iter().enumerate() {
        for (i, step) in steps.iter().enumerate() {
            if let Step::Wait(e) = *step {
                let to_op = steps[i + 1..].iter().find_map(|x| match x {
                    Step::Launch(op) => Some(*op),
                    _ => None,
                });
                let (from_stream, from_op) = rec.get(e).copied().flatten().unwrap_or((s, None));
                out.push(WaitLine {
                    event: e,
                    from_stream,
                    to_stream: s,
                    from_op,
                    to_op,
                });
            }
        }
    }
    out
}
