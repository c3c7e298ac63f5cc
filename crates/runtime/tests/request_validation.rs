//! Request validation: every rejected request names the input, the position and the value (or
//! the limit); a valid request parses to exactly the batch it came from.
//!
//! Each JSON test builds a valid request for the `tiny` workload (4 samples) and breaks exactly
//! one thing; the `validate_*` tests do the same to a [`Batch`] built in code.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use streamrec_graph::limits::{MAX_BATCH, MAX_BATCH_INDICES};
use streamrec_graph::ModelSpec;
use streamrec_protocol::limits::DEFAULT_MAX_REQUEST_BYTES;
use streamrec_runtime::gen::{random_batch, Skew};
use streamrec_runtime::request::{read_request_file, InferRequest, RequestExt, TensorData};
use streamrec_runtime::{Batch, IndexVec, RuntimeError};

/// Samples in the test requests.
const B: usize = 4;

/// `tiny`: dense 13; C1 100 rows pooling 1, C2 37 rows pooling 2, C3 250 rows pooling 3, C4 8
/// rows pooling 1.
fn tiny() -> ModelSpec {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../workloads/tiny.toml");
    ModelSpec::load(&p, None).unwrap()
}

fn batch(spec: &ModelSpec) -> Batch {
    random_batch(spec, B, Skew::Uniform, 11)
}

fn int32(b: &Batch) -> Batch {
    let narrow = |v: &IndexVec| IndexVec::I32(v.to_i64().iter().map(|&x| x as i32).collect());
    let mut b = b.clone();
    for s in &mut b.sparse {
        s.indices = narrow(&s.indices);
        s.offsets = narrow(&s.offsets);
    }
    b
}

/// A valid request body as a JSON tree, to break one thing in.
fn request(spec: &ModelSpec) -> Value {
    serde_json::to_value(InferRequest::from_batch(spec, &batch(spec))).unwrap()
}

fn input<'a>(req: &'a mut Value, name: &str) -> &'a mut Value {
    req["inputs"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no input {name}"))
}

/// Parses and converts `body`; the request must be refused.
fn refused_text(spec: &ModelSpec, body: &str) -> String {
    let err = InferRequest::from_json(body)
        .map_err(RuntimeError::from)
        .and_then(|r| r.to_batch(spec))
        .expect_err("the request must be refused");
    assert!(err.is_input(), "{err:?}");
    err.to_string()
}

fn refused(spec: &ModelSpec, req: &Value) -> String {
    refused_text(spec, &req.to_string())
}

fn refused_with(spec: &ModelSpec, req: &Value, want: &str) {
    assert_eq!(refused(spec, req), want);
}

fn contains_all(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "`{p}` is not in: {msg}");
    }
}

fn validate_err(spec: &ModelSpec, b: &Batch) -> String {
    let err = b.validate(spec).expect_err("the batch must be refused");
    assert!(err.is_input(), "{err:?}");
    err.to_string()
}

fn tmp(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("request_validation-{name}"))
}

// ---- Valid requests ----

#[test]
fn int64_request_round_trips_to_the_same_batch() {
    let spec = tiny();
    let b = batch(&spec);
    let text = serde_json::to_string(&InferRequest::from_batch(&spec, &b)).unwrap();
    let req = InferRequest::from_json(&text).unwrap();
    assert_eq!(req.to_batch(&spec).unwrap(), b);
    assert_eq!(req.into_batch(&spec).unwrap(), b);
    let req = InferRequest::from_slice(text.as_bytes()).unwrap();
    assert_eq!(req.to_batch(&spec).unwrap(), b);
}

#[test]
fn int32_request_round_trips_to_the_same_batch() {
    let spec = tiny();
    let b = int32(&batch(&spec));
    let req = InferRequest::from_batch(&spec, &b);
    let v = serde_json::to_value(&req).unwrap();
    assert_eq!(v["inputs"][1]["datatype"], "INT32");
    let parsed = InferRequest::from_json(&v.to_string()).unwrap();
    assert_eq!(parsed, req);
    assert_eq!(parsed.to_batch(&spec).unwrap(), b);
}

#[test]
fn keys_in_any_order_nested_arrays_and_extra_keys_are_accepted() {
    let spec = tiny();
    let b = batch(&spec);
    let mut req = request(&spec);
    // Dense as nested rows, with `datatype` and `shape` after `data`, and extra keys.
    let rows: Vec<Value> = b.dense.chunks(spec.dense).map(|r| json!(r)).collect();
    *input(&mut req, "dense") = json!({
        "data": rows, "name": "dense", "parameters": {"x": 1}, "datatype": "FP32", "shape": [B, 13]
    });
    req["parameters"] = json!({"content_type": "np"});
    req["id"] = json!("r-1");
    let parsed = InferRequest::from_json(&req.to_string()).unwrap();
    assert_eq!(parsed.id.as_deref(), Some("r-1"));
    assert_eq!(parsed.to_batch(&spec).unwrap(), b);
}

