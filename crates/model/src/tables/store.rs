//! Embedding table storage (the local tiers of [`super`]): rows of one [`RowFormat`] (fp32, fp16, int8 or int4 row-wise,
//! FBGEMM's fused layouts) at a fixed byte stride, in one anonymous mapping with
//! transparent huge pages requested (`MADV_HUGEPAGE`). On this machine class THP is
//! madvise-only, and random row gathers run about 2x faster on huge pages (fewer TLB misses
//! per lookup).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use dlrs_kernels::gather::{Bags, Pooled, RowFormat, Rows, bag_sum, dequantize_row, quantize_row};
use memmap2::{Advice, Mmap, MmapMut, MmapOptions, UncheckedAdvice};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use rayon::prelude::*;
use xxhash_rust::xxh3::xxh3_64;

const HUGE_PAGE: usize = 2 << 20;

/// A byte buffer, 2 MiB aligned when large, with huge pages requested: zero-initialised
/// ([`HugeBuf::zeroed`]), or of any content for a caller that overwrites all of it
/// ([`HugeBuf::for_overwrite`]).
pub struct HugeBuf {
    /// `None` only once dropped into the spare memory
    map: Option<MmapMut>,
    offset: usize,
    len: usize,
}

/// Table memory kept when its buffer drops, for the next buffer of the same length that
/// will be overwritten whole (a server's next model version): see [`keep_spare_table_memory`].
struct Spare {
    /// most bytes kept; 0: none (buffers are freed when dropped)
    limit: usize,
    bytes: usize,
    bufs: Vec<(MmapMut, usize, usize)>,
}

static SPARE: std::sync::Mutex<Spare> = std::sync::Mutex::new(Spare {
    limit: 0,
    bytes: 0,
    bufs: Vec::new(),
});

fn spare() -> std::sync::MutexGuard<'static, Spare> {
    SPARE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keeps up to `limit` bytes of dropped table memory for reuse by the next tables loaded
/// for overwriting (0: keep none, and free what is kept).
///
/// Why: on a VM whose guest hands freed memory back to the host (virtio-balloon free page
/// reporting, as on this project's Firecracker machines), the first touch of each page of
/// a new allocation traps to the host; copying a 4 GB model version into fresh memory there
/// stalled both vCPUs for 26-43 ms at a time, even for threads at normal priority, while
/// a server's requests waited. Memory reused from the replaced version was never given
/// back, so writing it costs nothing but the copy. The price is the kept memory: a server
/// holds two versions' tables from its first reload on.
pub fn keep_spare_table_memory(limit: usize) {
    let freed = {
        let mut s = spare();
        s.limit = limit;
        let mut freed = Vec::new();
        while s.bytes > s.limit {
            let Some(b) = s.bufs.pop() else { break };
            s.bytes -= b.0.len();
            freed.push(b);
        }
        freed
    };
    for (map, _, _) in freed {
        free_gently(map);
    }
}

/// Bytes of table memory kept for reuse now.
pub fn spare_table_memory() -> usize {
    spare().bytes
}

/// Raises the spare memory's limit by what a second copy of the tables held in memory
/// among `tables` takes (mapped tables need none), and fills it now with such buffers, every
/// page touched: a server's first reload then finds its memory ready, as every later one does
/// (the replaced version's).
pub fn reserve_spare_table_memory(tables: &[EmbeddingTable]) -> std::io::Result<()> {
    for t in tables {
        let Storage::Owned(owned) = &t.storage else {
            continue;
        };
        let mut b = HugeBuf::zeroed(owned.len)?;
        let map = b.map.as_mut().expect("a live buffer has its mapping");
        let total = map.len();
        // one write per page makes it resident (a zero: the content stays zeroes)
        for at in (0..total).step_by(4096) {
            map[at] = 0;
        }
        spare().limit += total;
        drop(b); // into the spare memory
    }
    Ok(())
}

impl HugeBuf {
    /// A buffer of `len` bytes to be overwritten whole: kept memory of that length if there
    /// is some (any content), else a new zeroed one.
    pub fn for_overwrite(len: usize) -> std::io::Result<Self> {
        let reused = {
            let mut s = spare();
            let at = s.bufs.iter().position(|b| b.2 == len);
            at.map(|i| {
                let b = s.bufs.swap_remove(i);
                s.bytes -= b.0.len();
                b
            })
        };
        match reused {
            Some((map, offset, len)) => Ok(HugeBuf {
                map: Some(map),
                offset,
                len,
            }),
            None => Self::zeroed(len),
        }
    }

