//! StreamRec load generator: open-loop request replay with latency histograms.
//!
//! It speaks HTTP (KServe v2 REST, JSON or Triton's binary extension) and gRPC (KServe v2
//! `inference.GRPCInferenceService/ModelInfer` with raw tensor contents, a lean unary call over
//! a few HTTP/2 connections, [`grpc`]), chosen by the target URL's scheme (`http://` or
//! `grpc://`, [`Protocol`]), and links none of the engine crates (the spec parser of streamrec-graph and the wire format of
//! streamrec-protocol only). A run is: a [`Schedule`] of intended send times ([`schedule::build`]:
//! constant, Poisson or a rescaled trace, split into shards), batch sizes set on it
//! ([`BatchSizes::apply`]), request bodies prepared up front ([`Bodies`], from the model's
//! [`ModelInputs`]), then [`run()`]: an open-loop sender whose latencies run from the intended
//! times, into HdrHistograms and a JSON [`Summary`] ([`RunResult`]); shards [`merge()`] exactly
//! (after checking that they are shards of one load). The run watches its own send lag: more
//! than 1% of requests later than [`RunConfig::max_send_lag`] and the summary says the
//! generator saturated (the run is invalid). [`RunConfig::cpus`] pins the run's threads to a
//! [`CpuSet`] (so that a server pinned elsewhere never shares a core with the generator).
//! [`out::prepare`] makes an output folder ready
//! without deleting anything the tool did not write.
//!
//! A Poisson schedule split into two shards, and an exact merge of the shards' histograms
//! (here of the schedule's gaps; a run records latencies the same way):
//!
//! ```
//! use std::time::Duration;
//! use streamrec_loadgen::results::histogram;
//! use streamrec_loadgen::{schedule, ScheduleConfig, ScheduleKind, Shard};
//!
//! let (mut total, mut merged) = (0, histogram());
//! for i in 0..2 {
//!     let s = schedule::build(&ScheduleConfig {
//!         kind: ScheduleKind::Poisson,
//!         qps: 1000.0,
//!         duration: Duration::from_secs(10),
//!         max_requests: None,
//!         seed: 7,
//!         shard: Shard::new(i, 2)?,
//!     })?;
//!     total += s.arrivals.len();
//!     let mut gaps_us = histogram();
//!     for w in s.arrivals.windows(2) {
//!         gaps_us.record(((w[1].at_ns - w[0].at_ns) / 1000).max(1))?;
//!     }
//!     merged.add(&gaps_us)?;
//! }
//! // Two shards of Poisson(500/s) for 10 s: about 10,000 arrivals in all.
//! assert!((9_500..10_500).contains(&total), "{total}");
//! assert_eq!(merged.len() as usize, total - 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Against a running server (`streamrec serve workloads/tiny.toml`):
//!
//! ```no_run
//! use std::time::Duration;
//! use streamrec_loadgen::*;
//!
//! let target = Target::new("http://127.0.0.1:8000", "tiny");
//! let inputs = ModelInputs::from_spec_file("workloads/tiny.toml".as_ref(), None).unwrap();
//! let spec = LoadSpec {
//!     schedule: ScheduleConfig {
//!         kind: ScheduleKind::Poisson,
//!         qps: 1000.0,
//!         duration: Duration::from_secs(10),
//!         max_requests: None,
//!         seed: 1,
//!         shard: Shard::ALL,
//!     },
//!     batch: BatchSizes::Fixed(1),
//!     max_batch: 256,
//!     bodies: BodyConfig::default(),
//!     run: RunConfig::default(),
//! };
//! let result = run_load(&target, &inputs, &spec).unwrap();
//! println!("p99 {} us at {:.0} req/s", result.summary.latency_us.p99, result.summary.achieved_qps);
//! ```

#![warn(missing_docs)]

pub mod body;
pub mod cpus;
pub mod error;
pub mod grpc;
pub mod merge;
pub mod model;
pub mod out;
pub mod probe;
pub mod results;
pub mod run;
pub mod schedule;
pub mod sizes;
pub mod skew;
mod timer;
pub mod trace;

pub use body::{grpc_message, Bodies, Body, BodyConfig, BodyFormat};
pub use cpus::CpuSet;
pub use error::LoadError;
pub use merge::{merge, merge_dirs, MergeOptions};
pub use model::{FeatureInput, ModelInputs};
pub use probe::{fetch_metadata, http_get, wait_ready, wait_ready_noting};
pub use results::{
    describe, partial_note, saturation_note, Outcome, Percentiles, Record, RunResult, Summary,
};
pub use run::{default_connections, run, Protocol, RunConfig, Target};
pub use schedule::{parse_duration, Arrival, Schedule, ScheduleConfig, ScheduleKind, Shard};
pub use sizes::BatchSizes;
pub use skew::{Skew, PRODUCTION_ZIPF};
pub use trace::Trace;

/// Everything about a load except the target and the model's inputs.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Arrival process, rate, duration, seed and shard.
    pub schedule: ScheduleConfig,
    /// Per-request batch sizes.
    pub batch: BatchSizes,
    /// The server's max batch (drawn and mapped sizes are clamped to it).
    pub max_batch: u32,
    /// Body format, skew and variants; its seed is replaced by one derived from the
    /// schedule's seed and shard.
    pub bodies: BodyConfig,
    /// Connections, timeout, threads, CPUs, records, progress.
    pub run: RunConfig,
}

/// Builds the schedule and the bodies, then runs it: the whole of `streamrec load`.
pub fn run_load(
    target: &Target,
    inputs: &ModelInputs,
    spec: &LoadSpec,
) -> Result<RunResult, LoadError> {
    let (sched, bodies) = prepare(inputs, spec)?;
    run(target, &sched, &bodies, &spec.run)
}

/// The schedule (with batch sizes) and the bodies of a load, without sending anything.
pub fn prepare(inputs: &ModelInputs, spec: &LoadSpec) -> Result<(Schedule, Bodies), LoadError> {
    let mut sched = schedule::build(&spec.schedule)?;
    spec.batch.apply(&mut sched, spec.max_batch)?;
    let cfg = BodyConfig {
        seed: schedule::derive_seed(spec.schedule.seed, spec.schedule.shard.index, 2),
        ..spec.bodies.clone()
    };
    let bodies = Bodies::for_schedule(inputs, &sched, &cfg)?;
    Ok((sched, bodies))
}
