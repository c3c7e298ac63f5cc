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

/// Writes `text` as `file` in a fresh folder and loads it.
fn load_file(file: &str, text: &str) -> Result<ModelSpec, String> {
    let dir = std::env::temp_dir().join(format!("streamrec-names-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(file);
    std::fs::write(&p, text).unwrap();
    let out = ModelSpec::load(&p, None).map_err(|e| e.to_string());
    std::fs::remove_file(&p).unwrap();
    out
}

fn named(name: &str) -> String {
    format!(
        "name = {}\n{BASE}\n[sparse]\ncount = 1\nrows = 3\ndim = 16\n",
        toml::Value::String(name.into())
    )
}

#[test]
fn model_names_are_limited_to_a_url_and_label_safe_charset() {
    let longest = "a".repeat(128);
    for good in ["tiny", "my-model_v1.2", "9lives", "A", longest.as_str()] {
        let spec = load_file("spec.toml", &named(good)).unwrap();
        assert_eq!(spec.name, good);
    }
    const CHARSET: &str = "a model name may hold only ASCII letters, digits, '_', '.' and '-'";
    for (bad, reason) in [
        ("a/b", format!("has the character '/'; {CHARSET}")),
        // A label injection: the quote is the first bad character; the message stays one line.
        (
            "m\"} 1\nevil{x=\"",
            format!("has the character '\"'; {CHARSET}"),
        ),
        ("new\nline", format!("has the character '\\n'; {CHARSET}")),
        ("modèle", format!("has the character 'è'; {CHARSET}")),
        ("with space", format!("has the character ' '; {CHARSET}")),
        (
            ".hidden",
            "starts with '.'; the first character must be a letter or digit".into(),
        ),
        (
            "-x",
            "starts with '-'; the first character must be a letter or digit".into(),
        ),
        (
            "_x",
            "starts with '_'; the first character must be a letter or digit".into(),
        ),
        ("", "must not be empty".into()),
        (
            &"a".repeat(129),
            "is 129 characters, more than the limit of 128".into(),
        ),
    ] {
        let e = load_file("spec.toml", &named(bad)).unwrap_err();
        assert_eq!(e, format!("name: {bad:?} {reason}"));
        assert!(!e.contains('\n'), "{e}");
        assert!(
            streamrec_graph::spec::check_model_name(bad).is_err(),
            "{bad:?}"
        );
    }
}

#[test]
fn a_model_name_from_the_file_name_is_checked_and_a_fix_suggested() {
    let text = named("x").replacen("name = \"x\"\n", "", 1);
    assert_eq!(
        load_file("from-stem.toml", &text).unwrap().name,
        "from-stem"
    );
    let e = load_file("my model (v2).toml", &text).unwrap_err();
    assert_eq!(
        e,
        "name: the file name gives the model name \"my model (v2)\", which has the character ' '; \
         a model name may hold only ASCII letters, digits, '_', '.' and '-'; \
         set name = \"my_model__v2_\" in the spec"
    );
    let e = load_file("_draft.toml", &text).unwrap_err();
    assert!(
        e.contains("which starts with '_'") && e.ends_with("set name = \"draft\" in the spec"),
        "{e}"
    );
    let e = load_file(&format!("{}.toml", "b".repeat(130)), &text).unwrap_err();
    assert!(
        e.contains("which is 130 characters")
            && e.ends_with(&format!("set name = \"{}\" in the spec", "b".repeat(128))),
        "{e}"
    );
    // A name in the spec overrides a file name that would not do.
    assert_eq!(load_file("my model.toml", &named("ok")).unwrap().name, "ok");
}
