//! The collisionless id map: raw 64-bit keys to the rows of one table, with admission,
//! expiry and eviction.
//!
//! # Layout and memory
//!
//! Keys live in an open-addressing table of 64-byte buckets of 4 slots; a slot is
//! `(key u64, row u32, stamp u32)`, 16 bytes. A key's home bucket is
//! `fastrange(fmix64(key), buckets)`; probing is linear over the slots from the start of
//! the home bucket, so a lookup reads one cache line (one random access, prefetched a few
//! keys ahead) unless its home bucket overflowed. The table is sized for a load factor of
//! [`LOAD_FACTOR`] at full capacity: `ceil(capacity / (0.8 * 4))` buckets. Beside it, per row,
//! a 16-bit saturating update count (LFU's score; 0 marks a free row), and, with `admit > 1`,
//! the admission filter's 4-bit counters (2 per capacity row). Total: at most 20 + 2 + 1 =
//! 23 bytes per id beyond the row (plus one bucket of rounding).
//!
//! Deleted slots become tombstones; when live slots plus tombstones pass 15/16 of the slots
//! the table is rebuilt (which briefly holds a copy of the live entries).
//!
//! # Reads while serving
//!
//! [`CollisionlessMap::lookup`] takes `&self` and takes no lock: a served model's maps are
//! loaded once and never written (training owns its maps exclusively, `&mut`).
//!
//! # Training
//!
//! [`CollisionlessMap::train_step`] resolves one step's keys in order, at time `now` (the
//! step, or wall-clock seconds when the TTL is in seconds):
//!
//! 1. With a TTL, at most every `max(1, ttl / 4)` time units, every id whose last update is
//!    more than `ttl` before `now` is evicted.
//! 2. A key the map holds: its row; the row's count += 1 (saturating at 65535), its stamp =
//!    `now`.
//! 3. A key it does not hold is counted in the admission filter (a count-min sketch of two
//!    4-bit counters per key that saturate at 15, Monolith's occurrence filter); when the
//!    estimate reaches `admit` (1: at once) the key gets a free row (count 1, stamp `now`),
//!    which the caller must reset (weights and optimizer state) before use: it is returned
//!    in `fresh`. A full map first evicts `max(1, capacity / 64)` ids not updated at `now`,
//!    the least frequently (LFU: by count, then stamp) or least recently (LRU: by stamp)
//!    updated, ties broken by the lower row. If every id was updated at `now`, the key is a
//!    miss. Free rows are taken lowest first from those never used, then from freed ones.
//! 4. Any other key is a miss ([`MISS`]).
//!
//! The policy is written once, generic over the key index; the property tests run it over
//! a `HashMap` index (the reference) and over the open-addressing table, and require the
//! same rows, misses, fresh rows and final contents.

use std::collections::HashMap;

use super::{CollisionlessSpec, Evict, Miss, Ttl};
use crate::batch::Bags;
use crate::tables::store::HugeBuf;

/// A key the map does not hold.
pub const MISS: u32 = u32::MAX;
/// The table's load factor at full capacity.
pub const LOAD_FACTOR: f64 = 0.8;
/// How many keys a batch lookup prefetches the home buckets of at once.
pub const LOOKUP_AHEAD: usize = 32;
const SLOTS: usize = 4;
/// A slot's `row` field holds the row plus one: 0 is an empty slot (so zeroed memory is an
/// empty table), `TOMB` a deleted one.
const EMPTY: u32 = 0;
const TOMB: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct Slot {
    key: u64,
    /// row + 1, or EMPTY or TOMB
    row: u32,
    stamp: u32,
}

impl Slot {
    #[inline]
    fn live(&self) -> bool {
        self.row != EMPTY && self.row != TOMB
    }
}

#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Bucket([Slot; SLOTS]);

