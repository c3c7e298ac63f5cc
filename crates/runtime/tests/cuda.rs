//! CUDA backend tests: NVRTC compiles every kernel, the input packet is laid out the way the
//! kernels read it, and on a machine with a GPU the CUDA engine (eager and graph-captured, one
//! and many streams, fused and per-feature lookups) gives the CPU backend's scores.
//!
//! Without a device, each test that needs one passes and writes
//! `<test>: skipped: no CUDA device (<reason>)` straight to the process's stderr. libtest
//! captures only `print!`/`eprint!` output (and shows it only for failing tests), so a line
//! printed with `println!` is seen only under `--nocapture`; a direct write to
//! `std::io::stderr()` is not captured and shows in plain `cargo test` output, between the
//! `test ... ok` lines. With `STREAMREC_REQUIRE_CUDA=1` a missing device fails those tests
//! instead (for a GPU machine's run, where a skip would be a false pass). The NVRTC test needs
//! only libnvrtc (e.g. from the `nvidia-cuda-nvrtc` wheel on `LD_LIBRARY_PATH`) and skips the
//! same way, or fails under `STREAMREC_REQUIRE_NVRTC=1`; `crates/kernels/tests/nvrtc_compile.rs`
//! compiles every kernel for sm_80 and sm_90 in CI.
//!
//! Design note: a `harness = false` test binary with its own `main` would print a line per
//! skipped test too, but it loses what the device bundle's `run.sh` and developers rely on from
//! libtest (name filters, `--exact`, `--list`, `--nocapture`, `--test-threads`, per-test panic
//! isolation and parallel runs, cargo-nextest), which would all have to be rewritten here; a
//! runtime-generated test name (`..._skipped`) is impossible with libtest. The direct stderr
//! write keeps libtest and makes the skip visible; the environment gates make it a failure
//! where a device or NVRTC must be there.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use streamrec_graph::{
    assign, Algorithm, AssignConfig, CostModel, DeviceProfile, ModelSpec, OpGraph, SimMode,
};
use streamrec_graph::{fuse_embeddings, OpKind, Source};
use streamrec_kernels::cuda::{self as kc, GemmMath, IndexWidth, PACKET_HEADER_WORDS};
use streamrec_kernels::cuda::{CudaError, KernelSource};
use streamrec_runtime::backend::cuda::{
    chain_us, cuda_available, kernel_error, stage_packet, ArenaLayout, CudaBackend, CudaConfig,
    IndexChoice, STALE_GRAPH,
};
use streamrec_runtime::trace::{replay_name, REPLAY_OP};
use streamrec_runtime::{
    Backend, Batch, CpuBackend, Engine, EngineConfig, IndexVec, RuntimeError, SparseInput,
    ValidatedBatch, Weights,
};

/// Whether the environment variable is set to `1`.
fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// Reports that the running test skips its work: `<test>: skipped: <what> (<reason>)`, written
/// to the process's stderr past libtest's capture so that plain `cargo test` output shows it.
/// Panics instead when `gate` (e.g. `STREAMREC_REQUIRE_CUDA`) is set to `1`.
fn skip(gate: &str, what: &str, reason: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a CUDA test");
    assert!(!required(gate), "{test}: {gate}=1 but {what}: {reason}");
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{test}: skipped: {what} ({reason})");
}

/// Returns from the test, visibly, when there is no CUDA device (see the module docs).
macro_rules! require_cuda {
    () => {
        if let Err(e) = cuda_available() {
            skip("STREAMREC_REQUIRE_CUDA", "no CUDA device", &e);
            return;
        }
    };
}

/// A spec from `workloads/` (or from `$STREAMREC_WORKLOADS`, which the device bundle's run.sh
/// sets, since the test binary runs away from the source tree there).
fn workload(name: &str, row_cap: usize) -> ModelSpec {
    let dir = std::env::var_os("STREAMREC_WORKLOADS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../workloads"));
    let path = dir.join(format!("{name}.toml"));
    ModelSpec::load(&path, Some(row_cap)).expect("workload spec")
}

