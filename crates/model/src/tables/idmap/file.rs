//! The id-map file of a collisionless table: `idmap.<t>.bin` in the model directory.
//!
//! All integers little-endian:
//!
//! ```text
//! offset  size       field
//! 0       8          magic "DLRSIDM1"
//! 8       4          format version (1)
//! 12      4          table index t
//! 16      8          capacity (ids the map holds at most)
//! 24      8          E: entries (ids held)
//! 32      8          N: rows in use (counts that follow)
//! 40      8          F: admission filter bytes (0 when admit = 1)
//! 48      4          last TTL sweep (the map's clock)
//! 52      4          reserved (0)
//! 56      16 * E     entries sorted by row: key u64, row u32, stamp u32
//! ..      2 * N      per row: update count u16 (0 = free)
//! ..      F          admission filter: 4-bit counters, two per byte, low nibble first
//! ..      8          XXH3-64 (seed 0) of every byte before it
//! ```
//!
//! The file is written to a temporary name, fsynced and renamed into place. Loading checks
//! the size, the checksum and then the contents' consistency (see
//! [`Collisionless::from_parts`](super::collisionless::Collisionless::from_parts)); any
//! failure is a [`ModelError::Corrupt`] naming the file and the table, and the model is not
//! loaded, so nothing is served from a bad map.

use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

use super::CollisionlessSpec;
use super::collisionless::{CollisionlessMap, MapParts};
use crate::error::{ModelError, Result};

const MAGIC: &[u8; 8] = b"DLRSIDM1";
const VERSION: u32 = 1;
const HEADER: usize = 56;
/// The largest map file read (a map of 2^32 ids is about 80 GiB).
const MAX_BYTES: u64 = 1 << 37;

/// The file name of table `t`'s map in a model directory.
pub fn file_name(t: usize) -> String {
    format!("idmap.{t}.bin")
}

/// The path of table `t`'s map in `dir`.
pub fn path(dir: &Path, t: usize) -> PathBuf {
    dir.join(file_name(t))
}

