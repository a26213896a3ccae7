//! Checked narrowing of embedding ids: a request's 64-bit little-endian ids into a table's
//! `u32` row numbers, with the range check fused into the copy, and the range check alone.
//!
//! A KServe request of RMC1's shape carries ~100k ids (0.8 MB); a per-id loop with an early
//! exit does not vectorize and cost ~1 ns per id on the server's HTTP threads. These loops
//! run to the end and fold the check into one flag, so they vectorize (AVX2 through run-time
//! dispatch; the generic x86-64 target has no 64-bit compare). The narrowing writes into
//! uninitialized memory ([`narrow_ids_le_uninit`]), so a caller can fill a `Vec`'s spare
//! capacity without zeroing it first.

use std::mem::MaybeUninit;

use crate::cpu::{Isa, isa};

/// Writes the little-endian 64-bit ids in `src` (8 bytes each) to `dst` as `u32` and
/// returns whether every id was in `0..rows` (a negative id counts as out of range). Ids out
/// of range are written truncated: the caller must refuse the batch when this returns
/// false (find the id with a scalar scan). `rows` is at most `2^32`.
///
/// ```text
/// ok = true
/// for i in 0..dst.len():
///     id = i64::from_le_bytes(src[8i..8i + 8])
///     ok &= 0 <= id < rows          // each id read once, for both the check and the copy
///     dst[i] = id as u32            // written whether in range or not
/// return ok
/// ```
///
/// Panics when `src.len() != 8 * dst.len()`.
pub fn narrow_ids_le(src: &[u8], rows: u64, dst: &mut [u32]) -> bool {
    // SAFETY: `MaybeUninit<u32>` has the layout of `u32`, and the narrowing only writes
    // initialized `u32`s, so `dst` stays initialized.
    let dst = unsafe { &mut *(dst as *mut [u32] as *mut [MaybeUninit<u32>]) };
    narrow_ids_le_uninit(src, rows, dst)
}

/// [`narrow_ids_le`] into uninitialized memory: on return (true or false) every element of
/// `dst` is initialized.
pub fn narrow_ids_le_uninit(src: &[u8], rows: u64, dst: &mut [MaybeUninit<u32>]) -> bool {
    narrow_ids_le_with(isa(), src, rows, dst)
}

/// [`narrow_ids_le_uninit`] on a chosen instruction set.
pub fn narrow_ids_le_with(isa: Isa, src: &[u8], rows: u64, dst: &mut [MaybeUninit<u32>]) -> bool {
    assert_eq!(src.len(), 8 * dst.len(), "8 bytes of source per id");
    debug_assert!(rows <= 1 << 32);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Isa::Avx2 and Isa::Avx512 are only reported (cpu::isa) when the CPU has AVX2.
        Isa::Avx2 | Isa::Avx512 => unsafe { x86::narrow_ids_le_avx2(src, rows, dst) },
        _ => narrow_ids_le_ref(src, rows, dst),
    }
}

/// The reference for [`narrow_ids_le_uninit`].
pub fn narrow_ids_le_ref(src: &[u8], rows: u64, dst: &mut [MaybeUninit<u32>]) -> bool {
    assert_eq!(src.len(), 8 * dst.len(), "8 bytes of source per id");
    let mut ok = true;
    for (d, c) in dst.iter_mut().zip(src.chunks_exact(8)) {
        let id = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        ok &= id < rows;
        d.write(id as u32);
    }
    ok
}

/// Whether every id in `ids` is below `rows`.
pub fn ids_below(ids: &[u32], rows: usize) -> bool {
    ids_below_with(isa(), ids, rows)
}

/// [`ids_below`] on a chosen instruction set.
pub fn ids_below_with(isa: Isa, ids: &[u32], rows: usize) -> bool {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Isa::Avx2 and Isa::Avx512 are only reported (cpu::isa) when the CPU has AVX2.
        Isa::Avx2 | Isa::Avx512 => unsafe { x86::ids_below_avx2(ids, rows) },
        _ => ids_below_ref(ids, rows),
    }
}

/// The reference for [`ids_below`].
pub fn ids_below_ref(ids: &[u32], rows: usize) -> bool {
    ids.iter().all(|&id| (id as usize) < rows)
}

/// The loops the AVX2 versions compile; plain Rust that vectorizes under `avx2`.
#[inline(always)]
fn narrow_body(src: &[u8], rows: u64, dst: &mut [MaybeUninit<u32>]) -> bool {
    let mut bad = 0u32;
    for (d, c) in dst.iter_mut().zip(src.chunks_exact(8)) {
        let id = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        bad |= u32::from(id >= rows);
        d.write(id as u32);
    }
    bad == 0
}

