//! The cost model: each op's standalone time and device share, estimated or measured.
//!
//! The estimate is a roofline with a floor. A device has `units` of throughput (SMs or cores)
//! sharing `peak_flops` and `mem_bandwidth` evenly. An op's work, in unit-microseconds, is the
//! larger of its FLOPs over one unit's FLOP/s and its bytes over one unit's bandwidth. A kernel
//! occupies `clamp(work / min_kernel_us, 1, max_units_per_kernel)` units, so a small kernel fills
//! only a fraction of a GPU and many of them can overlap; its standalone time is
//! `max(min_kernel_us, work / units_used)`. Work is conserved: time x units is the roofline time of
//! the whole device, so a big kernel running alone takes its roofline time.
//!
//! Measured per-op times ([`MeasuredCosts`], written by `streamrec run --profile`) replace the
//! estimated standalone time of every op they name. A measured op occupies its estimated work over
//! its measured time in units (at least one, at most `max_units_per_kernel`): a gather that runs at
//! half the roofline leaves half the GPU to concurrent kernels, as the H200 measurements show
//! (26 bags at batch 4096: 287 us on one stream, 157 us on four). On the CPU profile every kernel
//! occupies one core either way.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::GraphError;
use crate::ir::{OpGraph, OpId, OpKind};
use crate::profile::DeviceProfile;

/// Measured standalone op times: op name -> batch size (a decimal string) -> microseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MeasuredCosts {
    /// The device they were measured on.
    pub device: String,
    /// Op name -> batch size -> microseconds.
    pub ops: BTreeMap<String, BTreeMap<String, f64>>,
}

