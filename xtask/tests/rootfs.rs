//! `cargo xtask rootfs`: the image's layout as a folder (what deploy/k8s/Dockerfile copies)
//! runs: its binary, started in the image's working directory, plans every model spec the
//! manifests name. Uses the debug `target/debug/streamrec` that `cargo test --workspace` builds.

use std::path::Path;
use std::process::{Command, Output};

/// `cargo xtask rootfs --bin BIN --out OUT`.
fn rootfs(bin: &Path, out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["rootfs", "--bin"])
        .arg(bin)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn the_rootfs_runs_the_manifests_models_from_the_image_workdir() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = root.join("target/debug/streamrec");
    assert!(
        bin.is_file(),
        "{} is missing: `cargo build --bin streamrec` (cargo test --workspace builds it)",
        bin.display()
    );
    let out = std::env::temp_dir().join(format!("xtask-rootfs-{}", std::process::id()));
    let o = rootfs(&bin, &out);
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{text}");
    let workdir = out.join("opt/streamrec");
    let cli = out.join("usr/local/bin/streamrec");
    // Every spec a manifest names, planned by the image's binary from the image's workdir.
    let mut specs = Vec::new();
    for m in ["server.yaml", "load-job.yaml"] {
        let y = std::fs::read_to_string(root.join("deploy/k8s").join(m)).unwrap();
        for w in
            y.split(|c: char| c.is_whitespace() || c == '"' || c == ',' || c == '[' || c == ']')
        {
            if w.starts_with("workloads/") && w.ends_with(".toml") {
                specs.push(w.to_string());
            }
        }
    }
    assert!(!specs.is_empty(), "the manifests name no model spec");
    for s in &specs {
        let o = Command::new(&cli)
            .args(["plan", s])
            .current_dir(&workdir)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{s} from /opt/streamrec: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // A second run replaces its own folder; a folder it did not write is refused.
    assert!(rootfs(&bin, &out).status.success());
    std::fs::remove_file(out.join(".streamrec-rootfs")).unwrap();
    let refused = rootfs(&bin, &out);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("was not written by"));
    assert!(cli.is_file(), "the refused folder is left as it was");
    std::fs::remove_dir_all(&out).unwrap();
}