#[test]
fn read_request_file_reads_a_body_within_the_limit() {
    let spec = tiny();
    let b = batch(&spec);
    let p = tmp("good.json");
    std::fs::write(
        &p,
        serde_json::to_string(&InferRequest::from_batch(&spec, &b)).unwrap(),
    )
    .unwrap();
    let req = read_request_file(&p, DEFAULT_MAX_REQUEST_BYTES).unwrap();
    assert_eq!(req.to_batch(&spec).unwrap(), b);
}

// ---- Indices and offsets (checked by Batch::validate) ----

#[test]
fn negative_index_is_refused() {
    let spec = tiny();
    let mut req = request(&spec);
    input(&mut req, "C3")["data"][5] = json!(-1);
    refused_with(
        &spec,
        &req,
        "C3: index at position 5 is -1, out of range for a table of 250 rows",
    );
}

#[test]
fn index_beyond_the_table_is_refused() {
    let spec = tiny();
    let mut req = request(&spec);
    input(&mut req, "C3")["data"][5] = json!(250);
    refused_with(
        &spec,
        &req,
        "C3: index at position 5 is 250, out of range for a table of 250 rows",
    );
}

#[test]
fn offsets_not_starting_at_zero_are_refused() {
    let spec = tiny();
    let mut req = request(&spec);
    input(&mut req, "C2_offsets")["data"] = json!([1, 2, 4, 6]);
    refused_with(&spec, &req, "C2_offsets: position 0 is 1, must be 0");
}

#[test]
fn decreasing_offsets_are_refused() {
    let spec = tiny();
    let mut req = request(&spec);
    input(&mut req, "C2_offsets")["data"] = json!([0, 4, 2, 6]);
    refused_with(
        &spec,
        &req,
        "C2_offsets: position 2 is 2, less than the previous offset 4 (offsets must not decrease)",
    );
}

#[test]
fn offsets_past_the_indices_are_refused() {
    let spec = tiny();
    let mut req = request(&spec);
    input(&mut req, "C2_offsets")["data"] = json!([0, 2, 4, 9]);
    refused_with(
        &spec,
        &req,
        "C2_offsets: position 3 is 9, beyond the 8 indices",
    );
}

// ---- Inputs ----

#[test]
fn missing_input_is_refused() {
    let spec = tiny();
    let mut req = request(&spec);
    req["inputs"]
        .as_array_mut()
        .unwrap()
        .retain(|t| t["name"] != "C4_offsets");
    refused_with(&spec, &req, "input `C4_offsets` is missing");
}

#[test]
fn unknown_input_is_refused() {
    let spec = tiny();
    let mut req = request(&spec);
    let mut extra = input(&mut req, "C1").clone();
    extra["name"] = json!("C9");
    req["inputs"].as_array_mut().unwrap().push(extra);
    refused_with(&spec, &req, "input `C9` is not an input of model `tiny`");
}

#[test]
fn duplicate_input_is_refused() {
    let spec = tiny();
    let mut req = request(&spec);
    let extra = input(&mut req, "C1").clone();
    req["inputs"].as_array_mut().unwrap().push(extra);
    refused_with(&spec, &req, "input `C1` appears more than once");
}

// ---- Datatypes ----

#[test]
fn dense_int64_is_refused() {
    let spec = tiny();
    let mut req = request(&spec);
    let d = input(&mut req, "dense");
    d["datatype"] = json!("INT64");
    d["data"] = json!(vec![1; B * 13]);
    refused_with(
        &spec,
        &req,
        "dense: datatype INT64 is not supported, use FP32",
    );
}

#[test]
fn fp32_indices_are_refused() {
    let spec = tiny();
    let mut req = request(&spec);
    input(&mut req, "C2")["datatype"] = json!("FP32");
    refused_with(
        &spec,
        &req,
        "C2: datatype FP32 is not supported, use INT64 or INT32",
    );
}

#[test]
fn indices_and_offsets_of_different_datatypes_are_refused() {
    let spec = tiny();
    let mut req = request(&spec);
    input(&mut req, "C2_offsets")["datatype"] = json!("INT32");
    refused_with(
        &spec,
        &req,
        "C2_offsets: datatype INT32 differs from C2's INT64",
    );
}

