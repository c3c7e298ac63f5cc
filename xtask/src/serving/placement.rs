//! Where the serving experiment's servers and load generator run: disjoint CPU sets on a machine
//! with enough cores (the generator one CPU per thread, at most half; the servers the rest), the
//! sets given (`--serve-cpus`, `--load-cpus`, never overlapping), or not pinned (`--no-pin`, or
//! too few CPUs), with a sentence for the report; and what /proc says a process may use.

use anyhow::{bail, Context, Result};
use streamrec_loadgen::CpuSet;

/// Fewest CPUs on which the servers and the generator get disjoint sets by default: with
/// fewer, splitting would leave the engine one or two cores, so nothing is pinned.
pub const MIN_CPUS_TO_PIN: usize = 4;

/// How the servers and the load generator are placed on CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pin {
    /// Split the available CPUs when there are at least [`MIN_CPUS_TO_PIN`].
    Auto,
    /// Not pinned (`--no-pin`).
    Off,
    /// These sets (`--serve-cpus`, `--load-cpus`).
    Sets {
        /// The servers' CPUs.
        server: CpuSet,
        /// The load generator's CPUs.
        load: CpuSet,
    },
}

/// Where the servers and the generator run: the sets (None: not pinned) and a sentence for the
/// report.
#[derive(Clone, Debug)]
pub(crate) struct Placement {
    pub(crate) server: Option<CpuSet>,
    pub(crate) load: Option<CpuSet>,
    pub(crate) note: String,
}

/// The placement `pin` asks for on a machine whose process may use `avail`, for a generator
/// of `load_threads` threads.
pub(crate) fn placement(pin: &Pin, avail: &CpuSet, load_threads: usize) -> Result<Placement> {
    match pin {
        Pin::Off => Ok(Placement {
            server: None,
            load: None,
            note: "not pinned (`--no-pin`): the servers and the load generator share the \
                   machine's CPUs"
                .into(),
        }),
        Pin::Sets { server, load } => {
            if let Some(c) = server.cpus().iter().find(|&&c| load.contains(c)) {
                bail!("--serve-cpus {server} and --load-cpus {load} share CPU {c}");
            }
            Ok(Placement {
                note: format!(
                    "pinned as asked: the servers on CPUs {server}, the load generator on \
                     CPUs {load}"
                ),
                server: Some(server.clone()),
                load: Some(load.clone()),
            })
        }
        Pin::Auto if avail.len() < MIN_CPUS_TO_PIN => Ok(Placement {
            server: None,
            load: None,
            note: format!(
                "not pinned: this machine has {} CPU(s) ({avail}), too few to give the servers \
                 and the load generator cores of their own ({MIN_CPUS_TO_PIN} needed), so they \
                 share them",
                avail.len()
            ),
        }),
        Pin::Auto => {
            // The generator: one CPU per thread, at most half; the servers: the rest.
            let k = load_threads.clamp(1, avail.len() / 2);
            let (srv, gen) = avail.cpus().split_at(avail.len() - k);
            let server = CpuSet::new(srv.iter().copied()).context("no CPU for the servers")?;
            let load = CpuSet::new(gen.iter().copied()).context("no CPU for the generator")?;
            Ok(Placement {
                note: format!(
                    "pinned: the servers on CPUs {server}, the load generator on CPUs {load} \
                     (of {avail})"
                ),
                server: Some(server),
                load: Some(load),
            })
        }
    }
}

/// `Cpus_allowed_list` of process `pid`, as /proc gives it.
pub(crate) fn allowed_cpus(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|l| l.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_and_generator_get_disjoint_cpus_or_are_said_not_pinned() {
        let set = |t: &str| CpuSet::parse_list("--x", t).unwrap();
        // Eight CPUs, a generator of 2 threads: it gets the two highest, the servers the rest.
        let p = placement(&Pin::Auto, &set("0-7"), 2).unwrap();
        assert_eq!(p.server, Some(set("0-5")));
        assert_eq!(p.load, Some(set("6-7")));
        assert!(p
            .note
            .contains("servers on CPUs 0-5, the load generator on CPUs 6-7"));
        // Never more than half for the generator, always one.
        let p = placement(&Pin::Auto, &set("0-3"), 64).unwrap();
        assert_eq!((p.server, p.load), (Some(set("0-1")), Some(set("2-3"))));
        let p = placement(&Pin::Auto, &set("0,2,4,6,8"), 1).unwrap();
        assert_eq!((p.server, p.load), (Some(set("0,2,4,6")), Some(set("8"))));
        // Two CPUs (this kind of VM): not pinned, and the report says why.
        let p = placement(&Pin::Auto, &set("0-1"), 1).unwrap();
        assert_eq!((p.server, p.load), (None, None));
        assert!(
            p.note
                .starts_with("not pinned: this machine has 2 CPU(s) (0-1), too few"),
            "{}",
            p.note
        );
        let p = placement(&Pin::Off, &set("0-63"), 1).unwrap();
        assert_eq!((p.server, p.load), (None, None));
        assert!(p.note.starts_with("not pinned (`--no-pin`)"));
        // Sets given: used as given, but never overlapping.
        let both = Pin::Sets {
            server: set("0-2"),
            load: set("2-3"),
        };
        let e = placement(&both, &set("0-3"), 1).unwrap_err().to_string();
        assert_eq!(e, "--serve-cpus 0-2 and --load-cpus 2-3 share CPU 2");
    }
}
