//! Weights from safetensors: a file written by the Python `safetensors` package (numpy) loads
//! with the right values, and missing tensors, wrong shapes and wrong dtypes are named.

use std::path::{Path, PathBuf};
use std::process::Command;

use streamrec_graph::{ModelSpec, OpGraph};
use streamrec_runtime::Weights;

fn tiny() -> OpGraph {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../workloads/tiny.toml");
    OpGraph::from_spec(&ModelSpec::load(&p, None).expect("tiny loads"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("streamrec-st-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d.join(name)
}

/// Writes every tensor the graph needs with numpy values `sin(i * 0.37 + k)`, `k` the tensor's
/// position, with optional damage: `drop` omits a tensor, `reshape` gives one the wrong shape,
/// `f64` stores one as float64.
fn python_write(graph: &OpGraph, path: &Path, damage: &str) {
    let specs: Vec<String> = graph
        .weights()
        .iter()
        .map(|w| format!("({:?}, {:?})", w.name, w.shape))
        .collect();
    let script = format!(
        r#"
import numpy as np
from safetensors.numpy import save_file
specs = [{}]
damage = {damage:?}
out = {{}}
for k, (name, shape) in enumerate(specs):
    n = int(np.prod(shape))
    a = np.sin(np.arange(n, dtype=np.float64) * 0.37 + k).astype(np.float32).reshape(shape)
    if damage == "drop" and name == "top.1.weight":
        continue
    if damage == "reshape" and name == "bottom.0.weight":
        a = a.reshape(shape[::-1])
    if damage == "f64" and name == "emb.C2.weight":
        a = a.astype(np.float64)
    out[name] = a
save_file(out, {:?})
"#,
        specs.join(", "),
        path.display().to_string()
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("python3 runs (the test needs python3 with numpy and safetensors: pip install numpy safetensors)");
    assert!(
        out.status.success(),
        "python safetensors writer failed (pip install numpy safetensors): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn loads_a_file_written_by_python_safetensors() {
    let g = tiny();
    let p = tmp("ok.safetensors");
    python_write(&g, &p, "");
    let w = Weights::load(&g, &p).expect("loads");
    for (k, spec) in g.weights().iter().enumerate() {
        let t = w.get(&spec.name).expect("present");
        assert_eq!(t.shape, spec.shape, "{}", spec.name);
        for (i, &v) in t.data.iter().enumerate().step_by(7) {
            let want = ((i as f64) * 0.37 + k as f64).sin() as f32;
            assert_eq!(v, want, "{}[{i}]", spec.name);
        }
    }
    // Our own writer round-trips too.
    let p2 = tmp("roundtrip.safetensors");
    w.save(&p2).expect("saves");
    let w2 = Weights::load(&g, &p2).expect("reloads");
    for spec in g.weights() {
        assert_eq!(
            w.get(&spec.name).unwrap().data,
            w2.get(&spec.name).unwrap().data
        );
    }
}

#[test]
fn damaged_files_name_the_tensor() {
    let g = tiny();
    for (damage, expect) in [
        ("drop", "tensor `top.1.weight` is missing"),
        (
            "reshape",
            "tensor `bottom.0.weight` has shape [13, 32], expected [32, 13]",
        ),
        ("f64", "tensor `emb.C2.weight` has dtype F64, expected F32"),
    ] {
        let p = tmp(&format!("{damage}.safetensors"));
        python_write(&g, &p, damage);
        let e = Weights::load(&g, &p).unwrap_err().to_string();
        assert!(e.contains(expect), "{damage}: {e}");
    }
    let p = tmp("garbage.safetensors");
    std::fs::write(&p, b"not a safetensors file").unwrap();
    let e = Weights::load(&g, &p).unwrap_err().to_string();
    assert!(e.contains("not a safetensors file"), "{e}");
}
