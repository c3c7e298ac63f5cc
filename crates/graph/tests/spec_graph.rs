//! Spec parsing, validation errors and graph construction on the shipped workloads.

use std::path::Path;

use streamrec_graph::{ModelSpec, OpGraph, OpKind};

fn workload(name: &str) -> ModelSpec {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../workloads")
        .join(name);
    ModelSpec::load(&p, Some(1000)).expect("workload parses")
}

#[test]
fn workloads_build_with_expected_shapes() {
    let k = workload("dlrm-kaggle.toml");
    assert_eq!(k.features.len(), 26);
    assert_eq!(k.features[2].spec_rows, 10131227);
    assert_eq!(k.features[2].rows, 1000);
    assert_eq!(k.interaction_out(), 367);
    let g = OpGraph::from_spec(&k);
    assert_eq!(g.op(g.output()).width, 1);
    let m = workload("dlrm-mlperf-v2.toml");
    assert_eq!(m.interaction_out(), 3456);
    assert_eq!(m.features[20].pooling, 100);
    let s = workload("streamrec-26.toml");
    assert_eq!(s.interaction_out(), 3456);
    let g = OpGraph::from_spec(&s);
    // 3 bottom + 26 x (lookup + branch) + concat + 5 top.
    assert_eq!(g.len(), 3 + 52 + 1 + 5);
    let emb = g.find("emb.C7").unwrap();
    let br = g.find("branch.C7.0").unwrap();
    assert_eq!(g.succs(emb), vec![br]);
    assert!(matches!(
        g.op(emb).kind,
        OpKind::EmbeddingBag { feature: 6 }
    ));
    assert_eq!(g.out_shape(emb, 64), vec![64, 128]);
    assert!(g.flops(g.find("top.0").unwrap(), 2) > 2.0 * 2.0 * 3456.0 * 1000.0);
    let t = workload("tiny.toml");
    assert_eq!(OpGraph::from_spec(&t).weights().len(), 4 + 2 * 2 + 3 * 2);
}

fn spec_err(text: &str) -> String {
    ModelSpec::parse(text, "t", None).unwrap_err().to_string()
}

const BASE: &str = r#"
dense = 13
[bottom]
layers = [16]
[interaction]
kind = "dot"
[top]
layers = [8, 1]
"#;

#[test]
fn spec_errors_name_the_field() {
    let e = spec_err(&format!(
        "{BASE}\n[sparse]\ncount = 4\nrows = [10, 10, 10, 0]\ndim = 16\n"
    ));
    assert_eq!(e, "sparse[3].rows: must be > 0");
    let e = spec_err(&format!(
        "{BASE}\n[sparse]\ncount = 4\nrows = [10, 10]\ndim = 16\n"
    ));
    assert_eq!(e, "sparse.rows: has 2 entries but sparse.count is 4");
    let e = spec_err(&format!("{BASE}\n[sparse]\ncount = 2\nrows = 5\ndim = 8\n"));
    assert!(e.starts_with("sparse[0].dim: dot interaction needs"), "{e}");
    let e = spec_err(&format!(
        "{BASE}\n[sparse]\ncount = 2\nrows = 5\ndim = 16\ncolour = 3\n"
    ));
    assert!(e.contains("unknown field `colour`"), "{e}");
    let e = spec_err(&format!(
        "{BASE}\n[[sparse.features]]\nname = \"a\"\nrows = 3\ndim = 16\n[[sparse.features]]\nname = \"a\"\nrows = 3\ndim = 16\n"
    ));
    assert_eq!(e, "sparse[1].name: `a` is already the name of sparse[0]");
    let e = spec_err(&BASE.replace("[8, 1]", "[8, 2]").replace(
        "dense = 13",
        "dense = 13\n[sparse]\ncount = 1\nrows = 3\ndim = 16",
    ));
    assert_eq!(
        e,
        "top.layers[1]: the last layer must have width 1 (the score)"
    );
}

#[test]
fn listed_and_compact_forms_agree() {
    let compact = ModelSpec::parse(
        &format!("{BASE}\n[sparse]\ncount = 2\nrows = [5, 6]\ndim = 16\npooling = [1, 3]\n"),
        "t",
        None,
    )
    .unwrap();
    let listed = ModelSpec::parse(
        &format!(
            "{BASE}\n[[sparse.features]]\nname = \"C1\"\nrows = 5\ndim = 16\n[[sparse.features]]\nname = \"C2\"\nrows = 6\ndim = 16\npooling = 3\n"
        ),
        "t",
        None,
    )
    .unwrap();
    assert_eq!(compact, listed);
}