/// MurmurHash3's 64-bit finalizer: a bijection that spreads the key's bits.
#[inline]
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// A map from keys to `(row, stamp)`: the part of the map that differs between the fast
/// table and the reference.
pub trait KeyIndex {
    fn with_capacity(capacity: usize) -> Self;
    fn get(&self, key: u64) -> Option<u32>;
    /// The key's row, after setting its stamp to `stamp`.
    fn touch(&mut self, key: u64, stamp: u32) -> Option<u32>;
    /// Inserts a key the index does not hold.
    fn insert(&mut self, key: u64, row: u32, stamp: u32);
    fn remove(&mut self, key: u64) -> Option<u32>;
    /// Every `(key, row, stamp)`, in no particular order.
    fn entries(&self) -> Vec<(u64, u32, u32)>;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Bytes held.
    fn bytes(&self) -> usize;
    /// `out[i]` = the row of `keys[i]` or [`MISS`].
    fn lookup(&self, keys: &[u64], out: &mut [u32]) {
        for (o, &k) in out.iter_mut().zip(keys) {
            *o = self.get(k).unwrap_or(MISS);
        }
    }
}

/// The reference index: a `HashMap`.
#[derive(Default, Debug)]
pub struct HashIndex(HashMap<u64, (u32, u32)>);

impl KeyIndex for HashIndex {
    fn with_capacity(_: usize) -> Self {
        HashIndex(HashMap::new())
    }
    fn get(&self, key: u64) -> Option<u32> {
        self.0.get(&key).map(|e| e.0)
    }
    fn touch(&mut self, key: u64, stamp: u32) -> Option<u32> {
        self.0.get_mut(&key).map(|e| {
            e.1 = stamp;
            e.0
        })
    }
    fn insert(&mut self, key: u64, row: u32, stamp: u32) {
        assert!(self.0.insert(key, (row, stamp)).is_none());
    }
    fn remove(&mut self, key: u64) -> Option<u32> {
        self.0.remove(&key).map(|e| e.0)
    }
    fn entries(&self) -> Vec<(u64, u32, u32)> {
        self.0.iter().map(|(&k, &(r, s))| (k, r, s)).collect()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn bytes(&self) -> usize {
        self.0.capacity() * 24
    }
}

/// The fast index: open addressing over 64-byte buckets (see the module doc), in memory
/// on transparent huge pages (random probes, like random row gathers, miss the TLB less).
pub struct OpenTable {
    mem: HugeBuf,
    n_buckets: usize,
    live: usize,
    tombs: usize,
}

impl std::fmt::Debug for OpenTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenTable")
            .field("buckets", &self.n_buckets)
            .field("live", &self.live)
            .field("tombs", &self.tombs)
            .finish()
    }
}

impl OpenTable {
    #[inline]
    fn buckets(&self) -> &[Bucket] {
        let b = self.mem.as_bytes();
        // SAFETY: the buffer holds n_buckets * 64 initialised bytes (zeroed at allocation),
        // starts 64-byte aligned (checked at allocation: mappings are page aligned and
        // large ones start on a 2 MiB boundary), and Bucket is plain old data (u64 and u32
        // fields, repr(C), no padding) for which every bit pattern is valid. The slice
        // borrows the buffer immutably for its lifetime.
        unsafe { std::slice::from_raw_parts(b.as_ptr() as *const Bucket, self.n_buckets) }
    }

