//! Checked narrowing of embedding ids: a request's 64-bit little-endian ids into a table's
//! `u32` row numbers, with the range check fused into the copy, and the range check alone.
//!
//! A KServe request of RMC1's shape carries ~100k ids (0.8 MB); a per-id loop with an early
//! exit does not vectorize and cost ~1 ns per id on the server's HTTP threads. These loops
//! run to the end and fold the check into one flag, so they vectorize (AVX2 through run-time
//! dispatch; the generic x86-64 target has no 64-bit compare).

use crate::cpu::{Isa, isa};

/// Writes the little-endian 64-bit ids in `src` (8 bytes each) to `dst` as `u32` and
/// returns whether every id was in `0..rows` (a negative id counts as out of range). Ids out
/// of range are written truncated: the caller must refuse the batch when this returns
/// false (find the id with a scalar scan). `rows` is at most `2^32`.
///
/// Panics when `src.len() != 8 * dst.len()`.
pub fn narrow_ids_le(src: &[u8], rows: u64, dst: &mut [u32]) -> bool {
    narrow_ids_le_with(isa(), src, rows, dst)
}

/// [`narrow_ids_le`] on a chosen instruction set.
pub fn narrow_ids_le_with(isa: Isa, src: &[u8], rows: u64, dst: &mut [u32]) -> bool {
    assert_eq!(src.len(), 8 * dst.len(), "8 bytes of source per id");
    debug_assert!(rows <= 1 << 32);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Isa::Avx2 is only reported (cpu::isa) when the CPU has AVX2.
        Isa::Avx2 => unsafe { x86::narrow_ids_le_avx2(src, rows, dst) },
        _ => narrow_ids_le_ref(src, rows, dst),
    }
}

/// The reference for [`narrow_ids_le`].
pub fn narrow_ids_le_ref(src: &[u8], rows: u64, dst: &mut [u32]) -> bool {
    assert_eq!(src.len(), 8 * dst.len(), "8 bytes of source per id");
    let mut ok = true;
    for (d, c) in dst.iter_mut().zip(src.chunks_exact(8)) {
        let id = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        ok &= id < rows;
        *d = id as u32;
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
        // SAFETY: Isa::Avx2 is only reported (cpu::isa) when the CPU has AVX2.
        Isa::Avx2 => unsafe { x86::ids_below_avx2(ids, rows) },
        _ => ids_below_ref(ids, rows),
    }
}

/// The reference for [`ids_below`].
pub fn ids_below_ref(ids: &[u32], rows: usize) -> bool {
    ids.iter().all(|&id| (id as usize) < rows)
}

/// The loops the AVX2 versions compile; plain Rust that vectorizes under `avx2`.
#[inline(always)]
fn narrow_body(src: &[u8], rows: u64, dst: &mut [u32]) -> bool {
    let mut bad = 0u32;
    for (d, c) in dst.iter_mut().zip(src.chunks_exact(8)) {
        let id = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        bad |= u32::from(id >= rows);
        *d = id as u32;
    }
    bad == 0
}

#[inline(always)]
fn max_body(ids: &[u32]) -> u32 {
    ids.iter().fold(0, |m, &id| m.max(id))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    #[target_feature(enable = "avx2")]
    pub(super) fn narrow_ids_le_avx2(src: &[u8], rows: u64, dst: &mut [u32]) -> bool {
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

    #[test]
    fn edges_of_the_range() {
        for isa in paths() {
            let rows = 1000u64;
            let src = le(&[0, 999]);
            let mut d = [7u32; 2];
            assert!(narrow_ids_le_with(isa, &src, rows, &mut d), "{isa:?}");
            assert_eq!(d, [0, 999]);
            for bad in [1000, -1, i64::MIN, i64::MAX, 1 << 32] {
                // the bad id alone, and at every position of a longer run
                for at in [0, 3, 16, 33] {
                    let mut ids = vec![5i64; 34];
                    ids[at] = bad;
                    let mut d = vec![0u32; 34];
                    assert!(
                        !narrow_ids_le_with(isa, &le(&ids), rows, &mut d),
                        "{isa:?} {bad} at {at}"
                    );
                }
            }
            let mut empty: [u32; 0] = [];
            assert!(narrow_ids_le_with(isa, &[], rows, &mut empty));
            // a table of 2^32 rows takes every u32
            let mut d = [0u32; 1];
            assert!(narrow_ids_le_with(
                isa,
                &le(&[u32::MAX as i64]),
                1 << 32,
                &mut d
            ));
            assert_eq!(d, [u32::MAX]);
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
            let mut want = vec![0u32; ids.len()];
            let ok = narrow_ids_le_ref(&src, rows, &mut want);
            prop_assert_eq!(ok, ids.iter().all(|&i| i >= 0 && (i as u64) < rows));
            let narrowed = want.clone();
            for isa in paths() {
                let mut got = vec![1u32; ids.len()];
                prop_assert_eq!(narrow_ids_le_with(isa, &src, rows, &mut got), ok);
                prop_assert_eq!(&got, &want);
                prop_assert_eq!(ids_below_with(isa, &narrowed, rows as usize), ids_below_ref(&narrowed, rows as usize));
            }
        }
    }
}
