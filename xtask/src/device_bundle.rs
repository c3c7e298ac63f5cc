//! `cargo xtask device-bundle`: builds everything a GPU machine without cargo needs into one
//! git-ignored folder (`.device/` by default) and writes its `run.sh`.
//!
//! The folder holds `bin/streamrec` (release CLI), `bin/cuda-tests` (the release build of
//! `crates/runtime/tests/cuda.rs`), `bin/cuda-bench` (the `cuda_kernels` criterion bench),
//! `workloads/*.toml`, `run.sh` (from the template `xtask/device/run.sh`) and `find-libs.sh` (the
//! CUDA library search run.sh sources, `xtask/device/find-libs.sh`). Binaries are
//! stripped of debug info when `strip` is available, so the folder stays well under the 64 MiB a
//! device run may carry. On the GPU machine: `OUT=<dir> bash .device/run.sh`.
//!
//! The folder must be new or empty; `--replace` lets it hold an earlier bundle, whose files
//! (listed in its manifest, `.device-bundle-files`) are removed and nothing else: a folder
//! holding anything else is refused. It is checked before anything is built.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

const TEMPLATE: &str = include_str!("../device/run.sh");
/// The CUDA library search that run.sh sources (tested by `xtask/tests/find_libs.rs`).
const FIND_LIBS: &str = include_str!("../device/find-libs.sh");

const HELP: &str = "\
cargo xtask device-bundle [--out DIR] [--replace] [--no-strip]

Builds the release CLI, the CUDA test binary and the CUDA kernel bench, and puts them with the
workload specs and run.sh into DIR (default .device, git-ignored). Run it on the GPU machine with
`OUT=<results dir> bash DIR/run.sh` (see the comment at the top of run.sh for its knobs).
DIR must be new or empty; --replace lets it hold an earlier bundle, whose files are replaced (a
folder holding anything else is refused, and nothing is removed).
";

/// The list of files a bundle holds (what --replace may remove).
const MANIFEST: &str = ".device-bundle-files";
/// The binaries of a bundle, in bin/.
const BINARIES: [&str; 5] = [
    "streamrec",
    "xtask",
    "cuda-tests",
    "cuda-linear-tests",
    "cuda-bench",
];
/// The trace the serving experiment replays (with its licence), in workloads/traces/.
const TRACES: [&str; 2] = [
    "azure-llm-2023-conv.csv",
    "LICENSE-azure-public-dataset-CC-BY-4.0.txt",
];

