//! The private network of `cargo xtask cluster`: one Linux network namespace per host, each
//! joined by a veth pair to a bridge that lives in a namespace of its own, addresses from
//! 192.0.2.0/24 (TEST-NET-1, a documentation range), no default route, IPv6 off, and no
//! interface in the machine's own namespace.
//!
//! Namespace names carry a prefix unique to the run (`sr<pid><time>-`), so teardown only ever
//! removes what this run created. [`Net`] tears everything down when dropped (on a normal exit,
//! an error or a panic): every process it started is stopped (SIGTERM, then SIGKILL), any other
//! process left inside its namespaces is killed, and the namespaces are deleted. A SIGINT,
//! SIGTERM or SIGHUP only sets a flag ([`interrupted`]) that the harness polls, so that the drop
//! runs on ctrl-c too. Before anything is sent, [`Net::check_isolated`] proves that no
//! namespace can route out: every route must lie in the private /24 or on loopback, every
//! interface must be loopback, the bridge or one of the run's own veth pairs.

use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The private network: 192.0.2.0/24.
pub(crate) const NET: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 0);
pub(crate) const PREFIX_LEN: u8 = 24;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT, SIGTERM and SIGHUP set the flag [`interrupted`] reads, instead of ending the
/// process before its teardown runs.
pub(crate) fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }
}

/// Whether a SIGINT, SIGTERM or SIGHUP arrived.
pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// An error when a signal arrived (so that the caller returns and the teardown runs).
pub(crate) fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted: tearing the cluster down");
    }
    Ok(())
}

/// Sleeps `d` in small steps, returning early with an error on a signal.
pub(crate) fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupted()?;
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    check_interrupted()
}

/// Why this machine cannot build the network, or None when it can (root and `ip netns`).
pub(crate) fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces need CAP_SYS_ADMIN)".into());
    }
    match Command::new("ip")
        .args(["netns", "list"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => None,
        Ok(s) => Some(format!("`ip netns list` failed ({s})")),
        Err(e) => Some(format!("`ip` (iproute2) cannot run: {e}")),
    }
}

/// Runs `ip ARGS`; an error with its stderr when it fails.
pub(crate) fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The namespaces that exist now.
pub(crate) fn namespaces() -> Result<Vec<String>> {
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect())
}

/// One host of the network.
#[derive(Clone, Debug)]
pub(crate) struct Host {
    /// Its role and index: `lb`, `r0`, `w2`.
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// Its address in 192.0.2.0/24.
    pub addr: Ipv4Addr,
    /// Its veth's end on the bridge (in the bridge's namespace).
    pub port: String,
}

/// A process started in a host, stopped when the network is torn down (or earlier).
pub(crate) struct Proc {
    pub host: String,
    pub what: String,
    pub log: PathBuf,
    pub child: Child,
}

/// The network and everything started in it; torn down when dropped.
pub(crate) struct Net {
    /// The run's unique prefix of namespace names.
    pub prefix: String,
    /// The bridge's namespace.
    pub bridge_ns: String,
    pub hosts: Vec<Host>,
    /// Namespaces this run created (only these are ever deleted).
    created: Vec<String>,
    pub procs: Vec<Proc>,
}

/// A prefix for namespace names that no earlier run used: `sr`, the pid and the time.
pub(crate) fn unique_prefix() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("sr{}x{:x}", std::process::id(), t & 0xff_ffff)
}