// ---- Shapes ----

#[test]
fn dense_shape_of_the_wrong_width_is_refused() {
    let spec = tiny();
    let mut req = request(&spec);
    let d = input(&mut req, "dense");
    d["shape"] = json!([B, 12]);
    d["data"] = json!(vec![0.5; B * 12]);
    refused_with(&spec, &req, "dense: shape [4, 12] must be [B, 13]");
}

#[test]
fn dense_with_too_few_values_is_refused() {
    let spec = tiny();
    let mut req = request(&spec);
    input(&mut req, "dense")["data"] = json!(vec![0.5; B * 12]);
    refused_with(&spec, &req, "dense: shape [4, 13] needs 52 values, got 48");
}

#[test]
fn indices_shape_not_matching_the_values_is_refused() {
    let spec = tiny();
    let mut req = request(&spec);
    input(&mut req, "C3")["shape"] = json!([11]);
    refused_with(&spec, &req, "C3: shape [11] does not match its 12 values");
}

#[test]
fn two_dimensional_indices_are_refused() {
    let spec = tiny();
    let mut req = request(&spec);
    input(&mut req, "C3")["shape"] = json!([4, 3]);
    refused_with(&spec, &req, "C3: shape [4, 3] must be one-dimensional [N]");
}

#[test]
fn offsets_of_the_wrong_count_are_refused() {
    let spec = tiny();
    let mut req = request(&spec);
    let o = input(&mut req, "C2_offsets");
    o["shape"] = json!([3]);
    o["data"] = json!([0, 2, 4]);
    refused_with(
        &spec,
        &req,
        "C2_offsets: expected 4 offsets (one per sample), got 3",
    );
}

#[test]
fn empty_batch_is_refused() {
    let spec = tiny();
    let mut req = request(&spec);
    let d = input(&mut req, "dense");
    d["shape"] = json!([0, 13]);
    d["data"] = json!([]);
    refused_with(
        &spec,
        &req,
        "dense: shape [0, 13] has batch size B = 0, must be > 0",
    );
}

#[test]
fn overflowing_shape_is_refused() {
    let spec = tiny();
    let mut req = request(&spec);
    input(&mut req, "dense")["shape"] = json!([1418980313362273202i64, 13]);
    refused_with(
        &spec,
        &req,
        "dense: shape [1418980313362273202, 13] has too many elements (the product of its dimensions overflows)",
    );
}

#[test]
fn negative_dimension_is_refused() {
    let spec = tiny();
    let mut req = request(&spec);
    input(&mut req, "C1")["shape"] = json!([-4]);
    refused_with(
        &spec,
        &req,
        "C1: dimension 0 of shape [-4] is -4, must be >= 0",
    );
}

#[test]
fn batch_over_max_batch_is_refused() {
    let spec = tiny();
    let mut req = request(&spec);
    input(&mut req, "dense")["shape"] = json!([MAX_BATCH + 1, 13]);
    let msg = refused(&spec, &req);
    assert_eq!(
        msg,
        format!(
            "dense: shape [{}, 13] has batch size B = {}, more than the limit of {MAX_BATCH} (limits::MAX_BATCH)",
            MAX_BATCH + 1,
            MAX_BATCH + 1
        )
    );
}

#[test]
fn indices_over_max_batch_indices_are_refused() {
    let spec = tiny();
    let mut req = request(&spec);
    input(&mut req, "C1")["shape"] = json!([MAX_BATCH_INDICES + 1]);
    let msg = refused(&spec, &req);
    contains_all(
        &msg,
        &[
            "C1: shape [268435457]",
            "more than the limit of 268435456 (limits::MAX_BATCH_INDICES)",
        ],
    );
}

// ---- Values ----

#[test]
fn non_finite_dense_value_is_refused() {
    let spec = tiny();
    let mut req = request(&spec);
    // JSON has no NaN or infinity; 1e39 overflows f32 to +inf.
    input(&mut req, "dense")["data"][7] = json!(1e39);
    refused_with(
        &spec,
        &req,
        "dense: value at position 7 is inf, must be finite",
    );
}

#[test]
fn non_integer_index_is_refused() {
    let spec = tiny();
    let mut req = request(&spec);
    input(&mut req, "C3")["data"][5] = json!(1.5);
    refused_with(
        &spec,
        &req,
        "C3: value at position 5 is 1.5, expected an integer",
    );
}

