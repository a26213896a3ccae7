//! Single-thread throughput of `gather::bag_sum` per row format: a 1 GiB table (on
//! transparent huge pages when the kernel grants them), uniform random ids, 80 ids per bag,
//! 256 bags per call, D = 32 (change with `--dim D`, `--ids-per-bag N`, `--seconds S`,
//! `--gib G`).
//!
//! ```sh
//! cargo run --release -p dlrs-kernels --example gather_formats
//! ```

use std::alloc::{Layout, alloc, dealloc};
use std::time::Instant;

use dlrs_kernels::cpu::{Isa, isa};
use dlrs_kernels::gather::{Bags, Pooled, RowFormat, Rows, bag_sum_with, quantize_row};

const HUGE_PAGE: usize = 2 << 20;
const BAGS: usize = 256;

unsafe extern "C" {
    fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
}
const MADV_HUGEPAGE: i32 = 14;

/// A zeroed, 2 MiB aligned byte buffer with huge pages requested.
struct Buf {
    ptr: *mut u8,
    layout: Layout,
}

impl Buf {
    fn new(len: usize) -> Buf {
        let layout = Layout::from_size_align(len.next_multiple_of(HUGE_PAGE), HUGE_PAGE).unwrap();
        // SAFETY: the layout has a non-zero size. (Not `alloc_zeroed`: for this alignment it
        // zeroes the pages itself, faulting them in as 4 KiB pages before the madvise.)
        let ptr = unsafe { alloc(layout) };
        assert!(!ptr.is_null(), "out of memory");
        // SAFETY: the range is this allocation; a refusal only costs speed. Then the first
        // touch (zeroing) faults it in, on huge pages where granted.
        unsafe {
            let _ = madvise(ptr.cast(), layout.size(), MADV_HUGEPAGE);
            std::ptr::write_bytes(ptr, 0, layout.size());
        }
        Buf { ptr, layout }
    }
    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `layout.size()` initialised (zeroed) bytes owned by `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn arg(name: &str, default: f64) -> f64 {
    let a: Vec<String> = std::env::args().collect();
    a.iter()
        .position(|x| x == name)
        .map_or(default, |i| a[i + 1].parse().expect(name))
}

fn main() {
    let dim = arg("--dim", 32.0) as usize;
    let ids_per_bag = arg("--ids-per-bag", 80.0) as usize;
    let seconds = arg("--seconds", 2.0);
    let bytes = (arg("--gib", 1.0) * (1u64 << 30) as f64) as usize;
    println!(
        "isa {}, D = {dim}, {BAGS} bags x {ids_per_bag} ids, table {} MiB, 1 thread",
        isa().name(),
        bytes >> 20
    );
    let mut paths: Vec<(&str, Isa)> = vec![("bag_sum", isa())];
    if isa() != Isa::Scalar {
        paths.push(("bag_sum_ref", Isa::Scalar));
    }
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for fmt in RowFormat::ALL {
        let stride = fmt.row_stride(dim);
        let rows = bytes / stride;
        let mut buf = Buf::new(rows * stride);
        let table = &mut buf.bytes()[..rows * stride];
        // 4096 distinct quantized rows, repeated
        let mut row = vec![0.0f32; dim];
        let mut proto = vec![0u8; 4096 * stride];
        for p in proto.chunks_mut(stride) {
            for v in row.iter_mut() {
                *v = (xorshift(&mut seed) >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            }
            quantize_row(fmt, &row, &mut p[..fmt.row_bytes(dim)]);
        }
        for dst in table.chunks_mut(proto.len()) {
            let n = dst.len();
            dst.copy_from_slice(&proto[..n]);
        }
        // a pool of 64 batches of uniform ids (5 MB of ids), cycled
        let pool = 64;
        let ids: Vec<u32> = (0..pool * BAGS * ids_per_bag)
            .map(|_| (xorshift(&mut seed) % rows as u64) as u32)
            .collect();
        let mut out = vec![0.0f32; BAGS * dim];
        for &(name, path) in &paths {
            let run = |k: usize, out: &mut [f32]| {
                let ids = &ids[(k % pool) * BAGS * ids_per_bag..][..BAGS * ids_per_bag];
                let offsets: Vec<u32> = (0..=BAGS).map(|b| (b * ids_per_bag) as u32).collect();
                let rows = Rows::new(fmt, table, stride, dim);
                bag_sum_with(path, rows, Bags::new(&offsets, ids), Pooled::new(out, dim))
            };
            for k in 0..pool {
                run(k, &mut out); // warm up: page the table in, fault the TLB paths once
            }
            let t0 = Instant::now();
            let mut k = 0;
            while t0.elapsed().as_secs_f64() < seconds {
                run(k, &mut out);
                k += 1;
            }
            let s = t0.elapsed().as_secs_f64();
            let n_rows = (k * BAGS * ids_per_bag) as f64;
            println!(
                "{:>5} {:<24} stride {:>3} B  {:>6.1} M rows/s  {:>5.2} GB/s payload  ({:.1} ns/row)",
                fmt.name(),
                name,
                stride,
                n_rows / s / 1e6,
                n_rows * fmt.row_bytes(dim) as f64 / s / 1e9,
                s / n_rows * 1e9
            );
            std::hint::black_box(&out);
        }
    }
}
