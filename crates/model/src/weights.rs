//! Model weights and `model.safetensors` with the reference PyTorch state-dict keys:
//! `emb_l.{t}.weight` `[rows, D]`, `bot_l.{2i}.weight` `[out, in]`, `bot_l.{2i}.bias` `[out]`,
//! `top_l.{2i}.weight`, `top_l.{2i}.bias` (the odd indices are the activations of the
//! reference's `nn.Sequential`, which hold no tensors).
//!
//! A table in a quantized row format is stored as `emb_l.{t}.weight` of dtype U8 and shape
//! `[rows, stride]`: each row its fused bytes (FBGEMM layout) padded to the stride.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;
use safetensors::tensor::{Dtype, SafeTensors};
use xxhash_rust::xxh3::xxh3_64;

use dlrs_kernels::gemm::{PackedWeights, bf16};

use crate::config::{DlrmConfig, MlpDtype, RowFormat};
use crate::error::{ModelError, Result};
use crate::format::{TensorOut, read_manifest, shard_bytes_for, shard_sums, write_model_file};
use crate::tables::{EmbeddingTable, FILL_ROWS, ShardCheck, random_rows};

/// One fully connected layer in `nn.Linear` layout, with its weight also packed for the
/// GEMM microkernels (`dlrs_kernels::gemm`) at creation: the forward pass reads the packed
/// copy, everything else (files, gradients, optimizers) the `[out_w, in_w]` one. The weight
/// is changed only through [`Layer::params_mut`], which drops the packed copy; [`Layer::pack`]
/// (or [`Weights::pack_layers`]) packs it again, and until then the forward pass runs the
/// unpacked weight: a stale packed weight is never used.
#[derive(Clone, Debug)]
pub struct Layer {
    pub in_w: usize,
    pub out_w: usize,
    /// `[out_w, in_w]` row-major (for a bf16 layer: the bf16 values, widened exactly)
    weight: Vec<f32>,
    /// `[out_w]`
    bias: Vec<f32>,
    dtype: MlpDtype,
    packed: Option<PackedWeights>,
}

impl Layer {
    /// A layer of `weight [out_w, in_w]` (row-major) and `bias [out_w]`, packed.
    ///
    /// # Panics
    /// If the lengths do not fit the widths.
    pub fn new(in_w: usize, out_w: usize, weight: Vec<f32>, bias: Vec<f32>) -> Self {
        Self::with_dtype(in_w, out_w, weight, bias, MlpDtype::F32)
    }

    /// [`Layer::new`] with weights of `dtype`: for bf16, the weight is rounded to bf16
    /// (round to nearest even, as `torch.Tensor.bfloat16()`) and packed for the bf16
    /// microkernels; the bias stays f32.
    pub fn with_dtype(
        in_w: usize,
        out_w: usize,
        mut weight: Vec<f32>,
        bias: Vec<f32>,
        dtype: MlpDtype,
    ) -> Self {
        assert_eq!(weight.len(), in_w * out_w, "weight must be [out_w, in_w]");
        assert_eq!(bias.len(), out_w, "bias must be [out_w]");
        if dtype == MlpDtype::Bf16 {
            weight.iter_mut().for_each(|v| *v = bf16::round(*v));
        }
        let mut l = Layer {
            in_w,
            out_w,
            weight,
            bias,
            dtype,
            packed: None,
        };
        l.pack();
        l
    }

    /// The weights' type.
    pub fn dtype(&self) -> MlpDtype {
        self.dtype
    }

