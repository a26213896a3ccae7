//! The model file: a plain safetensors file (so PyTorch's `safetensors.torch.load_file`
//! reads it) whose header metadata carries dlrs's integrity manifest under the key
//! [`MANIFEST_KEY`]:
//!
//! ```json
//! {"format_version": 1, "checksum": "xxh3-64",
//!  "tensors": {"emb_l.0.weight": {"dtype_code": 2, "shape": [4000000, 64],
//!                                 "shard_bytes": 67108864, "shards": ["9f0c...", ...]}, ...}}
//! ```
//!
//! Every tensor is cut into shards of `shard_bytes` (whole rows for tables, the whole
//! tensor for MLP weights) and each shard carries an xxh3-64 checksum (16 hex digits).
//! `dtype_code` is the table's row format code ([`RowFormat::code`], stable, never reused).
//! Files without the manifest (PyTorch's own) load unverified; `dlrs manifest` adds one.
//!
//! [`write_model_file`] streams tensors to disk in bounded memory: it writes the header
//! with placeholder checksums of the final width, hashes the data as it goes, then rewrites
//! the header in place; all into a temp file that is fsynced and renamed over the target.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use rayon::prelude::*;
use safetensors::tensor::Dtype;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use crate::error::{ModelError, Result};
use crate::weights::atomic_write;

/// The safetensors metadata key of the manifest.
pub const MANIFEST_KEY: &str = "dlrs.manifest";
/// The metadata key of the header digest: xxh3-64 of the canonical form of everything else
/// in the header (tensor names, dtypes, shapes, offsets and the other metadata), so a flipped
/// bit anywhere in the header is caught too. Both keys are present or neither.
pub const HEADER_KEY: &str = "dlrs.header";

/// The canonical text the header digest covers: one line per tensor, sorted by name, then
/// one per metadata entry other than [`HEADER_KEY`], sorted by key.
fn canonical<'a>(
    tensors: impl Iterator<Item = (&'a str, &'a str, &'a [usize], (usize, usize))>,
    meta: impl Iterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut t: Vec<String> = tensors
        .map(|(n, d, s, (a, b))| format!("tensor {n:?} {d} {s:?} {a}..{b}\n"))
        .collect();
    t.sort();
    let mut m: Vec<String> = meta
        .filter(|(k, _)| *k != HEADER_KEY)
        .map(|(k, v)| format!("meta {k:?} {v:?}\n"))
        .collect();
    m.sort();
    t.concat() + &m.concat()
}

/// Checks the dlrs metadata of a parsed header: `Ok(None)` for a plain safetensors file
/// (no dlrs keys), the manifest when both keys are present and the header digest matches.
pub fn read_manifest(
    path: &Path,
    meta: &safetensors::tensor::Metadata,
) -> Result<Option<Manifest>> {
    let bad = |msg: String| ModelError::Format {
        path: path.into(),
        msg,
    };
    let empty = std::collections::HashMap::new();
    let md = meta.metadata().as_ref().unwrap_or(&empty);
    if let Some(k) = md
        .keys()
        .find(|k| k.starts_with("dlrs") && *k != MANIFEST_KEY && *k != HEADER_KEY)
    {
        return Err(bad(format!(
            "unknown dlrs metadata key {k:?} (a newer dlrs, or a damaged header)"
        )));
    }
    let (Some(_), Some(digest)) = (md.get(MANIFEST_KEY), md.get(HEADER_KEY)) else {
        if md.contains_key(MANIFEST_KEY) || md.contains_key(HEADER_KEY) {
            return Err(bad(format!(
                "header has only one of {MANIFEST_KEY:?} and {HEADER_KEY:?} (damaged header)"
            )));
        }
        return Ok(None);
    };
    let infos = meta.tensors();
    let names: Vec<(&String, &&safetensors::tensor::TensorInfo)> = infos.iter().collect();
    let dtypes: Vec<String> = names
        .iter()
        .map(|(_, i)| format!("{:?}", i.dtype))
        .collect();
    let text = canonical(
        names
            .iter()
            .zip(&dtypes)
            .map(|((n, i), d)| (n.as_str(), d.as_str(), i.shape.as_slice(), i.data_offsets)),
        md.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    if hex(xxh3_64(text.as_bytes())) != *digest {
        return Err(bad(
            "header digest mismatch: the header was altered or damaged".into(),
        ));
    }
    Manifest::from_metadata(path, Some(md))
}
/// Reads the manifest of a model file from its header alone (the header digest checked as
/// at load); `Ok(None)` for a file without one. What a remote tier identifies a model's
/// tables by, without reading them.
pub fn read_file_manifest(path: &Path) -> Result<Option<Manifest>> {
    let (file, _) = crate::files::open_regular(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: mapped read-only and only the header is read; dlrs replaces model files by
    // rename, never in place (another program truncating it in place would fault, as with
    // any mmap reader).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&map).map_err(|e| ModelError::Format {
            path: path.into(),
            msg: format!("not a valid safetensors file: {e}"),
        })?;
    read_manifest(path, &meta)
}