#[test]
fn non_integer_offset_is_refused() {
    let spec = tiny();
    let mut req = request(&spec);
    input(&mut req, "C2_offsets")["data"][2] = json!(4.0);
    refused_with(
        &spec,
        &req,
        "C2_offsets: value at position 2 is 4.0, expected an integer",
    );
}

#[test]
fn int32_index_outside_int32_is_refused() {
    let spec = tiny();
    let mut req =
        serde_json::to_value(InferRequest::from_batch(&spec, &int32(&batch(&spec)))).unwrap();
    input(&mut req, "C3")["data"][5] = json!(2_147_483_648i64);
    refused_with(
        &spec,
        &req,
        "C3: value at position 5 is 2147483648, outside INT32",
    );
}

#[test]
fn index_above_int64_is_refused() {
    let spec = tiny();
    let mut req = request(&spec);
    input(&mut req, "C3")["data"][5] = json!(u64::MAX);
    refused_with(
        &spec,
        &req,
        "C3: value at position 5 is 18446744073709551615, outside INT64",
    );
}

#[test]
fn index_below_int64_is_refused() {
    let spec = tiny();
    let mut req = request(&spec);
    // An integer below i64::MIN, which serde_json reads as a float.
    input(&mut req, "C3")["data"][0] = json!("MARK");
    let body = req.to_string().replace("\"MARK\"", "-9223372036854775809");
    assert_eq!(
        refused_text(&spec, &body),
        "C3: value at position 0 is -9.223372036854776e18, outside INT64"
    );
}

#[test]
fn string_in_data_is_refused_naming_the_input() {
    let spec = tiny();
    let mut req = request(&spec);
    input(&mut req, "C2")["data"][3] = json!("7");
    let msg = refused(&spec, &req);
    contains_all(
        &msg,
        &[
            "request body is not a valid KServe v2 request",
            "C2: value at position 3 is the string \"7\", expected a number",
        ],
    );
}

#[test]
fn null_in_data_is_refused_naming_the_input_even_when_the_name_comes_last() {
    let spec = tiny();
    let mut req = request(&spec);
    let c2 = input(&mut req, "C2").clone();
    let mut data = c2["data"].clone();
    data[3] = Value::Null;
    *input(&mut req, "C2") = json!({
        "data": data, "shape": c2["shape"], "datatype": c2["datatype"], "name": "C2"
    });
    let msg = refused(&spec, &req);
    contains_all(
        &msg,
        &["C2: value at position 3 is null, expected a number"],
    );
}

#[test]
fn bool_in_nested_data_is_refused() {
    let spec = tiny();
    let mut req = request(&spec);
    input(&mut req, "dense")["data"] = json!([[0.5, 0.25], [true]]);
    let msg = refused(&spec, &req);
    contains_all(
        &msg,
        &["dense: value at position 2 is true, expected a number"],
    );
}

#[test]
fn data_that_is_not_an_array_is_refused() {
    let spec = tiny();
    let mut req = request(&spec);
    input(&mut req, "C1")["data"] = json!(5);
    let msg = refused(&spec, &req);
    contains_all(
        &msg,
        &[
            "request body is not a valid KServe v2 request",
            "expected an array of numbers",
        ],
    );
}

#[test]
fn float_indices_built_in_code_are_refused() {
    let spec = tiny();
    let mut req = InferRequest::from_batch(&spec, &batch(&spec));
    let c1 = req.inputs.iter_mut().find(|t| t.name == "C1").unwrap();
    c1.data = TensorData::from_f32(vec![1.0, 2.0, 3.0, 4.0]);
    let err = req.to_batch(&spec).unwrap_err().to_string();
    assert_eq!(err, "C1: value at position 0 is 1.0, expected an integer");
}

// ---- The body ----

#[test]
fn malformed_json_is_refused() {
    let spec = tiny();
    let body = request(&spec).to_string();
    let msg = refused_text(&spec, &body[..body.len() / 2]);
    contains_all(
        &msg,
        &[
            "request body is not a valid KServe v2 request",
            "EOF while parsing",
            "line 1",
        ],
    );
}

#[test]
fn body_over_the_size_limit_is_refused() {
    let spec = tiny();
    let body = request(&spec).to_string();
    let p = tmp("big.json");
    std::fs::write(&p, &body).unwrap();
    let err = read_request_file(&p, 100).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "request body is {} bytes, more than the limit of 100 (--max-request-bytes)",
            body.len()
        )
    );
    // Exactly at the limit is fine.
    assert!(read_request_file(&p, body.len()).is_ok());
}

