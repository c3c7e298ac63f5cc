//! Weights on the device: every embedding table in one allocation and every dense tensor in
//! another, shared by the backends of the process on one device context (the store cache), each
//! op's device addresses, and the pinned staging large uploads go through.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use streamrec_graph::{Act, OpGraph, OpKind, PoolingMode};
use streamrec_kernels::cuda::cudarc::driver::{CudaEvent, CudaSlice, CudaStream, PinnedHostSlice};
use streamrec_kernels::cuda::{self as kc, lanes, tbe_meta, DevPtr, TbeTable};
use streamrec_kernels::Activation;

use super::device::{align, cuda_err, device_ptr, exec_err, f32_at, lock, Device};
use crate::backend::shared::{self, OpWeights};
use crate::error::Result;
use crate::weights::{Tensor, Weights};

/// Bytes of each of the two pinned buffers large weight uploads are staged through.
pub const STAGING_BYTES: usize = 64 << 20;

/// Resolves, uploads (or finds uploaded) and addresses every op's weights. The caller holds
/// captures off: the upload allocates and synchronises.
pub(super) fn load(dev: &Device, graph: &OpGraph, weights: &Weights) -> Result<CudaWeights> {
    let by_op = (0..graph.len())
        .map(|id| shared::resolve_weights(graph, id, weights))
        .collect::<Result<Vec<_>>>()?;
    // Every distinct tensor once: tables in one allocation, the rest in another.
    let mut seen: HashSet<usize> = HashSet::new();
    let mut tables: Vec<&Arc<Tensor>> = Vec::new();
    let mut dense: Vec<&Arc<Tensor>> = Vec::new();
    for w in &by_op {
        let (list, ts): (&mut Vec<&Arc<Tensor>>, Vec<&Arc<Tensor>>) = match w {
            OpWeights::Tables(ts) => (&mut tables, ts.iter().collect()),
            OpWeights::Linear { weight, bias } => (&mut dense, vec![weight, bias]),
            OpWeights::Cross { v, u, bias } => (&mut dense, vec![v, u, bias]),
            OpWeights::None => continue,
        };
        for t in ts {
            if seen.insert(Arc::as_ptr(t) as usize) {
                list.push(t);
            }
        }
    }
    let store = weight_store(dev, &tables, &dense)?;
    // `weight_store` returns a store holding every tensor of both lists.
    let tptr = |t: &Arc<Tensor>| store.find(t).expect("the store holds every tensor");
    let dptr = tptr;
    let mean = |f: usize| graph.spec.features[f].mode == PoolingMode::Mean;
    let mut metas = Vec::new();
    let mut ops = Vec::with_capacity(graph.len());
    for (id, w) in by_op.iter().enumerate() {
        let op = graph.op(id);
        let ow = match (&op.kind, w) {
            (OpKind::EmbeddingBag { feature }, OpWeights::Tables(ts)) => {
                let dim = graph.spec.features[*feature].dim;
                let table = tptr(&ts[0]);
                OpW::Table {
                    table,
                    dim,
                    vec: dim.is_multiple_of(4) && table % 16 == 0,
                    mean: mean(*feature),
                }
            }
            (OpKind::TableBatchedEmbeddingBag { features }, OpWeights::Tables(ts)) => {
                let mut col = 0;
                let mut list = Vec::with_capacity(features.len());
                for (&f, t) in features.iter().zip(ts) {
                    let dim = graph.spec.features[f].dim;
                    let table = tptr(t);
                    list.push(TbeTable {
                        table,
                        dim,
                        out_col: col,
                        slot: f,
                        mean: mean(f),
                        vec: dim.is_multiple_of(4) && table % 16 == 0,
                    });
                    col += dim;
                }
                if col != op.width {
                    return Err(exec_err(format!(
                        "op `{}`: table dims sum to {col}, output width is {}",
                        op.name, op.width
                    )));
                }
                let max_lanes = list.iter().map(|t| lanes(t.dim, t.vec)).max().unwrap_or(0);
                let meta = dev.upload_meta(&tbe_meta(&list).map_err(cuda_err)?)?;
                let p = device_ptr(&meta, &dev.alloc);
                metas.push(meta);
                OpW::Tbe {
                    meta: p,
                    tables: list.len(),
                    max_lanes,
                }
            }
            (OpKind::Linear { act, .. }, OpWeights::Linear { weight, bias }) => OpW::Linear {
                weight: dptr(weight),
                bias: dptr(bias),
                act: match act {
                    Act::None => Activation::None,
                    Act::Relu => Activation::Relu,
                    Act::Sigmoid => Activation::Sigmoid,
                },
            },
            (OpKind::DcnCross { .. }, OpWeights::Cross { v, u, bias }) => OpW::Cross {
                v: dptr(v),
                u: dptr(u),
                bias: dptr(bias),
            },
            _ => OpW::None,
        };
        ops.push(ow);
    }
    dev.alloc.synchronize().map_err(exec_err)?;
    Ok(CudaWeights {
        store,
        _meta: metas,
        ops,
    })
}