/// Version of the manifest layout; readers refuse versions they do not know.
pub const FORMAT_VERSION: u32 = 1;
/// Target shard size of table tensors (rounded down to whole rows). Small, because a mapped
/// table verifies a shard the first time one of its rows is read: one cold sample of RMC1
/// touches 640 random rows, so its first prediction hashes 640 shards (40 MB at 64 KiB).
pub const SHARD_BYTES: usize = 64 << 10;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub checksum: String,
    pub tensors: BTreeMap<String, TensorEntry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorEntry {
    /// row format code of a table tensor; absent for MLP tensors
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype_code: Option<u8>,
    pub shape: Vec<usize>,
    pub shard_bytes: usize,
    /// xxh3-64 of each shard, 16 lowercase hex digits
    pub shards: Vec<String>,
}

/// Shard size for a tensor: whole rows of `row_bytes` up to [`SHARD_BYTES`] for tables,
/// the whole tensor otherwise.
pub fn shard_bytes_for(total: usize, row_bytes: Option<usize>) -> usize {
    match row_bytes {
        Some(r) if r > 0 => (SHARD_BYTES / r).max(1) * r,
        _ => total.max(1),
    }
}

pub fn hex(h: u64) -> String {
    format!("{h:016x}")
}

/// Checksums of each `shard_bytes` piece of `data`, in parallel.
pub fn shard_sums(data: &[u8], shard_bytes: usize) -> Vec<u64> {
    if data.is_empty() {
        return vec![xxh3_64(&[])];
    }
    data.par_chunks(shard_bytes).map(xxh3_64).collect()
}

/// Number of shards of a tensor of `total` bytes.
pub fn shard_count(total: usize, shard_bytes: usize) -> usize {
    total.div_ceil(shard_bytes).max(1)
}

impl Manifest {
    /// Reads and checks the manifest from safetensors metadata; `Ok(None)` when absent.
    pub fn from_metadata(
        path: &Path,
        meta: Option<&std::collections::HashMap<String, String>>,
    ) -> Result<Option<Self>> {
        let Some(text) = meta.and_then(|m| m.get(MANIFEST_KEY)) else {
            return Ok(None);
        };
        let bad = |msg: String| ModelError::Format {
            path: path.into(),
            msg: format!("manifest: {msg}"),
        };
        let m: Manifest = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if m.format_version != FORMAT_VERSION {
            return Err(bad(format!(
                "format version {} (this dlrs reads {FORMAT_VERSION})",
                m.format_version
            )));
        }
        if m.checksum != "xxh3-64" {
            return Err(bad(format!(
                "checksum `{}` (this dlrs knows xxh3-64)",
                m.checksum
            )));
        }
        for (name, e) in &m.tensors {
            if e.shard_bytes == 0
                || e.shards
                    .iter()
                    .any(|s| s.len() != 16 || u64::from_str_radix(s, 16).is_err())
            {
                return Err(bad(format!("tensor `{name}`: malformed shard list")));
            }
        }
        Ok(Some(m))
    }