/// Files in /proc report a size of 0: the bounded read still stops at the limit.
#[cfg(target_os = "linux")]
#[test]
fn body_over_the_size_limit_is_refused_when_the_size_is_unknown() {
    let p = Path::new("/proc/self/maps");
    assert_eq!(std::fs::metadata(p).unwrap().len(), 0);
    let err = read_request_file(p, 10).unwrap_err().to_string();
    assert_eq!(
        err,
        "request body is more than the limit of 10 bytes (--max-request-bytes)"
    );
}

#[test]
fn missing_request_file_names_the_file() {
    let p = tmp("does-not-exist.json");
    let err = read_request_file(&p, 100).unwrap_err();
    assert!(matches!(err, RuntimeError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("does-not-exist.json"), "{err}");
}

// ---- Batch::validate on batches built in code ----

#[test]
fn validate_accepts_a_random_batch() {
    let spec = tiny();
    batch(&spec).validate(&spec).unwrap();
    int32(&batch(&spec)).validate(&spec).unwrap();
}

#[test]
fn validate_refuses_a_negative_index() {
    let spec = tiny();
    let mut b = batch(&spec);
    b.sparse[2].indices = IndexVec::I64(vec![0, 1, 2, 3, 4, -7, 6, 7, 8, 9, 10, 11]);
    assert_eq!(
        validate_err(&spec, &b),
        "C3: index at position 5 is -7, out of range for a table of 250 rows"
    );
}

#[test]
fn validate_refuses_an_index_beyond_the_table() {
    let spec = tiny();
    let mut b = batch(&spec);
    b.sparse[3].indices = IndexVec::I32(vec![0, 1, 8, 3]);
    b.sparse[3].offsets = IndexVec::I32(vec![0, 1, 2, 3]);
    assert_eq!(
        validate_err(&spec, &b),
        "C4: index at position 2 is 8, out of range for a table of 8 rows"
    );
}

#[test]
fn validate_refuses_offsets_not_starting_at_zero() {
    let spec = tiny();
    let mut b = batch(&spec);
    b.sparse[1].offsets = IndexVec::I64(vec![2, 2, 4, 6]);
    assert_eq!(
        validate_err(&spec, &b),
        "C2_offsets: position 0 is 2, must be 0"
    );
}

#[test]
fn validate_refuses_decreasing_offsets() {
    let spec = tiny();
    let mut b = batch(&spec);
    b.sparse[1].offsets = IndexVec::I64(vec![0, 4, 2, 6]);
    assert_eq!(
        validate_err(&spec, &b),
        "C2_offsets: position 2 is 2, less than the previous offset 4 (offsets must not decrease)"
    );
}

#[test]
fn validate_refuses_offsets_past_the_indices() {
    let spec = tiny();
    let mut b = batch(&spec);
    b.sparse[1].offsets = IndexVec::I64(vec![0, 2, 4, 9]);
    assert_eq!(
        validate_err(&spec, &b),
        "C2_offsets: position 3 is 9, beyond the 8 indices"
    );
}

#[test]
fn validate_refuses_the_wrong_number_of_offsets() {
    let spec = tiny();
    let mut b = batch(&spec);
    b.sparse[0].offsets = IndexVec::I64(vec![0, 1, 2]);
    assert_eq!(
        validate_err(&spec, &b),
        "C1_offsets: expected 4 offsets (one per sample), got 3"
    );
}

#[test]
fn validate_refuses_the_wrong_dense_length() {
    let spec = tiny();
    let mut b = batch(&spec);
    b.dense.pop();
    assert_eq!(
        validate_err(&spec, &b),
        "dense: expected 52 values ([4, 13]), got 51"
    );
}

#[test]
fn validate_refuses_a_non_finite_dense_value() {
    let spec = tiny();
    let mut b = batch(&spec);
    b.dense[9] = f32::NAN;
    assert_eq!(
        validate_err(&spec, &b),
        "dense: value at position 9 is NaN, must be finite"
    );
}

#[test]
fn validate_refuses_an_empty_batch() {
    let spec = tiny();
    let mut b = batch(&spec);
    b.size = 0;
    assert_eq!(validate_err(&spec, &b), "batch size must be > 0");
}

#[test]
fn validate_refuses_a_batch_over_max_batch_without_overflow() {
    let spec = tiny();
    let mut b = batch(&spec);
    b.size = usize::MAX / 2;
    assert_eq!(
        validate_err(&spec, &b),
        format!(
            "batch size {} is more than the limit of {MAX_BATCH} (limits::MAX_BATCH)",
            usize::MAX / 2
        )
    );
}
