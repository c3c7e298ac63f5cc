//! Output folders that a tool may write into without ever deleting what it did not write.
//!
//! [`prepare`] runs before any work: it creates the folder if it is missing, refuses a folder
//! that already holds anything unless told to replace, and even then removes only the files
//! the tool itself writes (the `owned` paths, relative to the folder), refusing outright when
//! the folder holds anything else (a symbolic link included: none is followed). It then writes
//! and removes a probe file, so that a folder that cannot be written fails before a run rather
//! than after it. Tools whose file names vary (`cargo xtask load`, `cargo xtask device-bundle`)
//! keep a manifest of what they write ([`write_manifest`], [`read_manifest`]).

use std::path::{Component, Path, PathBuf};

use crate::error::LoadError;

/// Most entries a folder may hold for [`prepare`] to look through it.
pub const MAX_ENTRIES: usize = 100_000;
/// Largest manifest read.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// Checks that `rel` is a plain relative path inside a folder (no `..`, no root).
fn is_inside(rel: &Path) -> bool {
    !rel.as_os_str().is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Every entry under `dir` (relative paths, directories after their contents), without
/// following symbolic links; stops with an error past [`MAX_ENTRIES`].
fn entries(dir: &Path, flag: &str) -> Result<Vec<(PathBuf, bool)>, LoadError> {
    fn walk(
        root: &Path,
        rel: &Path,
        out: &mut Vec<(PathBuf, bool)>,
        flag: &str,
    ) -> Result<(), LoadError> {
        let here = root.join(rel);
        let rd = std::fs::read_dir(&here).map_err(|e| LoadError::io(&here, e))?;
        for e in rd {
            let e = e.map_err(|e| LoadError::io(&here, e))?;
            if out.len() >= MAX_ENTRIES {
                return Err(LoadError::invalid(format!(
                    "{flag} {}: holds more than {MAX_ENTRIES} entries",
                    root.display()
                )));
            }
            let r = rel.join(e.file_name());
            let t = e.file_type().map_err(|err| LoadError::io(e.path(), err))?;
            if t.is_dir() {
                walk(root, &r, out, flag)?;
                out.push((r, true));
            } else {
                out.push((r, false));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, Path::new(""), &mut out, flag)?;
    Ok(out)
}

/// Makes `dir` ready to receive the tool's files; `flag` names it in errors (`--out`),
/// `replace` allows removing the `owned` files of an earlier run (paths relative to `dir`).
///
/// - missing: created (with its parents);
/// - empty: used;
/// - not empty, without `replace`: an error;
/// - not empty, with `replace`: if every file in it is one of `owned` (and every folder in it
///   leads to one), those files and then those folders are removed; otherwise an error naming
///   an entry the tool did not write, and nothing is removed.
///
/// Then a probe file is written and removed. Returns true when the folder was created.
pub fn prepare(
    dir: &Path,
    flag: &str,
    replace: bool,
    owned: &[PathBuf],
) -> Result<bool, LoadError> {
    let shown = dir.display();
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(LoadError::invalid(format!("{flag} {shown}: {e}")));
        }
    };
    let created = meta.is_none();
    match meta {
        None => std::fs::create_dir_all(dir)
            .map_err(|e| LoadError::invalid(format!("{flag} {shown}: cannot create it: {e}")))?,
        Some(m) if m.is_dir() => {
            let found = entries(dir, flag)?;
            if !found.is_empty() {
                clear(dir, flag, replace, owned, &found)?;
            }
        }
        Some(m) if m.file_type().is_symlink() => {
            return Err(LoadError::invalid(format!(
                "{flag} {shown}: is a symbolic link; give the folder itself"
            )));
        }
        Some(_) => {
            return Err(LoadError::invalid(format!(
                "{flag} {shown}: exists and is not a folder"
            )));
        }
    }
    let probe = dir.join(format!(".write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"probe")
        .map_err(|e| LoadError::invalid(format!("{flag} {shown}: cannot write in it: {e}")))?;
    std::fs::remove_file(&probe).map_err(|e| {
        LoadError::invalid(format!(
            "{flag} {shown}: cannot remove {}: {e}",
            probe.display()
        ))
    })?;
    Ok(created)
}

/// Removes the owned files of a non-empty folder, or refuses (see [`prepare`]).
fn clear(
    dir: &Path,
    flag: &str,
    replace: bool,
    owned: &[PathBuf],
    found: &[(PathBuf, bool)],
) -> Result<(), LoadError> {
    let shown = dir.display();
    if !replace {
        return Err(LoadError::invalid(format!(
            "{flag} {shown}: is not empty ({} entries, e.g. `{}`); pass --replace to overwrite \
             an earlier run's files, or give another folder",
            found.len(),
            found[0].0.display()
        )));
    }
    let is_owned_file = |p: &Path| owned.iter().any(|o| o == p);
    let leads_to_owned = |p: &Path| owned.iter().any(|o| o.starts_with(p) && o != p);
    let foreign: Vec<&PathBuf> = found
        .iter()
        .filter(|(p, is_dir)| {
            if *is_dir {
                !leads_to_owned(p)
            } else {
                !is_owned_file(p)
            }
        })
        .map(|(p, _)| p)
        .collect();
    if let Some(first) = foreign.first() {
        return Err(LoadError::invalid(format!(
            "{flag} {shown}: holds `{}`{}, which this tool did not write: refusing to replace \
             (nothing was removed); give another folder",
            first.display(),
            match foreign.len() {
                1 => String::new(),
                n => format!(" and {} other entries", n - 1),
            }
        )));
    }
    for (p, is_dir) in found {
        let full = dir.join(p);
        let r = if *is_dir {
            // Never remove_dir_all: a folder is removed only once its owned files are gone.
            std::fs::remove_dir(&full)
        } else {
            std::fs::remove_file(&full)
        };
        r.map_err(|e| {
            LoadError::invalid(format!(
                "{flag} {shown}: cannot remove {}: {e}",
                full.display()
            ))
        })?;
    }
    Ok(())
}

/// Writes `files` (relative paths, one a line) to `dir/name`.
pub fn write_manifest(dir: &Path, name: &str, files: &[PathBuf]) -> Result<(), LoadError> {
    let mut text = String::new();
    for f in files {
        text.push_str(&f.to_string_lossy());
        text.push('\n');
    }
    let p = dir.join(name);
    std::fs::write(&p, text).map_err(|e| LoadError::io(&p, e))
}

/// The files listed in `dir/name` (plus the manifest itself); empty when there is none. A line
/// that is not a plain relative path (absolute, or with `..`) is an error.
pub fn read_manifest(dir: &Path, name: &str) -> Result<Vec<PathBuf>, LoadError> {
    use std::io::Read as _;
    let p = dir.join(name);
    let f = match std::fs::File::open(&p) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LoadError::io(&p, e)),
    };
    let mut text = String::new();
    f.take(MAX_MANIFEST_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| LoadError::io(&p, e))?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(LoadError::format(
            &p,
            format!("more than the limit of {MAX_MANIFEST_BYTES} bytes"),
        ));
    }
    let mut files = vec![PathBuf::from(name)];
    for (i, line) in text.lines().enumerate() {
        let rel = PathBuf::from(line);
        if !is_inside(&rel) {
            return Err(LoadError::format(
                &p,
                format!(
                    "line {}: `{line}` is not a relative path inside the folder",
                    i + 1
                ),
            ));
        }
        files.push(rel);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_are_inside() {
        assert!(is_inside(Path::new("a/b.txt")));
        assert!(!is_inside(Path::new("../a")));
        assert!(!is_inside(Path::new("/etc/passwd")));
        assert!(!is_inside(Path::new("a/../../b")));
        assert!(!is_inside(Path::new("")));
    }
}
