//! Model weights: generated deterministically from a seed, or loaded from a safetensors file.
//!
//! Tensor names and shapes (row-major f32):
//!
//! | tensor | shape |
//! |---|---|
//! | `bottom.{i}.weight`, `top.{i}.weight`, `branch.{feature}.{i}.weight` | `[out, in]` |
//! | `bottom.{i}.bias`, `top.{i}.bias`, `branch.{feature}.{i}.bias` | `[out]` |
//! | `emb.{feature}.weight` | `[rows, dim]` (rows after `row_cap`) |
//! | `cross.{l}.v` / `cross.{l}.u` / `cross.{l}.bias` | `[rank, width]` / `[width, rank]` / `[width]` |
//!
//! Generated values are a pure function of (seed, tensor name, element index), so they do not
//! depend on thread count or load order, and a row-capped table is a prefix of the full one.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use streamrec_graph::{OpGraph, WeightSource, WeightSpec};

use crate::error::{Result, RuntimeError, WeightsError};

/// One f32 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// All weights of a model, by tensor name.
#[derive(Clone, Debug, Default)]
pub struct Weights {
    tensors: HashMap<String, Arc<Tensor>>,
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn name_hash(seed: u64, name: &str) -> u64 {
    name.bytes()
        .fold(splitmix64(seed), |h, b| splitmix64(h ^ u64::from(b)))
}

/// Initialisation scale of a tensor: values are uniform in `[-scale, scale]`.
fn init_scale(w: &WeightSpec) -> f32 {
    let last = |n: usize| 1.0 / (n.max(1) as f32).sqrt();
    if w.name.starts_with("emb.") {
        0.05
    } else if w.name.ends_with(".bias") {
        0.02
    } else if w.name.starts_with("cross.") {
        // v is [rank, width]: fan-in width; u is [width, rank]: fan-in rank.
        last(w.shape[1]) * 0.5
    } else {
        // Linear [out, in]: fan-in `in`; a gain keeps activations from vanishing under relu.
        last(w.shape[1]) * 1.7
    }
}

fn fill(data: &mut [f32], base: u64, start: usize, scale: f32) {
    for (i, v) in data.iter_mut().enumerate() {
        let r = splitmix64(base ^ ((start + i) as u64).wrapping_mul(0xd134_2543_de82_ef95));
        // 24 random bits -> [0, 1) -> [-scale, scale).
        let u = (r >> 40) as f32 * (1.0 / (1u64 << 24) as f32);
        *v = (2.0 * u - 1.0) * scale;
    }
}

impl Weights {
    /// Weights for a graph from the spec's source (seed or safetensors file).
    pub fn for_graph(graph: &OpGraph) -> Result<Self> {
        check_memory(&graph.weights())?;
        match &graph.spec.weights {
            WeightSource::Seed(s) => Self::generate(graph, *s),
            WeightSource::File(p) => Self::load(graph, p),
        }
    }

    /// Generates every tensor the graph needs from `seed`; fails when memory runs out.
    pub fn generate(graph: &OpGraph, seed: u64) -> Result<Self> {
        let specs = graph.weights();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut tensors = HashMap::new();
        for w in &specs {
            let len: usize = w.shape.iter().product();
            let mut data = alloc_table(&w.name, len)?;
            let base = name_hash(seed, &w.name);
            let scale = init_scale(w);
            let chunk = len.div_ceil(threads).max(1 << 16);
            std::thread::scope(|s| {
                for (c, part) in data.chunks_mut(chunk).enumerate() {
                    s.spawn(move || fill(part, base, c * chunk, scale));
                }
            });
            tensors.insert(
                w.name.clone(),
                Arc::new(Tensor {
                    shape: w.shape.clone(),
                    data,
                }),
            );
        }
        Ok(Self { tensors })
    }

    /// Loads every tensor the graph needs from a safetensors file; a missing tensor, a wrong
    /// dtype, a wrong shape or a value that is not finite (NaN, +inf, -inf: such a model
    /// answers every request with a score that is no number) is an error naming the tensor.
    /// Extra tensors are ignored.
    pub fn load(graph: &OpGraph, path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| RuntimeError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
            RuntimeError::from(WeightsError::NotSafetensors {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
        })?;
        let mut tensors = HashMap::new();
        for w in graph.weights() {
            let view = st.tensor(&w.name).map_err(|_| {
                RuntimeError::from(WeightsError::Missing {
                    path: Some(path.to_path_buf()),
                    tensor: w.name.clone(),
                    expected: Some(w.shape.clone()),
                })
            })?;
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(WeightsError::Dtype {
                    path: Some(path.to_path_buf()),
                    tensor: w.name.clone(),
                    dtype: format!("{:?}", view.dtype()),
                }
                .into());
            }
            if view.shape() != w.shape.as_slice() {
                return Err(WeightsError::Shape {
                    path: Some(path.to_path_buf()),
                    tensor: w.name.clone(),
                    shape: view.shape().to_vec(),
                    needed_by: "expected".into(),
                    expected: w.shape.clone(),
                }
                .into());
            }
            let data: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if let Some(index) = data.iter().position(|v| !v.is_finite()) {
                return Err(RuntimeError::NonFinite {
                    path: path.to_path_buf(),
                    tensor: w.name.clone(),
                    value: data[index],
                    index,
                    shape: w.shape.clone(),
                });
            }
            tensors.insert(
                w.name.clone(),
                Arc::new(Tensor {
                    shape: w.shape.clone(),
                    data,
                }),
            );
        }
        Ok(Self { tensors })
    }

