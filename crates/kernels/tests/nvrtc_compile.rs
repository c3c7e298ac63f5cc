//! NVRTC compiles every CUDA source in `kernels/` for sm_80 and sm_90, through the code path
//! the runtime uses ([`cuda::compile`]: the embedded source, `--gpu-architecture=<arch>`, the
//! file name as the program name), so that a kernel that does not compile fails here instead of
//! at a GPU machine's start-up. Needs libnvrtc only, no GPU: `.ci/run` installs the
//! `nvidia-cuda-nvrtc` wheel and puts its `nvidia/cu13/lib` folder on `LD_LIBRARY_PATH`.
//!
//! Each source is compiled for `compute_80` and `compute_90` (the PTX the runtime JIT-loads on
//! an A100 and on an H100/H200) and for `sm_80` and `sm_90` (the same source and options through
//! NVRTC's back end to machine code, which also catches what only the assembler reports). One
//! line per source and architecture (file, architecture, PTX bytes, compile ms) goes to the
//! process's stderr, which libtest does not capture, so the compile shows in a plain
//! `cargo test` log.
//!
//! Without libnvrtc the test passes and prints `nvrtc_compiles_every_kernel: skipped: NVRTC not
//! loadable (<reason>)` the same way, unless `STREAMREC_REQUIRE_NVRTC=1` (CI sets it), which
//! makes a missing NVRTC a failure.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use streamrec_kernels::cuda;

/// The architectures every source is compiled for.
const ARCHS: [&str; 4] = ["compute_80", "sm_80", "compute_90", "sm_90"];

/// Writes one line to the process's stderr, bypassing libtest's output capture (which takes
/// only `print!`/`eprint!`), so that it shows in plain `cargo test` output.
fn visible(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

/// Whether the environment variable is set to `1`.
fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

#[test]
fn every_kernel_file_is_embedded() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("kernels/ folder")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".cu") || name.ends_with(".cuh"))
        .collect();
    let embedded: BTreeSet<String> = cuda::SOURCES.iter().map(|s| s.file.to_string()).collect();
    assert_eq!(
        on_disk, embedded,
        "kernels/ and cuda::SOURCES list different files"
    );
    for src in cuda::SOURCES {
        let text = std::fs::read_to_string(dir.join(src.file)).expect("kernel source");
        assert_eq!(text, src.source, "{}: embedded text is stale", src.file);
        assert!(!src.functions.is_empty(), "{}: no kernels listed", src.file);
        for f in src.functions {
            assert!(
                text.contains(&format!("__global__ void {f}(")),
                "{}: no `__global__ void {f}(`",
                src.file
            );
        }
    }
}

#[test]
fn nvrtc_compiles_every_kernel() {
    if let Err(e) = cuda::nvrtc_available() {
        assert!(
            !required("STREAMREC_REQUIRE_NVRTC"),
            "STREAMREC_REQUIRE_NVRTC=1 but NVRTC is not loadable: {e}"
        );
        visible(&format!(
            "nvrtc_compiles_every_kernel: skipped: NVRTC not loadable ({e})"
        ));
        return;
    }
    let mut failures = Vec::new();
    let mut compiled = 0;
    for arch in ARCHS {
        for src in cuda::SOURCES {
            let start = Instant::now();
            let result = cuda::compile(src, arch);
            let ms = start.elapsed().as_secs_f64() * 1e3;
            match result {
                Ok(ptx) => {
                    let text = ptx.to_src();
                    visible(&format!(
                        "nvrtc: {:<16} {:<10} {:>8} B PTX {:>7.1} ms",
                        src.file,
                        arch,
                        text.len(),
                        ms
                    ));
                    for f in src.functions {
                        if !text.contains(&format!(".entry {f}(")) {
                            failures.push(format!("{} for {arch}: no entry point {f}", src.file));
                        }
                    }
                    compiled += 1;
                }
                Err(e) => {
                    visible(&format!(
                        "nvrtc: {:<16} {:<10} FAILED after {ms:.1} ms",
                        src.file, arch
                    ));
                    failures.push(e.to_string());
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} compiles failed:\n{}",
        failures.len(),
        ARCHS.len() * cuda::SOURCES.len(),
        failures.join("\n")
    );
    // The runtime's entry point: every source at once, cached per architecture.
    for arch in ["compute_80", "compute_90"] {
        let all = cuda::compile_all(arch).expect("compile_all");
        assert_eq!(all.len(), cuda::SOURCES.len());
        assert!(std::sync::Arc::ptr_eq(
            &all,
            &cuda::compile_all(arch).expect("cached")
        ));
    }
    visible(&format!(
        "nvrtc: compiled {compiled} kernel sources x architectures ({})",
        ARCHS.join(", ")
    ));
}
