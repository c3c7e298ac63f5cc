//! Device profiles: the handful of figures the cost model and the simulator need about a device.
//!
//! A profile describes the device as a whole (peak FLOP/s and memory bandwidth of all its units
//! together), how many of its units one kernel can use, the smallest time a kernel takes, and the
//! host-side and device-side overheads of launching work, replaying a graph, synchronising streams
//! with events and synchronising the host at the end. Two profiles are built in: `h200` (from the
//! figures measured on an NVIDIA H200, see docs/h200.md) and `cpu` (our CPU backend: one OS
//! thread per stream, single-threaded kernels, a 2-core machine). Others load from TOML with the
//! same keys.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::GraphError;

/// What the cost model and the simulator know about a device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceProfile {
    /// Profile name, e.g. `h200`.
    pub name: String,
    /// Sustained FLOP/s of the whole device (all units together).
    pub peak_flops: f64,
    /// Sustained memory bandwidth of the whole device in bytes/s (all units together).
    pub mem_bandwidth: f64,
    /// Host time to launch one op eagerly (and to launch one graph replay), in microseconds.
    pub launch_us: f64,
    /// Device-side gap before each node of a replayed graph, in microseconds (eagerly launched
    /// kernels pay it too, after the host's launch cost).
    pub graph_node_us: f64,
    /// Device-side latency of one event record plus the wait on it, in microseconds: from the
    /// record firing to the waiting stream going on (on the CPU, waking the waiting thread).
    pub event_us: f64,
    /// Host time to issue one event record or one wait (eager mode).
    #[serde(default)]
    pub event_host_us: f64,
    /// Host time of the final synchronise (from the last kernel's end to the host resuming).
    pub sync_us: f64,
    /// Latency for an idle stream to pick up work that became available (a sleeping stream
    /// thread waking up on the CPU; zero on a GPU, where it is part of the launch).
    pub wake_us: f64,
    /// The shortest time any kernel takes (launch latency, tail effects), in microseconds.
    pub min_kernel_us: f64,
    /// Units of throughput of the device (SMs on a GPU, cores on a CPU).
    pub units: f64,
    /// The most units one kernel can use on its own (all SMs for a GPU, one core for our
    /// single-threaded CPU kernels).
    pub max_units_per_kernel: f64,
    /// How many kernels can run at once (128 on recent NVIDIA GPUs).
    pub max_concurrent_kernels: usize,
    /// The share of `max_units_per_kernel` one table's embedding bag can use on its own: its
    /// random row gathers cannot keep the whole device busy, so several run side by side.
    #[serde(default = "one")]
    pub gather_efficiency: f64,
}

fn one() -> f64 {
    1.0
}

impl DeviceProfile {
    /// An NVIDIA H200, from the figures measured there (docs/h200.md).
    ///
    /// Peak FLOP/s is the best fp32 cuBLAS SGEMM seen (48 TFLOP/s, no TF32); bandwidth is the HBM3e
    /// figure (4.3 TB/s). Host launch 3.66 us and event record + wait 0.52 us are measured; the
    /// final synchronise is the launch + synchronise round trip less one launch (8.7 - 3.66 us).
    /// The kernel floor (2.0 us) and the per-node gap (0.34 us) reproduce the CUDA-graph replay of
    /// 26 embedding bags at batch 1: 3.66 + 26 x (2.0 + 0.34) + 5.04 = 69.5 us on one stream.
    pub fn h200() -> Self {
        Self {
            name: "h200".into(),
            peak_flops: 48e12,
            mem_bandwidth: 4.3e12,
            launch_us: 3.66,
            graph_node_us: 0.34,
            event_us: 0.52,
            event_host_us: 0.26,
            sync_us: 5.04,
            wake_us: 0.0,
            min_kernel_us: 2.0,
            units: 132.0,
            max_units_per_kernel: 132.0,
            max_concurrent_kernels: 128,
            gather_efficiency: 0.45,
        }
    }

    /// Our CPU backend on a 2-core machine before calibration: a pool of one worker per core
    /// runs the streams, a launch is an enqueue onto a stream's queue (~2 us) and an idle worker
    /// needs a wake-up (~5 us). `calibrate::cpu_profile` measures these on the machine and sets
    /// `units` (and `max_units_per_kernel`: a kernel's tiles may take every worker) to its cores.
    pub fn cpu() -> Self {
        Self {
            name: "cpu".into(),
            peak_flops: 80e9,
            mem_bandwidth: 20e9,
            launch_us: 2.0,
            graph_node_us: 0.5,
            event_us: 10.0,
            event_host_us: 1.0,
            sync_us: 5.0,
            wake_us: 5.0,
            min_kernel_us: 0.5,
            units: 2.0,
            max_units_per_kernel: 1.0,
            max_concurrent_kernels: 1024,
            gather_efficiency: 1.0,
        }
    }

    /// Parses and validates a profile written in TOML (every field is required).
    pub fn from_toml_str(text: &str) -> Result<Self, GraphError> {
        let p: Self = toml::from_str(text)
            .map_err(|e| GraphError::Toml(format!("device profile: {}", e.message().trim())))?;
        p.check()?;
        Ok(p)
    }

    /// Reads a profile from a TOML file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, GraphError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| GraphError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::from_toml_str(&text)
    }

    /// A built-in profile by name (`h200`, `cpu`), else a TOML file at that path.
    pub fn by_name_or_path(s: &str) -> Result<Self, GraphError> {
        match s {
            "h200" => Ok(Self::h200()),
            "cpu" => Ok(Self::cpu()),
            _ if Path::new(s).is_file() => Self::load(s),
            _ => Err(GraphError::Invalid(format!(
                "unknown device profile `{s}`: expected h200, cpu or the path of a TOML profile"
            ))),
        }
    }

    /// Checks that every figure is finite and in range.
    pub fn check(&self) -> Result<(), GraphError> {
        let bad = |field: &str, reason: &str| {
            Err(GraphError::Spec {
                field: format!("profile.{field}"),
                reason: reason.into(),
            })
        };
        for (field, v) in [
            ("peak_flops", self.peak_flops),
            ("mem_bandwidth", self.mem_bandwidth),
            ("min_kernel_us", self.min_kernel_us),
            ("units", self.units),
            ("max_units_per_kernel", self.max_units_per_kernel),
            ("gather_efficiency", self.gather_efficiency),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return bad(field, "must be a finite number > 0");
            }
        }
        for (field, v) in [
            ("launch_us", self.launch_us),
            ("graph_node_us", self.graph_node_us),
            ("event_us", self.event_us),
            ("event_host_us", self.event_host_us),
            ("sync_us", self.sync_us),
            ("wake_us", self.wake_us),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(field, "must be a finite number >= 0");
            }
        }
        if self.max_units_per_kernel > self.units {
            return bad("max_units_per_kernel", "must not exceed units");
        }
        if self.max_units_per_kernel < 1.0 {
            return bad("max_units_per_kernel", "must be >= 1");
        }
        if self.max_concurrent_kernels == 0 {
            return bad("max_concurrent_kernels", "must be >= 1");
        }
        Ok(())
    }

    /// The profile as TOML text (the format [`DeviceProfile::from_toml_str`] reads).
    pub fn to_toml_string(&self) -> String {
        toml::to_string(self).expect("a profile serialises")
    }
}
