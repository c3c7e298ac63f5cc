//! Shared kernel types: pooling modes, activations, index types and strided matrix views.

/// How an embedding bag reduces the rows it looks up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pooling {
    /// The sum of the looked-up rows.
    Sum,
    /// The sum divided by the bag length; an empty bag gives zeros.
    Mean,
}

/// An element-wise activation fused into a kernel's output pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// The identity.
    None,
    /// `max(x, 0)`.
    Relu,
    /// The logistic function `1 / (1 + exp(-x))`, computed without overflow.
    Sigmoid,
}

/// Index types accepted by the embedding kernels.
///
/// Kernels assume every index and offset was validated by the caller (non-negative and in range);
/// a negative value converts to a huge `usize`, which makes the kernel panic rather than read out
/// of bounds.
pub trait Index: Copy + Send + Sync + 'static {
    /// The index as a `usize` (a plain `as` conversion; the caller validated it is non-negative).
    fn to_usize(self) -> usize;
    /// The index as an `i64`.
    fn to_i64(self) -> i64;
}

impl Index for i32 {
    #[inline(always)]
    fn to_usize(self) -> usize {
        self as usize
    }

    #[inline(always)]
    fn to_i64(self) -> i64 {
        i64::from(self)
    }
}

impl Index for i64 {
    #[inline(always)]
    fn to_usize(self) -> usize {
        self as usize
    }

    #[inline(always)]
    fn to_i64(self) -> i64 {
        self
    }
}

/// Checks the strided-view invariant shared by [`MatRef`] and [`MatMut`].
fn check_view(len: usize, rows: usize, cols: usize, ld: usize) {
    assert!(
        ld >= cols,
        "matrix view: ld {ld} is smaller than cols {cols}"
    );
    if rows > 0 {
        let needed = (rows - 1)
            .checked_mul(ld)
            .and_then(|n| n.checked_add(cols))
            .expect("matrix view: size overflows usize");
        assert!(
            len >= needed,
            "matrix view: {rows} x {cols} with ld {ld} needs {needed} elements, the slice has {len}"
        );
    }
}

/// Row-major strided matrix view.
///
/// Element (r, c) is `data[r * ld + c]`; `ld >= cols`, and `data.len() >= (rows - 1) * ld + cols`
/// when `rows > 0`. Elements of `data` outside the `rows x cols` region are never read.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    /// The backing slice; element (r, c) is `data[r * ld + c]`.
    pub data: &'a [f32],
    /// The number of rows.
    pub rows: usize,
    /// The number of columns.
    pub cols: usize,
    /// The leading dimension: the distance between the starts of consecutive rows.
    pub ld: usize,
}

impl<'a> MatRef<'a> {
    /// A strided view.
    ///
    /// # Panics
    ///
    /// Panics if `ld < cols` or `data` is too short for `rows` rows.
    pub fn new(data: &'a [f32], rows: usize, cols: usize, ld: usize) -> Self {
        check_view(data.len(), rows, cols, ld);
        Self {
            data,
            rows,
            cols,
            ld,
        }
    }

    /// A contiguous view (`ld == cols`).
    ///
    /// # Panics
    ///
    /// Panics if `data` is shorter than `rows * cols`.
    pub fn contiguous(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, rows, cols, cols)
    }

    /// Row `r` (`cols` elements).
    ///
    /// # Panics
    ///
    /// Panics if `r >= rows`.
    #[inline]
    pub fn row(&self, r: usize) -> &'a [f32] {
        assert!(r < self.rows, "row {r} out of range for {} rows", self.rows);
        let start = r * self.ld;
        &self.data[start..start + self.cols]
    }

    /// The rows in order, each `cols` elements long.
    #[inline]
    pub fn row_iter(&self) -> impl ExactSizeIterator<Item = &'a [f32]> + '_ {
        (0..self.rows).map(move |r| {
            let start = r * self.ld;
            &self.data[start..start + self.cols]
        })
    }

    /// The view of columns `[start, start + cols)`.
    ///
    /// # Panics
    ///
    /// Panics if the columns are not inside this view.
    pub fn col_slice(&self, start: usize, cols: usize) -> MatRef<'a> {
        assert!(
            start.checked_add(cols).is_some_and(|end| end <= self.cols),
            "columns [{start}, {start} + {cols}) out of range for {} columns",
            self.cols
        );
        if self.rows == 0 {
            return MatRef {
                data: &[],
                rows: 0,
                cols,
                ld: self.ld,
            };
        }
        MatRef::new(&self.data[start..], self.rows, cols, self.ld)
    }
}

/// Mutable row-major strided matrix view, with the same layout rules as [`MatRef`].
///
/// Kernels write only the `rows x cols` region, so a view may be a column slice of a wider
/// buffer (for example one input's place in a concatenation).
#[derive(Debug)]
pub struct MatMut<'a> {
    /// The backing slice; element (r, c) is `data[r * ld + c]`.
    pub data: &'a mut [f32],
    /// The number of rows.
    pub rows: usize,
    /// The number of columns.
    pub cols: usize,
    /// The leading dimension: the distance between the starts of consecutive rows.
    pub ld: usize,
}

