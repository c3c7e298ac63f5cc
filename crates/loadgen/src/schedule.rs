//! Schedules of intended send times: constant rate, Poisson arrivals (exponential gaps from a
//! seed, as MLPerf LoadGen's Server scenario) and trace replay (real arrival times rescaled to
//! a target mean rate, order kept), each split exactly into shards.
//!
//! Shard `i` of `n` gets: for `constant`, arrivals `i, i + n, i + 2n, ...` of the full-rate
//! schedule; for `trace`, rows `j` with `j mod n == i` of the rescaled (and, past its end,
//! repeated) trace; for `poisson`, an independent Poisson process of rate `Q / n` from its own
//! seed (the superposition of `n` independent Poisson(Q/n) processes is Poisson(Q)). A request
//! cap (`max_requests`) is a cap on the total over all shards and is split the same way.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::LoadError;
use crate::trace::Trace;

/// Highest offered rate, requests per second.
pub const MAX_QPS: f64 = 1_000_000.0;
/// Longest run.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Most requests in one schedule (one process); larger runs are split into shards.
pub const MAX_REQUESTS: u64 = 10_000_000;
/// Most shards.
pub const MAX_SHARDS: u32 = 4096;

/// One shard of a load split over `count` workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shard {
    /// This worker's index, `0..count`.
    pub index: u32,
    /// Number of workers.
    pub count: u32,
}

impl Shard {
    /// The whole load, unsplit.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Shard `index` of `count`, checked.
    pub fn new(index: u32, count: u32) -> Result<Shard, LoadError> {
        if count == 0 || count > MAX_SHARDS {
            return Err(LoadError::invalid(format!(
                "--shard: the shard count must be in 1..={MAX_SHARDS}, not {count}"
            )));
        }
        if index >= count {
            return Err(LoadError::invalid(format!(
                "--shard: index {index} is not below the shard count {count}"
            )));
        }
        Ok(Shard { index, count })
    }

    /// Shard `index` of `count`, the index given as text by the environment (a Kubernetes
    /// Indexed Job's `JOB_COMPLETION_INDEX`, which the caller reads; `None` when it is unset).
    pub fn from_job_index(index: Option<&str>, count: u32) -> Result<Shard, LoadError> {
        let v = index.ok_or_else(|| {
            LoadError::invalid("--shards: JOB_COMPLETION_INDEX is not set (use --shard i/n)")
        })?;
        let index = v.trim().parse().map_err(|_| {
            LoadError::invalid(format!(
                "JOB_COMPLETION_INDEX `{v}` is not a non-negative integer"
            ))
        })?;
        Shard::new(index, count)
    }

    /// This shard's part of a total cap of `n` requests split round-robin.
    pub fn share(&self, n: u64) -> u64 {
        let (c, i) = (u64::from(self.count), u64::from(self.index));
        n / c + u64::from(n % c > i)
    }
}

impl FromStr for Shard {
    type Err = LoadError;
    fn from_str(s: &str) -> Result<Shard, LoadError> {
        let bad = || LoadError::invalid(format!("--shard `{s}`: expected i/n, e.g. 0/4"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        Shard::new(
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        )
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The arrival process.
#[derive(Clone, Debug)]
pub enum ScheduleKind {
    /// Evenly spaced: one request every `1 / Q` seconds.
    Constant,
    /// Exponential gaps of mean `1 / Q` from a seed.
    Poisson,
    /// A real trace rescaled to mean rate `Q`, order kept, repeated past its end.
    Trace(Arc<Trace>),
}

impl ScheduleKind {
    /// Parses `constant`, `poisson` or `trace:FILE` (the file is read).
    pub fn parse(s: &str) -> Result<ScheduleKind, LoadError> {
        match s {
            "constant" => Ok(ScheduleKind::Constant),
            "poisson" => Ok(ScheduleKind::Poisson),
            _ => match s.strip_prefix("trace:") {
                Some(p) if !p.is_empty() => Ok(ScheduleKind::Trace(Arc::new(Trace::load(
                    std::path::Path::new(p),
                )?))),
                _ => Err(LoadError::invalid(format!(
                    "--schedule `{s}`: expected constant, poisson or trace:FILE"
                ))),
            },
        }
    }

    /// `constant`, `poisson` or `trace`.
    pub fn name(&self) -> &'static str {
        match self {
            ScheduleKind::Constant => "constant",
            ScheduleKind::Poisson => "poisson",
            ScheduleKind::Trace(_) => "trace",
        }
    }
}

/// What to schedule.
#[derive(Clone, Debug)]
pub struct ScheduleConfig {
    /// The arrival process.
    pub kind: ScheduleKind,
    /// Total offered rate over all shards, requests per second.
    pub qps: f64,
    /// Length of the schedule: arrivals are at times in `[0, duration)`.
    pub duration: Duration,
    /// Cap on the total number of requests over all shards.
    pub max_requests: Option<u64>,
    /// Seed of the Poisson gaps (and of everything else random derived from it).
    pub seed: u64,
    /// Which part of the load this worker sends.
    pub shard: Shard,
}

/// One request's intended send time, its size signal and its batch size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arrival {
    /// Intended send time, nanoseconds after the start of the run.
    pub at_ns: u64,
    /// The trace row's `ContextTokens` (0 without a trace or without that column).
    pub tokens: u32,
    /// Samples in the request (1 until [`crate::sizes::BatchSizes::apply`] sets them).
    pub batch: u32,
}

/// A shard's schedule.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// Arrivals in non-decreasing time order.
    pub arrivals: Vec<Arrival>,
    /// The process (`constant`, `poisson`, `trace`).
    pub kind: &'static str,
    /// This shard's nominal rate (the total divided by the shard count).
    pub target_qps: f64,
    /// The nominal length of the run.
    pub duration: Duration,
    /// This shard.
    pub shard: Shard,
    /// The seed the schedule was made from.
    pub seed: u64,
    /// How the batch sizes were chosen (`1` until set).
    pub batch_label: String,
    /// True when the arrivals carry a trace's `ContextTokens`.
    pub has_tokens: bool,
}

impl Schedule {
    /// Arrivals divided by the nominal duration: the rate this shard offers.
    pub fn offered_qps(&self) -> f64 {
        self.arrivals.len() as f64 / self.duration.as_secs_f64()
    }

