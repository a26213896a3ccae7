//! The local row cache in front of Redis: rows fetched for earlier batches, sized in bytes,
//! with a staleness bound.
//!
//! dlrs's [`dlrs_model::tables::RowCache`] is built once from observed traffic and copies
//! rows from a local table; a server on Redis has neither at start-up, so this cache fills
//! as batches miss. It is sharded (a mutex per shard, the shard picked by the key's hash),
//! evicts by CLOCK (second chance: a slot read since the hand last passed is kept once), and
//! a row older than the staleness bound counts as a miss and is fetched again. Hits are
//! copied into the batch's staging, so no lock is held while pooling.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bytes of bookkeeping a cached row costs beside its bytes (index entry and slot metadata),
/// counted against the budget.
pub const OVERHEAD_BYTES: usize = 32;

/// A multiplicative hash for integer keys (the keys are `table << 32 | row`).
#[derive(Default)]
pub(crate) struct IntHasher(u64);

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(self.0 ^ b as u64);
        }
    }
    fn write_u32(&mut self, x: u32) {
        self.write_u64(x as u64)
    }
    fn write_u64(&mut self, x: u64) {
        let h = (x ^ (x >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 32);
    }
}

/// Hash maps keyed by integers.
pub(crate) type IntBuild = BuildHasherDefault<IntHasher>;
type IntMap = HashMap<u64, u32, IntBuild>;

struct Slot {
    key: u64,
    /// milliseconds since the cache's epoch when the row was fetched
    at_ms: u64,
    referenced: bool,
}

struct Shard {
    map: IntMap,
    slots: Vec<Slot>,
    bytes: Vec<u8>,
    cap: usize,
    hand: usize,
}

/// Rows keyed by `(table, row)`, each of at most `stride` bytes.
pub struct RowLru {
    shards: Vec<Mutex<Shard>>,
    stride: usize,
    ttl_ms: u64,
    epoch: Instant,
}

impl RowLru {
    /// A cache of at most `budget_bytes` (rows of `stride` bytes plus [`OVERHEAD_BYTES`]
    /// each); rows older than `ttl` are not served. A budget under one row: no cache.
    pub fn new(budget_bytes: usize, stride: usize, ttl: Duration) -> Self {
        let rows = budget_bytes / (stride + OVERHEAD_BYTES);
        let n = if rows == 0 {
            0
        } else {
            (rows / 256).clamp(1, 64)
        };
        let shards = (0..n)
            .map(|i| {
                let cap = rows / n + usize::from(i < rows % n);
                Mutex::new(Shard {
                    map: IntMap::default(),
                    slots: Vec::new(),
                    bytes: Vec::new(),
                    cap,
                    hand: 0,
                })
            })
            .collect();
        RowLru {
            shards,
            stride,
            ttl_ms: ttl.as_millis() as u64,
            epoch: Instant::now(),
        }
    }

    /// Rows the cache holds at most.
    pub fn capacity(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).cap)
            .sum()
    }

    #[inline]
    fn key(t: usize, id: u32) -> u64 {
        (t as u64) << 32 | id as u64
    }

    #[inline]
    fn shard(&self, key: u64) -> &Mutex<Shard> {
        let mut h = IntHasher::default();
        h.write_u64(key);
        &self.shards[(h.finish() >> 40) as usize % self.shards.len()]
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Copies row `id` of table `t` into `out` (its length is the row's) if cached and
    /// fresh.
    pub fn get(&self, t: usize, id: u32, out: &mut [u8]) -> bool {
        if self.shards.is_empty() {
            return false;
        }
        let key = Self::key(t, id);
        let now = self.now_ms();
        let mut s = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        let Some(&slot) = s.map.get(&key) else {
            return false;
        };
        let slot = slot as usize;
        if now.saturating_sub(s.slots[slot].at_ms) > self.ttl_ms {
            // stale: fetched again by the caller, and the slot refreshed by its insert
            return false;
        }
        s.slots[slot].referenced = true;
        let at = slot * self.stride;
        out.copy_from_slice(&s.bytes[at..at + out.len()]);
        true
    }

    /// Caches `row` as row `id` of table `t` (replacing an older copy), evicting by CLOCK.
    pub fn insert(&self, t: usize, id: u32, row: &[u8]) {
        if self.shards.is_empty() {
            return;
        }
        debug_assert!(row.len() <= self.stride);
        let key = Self::key(t, id);
        let now = self.now_ms();
        let stride = self.stride;
        let mut guard = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        let s = &mut *guard;
        if s.cap == 0 {
            return;
        }
        let slot = if let Some(&slot) = s.map.get(&key) {
            slot as usize
        } else if s.slots.len() < s.cap {
            s.slots.push(Slot {
                key,
                at_ms: now,
                referenced: false,
            });
            s.bytes.resize(s.slots.len() * stride, 0);
            s.map.insert(key, (s.slots.len() - 1) as u32);
            s.slots.len() - 1
        } else {
            // second chance: skip (and clear) referenced slots, evict the first other
            loop {
                let h = s.hand;
                s.hand = (h + 1) % s.cap;
                if s.slots[h].referenced {
                    s.slots[h].referenced = false;
                    continue;
                }
                let old = s.slots[h].key;
                s.map.remove(&old);
                s.slots[h].key = key;
                s.map.insert(key, h as u32);
                break h;
            }
        };
        s.slots[slot].at_ms = now;
        s.slots[slot].referenced = false;
        s.bytes[slot * stride..slot * stride + row.len()].copy_from_slice(row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_come_back_as_they_went_in() {
        let c = RowLru::new(1000 * (16 + OVERHEAD_BYTES), 16, Duration::from_secs(60));
        assert_eq!(c.capacity(), 1000);
        for id in 0..500u32 {
            c.insert(id as usize % 3, id, &[id as u8; 16]);
        }
        let mut out = [0u8; 16];
        for id in 0..500u32 {
            assert!(c.get(id as usize % 3, id, &mut out), "{id}");
            assert_eq!(out, [id as u8; 16]);
            assert!(!c.get(id as usize % 3 + 1, id, &mut out), "another table");
        }
    }

    #[test]
    fn the_budget_bounds_the_rows_and_hot_rows_stay() {
        let c = RowLru::new(100 * (8 + OVERHEAD_BYTES), 8, Duration::from_secs(60));
        let mut out = [0u8; 8];
        c.insert(0, 1, &[1; 8]);
        for id in 1000..3000u32 {
            c.insert(0, id, &[2; 8]);
            // row 1 is read between inserts: CLOCK keeps it
            assert!(c.get(0, 1, &mut out), "hot row evicted at {id}");
        }
        let held = (1000..3000u32).filter(|&id| c.get(0, id, &mut out)).count();
        assert!(held < 100, "{held} rows held over a budget of 100");
    }

    #[test]
    fn stale_rows_are_misses() {
        let c = RowLru::new(1 << 20, 8, Duration::from_millis(0));
        c.insert(0, 5, &[1; 8]);
        std::thread::sleep(Duration::from_millis(5));
        assert!(!c.get(0, 5, &mut [0; 8]));
        let none = RowLru::new(0, 8, Duration::from_secs(1));
        none.insert(0, 5, &[1; 8]);
        assert!(!none.get(0, 5, &mut [0; 8]));
    }
}
