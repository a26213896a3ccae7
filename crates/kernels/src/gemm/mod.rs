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
//! bit for bit. `linear_packed` allocates nothing (but bf16's buffer, below) and checks the
//! slices once.
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
//! # bf16 weights
//!
//! [`PackedWeights::new_bf16`] (from f32, rounded to nearest even as `torch`'s `.bfloat16()`)
//! and [`PackedWeights::from_bf16_bits`] (a safetensors BF16 tensor) keep the weight in bf16:
//! half the bytes. [`linear_packed`] then rounds `x` to bf16 as well (as PyTorch's bf16
//! autocast does), once per block of [`MC`] rows and k-block, into a buffer of the thread
//! that the tiles of every panel read (the dot products of `n <= DOT_MAX_N` round in
//! registers), and accumulates in f32; bias and activation stay f32. The contract is the one
//! above with `x` and `w` replaced by their bf16 roundings: [`bf16::linear_bf16_ref`] is its
//! oracle. The buffer grows on a thread's first call (or a larger block) and is kept.
//!
//! The panels then hold `k` in pairs: each 32-bit lane holds two consecutive inputs of one
//! column (`w[j, 2q]` in the low half, `w[j, 2q + 1]` in the high half), panel `p` at
//! `p * nr * kpad`, pair `q` at `q * 2 * NR` in it (`kpad = k` rounded up to even, with a
//! zero weight and a zero input after an odd `k`); see [`bf16`].
//!
//! | [`Kernel`]             | needs        | MR x NR | per pair of inputs                        |
//! |------------------------|--------------|---------|-------------------------------------------|
//! | `Bf16Scalar`           | (plain Rust) | 4 x 16  | widen, f32 multiply-adds                  |
//! | `Bf16Avx2`             | AVX2 + FMA   | 5 x 16  | widen (shift, mask), 2 x 10 f32 FMAs      |
//! | `Bf16Avx512`           | AVX-512F     | 12 x 32 | widen (shift, mask), 2 x 24 f32 FMAs      |
//! | `Bf16Avx512Bf16`       | AVX512-BF16  | 12 x 32 | 24 `vdpbf16ps`: 2 weights, 12 input pairs |
//! | `Bf16Avx512Bf16Narrow` | AVX512-BF16  | 12 x 16 | 12 `vdpbf16ps`, for `n = 16`              |
//!
//! [`Kernel::detect_bf16`] picks `vdpbf16ps` where [`cpu::avx512_bf16`] allows it, else the
//! converting kernel of [`cpu::isa`]; [`Kernel::for_layer_bf16`] takes 16-column panels as
//! [`Kernel::for_layer`] does.
//!
//! `vdpbf16ps` does two multiply-adds per lane in the time of an f32 FMA, so the
//! AVX512-BF16 kernel's peak is twice the f32 one. The converting kernels (CPUs without
//! AVX512-BF16, or `DLRS_ISA=avx512|avx2`) widen the weights to f32 (a 16-bit shift) and
//! compute the same products: a product of two bf16 values is exact in f32, so all paths
//! differ only in the rounding of the sums (and `vdpbf16ps`, and `vcvtne2ps2bf16` which
//! rounds `x` for it, treat subnormals, below 1.2e-38, as zero).
//!
//! Measured on Zen 4 (one core, `examples/gemm_layers_packed.rs`): the `vdpbf16ps` peak is
//! 2.0x the FMA peak (234 against 117 GFLOP/s); the RMC3 layers ran at 91-98% of it for
//! batches of 16 to 1024, 1.9-2.0x the f32 kernel, and a batch of 1 (reading half the
//! bytes) at 1.6-2.3x. The converting kernels ran at 0.9-1.0x the f32 ones.
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
//! // the same in bf16 (these values are exact in bf16); 1.001 rounds to 1.0
//! let packed = PackedWeights::new_bf16(&w, 2, 3);
//! linear_packed(&[1.001, 2.0, 3.0], &packed, &[0.5, 0.5], &mut y, shape, Activation::Relu, 1);
//! assert_eq!(y, [7.5, 0.0]);
//! ```

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512_bf16;
pub mod bf16;
mod bf16_scalar;
#[cfg(target_arch = "x86_64")]
mod bf16_x86;
mod pack;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::cell::RefCell;
use std::ops::Range;

use crate::cpu::{self, Avx512Width, Isa};
use crate::mlp::{Activation, LinearShape, sigmoid};

/// The number type of a packed weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    /// bfloat16: f32's exponent, 8 bits of mantissa; inputs are rounded to it too.
    Bf16,
}

