//! A pick as a value: [`Lease`] holds one request's place in a backend's in-flight count,
//! from `Balancer::lease` until the request ends with `Balancer::finish_lease` (a
//! latency sample) or `Balancer::cancel_lease` (none). A lease that is dropped instead
//! (a connection torn down, a panic contained, a worker stopping) gives its place back by
//! itself: its index goes to a list of the dropping thread, and that thread's next
//! `Balancer::reap_dropped` cancels it, so no pick is ever left counted. Ending a lease
//! the normal way costs nothing more than the index it carries.

use std::cell::RefCell;

thread_local! {
    /// Indexes of leases this thread dropped without ending them.
    static DROPPED: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// One request's pick of a backend (see the module's text).
#[must_use = "a lease is ended with finish_lease or cancel_lease"]
#[derive(Debug, PartialEq, Eq)]
pub struct Lease {
    backend: u32,
}

impl Lease {
    pub(super) fn new(backend: usize) -> Lease {
        Lease {
            backend: backend as u32,
        }
    }

    /// The backend picked.
    #[inline]
    pub fn backend(&self) -> usize {
        self.backend as usize
    }

    /// Ends the lease without giving its place back: the caller does, at once.
    #[inline]
    pub(super) fn end(self) -> usize {
        let b = self.backend as usize;
        std::mem::forget(self);
        b
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // `try_with`: a lease dropped while the thread itself ends has nowhere to go (its
        // worker is gone with it, and a restarted one counts from its own picks).
        let _ = DROPPED.try_with(|d| d.borrow_mut().push(self.backend));
    }
}

/// Takes the indexes of the leases this thread dropped since the last call.
pub(super) fn take_dropped(into: &mut Vec<u32>) {
    let _ = DROPPED.try_with(|d| into.append(&mut d.borrow_mut()));
}
