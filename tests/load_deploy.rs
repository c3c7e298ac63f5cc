//! The Kubernetes manifests of deploy/k8s/: valid against the Kubernetes JSON schemas (the
//! `kubernetes-validate` package; `.ci/run` installs it and sets `STREAMREC_REQUIRE_DEPLOY=1`,
//! elsewhere a missing package is a visible skip) and consistent with each other and the CLI.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn manifests() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

fn skip(what: &str) {
    common::skip("STREAMREC_REQUIRE_DEPLOY", what);
}

fn validate(files: &[PathBuf]) -> std::process::Output {
    Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
        .args(["-k", "1.30.0", "-k", "1.33.0"])
        .args(files)
        .output()
        .unwrap()
}

#[test]
fn k8s_manifests_are_valid() {
    let have = Command::new("python3")
        .args(["-c", "import kubernetes_validate"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        skip("kubernetes-validate is not installed (python3 -m pip install kubernetes-validate)");
        return;
    }
    let files = manifests();
    assert_eq!(files.len(), 4, "{files:?}");
    let o = validate(&files);
    assert!(
        o.status.success(),
        "kubernetes-validate failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // The validator does reject a wrong manifest (a misspelt field, a string for a count).
    let bad = std::env::temp_dir().join(format!("streamrec-bad-job-{}.yaml", std::process::id()));
    let job = std::fs::read_to_string(root().join("deploy/k8s/load-job.yaml")).unwrap();
    for (from, to) in [
        ("completionMode: Indexed", "completionMod: Indexed"),
        ("completions: 4", "completions: four"),
    ] {
        std::fs::write(&bad, job.replace(from, to)).unwrap();
        assert!(
            !validate(std::slice::from_ref(&bad)).status.success(),
            "{to}"
        );
    }
    let _ = std::fs::remove_file(&bad);
}

fn field<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    text.lines()
        .filter_map(|l| l.trim().trim_start_matches("- ").strip_prefix(key))
        .map(|v| v.split('#').next().unwrap().trim().trim_matches('"'))
        .collect()
}

#[test]
fn k8s_manifests_agree_with_each_other_and_the_cli() {
    let read = |f: &str| std::fs::read_to_string(root().join("deploy/k8s").join(f)).unwrap();
    let (server, job, merge, pvc) = (
        read("server.yaml"),
        read("load-job.yaml"),
        read("merge-job.yaml"),
        read("results-pvc.yaml"),
    );
    // One shard per completion, all running at once.
    let completions = field(&job, "completions:");
    assert_eq!(completions, field(&job, "parallelism:"));
    assert_eq!(field(&job, "completionMode:"), ["Indexed"]);
    assert_eq!(field(&job, "--shards="), completions);
    // The workers reach the Service on the port the server listens on, for the model it serves.
    let svc_port = *field(&server, "port:")
        .iter()
        .find(|v| v.parse::<u16>().is_ok())
        .expect("a numeric Service port");
    assert!(server.contains(&format!("\"--port\", \"{svc_port}\"")));
    assert_eq!(
        field(&job, "--url="),
        [format!("http://streamrec:{svc_port}").as_str()]
    );
    assert!(server.contains("workloads/tiny.toml") && job.contains("--model=tiny"));
    // Workers write where the merge reads, on the claim the PVC makes.
    let claim = field(&pvc, "name:")[0];
    assert_eq!(field(&job, "claimName:"), [claim]);
    assert_eq!(field(&merge, "claimName:"), [claim]);
    assert_eq!(field(&job, "--out="), ["/results/shard-{shard}"]);
    assert!(merge.contains("streamrec load merge /results/shard-*"));
    // Every flag the Job passes is one `streamrec load` knows.
    let help = Command::new(env!("CARGO_BIN_EXE_streamrec"))
        .args(["load", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for l in job.lines().map(str::trim) {
        if let Some(flag) = l.strip_prefix("- --") {
            let name = flag.split('=').next().unwrap();
            assert!(
                help.contains(&format!("--{name}")),
                "--{name} is not a flag of streamrec load"
            );
        }
    }
}