    pub fn zeroed(len: usize) -> std::io::Result<Self> {
        // over-allocate so the data can start on a 2 MiB boundary: THP only backs aligned 2 MiB spans
        let slack = if len >= HUGE_PAGE { HUGE_PAGE } else { 0 };
        let total = len
            .checked_add(slack)
            .ok_or_else(|| std::io::Error::other("table size overflows"))?;
        let map = MmapOptions::new().len(total.max(1)).map_anon()?;
        let addr = map.as_ptr() as usize;
        let offset = if slack > 0 {
            (HUGE_PAGE - addr % HUGE_PAGE) % HUGE_PAGE
        } else {
            0
        };
        if len >= HUGE_PAGE {
            // a refusal only costs speed; the buffer is valid either way
            let _ = map.advise(Advice::HugePage);
        }
        Ok(HugeBuf {
            map: Some(map),
            offset,
            len,
        })
    }

    fn map(&self) -> &MmapMut {
        self.map.as_ref().expect("a live buffer has its mapping")
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.map()[self.offset..self.offset + self.len]
    }

    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        let (o, n) = (self.offset, self.len);
        &mut self.map.as_mut().expect("a live buffer has its mapping")[o..o + n]
    }
}

impl Drop for HugeBuf {
    /// Into the spare memory if there is room for it there (see [`keep_spare_table_memory`]),
    /// else freed with [`free_gently`].
    fn drop(&mut self) {
        let Some(map) = self.map.take() else { return };
        let map = {
            let mut s = spare();
            if s.bytes + map.len() <= s.limit {
                s.bytes += map.len();
                s.bufs.push((map, self.offset, self.len));
                return;
            }
            map
        };
        free_gently(map);
    }
}

/// Gives the pages back 64 MiB at a time before the mapping goes. `munmap` of a 4 GB table
/// holds the process's mmap lock for writing while it frees everything (11 ms here with no
/// other thread running), and every page fault or mapping of the other threads (a server's
/// HTTP threads allocating body buffers) waits for it. `MADV_DONTNEED` frees under the lock
/// held for reading, 0.4 ms per step at most; the final unmap is then cheap.
fn free_gently(map: MmapMut) {
    const CHUNK: usize = 64 << 20;
    let total = map.len();
    if total < 4 * CHUNK {
        return;
    }
    let mut off = 0;
    while off < total {
        let n = CHUNK.min(total - off);
        // SAFETY: the buffer is being dropped, so nothing reads it any more; DONTNEED on
        // this private anonymous mapping only releases its pages (a failure just leaves
        // them to the unmap).
        let _ = unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, off, n) };
        off += n;
    }
}

/// Where a table's rows live.
enum Storage {
    /// in anonymous huge-page memory
    Owned(HugeBuf),
    /// inside a read-only mapping of the model file: the page cache is the tier
    Mapped {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
    },
}

/// Per-shard checksums of a mapped table, verified on first touch (and by a background
/// pass): rows of a shard whose checksum fails are never served.
pub struct ShardCheck {
    shard_bytes: usize,
    sums: Vec<u64>,
    state: Vec<OnceLock<bool>>,
    verified: AtomicUsize,
    all_ok: AtomicBool,
}

impl ShardCheck {
    pub fn new(shard_bytes: usize, sums: Vec<u64>) -> Self {
        let state = (0..sums.len()).map(|_| OnceLock::new()).collect();
        ShardCheck {
            shard_bytes,
            sums,
            state,
            verified: AtomicUsize::new(0),
            all_ok: AtomicBool::new(false),
        }
    }

    /// Whether shard `k` of `bytes` matches its checksum (hashed once, then remembered).
    fn ensure(&self, bytes: &[u8], k: usize) -> bool {
        *self.state[k].get_or_init(|| {
            let end = ((k + 1) * self.shard_bytes).min(bytes.len());
            let shard = &bytes[k * self.shard_bytes..end];
            will_need(shard);
            let ok = xxh3_64(shard) == self.sums[k];
            if ok && self.verified.fetch_add(1, Ordering::AcqRel) + 1 == self.sums.len() {
                self.all_ok.store(true, Ordering::Release);
            }
            ok
        })
    }