/// A model with odd shapes: a 6-wide table (scalar lanes), tables written at columns that are
/// not 16-byte aligned, mean and sum pooling, and one branch.
fn odd_spec() -> ModelSpec {
    let text = r#"
name = "odd"
dense = 5
[bottom]
layers = [10]
[sparse]
features = [
  { name = "a", rows = 50, dim = 6, pooling = 3, mode = "mean" },
  { name = "b", rows = 70, dim = 8, pooling = 2 },
  { name = "c", rows = 40, dim = 12, pooling = 5, mode = "mean", branch = [9] },
  { name = "d", rows = 90, dim = 16, pooling = 1 },
]
[interaction]
kind = "cat"
[top]
layers = [7, 1]
[weights]
seed = 11
"#;
    ModelSpec::parse(text, "odd", None).expect("odd spec")
}

/// Random bags of 0 to 2 x pooling indices (empty bags included), 32- or 64-bit.
fn ragged_batch(spec: &ModelSpec, size: usize, wide: bool, seed: u64) -> Batch {
    let mut rng = StdRng::seed_from_u64(seed);
    let dense = (0..size * spec.dense)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let sparse = spec
        .features
        .iter()
        .map(|f| {
            let mut idx = Vec::new();
            let mut offs = Vec::with_capacity(size);
            for _ in 0..size {
                offs.push(idx.len() as i64);
                let len = rng.random_range(0..=2 * f.pooling);
                for _ in 0..len {
                    idx.push(rng.random_range(0..f.rows as i64));
                }
            }
            if wide {
                SparseInput {
                    indices: IndexVec::I64(idx),
                    offsets: IndexVec::I64(offs),
                }
            } else {
                SparseInput {
                    indices: IndexVec::I32(idx.iter().map(|&v| v as i32).collect()),
                    offsets: IndexVec::I32(offs.iter().map(|&v| v as i32).collect()),
                }
            }
        })
        .collect();
    Batch {
        size,
        dense,
        sparse,
    }
}

/// `batch`, validated for `spec` (what an engine runs).
fn valid(spec: &ModelSpec, batch: Batch) -> ValidatedBatch {
    ValidatedBatch::new(batch, spec).expect("a valid batch")
}

/// One way of running a model.
#[derive(Clone, Copy, Debug)]
struct Setup {
    algo: Algorithm,
    streams: usize,
    fuse: Option<usize>,
    graphs: bool,
}

const SETUPS: [Setup; 5] = [
    Setup {
        algo: Algorithm::Single,
        streams: 1,
        fuse: None,
        graphs: false,
    },
    Setup {
        algo: Algorithm::StreamRec,
        streams: 4,
        fuse: None,
        graphs: false,
    },
    Setup {
        algo: Algorithm::StreamRec,
        streams: 8,
        fuse: None,
        graphs: true,
    },
    Setup {
        algo: Algorithm::Single,
        streams: 1,
        fuse: Some(1),
        graphs: true,
    },
    Setup {
        algo: Algorithm::CriticalPath,
        streams: 4,
        fuse: Some(4),
        graphs: false,
    },
];

fn planned(spec: &ModelSpec, s: Setup) -> (Arc<OpGraph>, streamrec_graph::Plan) {
    let g = OpGraph::from_spec(spec);
    let cost = CostModel::new(DeviceProfile::h200());
    let p = assign(
        &g,
        &AssignConfig {
            algo: s.algo,
            max_streams: s.streams,
            batch: 64,
            mode: if s.graphs {
                SimMode::Graph
            } else {
                SimMode::Eager
            },
            fuse: s.fuse,
        },
        &cost,
    )
    .expect("plan");
    (Arc::new(p.graph), p.plan)
}

fn cpu_engine(spec: &ModelSpec, max_batch: usize) -> Engine<CpuBackend> {
    let g = Arc::new(OpGraph::from_spec(spec));
    let w = Weights::for_graph(&g).expect("weights");
    let plan = streamrec_graph::Plan::single(&g);
    Engine::new(
        CpuBackend::new(),
        g,
        plan,
        &w,
        EngineConfig {
            max_batch,
            ..EngineConfig::default()
        },
    )
    .expect("cpu engine")
}

fn cuda_engine(
    spec: &ModelSpec,
    s: Setup,
    cfg: CudaConfig,
    max_batch: usize,
) -> Engine<CudaBackend> {
    let (g, plan) = planned(spec, s);
    let w = Weights::for_graph(&g).expect("weights");
    Engine::new(
        CudaBackend::with_config(cfg).expect("cuda backend"),
        g,
        plan,
        &w,
        EngineConfig {
            max_batch,
            graphs: s.graphs,
            ..EngineConfig::default()
        },
    )
    .expect("cuda engine")
}

