//! Embedding tables behind one contract: ids in, pooled vectors out.
//!
//! # The row-source contract
//!
//! The forward pass sees every table as a [`RowSource`]. For one batch it calls:
//!
//! 1. [`RowSource::prepare`] once per table, with every id the batch looks up in that table
//!    (all bags, in batch order), before any pooling. The source makes those rows readable or
//!    fails with a [`RowError`]: a memory-mapped table verifies the checksums of the shards
//!    the ids fall in; a remote tier would fetch the rows it does not hold into the batch's
//!    [`Staging`]. A failure fails the batch, and no row of it is pooled.
//! 2. [`RowSource::pool`] per thread, for that thread's rows of the batch: sum-pools each
//!    bag into its output row. Pooling cannot fail; its ids were prepared.
//!
//! Who validates what:
//!
//! | where | checks |
//! |---|---|
//! | the batch ([`crate::Batch`]'s constructors, the server's decoders) | offsets well formed; every id below its table's row count (an id out of range is an input error naming the sample and table; never clamped or remapped) |
//! | `prepare` | what only the source knows: checksums of mapped shards; a remote fetch |
//! | `pool` and the kernels | nothing new: a violated contract is a bug and panics (`dlrs_kernels::gather`) |
//!
//! # The tiers
//!
//! | type | rows live in |
//! |---|---|
//! | [`EmbeddingTable`] (owned) | anonymous memory on transparent huge pages (`--tables ram`) |
//! | [`EmbeddingTable`] (mapped) | a read-only mapping of the model file, checksummed shard by shard on first touch (`--tables mmap`) |
//! | [`Cached`] | a [`RowCache`] of hot rows in front of another source: hits from the cache, misses from the source behind it |
//! | a [`RemoteTables`] tier (the `dlrs-redis` crate) | another store (a Redis Cluster), fetched per batch in `prepare` into its [`Staging`] |
//!
//! The forward reads the tables through [`TableView`]s, built per batch by
//! [`crate::Model::table_views`]. A new tier (a raw-id map in front of a table, a remote
//! store behind a cache) implements [`RowSource`] and is added there: the forward pass, the
//! kernels and the servers need no change. See docs/architecture.md.

pub mod cache;
pub mod idmap;
pub mod store;

pub use cache::{RowCache, RowIndex, TrafficCounter, build_caches};
pub use store::{
    EmbeddingTable, FILL_ROWS, HugeBuf, ShardCheck, keep_spare_table_memory, random_rows,
    reserve_spare_table_memory, spare_table_memory,
};

use dlrs_kernels::gather::{Bags, Pooled, RowFormat};

/// Why a source cannot serve a batch's rows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    /// A shard of a checksummed table does not match its checksum: its rows are never served.
    #[error("shard {shard} does not match its checksum")]
    Corrupt { shard: usize },
    /// A remote tier could not deliver the rows in time (a node down, slow or failing over):
    /// the batch fails rather than pool a wrong or missing row. `tier` names the store.
    #[error("{tier}: {msg}")]
    Unavailable { tier: &'static str, msg: String },
}

/// The shape of a table's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableShape {
    pub rows: usize,
    pub dim: usize,
    pub format: RowFormat,
}

/// Rows a source fetched for one batch (see [`RowSource::prepare`]); held by the batch's
/// workspace, so batches computed at once never share one. The local tiers leave it empty.
#[derive(Default, Debug)]
pub struct Staging {
    /// the staged rows' ids, in slot order
    pub ids: Vec<u32>,
    /// the staged rows, one row of the table's format and stride per slot
    pub rows: Vec<u8>,
    /// for each id given to `prepare`, in order, the slot of its row (a source that stages
    /// every row of a batch pools with these as the row indices into `rows`)
    pub slots: Vec<u32>,
}

/// A thread's scratch while pooling (reused across batches: the hot path allocates nothing
/// once warm), and its counters.
#[derive(Default, Debug)]
pub struct PoolScratch {
    pub(crate) hit_ids: Vec<u32>,
    pub(crate) hit_offsets: Vec<u32>,
    pub(crate) miss_ids: Vec<u32>,
    pub(crate) miss_offsets: Vec<u32>,
    pub(crate) miss_out: Vec<f32>,
    /// lookups served from row caches, and all lookups through row caches, since creation
    pub cache_hits: u64,
    pub cache_lookups: u64,
}

/// A table's rows as the forward pass reads them: ids in, pooled vectors out (see the
/// module doc for the contract).
pub trait RowSource: Send + Sync {
    fn shape(&self) -> TableShape;