    /// Writes all tensors to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort();
        let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = names
            .iter()
            .map(|n| {
                let t = &self.tensors[*n];
                let b = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
                ((*n).clone(), b, t.shape.clone())
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
            .iter()
            .map(|(n, b, s)| {
                let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .map_err(|e| WeightsError::Write {
                        tensor: n.clone(),
                        reason: e.to_string(),
                    })?;
                Ok((n.clone(), v))
            })
            .collect::<Result<_>>()?;
        safetensors::serialize_to_file(views, None, path).map_err(|e| RuntimeError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// The tensor with this name.
    pub fn get(&self, name: &str) -> Result<&Arc<Tensor>> {
        self.tensors.get(name).ok_or_else(|| {
            RuntimeError::from(WeightsError::Missing {
                path: None,
                tensor: name.to_string(),
                expected: None,
            })
        })
    }

    /// Tensor names.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    /// Total bytes of all tensors.
    pub fn bytes(&self) -> usize {
        self.tensors.values().map(|t| t.data.len() * 4).sum()
    }

    /// Inserts or replaces a tensor.
    pub fn insert(&mut self, name: impl Into<String>, t: Tensor) {
        self.tensors.insert(name.into(), Arc::new(t));
    }
}

/// A zeroed f32 buffer for a table.
fn alloc_table(name: &str, len: usize) -> Result<Vec<f32>> {
    alloc_f32(len, 0.0).map_err(|e| {
        RuntimeError::from(WeightsError::Alloc {
            tensor: name.to_string(),
            len,
            reason: e.to_string(),
            hint: "shrink the tables with --row-cap N",
        })
    })
}

/// `len` floats of `fill`, on transparent huge pages where large ([`advise_huge_pages`]); an
/// allocation the machine cannot make is an error (the caller says what it was for), not an
/// abort.
pub(crate) fn alloc_f32(
    len: usize,
    fill: f32,
) -> std::result::Result<Vec<f32>, std::collections::TryReserveError> {
    let mut v: Vec<f32> = Vec::new();
    v.try_reserve_exact(len)?;
    advise_huge_pages(&mut v);
    v.resize(len, fill);
    Ok(v)
}

/// Asks the kernel to back `v`'s reserved capacity with transparent huge pages where it is
/// large (at least four 2 MiB pages), before the pages are first touched: random row gathers
/// from embedding tables, and kernels that read or write rows far apart in a wide activation,
/// then miss the TLB far less. A hint: it fails harmlessly where THP is unavailable.
fn advise_huge_pages(v: &mut Vec<f32>) {
    const HUGE: usize = 2 << 20;
    let bytes = v.capacity().saturating_mul(4);
    if bytes < 4 * HUGE {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        let start = v.as_mut_ptr() as usize;
        let aligned = start.next_multiple_of(HUGE);
        let end = (start + bytes) / HUGE * HUGE;
        if end > aligned {
            // SAFETY: the range lies inside the vector's allocation; madvise only changes how
            // the kernel backs those pages.
            unsafe {
                libc::madvise(
                    aligned as *mut libc::c_void,
                    end - aligned,
                    libc::MADV_HUGEPAGE,
                );
            }
        }
    }
}

/// Refuses weights that cannot fit in this machine's available memory (or under the process's
/// address-space limit, `ulimit -v`); the byte count is computed with checked arithmetic.
fn check_memory(specs: &[WeightSpec]) -> Result<()> {
    let need = specs.iter().try_fold(0usize, |acc, w| {
        w.shape
            .iter()
            .try_fold(4usize, |b, &d| b.checked_mul(d))
            .and_then(|b| acc.checked_add(b))
    });
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    let Some(need) = need else {
        return Err(WeightsError::Unaddressable.into());
    };
    let avail_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<usize>().ok())
        });
    let mut avail = avail_kb.map(|kb| kb.saturating_mul(1024) / 10 * 9);
    if let Some(limit) = address_space_limit() {
        avail = Some(avail.map_or(limit, |a| a.min(limit)));
    }
    if let Some(avail) = avail {
        if need > avail {
            return Err(WeightsError::OverMemory {
                need_gib: gib(need),
                avail_gib: gib(avail),
            }
            .into());
        }
    }
    Ok(())
}

/// The process's address-space limit (`ulimit -v`) in bytes, when one is set.
fn address_space_limit() -> Option<usize> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct, which `lim` is.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) };
    if rc != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
        None
    } else {
        usize::try_from(lim.rlim_cur).ok()
    }
}