/// The file's bytes for table `t`'s map.
pub fn encode(t: usize, map: &CollisionlessMap) -> Vec<u8> {
    let p = map.parts();
    let mut b =
        Vec::with_capacity(HEADER + 16 * p.entries.len() + 2 * p.counts.len() + p.filter.len() + 8);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&(t as u32).to_le_bytes());
    for n in [p.capacity, p.entries.len(), p.counts.len(), p.filter.len()] {
        b.extend_from_slice(&(n as u64).to_le_bytes());
    }
    b.extend_from_slice(&p.last_sweep.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    for &(k, r, s) in &p.entries {
        b.extend_from_slice(&k.to_le_bytes());
        b.extend_from_slice(&r.to_le_bytes());
        b.extend_from_slice(&s.to_le_bytes());
    }
    for &c in &p.counts {
        b.extend_from_slice(&c.to_le_bytes());
    }
    b.extend_from_slice(&p.filter);
    let sum = xxh3_64(&b);
    b.extend_from_slice(&sum.to_le_bytes());
    b
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Decodes table `t`'s map (of a table of `rows` rows with settings `spec`) from the
/// file's bytes; the error says what is wrong.
pub fn decode(
    bytes: &[u8],
    t: usize,
    spec: CollisionlessSpec,
    rows: usize,
) -> std::result::Result<CollisionlessMap, String> {
    if bytes.len() < HEADER + 8 {
        return Err(format!(
            "{} bytes: too short for an id map (truncated?)",
            bytes.len()
        ));
    }
    if &bytes[..8] != MAGIC {
        return Err("not an id map file (bad magic)".into());
    }
    let version = u32_at(bytes, 8);
    if version != VERSION {
        return Err(format!(
            "format version {version}; this dlrs reads {VERSION}"
        ));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 8);
    let table = u32_at(bytes, 12) as usize;
    let capacity = u64_at(bytes, 16);
    let (e, n, f) = (u64_at(bytes, 24), u64_at(bytes, 32), u64_at(bytes, 40));
    let want = (e as u128) * 16 + (n as u128) * 2 + f as u128 + HEADER as u128 + 8;
    if want != bytes.len() as u128 {
        return Err(format!(
            "{} bytes, but its header describes {want} (truncated or corrupt)",
            bytes.len()
        ));
    }
    if xxh3_64(body) != u64::from_le_bytes(sum.try_into().expect("8 bytes")) {
        return Err("does not match its checksum (corrupt)".into());
    }
    if table != t {
        return Err(format!("is the map of table {table}, not of table {t}"));
    }
    let last_sweep = u32_at(bytes, 48);
    let mut at = HEADER;
    let mut entries = Vec::with_capacity(e as usize);
    for _ in 0..e {
        entries.push((
            u64_at(bytes, at),
            u32_at(bytes, at + 8),
            u32_at(bytes, at + 12),
        ));
        at += 16;
    }
    let counts = (0..n as usize)
        .map(|i| u16::from_le_bytes([bytes[at + 2 * i], bytes[at + 2 * i + 1]]))
        .collect();
    at += 2 * n as usize;
    let filter = bytes[at..at + f as usize].to_vec();
    let parts = MapParts {
        entries,
        counts,
        capacity: capacity as usize,
        last_sweep,
        filter,
    };
    CollisionlessMap::from_parts(spec, rows, parts)
}

/// Writes table `t`'s map into `dir` atomically.
pub fn save(dir: &Path, t: usize, map: &CollisionlessMap) -> Result<()> {
    crate::weights::atomic_write_bytes(&path(dir, t), &encode(t, map))
}

/// Loads table `t`'s map from `dir`, or an empty map if the file does not exist. A file
/// that exists but is not a valid map is an error naming it and the table.
pub fn load(
    dir: &Path,
    t: usize,
    spec: CollisionlessSpec,
    rows: usize,
) -> Result<CollisionlessMap> {
    let p = path(dir, t);
    let bytes = match crate::files::read_bounded(&p, MAX_BYTES, "an id map file") {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(CollisionlessMap::new(spec, rows));
        }
        Err(e) => return Err(ModelError::io(&p, e)),
    };
    decode(&bytes, t, spec, rows).map_err(|msg| ModelError::Corrupt {
        path: p,
        tensor: format!("id map of table {t}"),
        msg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::idmap::{Evict, Miss, Ttl};

    fn spec(admit: u8) -> CollisionlessSpec {
        CollisionlessSpec {
            admit,
            ttl: Some(Ttl::Steps(10)),
            evict: Evict::Lru,
            miss: Miss::Zero,
        }
    }

    fn map(admit: u8) -> CollisionlessMap {
        let mut m = CollisionlessMap::new(spec(admit), 50);
        let (mut o, mut f) = (Vec::new(), Vec::new());
        for step in 1..20u32 {
            let keys: Vec<u64> = (0..30)
                .map(|i| (i * step as u64) % 70 + (1 << 62))
                .collect();
            m.train_step(&keys, step, &mut o, &mut f);
        }
        m
    }

    #[test]
    fn round_trips_and_every_flipped_or_cut_byte_is_refused() {
        for admit in [1, 3] {
            let m = map(admit);
            let b = encode(2, &m);
            let back = decode(&b, 2, spec(admit), 50).unwrap();
            assert_eq!(back.parts(), m.parts());
            assert!(
                decode(&b, 1, spec(admit), 50)
                    .unwrap_err()
                    .contains("not of table 1")
            );
            assert!(
                decode(&b, 2, spec(admit), 60)
                    .unwrap_err()
                    .contains("capacity")
            );
            for i in (0..b.len()).step_by(7) {
                let mut c = b.clone();
                c[i] ^= 0x10;
                assert!(decode(&c, 2, spec(admit), 50).is_err(), "flip at {i}");
            }
            for cut in [0, 10, HEADER, b.len() / 2, b.len() - 1] {
                let e = decode(&b[..cut], 2, spec(admit), 50).unwrap_err();
                assert!(
                    e.contains("truncated") || e.contains("too short"),
                    "{cut}: {e}"
                );
            }
        }
    }

    #[test]
    fn missing_file_is_an_empty_map_and_a_bad_one_names_the_table() {
        let d = tempfile::tempdir().unwrap();
        let m = load(d.path(), 0, spec(1), 50).unwrap();
        assert!(m.is_empty());
        save(d.path(), 0, &map(1)).unwrap();
        assert_eq!(
            load(d.path(), 0, spec(1), 50).unwrap().parts(),
            map(1).parts()
        );
        let p = path(d.path(), 0);
        let mut b = std::fs::read(&p).unwrap();
        b.truncate(b.len() - 3);
        std::fs::write(&p, &b).unwrap();
        let e = load(d.path(), 0, spec(1), 50).err().unwrap().to_string();
        assert!(
            e.contains("idmap.0.bin") && e.contains("id map of table 0"),
            "{e}"
        );
    }
}
