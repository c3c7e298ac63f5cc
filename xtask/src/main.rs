//! `cargo xtask`: experiment orchestration for StreamRec (`bench`, `serving`, `serve-bench`,
//! `load`, `cluster`, `fuzz`, `device-bundle`).

mod bench;
mod bench_report;
mod cluster;
mod common;
mod device_bundle;
mod fuzz;
mod load;
mod peer;
mod plots;
mod rootfs;
mod serve_bench;
mod serving;

use anyhow::Result;

const HELP: &str = "\
cargo xtask <task> [options]

tasks:
  bench [--quick] [--out DIR] [--row-cap N] [--peer onnxruntime] [--no-serve] [serving options]
        CPU engine experiments: every algorithm at K in {1,2,4,8} on tiny and streamrec-26 at
        batch 1, 16, 128, 1024 (p50/p99 latency, throughput, ratio to single measured in the same
        run), 1 vs 2 execution contexts, 1 vs every cpu thread, and measured vs simulated
        multi-stream speed-ups; then the serving experiment (below) unless --no-serve. Writes
        DIR/engine.csv, contexts.csv, threads.csv, prediction.csv, the calibrated
        cpu-profile.toml, the serving CSVs and SVG plots, and report.md embedding them
        (default DIR: results/<date>-cpu). --quick runs tiny only at batch 1 and 16, and a short
        serving run on tiny. --peer onnxruntime exports each model with the same weights to
        ONNX (tools/onnx_peer.py; Python with onnx and onnxruntime), checks that ONNX Runtime's
        scores equal the engine's within 1e-5, times its thread settings in rounds interleaved
        with the engine's (tools/onnx_peer.py serve) and writes DIR/peer.csv (StreamRec's best
        p50 / ORT's best p50) and machine.txt.
  peer [--model FILE] [--row-cap N] [--batch B,..] [--budget-ms MS] [--keep DIR]
        The ONNX Runtime comparison of `bench --peer onnxruntime` alone, for one model (default
        streamrec-26.toml at 100,000 rows, batch 1,16,128,1024): the engine's single plan on 1
        and on every core's pool, StreamRec on every core and measured auto, with ORT's thread
        settings timed in rounds between the engine's on the same batches (its scores checked
        first). --keep DIR leaves the ONNX export there (`python3 tools/onnx_peer.py time DIR`
        reruns ORT's timing alone).
  serving [--quick] [--out DIR] [serving options]
        The serving experiment alone: `streamrec serve --algo single` and `--algo auto`, driven
        open-loop with Poisson arrivals and the Azure trace over a sweep of offered QPS; the
        largest QPS whose p99 stays under the bound, latency at a common offered load (half the
        single plan's max), the two headline ratios against the published 27.8% and 52% with
        the run's noise floor; DIR/serving*.csv, serving-*.svg and serving.md
        (default DIR: results/<date>-serving).
  serve-bench [--secs S] [--clients N] [--rounds R] [--row-cap N] [--out DIR]
        What the HTTP server adds over calling the engine directly, side by side in one run over
        loopback with keep-alive: tiny at batch 1 and streamrec-26 (row-capped) at batch 128,
        requests/s and p50/p99 with 1 client and with N (default 8), median of R rounds (default
        3) of S seconds (default 2) with their spread. --out DIR writes DIR/serve.csv.
  load [--workers N] [--url U] [--qps Q] [--duration D] [--schedule S] [--batch B] [--out DIR] [--replace]
        The sharded load of deploy/k8s/ (an Indexed Job of `streamrec load --shards N`) as N
        (default 3) local `streamrec load --shard i/N` processes started together against --url
        or a local `streamrec serve` on a free port, merged with `streamrec load merge`; prints
        the total and whether the achieved rate is within 2% of the offered (`cargo xtask load
        --help` for every option).
  cluster [--workers N] [--replicas R] [--faults LIST] [--qps Q] [--duration D] [--out DIR]
        The same shards across a private network of Linux network namespaces (root): replicas,
        nginx and workers each on a host of its own, faults (a worker's or a replica's link
        down, a worker killed, a worker started late) each checked, merged counts against the
        replicas' metrics (`cargo xtask cluster --help` for every option).
  rootfs [--out DIR] [--bin PATH]
        The image's files as a folder (default target/rootfs), the layout deploy/k8s/Dockerfile
        copies: `cargo xtask rootfs --out deploy/k8s/rootfs && docker build -t streamrec:latest
        deploy/k8s` where a registry is reachable.
  fuzz [--secs N] [--seed S]
        Random and mutated infer bodies (JSON and binary) through the parser and every 20th
        through a live server for N seconds (default 30): no panic, only 200 or 4xx.
  device-bundle [--out DIR] [--no-strip] [--replace]
        Builds release binaries and the CUDA test binary into .device/ with .device/run.sh, which
        on a GPU machine (no cargo there) finds the CUDA libraries (never a */stubs folder),
        probes the device (exit 2 with `no CUDA device` when there is none), runs the CUDA tests,
        the CUDA-vs-CPU correctness check and the streamrec-26 benchmark (all batch sizes of a
        plan in one process; $OUT/gpu-bench.csv appended row by row), and starts nothing after
        DEADLINE seconds (default 480; about 4-5 minutes expected). Knobs: the header of run.sh.
";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bench") => bench::run(&args[1..]),
        Some("peer") => bench::peer_task(&args[1..]),
        Some("device-bundle") => device_bundle::run(&args[1..]),
        Some("serving") => serving::main(&args[1..]),
        Some("serve-bench") => serve_bench::run(&args[1..]),
        Some("fuzz") => fuzz::run(&args[1..]),
        Some("load") => load::run(&args[1..]),
        Some("cluster") => cluster::run(&args[1..]),
        Some("rootfs") => rootfs::run(&args[1..]),
        Some("help") | Some("--help") | Some("-h") | None => {
            print!("{HELP}{}", serving::HELP);
            Ok(())
        }
        Some(other) => {
            eprint!("unknown task `{other}`\n\n{HELP}");
            std::process::exit(2);
        }
    }
}