    /// Total samples over all requests.
    pub fn samples(&self) -> u64 {
        self.arrivals.iter().map(|a| u64::from(a.batch)).sum()
    }
}

/// splitmix64: a good 64-bit mix, used to derive independent seeds.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seed of shard `index` for stream `purpose` (0: arrivals, 1: batch sizes, 2: bodies).
pub fn derive_seed(seed: u64, shard: u32, purpose: u64) -> u64 {
    mix(mix(seed ^ mix(u64::from(shard) + 1)) ^ purpose)
}

fn check(cfg: &ScheduleConfig) -> Result<u64, LoadError> {
    if !(cfg.qps.is_finite() && cfg.qps > 0.0 && cfg.qps <= MAX_QPS) {
        return Err(LoadError::invalid(format!(
            "--qps: {} is not in (0, {MAX_QPS}]",
            cfg.qps
        )));
    }
    if cfg.duration.is_zero() || cfg.duration > MAX_DURATION {
        return Err(LoadError::invalid(format!(
            "--duration: {:?} is not in (0, {} s]",
            cfg.duration,
            MAX_DURATION.as_secs()
        )));
    }
    if cfg.max_requests == Some(0) {
        return Err(LoadError::invalid("--requests: must be > 0"));
    }
    let n = f64::from(cfg.shard.count);
    let expected = cfg.qps * cfg.duration.as_secs_f64() / n;
    match cfg.max_requests {
        Some(total) => {
            let share = cfg.shard.share(total);
            if share > MAX_REQUESTS {
                return Err(LoadError::invalid(format!(
                    "--requests: {total} is {share} per shard, more than the limit of {MAX_REQUESTS}"
                )));
            }
            Ok(share)
        }
        // Room for Poisson's spread above the expected count; MAX_REQUESTS stops it anyway.
        None if expected <= MAX_REQUESTS as f64 * 0.99 => Ok(MAX_REQUESTS),
        None => Err(LoadError::invalid(format!(
            "--qps {} for {} s is {expected:.0} requests per shard, more than the limit of \
             {MAX_REQUESTS}: shorten --duration, add shards or cap with --requests",
            cfg.qps,
            cfg.duration.as_secs_f64()
        ))),
    }
}

/// Builds a shard's schedule.
pub fn build(cfg: &ScheduleConfig) -> Result<Schedule, LoadError> {
    let share = check(cfg)?;
    let horizon = cfg.duration.as_nanos() as f64;
    let n = u64::from(cfg.shard.count);
    let mut out: Vec<Arrival> = Vec::new();
    let push = |out: &mut Vec<Arrival>, t_ns: f64, tokens: u32| {
        out.push(Arrival {
            at_ns: t_ns as u64,
            tokens,
            batch: 1,
        })
    };
    match &cfg.kind {
        ScheduleKind::Constant => {
            let gap = 1e9 / cfg.qps;
            let mut j = u64::from(cfg.shard.index);
            while (out.len() as u64) < share {
                let t = j as f64 * gap;
                if t >= horizon {
                    break;
                }
                push(&mut out, t, 0);
                j += n;
            }
        }
        ScheduleKind::Poisson => {
            let rate = cfg.qps / n as f64;
            let mut rng = StdRng::seed_from_u64(derive_seed(cfg.seed, cfg.shard.index, 0));
            let mut t = 0.0f64;
            while (out.len() as u64) < share {
                // Inverse-CDF exponential gap; 1 - u is in (0, 1], so the log is finite.
                let u: f64 = rng.random();
                t += -(1.0 - u).ln() / rate * 1e9;
                if t >= horizon {
                    break;
                }
                push(&mut out, t, 0);
            }
        }
        ScheduleKind::Trace(trace) => {
            // Rescale so that the mean gap is exactly 1/Q; a repeat starts one mean gap after
            // the previous pass's last row, so the period is rows/Q.
            let rows = trace.len() as u64;
            let scale = (trace.len() - 1) as f64 / (cfg.qps * trace.span());
            let period = rows as f64 / cfg.qps;
            let mut j = u64::from(cfg.shard.index);
            while (out.len() as u64) < share {
                let (pass, r) = (j / rows, (j % rows) as usize);
                let t = (pass as f64 * period + trace.times[r] * scale) * 1e9;
                if t >= horizon {
                    break;
                }
                let tokens = trace.tokens.as_ref().map_or(0, |k| k[r]);
                push(&mut out, t, tokens);
                j += n;
            }
        }
    }
    Ok(Schedule {
        arrivals: out,
        kind: cfg.kind.name(),
        target_qps: cfg.qps / n as f64,
        duration: cfg.duration,
        shard: cfg.shard,
        seed: cfg.seed,
        batch_label: "1".into(),
        has_tokens: matches!(&cfg.kind, ScheduleKind::Trace(t) if t.tokens.is_some()),
    })
}

/// Parses a duration given with `flag`: `500ms`, `10s`, `2m`, `1h` or plain seconds (`2.5`),
/// more than 0 and at most 24 h.
pub fn parse_duration(flag: &str, s: &str) -> Result<Duration, LoadError> {
    let bad = || {
        LoadError::invalid(format!(
            "{flag} `{s}`: expected e.g. 500ms, 10s, 2m, 1h or seconds"
        ))
    };
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let x: f64 = num.trim().parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        "ms" => x / 1e3,
        "s" => x,
        "m" | "min" => x * 60.0,
        "h" => x * 3600.0,
        _ => return Err(bad()),
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(bad());
    }
    if secs > MAX_DURATION.as_secs_f64() {
        return Err(LoadError::invalid(format!(
            "{flag} `{s}` is more than the limit of {} s",
            MAX_DURATION.as_secs()
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(kind: ScheduleKind, shard: Shard) -> ScheduleConfig {
        ScheduleConfig {
            kind,
            qps: 1000.0,
            duration: Duration::from_secs(2),
            max_requests: None,
            seed: 5,
            shard,
        }
    }

    #[test]
    fn constant_shards_interleave() {
        let all = build(&cfg(ScheduleKind::Constant, Shard::ALL)).unwrap();
        assert_eq!(all.arrivals.len(), 2000);
        let mut merged: Vec<u64> = (0..3)
            .flat_map(|i| {
                build(&cfg(ScheduleKind::Constant, Shard::new(i, 3).unwrap()))
                    .unwrap()
                    .arrivals
                    .into_iter()
                    .map(|a| a.at_ns)
            })
            .collect();
        merged.sort_unstable();
        let want: Vec<u64> = all.arrivals.iter().map(|a| a.at_ns).collect();
        assert_eq!(merged, want);
    }

    #[test]
    fn caps_split_exactly() {
        for n in 1..6u32 {
            let total: u64 = (0..n).map(|i| Shard::new(i, n).unwrap().share(1001)).sum();
            assert_eq!(total, 1001);
        }
        let mut c = cfg(ScheduleKind::Poisson, Shard::new(1, 2).unwrap());
        c.max_requests = Some(11);
        assert_eq!(build(&c).unwrap().arrivals.len(), 5);
    }

    #[test]
    fn the_job_index_names_its_variable() {
        assert_eq!(
            Shard::from_job_index(Some(" 1\n"), 3).unwrap(),
            Shard::new(1, 3).unwrap()
        );
        let unset = Shard::from_job_index(None, 3).unwrap_err().to_string();
        assert!(unset.contains("JOB_COMPLETION_INDEX is not set"), "{unset}");
        let text = Shard::from_job_index(Some("x"), 3).unwrap_err().to_string();
        assert!(text.contains("JOB_COMPLETION_INDEX `x`"), "{text}");
        assert!(Shard::from_job_index(Some("3"), 3).is_err());
    }

    #[test]
    fn bad_settings() {
        assert!("3/3".parse::<Shard>().is_err());
        assert!("1-3".parse::<Shard>().is_err());
        assert_eq!("2/3".parse::<Shard>().unwrap(), Shard::new(2, 3).unwrap());
        let mut c = cfg(ScheduleKind::Constant, Shard::ALL);
        c.qps = 0.0;
        assert!(build(&c).unwrap_err().to_string().starts_with("--qps"));
        c.qps = 1e6;
        c.duration = Duration::from_secs(3600);
        assert!(build(&c).unwrap_err().to_string().contains("limit"));
        assert_eq!(
            parse_duration("--duration", "250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            parse_duration("--duration", "2m").unwrap(),
            Duration::from_secs(120)
        );
        assert_eq!(
            parse_duration("--duration", "1.5").unwrap(),
            Duration::from_millis(1500)
        );
        assert!(parse_duration("--duration", "-1s").is_err());
        assert!(parse_duration("--duration", "3 days").is_err());
        assert!(parse_duration("--timeout", "25h").is_err());
    }
}