    /// The checksums of a tensor, checked against its byte size.
    pub fn sums(&self, path: &Path, name: &str, total: usize) -> Result<(usize, Vec<u64>)> {
        let e = self.tensors.get(name).ok_or_else(|| ModelError::Tensor {
            path: path.into(),
            tensor: name.into(),
            msg: "has no entry in the manifest".into(),
        })?;
        if e.shards.len() != shard_count(total, e.shard_bytes) {
            return Err(ModelError::Tensor {
                path: path.into(),
                tensor: name.into(),
                msg: format!(
                    "manifest lists {} shards for {total} bytes of {} per shard",
                    e.shards.len(),
                    e.shard_bytes
                ),
            });
        }
        Ok((
            e.shard_bytes,
            e.shards
                .iter()
                .map(|s| u64::from_str_radix(s, 16).expect("checked at parse"))
                .collect(),
        ))
    }
}

/// One tensor to write.
pub struct TensorOut {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// row format code, for tables
    pub dtype_code: Option<u8>,
    pub shard_bytes: usize,
}

impl TensorOut {
    pub fn bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.bitsize() / 8
    }
}

fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::F32 => "F32",
        Dtype::U8 => "U8",
        Dtype::F16 => "F16",
        Dtype::BF16 => "BF16",
        _ => unreachable!("dlrs writes F32, F16, BF16 and U8 tensors only"),
    }
}

/// The safetensors header (padded with spaces to a multiple of 8 bytes) for `tensors`
/// laid out in order, with the manifest built from `sums`.
fn header(tensors: &[TensorOut], sums: &[Vec<u64>]) -> Vec<u8> {
    let mut entries = BTreeMap::new();
    let mut obj = serde_json::Map::new();
    let mut off = 0usize;
    for (t, s) in tensors.iter().zip(sums) {
        let n = t.bytes();
        obj.insert(
            t.name.clone(),
            serde_json::json!({"dtype": dtype_name(t.dtype), "shape": t.shape, "data_offsets": [off, off + n]}),
        );
        off += n;
        entries.insert(
            t.name.clone(),
            TensorEntry {
                dtype_code: t.dtype_code,
                shape: t.shape.clone(),
                shard_bytes: t.shard_bytes,
                shards: s.iter().map(|h| hex(*h)).collect(),
            },
        );
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        checksum: "xxh3-64".into(),
        tensors: entries,
    };
    let mtext = serde_json::to_string(&manifest).expect("serializable");
    let mut off = 0usize;
    // (name, dtype, shape, data offsets) of each tensor in file order
    type Entry<'a> = (&'a str, &'a str, &'a [usize], (usize, usize));
    let layout: Vec<Entry> = tensors
        .iter()
        .map(|t| {
            let r = (
                t.name.as_str(),
                dtype_name(t.dtype),
                t.shape.as_slice(),
                (off, off + t.bytes()),
            );
            off += t.bytes();
            r
        })
        .collect();
    let digest = hex(xxh3_64(
        canonical(
            layout.into_iter(),
            [(MANIFEST_KEY, mtext.as_str())].into_iter(),
        )
        .as_bytes(),
    ));
    let meta = serde_json::json!({ MANIFEST_KEY: mtext, HEADER_KEY: digest });
    obj.insert("__metadata__".into(), meta);
    let mut h = serde_json::to_vec(&serde_json::Value::Object(obj)).expect("serializable");
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    h
}

/// Hashes what passes through it, shard by shard, for one tensor at a time.
pub struct ShardWriter<'a> {
    out: &'a mut BufWriter<File>,
    hasher: Xxh3,
    in_shard: usize,
    shard_bytes: usize,
    written: usize,
    sums: Vec<u64>,
}