/// Largest |a - b| / max(|b|, 1e-3) over the scores; panics on a non-finite CUDA score.
fn max_rel_err(cuda: &[f32], cpu: &[f32]) -> f64 {
    assert_eq!(cuda.len(), cpu.len(), "score counts differ");
    cuda.iter()
        .zip(cpu)
        .map(|(&a, &b)| {
            assert!(
                a.is_finite(),
                "CUDA score {a} is not finite (an unwritten element?)"
            );
            (f64::from(a) - f64::from(b)).abs() / f64::from(b.abs()).max(1e-3)
        })
        .fold(0.0, f64::max)
}

fn check_model(spec: &ModelSpec, batches: &[usize], setups: &[Setup], cfg: &CudaConfig, tol: f64) {
    let max_batch = 128;
    let cpu = cpu_engine(spec, max_batch);
    for &s in setups {
        let cuda = cuda_engine(spec, s, cfg.clone(), max_batch);
        for (i, &n) in batches.iter().enumerate() {
            for wide in [false, true] {
                let b = valid(spec, ragged_batch(spec, n, wide, 1000 + i as u64));
                let want = cpu.infer(&b).expect("cpu scores");
                // Twice: a replayed graph (and reused buffers) must give the same scores.
                for round in 0..2 {
                    let got = cuda.infer(&b).expect("cuda scores");
                    let err = max_rel_err(&got, &want);
                    assert!(
                        err <= tol,
                        "{}: {s:?} batch {n} wide {wide} round {round}: max relative error {err:e} > {tol:e}",
                        spec.name
                    );
                }
            }
        }
    }
}

#[test]
fn backend_reports_unavailable_or_starts() {
    match (cuda_available(), CudaBackend::new(0)) {
        (Err(_), Err(e @ RuntimeError::Unavailable { .. })) => {
            let m = e.to_string();
            assert!(m.starts_with("CUDA backend unavailable: "), "{m}");
            skip("STREAMREC_REQUIRE_CUDA", "no CUDA device", &m);
        }
        (Err(e), other) => panic!(
            "CUDA is unavailable ({e}) but the backend gave {:?}",
            other.map(|_| ())
        ),
        (Ok(()), Ok(b)) => {
            assert_eq!(b.name(), "cuda");
            match CudaBackend::new(1 << 20) {
                Err(RuntimeError::Unavailable { reason, .. }) => {
                    assert!(reason.contains("device"), "{reason}")
                }
                other => panic!(
                    "device 2^20 should be unavailable, got {:?}",
                    other.map(|_| ())
                ),
            }
        }
        (Ok(()), Err(e)) => panic!("CUDA is available but the backend failed: {e}"),
    }
}

#[test]
fn nvrtc_compiles_every_kernel() {
    if let Err(e) = kc::nvrtc_available() {
        skip("STREAMREC_REQUIRE_NVRTC", "NVRTC not loadable", &e);
        return;
    }
    let mut archs = vec!["compute_80".to_string(), "compute_90".to_string()];
    if cuda_available().is_ok() {
        let backend = CudaBackend::new(0).expect("cuda backend");
        let d = backend.describe();
        let arch = d
            .rsplit('(')
            .next()
            .unwrap_or("")
            .trim_end_matches(')')
            .to_string();
        archs.push(arch);
    }
    for arch in &archs {
        for src in kc::SOURCES {
            let ptx = kc::compile(src, arch).unwrap_or_else(|e| panic!("{e}"));
            let text = ptx.to_src();
            for f in src.functions {
                assert!(
                    text.contains(&format!(".entry {f}(")),
                    "{} for {arch}: no entry point {f}",
                    src.file
                );
            }
        }
        let all = kc::compile_all(arch).expect("compile_all");
        assert_eq!(all.len(), kc::SOURCES.len());
        println!("compiled {} kernel sources for {arch}", all.len());
    }
}

/// Reads bag (b, f) from a packet exactly as `bag_lane` in crates/kernels/kernels/embedding.cu does.
fn read_bag(packet: &[i32], slots: usize, f: usize, b: usize, index: IndexWidth) -> Vec<i64> {
    let n = packet[0] as usize;
    if b >= n {
        return Vec::new();
    }
    let offs = &packet[PACKET_HEADER_WORDS..];
    let start = offs[b * slots + f] as usize;
    let end = offs[(b + 1) * slots + f] as usize;
    (start..end)
        .map(|i| match index {
            IndexWidth::I32 => i64::from(packet[i]),
            IndexWidth::I64 => {
                let lo = packet[2 * i] as u32 as u64;
                let hi = packet[2 * i + 1] as u32 as u64;
                ((hi << 32) | lo) as i64
            }
        })
        .collect()
}

