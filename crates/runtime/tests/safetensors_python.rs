//! Weights from safetensors: a file written by the Python `safetensors` package (numpy) loads
//! with the right values, and missing tensors, wrong shapes and wrong dtypes are named; a value
//! that is not finite (NaN, +inf, -inf) is refused, naming the tensor and where it lies.

use std::path::{Path, PathBuf};
use std::process::Command;

use streamrec_graph::{ModelSpec, OpGraph};
use streamrec_runtime::{RuntimeError, Tensor, Weights};

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

/// Tiny's generated weights with `value` at flat `index` of `tensor`, saved as `file`.
fn damaged(g: &OpGraph, file: &str, tensor: &str, index: usize, value: f32) -> PathBuf {
    let mut w = Weights::generate(g, 7).expect("generates");
    let mut t: Tensor = (**w.get(tensor).expect("tensor exists")).clone();
    t.data[index] = value;
    w.insert(tensor, t);
    let p = tmp(file);
    w.save(&p).expect("saves");
    p
}

#[test]
fn a_nan_in_a_table_names_the_tensor_row_and_column() {
    let g = tiny();
    // emb.C2.weight is [37, 16]: flat index 37 is row 2, column 5.
    let p = damaged(&g, "nan.safetensors", "emb.C2.weight", 2 * 16 + 5, f32::NAN);
    let e = Weights::load(&g, &p).unwrap_err();
    assert!(
        matches!(&e, RuntimeError::NonFinite { tensor, index: 37, .. } if tensor == "emb.C2.weight"),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "weights: {}: tensor `emb.C2.weight` holds NaN at index 37 (row 2, column 5)",
            p.display()
        )
    );
}

#[test]
fn an_infinity_anywhere_in_a_tensor_is_named() {
    let g = tiny();
    // A bias is 1-D: the flat index alone.
    let p = damaged(&g, "inf.safetensors", "top.1.bias", 3, f32::INFINITY);
    let e = Weights::load(&g, &p).unwrap_err().to_string();
    assert!(
        e.ends_with("tensor `top.1.bias` holds inf at index 3"),
        "{e}"
    );
    // The last element of the last layer is checked too.
    let last = g
        .weights()
        .into_iter()
        .find(|w| w.name == "top.2.weight")
        .expect("top.2.weight");
    let n: usize = last.shape.iter().product();
    let p = damaged(
        &g,
        "neg-inf.safetensors",
        "top.2.weight",
        n - 1,
        f32::NEG_INFINITY,
    );
    let e = Weights::load(&g, &p).unwrap_err().to_string();
    assert!(
        e.ends_with(&format!(
            "tensor `top.2.weight` holds -inf at index {} (row 0, column {})",
            n - 1,
            n - 1
        )),
        "{e}"
    );
}
