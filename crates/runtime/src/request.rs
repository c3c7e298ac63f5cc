//! KServe v2 requests and the runtime's batches: the wire format lives in
//! [`streamrec_protocol`] (re-exported here); this module turns a request into a [`Batch`]
//! ([`RequestExt::into_batch`], [`Batch::from`] a validated request; for an engine,
//! [`crate::ValidatedBatch::from_request`]) and a [`Batch`] into a
//! request (`InferRequest::from_batch(&spec, &batch)`, through [`ToInputs`]).
//!
//! Errors keep the runtime's type: a refused request is [`crate::RuntimeError::Request`] with the
//! protocol's typed error (naming the input, position and value), an unreadable file
//! [`crate::RuntimeError::Io`].

use std::path::Path;

use streamrec_graph::ModelSpec;
use streamrec_protocol::{offsets_name, IndexType, ValidInputs};
pub use streamrec_protocol::{
    response_json, IndexSeq, InferRequest, InferTensor, RequestError, TensorData, ToInputs,
};

use crate::batch::{Batch, IndexVec, SparseInput, ValidatedBatch};
use crate::error::Result;

/// Reads and parses a request file of at most `max_bytes` bytes
/// ([`streamrec_protocol::read_request_file`]); an oversized body is refused without being
/// loaded.
pub fn read_request_file(path: &Path, max_bytes: usize) -> Result<InferRequest> {
    Ok(streamrec_protocol::read_request_file(path, max_bytes)?)
}

/// A request as a [`Batch`] of the runtime.
pub trait RequestExt {
    /// Converts to a batch after validating against the spec (shapes, dtypes, offsets, index
    /// ranges, finite dense values). Copies the values; [`RequestExt::into_batch`] moves them.
    fn to_batch(&self, spec: &ModelSpec) -> Result<Batch>;
    /// [`RequestExt::to_batch`] without copying the values.
    fn into_batch(self, spec: &ModelSpec) -> Result<Batch>;
}

impl RequestExt for InferRequest {
    fn to_batch(&self, spec: &ModelSpec) -> Result<Batch> {
        self.clone().into_batch(spec)
    }

    fn into_batch(self, spec: &ModelSpec) -> Result<Batch> {
        Ok(Batch::from(self.validate(spec)?))
    }
}

impl From<ValidInputs> for Batch {
    /// The batch of a validated request (every check of [`Batch::validate`] passed).
    fn from(v: ValidInputs) -> Self {
        let ints = |t: IndexType, v: Vec<i64>| match t {
            IndexType::Int64 => IndexVec::I64(v),
            // Validation checked that every value fits.
            IndexType::Int32 => IndexVec::I32(v.into_iter().map(|x| x as i32).collect()),
        };
        Batch {
            size: v.size,
            dense: v.dense,
            sparse: v
                .features
                .into_iter()
                .map(|f| SparseInput {
                    indices: ints(f.datatype, f.indices),
                    offsets: ints(f.datatype, f.offsets),
                })
                .collect(),
        }
    }
}

impl ToInputs for ValidatedBatch {
    fn to_inputs(&self, spec: &ModelSpec) -> Vec<InferTensor> {
        self.batch().to_inputs(spec)
    }
}

impl ToInputs for Batch {
    fn to_inputs(&self, spec: &ModelSpec) -> Vec<InferTensor> {
        let mut inputs = vec![InferTensor::dense(
            self.size,
            spec.dense,
            self.dense.clone(),
        )];
        for (f, s) in spec.features.iter().zip(&self.sparse) {
            inputs.push(InferTensor::ints(
                &f.name,
                s.indices.datatype(),
                s.indices.to_i64(),
            ));
            inputs.push(InferTensor::ints(
                offsets_name(&f.name),
                s.offsets.datatype(),
                s.offsets.to_i64(),
            ));
        }
        inputs
    }
}

impl IndexSeq for IndexVec {
    fn len(&self) -> usize {
        IndexVec::len(self)
    }
    fn at(&self, i: usize) -> i64 {
        self.get(i)
    }
}