#[test]
fn packet_layout_matches_the_kernels() {
    let spec = odd_spec();
    let rows: Vec<usize> = spec.features.iter().map(|f| f.rows).collect();
    for (size, wide, index) in [
        (1, false, IndexWidth::I32),
        (7, true, IndexWidth::I32),
        (7, false, IndexWidth::I64),
        (33, true, IndexWidth::I64),
    ] {
        let batch = ragged_batch(&spec, size, wide, size as u64);
        let mut packet = vec![i32::MIN; 1 << 16];
        let words = stage_packet(&batch, &rows, index, &mut packet)
            .expect("valid batch")
            .expect("room enough");
        assert!(
            packet[..words].iter().all(|&w| w != i32::MIN),
            "unwritten packet word"
        );
        let slots = spec.features.len();
        // The padding of a graph bucket: samples past the batch read as empty bags.
        for b in 0..size + 5 {
            for f in 0..slots {
                let want: Vec<i64> = if b < size {
                    batch
                        .bag(f, b)
                        .map(|i| batch.sparse[f].indices.get(i))
                        .collect()
                } else {
                    Vec::new()
                };
                assert_eq!(
                    read_bag(&packet[..words], slots, f, b, index),
                    want,
                    "bag ({b}, {f})"
                );
            }
        }
        // Too little room is reported, not an error.
        assert_eq!(
            stage_packet(&batch, &rows, index, &mut packet[..words - 1]).expect("valid"),
            None
        );
    }
    // A batch large enough to stage its indices on several threads.
    let batch = ragged_batch(&spec, 60_000, true, 5);
    let total: usize = batch.sparse.iter().map(|s| s.indices.len()).sum();
    assert!(
        total >= 1 << 19,
        "{total} indices are too few to exercise the parallel staging"
    );
    let mut packet = vec![i32::MIN; 4 + 60_001 * 4 + 2 + total];
    let words = stage_packet(&batch, &rows, IndexWidth::I32, &mut packet)
        .expect("valid batch")
        .expect("room enough");
    // The offsets end on an even word, so the indices follow them directly.
    assert_eq!(words, 4 + 60_001 * 4 + total);
    for b in (0..60_000).step_by(997) {
        for f in 0..spec.features.len() {
            let want: Vec<i64> = batch
                .bag(f, b)
                .map(|i| batch.sparse[f].indices.get(i))
                .collect();
            assert_eq!(
                read_bag(&packet[..words], 4, f, b, IndexWidth::I32),
                want,
                "bag ({b}, {f})"
            );
        }
    }
    // Out-of-range indices and disordered offsets are refused before any kernel sees them.
    let mut bad = ragged_batch(&spec, 4, true, 9);
    if let IndexVec::I64(v) = &mut bad.sparse[2].indices {
        v.push(40);
    }
    let mut packet = vec![0; 1 << 12];
    assert!(matches!(
        stage_packet(&bad, &rows, IndexWidth::I32, &mut packet),
        Err(e @ RuntimeError::Batch(_)) if e.to_string().contains("out of range")
    ));
    let mut bad = ragged_batch(&spec, 4, false, 9);
    bad.sparse[1].offsets = IndexVec::I32(vec![0, 3, 1, 4]);
    assert!(matches!(
        stage_packet(&bad, &rows, IndexWidth::I32, &mut packet),
        Err(RuntimeError::Batch(_))
    ));
}

