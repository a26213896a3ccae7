//! A row-level hot cache for memory-mapped tables.
//!
//! The rows the traffic touches most are copied into a compact table in huge-page memory,
//! sized in bytes. Under power-law traffic a few percent of the rows take most lookups; in
//! the page cache each of those hot rows pins a whole 4 KiB page (and a 4 KiB TLB entry),
//! while the row cache packs them densely on 2 MiB pages. With a model larger than RAM this
//! decides whether hot lookups go to disk.
//!
//! Filling: [`TrafficCounter`] counts ids of observed batches; [`build_caches`] takes the
//! most frequent rows over all tables (most lookups saved per byte first) up to the budget.
//! Lookup: an open-addressing hash index from row id to cache slot.

use std::collections::HashMap;

use dlrs_kernels::gather::{Bags, Pooled};

use super::{EmbeddingTable, PoolScratch, RowSource, Staging};
use crate::batch::Batch;

/// Row id -> slot, open addressing with linear probing; `u32::MAX` marks an empty key.
pub struct RowIndex {
    keys: Vec<u32>,
    slots: Vec<u32>,
    mask: usize,
}

const EMPTY: u32 = u32::MAX;

impl RowIndex {
    /// An index for `ids` (distinct, none equal to `u32::MAX`), slot = position in `ids`.
    pub fn new(ids: &[u32]) -> Self {
        let cap = (ids.len() * 2).next_power_of_two().max(16);
        let mut ix = RowIndex {
            keys: vec![EMPTY; cap],
            slots: vec![0; cap],
            mask: cap - 1,
        };
        for (slot, &id) in ids.iter().enumerate() {
            assert_ne!(id, EMPTY, "row id u32::MAX cannot be cached");
            let mut h = Self::hash(id) & ix.mask;
            while ix.keys[h] != EMPTY {
                assert_ne!(ix.keys[h], id, "duplicate id {id} in a row cache");
                h = (h + 1) & ix.mask;
            }
            ix.keys[h] = id;
            ix.slots[h] = slot as u32;
        }
        ix
    }