    /// The weight as stored in a model file: little-endian f32, or bf16 bits.
    pub fn weight_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        match self.dtype {
            MlpDtype::F32 => std::borrow::Cow::Borrowed(f32_bytes(&self.weight)),
            MlpDtype::Bf16 => std::borrow::Cow::Owned(
                self.weight
                    .iter()
                    .flat_map(|&v| bf16::f32_to_bf16(v).to_le_bytes())
                    .collect(),
            ),
        }
    }

    /// The bias as stored in a model file: little-endian f32.
    pub fn bias_bytes(&self) -> &[u8] {
        f32_bytes(&self.bias)
    }

    /// `[out_w, in_w]` row-major.
    pub fn weight(&self) -> &[f32] {
        &self.weight
    }

    /// `[out_w]`.
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// The weight packed for the GEMM microkernels, unless it changed since it was packed.
    pub fn packed(&self) -> Option<&PackedWeights> {
        self.packed.as_ref()
    }

    /// The weight and the bias, writable. Drops the packed weight: call [`Layer::pack`] after
    /// the change (the forward pass is correct without, only slower).
    pub fn params_mut(&mut self) -> (&mut [f32], &mut [f32]) {
        self.packed = None;
        (&mut self.weight, &mut self.bias)
    }

    /// Packs the weight if it is not packed (a no-op otherwise). A bf16 layer's weight,
    /// changed through [`Layer::params_mut`], is rounded to bf16 again first.
    pub fn pack(&mut self) {
        if self.packed.is_none() {
            self.packed = Some(match self.dtype {
                MlpDtype::F32 => PackedWeights::new(&self.weight, self.out_w, self.in_w),
                MlpDtype::Bf16 => {
                    self.weight.iter_mut().for_each(|v| *v = bf16::round(*v));
                    PackedWeights::new_bf16(&self.weight, self.out_w, self.in_w)
                }
            });
        }
    }

    /// This layer with its weight in `dtype` (rounded to bf16, or kept: bf16 values are f32
    /// values).
    pub fn to_dtype(&self, dtype: MlpDtype) -> Self {
        Self::with_dtype(
            self.in_w,
            self.out_w,
            self.weight.clone(),
            self.bias.clone(),
            dtype,
        )
    }
}

/// All parameters of a DLRM.
pub struct Weights {
    pub tables: Vec<EmbeddingTable>,
    pub bot: Vec<Layer>,
    pub top: Vec<Layer>,
    /// whether the file these came from carried a checksum manifest
    pub has_manifest: bool,
}

/// The expected tensors of a config: `(key, shape, dtype)` in state-dict order.
pub fn expected_tensors(cfg: &DlrmConfig) -> Vec<(String, Vec<usize>, Dtype)> {
    let mut v = Vec::new();
    for (t, (&rows, &fmt)) in cfg.tables.iter().zip(&cfg.table_formats).enumerate() {
        let name = format!("emb_l.{t}.weight");
        match fmt {
            RowFormat::F32 => v.push((name, vec![rows, cfg.dim], Dtype::F32)),
            f => v.push((
                name,
                vec![rows, EmbeddingTable::stride_for(f, cfg.dim)],
                Dtype::U8,
            )),
        }
    }
    let weight_dtype = match cfg.mlp_dtype {
        MlpDtype::F32 => Dtype::F32,
        MlpDtype::Bf16 => Dtype::BF16,
    };
    for (prefix, ws) in [("bot_l", cfg.bot.clone()), ("top_l", cfg.top_full())] {
        for (i, p) in ws.windows(2).enumerate() {
            v.push((
                format!("{prefix}.{}.weight", 2 * i),
                vec![p[1], p[0]],
                weight_dtype,
            ));
            v.push((format!("{prefix}.{}.bias", 2 * i), vec![p[1]], Dtype::F32));
        }
    }
    v
}

fn random_mlp(widths: &[usize], dtype: MlpDtype, rng: &mut SmallRng) -> Vec<Layer> {
    widths
        .windows(2)
        .map(|p| {
            let (i, o) = (p[0], p[1]);
            let w = Normal::new(0.0f32, (2.0 / (i + o) as f32).sqrt()).expect("finite std");
            let b = Normal::new(0.0f32, (1.0 / o as f32).sqrt()).expect("finite std");
            let weight = (0..i * o).map(|_| w.sample(rng)).collect();
            let bias = (0..o).map(|_| b.sample(rng)).collect();
            Layer::with_dtype(i, o, weight, bias, dtype)
        })
        .collect()
}