/// Checks a layout: every arena element is written by at most one op, every op's input slice
/// was written by its producer, and every column of a concatenation is written (by the
/// concatenation's copy or by the producer aliased into it).
fn check_layout(g: &OpGraph, max_batch: usize, alias: bool) {
    let lay = ArenaLayout::new(g, max_batch, alias);
    let mut writer: Vec<Option<usize>> = vec![None; lay.len];
    let mut write = |pos: usize, id: usize| {
        assert!(pos < lay.len, "op {id} writes past the arena");
        assert_eq!(
            writer[pos], None,
            "element {pos} written by op {id} and {:?}",
            writer[pos]
        );
        writer[pos] = Some(id);
    };
    for (id, op) in g.ops().enumerate() {
        let (o, ld) = lay.out[id];
        assert!(ld >= op.width, "op {id}: ld {ld} < width {}", op.width);
        let cols: Vec<usize> = if op.kind == OpKind::Concat {
            // The concatenation copies only the inputs not aliased into it.
            let mut c = Vec::new();
            let mut col = 0;
            for t in &op.inputs {
                let aliased =
                    matches!(t.src, Source::Op(p) if lay.alias[p].is_some_and(|(cc, _)| cc == id));
                if !aliased {
                    c.extend(col..col + t.width);
                }
                col += t.width;
            }
            c
        } else {
            (0..op.width).collect()
        };
        for r in 0..max_batch {
            for &c in &cols {
                write(o + r * ld + c, id);
            }
        }
        if let (OpKind::DcnCross { rank, .. }, Some(s)) = (&op.kind, lay.scratch[id]) {
            for e in 0..max_batch * rank {
                write(s + e, usize::MAX - id);
            }
        }
    }
    for (id, op) in g.ops().enumerate() {
        for t in &op.inputs {
            if let Source::Op(p) = t.src {
                let (o, ld) = lay.out[p];
                for r in 0..max_batch {
                    for c in t.col..t.col + t.width {
                        // A concatenation's columns may be written by the producers aliased
                        // into it (through chains of concatenations).
                        let w = writer[o + r * ld + c];
                        let mut x = w;
                        while let Some(Some((cc, _))) = x
                            .filter(|&x| x != p)
                            .map(|x| lay.alias.get(x).copied().flatten())
                        {
                            x = Some(cc);
                        }
                        assert_eq!(
                            x,
                            Some(p),
                            "op {id} reads ({r}, {c}) of op {p}, written by {w:?}"
                        );
                    }
                }
            }
        }
        if op.kind == OpKind::Concat {
            let (o, ld) = lay.out[id];
            for r in 0..max_batch {
                for c in 0..op.width {
                    assert!(
                        writer[o + r * ld + c].is_some(),
                        "concat {id}: ({r}, {c}) unwritten"
                    );
                }
            }
        }
    }
}

#[test]
fn arena_layouts_never_overlap_and_feed_every_reader() {
    let specs = [
        workload("tiny", 1000),
        workload("dlrm-kaggle", 1000),
        workload("streamrec-26", 1000),
        workload("dlrm-mlperf-v2", 1000),
        odd_spec(),
    ];
    let mut aliased = 0;
    for spec in &specs {
        let g = OpGraph::from_spec(spec);
        for fuse in [None, Some(1), Some(4)] {
            let g = match fuse {
                Some(k) => fuse_embeddings(&g, k).expect("fuse"),
                None => g.clone(),
            };
            for alias in [false, true] {
                check_layout(&g, 3, alias);
                if alias {
                    aliased += ArenaLayout::new(&g, 3, true).alias.iter().flatten().count();
                }
            }
        }
    }
    assert!(
        aliased > 0,
        "no layout aliased anything into a concatenation"
    );
}

#[test]
fn cuda_matches_cpu_on_tiny() {
    require_cuda!();
    check_model(
        &workload("tiny", 1000),
        &[1, 3, 64, 128],
        &SETUPS,
        &CudaConfig::default(),
        1e-4,
    );
}

#[test]
fn cuda_matches_cpu_on_dlrm_kaggle() {
    require_cuda!();
    check_model(
        &workload("dlrm-kaggle", 5000),
        &[1, 5, 100],
        &SETUPS,
        &CudaConfig::default(),
        1e-4,
    );
}

#[test]
fn cuda_matches_cpu_on_streamrec_26() {
    require_cuda!();
    check_model(
        &workload("streamrec-26", 3000),
        &[1, 17, 128],
        &SETUPS,
        &CudaConfig::default(),
        1e-4,
    );
}

#[test]
fn cuda_matches_cpu_on_dcn() {
    require_cuda!();
    check_model(
        &workload("dlrm-mlperf-v2", 2000),
        &[2, 64],
        &SETUPS[..3],
        &CudaConfig::default(),
        1e-4,
    );
}