impl MeasuredCosts {
    /// Reads measured costs from a `.json` or `.toml` file (by extension) and checks them.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, GraphError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| GraphError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let m: Self = match extension(path)? {
            Format::Json => serde_json::from_str(&text)
                .map_err(|e| GraphError::Invalid(format!("{}: {e}", path.display())))?,
            Format::Toml => toml::from_str(&text).map_err(|e| {
                GraphError::Toml(format!("{}: {}", path.display(), e.message().trim()))
            })?,
        };
        m.check()?;
        Ok(m)
    }

    /// Writes measured costs to a `.json` or `.toml` file (by extension).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), GraphError> {
        let path = path.as_ref();
        let text = match extension(path)? {
            Format::Json => serde_json::to_string_pretty(self).expect("measured costs serialise"),
            Format::Toml => {
                toml::to_string(self).map_err(|e| GraphError::Invalid(e.to_string()))?
            }
        };
        std::fs::write(path, text).map_err(|e| GraphError::Io {
            path: path.to_path_buf(),
            source: e,
        })
    }

    /// Checks that every batch key is a positive integer and every time finite and >= 0.
    pub fn check(&self) -> Result<(), GraphError> {
        for (op, per_batch) in &self.ops {
            for (b, us) in per_batch {
                if b.parse::<usize>().map_or(true, |b| b == 0) {
                    return Err(GraphError::Invalid(format!(
                        "measured costs: op `{op}`: batch size `{b}` is not a positive integer"
                    )));
                }
                if !(us.is_finite() && *us >= 0.0) {
                    return Err(GraphError::Invalid(format!(
                        "measured costs: op `{op}` at batch {b}: {us} is not a time in microseconds"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Records one measurement.
    pub fn insert(&mut self, op: &str, batch: usize, us: f64) {
        self.ops
            .entry(op.to_string())
            .or_default()
            .insert(batch.to_string(), us);
    }
}

enum Format {
    Json,
    Toml,
}

fn extension(path: &Path) -> Result<Format, GraphError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => Ok(Format::Json),
        Some("toml") => Ok(Format::Toml),
        _ => Err(GraphError::Invalid(format!(
            "{}: measured costs must be a .json or .toml file",
            path.display()
        ))),
    }
}

/// Estimates op times on a device, preferring measured times where there are any.
#[derive(Clone, Debug)]
pub struct CostModel {
    profile: DeviceProfile,
    /// Op name -> (batch, microseconds), sorted by batch.
    measured: HashMap<String, Vec<(f64, f64)>>,
}

impl CostModel {
    /// A cost model estimating every op from the profile.
    pub fn new(profile: DeviceProfile) -> Self {
        Self {
            profile,
            measured: HashMap::new(),
        }
    }

    /// Uses these measured standalone times where they name an op. Entries whose batch key is
    /// not a positive integer are skipped ([`MeasuredCosts::load`] rejects them).
    pub fn with_measured(mut self, m: MeasuredCosts) -> Self {
        for (op, per_batch) in m.ops {
            let mut pts: Vec<(f64, f64)> = per_batch
                .iter()
                .filter_map(|(b, &us)| match b.parse::<usize>() {
                    Ok(b) if b > 0 && us.is_finite() && us >= 0.0 => Some((b as f64, us)),
                    _ => None,
                })
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            if !pts.is_empty() {
                self.measured.insert(op, pts);
            }
        }
        self
    }

    /// The device profile.
    pub fn profile(&self) -> &DeviceProfile {
        &self.profile
    }

    /// True when some op has a measured time.
    pub fn has_measured(&self) -> bool {
        !self.measured.is_empty()
    }

    /// Standalone time of an op at this batch size, in microseconds: measured when the op is
    /// measured, else estimated.
    pub fn op_us(&self, g: &OpGraph, op: OpId, batch: usize) -> f64 {
        match self.measured_us(&g.op(op).name, batch) {
            Some(us) => us,
            None => self.estimate(g, op, batch).0,
        }
    }

    /// Units of the device the op occupies while it runs: from the estimate, or for a measured op
    /// its estimated work over its measured time (a kernel slower than its roofline is taken to
    /// leave part of the device to others).
    pub fn op_units(&self, g: &OpGraph, op: OpId, batch: usize) -> f64 {
        let (t, units) = self.estimate(g, op, batch);
        match self.measured_us(&g.op(op).name, batch) {
            Some(us) if us > 0.0 => {
                let work = t * units;
                (work / us).clamp(1.0, self.profile.max_units_per_kernel)
            }
            _ => units,
        }
    }

    /// The time a stream is busy with an op when planning: its standalone time plus the per-node
    /// gap of a graph replay.
    pub fn stream_us(&self, g: &OpGraph, op: OpId, batch: usize) -> f64 {
        self.op_us(g, op, batch) + self.profile.graph_node_us
    }

    /// The estimate: (standalone microseconds, units occupied).
    pub fn estimate(&self, g: &OpGraph, op: OpId, batch: usize) -> (f64, f64) {
        let p = &self.profile;
        let unit_flops = p.peak_flops / p.units;
        let unit_bw = p.mem_bandwidth / p.units;
        let work_us = (g.flops(op, batch) / unit_flops).max(g.bytes(op, batch) / unit_bw) * 1e6;
        let cap = match g.op(op).kind {
            OpKind::EmbeddingBag { .. } => {
                (p.max_units_per_kernel * p.gather_efficiency.min(1.0)).max(1.0)
            }
            _ => p.max_units_per_kernel,
        };
        let units = (work_us / p.min_kernel_us).clamp(1.0, cap);
        ((work_us / units).max(p.min_kernel_us), units)
    }

    /// The measured time of an op by name, interpolated linearly in the batch size between the
    /// nearest measured sizes; above the largest it grows in proportion to the batch, below the
    /// smallest it stays at the smallest's time (kernels do not get faster than their floor).
    pub fn measured_us(&self, name: &str, batch: usize) -> Option<f64> {
        let pts = self.measured.get(name)?;
        let b = batch as f64;
        let (first, last) = (pts[0], pts[pts.len() - 1]);
        if b <= first.0 {
            return Some(first.1);
        }
        if b >= last.0 {
            return Some(last.1 * b / last.0);
        }
        let i = pts.partition_point(|p| p.0 <= b);
        let (lo, hi) = (pts[i - 1], pts[i]);
        Some(lo.1 + (hi.1 - lo.1) * (b - lo.0) / (hi.0 - lo.0))
    }
}
