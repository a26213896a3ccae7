//! `nn.Linear` layers over weights packed once: FBGEMM's `PackBMatrix` idea, with our own
//! microkernels.
//!
//! [`PackedWeights::new`] takes a weight `w: [n, k]` row-major (PyTorch's layout) and lays it
//! out as the microkernel of this CPU reads it; [`linear_packed`] then computes, for
//! `x: [m, k]` (row stride `ldx`), `bias: [n]`, `y: [m, n]` (row stride `ldy`):
//!
//! ```text
//! for i in 0..m:
//!     for j in 0..n:
//!         y[i * ldy + j] = act(bias[j] + sum_{kk < k} x[i * ldx + kk] * w[j * k + kk])
//! // nothing else of y is written: not the padding between rows (ldy > n), nor past row m - 1
//! // k = 0: y[i, j] = act(bias[j]);  m = 0 or n = 0: nothing happens
//! ```
//!
//! with `act` one of [`Activation`]: the contract of [`crate::mlp::linear`], whose scalar
//! [`crate::mlp::linear_ref`] is the oracle of the tests. Sums are f32 in `kk` order per
//! k-block (blocks only past [`KC`] inputs), so results match the reference to rounding, not
//! bit for bit. `linear_packed` allocates nothing and checks the slices once.
//!
//! # Layout and microkernels
//!
//! The weight is stored in panels of `NR` output columns: panel `p` holds `w[p * NR + c, kk]`
//! at `p * k * NR + kk * NR + c` (the last panel padded with zero columns), 64-byte aligned,
//! so a microkernel reads one contiguous stream of `NR` floats per `kk`. The microkernel keeps
//! an `MR x NR` tile of `y` in registers; per `kk` it loads `NR` weights, broadcasts `MR`
//! inputs straight from the rows of `x` and does `MR x NR / lanes` FMAs; its epilogue adds the
//! bias (or, past the first k-block, what `y` holds), applies the ReLU and stores. The sigmoid
//! is a pass over the tile while it is in L1.
//!
//! | [`Kernel`]  | registers    | MR x NR | accumulators                          |
//! |-------------|--------------|---------|---------------------------------------|
//! | `Scalar`    | (plain Rust) | 4 x 16  |                                       |
//! | `Avx2`      | 16 ymm       | 6 x 16  | 12, + 2 weights + 1 broadcast         |
//! | `Avx512Ymm` | 32 ymm (VL)  | 6 x 32  | 24, 4 FMAs per broadcast              |
//! | `Avx512Zmm` | 32 zmm       | 12 x 32 | 24, + 2 weights + 1 broadcast         |
//!
//! [`Kernel::detect`] picks the widest the CPU has (`DLRS_ISA` can force one, see
//! [`crate::cpu`]); [`Kernel::for_layer`] falls back to the 16-column AVX2 kernel when
//! 32-column panels would be mostly padding (n = 16).
//!
//! # Blocking
//!
//! Measured on Zen 4 (32 KiB L1, 1 MiB L2 per core), the loop nest is: k-blocks of up to
//! [`KC`] inputs (in practice the whole of `k`), blocks of [`MC`] rows, panels, tiles. A
//! panel's `k x NR` slice (320 KiB at k = 2560) then streams from L2 while the tiles of a
//! block pass over it, and each tile of `y` is loaded and stored once. Shorter k-blocks
//! (256, 512) keeping the slice in L1 measured 2-12% slower, and so did packing the inputs
//! into `MR`-row slices: broadcasting from `MR` rows of `x` costs nothing while those rows do
//! not crowd one L1 set. When they would (row strides of 4 KiB multiples, k = 1024 or 2048),
//! tiles shrink to 6 rows (`MAX_ROWS_PER_SET`). The first tile over a panel prefetches it
//! 16 k-steps ahead; tiles of a block have even heights (16 rows: 8 + 8, not 12 + 4).
//!
//! One row (batch 1) is a GEMV: each panel once over all of `k`, four independent sums per
//! register; it is bound by reading the weight (L2 or L3). A layer with `n <= DOT_MAX_N`
//! outputs (the last top-MLP layer, n = 1) keeps `w` unpacked and takes dot products along
//! `k`, four rows at a time.
//!
//! `threads > 1` lets a layer of at least [`PAR_MIN_FLOPS`] split over the current rayon
//! pool, along the dimension with more units: tiles of rows (a batch of 1024) or panels (a
//! batch of 1 or 16: each thread streams its share of the weight).
//!
//! ```
//! use dlrs_kernels::gemm::{PackedWeights, linear_packed};
//! use dlrs_kernels::mlp::{Activation, LinearShape};
//! // w: [n = 2, k = 3], one input row
//! let w = [1.0, 0.0, 2.0, 0.0, -1.0, 0.0];
//! let packed = PackedWeights::new(&w, 2, 3);
//! let mut y = [0.0; 2];
//! let shape = LinearShape::dense(1, 3, 2);
//! linear_packed(&[1.0, 2.0, 3.0], &packed, &[0.5, 0.5], &mut y, shape, Activation::Relu, 1);
//! assert_eq!(y, [7.5, 0.0]);
//! ```

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod pack;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::ops::Range;