impl Write for ShardWriter<'_> {
    fn write(&mut self, mut buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len();
        while !buf.is_empty() {
            let take = buf.len().min(self.shard_bytes - self.in_shard);
            self.out.write_all(&buf[..take])?;
            self.hasher.update(&buf[..take]);
            self.in_shard += take;
            self.written += take;
            buf = &buf[take..];
            if self.in_shard == self.shard_bytes {
                self.sums.push(self.hasher.digest());
                self.hasher.reset();
                self.in_shard = 0;
            }
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Writes a model file atomically, streaming each tensor's bytes from `fill(i, writer)`,
/// which must write exactly `tensors[i].bytes()` bytes.
pub fn write_model_file(
    path: &Path,
    tensors: &[TensorOut],
    mut fill: impl FnMut(usize, &mut ShardWriter<'_>) -> std::io::Result<()>,
) -> Result<()> {
    atomic_write(path, |tmp| {
        let placeholder: Vec<Vec<u64>> = tensors
            .iter()
            .map(|t| vec![0; shard_count(t.bytes(), t.shard_bytes)])
            .collect();
        let head = header(tensors, &placeholder);
        let mut out = BufWriter::with_capacity(8 << 20, File::create(tmp)?);
        out.write_all(&(head.len() as u64).to_le_bytes())?;
        out.write_all(&head)?;
        let mut sums = Vec::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            let mut w = ShardWriter {
                out: &mut out,
                hasher: Xxh3::new(),
                in_shard: 0,
                shard_bytes: t.shard_bytes,
                written: 0,
                sums: Vec::new(),
            };
            fill(i, &mut w)?;
            if w.written != t.bytes() {
                return Err(std::io::Error::other(format!(
                    "tensor {}: wrote {} bytes, expected {}",
                    t.name,
                    w.written,
                    t.bytes()
                )));
            }
            if w.in_shard > 0 || w.sums.is_empty() {
                w.sums.push(w.hasher.digest());
            }
            sums.push(w.sums);
        }
        out.flush()?;
        let head2 = header(tensors, &sums);
        assert_eq!(head2.len(), head.len(), "checksums have a fixed width");
        let mut f = out.into_inner().map_err(|e| e.into_error())?;
        f.seek(SeekFrom::Start(8))?;
        f.write_all(&head2)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_file_is_plain_safetensors_with_a_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        let a: Vec<u8> = (0..1000u32)
            .flat_map(|v| (v as f32).to_le_bytes())
            .collect();
        let b: Vec<u8> = (0..=255u8).cycle().take(10 * 24).collect();
        let tensors = vec![
            TensorOut {
                name: "a".into(),
                dtype: Dtype::F32,
                shape: vec![10, 100],
                dtype_code: None,
                shard_bytes: 4000,
            },
            TensorOut {
                name: "t".into(),
                dtype: Dtype::U8,
                shape: vec![10, 24],
                dtype_code: Some(2),
                shard_bytes: 72,
            },
        ];
        write_model_file(&p, &tensors, |i, w| {
            // odd-sized writes cross shard boundaries
            let data = if i == 0 { &a } else { &b };
            for c in data.chunks(7) {
                w.write_all(c)?;
            }
            Ok(())
        })
        .unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("a").unwrap().data(), &a[..]);
        assert_eq!(st.tensor("t").unwrap().data(), &b[..]);
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let m = read_manifest(&p, &meta).unwrap().unwrap();
        let (sb, sums) = m.sums(&p, "t", b.len()).unwrap();
        assert_eq!(sb, 72);
        assert_eq!(sums, shard_sums(&b, 72));
        assert_eq!(sums.len(), 4); // 240 bytes in shards of 72: 3 full + 1 partial
        assert_eq!(m.sums(&p, "a", a.len()).unwrap().1, vec![xxh3_64(&a)]);
        assert_eq!(m.tensors["t"].dtype_code, Some(2));
    }

    #[test]
    fn short_fill_is_an_error_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        let tensors = vec![TensorOut {
            name: "a".into(),
            dtype: Dtype::U8,
            shape: vec![8],
            dtype_code: None,
            shard_bytes: 8,
        }];
        let e = write_model_file(&p, &tensors, |_, w| w.write_all(&[1, 2, 3])).unwrap_err();
        assert!(e.to_string().contains("wrote 3 bytes, expected 8"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
