//! Connection limits shared by several pools: `max_db_connections` across the pools of one
//! database and `max_user_connections` across the pools of one user.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Weak};

use super::Pool;

/// A counter of server connections with a maximum (0 = unlimited) and the pools that share it,
/// so that a connection closed in one pool can let a client waiting in another one proceed.
#[derive(Debug, Default)]
pub struct Limit {
    max: AtomicUsize,
    count: AtomicUsize,
    members: Mutex<Vec<Weak<Pool>>>,
}

impl Limit {
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// True when a maximum is set and reached.
    pub fn is_full(&self) -> bool {
        let max = self.max.load(Ordering::Relaxed);
        max != 0 && self.count.load(Ordering::Relaxed) >= max
    }

    /// Takes one unit if under the maximum.
    pub fn try_acquire(&self) -> bool {
        let max = self.max.load(Ordering::Relaxed);
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (max == 0 || c < max).then_some(c + 1)
            })
            .is_ok()
    }

    pub fn release(&self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn add_member(&self, pool: Weak<Pool>) {
        let mut members = self.members.lock().unwrap();
        members.retain(|p| p.strong_count() > 0);
        members.push(pool);
    }

    /// The pools sharing this limit that still exist.
    pub fn members(&self) -> Vec<std::sync::Arc<Pool>> {
        self.members
            .lock()
            .unwrap()
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_of_zero_is_unlimited_and_others_stop_at_max() {
        let unlimited = Limit::default();
        for _ in 0..1000 {
            assert!(unlimited.try_acquire());
        }
        let two = Limit::default();
        two.set_max(2);
        assert!(two.try_acquire());
        assert!(two.try_acquire());
        assert!(!two.try_acquire());
        two.release();
        assert!(two.try_acquire());
    }
}
