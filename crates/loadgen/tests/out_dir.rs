//! `out::prepare` never deletes what the tool did not write: a missing folder is made, an empty
//! one used, a non-empty one refused without `replace`; with it, only the owned files (and the
//! folders leading to them) go, and a folder holding anything else is refused with nothing
//! removed. A path under a regular file fails before any work.

use std::path::{Path, PathBuf};

use streamrec_loadgen::out::{prepare, read_manifest, write_manifest};

fn scratch(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("streamrec-out-dir-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn owned() -> Vec<PathBuf> {
    ["summary.json", "lag.hdr", "shard-0/summary.json"]
        .iter()
        .map(PathBuf::from)
        .collect()
}

fn put(dir: &Path, rel: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, rel).unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_missing_folder_is_made_and_an_empty_one_used() {
    let d = scratch("new");
    let out = d.join("a/b");
    assert!(prepare(&out, "--out", false, &owned()).unwrap());
    assert!(out.is_dir());
    // The probe file is gone again.
    assert!(names(&out).is_empty());
    assert!(!prepare(&out, "--out", false, &owned()).unwrap());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_folder_with_anything_in_it_is_refused_without_replace() {
    let d = scratch("full");
    put(&d, "summary.json");
    let e = prepare(&d, "--out", false, &owned())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!("--out {}: is not empty", d.display())),
        "{e}"
    );
    assert!(e.contains("--replace"), "{e}");
    assert_eq!(names(&d), ["summary.json"]);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn replace_removes_the_owned_files_only() {
    let d = scratch("replace");
    for f in ["summary.json", "lag.hdr", "shard-0/summary.json"] {
        put(&d, f);
    }
    assert!(!prepare(&d, "--out", true, &owned()).unwrap());
    assert!(d.is_dir() && names(&d).is_empty(), "{:?}", names(&d));
    // An empty folder that leads to no owned file is not the tool's either.
    std::fs::create_dir(d.join("kept")).unwrap();
    let e = prepare(&d, "--out", true, &owned())
        .unwrap_err()
        .to_string();
    assert!(e.contains("`kept`"), "{e}");
    assert!(d.join("kept").is_dir());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn replace_refuses_a_folder_holding_anything_else_and_removes_nothing() {
    // A working folder: the owned files beside someone's source tree.
    let d = scratch("foreign");
    for f in [
        "summary.json",
        "shard-0/summary.json",
        "shard-0/notes.txt",
        "src/main.rs",
    ] {
        put(&d, f);
    }
    let e = prepare(&d, "--out", true, &owned())
        .unwrap_err()
        .to_string();
    assert!(e.contains("which this tool did not write"), "{e}");
    assert!(e.contains("nothing was removed"), "{e}");
    for f in [
        "summary.json",
        "shard-0/summary.json",
        "shard-0/notes.txt",
        "src/main.rs",
    ] {
        assert!(d.join(f).is_file(), "{f} was removed");
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[cfg(unix)]
#[test]
fn links_are_never_followed() {
    // `shard-0` is a link to a folder elsewhere that holds a file with an owned name.
    let d = scratch("link");
    let elsewhere = scratch("link-target");
    put(&elsewhere, "summary.json");
    std::os::unix::fs::symlink(&elsewhere, d.join("shard-0")).unwrap();
    let e = prepare(&d, "--out", true, &owned())
        .unwrap_err()
        .to_string();
    assert!(e.contains("`shard-0`"), "{e}");
    assert!(elsewhere.join("summary.json").is_file());
    // A link as the folder itself is refused too.
    let e = prepare(&d.join("shard-0"), "--out", true, &owned())
        .unwrap_err()
        .to_string();
    assert!(e.contains("symbolic link"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(&elsewhere);
}

#[test]
fn a_path_under_a_regular_file_fails_naming_the_flag() {
    let d = scratch("file");
    put(&d, "FILE");
    for (out, want) in [("FILE/sub", "--out"), ("FILE", "not a folder")] {
        let e = prepare(&d.join(out), "--out", false, &owned())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--out "), "{out}: {e}");
        assert!(e.contains(want), "{out}: {e}");
        assert!(!e.contains('\n'), "{e}");
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn manifests_list_relative_paths_inside_the_folder() {
    let d = scratch("manifest");
    assert!(read_manifest(&d, ".files").unwrap().is_empty());
    write_manifest(&d, ".files", &owned()).unwrap();
    let mut listed = read_manifest(&d, ".files").unwrap();
    listed.sort();
    let mut want = owned();
    want.push(".files".into());
    want.sort();
    assert_eq!(listed, want);
    // A run of the tool that wrote the manifest can be replaced; the manifest itself goes too.
    put(&d, "shard-0/summary.json");
    prepare(&d, "--out", true, &listed).unwrap();
    assert!(names(&d).is_empty());
    for bad in ["../x", "/etc/passwd", "a/../../b"] {
        std::fs::write(d.join(".files"), format!("summary.json\n{bad}\n")).unwrap();
        let e = read_manifest(&d, ".files").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains(bad), "{bad}: {e}");
    }
    let _ = std::fs::remove_dir_all(&d);
}
