//! The command lines of `cargo xtask cluster`, read from the Kubernetes manifests so that the
//! namespace run is the k8s run: a replica runs deploy/k8s/server.yaml's `args` (the spec
//! swapped for `--spec`), a worker deploy/k8s/load-job.yaml's `args` with only the values
//! that name this network or this run replaced (`--url`, `--qps`, `--duration`, `--shards`,
//! `--start-at`, `--out`, and `--model`/`--spec`); a flag the harness sets that the manifest
//! lacks is an error, so the two cannot drift apart unnoticed.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// server.yaml's container `args` (one JSON-style list on the `args:` line).
pub(crate) fn server_args(root: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(root.join("deploy/k8s/server.yaml"))?;
    let line = text
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("args:"))
        .context("deploy/k8s/server.yaml: no `args:` line")?;
    let args: Vec<String> = serde_json::from_str(line.trim())
        .with_context(|| format!("deploy/k8s/server.yaml: args `{}`", line.trim()))?;
    Ok(args)
}

/// The replica's command line: server.yaml's args with its spec (the `.toml` argument)
/// replaced by `spec`; checks that it serves on `port`.
pub(crate) fn serve_command(root: &Path, spec: &str, port: u16) -> Result<Vec<String>> {
    let mut args = server_args(root)?;
    let at = args
        .iter()
        .position(|a| a.ends_with(".toml"))
        .context("deploy/k8s/server.yaml: no model spec in args")?;
    args[at] = spec.to_string();
    let p = args.iter().position(|a| a == "--port");
    if p.and_then(|p| args.get(p + 1)) != Some(&port.to_string()) {
        bail!("deploy/k8s/server.yaml: args {args:?} do not serve on port {port}");
    }
    Ok(args)
}

/// load-job.yaml's container `args` (a YAML list of `- item` lines after `args:`).
pub(crate) fn job_args(root: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(root.join("deploy/k8s/load-job.yaml"))?;
    let mut lines = text.lines().map(str::trim);
    lines
        .by_ref()
        .find(|l| *l == "args:")
        .context("deploy/k8s/load-job.yaml: no `args:` list")?;
    let mut args = Vec::new();
    for l in lines {
        if l.starts_with('#') {
            continue;
        }
        match l.strip_prefix("- ") {
            Some(a) => args.push(a.trim().to_string()),
            None => break,
        }
    }
    if args.is_empty() {
        bail!("deploy/k8s/load-job.yaml: the `args:` list is empty");
    }
    Ok(args)
}

/// The worker's command line: load-job.yaml's args with the values of `set` (`--flag`,
/// value) replaced; every flag of `set` must be in the manifest.
pub(crate) fn load_command(root: &Path, set: &[(&str, String)]) -> Result<Vec<String>> {
    let mut args = job_args(root)?;
    for (flag, value) in set {
        let prefix = format!("{flag}=");
        let a = args
            .iter_mut()
            .find(|a| a.starts_with(&prefix))
            .with_context(|| {
                format!("deploy/k8s/load-job.yaml has no {flag}=...: the cluster run sets it")
            })?;
        *a = format!("{prefix}{value}");
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    #[test]
    fn the_cluster_runs_the_manifests_command_lines() {
        let serve = serve_command(&root(), "workloads/tiny.toml", 8000).unwrap();
        assert_eq!(serve, server_args(&root()).unwrap());
        assert_eq!(
            serve,
            [
                "serve",
                "workloads/tiny.toml",
                "--host",
                "0.0.0.0",
                "--port",
                "8000"
            ]
        );
        let load = load_command(
            &root(),
            &[
                ("--url", "http://192.0.2.2:8000".into()),
                ("--shards", "3".into()),
                ("--start-at", "1.000".into()),
                ("--out", "/run/shard-{shard}".into()),
            ],
        )
        .unwrap();
        let job = job_args(&root()).unwrap();
        // Same flags in the same order; only the values set differ.
        let flag = |a: &String| a.split('=').next().unwrap().to_string();
        assert_eq!(
            load.iter().map(flag).collect::<Vec<_>>(),
            job.iter().map(flag).collect::<Vec<_>>()
        );
        for a in [
            "load",
            "--schedule=poisson",
            "--batch=1",
            "--seed=1",
            "--replace",
        ] {
            assert!(load.contains(&a.to_string()), "{a} in {load:?}");
        }
        assert!(load.contains(&"--url=http://192.0.2.2:8000".to_string()));
        assert!(load.contains(&"--out=/run/shard-{shard}".to_string()));
    }

    #[test]
    fn a_flag_the_manifest_lacks_is_an_error() {
        let e = load_command(&root(), &[("--no-such-flag", "1".into())])
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no --no-such-flag="), "{e}");
    }
}