#[test]
fn cuda_matches_cpu_on_odd_shapes() {
    require_cuda!();
    let spec = odd_spec();
    for index in [IndexChoice::I32, IndexChoice::I64] {
        for alias_concat in [true, false] {
            let cfg = CudaConfig {
                index,
                alias_concat,
                ..CudaConfig::default()
            };
            check_model(&spec, &[1, 6, 128], &SETUPS, &cfg, 1e-4);
        }
    }
}

#[test]
fn tf32_stays_close() {
    require_cuda!();
    let cfg = CudaConfig {
        math: GemmMath::Tf32,
        ..CudaConfig::default()
    };
    check_model(
        &workload("streamrec-26", 3000),
        &[64],
        &SETUPS[..1],
        &cfg,
        2e-2,
    );
}

#[test]
fn spans_are_recorded_when_tracing() {
    require_cuda!();
    let spec = workload("tiny", 1000);
    let (g, plan) = planned(&spec, SETUPS[1]);
    let w = Weights::for_graph(&g).expect("weights");
    let e = Engine::new(
        CudaBackend::new(0).expect("cuda backend"),
        Arc::clone(&g),
        plan,
        &w,
        EngineConfig {
            max_batch: 16,
            trace: true,
            ..EngineConfig::default()
        },
    )
    .expect("engine");
    e.infer(&valid(&spec, ragged_batch(&spec, 8, true, 3)))
        .expect("scores");
    let tr = e.take_trace();
    assert_eq!(tr.len(), g.len(), "one span per op");
    assert!(tr
        .iter()
        .all(|t| t.end_us >= t.start_us && t.start_us >= 0.0));
}

#[test]
fn a_graph_captured_before_the_packet_grows_is_refused() {
    require_cuda!();
    let spec = workload("tiny", 1000);
    let g = Arc::new(OpGraph::from_spec(&spec));
    let w = Weights::for_graph(&g).expect("weights");
    let be = CudaBackend::with_config(CudaConfig {
        index_headroom: 1,
        ..CudaConfig::default()
    })
    .expect("cuda backend");
    let dw = Arc::new(be.load_weights(&g, &w).expect("weights on device"));
    let s = be.new_stream().expect("stream");
    let bufs = be.alloc_buffers(&g, 4).expect("buffers");
    assert!(be.begin_capture(&s).expect("capture"));
    for id in g.topo_order() {
        be.launch(&s, &g, id, &dw, &bufs, 4).expect("launch");
    }
    let graph = be.end_capture(&s).expect("graph");
    // A normal batch replays.
    be.upload(&s, &bufs, &Arc::new(ragged_batch(&spec, 4, false, 1)))
        .expect("upload");
    be.replay(&s, &graph).expect("replay");
    be.synchronize(&s).expect("sync");
    // A batch with far more indices than the headroom moves the packet.
    let mut big = ragged_batch(&spec, 4, false, 2);
    for (f, feat) in spec.features.iter().enumerate() {
        let idx: Vec<i32> = (0..400).map(|i| (i % feat.rows) as i32).collect();
        big.sparse[f] = SparseInput {
            indices: IndexVec::I32(idx),
            offsets: IndexVec::I32(vec![0, 100, 200, 300]),
        };
    }
    let before = bufs.generation();
    be.upload(&s, &bufs, &Arc::new(big))
        .expect("upload grows the packet");
    assert_eq!(bufs.generation(), before + 1);
    match be.replay(&s, &graph) {
        Err(RuntimeError::StaleGraph(m)) => {
            assert!(m.starts_with(STALE_GRAPH), "{m}");
            assert!(m.contains("reallocated"), "{m}");
        }
        other => panic!("a stale graph must be refused, got {:?}", other.map(|_| ())),
    }
    // Eager launches read the new packet.
    for id in g.topo_order() {
        be.launch(&s, &g, id, &dw, &bufs, 4).expect("launch");
    }
    be.download(&s, &bufs, g.output(), 4).expect("download");
    be.synchronize(&s).expect("sync");
    assert!(be
        .scores(&bufs, 4)
        .expect("scores")
        .iter()
        .all(|v| v.is_finite()));
}

/// Returns from the test, visibly, when libnvrtc cannot be loaded (see the module docs).
macro_rules! require_nvrtc {
    () => {
        if let Err(e) = kc::nvrtc_available() {
            skip("STREAMREC_REQUIRE_NVRTC", "NVRTC not loadable", &e);
            return;
        }
    };
}

