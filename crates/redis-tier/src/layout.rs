//! The key layout in Redis (layout version [`LAYOUT`]), the value encoding and the version
//! record. docs/redis.md describes the same for users.
//!
//! ```text
//! dlrs:1:{NS:DIGEST:T:P}     hash: row partition P of table T of the tables DIGEST
//!                            field = row id (u32, 4 bytes little-endian)
//!                            value = the row's bytes (its format, padded to the stride)
//!                                    + 8-byte tag (xxh3-64 of the bytes, seeded by DIGEST, T, id)
//! dlrs:1:{NS}:model:DIGEST   string: the version record (JSON), written after every row
//! dlrs:1:{NS}:current        string: the DIGEST of the last complete push
//! dlrs:1:{NS}:push:DIGEST    hash: a push in progress, table -> rows written (resume)
//! ```
//!
//! Row `id` of a table lives in partition `id % partitions`. Every partition is one hash
//! under its own hash tag, so a partition lives on one node and its rows are fetched with
//! one `HMGET`; the partitions of a table spread over the cluster's slots. The records of a
//! namespace share the tag `{NS}` (one slot). Rows of different pushes live under different
//! digests, so a push never overwrites rows a server is reading, and a half-pushed model has
//! no version record: it is never visible.

use std::collections::BTreeMap;
use std::path::Path;

use dlrs_model::format::{Manifest, hex, read_file_manifest};
use dlrs_model::tables::EmbeddingTable;
use dlrs_model::{DlrmConfig, RowFormat, WEIGHTS_FILE};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::error::TierError;

/// The layout version, part of every key; a reader refuses records of another.
pub const LAYOUT: u32 = 1;
/// Bytes of the tag after each row's bytes.
pub const TAG_BYTES: usize = 8;

/// The keys of one namespace.
#[derive(Clone, Debug)]
pub struct Keys {
    ns: String,
}

impl Keys {
    /// Keys of namespace `ns` (letters, digits, `-`, `_`, `.`: it sits inside a hash tag).
    pub fn new(ns: &str) -> Result<Self, TierError> {
        if ns.is_empty()
            || ns.len() > 64
            || !ns
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(TierError::Namespace(ns.to_string()));
        }
        Ok(Keys { ns: ns.to_string() })
    }
    pub fn namespace(&self) -> &str {
        &self.ns
    }
    /// The hash of partition `p` of table `t` of the tables `digest`.
    pub fn partition(&self, digest: &str, t: usize, p: usize) -> String {
        format!("dlrs:{LAYOUT}:{{{}:{digest}:{t}:{p}}}", self.ns)
    }
    /// The version record of the tables `digest`.
    pub fn model(&self, digest: &str) -> String {
        format!("dlrs:{LAYOUT}:{{{}}}:model:{digest}", self.ns)
    }
    /// The digest of the last complete push.
    pub fn current(&self) -> String {
        format!("dlrs:{LAYOUT}:{{{}}}:current", self.ns)
    }
    /// The progress of a push of `digest`: table -> rows written.
    pub fn progress(&self, digest: &str) -> String {
        format!("dlrs:{LAYOUT}:{{{}}}:push:{digest}", self.ns)
    }
}

/// The field of row `id`.
#[inline]
pub fn field(id: u32) -> [u8; 4] {
    id.to_le_bytes()
}

/// The partition of row `id`.
#[inline]
pub fn partition_of(id: u32, partitions: usize) -> usize {
    id as usize % partitions
}

/// The tag of row `id` of table `t` whose bytes are `row`.
#[inline]
pub fn tag(digest: u64, t: usize, id: u32, row: &[u8]) -> u64 {
    xxh3_64_with_seed(row, digest ^ ((t as u64) << 32 | id as u64))
}

/// `row` followed by its tag, into `out`.
pub fn encode(digest: u64, t: usize, id: u32, row: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(row);
    out.extend_from_slice(&tag(digest, t, id, row).to_le_bytes());
}

/// The row bytes of a value, if it is `stride` bytes plus the right tag for row `id` of
/// table `t` of the tables `digest`.
pub fn decode(digest: u64, t: usize, id: u32, stride: usize, value: &[u8]) -> Option<&[u8]> {
    if value.len() != stride + TAG_BYTES {
        return None;
    }
    let (row, tg) = value.split_at(stride);
    let want = u64::from_le_bytes(tg.try_into().expect("8 bytes"));
    (tag(digest, t, id, row) == want).then_some(row)
}