impl Weights {
    /// Packs every MLP layer whose weight changed since it was packed (after an optimizer
    /// step).
    pub fn pack_layers(&mut self) {
        self.bot
            .iter_mut()
            .chain(self.top.iter_mut())
            .for_each(Layer::pack);
    }

    /// Random weights with the reference DLRM's initialisation: MLP weights
    /// N(0, sqrt(2/(in+out))), biases N(0, sqrt(1/out)), tables U(±sqrt(1/rows)).
    /// Tables are filled in parallel; the result depends only on `seed`.
    pub fn random(cfg: &DlrmConfig, seed: u64) -> Result<Self> {
        let (bot, top) = random_mlps(cfg, seed);
        let mut tables = Vec::with_capacity(cfg.tables.len());
        for (t, &rows) in cfg.tables.iter().enumerate() {
            tables.push(
                EmbeddingTable::random(rows, cfg.dim, cfg.table_formats[t], table_seed(seed, t))
                    .map_err(|e| {
                        ModelError::io(format!("<table {t}: {} MB>", (rows * cfg.dim * 4) >> 20), e)
                    })?,
            );
        }
        Ok(Weights {
            tables,
            bot,
            top,
            has_manifest: false,
        })
    }

    /// Writes the model file of [`Weights::random`]`(cfg, seed)` without holding its tables:
    /// rows are generated a window at a time straight into the (checksummed, atomic) file, so
    /// memory stays bounded whatever the table sizes. `progress(bytes)` is called as bytes
    /// are written.
    pub fn write_random(
        path: &Path,
        cfg: &DlrmConfig,
        seed: u64,
        mut progress: impl FnMut(u64),
    ) -> Result<()> {
        let (bot, top) = random_mlps(cfg, seed);
        let expected = expected_tensors(cfg);
        let n_tables = cfg.tables.len();
        let outs = tensor_outs(cfg, expected, |i| {
            if i < n_tables {
                cfg.tables[i] * EmbeddingTable::stride_for(cfg.table_formats[i], cfg.dim)
            } else {
                let l = if i - n_tables < 2 * bot.len() {
                    &bot[(i - n_tables) / 2]
                } else {
                    &top[(i - n_tables) / 2 - bot.len()]
                };
                if (i - n_tables).is_multiple_of(2) {
                    l.weight_bytes().len()
                } else {
                    l.bias_bytes().len()
                }
            }
        });
        // 256 fill chunks a window: a few MB to a few hundred MB for the widest fp32 rows
        const WINDOW_ROWS: usize = 256 * FILL_ROWS;
        let mut buf = Vec::new();
        write_model_file(path, &outs, |i, w| {
            if i < n_tables {
                let (rows, fmt) = (cfg.tables[i], cfg.table_formats[i]);
                let stride = EmbeddingTable::stride_for(fmt, cfg.dim);
                let mut r = 0;
                while r < rows {
                    let n = WINDOW_ROWS.min(rows - r);
                    buf.resize(n * stride, 0);
                    random_rows(rows, cfg.dim, fmt, table_seed(seed, i), r, &mut buf);
                    w.write_all(&buf)?;
                    progress(buf.len() as u64);
                    r += n;
                }
            } else {
                let j = i - n_tables;
                let l = if j < 2 * bot.len() {
                    &bot[j / 2]
                } else {
                    &top[j / 2 - bot.len()]
                };
                if j.is_multiple_of(2) {
                    w.write_all(&l.weight_bytes())?;
                } else {
                    w.write_all(l.bias_bytes())?;
                }
            }
            Ok(())
        })
    }

