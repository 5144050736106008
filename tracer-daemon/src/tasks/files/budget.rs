//! Paths all tasks together may hold.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

/// Paths all tasks together may hold (the daemon's memory bound: several
/// big tasks at once must not add up past it). Each table gives its paths
/// back when it is dropped, after its record is built.
#[derive(Debug)]
pub(crate) struct FileBudget {
    used: AtomicUsize,
    max: usize,
}

impl FileBudget {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            max,
        })
    }

    /// One more path, if the budget allows.
    pub(super) fn take(&self) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u < self.max).then_some(u + 1)
            })
            .is_ok()
    }

    /// Paths held already (a restored table's), whatever the budget says.
    pub(super) fn hold(&self, n: usize) {
        self.used.fetch_add(n, Ordering::AcqRel);
    }

    pub(super) fn release(&self, n: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
    }

    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}