use crate::cpu::{self, Avx512Width, Isa};
use crate::mlp::{Activation, LinearShape, sigmoid};

/// A microkernel family: one register tile shape, and the weight layout it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Plain Rust, the fallback (4 x 16 tiles).
    Scalar,
    /// AVX2 + FMA, 16 ymm registers (6 x 16 tiles).
    Avx2,
    /// AVX-512VL at 256 bits, 32 ymm registers (6 x 32 tiles).
    Avx512Ymm,
    /// AVX-512F at 512 bits, 32 zmm registers (12 x 32 tiles).
    Avx512Zmm,
}

impl Kernel {
    /// Every kernel, in order of the instruction sets they need.
    pub const ALL: [Kernel; 4] = [
        Kernel::Scalar,
        Kernel::Avx2,
        Kernel::Avx512Ymm,
        Kernel::Avx512Zmm,
    ];

    /// The kernel for this CPU and `DLRS_ISA` ([`cpu::isa`], [`cpu::avx512_width`]).
    pub fn detect() -> Kernel {
        match cpu::isa() {
            Isa::Scalar => Kernel::Scalar,
            Isa::Avx2 => Kernel::Avx2,
            Isa::Avx512 => match cpu::avx512_width() {
                Avx512Width::Bits256 => Kernel::Avx512Ymm,
                Avx512Width::Bits512 => Kernel::Avx512Zmm,
            },
        }
    }

    /// The kernel for a layer of `n` outputs: [`Kernel::detect`], unless its panels would pad
    /// `n` by more than an eighth and the 16-column AVX2 kernel pads less (the criteo 64 -> 16
    /// layer: 45 GFLOP/s on 32-column panels, 105 on 16-column ones, on Zen 4).
    pub fn for_layer(n: usize) -> Kernel {
        let best = Kernel::detect();
        let pad = |nr: usize| n.next_multiple_of(nr) - n;
        if best.isa() >= Isa::Avx2 && pad(best.nr()) * 8 > n && pad(16) < pad(best.nr()) {
            return Kernel::Avx2;
        }
        best
    }

    /// The instruction set the kernel needs.
    pub fn isa(self) -> Isa {
        match self {
            Kernel::Scalar => Isa::Scalar,
            Kernel::Avx2 => Isa::Avx2,
            Kernel::Avx512Ymm | Kernel::Avx512Zmm => Isa::Avx512,
        }
    }

    /// Every kernel [`cpu::isa`] allows (all this CPU can run, unless `DLRS_ISA` says less).
    pub fn available() -> Vec<Kernel> {
        Kernel::ALL
            .into_iter()
            .filter(|k| k.isa() <= cpu::isa())
            .collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512Ymm => "avx512-256",
            Kernel::Avx512Zmm => "avx512-512",
        }
    }

    /// Rows of the register tile.
    pub fn mr(self) -> usize {
        self.micro().mr
    }

    /// Columns of the register tile: the width of a weight panel.
    pub fn nr(self) -> usize {
        self.micro().nr
    }

    fn micro(self) -> &'static Micro {
        match self {
            Kernel::Scalar => &scalar::MICRO,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => &avx2::MICRO,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Ymm => &avx512::MICRO_YMM,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Zmm => &avx512::MICRO_ZMM,
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("x86-64 kernels are never selected elsewhere"),
        }
    }
}

