//! Feature-interaction kernels: the DLRM dot interaction and the DCNv2 low-rank cross layer.

use super::dense::{dot, gemm, Operand};
use crate::types::{MatMut, MatRef};

/// DLRM dot interaction.
///
/// `inputs` are `n >= 1` matrices of shape `[B, d]`; `inputs[0]` is the bottom-MLP output. For
/// each sample, with `x_i` the sample's row of `inputs[i]`, the output row is `x_0` followed by
/// `x_i · x_j` for `i` in `1..n` and `j` in `0..i` (the strict lower triangle of `X Xᵀ`, row by
/// row), so `out` is `[B, d + n (n - 1) / 2]`.
///
/// # Panics
///
/// Panics if `inputs` is empty or the shapes disagree.
pub fn dot_interaction(inputs: &[MatRef<'_>], mut out: MatMut<'_>) {
    assert!(
        !inputs.is_empty(),
        "dot_interaction: needs at least one input"
    );
    let n = inputs.len();
    let d = inputs[0].cols;
    for (i, input) in inputs.iter().enumerate() {
        assert_eq!(
            (input.rows, input.cols),
            (out.rows, d),
            "dot_interaction: input {i} has a wrong shape"
        );
    }
    assert_eq!(
        out.cols,
        d + n * (n - 1) / 2,
        "dot_interaction: out cols must be d + n (n - 1) / 2"
    );
    for (b, out_row) in out.row_iter_mut().enumerate() {
        let (dense, pairs) = out_row.split_at_mut(d);
        dense.copy_from_slice(inputs[0].row(b));
        let mut k = 0;
        for i in 1..n {
            let xi = inputs[i].row(b);
            for xj in inputs[..i].iter() {
                pairs[k] = dot(xi, xj.row(b));
                k += 1;
            }
        }
    }
}

/// DCNv2 low-rank cross layer: `out = x0 ⊙ (U (V xl) + bias) + xl` for every sample.
///
/// `x0`, `xl` and `out` are `[B, w]`; `v` is `[rank, w]` row-major, `u` is `[w, rank]` row-major
/// and `bias` has `w` elements. `scratch` needs at least `B * rank` elements and receives
/// `xl Vᵀ` (its contents on entry do not matter). Both products go through the GEMM.
///
/// # Panics
///
/// Panics if the shapes disagree or `scratch` is too short.
#[allow(clippy::too_many_arguments)]
pub fn dcn_cross(
    x0: MatRef<'_>,
    xl: MatRef<'_>,
    v: &[f32],
    u: &[f32],
    bias: &[f32],
    rank: usize,
    scratch: &mut [f32],
    mut out: MatMut<'_>,
) {
    let (bsz, w) = (out.rows, out.cols);
    assert_eq!(
        (x0.rows, x0.cols),
        (bsz, w),
        "dcn_cross: x0 has a wrong shape"
    );
    assert_eq!(
        (xl.rows, xl.cols),
        (bsz, w),
        "dcn_cross: xl has a wrong shape"
    );
    assert_eq!(v.len(), rank * w, "dcn_cross: v must be [rank, w]");
    assert_eq!(u.len(), w * rank, "dcn_cross: u must be [w, rank]");
    assert_eq!(bias.len(), w, "dcn_cross: bias must have w elements");
    assert!(
        scratch.len() >= bsz * rank,
        "dcn_cross: scratch needs B * rank elements"
    );
    let t = &mut scratch[..bsz * rank];

    // T = xl Vᵀ, [B, rank]; Vᵀ element (p, r) is v[r * w + p].
    gemm(
        bsz,
        w,
        rank,
        Operand {
            data: xl.data,
            rs: xl.ld,
            cs: 1,
        },
        Operand {
            data: v,
            rs: 1,
            cs: w,
        },
        t,
        rank,
    );
    // Y = T Uᵀ, [B, w], written into out; Uᵀ element (r, c) is u[c * rank + r].
    gemm(
        bsz,
        rank,
        w,
        Operand {
            data: t,
            rs: rank,
            cs: 1,
        },
        Operand {
            data: u,
            rs: 1,
            cs: rank,
        },
        out.data,
        out.ld,
    );

    for (b, y) in out.row_iter_mut().enumerate() {
        let (a, l) = (x0.row(b), xl.row(b));
        for (((o, &a), &l), &bi) in y.iter_mut().zip(a).zip(l).zip(bias) {
            *o = a * (*o + bi) + l;
        }
    }
}
