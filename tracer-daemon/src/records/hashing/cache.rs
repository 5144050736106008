//! Digests remembered by file version, oldest forgotten first.

use std::collections::{HashMap, VecDeque};

/// (dev, ino, size, mtime, mtime_nsec, ctime, ctime_nsec).
pub(super) type CacheKey = (u64, u64, u64, i64, i64, i64, i64);

pub(super) struct Cache {
    map: HashMap<CacheKey, String>,
    order: VecDeque<CacheKey>,
    cap: usize,
}

impl Cache {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    pub(super) fn get(&self, k: &CacheKey) -> Option<String> {
        self.map.get(k).cloned()
    }

    pub(super) fn put(&mut self, k: CacheKey, v: String) {
        if self.map.insert(k, v).is_none() {
            self.order.push_back(k);
            while self.order.len() > self.cap {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}
