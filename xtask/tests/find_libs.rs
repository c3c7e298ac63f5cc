//! The CUDA library search of the device run (`xtask/device/find-libs.sh`) against fake folders:
//! a stub libcuda on LD_LIBRARY_PATH, NVRTC and cuBLAS in a toolkit folder, in a Python's
//! `nvidia/cu13/lib` (found by asking fake interpreters) or in ldconfig's cache (a fake
//! `ldconfig`). PATH holds only the fakes and the two tools the script runs, so nothing on this
//! machine leaks in.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const LIBS: [&str; 3] = ["libnvrtc.so.13", "libcublas.so.13", "libcublasLt.so.13"];

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("device/find-libs.sh")
}

/// The absolute path of a program on this process's PATH.
fn on_path(name: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no {name} on PATH"))
}

/// A fresh folder for one test.
struct Fake {
    root: PathBuf,
}

impl Fake {
    fn new(name: &str) -> Fake {
        let root = std::env::temp_dir().join(format!("find-libs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for tool in ["readlink", "timeout"] {
            std::os::unix::fs::symlink(on_path(tool), bin.join(tool)).unwrap();
        }
        // An empty ldconfig cache unless a test writes one.
        let f = Fake { root };
        f.ldconfig(&[]);
        f
    }

    fn path(&self, rel: &str) -> String {
        self.root.join(rel).to_str().unwrap().to_string()
    }

    /// Creates empty files `libs` in folder `rel`; returns the folder.
    fn libs(&self, rel: &str, libs: &[&str]) -> String {
        let d = self.root.join(rel);
        std::fs::create_dir_all(&d).unwrap();
        for l in libs {
            std::fs::write(d.join(l), "").unwrap();
        }
        self.path(rel)
    }

    fn executable(&self, rel: &str, text: &str) {
        let p = self.root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A fake `ldconfig -p` listing these (name, path) pairs.
    fn ldconfig(&self, entries: &[(&str, &str)]) {
        let mut text = format!("#!/bin/sh\necho '{} libs found in cache'\n", entries.len());
        for (name, path) in entries {
            text.push_str(&format!("printf '\\t{name} (libc6,x86-64) => {path}\\n'\n"));
            // A 32-bit entry of the same name must not count.
            text.push_str(&format!(
                "printf '\\t{name} (libc6) => /usr/lib32/{name}\\n'\n"
            ));
        }
        self.executable("bin/ldconfig", &text);
    }

    /// A fake interpreter at `rel` that answers the `nvidia` question with `dirs` (none: the
    /// package is missing, exit 1) and leaves a mark that it was asked.
    fn python(&self, rel: &str, dirs: &[&str]) {
        let mark = self.path("asked");
        let text = if dirs.is_empty() {
            format!("#!/bin/sh\necho \"$0\" >>'{mark}'\necho 'ModuleNotFoundError: No module named nvidia' >&2\nexit 1\n")
        } else {
            format!(
                "#!/bin/sh\necho \"$0\" >>'{mark}'\ncase \"$*\" in *nvidia*) printf '%s\\n' {} ;; *) exit 2 ;; esac\n",
                dirs.iter()
                    .map(|d| format!("'{d}'"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        };
        self.executable(rel, &text);
    }

    fn asked(&self) -> String {
        std::fs::read_to_string(self.root.join("asked")).unwrap_or_default()
    }

    /// Runs `bash find-libs.sh` with PATH = the fake bin folder (plus `extra_path`), the given
    /// LD_LIBRARY_PATH and knobs; returns (the resulting LD_LIBRARY_PATH, the whole output).
    fn run(&self, ld: Option<&str>, extra_path: &[&str], env: &[(&str, &str)]) -> (String, String) {
        let mut path = vec![self.path("bin")];
        path.extend(extra_path.iter().map(|p| p.to_string()));
        let mut cmd = Command::new(on_path("bash"));
        cmd.arg(script())
            .env_clear()
            .env("PATH", path.join(":"))
            .env("HOME", self.path("home"))
            .env("CUDA_TOOLKIT_LIB_DIRS", self.path("cuda/lib64"))
            .env("PYTHON_CANDIDATES", "")
            .envs(env.iter().copied());
        if let Some(ld) = ld {
            cmd.env("LD_LIBRARY_PATH", ld);
        }
        let o = cmd.output().expect("bash runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(o.status.success(), "{text}");
        let ld = text
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("LD_LIBRARY_PATH="))
            .unwrap_or_else(|| panic!("no LD_LIBRARY_PATH line: {text}"))
            .to_string();
        (ld, text)
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[test]
fn stubs_are_removed_and_the_wheel_folder_of_a_python_on_path_is_added() {
    let f = Fake::new("wheel");
    let stubs = f.libs("cuda/lib64/stubs", &["libcuda.so"]);
    let keep = f.libs("keep", &[]);
    let wheel = f.libs("site/nvidia/cu13/lib", &LIBS);
    f.python("bin/python3", &[&wheel]);
    let inherited = format!("{stubs}:{keep}::{}/", f.path("other/stubs"));
    let (ld, text) = f.run(Some(&inherited), &[], &[]);
    assert_eq!(ld, format!("{keep}:{wheel}"), "{text}");
    assert!(text.contains(&format!("removed {stubs}")), "{text}");
    // The report names the file the loader opens, and libcuda is no longer the stub.
    assert!(
        text.contains(&format!("libnvrtc: {wheel}/libnvrtc.so.13 -> ")),
        "{text}"
    );
    assert!(
        text.contains(&format!("libcublas: {wheel}/libcublas.so.13 -> ")),
        "{text}"
    );
    assert!(text.contains("libcuda: not found"), "{text}");
    assert!(!text.contains("WARNING"), "{text}");
}

#[test]
fn nothing_is_added_when_ldconfig_has_the_libraries() {
    let f = Fake::new("ldconfig");
    let sys = f.libs("sys", &["libcuda.so.1"]);
    let entries: Vec<(String, String)> = LIBS
        .iter()
        .chain(["libcuda.so.1"].iter())
        .map(|l| (l.to_string(), format!("{sys}/{l}")))
        .collect();
    let refs: Vec<(&str, &str)> = entries
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    f.ldconfig(&refs);
    let wheel = f.libs("site/nvidia/cu13/lib", &LIBS);
    f.python("bin/python3", &[&wheel]);
    f.libs("cuda/lib64", &LIBS);
    // Unset stays unset; an inherited folder stays as it is.
    let (ld, text) = f.run(None, &[], &[]);
    assert_eq!(ld, "", "{text}");
    assert!(
        text.contains(&format!("libcuda: {sys}/libcuda.so.1")),
        "{text}"
    );
    assert!(
        text.contains(&format!("libnvrtc: {sys}/libnvrtc.so.13")),
        "{text}"
    );
    let keep = f.libs("keep", &[]);
    let (ld, text) = f.run(Some(&keep), &[], &[]);
    assert_eq!(ld, keep, "{text}");
    assert_eq!(
        f.asked(),
        "",
        "no Python is asked when ldconfig has everything"
    );
}

#[test]
fn the_toolkit_comes_before_the_wheels_and_every_python_is_asked() {
    let f = Fake::new("order");
    // The toolkit has NVRTC only (its stubs folder, listed too, is never used).
    let toolkit = f.libs("cuda/lib64", &["libnvrtc.so.13"]);
    let tk_stubs = f.libs("cuda/lib64/stubs", &LIBS);
    // python3 on PATH has no `nvidia` package; `python` in a second PATH folder has one whose
    // folder lacks cuBLASLt; a venv found by glob has the rest.
    f.python("bin/python3", &[]);
    let wheel = f.libs("site/nvidia/cu13/lib", &["libcublas.so.13"]);
    f.python("bin2/python", &[&wheel, &f.path("missing/nvidia/cu13/lib")]);
    let venv = f.libs("opt/torch/.venv/site/nvidia/cu13/lib", &LIBS);
    f.python("opt/torch/.venv/bin/python3", &[&venv]);
    let glob = f.path("opt/*/.venv/bin/python3");
    let (ld, text) = f.run(
        None,
        &[&f.path("bin2")],
        &[
            ("CUDA_TOOLKIT_LIB_DIRS", &format!("{tk_stubs} {toolkit}")),
            ("PYTHON_CANDIDATES", &glob),
        ],
    );
    assert_eq!(ld, format!("{toolkit}:{wheel}:{venv}"), "{text}");
    let asked = f.asked();
    assert_eq!(asked.lines().count(), 3, "each Python asked once: {asked}");
    assert!(
        text.contains("libcublasLt: ") && !text.contains("NOT FOUND"),
        "{text}"
    );
}

#[test]
fn a_missing_library_is_reported_and_sourcing_exports_the_result() {
    let f = Fake::new("missing");
    let (ld, text) = f.run(Some("/x/stubs"), &[], &[]);
    assert_eq!(ld, "", "{text}");
    for l in LIBS {
        assert!(text.contains(&format!("{l}: NOT FOUND")), "{text}");
    }
    // run.sh sources the script: the result must land in the calling shell.
    let wheel = f.libs("site/nvidia/cu13/lib", &LIBS);
    f.python("bin/python3", &[&wheel]);
    let o = Command::new(on_path("bash"))
        .arg("-c")
        .arg(format!(
            ". '{}'; setup_cuda_libs >/dev/null; echo \"[$LD_LIBRARY_PATH]\"",
            script().display()
        ))
        .env_clear()
        .env("PATH", f.path("bin"))
        .env("LD_LIBRARY_PATH", "/opt/cuda/lib64/stubs:/keep")
        .env("CUDA_TOOLKIT_LIB_DIRS", "")
        .env("PYTHON_CANDIDATES", "")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.trim(), format!("[/keep:{wheel}]"), "{out}");
}

#[test]
fn a_stub_libcuda_and_a_library_of_another_cuda_are_flagged() {
    let f = Fake::new("warnings");
    // ldconfig's cache itself points at a stub; a folder on LD_LIBRARY_PATH (not a stubs one)
    // has an unversioned libnvrtc.so of CUDA 12, which cudarc asks for before libnvrtc.so.13.
    let stub = f.libs("cuda/lib64/stubs", &["libcuda.so"]);
    f.ldconfig(&[("libcuda.so", &format!("{stub}/libcuda.so"))]);
    let cu12 = f.libs("cu12", &["libnvrtc.so.12.4.127"]);
    std::os::unix::fs::symlink(
        format!("{cu12}/libnvrtc.so.12.4.127"),
        format!("{cu12}/libnvrtc.so"),
    )
    .unwrap();
    let (_, text) = f.run(Some(&cu12), &[], &[]);
    assert!(
        text.contains("WARNING: libcuda is the toolkit's STUB"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "libnvrtc: {cu12}/libnvrtc.so -> {cu12}/libnvrtc.so.12.4.127 (asked as libnvrtc.so)"
        )),
        "{text}"
    );
    assert!(text.contains("WARNING: libnvrtc is not CUDA 13"), "{text}");
}