/// A microkernel family: one register tile shape, the weight layout it reads and its dtype.
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
    /// bf16 weights widened to f32 in plain Rust (4 x 16 tiles).
    Bf16Scalar,
    /// bf16 weights widened to f32 for AVX2 FMAs (5 x 16 tiles).
    Bf16Avx2,
    /// bf16 weights widened to f32 for AVX-512F FMAs (12 x 32 tiles).
    Bf16Avx512,
    /// bf16 weights and inputs through AVX512-BF16's `vdpbf16ps` (12 x 32 tiles).
    Bf16Avx512Bf16,
    /// As `Bf16Avx512Bf16` with 16-column panels, for narrow layers (12 x 16 tiles).
    Bf16Avx512Bf16Narrow,
}

impl Kernel {
    /// Every kernel, f32 then bf16, each in order of the instruction sets they need.
    pub const ALL: [Kernel; 9] = [
        Kernel::Scalar,
        Kernel::Avx2,
        Kernel::Avx512Ymm,
        Kernel::Avx512Zmm,
        Kernel::Bf16Scalar,
        Kernel::Bf16Avx2,
        Kernel::Bf16Avx512,
        Kernel::Bf16Avx512Bf16,
        Kernel::Bf16Avx512Bf16Narrow,
    ];

    /// The f32 kernel for this CPU and `DLRS_ISA` ([`cpu::isa`], [`cpu::avx512_width`]).
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

    /// The bf16 kernel for this CPU and `DLRS_ISA`: `vdpbf16ps` where [`cpu::avx512_bf16`]
    /// allows it, else the converting kernel of [`cpu::isa`].
    pub fn detect_bf16() -> Kernel {
        if cpu::avx512_bf16() {
            return Kernel::Bf16Avx512Bf16;
        }
        match cpu::isa() {
            Isa::Scalar => Kernel::Bf16Scalar,
            Isa::Avx2 => Kernel::Bf16Avx2,
            Isa::Avx512 => Kernel::Bf16Avx512,
        }
    }

    /// The f32 kernel for a layer of `n` outputs: [`Kernel::detect`], unless its panels
    /// would pad `n` by more than an eighth and the 16-column AVX2 kernel pads less (the
    /// criteo 64 -> 16 layer: 45 GFLOP/s on 32-column panels, 105 on 16-column ones, on
    /// Zen 4).
    pub fn for_layer(n: usize) -> Kernel {
        let best = Kernel::detect();
        let pad = |nr: usize| n.next_multiple_of(nr) - n;
        if best.isa() >= Isa::Avx2 && pad(best.nr()) * 8 > n && pad(16) < pad(best.nr()) {
            return Kernel::Avx2;
        }
        best
    }

    /// The bf16 kernel for a layer of `n` outputs: [`Kernel::detect_bf16`], unless its
    /// panels would pad `n` by more than an eighth and 16-column ones pad less, as in
    /// [`Kernel::for_layer`] (the criteo 64 -> 16 layer on Zen 4: 64 GFLOP/s on 32-column
    /// panels, 0.6x the f32 kernel; 125 on 16-column ones, 1.2x; 8, 12, 16 or 24-row tiles
    /// all measured the same there).
    pub fn for_layer_bf16(n: usize) -> Kernel {
        let best = Kernel::detect_bf16();
        let pad = |nr: usize| n.next_multiple_of(nr) - n;
        if pad(best.nr()) * 8 > n && pad(16) < pad(best.nr()) {
            match best {
                Kernel::Bf16Avx512Bf16 => return Kernel::Bf16Avx512Bf16Narrow,
                Kernel::Bf16Avx512 => return Kernel::Bf16Avx2,
                _ => {}
            }
        }
        best
    }

    /// The number type of the weights the kernel reads.
    pub fn dtype(self) -> Dtype {
        match self {
            Kernel::Scalar | Kernel::Avx2 | Kernel::Avx512Ymm | Kernel::Avx512Zmm => Dtype::F32,
            Kernel::Bf16Scalar
            | Kernel::Bf16Avx2
            | Kernel::Bf16Avx512
            | Kernel::Bf16Avx512Bf16
            | Kernel::Bf16Avx512Bf16Narrow => Dtype::Bf16,
        }
    }

    /// The instruction set the kernel needs (the `Bf16Avx512Bf16` kernels also need
    /// AVX512-BF16, see [`Kernel::needs_avx512_bf16`]).
    pub fn isa(self) -> Isa {
        match self {
            Kernel::Scalar | Kernel::Bf16Scalar => Isa::Scalar,
            Kernel::Avx2 | Kernel::Bf16Avx2 => Isa::Avx2,
            Kernel::Avx512Ymm | Kernel::Avx512Zmm | Kernel::Bf16Avx512 => Isa::Avx512,
            Kernel::Bf16Avx512Bf16 | Kernel::Bf16Avx512Bf16Narrow => Isa::Avx512,
        }
    }

