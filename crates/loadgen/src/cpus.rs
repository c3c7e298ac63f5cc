//! CPU sets for pinning threads: parsed from a list such as `2-7` or `0,2,4-6` (the syntax of
//! `taskset -c` and of `/proc/*/status`'s `Cpus_allowed_list`), checked against the CPUs this
//! process may run on, and applied to a thread with `sched_setaffinity(2)`.
//!
//! The load generator pins its runtime's threads with [`RunConfig::cpus`](crate::RunConfig)
//! (`streamrec load --cpus`); the serving experiment pins the server it launches to another
//! set, so that on a machine with enough cores the two never share one.

use std::fmt;

use crate::error::LoadError;

/// The most CPUs a set may name (the size of glibc's `cpu_set_t`).
pub const MAX_CPUS: usize = libc::CPU_SETSIZE as usize;

/// A non-empty set of CPU numbers, sorted and without repeats.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CpuSet(Vec<usize>);

impl CpuSet {
    /// The set of these CPUs (sorted, repeats dropped); None when empty or a CPU is at least
    /// [`MAX_CPUS`].
    pub fn new(cpus: impl IntoIterator<Item = usize>) -> Option<CpuSet> {
        let mut v: Vec<usize> = cpus.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        (!v.is_empty() && v.iter().all(|&c| c < MAX_CPUS)).then_some(CpuSet(v))
    }

    /// Parses `text` (`2-7`, `0,2,4-6`) given to `flag` and checks that this process may run
    /// on every CPU it names; the error names the flag and says which CPUs are available.
    pub fn parse(flag: &str, text: &str) -> Result<CpuSet, LoadError> {
        let set = CpuSet::parse_list(flag, text)?;
        let allowed = CpuSet::available()?;
        if let Some(c) = set.0.iter().find(|c| !allowed.contains(**c)) {
            return Err(LoadError::invalid(format!(
                "{flag} {text}: CPU {c} is not one this process may run on (available: {allowed})"
            )));
        }
        Ok(set)
    }

    /// Parses the list syntax only (no check against the machine).
    pub fn parse_list(flag: &str, text: &str) -> Result<CpuSet, LoadError> {
        let bad = |why: String| LoadError::invalid(format!("{flag} {text}: {why}"));
        let num = |s: &str| -> Result<usize, LoadError> {
            let n: usize = s.trim().parse().map_err(|_| {
                bad(format!(
                    "`{s}` is not a CPU number (expected a list such as 2-7 or 0,2,4-6)"
                ))
            })?;
            if n >= MAX_CPUS {
                return Err(bad(format!(
                    "CPU {n} is beyond the largest, {}",
                    MAX_CPUS - 1
                )));
            }
            Ok(n)
        };
        let mut cpus = Vec::new();
        for part in text.split(',') {
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (num(a)?, num(b)?);
                    if a > b {
                        return Err(bad(format!("the range {a}-{b} runs backwards")));
                    }
                    cpus.extend(a..=b);
                }
                None => cpus.push(num(part)?),
            }
        }
        CpuSet::new(cpus).ok_or_else(|| bad("no CPU".into()))
    }

    /// The CPUs the calling thread may run on (its affinity mask; a process's threads inherit
    /// it).
    pub fn available() -> Result<CpuSet, LoadError> {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity(0, ...) writes the
        // calling thread's mask into it, at most its size.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let rc =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        if rc != 0 {
            return Err(LoadError::invalid(format!(
                "reading this process's CPUs (sched_getaffinity): {}",
                std::io::Error::last_os_error()
            )));
        }
        // SAFETY: CPU_ISSET reads a bit of the set below its size.
        CpuSet::new((0..MAX_CPUS).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }))
            .ok_or_else(|| LoadError::invalid("this process may run on no CPU".to_string()))
    }

    /// Pins the calling thread to these CPUs. Allocates nothing (the mask is built on the
    /// stack), so it may run between fork and exec (`Command::pre_exec`).
    pub fn pin_current_thread(&self) -> std::io::Result<()> {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes bits below MAX_CPUS
        // (every member is, by construction); sched_setaffinity(0, ...) reads the set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &c in &self.0 {
            unsafe { libc::CPU_SET(c, &mut set) };
        }
        let rc =
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Whether `cpu` is in the set.
    pub fn contains(&self, cpu: usize) -> bool {
        self.0.binary_search(&cpu).is_ok()
    }

    /// The number of CPUs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a set holds at least one CPU.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The CPUs, ascending.
    pub fn cpus(&self) -> &[usize] {
        &self.0
    }

    /// Whether no CPU is in both sets.
    pub fn is_disjoint(&self, other: &CpuSet) -> bool {
        !self.0.iter().any(|&c| other.contains(c))
    }
}

/// The list syntax, ranges folded: `0-3,6`.
impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut i = 0;
        let mut first = true;
        while i < self.0.len() {
            let mut j = i;
            while j + 1 < self.0.len() && self.0[j + 1] == self.0[j] + 1 {
                j += 1;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if j == i {
                write!(f, "{}", self.0[i])?;
            } else {
                write!(f, "{}-{}", self.0[i], self.0[j])?;
            }
            i = j + 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_print_folded() {
        let s = CpuSet::parse_list("--cpus", "4-6,0,2,5").unwrap();
        assert_eq!(s.cpus(), [0, 2, 4, 5, 6]);
        assert_eq!(s.to_string(), "0,2,4-6");
        assert_eq!(CpuSet::parse_list("--cpus", "3").unwrap().to_string(), "3");
        for (bad, why) in [
            ("", "is not a CPU number"),
            ("1,,2", "is not a CPU number"),
            ("a-3", "is not a CPU number"),
            ("-1", "is not a CPU number"),
            ("5-2", "the range 5-2 runs backwards"),
            ("0-4096", "beyond the largest"),
        ] {
            let e = CpuSet::parse_list("--cpus", bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--cpus {bad}: ")), "{bad}: {e}");
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn a_cpu_outside_the_machine_is_refused_naming_the_flag() {
        let avail = CpuSet::available().unwrap();
        let beyond = avail.cpus().last().unwrap() + 1;
        let e = CpuSet::parse("--cpus", &beyond.to_string())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("CPU {beyond} is not one this process may run on"))
                && e.contains(&format!("(available: {avail})")),
            "{e}"
        );
        assert_eq!(CpuSet::parse("--cpus", &avail.to_string()).unwrap(), avail);
    }
}