    /// Loads `model.safetensors`, checking every tensor against the config and, when the
    /// file carries a manifest, every checksum: all of them now in [`TableMode::Ram`]; the
    /// MLPs now and the tables shard by shard on first touch in [`TableMode::Mmap`].
    pub fn load_safetensors(path: &Path, cfg: &DlrmConfig, mode: TableMode) -> Result<Self> {
        let (file, _) = crate::files::open_regular(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: the file is mapped read-only. dlrs replaces model files by rename, never
        // in place, so a mapping keeps seeing the file it opened; another program truncating
        // the file in place while it is mapped would fault (SIGBUS), as with any mmap reader.
        let map =
            Arc::new(unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?);
        let format_err = |e: safetensors::SafeTensorError| ModelError::Format {
            path: path.into(),
            msg: format!("not a valid safetensors file: {e}"),
        };
        let (_, meta) = SafeTensors::read_metadata(&map).map_err(format_err)?;
        let manifest = read_manifest(path, &meta)?;
        let st = SafeTensors::deserialize(&map).map_err(format_err)?;
        let expected = expected_tensors(cfg);
        let tensor_err = |tensor: &str, msg: String| ModelError::Tensor {
            path: path.into(),
            tensor: tensor.into(),
            msg,
        };

        let mut unexpected: Vec<&str> = st
            .names()
            .into_iter()
            .filter(|n| !expected.iter().any(|(k, _, _)| k == n))
            .collect();
        if let Some(m) = &manifest {
            unexpected.extend(
                m.tensors
                    .keys()
                    .map(String::as_str)
                    .filter(|n| !expected.iter().any(|(k, _, _)| k == n)),
            );
        }
        if !unexpected.is_empty() {
            unexpected.sort();
            unexpected.dedup();
            return Err(tensor_err(
                &unexpected.join(", "),
                "not part of the architecture in config.json (a different model, or a config that does not match)"
                    .into(),
            ));
        }
        let mut views = Vec::with_capacity(expected.len());
        for (i, (name, shape, dtype)) in expected.iter().enumerate() {
            let v = st
                .tensor(name)
                .map_err(|_| tensor_err(name, "missing".into()))?;
            if v.dtype() != *dtype {
                return Err(tensor_err(
                    name,
                    format!(
                        "dtype {:?}, expected {dtype:?} for the row format in config.json",
                        v.dtype()
                    ),
                ));
            }
            if v.shape() != shape.as_slice() {
                return Err(tensor_err(
                    name,
                    format!(
                        "shape {:?}, expected {:?} from config.json",
                        v.shape(),
                        shape
                    ),
                ));
            }
            let sums = match &manifest {
                Some(m) => {
                    let e = &m.tensors[name.as_str()];
                    let code = cfg
                        .table_formats
                        .get(i)
                        .filter(|_| i < cfg.tables.len())
                        .map(|f| f.code());
                    // tables are sharded in whole rows (any shard size a writer chose)
                    let row = code.map_or(1, |_| {
                        EmbeddingTable::stride_for(cfg.table_formats[i], cfg.dim)
                    });
                    if e.shape != *shape || e.dtype_code != code || e.shard_bytes % row != 0 {
                        return Err(tensor_err(
                            name,
                            "the manifest's shape, row format or shard size disagrees with the tensor".into(),
                        ));
                    }
                    Some(m.sums(path, name, v.data().len())?)
                }
                None => None,
            };
            views.push((v, sums));
        }
        let corrupt = |tensor: &str, shard: usize, n: usize| ModelError::Corrupt {
            path: path.into(),
            tensor: tensor.into(),
            msg: format!("shard {shard} of {n} does not match its checksum"),
        };
        let n_tables = cfg.tables.len();
        let mut tables = Vec::with_capacity(n_tables);
        for (t, (v, sums)) in views[..n_tables].iter().enumerate() {
            let (rows, fmt) = (cfg.tables[t], cfg.table_formats[t]);
            match mode {
                TableMode::Mmap => {
                    let offset = v.data().as_ptr() as usize - map.as_ptr() as usize;
                    let check = sums.as_ref().map(|(sb, s)| ShardCheck::new(*sb, s.clone()));
                    tables.push(EmbeddingTable::mapped(
                        rows,
                        cfg.dim,
                        fmt,
                        Arc::clone(&map),
                        offset,
                        check,
                    ));
                }
                TableMode::Ram => {
                    // every byte is written below
                    let mut table = EmbeddingTable::for_overwrite(rows, cfg.dim, fmt)
                        .map_err(|e| ModelError::io(path, e))?;
                    copy_verified(v.data(), table.bytes_mut(), sums.as_ref()).map_err(|k| {
                        corrupt(&expected[t].0, k, sums.as_ref().map_or(0, |s| s.1.len()))
                    })?;
                    tables.push(table);
                }
            }
        }
        let mut layers = Vec::new();
        for (pair, names) in views[n_tables..]
            .chunks(2)
            .zip(expected[n_tables..].chunks(2))
        {
            let ((w, ws), (b, bs)) = (&pair[0], &pair[1]);
            for (view, sums, name) in [(w, ws, &names[0].0), (b, bs, &names[1].0)] {
                if let Some((sb, s)) = sums
                    && let Some(k) = shard_sums(view.data(), *sb)
                        .iter()
                        .zip(s)
                        .position(|(a, b)| a != b)
                {
                    return Err(corrupt(name, k, s.len()));
                }
            }
            let mut weight = vec![0.0; w.shape().iter().product()];
            let mut bias = vec![0.0; b.shape()[0]];
            match cfg.mlp_dtype {
                MlpDtype::F32 => copy_le_f32(w.data(), &mut weight),
                // bf16 widens to f32 exactly: packing rounds nothing
                MlpDtype::Bf16 => weight
                    .iter_mut()
                    .zip(w.data().chunks_exact(2))
                    .for_each(|(d, s)| *d = bf16::bf16_to_f32(u16::from_le_bytes([s[0], s[1]]))),
            }
            copy_le_f32(b.data(), &mut bias);
            layers.push(Layer::with_dtype(
                w.shape()[1],
                w.shape()[0],
                weight,
                bias,
                cfg.mlp_dtype,
            ));
        }
        let top = layers.split_off(cfg.bot.len() - 1);
        Ok(Weights {
            tables,
            bot: layers,
            top,
            has_manifest: manifest.is_some(),
        })
    }

    /// Writes `model.safetensors` with its manifest, streaming (bounded memory), atomically
    /// (temp file, fsync, rename, fsync the directory).
    pub fn save_safetensors(&self, path: &Path, cfg: &DlrmConfig) -> Result<()> {
        let expected = expected_tensors(cfg);
        let mut datas: Vec<std::borrow::Cow<[u8]>> = self
            .tables
            .iter()
            .map(|t| std::borrow::Cow::Borrowed(t.bytes()))
            .collect();
        for l in self.bot.iter().chain(&self.top) {
            datas.push(l.weight_bytes());
            datas.push(std::borrow::Cow::Borrowed(l.bias_bytes()));
        }
        assert_eq!(
            datas.len(),
            expected.len(),
            "weights do not match their config"
        );
        let outs = tensor_outs(cfg, expected, |i| datas[i].len());
        write_model_file(path, &outs, |i, w| {
            for chunk in datas[i].chunks(8 << 20) {
                w.write_all(chunk)?;
            }
            Ok(())
        })
    }
}

/// The tensors of a model file in order, with their shard sizes (`bytes(i)`: tensor i's size).
fn tensor_outs(
    cfg: &DlrmConfig,
    expected: Vec<(String, Vec<usize>, Dtype)>,
    bytes: impl Fn(usize) -> usize,
) -> Vec<TensorOut> {
    let n_tables = cfg.tables.len();
    expected
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape, dtype))| {
            let (code, row) = if i < n_tables {
                (
                    Some(cfg.table_formats[i].code()),
                    Some(EmbeddingTable::stride_for(cfg.table_formats[i], cfg.dim)),
                )
            } else {
                (None, None)
            };
            TensorOut {
                name,
                dtype,
                shape,
                dtype_code: code,
                shard_bytes: shard_bytes_for(bytes(i), row),
            }
        })
        .collect()
}