    /// Makes the rows of `ids` (every id of the batch in this table, each below
    /// `shape().rows`) readable by [`pool`](Self::pool), staging them in `staging` if the
    /// source keeps them elsewhere; or says why it cannot.
    fn prepare(&self, ids: &[u32], staging: &mut Staging) -> Result<(), RowError>;

    /// Sum-pools `bags` into `out` (bag `b` at `out.out[b * out.stride ..][..D]`), with the
    /// rows [`prepare`](Self::prepare) made readable. `bags.ids` is the slice given to
    /// `prepare` (the forward passes a window of the offsets over the batch's whole id
    /// array), except behind a [`Cached`], which passes its misses.
    fn pool(&self, bags: Bags, out: Pooled, staging: &Staging, scratch: &mut PoolScratch);
}

impl RowSource for EmbeddingTable {
    fn shape(&self) -> TableShape {
        TableShape {
            rows: self.rows(),
            dim: self.dim(),
            format: self.format(),
        }
    }

    fn prepare(&self, ids: &[u32], _: &mut Staging) -> Result<(), RowError> {
        self.verify_rows(ids)
            .map_err(|shard| RowError::Corrupt { shard })
    }

    #[inline]
    fn pool(&self, bags: Bags, out: Pooled, _: &Staging, _: &mut PoolScratch) {
        self.bag_sum(bags, out)
    }
}

/// A [`RowCache`] in front of another source: cached rows are read from the cache, the
/// others from `backing`.
pub struct Cached<'a> {
    pub cache: &'a RowCache,
    pub backing: &'a dyn RowSource,
}

impl RowSource for Cached<'_> {
    fn shape(&self) -> TableShape {
        self.backing.shape()
    }

    fn prepare(&self, ids: &[u32], staging: &mut Staging) -> Result<(), RowError> {
        // cached rows were copied from verified ones; the misses need the backing's checks,
        // and checking every id keeps a corrupt shard from being served once it is evicted
        self.backing.prepare(ids, staging)
    }

    fn pool(&self, bags: Bags, out: Pooled, staging: &Staging, scratch: &mut PoolScratch) {
        self.cache.pool(self.backing, bags, out, staging, scratch)
    }
}

/// Tables held outside this process (a Redis Cluster): one [`RowSource`] per table, which
/// [`crate::Model::table_views`] reads instead of the model file's tables when the model has
/// them ([`crate::Model::remote`]). Implemented by the `dlrs-redis` crate.
pub trait RemoteTables: Send + Sync {
    /// The store's name in errors and metrics (e.g. `"redis"`).
    fn tier(&self) -> &'static str;
    /// The source of table `t`'s rows.
    fn table(&self, t: usize) -> &dyn RowSource;
    /// [`RowSource::prepare`] of every table of a batch at once (`ids[t]` for table `t`,
    /// into `staging[t]`), so that a batch costs one round trip per node rather than one
    /// per table; an error names the table it failed for.
    fn prepare_all(&self, ids: &[&[u32]], staging: &mut [Staging])
    -> Result<(), (usize, RowError)>;
    /// Counters since start, as `(name, value)` pairs named for metrics (e.g.
    /// `("zero_rows", 3)`): what a server exports under its own prefix.
    fn counters(&self) -> Vec<(&'static str, u64)>;
}

/// What the forward pass reads table `t` through: the table itself, or a tier in front of it.
pub enum TableView<'a> {
    Table(&'a EmbeddingTable),
    Cached(Cached<'a>),
    /// a table held by a [`RemoteTables`] tier
    Remote(&'a dyn RowSource),
}

impl RowSource for TableView<'_> {
    fn shape(&self) -> TableShape {
        match self {
            TableView::Table(t) => t.shape(),
            TableView::Cached(c) => c.shape(),
            TableView::Remote(r) => r.shape(),
        }
    }

    fn prepare(&self, ids: &[u32], staging: &mut Staging) -> Result<(), RowError> {
        match self {
            TableView::Table(t) => t.prepare(ids, staging),
            TableView::Cached(c) => c.prepare(ids, staging),
            TableView::Remote(r) => r.prepare(ids, staging),
        }
    }

    #[inline]
    fn pool(&self, bags: Bags, out: Pooled, staging: &Staging, scratch: &mut PoolScratch) {
        match self {
            TableView::Table(t) => t.pool(bags, out, staging, scratch),
            TableView::Cached(c) => c.pool(bags, out, staging, scratch),
            TableView::Remote(r) => r.pool(bags, out, staging, scratch),
        }
    }
}