/// A device copy of every tensor of `tables` and `dense`: a store of this process on the
/// same device context that holds them all already (the same host `Arc<Tensor>`s), or a new
/// upload, remembered for later backends. The cache lock is held during an upload, so a
/// second engine built at the same time waits and then reuses the first one's copy.
fn weight_store(
    dev: &Device,
    tables: &[&Arc<Tensor>],
    dense: &[&Arc<Tensor>],
) -> Result<Arc<WeightStore>> {
    let key = dev.ctx.cu_ctx() as usize;
    let mut stores = lock(&STORES);
    stores.retain(|w| w.strong_count() > 0);
    let hit = stores
        .iter()
        .filter_map(Weak::upgrade)
        .find(|st| st.cu_ctx == key && tables.iter().chain(dense).all(|t| st.find(t).is_some()));
    if let Some(st) = hit {
        st.reused.store(true, Ordering::Relaxed);
        return Ok(st);
    }
    let st = Arc::new(upload_store(dev, key, tables, dense)?);
    stores.push(Arc::downgrade(&st));
    Ok(st)
}

/// Uploads the tensors: two zeroed allocations (the gaps between 256-byte aligned tensors
/// stay zero), filled through pinned staging when the weights are large (direct copies from
/// pageable memory below [`STAGING_BYTES`] in all), synchronised before returning.
fn upload_store(
    dev: &Device,
    cu_ctx: usize,
    tables: &[&Arc<Tensor>],
    dense: &[&Arc<Tensor>],
) -> Result<WeightStore> {
    let len = |list: &[&Arc<Tensor>]| list.iter().map(|t| align(t.data.len())).sum::<usize>();
    let (t_len, d_len) = (len(tables), len(dense));
    let bytes = (t_len + d_len) * std::mem::size_of::<f32>();
    let mut t_dev = dev.zeros::<f32>(t_len)?;
    let mut d_dev = dev.zeros::<f32>(d_len)?;
    let mut staging = if bytes >= STAGING_BYTES {
        Some(Staging::new(dev, &dev.alloc)?)
    } else {
        None
    };
    let mut at = HashMap::new();
    for (list, buf) in [(tables, &mut t_dev), (dense, &mut d_dev)] {
        let base = device_ptr(buf, &dev.alloc);
        let mut o = 0;
        for t in list {
            let n = t.data.len();
            match staging.as_mut() {
                Some(st) => st.put(&t.data, f32_at(base, o))?,
                None => dev
                    .alloc
                    .memcpy_htod(&t.data[..], &mut buf.slice_mut(o..o + n))
                    .map_err(exec_err)?,
            }
            at.insert(
                Arc::as_ptr(t) as usize,
                (Arc::downgrade(t), f32_at(base, o)),
            );
            o += align(n);
        }
    }
    if let Some(st) = staging {
        st.finish()?;
    }
    dev.alloc.synchronize().map_err(exec_err)?;
    Ok(WeightStore {
        cu_ctx,
        _tables: t_dev,
        _dense: d_dev,
        at,
        bytes,
        reused: AtomicBool::new(false),
    })
}

/// One op's weights on the device.
#[derive(Clone, Copy, Debug)]
pub(super) enum OpW {
    None,
    Table {
        table: DevPtr,
        dim: usize,
        vec: bool,
        mean: bool,
    },
    Tbe {
        meta: DevPtr,
        tables: usize,
        max_lanes: usize,
    },
    Linear {
        weight: DevPtr,
        bias: DevPtr,
        act: Activation,
    },
    Cross {
        v: DevPtr,
        u: DevPtr,
        bias: DevPtr,
    },
}

/// The weights on the device, shared by every context.
pub struct CudaWeights {
    store: Arc<WeightStore>,
    _meta: Vec<CudaSlice<i32>>,
    pub(super) ops: Vec<OpW>,
}

impl CudaWeights {
    /// Bytes of weight tensors on the device (shared with other backends of the process that
    /// use the same host tensors, see the module docs).
    pub fn bytes(&self) -> usize {
        self.store.bytes
    }

    /// Whether these weights reuse tensors another backend of the process had uploaded.
    pub fn shared(&self) -> bool {
        Arc::strong_count(&self.store) > 1 || self.store.reused.load(Ordering::Relaxed)
    }
}

/// Uploaded weight tensors: the tables' allocation and the dense weights' allocation, and each
/// host tensor's device address, shared by every backend of the process on one device context.
struct WeightStore {
    /// The `CUcontext` the allocations live in.
    cu_ctx: usize,
    _tables: CudaSlice<f32>,
    _dense: CudaSlice<f32>,
    /// Device address of each uploaded host tensor by the address of its `Arc` allocation. The
    /// `Weak` keeps that allocation from being freed and reused by another tensor while the
    /// store lives, so an equal address is the same tensor.
    at: HashMap<usize, (Weak<Tensor>, DevPtr)>,
    bytes: usize,
    /// Some backend found this store in the cache.
    reused: AtomicBool,
}