/// The MLPs of [`Weights::random`]: bottom then top, from one RNG stream.
fn random_mlps(cfg: &DlrmConfig, seed: u64) -> (Vec<Layer>, Vec<Layer>) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let bot = random_mlp(&cfg.bot, cfg.mlp_dtype, &mut rng);
    let top = random_mlp(&cfg.top_full(), cfg.mlp_dtype, &mut rng);
    (bot, top)
}

/// The seed of table `t`'s rows.
fn table_seed(seed: u64, t: usize) -> u64 {
    seed.wrapping_add(1 + t as u64)
        .wrapping_mul(0xD1B5_4A32_D192_ED03)
}

/// How a model's tables are held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TableMode {
    /// Map the model file; the page cache holds the rows (start-up independent of table
    /// size; a model larger than RAM still serves). Checksums verified shard by shard on
    /// first touch and by a background pass.
    #[default]
    Mmap,
    /// Copy every table into huge-page memory at load, verifying as it copies (slower to
    /// start, faster random gathers: 2 MiB pages mean fewer TLB misses).
    Ram,
}

impl TableMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "mmap" => Some(TableMode::Mmap),
            "ram" => Some(TableMode::Ram),
            _ => None,
        }
    }
}

/// Copies `src` into `dst` shard by shard in parallel, checking each shard's checksum
/// when given; the first failing shard's index on error.
fn copy_verified(
    src: &[u8],
    dst: &mut [u8],
    sums: Option<&(usize, Vec<u64>)>,
) -> std::result::Result<(), usize> {
    assert_eq!(src.len(), dst.len());
    let shard = sums.map_or(4 << 20, |s| s.0);
    let bad: Vec<usize> = dst
        .par_chunks_mut(shard)
        .zip(src.par_chunks(shard))
        .enumerate()
        .filter_map(|(k, (d, s))| {
            d.copy_from_slice(s);
            match sums {
                Some((_, v)) if xxh3_64(d) != v[k] => Some(k),
                _ => None,
            }
        })
        .collect();
    bad.first().map_or(Ok(()), |&k| Err(k))
}