    /// The kernel uses `vdpbf16ps` (AVX512-BF16, beyond [`Kernel::isa`]).
    pub fn needs_avx512_bf16(self) -> bool {
        matches!(self, Kernel::Bf16Avx512Bf16 | Kernel::Bf16Avx512Bf16Narrow)
    }

    /// This CPU can run the kernel, whatever `DLRS_ISA` says.
    pub fn runs_here(self) -> bool {
        self.isa() <= cpu::detected() && (!self.needs_avx512_bf16() || cpu::detected_avx512_bf16())
    }

    /// Every kernel, f32 and bf16, that [`cpu::isa`] and [`cpu::avx512_bf16`] allow (all this
    /// CPU can run, unless `DLRS_ISA` says less).
    pub fn available() -> Vec<Kernel> {
        Kernel::ALL
            .into_iter()
            .filter(|k| k.isa() <= cpu::isa() && (!k.needs_avx512_bf16() || cpu::avx512_bf16()))
            .collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512Ymm => "avx512-256",
            Kernel::Avx512Zmm => "avx512-512",
            Kernel::Bf16Scalar => "bf16-scalar",
            Kernel::Bf16Avx2 => "bf16-avx2",
            Kernel::Bf16Avx512 => "bf16-avx512",
            Kernel::Bf16Avx512Bf16 => "bf16-avx512bf16",
            Kernel::Bf16Avx512Bf16Narrow => "bf16-avx512bf16-16",
        }
    }

    /// Rows of the register tile.
    pub fn mr(self) -> usize {
        match self.family() {
            Family::F32(m) => m.mr,
            Family::Widen(m) => m.mr,
            Family::Dp(m) => m.mr,
        }
    }

    /// Columns of the register tile: the width of a weight panel.
    pub fn nr(self) -> usize {
        match self.family() {
            Family::F32(m) => m.nr,
            Family::Widen(m) => m.nr,
            Family::Dp(m) => m.nr,
        }
    }

    fn family(self) -> Family {
        match self {
            Kernel::Scalar => Family::F32(&scalar::MICRO),
            Kernel::Bf16Scalar => Family::Widen(&bf16_scalar::MICRO),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => Family::F32(&avx2::MICRO),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Ymm => Family::F32(&avx512::MICRO_YMM),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Zmm => Family::F32(&avx512::MICRO_ZMM),
            #[cfg(target_arch = "x86_64")]
            Kernel::Bf16Avx2 => Family::Widen(&bf16_x86::MICRO_AVX2),
            #[cfg(target_arch = "x86_64")]
            Kernel::Bf16Avx512 => Family::Widen(&bf16_x86::MICRO_AVX512),
            #[cfg(target_arch = "x86_64")]
            Kernel::Bf16Avx512Bf16 => Family::Dp(&avx512_bf16::MICRO),
            #[cfg(target_arch = "x86_64")]
            Kernel::Bf16Avx512Bf16Narrow => Family::Dp(&avx512_bf16::MICRO_16),
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("x86-64 kernels are never selected elsewhere"),
        }
    }
}

