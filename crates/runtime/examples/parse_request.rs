//! Times parsing and validating a large KServe v2 request (about 100 MB for `streamrec-26` with
//! `--row-cap 100000`) and reports the peak resident set size.
//!
//! ```sh
//! cargo run --release -p streamrec-runtime --example parse_request              # in memory
//! cargo run --release -p streamrec-runtime --example parse_request -- gen r.json # write a body
//! cargo run --release -p streamrec-runtime --example parse_request -- parse r.json
//! ```
//!
//! `parse FILE` does nothing but read, parse and validate (`from_json` + `to_batch`), so its peak
//! RSS is the parser's; `read FILE` does the same with `read_request_file` + `into_batch` (no
//! copy of the values).

use std::path::{Path, PathBuf};
use std::time::Instant;

use streamrec_graph::ModelSpec;
use streamrec_runtime::gen::{random_batch, Skew};
use streamrec_runtime::request::{read_request_file, InferRequest, RequestExt};

const TARGET_BYTES: usize = 100_000_000;

fn spec() -> ModelSpec {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../workloads/streamrec-26.toml");
    ModelSpec::load(&p, Some(100_000)).expect("streamrec-26 spec loads")
}

/// Peak resident set size of this process so far, in MiB.
fn peak_rss_mib() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    u.ru_maxrss as f64 / 1024.0
}

/// A request body of about `TARGET_BYTES`.
fn body(spec: &ModelSpec) -> String {
    let probe = serde_json::to_string(&InferRequest::from_batch(
        spec,
        &random_batch(spec, 256, Skew::Uniform, 1),
    ))
    .expect("request serialises");
    let per_sample = probe.len() / 256;
    let size = (TARGET_BYTES / per_sample).max(1);
    let batch = random_batch(spec, size, Skew::Uniform, 2);
    serde_json::to_string(&InferRequest::from_batch(spec, &batch)).expect("request serialises")
}

fn parse(spec: &ModelSpec, text: &str) {
    let t0 = Instant::now();
    let req = InferRequest::from_json(text).expect("request parses");
    let t1 = Instant::now();
    let batch = req.to_batch(spec).expect("request is valid");
    let t2 = Instant::now();
    println!(
        "{} bytes, batch {}: parse {:.3} s, to_batch {:.3} s, total {:.3} s, peak RSS {:.0} MiB",
        text.len(),
        batch.size,
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
        (t2 - t0).as_secs_f64(),
        peak_rss_mib()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let spec = spec();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => parse(&spec, &body(&spec)),
        ["gen", out] => {
            let text = body(&spec);
            std::fs::write(out, &text).expect("request file written");
            println!("wrote {} bytes to {out}", text.len());
        }
        ["parse", path] => {
            let text = std::fs::read_to_string(PathBuf::from(path)).expect("request file reads");
            println!("after reading the file: peak RSS {:.0} MiB", peak_rss_mib());
            parse(&spec, &text);
        }
        ["read", path] => {
            let t0 = Instant::now();
            let req = read_request_file(Path::new(path), usize::MAX).expect("request file reads");
            let t1 = Instant::now();
            let batch = req.into_batch(&spec).expect("request is valid");
            let t2 = Instant::now();
            println!(
                "batch {}: read + parse {:.3} s, into_batch {:.3} s, total {:.3} s, peak RSS {:.0} MiB",
                batch.size,
                (t1 - t0).as_secs_f64(),
                (t2 - t1).as_secs_f64(),
                (t2 - t0).as_secs_f64(),
                peak_rss_mib()
            );
        }
        _ => {
            eprintln!("usage: parse_request [gen FILE | parse FILE | read FILE]");
            std::process::exit(2);
        }
    }
}