/// One table in a version record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableRecord {
    pub rows: usize,
    pub dim: usize,
    /// row format name (fp32, fp16, int8, int4)
    pub format: String,
    /// bytes of a row as stored (padded), without the tag
    pub stride: usize,
}

/// What `dlrs push` writes last: the pushed tables, so a server checks it has the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionRecord {
    pub layout: u32,
    /// the tables digest (16 hex digits), see [`tables_digest`]
    pub digest: String,
    pub partitions: usize,
    pub tables: Vec<TableRecord>,
    /// seconds since the Unix epoch when the push completed
    pub pushed_at: u64,
    /// the model directory pushed (informational)
    pub source: String,
}

impl VersionRecord {
    /// The record of `config`'s tables.
    pub fn new(
        config: &DlrmConfig,
        digest: &str,
        partitions: usize,
        pushed_at: u64,
        source: String,
    ) -> Self {
        VersionRecord {
            layout: LAYOUT,
            digest: digest.to_string(),
            partitions,
            tables: table_records(config),
            pushed_at,
            source,
        }
    }
}

/// The shape and format of each of `config`'s tables, as a record lists them.
pub fn table_records(config: &DlrmConfig) -> Vec<TableRecord> {
    config
        .tables
        .iter()
        .zip(&config.table_formats)
        .map(|(&rows, &f)| TableRecord {
            rows,
            dim: config.dim,
            format: f.name().to_string(),
            stride: EmbeddingTable::stride_for(f, config.dim),
        })
        .collect()
}

/// The identity of a model's tables: xxh3-64 (16 hex digits) over each table's format,
/// shape and shard checksums from the checksum manifest of `DIR/model.safetensors`, read
/// from the file's header alone (so a server computes it in no time whatever the tables'
/// size). Models without a manifest have none: `dlrs manifest` adds one.
pub fn tables_digest(dir: &Path, config: &DlrmConfig) -> Result<String, TierError> {
    let path = dir.join(WEIGHTS_FILE);
    let manifest = read_file_manifest(&path)?.ok_or_else(|| TierError::NoManifest {
        dir: dir.to_path_buf(),
    })?;
    Ok(digest_of(&manifest, config))
}

fn digest_of(m: &Manifest, config: &DlrmConfig) -> String {
    let mut text = String::new();
    let entries: BTreeMap<usize, _> = (0..config.n_tables())
        .filter_map(|t| m.tensors.get(&format!("emb_l.{t}.weight")).map(|e| (t, e)))
        .collect();
    for (t, e) in entries {
        let f: RowFormat = config.table_formats[t];
        text.push_str(&format!(
            "table {t} {} {:?} {} {}\n",
            f.code(),
            e.shape,
            e.shard_bytes,
            e.shards.join(",")
        ));
    }
    hex(xxh3_64(text.as_bytes()))
}

/// The digest as the tag seed.
pub fn digest_seed(digest: &str) -> u64 {
    u64::from_str_radix(digest, 16).unwrap_or_else(|_| xxh3_64(digest.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_decodes_only_for_its_own_row() {
        let row = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let mut v = Vec::new();
        encode(7, 2, 99, &row, &mut v);
        assert_eq!(v.len(), row.len() + TAG_BYTES);
        assert_eq!(decode(7, 2, 99, 8, &v), Some(&row[..]));
        assert_eq!(decode(7, 2, 98, 8, &v), None, "another id");
        assert_eq!(decode(7, 1, 99, 8, &v), None, "another table");
        assert_eq!(decode(8, 2, 99, 8, &v), None, "another push");
        assert_eq!(decode(7, 2, 99, 4, &v), None, "another stride");
        let mut bad = v.clone();
        bad[3] ^= 1;
        assert_eq!(decode(7, 2, 99, 8, &bad), None, "a flipped bit");
    }

    #[test]
    fn keys_put_a_partition_under_one_hash_tag() {
        let k = Keys::new("prod-1").unwrap();
        assert_eq!(k.partition("00ff", 3, 7), "dlrs:1:{prod-1:00ff:3:7}");
        assert_eq!(k.model("00ff"), "dlrs:1:{prod-1}:model:00ff");
        assert_eq!(k.current(), "dlrs:1:{prod-1}:current");
        assert!(Keys::new("a}b").is_err());
        assert!(Keys::new("").is_err());
    }
}
