//! Execution plans: per stream an ordered list of op launches, event records and waits.
//!
//! A plan is built from a partition of the ops into ordered per-stream lists
//! ([`Plan::from_streams`]). Sync minimisation tracks the happens-before relation with vector
//! clocks: `clock[b][a]` counts the ops of stream `a` known to be finished before the current point
//! of stream `b` (by program order and the waits so far). A cross-stream dependency gets an event
//! only when that clock does not already cover the producer; several producers on one stream need
//! one wait (on the latest), and the latest producers are waited on first, since their events
//! carry the most knowledge. [`Plan::validate`] re-derives the happens-before closure from the
//! steps alone and proves every graph edge ordered.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use serde::Serialize;

use crate::error::GraphError;
use crate::ir::{OpGraph, OpId};

/// Index of an event in a plan (`0..plan.num_events`).
pub type EventId = usize;

/// One step of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Step {
    /// Run this op.
    Launch(OpId),
    /// Record this event (it fires when everything before it on the stream has finished).
    Record(EventId),
    /// Make everything after this on the stream wait for the event.
    Wait(EventId),
}

/// An assignment of a graph's ops to streams with the events that order them.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    /// The algorithm that built it.
    pub algo: String,
    /// Per stream, its steps in order.
    pub streams: Vec<Vec<Step>>,
    /// Number of events; every event `0..num_events` is recorded exactly once.
    pub num_events: usize,
}

impl Plan {
    /// Number of streams.
    pub fn num_streams(&self) -> usize {
        self.streams.len()
    }

    /// Number of wait steps.
    pub fn num_waits(&self) -> usize {
        self.streams
            .iter()
            .flatten()
            .filter(|s| matches!(s, Step::Wait(_)))
            .count()
    }

    /// Number of events.
    pub fn num_events(&self) -> usize {
        self.num_events
    }

    /// Number of op launches.
    pub fn num_ops(&self) -> usize {
        self.streams
            .iter()
            .flatten()
            .filter(|s| matches!(s, Step::Launch(_)))
            .count()
    }