/// Layers with at most this many outputs keep `w` unpacked and take dot products along `k`
/// (a panel of 16 or 32 columns would be mostly padding).
pub const DOT_MAX_N: usize = 4;

/// The longest k-block: a layer with more inputs is done in k-blocks, each adding to the
/// partial sums in `y` (see the module doc).
pub const KC: usize = 4096;

/// Rows of `x` per block of the cache blocking (rounded up to a multiple of MR): the tiles
/// of a block read a panel's slice from L2 (the first from L3); 48-144 measured no better.
pub const MC: usize = 256;

/// Layers of fewer flops (`2 m n k`) than this run on one thread, whatever `threads` says:
/// about 20 us of work on one Zen 4 core, against a few microseconds to wake a second.
pub const PAR_MIN_FLOPS: usize = 1 << 21;

/// How the weight is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// Panels of `NR` columns (see the module doc).
    Panels,
    /// `w` as given, `[n, k]` row-major (`n <= DOT_MAX_N`).
    Rows,
}

/// 64 bytes of floats at a cache-line boundary: the unit the packed weights are stored in.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// An `nn.Linear` weight `[n, k]`, packed once for one [`Kernel`] (see the module doc for the
/// layout). About `n * k * 4` bytes, plus the padding of the last panel to `NR` columns.
#[derive(Clone, Debug)]
pub struct PackedWeights {
    kernel: Kernel,
    layout: Layout,
    n: usize,
    k: usize,
    data: Vec<Line>,
}

impl PackedWeights {
    /// Packs `w: [n, k]` row-major for this CPU's kernel for `n` outputs
    /// ([`Kernel::for_layer`]).
    ///
    /// # Panics
    /// If `w.len() != n * k`.
    pub fn new(w: &[f32], n: usize, k: usize) -> Self {
        Self::with_kernel(Kernel::for_layer(n), w, n, k)
    }

    /// Packs `w: [n, k]` row-major for `kernel`.
    ///
    /// # Panics
    /// If `w.len() != n * k`, or if this CPU cannot run `kernel`.
    pub fn with_kernel(kernel: Kernel, w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight must be [n, k] = [{n}, {k}]");
        assert!(
            kernel.isa() <= cpu::detected(),
            "this CPU cannot run the {} kernel",
            kernel.name()
        );
        let layout = if n <= DOT_MAX_N {
            Layout::Rows
        } else {
            Layout::Panels
        };
        let floats = match layout {
            Layout::Rows => n * k,
            Layout::Panels => n.div_ceil(kernel.nr()) * kernel.nr() * k,
        };
        let mut data = vec![Line([0.0; 16]); floats.div_ceil(16)];
        let dst = lines_mut(&mut data);
        match layout {
            Layout::Rows => dst[..n * k].copy_from_slice(w),
            Layout::Panels => pack::panels(w, n, k, kernel.nr(), dst),
        }
        PackedWeights {
            kernel,
            layout,
            n,
            k,
            data,
        }
    }

    /// The kernel these weights were packed for.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Outputs of the layer (rows of `w`).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Inputs of the layer (columns of `w`).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        std::mem::size_of_val(self.data.as_slice())
    }

    /// The weight back as `[n, k]` row-major.
    pub fn unpack(&self) -> Vec<f32> {
        let src = lines(&self.data);
        match self.layout {
            Layout::Rows => src[..self.n * self.k].to_vec(),
            Layout::Panels => pack::unpanel(src, self.n, self.k, self.kernel.nr()),
        }
    }

    fn floats(&self) -> &[f32] {
        lines(&self.data)
    }
}

