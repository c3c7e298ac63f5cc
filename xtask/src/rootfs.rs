//! `cargo xtask rootfs`: the image's files as a folder, the layout deploy/k8s/Dockerfile copies
//! (`COPY rootfs/ /`): the `streamrec` CLI at usr/local/bin/streamrec and the model specs at
//! opt/streamrec/workloads (the image's working directory is /opt/streamrec, so the manifests'
//! `workloads/...` arguments resolve there). Where a registry is reachable:
//! `cargo xtask rootfs --out deploy/k8s/rootfs && docker build -t streamrec:latest deploy/k8s`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// A file that marks a folder as written by this command (so that it may replace it).
pub(crate) const MARKER: &str = ".streamrec-rootfs";

/// Where the image expects the binary and the working directory.
pub(crate) const BIN: &str = "usr/local/bin/streamrec";
/// The image's working directory, relative to the root.
pub(crate) const WORKDIR: &str = "opt/streamrec";

const HELP: &str = "\
cargo xtask rootfs [--out DIR] [--bin PATH]
  The image's files as a folder (DIR, default target/rootfs): the streamrec CLI at
  usr/local/bin/streamrec (PATH, default: cargo build --release --bin streamrec) and workloads/
  at opt/streamrec/workloads. DIR is replaced only if this command wrote it (a .streamrec-rootfs
  file in it); any other existing DIR is refused.";

/// Runs the task.
pub fn run(args: &[String]) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let (mut out, mut bin) = (root.join("target/rootfs"), None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--out" => out = PathBuf::from(it.next().context("--out needs a folder")?),
            "--bin" => bin = Some(PathBuf::from(it.next().context("--bin needs a file")?)),
            "--help" | "-h" => {
                println!("{HELP}");
                return Ok(());
            }
            x => bail!("rootfs: unknown option `{x}`\n{HELP}"),
        }
    }
    let bin = match bin {
        Some(b) => b,
        None => crate::common::build_release_cli(&root)?,
    };
    write(&root, &bin, &out)?;
    println!(
        "wrote {} ({BIN}, {WORKDIR}/workloads); image: docker build -t streamrec:latest -f deploy/k8s/Dockerfile {}",
        out.display(),
        out.parent().unwrap_or(Path::new(".")).display()
    );
    Ok(())
}

/// Writes the layout into `out` (replacing an earlier one of ours).
pub(crate) fn write(root: &Path, bin: &Path, out: &Path) -> Result<()> {
    if !bin.is_file() {
        bail!("--bin {}: no such file", bin.display());
    }
    if out.exists() {
        if !out.join(MARKER).is_file() {
            bail!(
                "{} exists and was not written by `cargo xtask rootfs` (no {MARKER} in it); \
                 choose another --out or remove it yourself",
                out.display()
            );
        }
        std::fs::remove_dir_all(out).with_context(|| format!("replacing {}", out.display()))?;
    }
    let dest = out.join(BIN);
    std::fs::create_dir_all(dest.parent().expect("a parent"))?;
    std::fs::copy(bin, &dest).with_context(|| format!("copying {}", bin.display()))?;
    copy_dir(
        &root.join("workloads"),
        &out.join(WORKDIR).join("workloads"),
    )?;
    std::fs::write(out.join(MARKER), "written by cargo xtask rootfs\n")?;
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let e = e?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type()?.is_dir() {
            copy_dir(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// The Dockerfile copies exactly this layout, works where the manifests expect, and runs
    /// the binary it installs.
    #[test]
    fn the_dockerfile_copies_the_rootfs_layout() {
        let docker = std::fs::read_to_string(root().join("deploy/k8s/Dockerfile")).unwrap();
        let lines: Vec<&str> = docker
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        assert!(lines.contains(&"COPY rootfs/ /"), "{docker}");
        assert!(
            lines.contains(&format!("WORKDIR /{WORKDIR}").as_str()),
            "{docker}"
        );
        assert!(lines.contains(&"ENTRYPOINT [\"streamrec\"]"), "{docker}");
        assert!(BIN.starts_with("usr/local/bin/"), "on the image's PATH");
        // No other file goes into the image.
        assert_eq!(lines.iter().filter(|l| l.starts_with("COPY")).count(), 1);
    }

    #[test]
    fn a_folder_it_did_not_write_is_refused() {
        let dir = std::env::temp_dir().join(format!("streamrec-rootfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("keep"), "x").unwrap();
        let bin = std::env::current_exe().unwrap();
        let e = write(&root(), &bin, &dir).unwrap_err().to_string();
        assert!(e.contains("was not written by"), "{e}");
        assert!(dir.join("keep").is_file(), "nothing of it was deleted");
        // Ours is replaced.
        let ours = dir.join("ours");
        write(&root(), &bin, &ours).unwrap();
        std::fs::write(ours.join("stale"), "x").unwrap();
        write(&root(), &bin, &ours).unwrap();
        assert!(!ours.join("stale").exists() && ours.join(BIN).is_file());
        assert!(ours.join(WORKDIR).join("workloads/tiny.toml").is_file());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
