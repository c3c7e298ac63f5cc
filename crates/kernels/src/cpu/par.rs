//! Intra-op parallelism: a kernel splits its work into independent tiles and hands them to a
//! [`Parallel`] runner, which may run them on idle worker threads.

use std::sync::Mutex;

use crate::types::MatMut;

/// Runs `n` independent tasks, possibly at once on several threads, and returns when every one
/// has finished. A task that panics makes `for_each` panic once all have stopped.
pub trait Parallel: Sync {
    /// Calls `task(i)` once for each `i` in `0..n`.
    fn for_each(&self, n: usize, task: &(dyn Fn(usize) + Sync));

    /// How many tasks can run at once (threads that may take tiles, the caller's included).
    fn width(&self) -> usize;
}

/// Every task on the calling thread, in order.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sequential;

impl Parallel for Sequential {
    fn for_each(&self, n: usize, task: &(dyn Fn(usize) + Sync)) {
        (0..n).for_each(task);
    }

    fn width(&self) -> usize {
        1
    }
}

/// Tasks spread over `n` scoped OS threads started per call (the caller is one of them): for
/// one-off calls and benchmarks; an engine uses its worker pool instead.
#[derive(Clone, Copy, Debug)]
pub struct ScopedThreads(pub usize);

impl Parallel for ScopedThreads {
    fn for_each(&self, n: usize, task: &(dyn Fn(usize) + Sync)) {
        let threads = self.0.clamp(1, n.max(1));
        if threads == 1 {
            return (0..n).for_each(task);
        }
        std::thread::scope(|s| {
            for t in 1..threads {
                s.spawn(move || (t..n).step_by(threads).for_each(task));
            }
            (0..n).step_by(threads).for_each(task);
        });
    }

    fn width(&self) -> usize {
        self.0.max(1)
    }
}

/// Splits `out` into `tiles` views of consecutive rows (balanced; the first ones may be a row
/// longer), each in a slot a task takes once.
pub(crate) fn row_tiles(out: MatMut<'_>, tiles: usize) -> Vec<Mutex<Option<(usize, MatMut<'_>)>>> {
    let (rows, cols, ld) = (out.rows, out.cols, out.ld);
    let tiles = tiles.clamp(1, rows.max(1));
    let mut rest = out.data;
    let mut slots = Vec::with_capacity(tiles);
    let mut r0 = 0;
    for t in 0..tiles {
        let r1 = rows * (t + 1) / tiles;
        let n = r1 - r0;
        let take = if r1 == rows { rest.len() } else { n * ld };
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(take);
        rest = tail;
        slots.push(Mutex::new(Some((r0, MatMut::new(head, n, cols, ld)))));
        r0 = r1;
    }
    slots
}