    #[inline]
    fn buckets_mut(&mut self) -> &mut [Bucket] {
        let n = self.n_buckets;
        let b = self.mem.as_bytes_mut();
        // SAFETY: as in `buckets`, with the buffer borrowed mutably (exclusively) for the
        // slice's lifetime.
        unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr() as *mut Bucket, n) }
    }

    fn slots(&self) -> usize {
        self.n_buckets * SLOTS
    }

    #[inline]
    fn home(&self, key: u64) -> usize {
        ((fmix64(key) as u128 * self.n_buckets as u128) >> 64) as usize
    }

    #[inline]
    fn slot(&self, i: usize) -> &Slot {
        &self.buckets()[i / SLOTS].0[i % SLOTS]
    }

    #[inline]
    fn slot_mut(&mut self, i: usize) -> &mut Slot {
        &mut self.buckets_mut()[i / SLOTS].0[i % SLOTS]
    }

    /// The slot holding `key`, if any.
    #[inline]
    fn find(&self, key: u64) -> Option<usize> {
        self.find_from(key, self.home(key))
    }

    /// [`find`](Self::find) with the key's home bucket `home` already computed.
    #[inline]
    fn find_from(&self, key: u64, home: usize) -> Option<usize> {
        let n = self.slots();
        let buckets = self.buckets();
        let mut i = home * SLOTS;
        for _ in 0..n {
            let s = &buckets[i / SLOTS].0[i % SLOTS];
            if s.row == EMPTY {
                return None;
            }
            if s.key == key && s.row != TOMB {
                return Some(i);
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
        None
    }

    fn rebuild(&mut self) {
        let live = self.entries();
        self.mem.as_bytes_mut().fill(0);
        self.live = 0;
        self.tombs = 0;
        for (k, r, s) in live {
            self.insert(k, r, s);
        }
    }
}

impl KeyIndex for OpenTable {
    /// Panics if the memory cannot be mapped (as a `Vec` does).
    fn with_capacity(capacity: usize) -> Self {
        let buckets = (capacity as f64 / (LOAD_FACTOR * SLOTS as f64)).ceil() as usize;
        // at least one empty slot always remains (capacity < slots), so probes end
        let n_buckets = buckets.max(capacity / SLOTS + 1).max(1);
        let mem = HugeBuf::zeroed(n_buckets * std::mem::size_of::<Bucket>())
            .expect("memory for a collisionless id map");
        assert_eq!(
            mem.as_bytes().as_ptr() as usize % std::mem::align_of::<Bucket>(),
            0,
            "id map buckets not 64-byte aligned"
        );
        OpenTable {
            mem,
            n_buckets,
            live: 0,
            tombs: 0,
        }
    }

    #[inline]
    fn get(&self, key: u64) -> Option<u32> {
        self.find(key).map(|i| self.slot(i).row - 1)
    }

    fn touch(&mut self, key: u64, stamp: u32) -> Option<u32> {
        let i = self.find(key)?;
        let s = self.slot_mut(i);
        s.stamp = stamp;
        Some(s.row - 1)
    }

    fn insert(&mut self, key: u64, row: u32, stamp: u32) {
        debug_assert!(row < TOMB - 1 && self.find(key).is_none());
        let n = self.slots();
        let mut i = self.home(key) * SLOTS;
        loop {
            let was = self.slot(i).row;
            if was == EMPTY || was == TOMB {
                if was == TOMB {
                    self.tombs -= 1;
                }
                *self.slot_mut(i) = Slot {
                    key,
                    row: row + 1,
                    stamp,
                };
                break;
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
        self.live += 1;
        if (self.live + self.tombs) * 16 > n * 15 {
            self.rebuild();
        }
    }

    fn remove(&mut self, key: u64) -> Option<u32> {
        let i = self.find(key)?;
        let s = self.slot_mut(i);
        let row = s.row - 1;
        s.row = TOMB;
        self.live -= 1;
        self.tombs += 1;
        Some(row)
    }

    fn entries(&self) -> Vec<(u64, u32, u32)> {
        self.buckets()
            .iter()
            .flat_map(|b| b.0.iter())
            .filter(|s| s.live())
            .map(|s| (s.key, s.row - 1, s.stamp))
            .collect()
    }

    fn len(&self) -> usize {
        self.live
    }

    fn bytes(&self) -> usize {
        self.n_buckets * std::mem::size_of::<Bucket>()
    }

    /// In groups of [`LOOKUP_AHEAD`] keys: every home bucket of the group is computed and
    /// prefetched, then the group is probed (its lines arrive in parallel).
    fn lookup(&self, keys: &[u64], out: &mut [u32]) {
        const G: usize = LOOKUP_AHEAD;
        let base = self.buckets().as_ptr() as *const u8;
        let line = std::mem::size_of::<Bucket>();
        let mut homes = [0usize; G];
        for (ks, os) in keys.chunks(G).zip(out.chunks_mut(G)) {
            for (h, &k) in homes.iter_mut().zip(ks) {
                *h = self.home(k);
                dlrs_kernels::prefetch::row(base, *h, line, line);
            }
            for ((o, &k), &h) in os.iter_mut().zip(ks).zip(&homes) {
                *o = self.find_from(k, h).map_or(MISS, |i| self.slot(i).row - 1);
            }
        }
    }
}

/// The admission filter: a count-min sketch of 4-bit counters saturating at 15, two per
/// key, in `2^k` nibbles (at least twice the map's capacity).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdmissionFilter {
    nibbles: Vec<u8>,
    mask: u64,
}

impl AdmissionFilter {
    /// A filter for a map of `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        let n = (2 * capacity).next_power_of_two().max(64);
        AdmissionFilter {
            nibbles: vec![0; n / 2],
            mask: n as u64 - 1,
        }
    }

    /// A filter of `bytes` bytes as saved (a power of two of at least 32).
    pub fn from_bytes(nibbles: Vec<u8>) -> Option<Self> {
        let n = nibbles.len() * 2;
        (n.is_power_of_two() && n >= 64).then(|| AdmissionFilter {
            nibbles,
            mask: n as u64 - 1,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.nibbles
    }

    fn positions(&self, key: u64) -> [usize; 2] {
        let h = fmix64(key ^ 0x5bd1_e995_0000_0001);
        [(h & self.mask) as usize, ((h >> 32) & self.mask) as usize]
    }

    fn get_nibble(&self, i: usize) -> u8 {
        (self.nibbles[i / 2] >> ((i % 2) * 4)) & 15
    }

    fn set_nibble(&mut self, i: usize, v: u8) {
        let sh = (i % 2) * 4;
        self.nibbles[i / 2] = (self.nibbles[i / 2] & !(15 << sh)) | (v << sh);
    }

    /// The key's estimated occurrences (never below the true count, up to 15).
    pub fn estimate(&self, key: u64) -> u8 {
        let [a, b] = self.positions(key);
        self.get_nibble(a).min(self.get_nibble(b))
    }

    /// Counts one occurrence (conservative update: only the smallest counters grow) and
    /// returns the new estimate.
    pub fn add(&mut self, key: u64) -> u8 {
        let [a, b] = self.positions(key);
        let est = self.get_nibble(a).min(self.get_nibble(b));
        let new = (est + 1).min(15);
        for i in [a, b] {
            if self.get_nibble(i) < new {
                self.set_nibble(i, new);
            }
        }
        new
    }
}

/// A collisionless map over key index `I`; [`CollisionlessMap`] is the one to use.
#[derive(Debug)]
pub struct Collisionless<I> {
    spec: CollisionlessSpec,
    capacity: usize,
    index: I,
    /// per row: updates since it was assigned, saturating; 0 = free
    counts: Vec<u16>,
    /// rows `0..next_row` have been assigned at least once
    next_row: usize,
    /// rows below `next_row` that are free (count 0)
    free: usize,
    /// where the search for a free row resumes
    cursor: usize,
    filter: Option<AdmissionFilter>,
    last_sweep: u32,
}

/// The map used by models: the open-addressing index.
pub type CollisionlessMap = Collisionless<OpenTable>;
/// The reference: the same policy over a `HashMap` index.
pub type ReferenceMap = Collisionless<HashIndex>;

/// The parts of a map as saved (see [`super::file`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapParts {
    /// `(key, row, stamp)`, sorted by row
    pub entries: Vec<(u64, u32, u32)>,
    /// per row below `next_row`
    pub counts: Vec<u16>,
    pub capacity: usize,
    pub last_sweep: u32,
    /// the admission filter's bytes (empty when `admit` is 1)
    pub filter: Vec<u8>,
}

/// One table's keys of a batch turned into rows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resolved {
    pub bags: Bags,
    /// keys the map did not hold
    pub misses: usize,
}

impl<I: KeyIndex> Collisionless<I> {
    /// An empty map for a table of `rows` rows.
    pub fn new(spec: CollisionlessSpec, rows: usize) -> Self {
        let capacity = spec.capacity(rows);
        Collisionless {
            spec,
            capacity,
            index: I::with_capacity(capacity),
            counts: Vec::new(),
            next_row: 0,
            free: 0,
            cursor: 0,
            filter: (spec.admit > 1).then(|| AdmissionFilter::new(capacity)),
            last_sweep: 0,
        }
    }

    pub fn spec(&self) -> &CollisionlessSpec {
        &self.spec
    }

    /// Ids the map can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Ids it holds.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Bytes held: index, counts and filter.
    pub fn bytes(&self) -> usize {
        self.index.bytes()
            + self.counts.capacity() * 2
            + self.filter.as_ref().map_or(0, |f| f.nibbles.len())
    }

    /// The shared default row (`miss=default`), if any.
    pub fn default_row(&self) -> Option<u32> {
        (self.spec.miss == Miss::Default).then_some(self.capacity as u32)
    }

    /// The row of `key`, if the map holds it.
    pub fn get(&self, key: u64) -> Option<u32> {
        self.index.get(key)
    }

    /// `out[i]` = the row of `keys[i]`, or [`MISS`]. Read-only and lock-free.
    pub fn lookup(&self, keys: &[u64], out: &mut [u32]) {
        assert_eq!(keys.len(), out.len());
        self.index.lookup(keys, out)
    }

    /// The bags of rows the forward pass reads for `keys` (bags as its `offsets` say):
    /// misses left out (`miss=zero`) or sent to the default row.
    pub fn resolve(&self, offsets: &[u32], keys: &[u64], scratch: &mut Vec<u32>) -> Resolved {
        scratch.clear();
        scratch.resize(keys.len(), MISS);
        self.lookup(keys, scratch);
        bags_of(offsets, scratch, self.default_row())
    }

    /// Whether the map's clock is in seconds (a TTL in seconds) rather than steps.
    pub fn clock_in_seconds(&self) -> bool {
        matches!(self.spec.ttl, Some(Ttl::Seconds(_)))
    }

    /// One training step's keys at time `now` (see the module doc): `out[i]` = the row of
    /// `keys[i]` or [`MISS`]; rows newly given to an id are appended to `fresh` (to be
    /// reset by the caller before the step uses them).
    pub fn train_step(&mut self, keys: &[u64], now: u32, out: &mut Vec<u32>, fresh: &mut Vec<u32>) {
        out.clear();
        if let Some(ttl) = self.spec.ttl {
            let ttl = match ttl {
                Ttl::Steps(n) | Ttl::Seconds(n) => n,
            };
            if now.saturating_sub(self.last_sweep) >= (ttl / 4).max(1) {
                self.expire(now, ttl);
                self.last_sweep = now;
            }
        }
        for &k in keys {
            if let Some(row) = self.index.touch(k, now) {
                let c = &mut self.counts[row as usize];
                *c = c.saturating_add(1);
                out.push(row);
                continue;
            }
            let seen = match &mut self.filter {
                Some(f) => f.add(k),
                None => 1,
            };
            if seen < self.spec.admit {
                out.push(MISS);
                continue;
            }
            match self.take_row(now) {
                Some(row) => {
                    self.index.insert(k, row, now);
                    self.counts[row as usize] = 1;
                    fresh.push(row);
                    out.push(row);
                }
                None => out.push(MISS),
            }
        }
    }

    /// Evicts every id last updated more than `ttl` before `now`.
    fn expire(&mut self, now: u32, ttl: u32) {
        let old: Vec<(u64, u32)> = self
            .index
            .entries()
            .into_iter()
            .filter(|&(_, _, s)| now.saturating_sub(s) > ttl)
            .map(|(k, r, _)| (k, r))
            .collect();
        for (k, r) in old {
            self.evict(k, r);
        }
    }

    fn evict(&mut self, key: u64, row: u32) {
        let removed = self.index.remove(key);
        debug_assert_eq!(removed, Some(row));
        self.counts[row as usize] = 0;
        self.free += 1;
    }

    /// A free row: a never-used one, else the lowest freed one at or after the cursor
    /// (wrapping); when none is free, evicts by the policy first. `None`: every id was
    /// updated at `now`.
    fn take_row(&mut self, now: u32) -> Option<u32> {
        if self.next_row < self.capacity {
            if self.counts.len() == self.counts.capacity() {
                // grow by doubling, but never past the capacity (2 bytes per id, not 4)
                let more = self
                    .counts
                    .len()
                    .max(1024)
                    .min(self.capacity - self.counts.len());
                self.counts.reserve_exact(more);
            }
            self.next_row += 1;
            self.counts.push(0);
            return Some((self.next_row - 1) as u32);
        }
        if self.free == 0 {
            self.evict_for_room(now);
            if self.free == 0 {
                return None;
            }
        }
        let n = self.next_row;
        for step in 0..n {
            let r = (self.cursor + step) % n;
            if self.counts[r] == 0 {
                self.cursor = (r + 1) % n;
                self.free -= 1;
                return Some(r as u32);
            }
        }
        unreachable!("free > 0 but no row has count 0")
    }

    /// Evicts the `max(1, capacity / 64)` ids with the lowest scores among those not
    /// updated at `now`.
    fn evict_for_room(&mut self, now: u32) {
        let want = (self.capacity / 64).max(1);
        let mut cands: Vec<(u128, u64)> = self
            .index
            .entries()
            .into_iter()
            .filter(|&(_, _, s)| s != now)
            .map(|(k, r, s)| {
                let score = match self.spec.evict {
                    Evict::Lfu => ((self.counts[r as usize] as u64) << 32) | s as u64,
                    Evict::Lru => s as u64,
                };
                (((score as u128) << 32) | r as u128, k)
            })
            .collect();
        if cands.is_empty() {
            return;
        }
        let n = want.min(cands.len());
        if n < cands.len() {
            cands.select_nth_unstable(n - 1);
        }
        for &(sr, k) in &cands[..n] {
            self.evict(k, sr as u32);
        }
    }

    /// The map's contents for saving.
    pub fn parts(&self) -> MapParts {
        let mut entries = self.index.entries();
        entries.sort_unstable_by_key(|e| e.1);
        MapParts {
            entries,
            counts: self.counts.clone(),
            capacity: self.capacity,
            last_sweep: self.last_sweep,
            filter: self
                .filter
                .as_ref()
                .map_or_else(Vec::new, |f| f.nibbles.clone()),
        }
    }

    /// Rebuilds a map from saved parts, checking that they are consistent: every row below
    /// the capacity and held by one key, every held row counted and every free one not,
    /// keys unique, the filter present exactly when `admit > 1`. The error says what is
    /// wrong.
    pub fn from_parts(spec: CollisionlessSpec, rows: usize, p: MapParts) -> Result<Self, String> {
        let mut m = Self::new(spec, rows);
        if p.capacity != m.capacity {
            return Err(format!(
                "holds a map of capacity {}, the table's map has capacity {}",
                p.capacity, m.capacity
            ));
        }
        if p.counts.len() > m.capacity {
            return Err(format!(
                "{} row counts for a capacity of {}",
                p.counts.len(),
                m.capacity
            ));
        }
        let mut held = vec![false; p.counts.len()];
        for &(k, r, s) in &p.entries {
            let r_us = r as usize;
            if r_us >= p.counts.len() {
                return Err(format!(
                    "key {k} has row {r}, beyond the {} rows in use",
                    p.counts.len()
                ));
            }
            if held[r_us] {
                return Err(format!("row {r} is held by two keys"));
            }
            if p.counts[r_us] == 0 {
                return Err(format!("row {r} of key {k} has a count of 0"));
            }
            if m.index.get(k).is_some() {
                return Err(format!("key {k} appears twice"));
            }
            held[r_us] = true;
            m.index.insert(k, r, s);
        }
        if let Some(r) = (0..held.len()).find(|&r| !held[r] && p.counts[r] != 0) {
            return Err(format!("row {r} is counted but held by no key"));
        }
        m.free = held.iter().filter(|h| !**h).count();
        m.next_row = p.counts.len();
        m.counts = p.counts;
        m.last_sweep = p.last_sweep;
        m.filter = match (spec.admit > 1, p.filter.is_empty()) {
            (false, true) => None,
            (true, false) => {
                let f = AdmissionFilter::from_bytes(p.filter)
                    .ok_or("the admission filter's size is not a power of two")?;
                if f.nibbles.len() != AdmissionFilter::new(m.capacity).nibbles.len() {
                    return Err("the admission filter's size does not fit the capacity".into());
                }
                Some(f)
            }
            (true, true) => return Err("no admission filter, and admit > 1".into()),
            (false, false) => return Err("an admission filter, and admit = 1".into()),
        };
        Ok(m)
    }
}

/// Bags of rows from per-key rows (`MISS` for a miss): misses left out, or sent to
/// `default_row`.
pub fn bags_of(offsets: &[u32], rows: &[u32], default_row: Option<u32>) -> Resolved {
    let mut out_off = Vec::with_capacity(offsets.len());
    let mut ids = Vec::with_capacity(rows.len());
    let mut misses = 0;
    out_off.push(0u32);
    for w in offsets.windows(2) {
        for &r in &rows[w[0] as usize..w[1] as usize] {
            if r == MISS {
                misses += 1;
                if let Some(d) = default_row {
                    ids.push(d);
                }
            } else {
                ids.push(r);
            }
        }
        out_off.push(ids.len() as u32);
    }
    Resolved {
        bags: Bags {
            offsets: out_off.into(),
            ids: ids.into(),
        },
        misses,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(admit: u8, ttl: Option<Ttl>, evict: Evict, miss: Miss) -> CollisionlessSpec {
        CollisionlessSpec {
            admit,
            ttl,
            evict,
            miss,
        }
    }

    #[test]
    fn admits_after_k_and_misses_until_then() {
        let mut m = CollisionlessMap::new(spec(3, None, Evict::Lfu, Miss::Zero), 4);
        let (mut out, mut fresh) = (Vec::new(), Vec::new());
        m.train_step(&[7, 7], 1, &mut out, &mut fresh);
        assert_eq!(out, vec![MISS, MISS]);
        m.train_step(&[7, 9], 2, &mut out, &mut fresh);
        assert_eq!(out, vec![0, MISS]);
        assert_eq!(fresh, vec![0]);
        let mut o = [0u32; 3];
        m.lookup(&[7, 9, 1 << 63], &mut o);
        assert_eq!(o, [0, MISS, MISS]);
    }

    #[test]
    fn full_map_evicts_lfu_and_never_this_steps_ids() {
        let mut m = CollisionlessMap::new(spec(1, None, Evict::Lfu, Miss::Zero), 3);
        let (mut out, mut fresh) = (Vec::new(), Vec::new());
        m.train_step(&[10, 11, 12, 10, 12], 1, &mut out, &mut fresh);
        assert_eq!(out, vec![0, 1, 2, 0, 2]);
        // 11 is the least used: its row 1 goes to 13
        m.train_step(&[13], 2, &mut out, &mut fresh);
        assert_eq!(out, vec![1]);
        assert_eq!(m.get(11), None);
        assert_eq!(fresh, vec![0, 1, 2, 1]);
        // every id updated at step 3: the 4th new one misses
        m.train_step(&[10, 12, 13, 14], 3, &mut out, &mut fresh);
        assert_eq!(out, vec![0, 2, 1, MISS]);
    }

    #[test]
    fn lru_and_ttl() {
        let mut m = CollisionlessMap::new(spec(1, None, Evict::Lru, Miss::Zero), 2);
        let (mut out, mut fresh) = (Vec::new(), Vec::new());
        m.train_step(&[1, 1, 1, 2], 1, &mut out, &mut fresh);
        m.train_step(&[2], 2, &mut out, &mut fresh);
        m.train_step(&[3], 3, &mut out, &mut fresh);
        assert_eq!((m.get(1), m.get(2), m.get(3)), (None, Some(1), Some(0)));

        let mut m = CollisionlessMap::new(spec(1, Some(Ttl::Steps(4)), Evict::Lfu, Miss::Zero), 8);
        m.train_step(&[1, 2], 1, &mut out, &mut fresh);
        m.train_step(&[2], 4, &mut out, &mut fresh);
        m.train_step(&[], 6, &mut out, &mut fresh);
        assert_eq!(
            (m.get(1), m.get(2)),
            (None, Some(1)),
            "1 expired after 4 steps"
        );
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn default_row_is_the_last_and_never_assigned() {
        let mut m = CollisionlessMap::new(spec(1, None, Evict::Lfu, Miss::Default), 3);
        assert_eq!((m.capacity(), m.default_row()), (2, Some(2)));
        let (mut out, mut fresh) = (Vec::new(), Vec::new());
        m.train_step(&[5, 6, 7], 1, &mut out, &mut fresh);
        assert_eq!(out, vec![0, 1, MISS]);
        let r = m.resolve(&[0, 2, 3], &[5, 8, 6], &mut Vec::new());
        assert_eq!(r.bags.offsets, vec![0, 2, 3]);
        assert_eq!(r.bags.ids, vec![0, 2, 1]);
        assert_eq!(r.misses, 1);
        let z = CollisionlessMap::new(spec(1, None, Evict::Lfu, Miss::Zero), 3);
        let r = z.resolve(&[0, 2, 3], &[5, 8, 6], &mut Vec::new());
        assert_eq!(
            (r.bags.offsets, r.bags.ids, r.misses),
            (vec![0, 0, 0].into(), vec![].into(), 3)
        );
    }

    #[test]
    fn memory_per_id_is_within_24_bytes() {
        for cap in [1000usize, 1 << 16, 100_000] {
            let mut m = CollisionlessMap::new(spec(2, None, Evict::Lfu, Miss::Zero), cap);
            let keys: Vec<u64> = (0..cap as u64).map(|k| k * 7919).collect();
            let (mut out, mut fresh) = (Vec::new(), Vec::new());
            m.train_step(&keys, 1, &mut out, &mut fresh);
            m.train_step(&keys, 2, &mut out, &mut fresh);
            assert_eq!(m.len(), cap);
            let per_id = m.bytes() as f64 / cap as f64;
            assert!(per_id <= 24.0, "{cap}: {per_id} bytes per id");
        }
    }

    #[test]
    fn filter_never_underestimates() {
        let mut f = AdmissionFilter::new(16);
        let mut truth = HashMap::new();
        for i in 0..2000u64 {
            let k = fmix64(i % 97);
            f.add(k);
            *truth.entry(k).or_insert(0u8) += 1;
        }
        for (k, c) in truth {
            assert!(f.estimate(k) >= c.min(15));
        }
    }

    /// A step of the property test: keys (from a small domain, so ids repeat and evict) and
    /// how far the clock moves.
    fn steps() -> impl Strategy<Value = Vec<(Vec<u64>, u32)>> {
        prop::collection::vec(
            (
                prop::collection::vec(
                    prop_oneof![0u64..40, any::<u64>(), Just(u64::MAX), Just(0)],
                    0..24,
                ),
                0u32..4,
            ),
            1..40,
        )
    }

    fn specs() -> impl Strategy<Value = CollisionlessSpec> {
        (
            1u8..4,
            prop_oneof![Just(None), (1u32..6).prop_map(|n| Some(Ttl::Steps(n)))],
            prop_oneof![Just(Evict::Lfu), Just(Evict::Lru)],
            prop_oneof![Just(Miss::Zero), Just(Miss::Default)],
        )
            .prop_map(|(a, t, e, m)| spec(a, t, e, m))
    }

    fn sorted<I: KeyIndex>(m: &Collisionless<I>) -> MapParts {
        m.parts()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn open_table_matches_the_reference(sp in specs(), rows in 2usize..20, steps in steps()) {
            let mut fast = CollisionlessMap::new(sp, rows);
            let mut refm = ReferenceMap::new(sp, rows);
            let (mut o1, mut o2, mut f1, mut f2) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let mut now = 0u32;
            for (keys, dt) in &steps {
                now += dt;
                fast.train_step(keys, now, &mut o1, &mut f1);
                refm.train_step(keys, now, &mut o2, &mut f2);
                prop_assert_eq!(&o1, &o2);
                prop_assert_eq!(&f1, &f2);
                prop_assert!(fast.len() <= fast.capacity());
                // every resolved row is below the capacity; no two held keys share a row
                let parts = fast.parts();
                let mut rows_held: Vec<u32> = parts.entries.iter().map(|e| e.1).collect();
                rows_held.dedup();
                prop_assert_eq!(rows_held.len(), parts.entries.len());
                prop_assert!(o1.iter().all(|&r| r == MISS || (r as usize) < fast.capacity()));
                let mut l1 = vec![0; keys.len()];
                let mut l2 = vec![0; keys.len()];
                fast.lookup(keys, &mut l1);
                refm.lookup(keys, &mut l2);
                prop_assert_eq!(l1, l2);
            }
            prop_assert_eq!(sorted(&fast), sorted(&refm));
            // and the saved parts rebuild the same map
            let back = CollisionlessMap::from_parts(sp, rows, fast.parts()).unwrap();
            prop_assert_eq!(back.parts(), fast.parts());
        }

        #[test]
        fn open_table_is_a_map(ops in prop::collection::vec((any::<bool>(), 0u64..64), 0..400)) {
            // inserts and removes against a HashMap, through tombstones and rebuilds
            let mut t = OpenTable::with_capacity(40);
            let mut r: HashMap<u64, u32> = HashMap::new();
            for (i, (ins, k)) in ops.into_iter().enumerate() {
                if ins {
                    if r.len() < 40 && !r.contains_key(&k) {
                        t.insert(k, i as u32, 0);
                        r.insert(k, i as u32);
                    }
                } else {
                    prop_assert_eq!(t.remove(k), r.remove(&k));
                }
                prop_assert_eq!(t.len(), r.len());
            }
            for k in 0..64 {
                prop_assert_eq!(t.get(k), r.get(&k).copied());
            }
        }
    }
}