impl WeightStore {
    /// The device address of host tensor `t`, if this store holds it.
    fn find(&self, t: &Arc<Tensor>) -> Option<DevPtr> {
        self.at
            .get(&(Arc::as_ptr(t) as usize))
            .filter(|(w, _)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(t)))
            .map(|&(_, p)| p)
    }
}

/// The process's uploaded weight stores (see [`load`]).
static STORES: Mutex<Vec<Weak<WeightStore>>> = Mutex::new(Vec::new());

/// Copies host data to device addresses through two pinned staging buffers on one stream: the
/// host fills one buffer (on several threads for large pieces) while the device copies the
/// other out; many small pieces share a buffer.
struct Staging<'a> {
    stream: &'a CudaStream,
    /// The buffers, each with an event recorded after the copies out of it.
    bufs: Vec<(PinnedHostSlice<f32>, CudaEvent)>,
    /// The buffer being filled and how many elements it holds.
    cur: usize,
    fill: usize,
    /// Copies pending from the current buffer: (destination, first element, length).
    pieces: Vec<(DevPtr, usize, usize)>,
}

impl<'a> Staging<'a> {
    fn new(be: &Device, stream: &'a CudaStream) -> Result<Self> {
        let len = STAGING_BYTES / std::mem::size_of::<f32>();
        let mut bufs = Vec::with_capacity(2);
        for _ in 0..2 {
            // SAFETY: uninitialised pinned memory, write-combined (the host only writes it);
            // every element is written before a copy reads it.
            let host = unsafe { be.ctx.alloc_pinned::<f32>(len) }.map_err(exec_err)?;
            bufs.push((host, be.ctx.new_event(None).map_err(exec_err)?));
        }
        Ok(Self {
            stream,
            bufs,
            cur: 0,
            fill: 0,
            pieces: Vec::new(),
        })
    }

    /// Queues the copy of `src` to the device address `dst`.
    fn put(&mut self, mut src: &[f32], mut dst: DevPtr) -> Result<()> {
        while !src.is_empty() {
            let room = self.bufs[self.cur].0.len() - self.fill;
            if room == 0 {
                self.flush()?;
                continue;
            }
            let n = room.min(src.len());
            let host = self.bufs[self.cur].0.as_mut_slice().map_err(exec_err)?;
            copy_parallel(&mut host[self.fill..self.fill + n], &src[..n]);
            self.pieces.push((dst, self.fill, n));
            self.fill += n;
            src = &src[n..];
            dst = f32_at(dst, n);
        }
        Ok(())
    }

    /// Issues the current buffer's copies and switches to the other buffer once the device has
    /// copied out of it.
    fn flush(&mut self) -> Result<()> {
        if self.pieces.is_empty() {
            return Ok(());
        }
        let (buf, done) = &self.bufs[self.cur];
        let host = buf.as_slice().map_err(exec_err)?;
        self.stream.context().bind_to_thread().map_err(exec_err)?;
        for (dst, start, len) in self.pieces.drain(..) {
            // SAFETY: `dst` is `len` floats inside a live device allocation (a tensor's place in
            // the store); the source is pinned memory that is not written again before `done`
            // (recorded after these copies) has completed.
            unsafe {
                kc::cudarc::driver::result::memcpy_htod_async(
                    dst,
                    &host[start..start + len],
                    self.stream.cu_stream(),
                )
            }
            .map_err(exec_err)?;
        }
        done.record(self.stream).map_err(exec_err)?;
        self.cur = (self.cur + 1) % self.bufs.len();
        self.fill = 0;
        self.bufs[self.cur].1.synchronize().map_err(exec_err)
    }

    /// Issues the last copies and waits for all of them (the staging buffers are freed after).
    fn finish(mut self) -> Result<()> {
        self.flush()?;
        self.stream.synchronize().map_err(exec_err)
    }
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        // No copy may still read the pinned buffers when they are freed (an upload that failed
        // half-way returns early); after `finish` this returns at once.
        let _ = self.stream.synchronize();
    }
}

/// `dst.copy_from_slice(src)`, split over up to 8 threads for large slices (one thread copies
/// pageable memory at a fraction of what the copy engines take).
fn copy_parallel(dst: &mut [f32], src: &[f32]) {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if dst.len() < (1 << 20) || threads < 2 {
        dst.copy_from_slice(src);
        return;
    }
    let per = dst.len().div_ceil(threads);
    std::thread::scope(|sc| {
        for (d, x) in dst.chunks_mut(per).zip(src.chunks(per)) {
            sc.spawn(move || d.copy_from_slice(x));
        }
    });
}