impl Net {
    /// Builds the network: the bridge's namespace, then one namespace per host name with its
    /// veth pair; `addr(i)` is host i's address. Refuses when a namespace of the prefix exists.
    pub(crate) fn build(prefix: &str, names: &[(String, Ipv4Addr)]) -> Result<Net> {
        let existing = namespaces()?;
        if let Some(n) = existing.iter().find(|n| n.starts_with(prefix)) {
            bail!("namespace `{n}` exists already: the prefix `{prefix}` is not unique");
        }
        let mut net = Net {
            prefix: prefix.to_string(),
            bridge_ns: format!("{prefix}-br"),
            hosts: Vec::new(),
            created: Vec::new(),
            procs: Vec::new(),
        };
        net.add_ns(&net.bridge_ns.clone())?;
        let br = net.bridge_ns.clone();
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for (name, addr) in names {
            let ns = format!("{prefix}-{name}");
            net.add_ns(&ns)?;
            let port = format!("v-{name}");
            // The pair is made inside the bridge's namespace with its other end placed straight
            // into the host's: no interface ever appears in the machine's own namespace.
            ip(&[
                "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &br, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &br, "link", "set", &port, "up"])?;
            let cidr = format!("{addr}/{PREFIX_LEN}");
            ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            net.hosts.push(Host {
                name: name.clone(),
                ns,
                addr: *addr,
                port,
            });
        }
        Ok(net)
    }

    fn add_ns(&mut self, ns: &str) -> Result<()> {
        ip(&["netns", "add", ns])?;
        self.created.push(ns.to_string());
        // No IPv6: its link-local and multicast routes are not the private /24.
        sysctl(ns, "net.ipv6.conf.all.disable_ipv6=1")?;
        sysctl(ns, "net.ipv6.conf.default.disable_ipv6=1")?;
        Ok(())
    }

    pub(crate) fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// Every namespace of the run, the bridge's first.
    pub(crate) fn all_ns(&self) -> Vec<String> {
        self.created.clone()
    }

    /// Proves that nothing can leave the private network (see the module docs); the error
    /// names the namespace and the route or interface.
    pub(crate) fn check_isolated(&self) -> Result<()> {
        for ns in &self.created {
            for fam in ["-4", "-6"] {
                let text = ip(&["-n", ns, "-j", fam, "route", "show", "table", "all"])?;
                let routes: Value = serde_json::from_str(text.trim()).unwrap_or(Value::Null);
                for r in routes.as_array().into_iter().flatten() {
                    if let Some(why) = route_out(r) {
                        bail!(
                            "refusing to run: namespace `{ns}` has a route out of \
                             {NET}/{PREFIX_LEN} ({why}): {r}"
                        );
                    }
                }
            }
            let text = ip(&["-n", ns, "-d", "-j", "link", "show"])?;
            let links: Value = serde_json::from_str(text.trim()).unwrap_or(Value::Null);
            for l in links.as_array().into_iter().flatten() {
                let name = l["ifname"].as_str().unwrap_or("?");
                let kind = l["linkinfo"]["info_kind"].as_str().unwrap_or("");
                let ok = if *ns == self.bridge_ns {
                    name == "lo"
                        || (name == "br0" && kind == "bridge")
                        || (kind == "veth" && self.hosts.iter().any(|h| h.port == name))
                } else {
                    name == "lo" || (name == "eth0" && kind == "veth")
                };
                if !ok {
                    bail!("refusing to run: namespace `{ns}` has interface `{name}` ({kind}), not one of this network's");
                }
            }
        }
        // Each host's eth0 is the peer of its own port on the bridge (not of anything else).
        for h in &self.hosts {
            let port: Value = serde_json::from_str(
                ip(&["-n", &self.bridge_ns, "-j", "link", "show", &h.port])?.trim(),
            )?;
            let eth: Value =
                serde_json::from_str(ip(&["-n", &h.ns, "-j", "link", "show", "eth0"])?.trim())?;
            if port[0]["link_index"] != eth[0]["ifindex"]
                || eth[0]["link_index"] != port[0]["ifindex"]
            {
                bail!(
                    "refusing to run: eth0 of `{}` is not the peer of bridge port {}",
                    h.ns,
                    h.port
                );
            }
        }
        Ok(())
    }

    /// Starts `args` inside host `host`'s namespace (the process itself: `ip netns exec`
    /// executes it), stdout and stderr to `log`, with `env` set; returns its pid.
    pub(crate) fn spawn(
        &mut self,
        host: &str,
        what: &str,
        args: &[String],
        env: &[(&str, String)],
        log: &Path,
        cwd: &Path,
    ) -> Result<u32> {
        let ns = self.host(host).ns.clone();
        let f =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns])
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {what} in {ns}"))?;
        let pid = child.id();
        self.procs.push(Proc {
            host: host.to_string(),
            what: what.to_string(),
            log: log.to_path_buf(),
            child,
        });
        Ok(pid)
    }

    /// Sets the bridge's end of host `host`'s link down or up (a cable pulled at the switch:
    /// the host's packets are dropped, nothing tells it).
    pub(crate) fn set_link(&self, host: &str, up: bool) -> Result<()> {
        let port = self.host(host).port.clone();
        ip(&[
            "-n",
            &self.bridge_ns,
            "link",
            "set",
            &port,
            if up { "up" } else { "down" },
        ])?;
        Ok(())
    }

    /// A GET of `path` on `addr:port` from inside host `from`'s namespace (a thread that joins
    /// it); the status and the body, or None when the connection failed.
    pub(crate) fn get(
        &self,
        from: &str,
        addr: Ipv4Addr,
        port: u16,
        path: &str,
    ) -> Option<(u16, String)> {
        let ns = self.host(from).ns.clone();
        let path = path.to_string();
        std::thread::spawn(move || -> Option<(u16, String)> {
            enter(&ns).ok()?;
            http_get(addr, port, &path)
        })
        .join()
        .ok()
        .flatten()
    }