fn lines(v: &[Line]) -> &[f32] {
    // SAFETY: `Line` is `repr(C)` around `[f32; 16]` and 64 bytes large (no padding), so a
    // slice of lines is a slice of 16x as many initialized floats, at the same address and
    // with the same lifetime.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<f32>(), v.len() * 16) }
}

fn lines_mut(v: &mut [Line]) -> &mut [f32] {
    // SAFETY: as in `lines`, and the exclusive borrow of `v` moves to the result.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<f32>(), v.len() * 16) }
}

/// A layer over packed weights; see the module doc for the contract. `shape.k` and `shape.n`
/// must be the weight's; `threads > 1` lets the layer split on the current rayon pool.
///
/// # Panics
/// On slices that do not fit `shape`, or a `shape` whose `k` or `n` is not `w`'s.
pub fn linear_packed(
    x: &[f32],
    w: &PackedWeights,
    bias: &[f32],
    y: &mut [f32],
    shape: LinearShape,
    act: Activation,
    threads: usize,
) {
    check(x, w, bias, y, shape);
    let LinearShape { m, k, n, ldx, ldy } = shape;
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            let row = &mut y[i * ldy..i * ldy + n];
            row.copy_from_slice(bias);
            act.apply(row);
        }
        return;
    }
    let micro = w.kernel.micro();
    let job = Job {
        micro,
        x: x.as_ptr(),
        ldx,
        w: w.floats().as_ptr(),
        layout: w.layout,
        k,
        n,
        bias: bias.as_ptr(),
        y: y.as_mut_ptr(),
        ldy,
        act,
    };
    let panels = match w.layout {
        Layout::Rows => 1,
        Layout::Panels => n.div_ceil(micro.nr),
    };
    let parts = if threads > 1 && 2 * m * n * k >= PAR_MIN_FLOPS {
        threads
    } else {
        1
    };
    if parts == 1 {
        // SAFETY: `check` proved that x, y and bias fit the shape and that the packed weight
        // is `w`'s (k, n) of `w.kernel`'s layout, which this CPU runs (`with_kernel`).
        unsafe { job.run(0..m, 0..panels) };
    } else {
        let split = split(m, panels, micro.mr, parts, w.layout);
        use rayon::prelude::*;
        split.into_par_iter().for_each(|(rows, cols)| {
            // SAFETY: as above; the parts of `split` cover disjoint blocks of y (rows or
            // panels), so no two threads write the same element, and x, w, bias are only read.
            unsafe { job.run(rows, cols) }
        });
    }
}

/// The checks of [`linear_packed`].
fn check(x: &[f32], w: &PackedWeights, bias: &[f32], y: &[f32], s: LinearShape) {
    assert!(
        s.ldx >= s.k && s.ldy >= s.n,
        "row strides smaller than widths: {s:?}"
    );
    assert!(
        s.k == w.k && s.n == w.n,
        "shape {s:?} does not match the packed weight [n, k] = [{}, {}]",
        w.n,
        w.k
    );
    assert_eq!(bias.len(), s.n, "bias must be [n] = [{}]", s.n);
    if s.m > 0 {
        assert!(x.len() >= (s.m - 1) * s.ldx + s.k, "x too short for {s:?}");
        assert!(y.len() >= (s.m - 1) * s.ldy + s.n, "y too short for {s:?}");
    }
}

/// The work of a call split in `parts` (rows, panels) blocks, along the dimension with more
/// units (tiles of `mr` rows, or panels) so that the parts are even: a batch of 64 rows is 6
/// tiles of 12, RMC3's bottom layer 32 panels of 32 columns.
fn split(
    m: usize,
    panels: usize,
    mr: usize,
    parts: usize,
    layout: Layout,
) -> Vec<(Range<usize>, Range<usize>)> {
    let row_tiles = m.div_ceil(mr);
    let by_panels = layout == Layout::Panels && panels > row_tiles;
    let units = if by_panels { panels } else { row_tiles };
    let parts = parts.min(units).max(1);
    (0..parts)
        .map(|p| {
            let (s, e) = (units * p / parts, units * (p + 1) / parts);
            if by_panels {
                (0..m, s..e)
            } else {
                (s * mr..(e * mr).min(m), 0..panels)
            }
        })
        .collect()
}