fn f32_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and every byte of it is initialised; u8 has alignment 1,
    // and the byte slice covers exactly the memory of `v` for the same lifetime.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

#[cfg(not(target_endian = "little"))]
compile_error!("dlrs reads little-endian tensors in place: big-endian targets are not supported");

/// Copies little-endian f32 bytes (any alignment) into `dst`.
fn copy_le_f32(src: &[u8], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len() * 4);
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    }
}

/// Writes a file so that readers see either the old or the new content, never a torn one:
/// write to a temp file beside it, fsync, rename over, fsync the directory.
pub fn atomic_write(path: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| ModelError::io(path, std::io::Error::other("not a file path")))?;
    let tmp: PathBuf = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let res = (|| {
        write(&tmp)?;
        File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map_err(|e| ModelError::io(path, e))
}

/// [`atomic_write`] of a byte string.
pub fn atomic_write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_write(path, |tmp| {
        let mut f = File::create(tmp)?;
        f.write_all(bytes)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_layer_is_never_served_from_its_old_packing() {
        let w: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let mut l = Layer::new(4, 3, w.clone(), vec![0.5; 3]);
        assert_eq!(l.packed().expect("packed at creation").unpack(), w);
        let (weight, bias) = l.params_mut();
        weight[5] = -7.0;
        bias[1] = 2.0;
        assert!(l.packed().is_none(), "params_mut drops the packed copy");
        l.pack();
        let mut want = w;
        want[5] = -7.0;
        assert_eq!(l.packed().unwrap().unpack(), want);
        assert_eq!(l.weight(), want.as_slice());
        assert_eq!(l.bias(), &[0.5, 2.0, 0.5]);
    }
}