#[test]
fn kernel_build_failures_are_not_unavailable() {
    // A missing library or device: Unavailable (the CLI's exit status 2).
    let e = kernel_error(CudaError::Unavailable(
        "libnvrtc.so could not be loaded".into(),
    ));
    match e {
        e @ RuntimeError::Unavailable { .. } => {
            let m = e.to_string();
            assert!(m.starts_with("CUDA backend unavailable: "), "{m}");
            assert!(m.contains("libnvrtc"), "{m}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // NVRTC rejecting a source: Kernel, with the log (exit status 1).
    let e = kernel_error(CudaError::Compile {
        file: "dense.cu",
        arch: "sm_90".into(),
        log: "dense.cu(12): error: identifier \"oops\" is undefined".into(),
    });
    assert!(
        matches!(&e, RuntimeError::Kernel(m) if m.contains("identifier \"oops\" is undefined") && m.contains("dense.cu")),
        "{e:?}"
    );
    assert!(e.to_string().contains("sm_90"), "{e}");
    // The driver refusing a module: Kernel too.
    let e = kernel_error(CudaError::Load {
        file: "embedding.cu",
        arch: "compute_90".into(),
        reason: "CUDA_ERROR_UNSUPPORTED_PTX_VERSION".into(),
    });
    assert!(
        matches!(&e, RuntimeError::Kernel(m) if m.contains("UNSUPPORTED_PTX_VERSION") && m.contains("embedding.cu")),
        "{e:?}"
    );
}

/// A source NVRTC must reject, with a message naming the undefined identifier.
const BROKEN: KernelSource = KernelSource {
    file: "broken.cu",
    source:
        "extern \"C\" __global__ void broken(float* out) {\n    out[0] = not_defined_here;\n}\n",
    functions: &["broken"],
};

#[test]
fn a_kernel_that_does_not_compile_reports_the_nvrtc_log() {
    require_nvrtc!();
    for arch in ["compute_90", "sm_90"] {
        let err = if arch.starts_with("sm_") {
            kc::compile_cubin(&BROKEN, arch).map(|_| ())
        } else {
            kc::compile(&BROKEN, arch).map(|_| ())
        }
        .expect_err("the source is broken");
        assert!(
            matches!(&err, CudaError::Compile { file: "broken.cu", log, .. } if log.contains("not_defined_here")),
            "{arch}: {err:?}"
        );
        let e = kernel_error(err);
        assert!(
            matches!(&e, RuntimeError::Kernel(m) if m.contains("not_defined_here") && m.contains(arch)),
            "{arch}: {e:?}"
        );
    }
}

#[test]
fn nvrtc_builds_a_cubin_for_the_real_architectures() {
    require_nvrtc!();
    for sm in ["sm_80", "sm_90"] {
        for src in kc::SOURCES {
            let image = kc::compile_cubin(src, sm).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                image.starts_with(b"\x7fELF"),
                "{} for {sm}: not an ELF image ({} bytes)",
                src.file,
                image.len()
            );
            for f in src.functions {
                // The ELF symbol table names every kernel.
                assert!(
                    image.windows(f.len()).any(|w| w == f.as_bytes()),
                    "{} for {sm}: no symbol {f}",
                    src.file
                );
            }
        }
        let all = kc::compile_all_cubin(sm).expect("compile_all_cubin");
        assert_eq!(all.len(), kc::SOURCES.len());
        let again = kc::compile_all_cubin(sm).expect("cached");
        assert!(
            Arc::ptr_eq(&all, &again),
            "the cubins are compiled once per process"
        );
    }
    // A virtual architecture has no cubin: an error, not an empty image.
    assert!(kc::compile_cubin(&kc::SOURCES[0], "compute_90").is_err());
}

#[test]
fn span_times_keep_microseconds_late_in_a_run() {
    // Two minutes after the epoch, an event 1 us after the anchor. Measured from the epoch as
    // one f32 millisecond value it would be lost (f32 steps are ~7.8 us there).
    let anchor_us = 120.0e6;
    let late = 120_000.001f32;
    assert_eq!(late, 120_000.0f32, "f32 milliseconds cannot hold it");
    let t = chain_us(anchor_us, 0.001);
    assert!((t - (anchor_us + 1.0)).abs() < 1e-3, "{t}");
    // Chained over many anchors, the error stays far below a microsecond.
    let mut us = 0.0;
    for _ in 0..100_000 {
        us = chain_us(us, 1.25);
    }
    assert!((us - 125.0e6).abs() < 1.0, "{us}");
}

#[test]
fn cpu_engines_report_no_device_time_or_launch_count() {
    let spec = workload("tiny", 1000);
    let e = cpu_engine(&spec, 8);
    e.infer(&valid(&spec, ragged_batch(&spec, 4, false, 1)))
        .expect("scores");
    assert!(e.take_gpu_times_us().is_empty());
    assert_eq!(e.launches_per_request(), None);
}

#[test]
fn cuda_engines_time_the_plan_count_launches_and_trace_replays() {
    require_cuda!();
    let spec = workload("tiny", 1000);
    for s in [SETUPS[1], SETUPS[2]] {
        let (g, plan) = planned(&spec, s);
        let w = Weights::for_graph(&g).expect("weights");
        let e = Engine::new(
            CudaBackend::new(0).expect("cuda backend"),
            Arc::clone(&g),
            plan,
            &w,
            EngineConfig {
                max_batch: 16,
                graphs: s.graphs,
                trace: true,
                ..EngineConfig::default()
            },
        )
        .expect("engine");
        for i in 0..3 {
            e.infer(&valid(&spec, ragged_batch(&spec, 8, true, i)))
                .expect("scores");
        }
        let gpu = e.take_gpu_times_us();
        assert_eq!(gpu.len(), 3, "{s:?}: one device time per request");
        assert!(gpu.iter().all(|&t| t > 0.0 && t < 1e6), "{s:?}: {gpu:?}");
        assert!(e.take_gpu_times_us().is_empty(), "taken once");
        let launches = e
            .launches_per_request()
            .expect("the CUDA backend counts launches");
        assert!(
            launches >= g.len() as u64 / 2 && launches <= 3 * g.len() as u64,
            "{s:?}: {launches} launches for {} ops",
            g.len()
        );
        let tr = e.take_trace();
        if s.graphs {
            assert_eq!(tr.len(), 3, "{s:?}: one span per replay: {tr:?}");
            assert!(tr.iter().all(|t| t.replay == Some(8)
                && t.op == REPLAY_OP
                && t.name == replay_name(8)
                && t.stream == 0));
        } else {
            assert_eq!(tr.len(), 3 * g.len(), "{s:?}: one span per op");
            assert!(tr.iter().all(|t| t.replay.is_none()));
        }
        assert!(tr
            .iter()
            .all(|t| t.end_us >= t.start_us && t.start_us >= 0.0));
        let mut starts: Vec<f64> = tr.iter().map(|t| t.start_us).collect();
        starts.dedup();
        assert!(starts.len() > 1, "spans have distinct times");
    }
}

#[test]
fn engines_on_the_same_host_weights_share_the_device_copy() {
    require_cuda!();
    let spec = workload("tiny", 1000);
    let g = Arc::new(OpGraph::from_spec(&spec));
    let w = Weights::for_graph(&g).expect("weights");
    let a = CudaBackend::new(0).expect("cuda backend");
    let b = CudaBackend::new(0).expect("cuda backend");
    let wa = a.load_weights(&g, &w).expect("weights on device");
    assert!(!wa.shared());
    let wb = b.load_weights(&g, &w).expect("weights on device");
    assert!(
        wa.shared() && wb.shared(),
        "the second upload reuses the first"
    );
    assert_eq!(wa.bytes(), wb.bytes());
    // Other host tensors (a copy with new allocations) are uploaded again.
    let other = Weights::for_graph(&g).expect("weights");
    let wc = b.load_weights(&g, &other).expect("weights on device");
    assert!(!wc.shared());
    // And the shared copy gives the right scores in both engines.
    let cpu = cpu_engine(&spec, 8);
    let batch = valid(&spec, ragged_batch(&spec, 8, false, 4));
    let want = cpu.infer(&batch).expect("cpu scores");
    for be in [a, b] {
        let e = Engine::new(
            be,
            Arc::clone(&g),
            streamrec_graph::Plan::single(&g),
            &w,
            EngineConfig {
                max_batch: 8,
                ..EngineConfig::default()
            },
        )
        .expect("engine");
        let got = e.infer(&batch).expect("cuda scores");
        assert!(max_rel_err(&got, &want) <= 1e-4);
    }
}