    /// Per op id, its stream (`usize::MAX` for an op the plan does not launch).
    pub fn stream_of(&self) -> Vec<usize> {
        let n = self
            .streams
            .iter()
            .flatten()
            .filter_map(|s| match s {
                Step::Launch(op) => Some(op + 1),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let mut out = vec![usize::MAX; n];
        for (s, steps) in self.streams.iter().enumerate() {
            for step in steps {
                if let Step::Launch(op) = step {
                    out[*op] = s;
                }
            }
        }
        out
    }

    /// Per stream, its ops in launch order.
    pub fn stream_ops(&self) -> Vec<Vec<OpId>> {
        self.streams
            .iter()
            .map(|steps| {
                steps
                    .iter()
                    .filter_map(|s| match s {
                        Step::Launch(op) => Some(*op),
                        _ => None,
                    })
                    .collect()
            })
            .collect()
    }

    /// Everything on one stream in topological order, no events.
    pub fn single(g: &OpGraph) -> Plan {
        Plan {
            algo: "single".into(),
            streams: vec![g.topo_order().into_iter().map(Step::Launch).collect()],
            num_events: 0,
        }
    }

    /// Builds a plan from per-stream op lists, emitting an event record and wait only for the
    /// cross-stream dependencies the happens-before closure does not already imply. Empty streams
    /// are dropped. Fails when the lists are not a partition of the ops or contradict the graph's
    /// dependencies. In debug builds the result is validated.
    pub fn from_streams(
        g: &OpGraph,
        algo: &str,
        streams: Vec<Vec<OpId>>,
    ) -> Result<Plan, GraphError> {
        let preds: Vec<Vec<OpId>> = (0..g.len()).map(|v| g.preds(v)).collect();
        Self::from_streams_with(g, algo, streams, &preds)
    }

    /// Like [`Plan::from_streams`], but only the dependencies `preds[v]` are ordered explicitly;
    /// they must imply all of the graph's edges (e.g. its transitive reduction).
    pub fn from_streams_with(
        g: &OpGraph,
        algo: &str,
        streams: Vec<Vec<OpId>>,
        preds: &[Vec<OpId>],
    ) -> Result<Plan, GraphError> {
        let n = g.len();
        let streams: Vec<Vec<OpId>> = streams.into_iter().filter(|s| !s.is_empty()).collect();
        let k = streams.len();
        // (stream, position) of every op.
        let mut pos = vec![(usize::MAX, 0usize); n];
        for (s, ops) in streams.iter().enumerate() {
            for (i, &op) in ops.iter().enumerate() {
                if op >= n {
                    return Err(GraphError::Invalid(format!(
                        "{algo}: op {op} is not in the graph"
                    )));
                }
                if pos[op].0 != usize::MAX {
                    return Err(GraphError::Invalid(format!(
                        "{algo}: op {op} is assigned twice"
                    )));
                }
                pos[op] = (s, i);
            }
        }
        if let Some(op) = pos.iter().position(|p| p.0 == usize::MAX) {
            return Err(GraphError::Invalid(format!(
                "{algo}: op {op} ({}) is not assigned",
                g.op(op).name
            )));
        }
        // A global order consistent with the dependencies and every stream's order (Kahn,
        // smallest op id first).
        let mut indeg: Vec<usize> = (0..n)
            .map(|v| preds[v].len() + usize::from(pos[v].1 > 0))
            .collect();
        let mut succs: Vec<Vec<OpId>> = vec![Vec::new(); n];
        for (v, ps) in preds.iter().enumerate() {
            for &p in ps {
                succs[p].push(v);
            }
        }
        let mut heap: BinaryHeap<Reverse<OpId>> =
            (0..n).filter(|&v| indeg[v] == 0).map(Reverse).collect();
        let mut order = Vec::with_capacity(n);
        let mut rank = vec![0usize; n];
        while let Some(Reverse(v)) = heap.pop() {
            rank[v] = order.len();
            order.push(v);
            let (s, i) = pos[v];
            let next = streams[s].get(i + 1).copied();
            for &w in succs[v].iter().chain(next.iter()) {
                indeg[w] -= 1;
                if indeg[w] == 0 {
                    heap.push(Reverse(w));
                }
            }
        }
        if order.len() < n {
            return Err(GraphError::Invalid(format!(
                "{algo}: the stream orders contradict the graph's dependencies"
            )));
        }
        // Vector clocks.
        let mut cur = vec![0u32; k * k];
        let mut after = vec![0u32; n * k];
        let mut event_of: HashMap<OpId, EventId> = HashMap::new();
        let mut waits: Vec<Vec<EventId>> = vec![Vec::new(); n];
        let mut num_events = 0;
        let mut need: Vec<OpId> = Vec::new();
        for &v in &order {
            let (b, i) = pos[v];
            // The latest producer on each other stream that is not yet known to be finished.
            need.clear();
            for &p in &preds[v] {
                let (a, j) = pos[p];
                if a == b || cur[b * k + a] as usize > j {
                    continue;
                }
                match need.iter_mut().find(|q| pos[**q].0 == a) {
                    Some(q) if pos[*q].1 < j => *q = p,
                    Some(_) => {}
                    None => need.push(p),
                }
            }
            need.sort_by_key(|&p| Reverse(rank[p]));
            for &p in &need {
                let (a, j) = pos[p];
                if cur[b * k + a] as usize > j {
                    continue;
                }
                let e = *event_of.entry(p).or_insert_with(|| {
                    num_events += 1;
                    num_events - 1
                });
                waits[v].push(e);
                for c in 0..k {
                    cur[b * k + c] = cur[b * k + c].max(after[p * k + c]);
                }
            }
            cur[b * k + b] = i as u32 + 1;
            after[v * k..v * k + k].copy_from_slice(&cur[b * k..b * k + k]);
        }
        let steps = streams
            .iter()
            .map(|ops| {
                let mut out = Vec::with_capacity(ops.len());
                for &op in ops {
                    out.extend(waits[op].iter().map(|&e| Step::Wait(e)));
                    out.push(Step::Launch(op));
                    if let Some(&e) = event_of.get(&op) {
                        out.push(Step::Record(e));
                    }
                }
                out
            })
            .collect();
        let plan = Plan {
            algo: algo.to_string(),
            streams: steps,
            num_events,
        };
        if cfg!(debug_assertions) {
            plan.validate(g)?;
        }
        Ok(plan)
    }

    /// A host issue order of all steps as (stream, step): each stream's steps in its order, every
    /// `Record(e)` before any `Wait(e)`. Records and ready waits are issued as soon as they reach
    /// the head of their stream; among launches the smallest op id goes first. Deterministic. For
    /// a plan that deadlocks, the blocked steps follow in stream order.
    pub fn issue_order(&self) -> Vec<(usize, Step)> {
        let max_event = self
            .streams
            .iter()
            .flatten()
            .filter_map(|s| match s {
                Step::Record(e) | Step::Wait(e) => Some(e + 1),
                Step::Launch(_) => None,
            })
            .max()
            .unwrap_or(0);
        let mut recorded = vec![false; max_event.max(self.num_events)];
        let mut head = vec![0usize; self.streams.len()];
        let total: usize = self.streams.iter().map(Vec::len).sum();
        let mut out = Vec::with_capacity(total);
        loop {
            // Issue every record and ready wait at a stream head, until none is left.
            let mut progress = true;
            while progress {
                progress = false;
                for (s, steps) in self.streams.iter().enumerate() {
                    while let Some(&step) = steps.get(head[s]) {
                        match step {
                            Step::Record(e) => recorded[e] = true,
                            Step::Wait(e) if recorded[e] => {}
                            _ => break,
                        }
                        out.push((s, step));
                        head[s] += 1;
                        progress = true;
                    }
                }
            }
            let next = self
                .streams
                .iter()
                .enumerate()
                .filter_map(|(s, steps)| match steps.get(head[s]) {
                    Some(Step::Launch(op)) => Some((*op, s)),
                    _ => None,
                })
                .min();
            match next {
                Some((op, s)) => {
                    out.push((s, Step::Launch(op)));
                    head[s] += 1;
                }
                None => break,
            }
        }
        for (s, steps) in self.streams.iter().enumerate() {
            out.extend(steps[head[s]..].iter().map(|&step| (s, step)));
        }
        out
    }

    /// Proves the plan correct for this graph: every op launched exactly once, no stream empty,
    /// every event `0..num_events` recorded exactly once and only those waited on, every record
    /// issued before the waits on it, and every graph edge ordered by program order plus
    /// record/wait (the happens-before closure, computed with vector clocks over the steps).
    pub fn validate(&self, g: &OpGraph) -> Result<(), GraphError> {
        let bad = |msg: String| Err(GraphError::Invalid(format!("plan {}: {msg}", self.algo)));
        let n = g.len();
        let k = self.streams.len();
        if k == 0 {
            return bad("has no streams".into());
        }
        // (stream, launch index) per op.
        let mut pos = vec![(usize::MAX, 0usize); n];
        let mut record_at = vec![usize::MAX; self.num_events];
        for (s, steps) in self.streams.iter().enumerate() {
            if steps.is_empty() {
                return bad(format!("stream {s} is empty"));
            }
            let mut li = 0;
            for step in steps {
                match *step {
                    Step::Launch(op) => {
                        if op >= n {
                            return bad(format!(
                                "stream {s} launches op {op}, which is not in the graph"
                            ));
                        }
                        if pos[op].0 != usize::MAX {
                            return bad(format!("op {op} ({}) is launched twice", g.op(op).name));
                        }
                        pos[op] = (s, li);
                        li += 1;
                    }
                    Step::Record(e) => {
                        if e >= self.num_events {
                            return bad(format!(
                                "stream {s} records event {e} of {}",
                                self.num_events
                            ));
                        }
                        if record_at[e] != usize::MAX {
                            return bad(format!("event {e} is recorded twice"));
                        }
                        record_at[e] = s;
                    }
                    Step::Wait(e) => {
                        if e >= self.num_events {
                            return bad(format!(
                                "stream {s} waits on event {e} of {}",
                                self.num_events
                            ));
                        }
                    }
                }
            }
        }
        if let Some(op) = pos.iter().position(|p| p.0 == usize::MAX) {
            return bad(format!("op {op} ({}) is not launched", g.op(op).name));
        }
        if let Some(e) = record_at.iter().position(|&s| s == usize::MAX) {
            return bad(format!("event {e} is never recorded"));
        }
        let mut issued = vec![false; self.num_events];
        for (s, step) in self.issue_order() {
            match step {
                Step::Record(e) => issued[e] = true,
                Step::Wait(e) if !issued[e] => {
                    return bad(format!(
                        "stream {s} waits on event {e} before it is recorded"
                    ));
                }
                _ => {}
            }
        }
        // Happens-before closure: walk the steps in a dependency order, carrying vector clocks.
        let mut clock = vec![0u32; k * k];
        let mut event_clock = vec![0u32; self.num_events * k];
        let mut op_clock = vec![0u32; n * k];
        let mut recorded = vec![false; self.num_events];
        let mut blocked: Vec<Vec<usize>> = vec![Vec::new(); self.num_events];
        let mut head = vec![0usize; k];
        let mut launches = vec![0u32; k];
        let mut ready: Vec<usize> = (0..k).collect();
        while let Some(s) = ready.pop() {
            while let Some(&step) = self.streams[s].get(head[s]) {
                let row = s * k..s * k + k;
                match step {
                    Step::Launch(op) => {
                        op_clock[op * k..op * k + k].copy_from_slice(&clock[row]);
                        launches[s] += 1;
                        clock[s * k + s] = launches[s];
                    }
                    Step::Record(e) => {
                        event_clock[e * k..e * k + k].copy_from_slice(&clock[row]);
                        recorded[e] = true;
                        ready.append(&mut blocked[e]);
                    }
                    Step::Wait(e) => {
                        if !recorded[e] {
                            blocked[e].push(s);
                            break;
                        }
                        for c in 0..k {
                            clock[s * k + c] = clock[s * k + c].max(event_clock[e * k + c]);
                        }
                    }
                }
                head[s] += 1;
            }
        }
        if let Some(s) = (0..k).find(|&s| head[s] < self.streams[s].len()) {
            return bad(format!("stream {s} deadlocks at step {}", head[s]));
        }
        for (u, v) in g.edges() {
            let (a, ju) = pos[u];
            let (b, jv) = pos[v];
            let ordered = if a == b {
                ju < jv
            } else {
                op_clock[v * k + a] as usize > ju
            };
            if !ordered {
                return bad(format!(
                    "edge {} -> {} (stream {a} -> stream {b}) is not ordered",
                    g.op(u).name,
                    g.op(v).name
                ));
            }
        }
        Ok(())
    }
}
