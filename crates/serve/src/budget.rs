//! One memory budget for the request bytes the server holds across all connections: a body is
//! charged as its bytes arrive (its declared length up front when it has one), and again for
//! what decoding it costs, and the charge is returned when the request ends. A charge that does
//! not fit is refused (the server answers 503 with Retry-After), never an allocation failure.

use std::sync::atomic::{AtomicUsize, Ordering};

/// What a JSON body costs while it is decoded and its batch lives, as a multiple of its size
/// (the body, serde's strings and numbers, the index vectors): measured about 4x.
pub const JSON_COST: usize = 4;

/// The same for a body with Triton's binary tensor data (the body and the batch built from it).
pub const BINARY_COST: usize = 2;

/// A request whose charge goes beyond this many bytes is large: it may use only
/// [`large_share`] of the budget, so that small requests still get in while large uploads stall.
pub const SMALL_REQUEST_BYTES: usize = 1 << 20;

/// The part of a budget of `limit` bytes that large requests may hold together: three quarters.
pub fn large_share(limit: usize) -> usize {
    limit - limit / 4
}

/// The budget: bytes held now and the limit.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
}

/// Bytes charged to a [`Budget`] by one request; returned when dropped.
#[derive(Debug)]
pub struct Charge<'a> {
    budget: &'a Budget,
    bytes: usize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }

    /// An empty charge, to grow as bytes arrive.
    pub fn charge(&self) -> Charge<'_> {
        Charge {
            budget: self,
            bytes: 0,
        }
    }
}

impl Charge<'_> {
    /// Bytes this charge holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Grows the charge to `total` bytes (a smaller total changes nothing). False, with the
    /// charge unchanged, when the budget cannot take it: everything charged would pass the
    /// limit, or, for a request of more than [`SMALL_REQUEST_BYTES`], the large share.
    pub fn grow_to(&mut self, total: usize) -> bool {
        if total <= self.bytes {
            return true;
        }
        let more = total - self.bytes;
        let cap = if total > SMALL_REQUEST_BYTES {
            large_share(self.budget.limit)
        } else {
            self.budget.limit
        };
        let took = self
            .budget
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(more).filter(|&u| u <= cap)
            });
        if took.is_ok() {
            self.bytes = total;
        }
        took.is_ok()
    }
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_up_to_the_limit_and_returns_them() {
        let b = Budget::new(4 << 20);
        let mut small: Vec<Charge<'_>> = Vec::new();
        for _ in 0..4 {
            let mut c = b.charge();
            assert!(c.grow_to(1 << 20));
            small.push(c);
        }
        assert_eq!(b.used(), 4 << 20);
        let mut one_more = b.charge();
        assert!(!one_more.grow_to(1), "a byte over the limit is refused");
        assert_eq!(one_more.bytes(), 0);
        small.pop();
        assert!(one_more.grow_to(1 << 20));
        drop(small);
        drop(one_more);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn large_requests_leave_a_quarter_to_small_ones() {
        let b = Budget::new(8 << 20);
        let mut large = b.charge();
        assert!(large.grow_to(6 << 20), "three quarters fit");
        let mut second = b.charge();
        assert!(
            !second.grow_to(2 << 20),
            "a large one beyond the share is refused"
        );
        assert!(
            !large.grow_to((6 << 20) + 1),
            "growing past the share is refused"
        );
        assert_eq!(large.bytes(), 6 << 20);
        let mut small = b.charge();
        assert!(small.grow_to(1 << 20), "a small one uses the last quarter");
        assert_eq!(b.used(), 7 << 20);
    }

    #[test]
    fn growing_charges_only_the_difference() {
        let b = Budget::new(2 << 20);
        let mut c = b.charge();
        assert!(c.grow_to(1000));
        assert!(c.grow_to(3000));
        assert!(c.grow_to(10), "a smaller total keeps the charge");
        assert_eq!(b.used(), 3000);
    }
}