    #[inline]
    fn hash(id: u32) -> usize {
        // Fibonacci hashing: the high bits of id * 2^64/phi spread consecutive ids apart
        ((id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize
    }

    #[inline]
    pub fn get(&self, id: u32) -> Option<u32> {
        let mut h = Self::hash(id) & self.mask;
        loop {
            let k = self.keys[h];
            if k == id {
                return Some(self.slots[h]);
            }
            if k == EMPTY {
                return None;
            }
            h = (h + 1) & self.mask;
        }
    }

    pub fn bytes(&self) -> usize {
        self.keys.len() * 8
    }
}

/// The cached rows of one table: a compact table of the hot rows plus the index.
pub struct RowCache {
    pub rows: EmbeddingTable,
    pub index: RowIndex,
}

impl RowCache {
    /// Copies rows `ids` of `table` into a new huge-page table.
    pub fn build(table: &EmbeddingTable, ids: &[u32]) -> std::io::Result<Self> {
        let mut rows = EmbeddingTable::zeroed(ids.len(), table.dim(), table.format())?;
        let stride = table.stride();
        let src = table.bytes();
        for (dst, &id) in rows.bytes_mut().chunks_mut(stride).zip(ids) {
            let id = id as usize;
            dst.copy_from_slice(&src[id * stride..id * stride + stride]);
        }
        Ok(RowCache {
            rows,
            index: RowIndex::new(ids),
        })
    }

    /// Memory the cache takes: rows plus index.
    pub fn bytes(&self) -> usize {
        self.rows.size_bytes() + self.index.bytes()
    }

    /// Sum-pooled bags with hot rows read from the cache and the rest from `backing`: the
    /// bags are split into a hit part and a miss part, each gathered by the table kernels
    /// (with their prefetching), and the miss sums added onto the hit sums.
    pub fn pool(
        &self,
        backing: &dyn RowSource,
        bags: Bags,
        out: Pooled,
        staging: &Staging,
        scratch: &mut PoolScratch,
    ) {
        let PoolScratch {
            hit_ids,
            hit_offsets,
            miss_ids,
            miss_offsets,
            miss_out,
            cache_hits,
            cache_lookups,
        } = scratch;
        hit_ids.clear();
        miss_ids.clear();
        hit_offsets.clear();
        miss_offsets.clear();
        hit_offsets.push(0);
        miss_offsets.push(0);
        for w in bags.offsets.windows(2) {
            for &id in &bags.ids[w[0] as usize..w[1] as usize] {
                match self.index.get(id) {
                    Some(slot) => hit_ids.push(slot),
                    None => miss_ids.push(id),
                }
            }
            hit_offsets.push(hit_ids.len() as u32);
            miss_offsets.push(miss_ids.len() as u32);
        }
        *cache_hits += hit_ids.len() as u64;
        *cache_lookups += (hit_ids.len() + miss_ids.len()) as u64;
        let n = bags.len();
        let dim = self.rows.dim();
        let Pooled { out, stride } = out;
        self.rows
            .bag_sum(Bags::new(hit_offsets, hit_ids), Pooled::new(out, stride));
        if !miss_ids.is_empty() {
            miss_out.resize(n * dim, 0.0);
            // the misses' scratch is the cache's own: a tier behind it gets a fresh one
            backing.pool(
                Bags::new(miss_offsets, miss_ids),
                Pooled::new(miss_out, dim),
                staging,
                &mut PoolScratch::default(),
            );
            for b in 0..n {
                let o = &mut out[b * stride..b * stride + dim];
                for (x, m) in o.iter_mut().zip(&miss_out[b * dim..b * dim + dim]) {
                    *x += m;
                }
            }
        }
    }
}

/// Lookup counts per table, from observed batches.
#[derive(Default)]
pub struct TrafficCounter {
    counts: Vec<HashMap<u32, u64>>,
    pub lookups: u64,
}

impl TrafficCounter {
    pub fn observe(&mut self, batch: &Batch) {
        if self.counts.len() < batch.bags().len() {
            self.counts.resize_with(batch.bags().len(), HashMap::new);
        }
        for (c, bags) in self.counts.iter_mut().zip(batch.bags()) {
            for &id in &bags.ids {
                *c.entry(id).or_insert(0) += 1;
            }
            self.lookups += bags.ids.len() as u64;
        }
    }
}

/// Builds caches for the tables of `tables` from observed counts: rows ranked by lookups
/// saved per byte over all tables, taken until `budget_bytes` (rows plus index) is spent.
/// Tables that get no rows get `None`. Also returns the share of observed lookups the
/// cached rows would have served.
pub fn build_caches(
    tables: &[EmbeddingTable],
    traffic: &TrafficCounter,
    budget_bytes: usize,
) -> std::io::Result<(Vec<Option<RowCache>>, f64)> {
    // (lookups per byte, lookups, table, id); a cached row costs its stride + ~16 B of index
    let mut cand: Vec<(f64, u64, usize, u32)> = Vec::new();
    for (t, c) in traffic.counts.iter().enumerate().take(tables.len()) {
        let cost = (tables[t].stride() + 16) as f64;
        cand.extend(c.iter().map(|(&id, &n)| (n as f64 / cost, n, t, id)));
    }
    cand.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.2.cmp(&b.2)).then(a.3.cmp(&b.3)));
    let mut spent = 0usize;
    let mut chosen: Vec<Vec<u32>> = vec![Vec::new(); tables.len()];
    let mut served = 0u64;
    for (_, n, t, id) in cand {
        let cost = tables[t].stride() + 16;
        if spent + cost > budget_bytes {
            break;
        }
        spent += cost;
        served += n;
        chosen[t].push(id);
    }
    let caches = tables
        .iter()
        .zip(chosen)
        .map(|(table, ids)| {
            if ids.is_empty() {
                Ok(None)
            } else {
                RowCache::build(table, &ids).map(Some)
            }
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok((caches, served as f64 / traffic.lookups.max(1) as f64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RowFormat;
    use crate::synth::{IdDist, synth_batch};

    #[test]
    fn index_finds_every_key_and_nothing_else() {
        let ids: Vec<u32> = (0..1000u32).map(|i| i * 7919 % 100_003).collect();
        let ix = RowIndex::new(&ids);
        for (slot, &id) in ids.iter().enumerate() {
            assert_eq!(ix.get(id), Some(slot as u32));
        }
        let absent = (0..100_003u32).filter(|i| !ids.contains(i)).take(5000);
        for id in absent {
            assert_eq!(ix.get(id), None);
        }
    }

    #[test]
    fn cached_bags_equal_uncached_bags() {
        // pool(): hits from the cache, misses from the backing table, sums added per bag
        for fmt in [RowFormat::F32, RowFormat::Int8, RowFormat::Int4] {
            let table = EmbeddingTable::random(5000, 13, fmt, 3).unwrap();
            let cfg = crate::DlrmConfig::from_json_str(
                r#"{"arch_mlp_bot":"2-13","arch_mlp_top":"1","arch_embedding_size":"5000",
                    "arch_sparse_feature_size":13,"arch_interaction_op":"cat"}"#,
            )
            .unwrap();
            let mut traffic = TrafficCounter::default();
            for s in 0..3 {
                traffic.observe(&synth_batch(&cfg, 64, 9, IdDist::Zipf(1.1), s).unwrap());
            }
            let tables = [table];
            let (caches, share) =
                build_caches(&tables, &traffic, 40 * (tables[0].stride() + 16)).unwrap();
            let cache = caches[0].as_ref().unwrap();
            assert_eq!(cache.rows.rows(), 40);
            assert!(
                share > 0.2,
                "Zipf traffic: 40 rows should serve a good share, got {share}"
            );
            let b = synth_batch(&cfg, 50, 9, IdDist::Zipf(1.1), 77).unwrap();
            let bags = &b.bags()[0];
            let stride = 13 + 3;
            let (mut want, mut got) = (vec![-1.0; 50 * stride], vec![-1.0; 50 * stride]);
            let bagged = Bags::new(&bags.offsets, &bags.ids);
            tables[0].bag_sum(bagged, Pooled::new(&mut want, stride));
            let mut scratch = PoolScratch::default();
            cache.pool(
                &tables[0],
                bagged,
                Pooled::new(&mut got, stride),
                &Staging::default(),
                &mut scratch,
            );
            assert_eq!(scratch.cache_lookups, bags.ids.len() as u64);
            assert!(scratch.cache_hits > 0 && scratch.cache_hits < scratch.cache_lookups);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "{fmt:?} at {i}: {g} vs {w}"
                );
            }
        }
    }
}