impl<'a> MatMut<'a> {
    /// A strided view.
    ///
    /// # Panics
    ///
    /// Panics if `ld < cols` or `data` is too short for `rows` rows.
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize, ld: usize) -> Self {
        check_view(data.len(), rows, cols, ld);
        Self {
            data,
            rows,
            cols,
            ld,
        }
    }

    /// A contiguous view (`ld == cols`).
    ///
    /// # Panics
    ///
    /// Panics if `data` is shorter than `rows * cols`.
    pub fn contiguous(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, rows, cols, cols)
    }

    /// Row `r` (`cols` elements).
    ///
    /// # Panics
    ///
    /// Panics if `r >= rows`.
    #[inline]
    pub fn row_mut(&mut self, r: usize) -> &mut [f32] {
        assert!(r < self.rows, "row {r} out of range for {} rows", self.rows);
        let start = r * self.ld;
        &mut self.data[start..start + self.cols]
    }

    /// The rows in order, each `cols` elements long.
    #[inline]
    pub fn row_iter_mut(&mut self) -> RowsMut<'_> {
        let data = if self.rows == 0 {
            &mut [][..]
        } else {
            &mut self.data[..(self.rows - 1) * self.ld + self.cols]
        };
        RowsMut {
            rest: data,
            left: self.rows,
            cols: self.cols,
            ld: self.ld,
        }
    }

    /// A shorter-lived view of the same region, so the view can be passed to a kernel twice.
    pub fn reborrow(&mut self) -> MatMut<'_> {
        MatMut {
            data: &mut *self.data,
            rows: self.rows,
            cols: self.cols,
            ld: self.ld,
        }
    }

    /// A read-only view of the same region.
    pub fn as_ref(&self) -> MatRef<'_> {
        MatRef {
            data: &*self.data,
            rows: self.rows,
            cols: self.cols,
            ld: self.ld,
        }
    }

    /// The view of columns `[start, start + cols)`.
    ///
    /// # Panics
    ///
    /// Panics if the columns are not inside this view.
    pub fn col_slice(self, start: usize, cols: usize) -> MatMut<'a> {
        assert!(
            start.checked_add(cols).is_some_and(|end| end <= self.cols),
            "columns [{start}, {start} + {cols}) out of range for {} columns",
            self.cols
        );
        if self.rows == 0 {
            return MatMut {
                data: &mut [],
                rows: 0,
                cols,
                ld: self.ld,
            };
        }
        MatMut::new(&mut self.data[start..], self.rows, cols, self.ld)
    }
}

/// Iterator over the rows of a [`MatMut`], each `cols` elements long.
#[derive(Debug)]
pub struct RowsMut<'a> {
    rest: &'a mut [f32],
    left: usize,
    cols: usize,
    ld: usize,
}

impl<'a> Iterator for RowsMut<'a> {
    type Item = &'a mut [f32];

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let rest = std::mem::take(&mut self.rest);
        if self.left == 0 {
            return Some(&mut rest[..self.cols]);
        }
        // A row that is not the last is followed by at least one more row, so `rest` holds `ld`
        // elements by the view invariant.
        let (head, tail) = rest.split_at_mut(self.ld);
        self.rest = tail;
        Some(&mut head[..self.cols])
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for RowsMut<'_> {}

/// One embedding table for the table-batched kernel.
#[derive(Clone, Copy, Debug)]
pub struct TableRef<'a> {
    /// The table, `[rows, dim]` row-major.
    pub data: &'a [f32],
    /// The number of rows.
    pub rows: usize,
    /// The embedding dimension.
    pub dim: usize,
    /// How this table's bags are pooled.
    pub mode: Pooling,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_index_strided_rows() {
        let data: Vec<f32> = (0..14).map(|i| i as f32).collect();
        let m = MatRef::new(&data, 3, 4, 5);
        assert_eq!(m.row(0), &[0.0, 1.0, 2.0, 3.0]);
        assert_eq!(m.row(2), &[10.0, 11.0, 12.0, 13.0]);
        let s = m.col_slice(1, 2);
        assert_eq!(
            s.row_iter().collect::<Vec<_>>(),
            vec![&[1.0, 2.0][..], &[6.0, 7.0], &[11.0, 12.0]]
        );

        let mut buf = vec![0.0f32; 14];
        let mut out = MatMut::new(&mut buf, 3, 4, 5).col_slice(1, 2);
        for (r, row) in out.row_iter_mut().enumerate() {
            row.fill(r as f32 + 1.0);
        }
        assert_eq!(out.as_ref().row(1), &[2.0, 2.0]);
        assert_eq!(out.row_mut(2), &[3.0, 3.0]);
        assert_eq!(
            buf,
            [0., 1., 1., 0., 0., 0., 2., 2., 0., 0., 0., 3., 3., 0.]
        );
    }

    #[test]
    fn views_reject_short_slices() {
        let data = vec![0.0f32; 13];
        assert!(std::panic::catch_unwind(|| MatRef::new(&data, 3, 4, 5)).is_err());
        assert!(std::panic::catch_unwind(|| MatRef::new(&data, 1, 4, 3)).is_err());
        assert!(std::panic::catch_unwind(|| MatRef::new(&data, 3, 4, 4)).is_ok());
        assert!(std::panic::catch_unwind(|| MatRef::new(&[], 0, 4, 4)).is_ok());
    }

    #[test]
    fn index_conversions() {
        assert_eq!(7i32.to_usize(), 7);
        assert_eq!((-3i32).to_i64(), -3);
        assert_eq!(9i64.to_usize(), 9);
        assert_eq!(i64::MAX.to_i64(), i64::MAX);
    }
}
