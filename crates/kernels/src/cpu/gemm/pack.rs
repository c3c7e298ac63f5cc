//! The packed weight layout: [`PackedLinear`] holds `Wᵀ` as 16-column panels, four panels to a
//! group interleaved row by row, and the bias padded to whole panels (see the parent module).

use super::isa::{Isa, IsaError};

/// Output columns per packed panel.
pub const PANEL: usize = 16;

/// One 64-byte aligned panel row: 16 weights, or 16 bias values.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(64))]
pub(super) struct Row16(pub(super) [f32; PANEL]);

/// A linear layer's weight (and bias) packed once into the panel layout the kernels stream.
#[derive(Clone, Debug)]
pub struct PackedLinear {
    pub(super) k: usize,
    pub(super) n: usize,
    /// The path the calls without an explicit ISA take (see [`PackedLinear::with_isa`]).
    isa: Isa,
    /// `panels() * k` rows: panel `j`, reduction index `p` is row `j * k + p`.
    pub(super) panels: Box<[Row16]>,
    /// The bias, zero-padded to `panels() * 16` (zeros without a bias).
    pub(super) bias: Box<[Row16]>,
}

impl PackedLinear {
    /// Packs `weight` (`[n, k]` row-major, the PyTorch `nn.Linear` layout) and `bias` (`n`
    /// elements, or none), for this machine's fastest path ([`Isa::detect`]).
    ///
    /// # Panics
    ///
    /// Panics if `weight.len() != n * k` or the bias length is not `n`.
    pub fn new(weight: &[f32], n: usize, k: usize, bias: Option<&[f32]>) -> Self {
        assert_eq!(
            Some(weight.len()),
            n.checked_mul(k),
            "PackedLinear: weight must be [out_features, in_features]"
        );
        if let Some(b) = bias {
            assert_eq!(
                b.len(),
                n,
                "PackedLinear: bias must have out_features elements"
            );
        }
        let np = n.div_ceil(PANEL);
        let mut panels = vec![Row16::default(); np.div_ceil(GROUP) * GROUP * k].into_boxed_slice();
        for j in 0..np {
            let at = panel_at(k, j) / PANEL;
            for c in 0..PANEL.min(n - j * PANEL) {
                let w_row = &weight[(j * PANEL + c) * k..][..k];
                for (p, &w) in w_row.iter().enumerate() {
                    panels[at + p * GROUP].0[c] = w;
                }
            }
        }
        let mut padded = vec![Row16::default(); np].into_boxed_slice();
        if let Some(b) = bias {
            for (i, &v) in b.iter().enumerate() {
                padded[i / PANEL].0[i % PANEL] = v;
            }
        }
        Self {
            k,
            n,
            isa: Isa::detect(),
            panels,
            bias: padded,
        }
    }

    /// The same weights on the path `isa` instead of the fastest one (for measurements): the
    /// calls that take no ISA of their own run on it, with the same bits on every path.
    ///
    /// # Errors
    ///
    /// [`IsaError::Unsupported`] if this machine cannot run `isa`.
    pub fn with_isa(mut self, isa: Isa) -> Result<Self, IsaError> {
        self.isa = isa.require()?;
        Ok(self)
    }

    /// The path the calls that take no ISA of their own run on ([`Isa::detect`] unless
    /// [`PackedLinear::with_isa`] chose another).
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// `in_features` (the reduction length `k`).
    pub fn in_features(&self) -> usize {
        self.k
    }

    /// `out_features` (`n`).
    pub fn out_features(&self) -> usize {
        self.n
    }

    /// The number of 16-column panels.
    pub fn panels(&self) -> usize {
        self.n.div_ceil(PANEL)
    }

    /// Bytes of packed weights a call streams.
    pub fn weight_bytes(&self) -> usize {
        self.panels.len() * std::mem::size_of::<Row16>()
    }
}

/// Panels per group: a group's panels are interleaved row by row, so one `k` row of a group is
/// `GROUP` consecutive 64-byte lines (`ROW` floats). Four is the AVX-512 tile's width (measured
/// against eight, which the tile read half of at a time: slower at every batch).
pub(super) const GROUP: usize = 4;
/// Floats between consecutive rows of a panel.
pub(super) const ROW: usize = GROUP * PANEL;

/// Where panel `j`'s first row starts (floats) in the packed weights of a `k`-row layer.
#[inline(always)]
pub(super) fn panel_at(k: usize, j: usize) -> usize {
    ((j / GROUP) * k * GROUP + j % GROUP) * PANEL
}