#[inline(always)]
fn max_body(ids: &[u32]) -> u32 {
    ids.iter().fold(0, |m, &id| m.max(id))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::mem::MaybeUninit;

    #[target_feature(enable = "avx2")]
    pub(super) fn narrow_ids_le_avx2(src: &[u8], rows: u64, dst: &mut [MaybeUninit<u32>]) -> bool {
        super::narrow_body(src, rows, dst)
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn ids_below_avx2(ids: &[u32], rows: usize) -> bool {
        ids.is_empty() || (super::max_body(ids) as usize) < rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::paths;
    use proptest::prelude::*;

    fn le(ids: &[i64]) -> Vec<u8> {
        ids.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// Two fills of the output: an element the narrowing leaves unwritten keeps its fill,
    /// which cannot match the expected value under both.
    const FILLS: [u32; 2] = [0xdead_beef, 0x0bad_f00d];

    /// Runs a narrowing of `src` into a buffer filled with `fill` and 3 elements longer
    /// than the ids (the rest are sentinels an overrun changes): the flag and the whole
    /// buffer.
    fn narrowed(
        f: impl Fn(&[u8], u64, &mut [MaybeUninit<u32>]) -> bool,
        src: &[u8],
        rows: u64,
        fill: u32,
    ) -> (bool, Vec<u32>) {
        let n = src.len() / 8;
        let mut buf = vec![MaybeUninit::new(fill); n + 3];
        let ok = f(src, rows, &mut buf[..n]);
        // SAFETY: every element was initialized with `fill`, and the narrowing writes only
        // initialized u32s.
        (ok, buf.iter().map(|v| unsafe { v.assume_init() }).collect())
    }

    #[test]
    fn edges_of_the_range() {
        for isa in paths() {
            let narrow = |src: &[u8], rows| {
                narrowed(|s, r, d| narrow_ids_le_with(isa, s, r, d), src, rows, 7)
            };
            let rows = 1000u64;
            assert_eq!(
                narrow(&le(&[0, 999]), rows),
                (true, vec![0, 999, 7, 7, 7]),
                "{isa:?}"
            );
            for bad in [1000, -1, i64::MIN, i64::MAX, 1 << 32] {
                // the bad id alone, and at every position of a longer run
                for at in [0, 3, 16, 33] {
                    let mut ids = vec![5i64; 34];
                    ids[at] = bad;
                    let (ok, got) = narrow(&le(&ids), rows);
                    assert!(!ok, "{isa:?} {bad} at {at}");
                    // written truncated
                    assert_eq!(got[at], bad as u32, "{isa:?} {bad} at {at}");
                }
            }
            assert_eq!(narrow(&[], rows), (true, vec![7; 3]));
            // a table of 2^32 rows takes every u32
            assert_eq!(
                narrow(&le(&[u32::MAX as i64]), 1 << 32),
                (true, vec![u32::MAX, 7, 7, 7])
            );
            assert!(ids_below_with(isa, &[], 0));
            assert!(ids_below_with(isa, &[0, 4], 5));
            assert!(!ids_below_with(isa, &[0, 5], 5));
            assert!(!ids_below_with(isa, &[u32::MAX], u32::MAX as usize));
        }
    }

    #[test]
    #[should_panic(expected = "8 bytes of source per id")]
    fn a_short_source_panics() {
        narrow_ids_le(&[0u8; 12], 10, &mut [0u32; 2]);
    }

    proptest! {
        #[test]
        fn fast_paths_match_the_reference(
            ids in prop::collection::vec(prop_oneof![0i64..200, any::<i64>()], 0..300),
            rows in 1u64..250,
        ) {
            let src = le(&ids);
            let ok = ids.iter().all(|&i| i >= 0 && (i as u64) < rows);
            for fill in FILLS {
                let want = narrowed(narrow_ids_le_ref, &src, rows, fill);
                let mut expected: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
                expected.extend([fill; 3]);
                prop_assert_eq!(&want, &(ok, expected));
                for isa in paths() {
                    let got = narrowed(|s, r, d| narrow_ids_le_with(isa, s, r, d), &src, rows, fill);
                    prop_assert_eq!(&got, &want, "{:?}", isa);
                }
                prop_assert_eq!(&narrowed(narrow_ids_le_uninit, &src, rows, fill), &want);
                // into initialized memory
                let mut init = vec![fill; ids.len()];
                prop_assert_eq!(narrow_ids_le(&src, rows, &mut init), ok);
                prop_assert_eq!(&init[..], &want.1[..ids.len()]);
            }
            let narrowed_ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
            for isa in paths() {
                prop_assert_eq!(
                    ids_below_with(isa, &narrowed_ids, rows as usize),
                    ids_below_ref(&narrowed_ids, rows as usize)
                );
            }
        }
    }
}