/// A kernel's tables, by the types of the inputs and weights it reads.
#[derive(Clone, Copy)]
enum Family {
    F32(&'static Micro),
    /// bf16 weights widened to f32; inputs rounded to bf16, held as f32
    Widen(&'static Micro<f32, u16>),
    /// bf16 weights and inputs
    Dp(&'static Micro<u16, u16>),
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
    /// `w` as given, `[n, k]` row-major (`n <= DOT_MAX_N`; bf16 rows padded to even `k`).
    Rows,
}

/// 64 bytes at a cache-line boundary: the unit the packed weights and the rounded inputs
/// are stored in (as f32 or bf16 bits, see [`Elem`]).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Line([f32; 16]);

const ZERO_LINE: Line = Line([0.0; 16]);

/// The element types the microkernels read: f32, and bf16 bits as `u16`.
///
/// # Safety
/// Every bit pattern is a valid value, and the size divides 64 (a [`Line`] holds a whole
/// number of them, each aligned).
pub(crate) unsafe trait Elem: Copy + Send + Sync + 'static {
    /// Consecutive inputs in one 32-bit lane of a panel: 1 for f32, 2 for bf16 pairs.
    const PACK: usize;
    const ZERO: Self;
}

// SAFETY: any 32 bits are an f32; 4 divides 64.
unsafe impl Elem for f32 {
    const PACK: usize = 1;
    const ZERO: f32 = 0.0;
}

// SAFETY: any 16 bits are a u16; 2 divides 64.
unsafe impl Elem for u16 {
    const PACK: usize = 2;
    const ZERO: u16 = 0;
}

fn lines_as<X: Elem>(v: &[Line]) -> &[X] {
    let len = std::mem::size_of_val(v) / std::mem::size_of::<X>();
    // SAFETY: `Line` is `repr(C)` around `[f32; 16]`, 64 bytes without padding, so its bytes
    // are initialized; `X` takes any bit pattern and its size divides 64 (`Elem`), so the
    // lines are `len` aligned values of `X`, at the same address and with the same lifetime.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<X>(), len) }
}

fn lines_as_mut<X: Elem>(v: &mut [Line]) -> &mut [X] {
    let len = std::mem::size_of_val(v) / std::mem::size_of::<X>();
    // SAFETY: as in `lines_as`; every value written is a valid `f32` bit pattern, and the
    // exclusive borrow of `v` moves to the result.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<X>(), len) }
}

/// An `nn.Linear` weight `[n, k]`, packed once for one [`Kernel`] (see the module doc for the
/// layouts). About `n * k * 4` bytes in f32, `n * k * 2` in bf16, plus the padding of the
/// last panel to `NR` columns.
#[derive(Clone, Debug)]
pub struct PackedWeights {
    kernel: Kernel,
    layout: Layout,
    n: usize,
    k: usize,
    data: Vec<Line>,
}

impl PackedWeights {
    /// Packs `w: [n, k]` row-major in f32 for this CPU's kernel for `n` outputs
    /// ([`Kernel::for_layer`]).
    ///
    /// # Panics
    /// If `w.len() != n * k`.
    pub fn new(w: &[f32], n: usize, k: usize) -> Self {
        Self::with_kernel(Kernel::for_layer(n), w, n, k)
    }

    /// Packs `w: [n, k]` row-major in bf16, each value rounded to nearest even
    /// ([`bf16::f32_to_bf16`], as `torch.Tensor.bfloat16()`), for this CPU's bf16 kernel
    /// ([`Kernel::for_layer_bf16`]).
    ///
    /// # Panics
    /// If `w.len() != n * k`.
    pub fn new_bf16(w: &[f32], n: usize, k: usize) -> Self {
        Self::with_kernel(Kernel::for_layer_bf16(n), w, n, k)
    }

    /// Packs `w: [n, k]` row-major given as bf16 bits (a safetensors `BF16` tensor, read as
    /// little-endian `u16`) for this CPU's bf16 kernel ([`Kernel::for_layer_bf16`]).
    ///
    /// # Panics
    /// If `w.len() != n * k`.
    pub fn from_bf16_bits(w: &[u16], n: usize, k: usize) -> Self {
        Self::with_kernel_bf16_bits(Kernel::for_layer_bf16(n), w, n, k)
    }

    /// Packs `w: [n, k]` row-major for `kernel`, in its dtype (rounded to bf16 for the bf16
    /// kernels).
    ///
    /// # Panics
    /// If `w.len() != n * k`, or if this CPU cannot run `kernel`.
    pub fn with_kernel(kernel: Kernel, w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight must be [n, k] = [{n}, {k}]");
        match kernel.dtype() {
            Dtype::F32 => Self::pack(kernel, n, k, |layout, dst: &mut [f32]| match layout {
                Layout::Rows => dst[..n * k].copy_from_slice(w),
                Layout::Panels => pack::panels(w, n, k, kernel.nr(), dst),
            }),
            Dtype::Bf16 => Self::with_kernel_bf16_bits(kernel, &bf16::to_bits(w), n, k),
        }
    }

    /// Packs `w: [n, k]` row-major given as bf16 bits for `kernel` (widened, exactly, for an
    /// f32 kernel).
    ///
    /// # Panics
    /// If `w.len() != n * k`, or if this CPU cannot run `kernel`.
    pub fn with_kernel_bf16_bits(kernel: Kernel, w: &[u16], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight must be [n, k] = [{n}, {k}]");
        match kernel.dtype() {
            Dtype::F32 => {
                let wide: Vec<f32> = w.iter().map(|b| bf16::bf16_to_f32(*b)).collect();
                Self::with_kernel(kernel, &wide, n, k)
            }
            Dtype::Bf16 => Self::pack(kernel, n, k, |layout, dst: &mut [u16]| match layout {
                Layout::Rows => bf16::rows(w, n, k, dst),
                Layout::Panels => bf16::panels(w, n, k, kernel.nr(), dst),
            }),
        }
    }

    /// Lays out the storage for `kernel` (elements of type `X`, its dtype) and has `fill`
    /// write it.
    fn pack<X: Elem>(
        kernel: Kernel,
        n: usize,
        k: usize,
        fill: impl FnOnce(Layout, &mut [X]),
    ) -> Self {
        assert!(
            kernel.runs_here(),
            "this CPU cannot run the {} kernel",
            kernel.name()
        );
        let layout = if n <= DOT_MAX_N {
            Layout::Rows
        } else {
            Layout::Panels
        };
        let kp = k.next_multiple_of(X::PACK);
        let elems = match layout {
            Layout::Rows => n * kp,
            Layout::Panels => n.div_ceil(kernel.nr()) * kernel.nr() * kp,
        };
        let per_line = 64 / std::mem::size_of::<X>();
        let mut data = vec![ZERO_LINE; elems.div_ceil(per_line)];
        fill(layout, lines_as_mut(&mut data));
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

    /// The number type of the packed weight (the kernel's).
    pub fn dtype(&self) -> Dtype {
        self.kernel.dtype()
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

    /// The weight back as `[n, k]` row-major (bf16 widened to f32: exact).
    pub fn unpack(&self) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        match self.dtype() {
            Dtype::F32 => {
                let src = lines_as::<f32>(&self.data);
                match self.layout {
                    Layout::Rows => src[..n * k].to_vec(),
                    Layout::Panels => pack::unpanel(src, n, k, self.kernel.nr()),
                }
            }
            Dtype::Bf16 => {
                let src = lines_as::<u16>(&self.data);
                let bits = match self.layout {
                    Layout::Rows => bf16::unrows(src, n, k),
                    Layout::Panels => bf16::unpanel(src, n, k, self.kernel.nr()),
                };
                bits.into_iter().map(bf16::bf16_to_f32).collect()
            }
        }
    }
}

/// A layer over packed weights; see the module doc for the contract (for bf16 weights, on
/// `x` rounded to bf16). `shape.k` and `shape.n` must be the weight's; `threads > 1` lets
/// the layer split on the current rayon pool.
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
    let LinearShape { m, k, n, ldy, .. } = shape;
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
    let (layout, data) = (w.layout, w.data.as_slice());
    match w.kernel.family() {
        // SAFETY: `check` proved that x, y and bias fit the shape and that the packed weight
        // is `w`'s (k, n); `PackedWeights::pack` laid it out in `layout` for `w.kernel`, of
        // this family and element type, which this CPU runs.
        Family::F32(micro) => unsafe {
            run(
                micro,
                x,
                lines_as(data),
                layout,
                bias,
                y,
                shape,
                act,
                threads,
            )
        },
        // SAFETY: as above.
        Family::Widen(micro) => unsafe {
            run(
                micro,
                x,
                lines_as(data),
                layout,
                bias,
                y,
                shape,
                act,
                threads,
            )
        },
        // SAFETY: as above.
        Family::Dp(micro) => unsafe {
            run(
                micro,
                x,
                lines_as(data),
                layout,
                bias,
                y,
                shape,
                act,
                threads,
            )
        },
    }
}

/// [`linear_packed`] past its checks, for one kernel family.
///
/// # Safety
/// `x`, `y`, `bias` fit `shape` (`m, n, k > 0`); `w` is a weight of `(k, n)` packed in
/// `layout` for a kernel of `micro`, which this CPU runs.
#[allow(clippy::too_many_arguments)]
unsafe fn run<X: Elem, W: Elem>(
    micro: &'static Micro<X, W>,
    x: &[f32],
    w: &[W],
    layout: Layout,
    bias: &[f32],
    y: &mut [f32],
    shape: LinearShape,
    act: Activation,
    threads: usize,
) {
    let LinearShape { m, k, n, ldx, ldy } = shape;
    let job = Job {
        micro,
        x: x.as_ptr(),
        ldx,
        w: w.as_ptr(),
        layout,
        k,
        n,
        bias: bias.as_ptr(),
        y: y.as_mut_ptr(),
        ldy,
        act,
    };
    let panels = match layout {
        Layout::Rows => 1,
        Layout::Panels => n.div_ceil(micro.nr),
    };
    let parts = if threads > 1 && 2 * m * n * k >= PAR_MIN_FLOPS {
        threads
    } else {
        1
    };
    if parts == 1 {
        // SAFETY: the caller's contract is `Job::run`'s, for all rows and panels.
        unsafe { job.run(0..m, 0..panels) };
    } else {
        let split = split(m, panels, micro.mr, parts, layout);
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

/// One register tile of `M` rows (the microkernel's const parameter) and `NR` columns, over
/// inputs `X` and weights `W` (f32, or bf16 bits in `u16`).
///
/// ```text
/// acc[i][c] = sum_{kk < kc} a[i * lda + kk] * b(kk, c)                 i < M, c < NR
/// base      = if first { bias[c] } else { c_tile[i * ldc + c] }
/// c_tile[i * ldc + c] = relu?(base + acc[i][c])
/// ```
///
/// with `b(kk, c) = b[kk * NR + c]` for f32 weights and `b[(kk / 2) * 2 NR + 2 c + kk % 2]`
/// for bf16 pairs. A bf16 kernel reads `kc` rounded up to even: after an odd `kc` (the end
/// of the panel), the weight and `a[i * lda + kc]` are zero.
pub(crate) struct Tile<X = f32, W = f32> {
    pub a: *const X,
    pub lda: usize,
    pub b: *const W,
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
pub(crate) type TileFn<X = f32, W = f32> = unsafe fn(&Tile<X, W>);

/// Dot products for the [`Layout::Rows`] layout, `n <= DOT_MAX_N`:
/// `y[i * ldy + j] = bias[j] + sum_{kk < k} x[i * ldx + kk] * w[j * ldw + kk]` for `i < m`,
/// `j < n`. For bf16 weights the kernel rounds `x` to bf16 itself; `w`'s rows then hold `k`
/// rounded up to even (`ldw`), with a zero after an odd `k`.
pub(crate) struct Dot<W = f32> {
    pub x: *const f32,
    pub ldx: usize,
    pub w: *const W,
    pub ldw: usize,
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
pub(crate) type DotFn<W = f32> = unsafe fn(&Dot<W>);

/// A block of inputs to round to bf16: `rows` rows of `kc` floats at `src` (row stride
/// `lds`) into `dst` (row stride `ldd`), as bits (`u16`) or widened back to f32:
///
/// ```text
/// dst[r * ldd + kk] = bf16(src[r * lds + kk])      r < rows, kk < kc
/// dst[r * ldd + kc] = 0                            when kc is odd (the pair's pad)
/// ```
pub(crate) struct RoundBlock<X> {
    pub src: *const f32,
    pub lds: usize,
    pub rows: usize,
    pub kc: usize,
    pub dst: *mut X,
    pub ldd: usize,
}

/// # Safety
/// The CPU runs the kernel's instruction set; the [`RoundBlock`] contract's addresses are
/// inside live allocations, and `dst`'s alias none of `src`'s.
pub(crate) type RoundFn<X> = unsafe fn(&RoundBlock<X>);

/// The [`RoundBlock`] contract with `row` rounding each row (`dst` as long as `src`).
///
/// # Safety
/// As [`RoundFn`], with `row` safe to call in the caller's instruction set.
#[inline(always)]
pub(crate) unsafe fn round_rows<X: Elem>(b: &RoundBlock<X>, row: impl Fn(&[f32], &mut [X])) {
    for r in 0..b.rows {
        // SAFETY: row r < rows: kc floats of src, kc + kc % 2 values of dst (the contract).
        let (src, dst) = unsafe {
            (
                std::slice::from_raw_parts(b.src.add(r * b.lds), b.kc),
                std::slice::from_raw_parts_mut(b.dst.add(r * b.ldd), bf16::kpad(b.kc)),
            )
        };
        if b.kc % 2 == 1 {
            dst[b.kc] = X::ZERO;
        }
        row(src, &mut dst[..b.kc]);
    }
}

/// The table of a kernel's tiles for 1 ..= MR rows: `tiles!(f; 1 2 3)`.
macro_rules! tiles {
    ($f:ident; $($m:literal)*) => {
        &[$($f::<$m> as TileFn<_, _>),*]
    };
}
pub(crate) use tiles;

/// A kernel family: tile shape, blocking, and its functions.
pub(crate) struct Micro<X: 'static = f32, W: 'static = f32> {
    pub mr: usize,
    pub nr: usize,
    /// the longest k-block (a multiple of 8)
    pub kc: usize,
    /// rows per block of the cache blocking (rounded up to a multiple of `mr`)
    pub mc: usize,
    /// `tiles[M - 1]`: the microkernel for `M` rows
    pub tiles: &'static [TileFn<X, W>],
    /// one row over a whole panel, with independent partial sums along k
    pub gemv: TileFn<X, W>,
    /// the layer's dot products (for [`Layout::Rows`]), which round `x` themselves
    pub dot: DotFn<W>,
    /// how the kernel wants `x`: as it is (`None`: only with `X = f32`), or rounded to bf16
    /// into a buffer, a block of rows at a time
    pub round: Option<RoundFn<X>>,
}

/// Everything a part of a call needs, as raw pointers (the parts write disjoint blocks of
/// `y`, which slices cannot express for column blocks).
struct Job<X: 'static, W: 'static> {
    micro: &'static Micro<X, W>,
    x: *const f32,
    ldx: usize,
    w: *const W,
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
unsafe impl<X, W> Sync for Job<X, W> {}

/// L1 data cache sets (32 KiB, 8 ways, 64-byte lines on Zen 4 and recent Intel cores).
const L1_SETS: usize = 64;

/// Rows of `x` a tile may read from one L1 set: rows `ldx` floats apart start in the same set
/// when `ldx * 4` is a multiple of 4 KiB, and their streams then evict each other (Zen 4,
/// 12-row tiles at k = 1024: 76-80 GFLOP/s; 6-row tiles: 108-112).
const MAX_ROWS_PER_SET: usize = 6;

/// The tallest tile, at most `mr` rows, whose rows `row_bytes` apart start in no L1 set
/// more than [`MAX_ROWS_PER_SET`] times.
fn tile_rows(row_bytes: usize, mr: usize) -> usize {
    let crowded = |h: usize| {
        let mut count = [0usize; L1_SETS];
        (0..h).any(|i| {
            let set = &mut count[i * row_bytes / 64 % L1_SETS];
            *set += 1;
            *set > MAX_ROWS_PER_SET
        })
    };
    (1..=mr).rev().find(|&h| !crowded(h)).unwrap_or(1)
}

/// The row stride, in elements of `X`, of `kc` inputs rounded to bf16: `kc` rounded up to
/// even, then to whole cache lines, plus a line when that is a multiple of 4 KiB (so that
/// the rows of a tile do not crowd one L1 set, see [`tile_rows`]).
fn rounded_stride<X: Elem>(kc: usize) -> usize {
    let per_line = 64 / std::mem::size_of::<X>();
    let ld = bf16::kpad(kc).next_multiple_of(per_line);
    if (ld * std::mem::size_of::<X>()).is_multiple_of(4096) {
        ld + per_line
    } else {
        ld
    }
}

thread_local! {
    /// The inputs rounded to bf16 of the block of rows this thread works on (see
    /// [`Job::x_block`]): it grows to the largest block and is kept.
    static ROUNDED: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on at least `lines` lines of this thread's rounding buffer (a fresh one if it is
/// in use: never, as no kernel calls back into `linear_packed`).
fn with_rounded<R>(lines: usize, f: impl FnOnce(&mut [Line]) -> R) -> R {
    ROUNDED.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < lines {
                buf.resize(lines, ZERO_LINE);
            }
            f(&mut buf[..lines])
        }
        Err(_) => f(&mut vec![ZERO_LINE; lines]),
    })
}

impl<X: Elem, W: Elem> Job<X, W> {
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
        if self.layout == Layout::Rows {
            // SAFETY: forwarded.
            return unsafe { self.run_rows(rows) };
        }
        let mc = self.micro.mc.next_multiple_of(self.micro.mr);
        let lines = match self.micro.round {
            None => 0,
            Some(_) => {
                let elems = mc.min(rows.len()) * rounded_stride::<X>(self.kc_step());
                (elems * std::mem::size_of::<X>()).div_ceil(64)
            }
        };
        // SAFETY: forwarded, with a buffer for a block of rows.
        with_rounded(lines, |buf| unsafe { self.run_panels(rows, panels, buf) })
    }

    /// The inputs per k-block: `k` in as few blocks of at most `micro.kc` as can be, each a
    /// multiple of 8 (so a bf16 block ends on a pair) but the last.
    fn kc_step(&self) -> usize {
        let k = self.k;
        k.div_ceil(k.div_ceil(self.micro.kc))
            .next_multiple_of(8)
            .min(k)
    }

    /// Rows `i0 .. i0 + mc` and inputs `k0 .. k0 + kc` of `x` as the kernels read them: `x`
    /// itself, or rounded into `buf` (rows of `kc` rounded up to even, a zero after an odd
    /// `kc`). Returns the first element of row `i0` and the row stride.
    ///
    /// # Safety
    /// `i0 + mc <= m`, `k0 + kc <= k`; with rounding, `buf` holds `mc` rows of
    /// [`rounded_stride`]`(kc)` elements of `X`, and the CPU runs `micro`.
    unsafe fn x_block(
        &self,
        i0: usize,
        mc: usize,
        k0: usize,
        kc: usize,
        buf: &mut [Line],
    ) -> (*const X, usize) {
        match self.micro.round {
            // the `Micro` contract: X = f32
            None => (
                // SAFETY: row i0 < m, column k0 < k of x.
                unsafe { self.x.add(i0 * self.ldx + k0).cast::<X>() },
                self.ldx,
            ),
            Some(round) => {
                let ld = rounded_stride::<X>(kc);
                let dst = lines_as_mut::<X>(buf);
                assert!(dst.len() >= mc * ld);
                let blk = RoundBlock {
                    // SAFETY: row i0 < m, column k0 < k of x.
                    src: unsafe { self.x.add(i0 * self.ldx + k0) },
                    lds: self.ldx,
                    rows: mc,
                    kc,
                    dst: dst.as_mut_ptr(),
                    ldd: ld,
                };
                // SAFETY: rows i0 .. i0 + mc <= m of x, columns k0 .. k0 + kc <= k; mc rows
                // of ld >= kpad(kc) in dst, which is this thread's buffer; the CPU runs the
                // kernel's instruction set.
                unsafe { round(&blk) };
                (dst.as_ptr(), ld)
            }
        }
    }

    /// [`Job::run`] for [`Layout::Rows`]: dot products.
    ///
    /// # Safety
    /// As [`Job::run`].
    unsafe fn run_rows(&self, rows: Range<usize>) {
        let d = Dot {
            // SAFETY: rows.start < m: a row of x and of y.
            x: unsafe { self.x.add(rows.start * self.ldx) },
            ldx: self.ldx,
            w: self.w,
            ldw: self.k.next_multiple_of(W::PACK),
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
                let row =
                    unsafe { std::slice::from_raw_parts_mut(self.y.add(i * self.ldy), self.n) };
                self.act.apply(row);
            }
        }
    }

    /// [`Job::run`] for [`Layout::Panels`]: for each k-block, each block of `micro.mc` rows
    /// (its inputs rounded once when the kernel wants that), each panel, the tiles of the
    /// block's rows.
    ///
    /// # Safety
    /// As [`Job::run`], with `buf` of the length `run` gives it.
    unsafe fn run_panels(&self, rows: Range<usize>, panels: Range<usize>, buf: &mut [Line]) {
        let Micro { mr, nr, .. } = *self.micro;
        let k = self.k;
        let kc_step = self.kc_step();
        let mc_max = self.micro.mc.next_multiple_of(mr);
        for k0 in (0..k).step_by(kc_step) {
            let kc = kc_step.min(k - k0);
            let (first, last) = (k0 == 0, k0 + kc == k);
            for i0 in rows.clone().step_by(mc_max) {
                let mc = mc_max.min(rows.end - i0);
                // SAFETY: rows i0 .. i0 + mc <= m, inputs k0 .. k0 + kc <= k; buf holds mc
                // rows of rounded_stride(kc_step) >= rounded_stride(kc).
                let (a, lda) = unsafe { self.x_block(i0, mc, k0, kc, buf) };
                let tr = tile_rows(lda * std::mem::size_of::<X>(), mr.min(rows.len()));
                for p in panels.clone() {
                    let blk = Block {
                        mr: tr,
                        i0,
                        mc,
                        j0: p * nr,
                        k0,
                        kc,
                        first,
                        last,
                    };
                    // SAFETY: forwarded; panel p < n.div_ceil(nr) of the packed weight; a
                    // and lda address the block's rows of x.
                    unsafe { self.block(&blk, a, lda) };
                }
            }
        }
    }

    /// The tiles of one block: rows `i0 .. i0 + mc` in tiles of at most `mr` rows, inputs
    /// `k0 .. k0 + kc`, the panel at column `j0`; `a` is row `i0`, input `k0` of `x` as the
    /// kernel reads it, `lda` its row stride.
    ///
    /// # Safety
    /// As [`Job::run`], for the block's rows and panel; `a + r * lda` holds `kc` inputs (as
    /// the [`Tile`] contract says) for `r < mc`.
    unsafe fn block(&self, blk: &Block, a: *const X, lda: usize) {
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
        // SAFETY: panel j0 / nr of the packed weight (nr * kpad elements each, kpad = k
        // rounded up to W::PACK), k0 < k: inside it.
        let b = unsafe { self.w.add(j0 * self.k.next_multiple_of(W::PACK) + k0 * nr) };
        // tiles of even heights: 16 rows as 8 + 8 rather than 12 + 4
        let tiles = mc.div_ceil(mr);
        let (short, extra) = (mc / tiles, mc % tiles);
        let mut ir = 0;
        for t in 0..tiles {
            let rr = short + usize::from(t < extra);
            let i = i0 + ir;
            // SAFETY: row ir < mc of the block's inputs.
            let a = unsafe { a.add(ir * lda) };
            let f = if rr == 1 && kc == self.k {
                self.micro.gemv
            } else {
                self.micro.tiles[rr - 1]
            };
            if cols == nr {
                let t = Tile {
                    a,
                    lda,
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
                    lda,
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
#[cfg(test)]
mod tests_bf16;