    /// Tears everything down (also what [`Drop`] does); an error when something is left.
    pub(crate) fn teardown(&mut self) -> Result<()> {
        for p in &mut self.procs {
            stop(&mut p.child);
        }
        self.procs.clear();
        let mut left = Vec::new();
        // The bridge's namespace last: hosts first, so that no veth outlives its bridge.
        for ns in self.created.iter().rev() {
            // Anything still running in a namespace of this run was started by this run.
            if let Ok(pids) = ip(&["netns", "pids", ns]) {
                for pid in pids
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    // SAFETY: kill(2) of a process inside this run's own namespace.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
            let mut gone = false;
            for _ in 0..50 {
                if ip(&["netns", "del", ns]).is_ok() {
                    gone = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if !gone {
                left.push(ns.clone());
            }
        }
        self.created.retain(|n| left.contains(n));
        let still: Vec<String> = namespaces()
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.starts_with(&self.prefix))
            .collect();
        if !still.is_empty() {
            bail!("teardown left namespaces {}", still.join(", "));
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("cluster: {e:#}");
        }
    }
}

fn sysctl(ns: &str, setting: &str) -> Result<()> {
    let st = Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-q", "-w", setting])
        .stdout(Stdio::null())
        .status()
        .context("running sysctl")?;
    if !st.success() {
        bail!("sysctl -w {setting} in {ns} failed");
    }
    Ok(())
}

/// Stops a child: SIGTERM, then SIGKILL after 3 s; reaped either way.
pub(crate) fn stop(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: kill(2) of our own child, not yet reaped (so its pid is still its own).
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Moves the calling thread into namespace `ns` (sockets it opens afterwards live there).
fn enter(ns: &str) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/run/netns/{ns}"))?;
    // SAFETY: setns(2) with an open namespace file; it affects only the calling thread.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r != 0 {
        bail!("setns {ns}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A plain HTTP/1.1 GET with `Connection: close`, 2 s timeouts; status and body.
fn http_get(addr: Ipv4Addr, port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let sa = std::net::SocketAddr::from((addr, port));
    let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.take(16 << 20).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Why route `r` (one object of `ip -j route show table all`) could leave the private
/// network, or None: a default route, a gateway, or a destination other than the private /24,
/// loopback (127.0.0.0/8, ::1) and IPv6's link-local and multicast prefixes.
pub(crate) fn route_out(r: &Value) -> Option<String> {
    let dst = r["dst"].as_str().unwrap_or("");
    if dst == "default" || dst == "0.0.0.0/0" || dst == "::/0" {
        return Some("a default route".into());
    }
    if let Some(gw) = r["gateway"].as_str() {
        return Some(format!("via gateway {gw}"));
    }
    if r.get("nexthops").is_some() || r.get("via").is_some() {
        return Some("via a next hop".into());
    }
    let inside = |net: Ipv4Addr, len: u8, dst: &str| -> bool {
        let (a, l) = match dst.split_once('/') {
            Some((a, l)) => (a, l.parse::<u8>().unwrap_or(0)),
            None => (dst, 32),
        };
        let Ok(a) = a.parse::<Ipv4Addr>() else {
            return false;
        };
        let mask = |n: u8| if n == 0 { 0 } else { u32::MAX << (32 - n) };
        l >= len && (u32::from(a) & mask(len)) == (u32::from(net) & mask(len))
    };
    let ok = inside(NET, PREFIX_LEN, dst)
        || inside(Ipv4Addr::new(127, 0, 0, 0), 8, dst)
        || ["::1", "fe80::/64", "ff00::/8"].contains(&dst);
    (!ok).then(|| format!("destination {dst}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_private_and_loopback_routes_pass() {
        for ok in [
            json!({"dst": "192.0.2.0/24", "dev": "eth0", "scope": "link"}),
            json!({"type": "local", "dst": "192.0.2.5", "dev": "eth0", "table": "local"}),
            json!({"type": "broadcast", "dst": "192.0.2.255", "dev": "eth0"}),
            json!({"type": "local", "dst": "127.0.0.0/8", "dev": "lo"}),
            json!({"type": "local", "dst": "::1", "dev": "lo"}),
        ] {
            assert_eq!(route_out(&ok), None, "{ok}");
        }
        for (out, why) in [
            (
                json!({"dst": "default", "gateway": "192.0.2.1", "dev": "eth0"}),
                "default",
            ),
            (
                json!({"dst": "10.0.0.0/8", "gateway": "192.0.2.1", "dev": "eth0"}),
                "gateway",
            ),
            (
                json!({"dst": "198.51.100.0/24", "dev": "eth0"}),
                "198.51.100.0/24",
            ),
            (
                json!({"dst": "192.0.0.0/16", "dev": "eth0"}),
                "192.0.0.0/16",
            ),
            (json!({"dst": "::/0", "dev": "eth0"}), "default"),
            (
                json!({"dst": "2001:db8::/32", "dev": "eth0"}),
                "2001:db8::/32",
            ),
        ] {
            let e = route_out(&out).unwrap_or_default();
            assert!(e.contains(why), "{out}: `{e}`");
        }
    }
}