/// Runs the task with the arguments after `device-bundle`.
pub fn run(args: &[String]) -> Result<()> {
    let mut out: Option<PathBuf> = None;
    let mut strip = true;
    let mut replace = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--out" => out = Some(PathBuf::from(it.next().context("--out needs a folder")?)),
            "--no-strip" => strip = false,
            "--replace" => replace = true,
            "-h" | "--help" => {
                print!("{HELP}");
                return Ok(());
            }
            other => bail!("device-bundle: unknown argument `{other}`\n\n{HELP}"),
        }
    }
    let root = workspace_root()?;
    let out = out.unwrap_or_else(|| root.join(".device"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The folder is checked before minutes of building.
    let specs = workload_specs(&root)?;
    crate::load::prepare_listed(&out, replace, MANIFEST, &files(&specs))?;

    eprintln!("building the release CLI ...");
    status(Command::new(&cargo).current_dir(&root).args([
        "build",
        "--release",
        "--bin",
        "streamrec",
    ]))?;
    let cli = root.join("target/release/streamrec");
    if !cli.is_file() {
        bail!("{} was not built", cli.display());
    }

    eprintln!("building the release xtask (the serving experiment) ...");
    status(
        Command::new(&cargo)
            .current_dir(&root)
            .args(["build", "--release", "-p", "xtask"]),
    )?;
    let xtask = root.join("target/release/xtask");
    if !xtask.is_file() {
        bail!("{} was not built", xtask.display());
    }

    eprintln!("building the CUDA test binary ...");
    let tests = artifact(
        Command::new(&cargo).current_dir(&root).args([
            "test",
            "--release",
            "-p",
            "streamrec-runtime",
            "--test",
            "cuda",
            "--no-run",
            "--message-format=json",
        ]),
        "cuda",
    )?;

    eprintln!("building the fused-linear test binary ...");
    let linear = artifact(
        Command::new(&cargo).current_dir(&root).args([
            "test",
            "--release",
            "-p",
            "streamrec-kernels",
            "--test",
            "cuda_linear",
            "--no-run",
            "--message-format=json",
        ]),
        "cuda_linear",
    )?;

    eprintln!("building the CUDA kernel bench ...");
    let bench = artifact(
        Command::new(&cargo).current_dir(&root).args([
            "bench",
            "-p",
            "streamrec-kernels",
            "--bench",
            "cuda_kernels",
            "--no-run",
            "--message-format=json",
        ]),
        "cuda_kernels",
    )?;

    let bin = out.join("bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    for (src, name) in [&cli, &xtask, &tests, &linear, &bench]
        .into_iter()
        .zip(BINARIES)
    {
        let dst = bin.join(name);
        std::fs::copy(src, &dst)
            .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        if strip {
            // Debug info is most of a release binary here; a missing `strip` only costs size.
            let _ = Command::new("strip")
                .arg("--strip-debug")
                .arg(&dst)
                .status();
        }
    }

    let wl = out.join("workloads");
    std::fs::create_dir_all(&wl)?;
    for name in &specs {
        std::fs::copy(root.join("workloads").join(name), wl.join(name))
            .with_context(|| format!("copying workloads/{name}"))?;
    }
    let traces = wl.join("traces");
    std::fs::create_dir_all(&traces)?;
    for f in TRACES {
        std::fs::copy(root.join("workloads/traces").join(f), traces.join(f))
            .with_context(|| format!("copying workloads/traces/{f}"))?;
    }

    let when = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let info = format!("Bundle built at unix time {when} from {}.", root.display());
    let script = out.join("run.sh");
    std::fs::write(&script, TEMPLATE.replace("@BUNDLE_INFO@", &info))?;
    set_executable(&script)?;
    let find_libs = out.join("find-libs.sh");
    std::fs::write(&find_libs, FIND_LIBS)?;
    set_executable(&find_libs)?;

    let bytes = dir_size(&out)?;
    eprintln!(
        "wrote {} ({:.1} MiB): bin/streamrec, bin/xtask, bin/cuda-tests, bin/cuda-linear-tests, bin/cuda-bench, workloads/, run.sh, find-libs.sh",
        out.display(),
        bytes as f64 / (1 << 20) as f64
    );
    if bytes > 56 << 20 {
        eprintln!("warning: the bundle is close to the 64 MiB a device run can carry");
    }
    eprintln!(
        "on the GPU machine: OUT=<results dir> bash {}/run.sh",
        out.display()
    );
    Ok(())
}

/// The file names of the workload specs (`workloads/*.toml`), sorted.
fn workload_specs(root: &Path) -> Result<Vec<String>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(root.join("workloads")).context("reading workloads/")? {
        let p = e?.path();
        if p.is_file() && p.extension().is_some_and(|x| x == "toml") {
            v.push(
                p.file_name()
                    .expect("a file name")
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    v.sort();
    Ok(v)
}

/// The files a bundle holds, relative to its folder.
fn files(specs: &[String]) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = [MANIFEST, "run.sh", "find-libs.sh"]
        .iter()
        .map(PathBuf::from)
        .collect();
    v.extend(BINARIES.iter().map(|b| Path::new("bin").join(b)));
    v.extend(specs.iter().map(|s| Path::new("workloads").join(s)));
    v.extend(TRACES.iter().map(|t| Path::new("workloads/traces").join(t)));
    v
}

fn workspace_root() -> Result<PathBuf> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = here.parent().context("xtask has no parent folder")?;
    Ok(root.to_path_buf())
}

fn status(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

/// Runs a cargo command with `--message-format=json` and returns the executable of the test or
/// bench target named `target`.
fn artifact(cmd: &mut Command, target: &str) -> Result<PathBuf> {
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let name = format!("\"name\":\"{target}\"");
    for line in text.lines() {
        if line.contains("\"reason\":\"compiler-artifact\"") && line.contains(&name) {
            if let Some(exe) = json_string(line, "executable") {
                return Ok(PathBuf::from(exe));
            }
        }
    }
    bail!("{cmd:?} reported no executable for target `{target}`")
}

/// The string value of `"key":"..."` in one line of cargo's JSON output (no escapes expected in
/// paths; `null` gives None).
fn json_string(line: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\":\"");
    let start = line.find(&pat)? + pat.len();
    let mut s = String::new();
    let mut chars = line[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(s),
            '\\' => s.push(chars.next()?),
            c => s.push(c),
        }
    }
    None
}

#[cfg(unix)]
fn set_executable(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut perm = std::fs::metadata(p)?.permissions();
    perm.set_mode(0o755);
    std::fs::set_permissions(p, perm)?;
    Ok(())
}

#[cfg(not(unix))]
fn set_executable(_p: &Path) -> Result<()> {
    Ok(())
}

fn dir_size(p: &Path) -> Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(p)? {
        let e = e?;
        let m = e.metadata()?;
        n += if m.is_dir() {
            dir_size(&e.path())?
        } else {
            m.len()
        };
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::json_string;

    #[test]
    fn finds_the_executable_in_cargo_json() {
        let line = r#"{"reason":"compiler-artifact","target":{"kind":["test"],"name":"cuda"},"executable":"/w/target/release/deps/cuda-1f2e","fresh":true}"#;
        assert_eq!(
            json_string(line, "executable").as_deref(),
            Some("/w/target/release/deps/cuda-1f2e")
        );
        assert_eq!(json_string(r#"{"executable":null}"#, "executable"), None);
    }

    #[test]
    fn an_earlier_bundle_is_replaced_and_nothing_else() {
        use std::path::Path;
        let d = std::env::temp_dir().join(format!("xtask-bundle-out-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let out = d.join(".device");
        let specs = vec!["tiny.toml".to_string(), "dlrm-kaggle.toml".to_string()];
        crate::load::prepare_listed(&out, false, super::MANIFEST, &super::files(&specs)).unwrap();
        // Everything a bundle holds (the module documentation's list).
        let mut layout: Vec<String> = ["run.sh", "find-libs.sh"].map(String::from).to_vec();
        layout.extend(super::BINARIES.iter().map(|b| format!("bin/{b}")));
        layout.extend(specs.iter().map(|s| format!("workloads/{s}")));
        layout.extend(
            super::TRACES
                .iter()
                .map(|t| format!("workloads/traces/{t}")),
        );
        for f in &layout {
            let p = out.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, f).unwrap();
        }
        // One spec fewer now: the earlier bundle's manifest still covers it.
        let now = vec!["tiny.toml".to_string()];
        crate::load::prepare_listed(&out, true, super::MANIFEST, &super::files(&now)).unwrap();
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
        // Something else in the folder: refused, kept.
        std::fs::write(out.join("bin-notes.txt"), "mine").unwrap();
        let e = crate::load::prepare_listed(&out, true, super::MANIFEST, &super::files(&now))
            .unwrap_err()
            .to_string();
        assert!(e.contains("did not write"), "{e}");
        assert!(Path::new(&out.join("bin-notes.txt")).is_file());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_template_has_its_placeholder() {
        assert!(super::TEMPLATE.contains("@BUNDLE_INFO@"));
        assert!(super::TEMPLATE.starts_with("#!/usr/bin/env bash"));
        assert!(super::TEMPLATE.contains(". \"$HERE/find-libs.sh\""));
        assert!(super::FIND_LIBS.starts_with("#!/usr/bin/env bash"));
    }
}