/// One register tile of `M` rows (the microkernel's const parameter) and `NR` columns.
///
/// ```text
/// acc[i][c] = sum_{kk < kc} a[i * lda + kk] * b[kk * NR + c]      i < M, c < NR
/// base      = if first { bias[c] } else { c_tile[i * ldc + c] }
/// c_tile[i * ldc + c] = relu?(base + acc[i][c])
/// ```
pub(crate) struct Tile {
    pub a: *const f32,
    pub lda: usize,
    pub b: *const f32,
    pub kc: usize,
    pub c: *mut f32,
    pub ldc: usize,
    pub bias: *const f32,
    pub first: bool,
    pub relu: bool,
    /// prefetch the panel ahead of the loads
    pub prefetch: bool,
}

/// A microkernel.
///
/// # Safety
/// The CPU runs the kernel's instruction set; every address the [`Tile`] contract names is
/// inside a live allocation (readable, and writable for `c`), and `c` aliases none of the
/// inputs.
pub(crate) type TileFn = unsafe fn(&Tile);

/// Dot products for the [`Layout::Rows`] layout:
/// `y[i * ldy + j] = bias[j] + sum_kk x[i * ldx + kk] * w[j * k + kk]` for `i < m`, `j < n`.
pub(crate) struct Dot {
    pub x: *const f32,
    pub ldx: usize,
    pub w: *const f32,
    pub k: usize,
    pub n: usize,
    pub bias: *const f32,
    pub y: *mut f32,
    pub ldy: usize,
    pub m: usize,
}

/// # Safety
/// The CPU runs the kernel's instruction set; every address the [`Dot`] contract names is
/// inside a live allocation, and `y`'s elements alias none of the inputs.
pub(crate) type DotFn = unsafe fn(&Dot);

/// The table of a kernel's tiles for 1 ..= MR rows: `tiles!(f; 1 2 3)`.
macro_rules! tiles {
    ($f:ident; $($m:literal)*) => {
        &[$($f::<$m> as TileFn),*]
    };
}
pub(crate) use tiles;

/// A kernel family: tile shape, k-block, and its functions.
pub(crate) struct Micro {
    pub mr: usize,
    pub nr: usize,
    /// the longest k-block (a multiple of 8)
    pub kc: usize,
    /// `tiles[M - 1]`: the microkernel for `M` rows
    pub tiles: &'static [TileFn],
    /// one row over a whole panel, with independent partial sums along k
    pub gemv: TileFn,
    pub dot: DotFn,
}

/// Everything a part of a call needs, as raw pointers (the parts write disjoint blocks of
/// `y`, which slices cannot express for column blocks).
struct Job {
    micro: &'static Micro,
    x: *const f32,
    ldx: usize,
    w: *const f32,
    layout: Layout,
    k: usize,
    n: usize,
    bias: *const f32,
    y: *mut f32,
    ldy: usize,
    act: Activation,
}

// SAFETY: a `Job` is only shared between the threads of one `linear_packed` call, which holds
// the borrows its pointers came from for the whole call; the threads read x, w and bias and
// write disjoint blocks of y.
unsafe impl Sync for Job {}

/// L1 data cache sets (32 KiB, 8 ways, 64-byte lines on Zen 4 and recent Intel cores).
const L1_SETS: usize = 64;

/// Rows of `x` a tile may read from one L1 set: rows `ldx` floats apart start in the same set
/// when `ldx * 4` is a multiple of 4 KiB, and their streams then evict each other (Zen 4,
/// 12-row tiles at k = 1024: 76-80 GFLOP/s; 6-row tiles: 108-112).
const MAX_ROWS_PER_SET: usize = 6;