    /// Verifies every shard; the first failing shard's index on error.
    fn ensure_all(&self, bytes: &[u8]) -> Result<(), usize> {
        match (0..self.sums.len()).find(|&k| !self.ensure(bytes, k)) {
            Some(k) => Err(k),
            None => Ok(()),
        }
    }
}

/// Asks the kernel to read a (mapped) range ahead in one go (`MADV_WILLNEED`), before a
/// shard is hashed, instead of faulting it in page by page as the hash reads it.
fn will_need(b: &[u8]) {
    const PAGE: usize = 4096;
    let start = b.as_ptr() as usize / PAGE * PAGE;
    let len = b.as_ptr() as usize + b.len() - start;
    // SAFETY: madvise only advises; the range (widened to page boundaries) lies within the
    // mapping that holds `b`, and WILLNEED neither changes nor frees memory.
    unsafe {
        libc::madvise(start as *mut libc::c_void, len, libc::MADV_WILLNEED);
    }
}

/// Bytes as f32 values (a trailing partial value is left out).
fn as_f32(b: &[u8]) -> &[f32] {
    assert_eq!(b.as_ptr() as usize % 4, 0);
    // SAFETY: the start is 4-byte aligned (asserted), the slice covers `len / 4 * 4 <= len`
    // initialised bytes, and every bit pattern is a valid f32.
    unsafe { std::slice::from_raw_parts(b.as_ptr() as *const f32, b.len() / 4) }
}

/// One embedding table: `rows` rows of `dim` values in `format`, `stride` bytes apart.
pub struct EmbeddingTable {
    rows: usize,
    dim: usize,
    format: RowFormat,
    stride: usize,
    storage: Storage,
    check: Option<Arc<ShardCheck>>,
}

/// Rows generated per RNG stream: fixed, so a seed gives the same table on any thread count.
pub const FILL_ROWS: usize = 1 << 11;

/// Fills `out` (whole rows at the table's stride, starting at row `first_row`, a multiple
/// of [`FILL_ROWS`]) with the rows [`EmbeddingTable::random`] gives a table of `rows` rows:
/// U(-sqrt(1/rows), sqrt(1/rows)), quantized to `format`, in parallel. Streaming writers
/// call it window by window and get the same bytes as the in-memory table.
pub fn random_rows(
    rows: usize,
    dim: usize,
    format: RowFormat,
    seed: u64,
    first_row: usize,
    out: &mut [u8],
) {
    assert_eq!(first_row % FILL_ROWS, 0, "windows start on a fill chunk");
    let stride = EmbeddingTable::stride_for(format, dim);
    let a = (1.0 / rows as f64).sqrt() as f32;
    let c0 = first_row / FILL_ROWS;
    out.par_chunks_mut(FILL_ROWS * stride)
        .enumerate()
        .for_each(|(c, chunk)| {
            let c = (c0 + c) as u64;
            let mut rng = SmallRng::seed_from_u64(seed ^ c.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut row = vec![0.0f32; dim];
            for dst in chunk.chunks_mut(stride) {
                for v in row.iter_mut() {
                    let u = (rng.next_u32() >> 8) as f32 * (1.0 / (1u32 << 24) as f32);
                    *v = (2.0 * u - 1.0) * a;
                }
                let (payload, padding) = dst.split_at_mut(format.row_bytes(dim));
                quantize_row(format, &row, payload);
                padding.fill(0);
            }
        });
}

impl EmbeddingTable {
    /// The row stride of a table: fp32 rows are stored unpadded, exactly as PyTorch's
    /// `[rows, D]` tensor (so model files stay the reference's); quantized rows are padded to
    /// [`RowFormat::row_stride`] so a row touches as few cache lines as it can.
    pub fn stride_for(format: RowFormat, dim: usize) -> usize {
        match format {
            RowFormat::F32 => dim * 4,
            f => f.row_stride(dim),
        }
    }

    /// A zero-filled table (for fp32; quantized rows of zeros have scale 0 and bias 0).
    pub fn zeroed(rows: usize, dim: usize, format: RowFormat) -> std::io::Result<Self> {
        Self::owned(rows, dim, format, HugeBuf::zeroed)
    }

    /// A table of any content, for a caller that writes all of [`EmbeddingTable::bytes_mut`]
    /// (a model loaded into memory): it reuses spare table memory if some is kept
    /// ([`keep_spare_table_memory`]).
    pub fn for_overwrite(rows: usize, dim: usize, format: RowFormat) -> std::io::Result<Self> {
        Self::owned(rows, dim, format, HugeBuf::for_overwrite)
    }

    fn owned(
        rows: usize,
        dim: usize,
        format: RowFormat,
        buf: fn(usize) -> std::io::Result<HugeBuf>,
    ) -> std::io::Result<Self> {
        let stride = Self::stride_for(format, dim);
        let len = rows
            .checked_mul(stride)
            .ok_or_else(|| std::io::Error::other("table size overflows"))?;
        Ok(EmbeddingTable {
            rows,
            dim,
            format,
            stride,
            storage: Storage::Owned(buf(len)?),
            check: None,
        })
    }

    /// A table whose rows are `map[offset .. offset + rows * stride]`, verified against
    /// `check` shard by shard on first touch when given.
    pub fn mapped(
        rows: usize,
        dim: usize,
        format: RowFormat,
        map: Arc<Mmap>,
        offset: usize,
        check: Option<ShardCheck>,
    ) -> Self {
        let stride = Self::stride_for(format, dim);
        let len = rows * stride;
        assert!(offset + len <= map.len(), "mapped table outside its file");
        if let Some(c) = &check {
            assert_eq!(c.shard_bytes % stride, 0, "shards hold whole rows");
        }
        EmbeddingTable {
            rows,
            dim,
            format,
            stride,
            storage: Storage::Mapped { map, offset, len },
            check: check.map(Arc::new),
        }
    }

    pub fn is_mapped(&self) -> bool {
        matches!(self.storage, Storage::Mapped { .. })
    }

    /// Checks that the shards holding `ids` match their checksums (hashing each shard the
    /// first time it is touched). `Err(shard)` names the first failing shard. Free once every
    /// shard has been verified.
    pub fn verify_rows(&self, ids: &[u32]) -> Result<(), usize> {
        let Some(c) = &self.check else { return Ok(()) };
        if c.all_ok.load(Ordering::Acquire) {
            return Ok(());
        }
        let rows_per_shard = c.shard_bytes / self.stride;
        let bytes = self.bytes();
        let mut last = usize::MAX;
        for &id in ids {
            let k = id as usize / rows_per_shard;
            if k != last {
                if !c.ensure(bytes, k) {
                    return Err(k);
                }
                last = k;
            }
        }
        Ok(())
    }

    /// Verifies every shard now (`dlrs verify`, and the background pass after a load).
    pub fn verify_all(&self) -> Result<(), usize> {
        match &self.check {
            Some(c) => c.ensure_all(self.bytes()),
            None => Ok(()),
        }
    }

    /// Whether every shard of a checked table has been verified (true for unchecked tables).
    pub fn fully_verified(&self) -> bool {
        self.check
            .as_ref()
            .is_none_or(|c| c.all_ok.load(Ordering::Acquire))
    }

    /// A `'static` job that verifies every shard of a mapped, checked table, for a
    /// background thread (the results land in the table's shard states).
    pub fn background_verifier(&self) -> Option<impl FnOnce() + Send + 'static> {
        match (&self.storage, &self.check) {
            (Storage::Mapped { map, offset, len }, Some(c)) => {
                let (map, c, offset, len) = (Arc::clone(map), Arc::clone(c), *offset, *len);
                Some(move || {
                    let _ = c.ensure_all(&map[offset..offset + len]);
                })
            }
            _ => None,
        }
    }

    /// A table with U(-sqrt(1/rows), sqrt(1/rows)) values, the reference DLRM's init,
    /// generated and (for quantized formats) quantized row by row in parallel: memory stays
    /// at the table's own size. Deterministic for a given `seed` and independent of the
    /// format (a quantized table holds the quantized fp32 one).
    pub fn random(rows: usize, dim: usize, format: RowFormat, seed: u64) -> std::io::Result<Self> {
        let mut t = Self::zeroed(rows, dim, format)?;
        random_rows(rows, dim, format, seed, 0, t.bytes_mut());
        Ok(t)
    }

    /// This table in another row format (rows dequantized, then quantized), in parallel.
    pub fn convert(&self, format: RowFormat) -> std::io::Result<Self> {
        let mut t = Self::zeroed(self.rows, self.dim, format)?;
        let (dim, src_stride, dst_stride) = (self.dim, self.stride, t.stride);
        let src = self.bytes();
        t.bytes_mut()
            .par_chunks_mut(FILL_ROWS * dst_stride)
            .enumerate()
            .for_each(|(c, chunk)| {
                let mut row = vec![0.0f32; dim];
                for (i, dst) in chunk.chunks_mut(dst_stride).enumerate() {
                    let r = c * FILL_ROWS + i;
                    dequantize_row(
                        self.format,
                        &src[r * src_stride..r * src_stride + self.format.row_bytes(dim)],
                        dim,
                        &mut row,
                    );
                    quantize_row(format, &row, &mut dst[..format.row_bytes(dim)]);
                }
            });
        Ok(t)
    }

    /// Row `r` as f32 values.
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let b = &self.bytes()[r * self.stride..r * self.stride + self.format.row_bytes(self.dim)];
        dequantize_row(self.format, b, self.dim, out);
    }

    /// The rows as the gather kernels read them.
    pub fn gather_rows(&self) -> Rows<'_> {
        Rows::new(self.format, self.bytes(), self.stride, self.dim)
    }

    /// Sum-pooled embedding bags (see `dlrs_kernels::gather` for the contract).
    #[inline]
    pub fn bag_sum(&self, bags: Bags, out: Pooled) {
        bag_sum(self.gather_rows(), bags, out)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn dim(&self) -> usize {
        self.dim
    }
    pub fn format(&self) -> RowFormat {
        self.format
    }
    /// Bytes between consecutive rows.
    pub fn stride(&self) -> usize {
        self.stride
    }
    /// The stored rows, `rows * stride` bytes.
    pub fn bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::Owned(b) => b.as_bytes(),
            Storage::Mapped { map, offset, len } => &map[*offset..*offset + *len],
        }
    }

    /// The rows, writable.
    ///
    /// # Panics
    /// On a mapped table: those are read-only views of the model file.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        match &mut self.storage {
            Storage::Owned(b) => b.as_bytes_mut(),
            Storage::Mapped { .. } => panic!("a memory-mapped table is read-only"),
        }
    }

    /// The values of an fp32 table, `[rows, dim]` row-major.
    ///
    /// # Panics
    /// If the table is not fp32, or (a file from another writer) not 4-byte aligned.
    pub fn data(&self) -> &[f32] {
        assert_eq!(self.format, RowFormat::F32, "data() is for fp32 tables");
        let b = self.bytes();
        assert_eq!(b.as_ptr() as usize % 4, 0, "fp32 table not 4-byte aligned");
        as_f32(b)
    }
    pub fn size_bytes(&self) -> usize {
        self.rows * self.stride
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tables_are_deterministic_and_bounded() {
        let a = EmbeddingTable::random(100_000, 7, RowFormat::F32, 3).unwrap();
        let b = EmbeddingTable::random(100_000, 7, RowFormat::F32, 3).unwrap();
        assert_eq!(a.data(), b.data());
        let bound = (1.0f32 / 100_000.0).sqrt();
        assert!(a.data().iter().all(|v| v.abs() <= bound));
        assert!(a.data().iter().any(|v| *v != 0.0));
        let big = HugeBuf::zeroed(3 << 20).unwrap();
        assert_eq!(big.as_bytes().as_ptr() as usize % HUGE_PAGE, 0);
        assert!(EmbeddingTable::zeroed(1, 1, RowFormat::F32).unwrap().data() == [0.0]);
    }

    #[test]
    fn quantized_random_is_the_quantized_fp32_table() {
        for fmt in [RowFormat::F16, RowFormat::Int8, RowFormat::Int4] {
            let f = EmbeddingTable::random(5000, 13, RowFormat::F32, 9).unwrap();
            let q = EmbeddingTable::random(5000, 13, fmt, 9).unwrap();
            let c = f.convert(fmt).unwrap();
            assert_eq!(q.bytes(), c.bytes(), "{fmt:?}");
            assert_eq!(q.stride(), fmt.row_stride(13));
            let (mut x, mut y) = (vec![0.0; 13], vec![0.0; 13]);
            f.row_f32(4999, &mut x);
            q.row_f32(4999, &mut y);
            let scale =
                (1.0f32 / 5000.0).sqrt() * 2.0 / if fmt == RowFormat::Int4 { 15.0 } else { 255.0 };
            for (a, b) in x.iter().zip(&y) {
                assert!(
                    (a - b).abs() <= scale.max(1e-3 * a.abs()),
                    "{fmt:?}: {a} vs {b}"
                );
            }
        }
    }
}