/// The tallest tile, at most `mr` rows, whose rows `ldx` floats apart start in no L1 set more
/// than [`MAX_ROWS_PER_SET`] times.
fn tile_rows(ldx: usize, mr: usize) -> usize {
    let crowded = |h: usize| {
        let mut count = [0usize; L1_SETS];
        (0..h).any(|i| {
            let set = &mut count[i * ldx * 4 / 64 % L1_SETS];
            *set += 1;
            *set > MAX_ROWS_PER_SET
        })
    };
    (1..=mr).rev().find(|&h| !crowded(h)).unwrap_or(1)
}

impl Job {
    /// Computes `y` for `rows` and the columns of `panels` (for [`Layout::Rows`]: `0..1`).
    ///
    /// # Safety
    /// `x`, `y`, `bias` fit `m >= rows.end` rows of `(k, n)` at strides `ldx`, `ldy`; `w` is a
    /// weight of `(k, n)` packed in `layout` for `micro`, whose instruction set this CPU has;
    /// `k > 0`. No other thread writes the rows x panels block of `y`.
    unsafe fn run(&self, rows: Range<usize>, panels: Range<usize>) {
        if rows.is_empty() || panels.is_empty() {
            return;
        }
        match self.layout {
            Layout::Rows => {
                let d = Dot {
                    // SAFETY: rows.start < m: a row of x and of y.
                    x: unsafe { self.x.add(rows.start * self.ldx) },
                    ldx: self.ldx,
                    w: self.w,
                    k: self.k,
                    n: self.n,
                    bias: self.bias,
                    // SAFETY: as above.
                    y: unsafe { self.y.add(rows.start * self.ldy) },
                    ldy: self.ldy,
                    m: rows.len(),
                };
                // SAFETY: the caller's contract is the dot kernel's.
                unsafe { (self.micro.dot)(&d) };
                if self.act != Activation::None {
                    for i in rows {
                        // SAFETY: row i < m of y, n floats, written by no other thread.
                        let row = unsafe {
                            std::slice::from_raw_parts_mut(self.y.add(i * self.ldy), self.n)
                        };
                        self.act.apply(row);
                    }
                }
            }
            Layout::Panels => {
                // SAFETY: forwarded.
                unsafe { self.run_panels(rows, panels) }
            }
        }
    }

    /// [`Job::run`] for [`Layout::Panels`]: for each k-block, each block of [`MC`] rows,
    /// each panel, the tiles of the block's rows.
    ///
    /// # Safety
    /// As [`Job::run`].
    unsafe fn run_panels(&self, rows: Range<usize>, panels: Range<usize>) {
        let Micro { mr, nr, kc, .. } = *self.micro;
        let k = self.k;
        let kc_step = k.div_ceil(k.div_ceil(kc)).next_multiple_of(8).min(k);
        let mc_max = MC.next_multiple_of(mr);
        let mr = tile_rows(self.ldx, mr.min(rows.len()));
        for k0 in (0..k).step_by(kc_step) {
            let kc = kc_step.min(k - k0);
            let (first, last) = (k0 == 0, k0 + kc == k);
            for i0 in rows.clone().step_by(mc_max) {
                for p in panels.clone() {
                    let blk = Block {
                        mr,
                        i0,
                        mc: mc_max.min(rows.end - i0),
                        j0: p * nr,
                        k0,
                        kc,
                        first,
                        last,
                    };
                    // SAFETY: forwarded; panel p < n.div_ceil(nr) of the packed weight.
                    unsafe { self.block(&blk) };
                }
            }
        }
    }

    /// The tiles of one block: rows `i0 .. i0 + mc` in tiles of at most `mr` rows, inputs
    /// `k0 .. k0 + kc`, the panel at column `j0`.
    ///
    /// # Safety
    /// As [`Job::run`], for the block's rows and panel.
    unsafe fn block(&self, blk: &Block) {
        let nr = self.micro.nr;
        let Block {
            mr,
            i0,
            mc,
            j0,
            k0,
            kc,
            first,
            last,
        } = *blk;
        let cols = nr.min(self.n - j0);
        let relu = last && self.act == Activation::Relu;
        // SAFETY: panel j0 / nr of the packed weight, k0 < k: inside it.
        let b = unsafe { self.w.add(j0 * self.k + k0 * nr) };
        // tiles of even heights: 16 rows as 8 + 8 rather than 12 + 4
        let tiles = mc.div_ceil(mr);
        let (short, extra) = (mc / tiles, mc % tiles);
        let mut ir = 0;
        for t in 0..tiles {
            let rr = short + usize::from(t < extra);
            let i = i0 + ir;
            // SAFETY: row i < m, column k0 < k of x.
            let a = unsafe { self.x.add(i * self.ldx + k0) };
            let f = if rr == 1 && kc == self.k {
                self.micro.gemv
            } else {
                self.micro.tiles[rr - 1]
            };
            if cols == nr {
                let t = Tile {
                    a,
                    lda: self.ldx,
                    b,
                    kc,
                    // SAFETY: row i < m, column j0 < n of y.
                    c: unsafe { self.y.add(i * self.ldy + j0) },
                    ldc: self.ldy,
                    // SAFETY: j0 + nr <= n: inside bias.
                    bias: unsafe { self.bias.add(j0) },
                    first,
                    relu,
                    // the first tile over the panel reads it from L2 or L3, the next from L1
                    prefetch: t == 0,
                };
                // SAFETY: rr rows of x from a (kc each) and of y from c (nr columns, as
                // j0 + nr <= n), a kc x nr slice of the panel, nr bias values; the CPU runs
                // the kernel (the caller's contract).
                unsafe { f(&t) };
            } else {
                // the last, partial panel: through a full tile on the stack
                let mut tmp = [0.0f32; MAX_TILE];
                let mut bias = [0.0f32; MAX_NR];
                for r in 0..rr {
                    // SAFETY: row i + r < m of y, columns j0 .. j0 + cols <= n: inside y
                    // and written by no other thread.
                    let yr = unsafe {
                        std::slice::from_raw_parts(self.y.add((i + r) * self.ldy + j0), cols)
                    };
                    tmp[r * nr..r * nr + cols].copy_from_slice(yr);
                }
                // SAFETY: j0 + cols = n: inside bias.
                let b_in = unsafe { std::slice::from_raw_parts(self.bias.add(j0), cols) };
                bias[..cols].copy_from_slice(b_in);
                let t = Tile {
                    a,
                    lda: self.ldx,
                    b,
                    kc,
                    c: tmp.as_mut_ptr(),
                    ldc: nr,
                    bias: bias.as_ptr(),
                    first,
                    relu,
                    // the first tile over the panel reads it from L2 or L3, the next from L1
                    prefetch: t == 0,
                };
                // SAFETY: as above, with c and bias on the stack: rr * nr <= MAX_TILE floats
                // and nr <= MAX_NR.
                unsafe { f(&t) };
                for r in 0..rr {
                    // SAFETY: as for the copy in.
                    let yr = unsafe {
                        std::slice::from_raw_parts_mut(self.y.add((i + r) * self.ldy + j0), cols)
                    };
                    yr.copy_from_slice(&tmp[r * nr..r * nr + cols]);
                }
            }
            if last && self.act == Activation::Sigmoid {
                for r in 0..rr {
                    // SAFETY: row i + r < m of y, columns j0 .. j0 + cols <= n, written by
                    // no other thread.
                    let yr = unsafe {
                        std::slice::from_raw_parts_mut(self.y.add((i + r) * self.ldy + j0), cols)
                    };
                    yr.iter_mut().for_each(|v| *v = sigmoid(*v));
                }
            }
            ir += rr;
        }
    }
}

/// The largest NR and MR x NR of the kernels.
const MAX_NR: usize = 32;
const MAX_TILE: usize = 16 * MAX_NR;

/// One block of [`Job::run_panels`].
#[derive(Clone, Copy)]
struct Block {
    mr: usize,
    i0: usize,
    mc: usize,
    j0: usize,
    k0: usize,
    kc: usize,
    first: bool,
    last: bool,
}

#[cfg(test)]
mod tests;
