//! [`Model`]: a DLRM's config and weights, loaded from and saved to a model directory
//! (`config.json` + `model.safetensors`), with the tiers in front of its tables.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use crate::batch::{Batch, Sample};
use crate::config::{DlrmConfig, MlpDtype, RowFormat};
use crate::error::{ModelError, Result};
use crate::presets::{Preset, preset};
use crate::tables::idmap::{CollisionlessMap, KeyBags, file as idmap_file};
use crate::tables::{Cached, RemoteTables, RowCache, TableView, TrafficCounter, build_caches};
use crate::weights::{TableMode, Weights, atomic_write_bytes};

/// The config file of a model directory.
pub const CONFIG_FILE: &str = "config.json";
/// The weights file of a model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// What [`Model::quantize_dir`] wrote: the converted model and the error of each conversion.
pub struct Quantized {
    pub model: Model,
    /// per converted table: `(index, max abs error, mean abs error)`
    pub tables: Vec<(usize, f64, f64)>,
    /// the MLP weights' `(max abs change, mean abs change)`, when converted
    pub mlp: Option<(f64, f64)>,
}

/// What [`Model::verify_dir`] found in a model directory whose every check passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verified {
    /// no checksum manifest: `tensors` tensors were checked for shape and dtype only
    NoManifest { tensors: usize },
    /// every checksum matched: `tables` tables of `bytes` bytes
    Checksums { tables: usize, bytes: usize },
}

/// A DLRM ready to run: a validated config and weights that fit it.
pub struct Model {
    pub config: DlrmConfig,
    pub weights: Weights,
    /// the directory it was loaded from, if any (named in errors)
    pub dir: Option<PathBuf>,
    /// hot-row caches, one slot per table (see [`Model::build_row_caches`])
    pub row_caches: Vec<Option<RowCache>>,
    /// the collisionless id maps, one slot per table (`None` for other maps; see
    /// [`crate::tables::idmap`])
    pub id_maps: Vec<Option<CollisionlessMap>>,
    /// a remote tier that holds the tables (e.g. a Redis Cluster, `dlrs-redis`): when set,
    /// the forward reads every table from it and never from `weights.tables`
    pub remote: Option<Arc<dyn RemoteTables>>,
}

impl Model {
    /// Loads a model directory (`config.json` + `model.safetensors`) with its tables
    /// memory-mapped ([`TableMode::Mmap`]).
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_with(dir, TableMode::Mmap)
    }

    /// Loads a model directory, holding the tables as `mode` says. Mapped tables with a
    /// manifest are verified shard by shard the first time a batch touches a shard (rows of
    /// a shard that fails are never served: `forward` returns an error naming it); see
    /// [`Model::verify_in_background`] to verify them all ahead of traffic.
    pub fn load_with(dir: &Path, mode: TableMode) -> Result<Self> {
        let config = DlrmConfig::load(&dir.join(CONFIG_FILE))?;
        let weights = Weights::load_safetensors(&dir.join(WEIGHTS_FILE), &config, mode)?;
        let id_maps = load_id_maps(dir, &config)?;
        Ok(Model {
            config,
            weights,
            dir: Some(dir.to_path_buf()),
            row_caches: Vec::new(),
            id_maps,
            remote: None,
        })
    }

    /// Starts a thread that verifies every shard of every mapped table (reading the whole
    /// file once), so corruption is found before traffic reaches it. A server calls this
    /// after loading; a one-shot `predict` does not, to keep start-up independent of size.
    pub fn verify_in_background(&self) -> Result<()> {
        let jobs: Vec<_> = self
            .weights
            .tables
            .iter()
            .filter_map(|t| t.background_verifier())
            .collect();
        if !jobs.is_empty() {
            std::thread::Builder::new()
                .name("dlrs-verify".into())
                .spawn(move || {
                    crate::sys::lower_thread_priority();
                    jobs.into_iter().for_each(|j| j())
                })
                .map_err(|e| ModelError::io("<verify thread>", e))?;
        }
        Ok(())
    }

    /// Fills hot-row caches (rows plus index within `budget_bytes`) from observed traffic;
    /// returns the share of the observed lookups the cached rows serve. A budget of 0
    /// removes the caches.
    pub fn build_row_caches(
        &mut self,
        traffic: &TrafficCounter,
        budget_bytes: usize,
    ) -> Result<f64> {
        if budget_bytes == 0 {
            self.row_caches.clear();
            return Ok(0.0);
        }
        let (caches, share) = build_caches(&self.weights.tables, traffic, budget_bytes)
            .map_err(|e| ModelError::io("<row cache>", e))?;
        self.row_caches = caches;
        Ok(share)
    }

    /// Bytes the row caches take.
    pub fn row_cache_bytes(&self) -> usize {
        self.row_caches.iter().flatten().map(|c| c.bytes()).sum()
    }

    /// Verifies every shard of every checked table now; errors name the first bad one.
    pub fn verify_tables(&self) -> Result<()> {
        for t in 0..self.weights.tables.len() {
            self.weights.tables[t]
                .verify_all()
                .map_err(|k| self.corrupt(t, k))?;
        }
        Ok(())
    }

    /// A preset with random weights (tables built in parallel on the current rayon pool).
    pub fn from_preset(name: &str, seed: u64) -> Result<(Self, Preset)> {
        let p = preset(name)?;
        Ok((Self::random(p.config.clone(), seed)?, p))
    }

    pub fn random(config: DlrmConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let weights = Weights::random(&config, seed)?;
        let id_maps = empty_id_maps(&config);
        Ok(Model {
            config,
            weights,
            dir: None,
            row_caches: Vec::new(),
            id_maps,
            remote: None,
        })
    }

    /// Writes the model directory of [`Model::random`]`(config, seed)` without building its
    /// tables in memory (see [`Weights::write_random`]); each file atomically.
    pub fn write_random(
        config: &DlrmConfig,
        seed: u64,
        dir: &Path,
        progress: impl FnMut(u64),
    ) -> Result<()> {
        config.validate()?;
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        Weights::write_random(&dir.join(WEIGHTS_FILE), config, seed, progress)?;
        atomic_write_bytes(&dir.join(CONFIG_FILE), config.to_json_string().as_bytes())
    }

    /// Writes the model directory; each file atomically (the collisionless tables' id maps
    /// too, as `idmap.<t>.bin`).
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        self.weights
            .save_safetensors(&dir.join(WEIGHTS_FILE), &self.config)?;
        for (t, m) in self.id_maps.iter().enumerate() {
            if let Some(m) = m {
                idmap_file::save(dir, t, m)?;
            }
        }
        atomic_write_bytes(
            &dir.join(CONFIG_FILE),
            self.config.to_json_string().as_bytes(),
        )
    }

    /// `dlrs quantize`: loads `dir`, converts the tables to `dtype` (`tables` selects some,
    /// all when empty) and/or the MLP weights to `mlp_dtype`, and writes the result to `out`
    /// (which must not be `dir`: the source model is left as it is).
    pub fn quantize_dir(
        dir: &Path,
        dtype: Option<RowFormat>,
        mlp_dtype: Option<MlpDtype>,
        tables: &[usize],
        out: &Path,
    ) -> Result<Quantized> {
        if out.exists() && std::fs::canonicalize(out).ok() == std::fs::canonicalize(dir).ok() {
            return Err(ModelError::input(
                "out",
                "must differ from the model directory (the source model is left as it is)",
            ));
        }
        if dtype.is_none() && !tables.is_empty() {
            return Err(ModelError::input(
                "tables",
                "selects tables for the table dtype: give the dtype too",
            ));
        }
        let mut model = Model::load(dir)?;
        let tables = match dtype {
            Some(f) => model.convert_tables(f, tables)?,
            None => Vec::new(),
        };
        let mlp = mlp_dtype.map(|d| model.convert_mlp(d));
        model.save(out)?;
        Ok(Quantized { model, tables, mlp })
    }

    /// `dlrs verify`: loads `dir` (which checks the config, every tensor's shape and dtype,
    /// and the MLPs' checksums), then checks every table shard against its checksum. Without
    /// a manifest there are no checksums: an error with `require_manifest`, else
    /// [`Verified::NoManifest`].
    pub fn verify_dir(dir: &Path, require_manifest: bool) -> Result<Verified> {
        let model = Model::load_with(dir, TableMode::Mmap)?;
        if !model.weights.has_manifest {
            let tensors = crate::weights::expected_tensors(&model.config).len();
            if require_manifest {
                return Err(ModelError::Format {
                    path: dir.join(WEIGHTS_FILE),
                    msg: format!(
                        "no manifest: {tensors} tensors checked for shape and dtype only; run `dlrs manifest --model {}` to add checksums (a manifest is required)",
                        dir.display()
                    ),
                });
            }
            return Ok(Verified::NoManifest { tensors });
        }
        model.verify_tables()?;
        Ok(Verified::Checksums {
            tables: model.config.n_tables(),
            bytes: model.weights.tables.iter().map(|t| t.size_bytes()).sum(),
        })
    }

    /// Converts tables to `format` (all when `tables` is empty), returning per converted
    /// table `(index, max abs error, mean abs error)` of the new values against the old.
    pub fn convert_tables(
        &mut self,
        format: RowFormat,
        tables: &[usize],
    ) -> Result<Vec<(usize, f64, f64)>> {
        let n = self.config.n_tables();
        if let Some(t) = tables.iter().find(|&&t| t >= n) {
            return Err(ModelError::input(
                "tables",
                format!("table {t} does not exist (the model has {n})"),
            ));
        }
        let chosen: Vec<usize> = if tables.is_empty() {
            (0..n).collect()
        } else {
            tables.to_vec()
        };
        let mut report = Vec::new();
        for t in chosen {
            let old = &self.weights.tables[t];
            let new = old
                .convert(format)
                .map_err(|e| ModelError::io(format!("<table {t}>"), e))?;
            let dim = old.dim();
            let (max, sum) = (0..old.rows())
                .into_par_iter()
                .fold(
                    || (0.0f64, 0.0f64, vec![0.0f32; dim], vec![0.0f32; dim]),
                    |(mx, sm, mut a, mut b), r| {
                        old.row_f32(r, &mut a);
                        new.row_f32(r, &mut b);
                        let (m2, s2) = a.iter().zip(&b).fold((mx, sm), |(m, s), (x, y)| {
                            let d = (x - y).abs() as f64;
                            (m.max(d), s + d)
                        });
                        (m2, s2, a, b)
                    },
                )
                .map(|(m, s, _, _)| (m, s))
                .reduce(|| (0.0, 0.0), |x, y| (x.0.max(y.0), x.1 + y.1));
            report.push((t, max, sum / (old.rows() * dim) as f64));
            self.weights.tables[t] = new;
            self.config.table_formats[t] = format;
        }
        Ok(report)
    }

    /// Converts the MLP weights to `dtype` (to bf16: rounded to nearest even, as
    /// `torch.Tensor.bfloat16()`); returns the max and mean absolute change of the weights.
    pub fn convert_mlp(&mut self, dtype: MlpDtype) -> (f64, f64) {
        let w = &mut self.weights;
        let (mut max, mut sum, mut n) = (0.0f64, 0.0f64, 0usize);
        for l in w.bot.iter_mut().chain(w.top.iter_mut()) {
            let new = l.to_dtype(dtype);
            for (a, b) in l.weight().iter().zip(new.weight()) {
                let d = (a - b).abs() as f64;
                max = max.max(d);
                sum += d;
            }
            n += l.weight().len();
            *l = new;
        }
        self.config.mlp_dtype = dtype;
        (max, sum / n.max(1) as f64)
    }

    /// What the forward pass reads each table through: the table, or its row cache in front
    /// of it, or the remote tier that holds it (see [`crate::tables`]).
    pub fn table_views(&self) -> Vec<TableView<'_>> {
        if let Some(remote) = &self.remote {
            return (0..self.config.n_tables())
                .map(|t| TableView::Remote(remote.table(t)))
                .collect();
        }
        self.weights
            .tables
            .iter()
            .enumerate()
            .map(|(t, table)| match self.row_caches.get(t) {
                Some(Some(cache)) => TableView::Cached(Cached {
                    cache,
                    backing: table,
                }),
                _ => TableView::Table(table),
            })
            .collect()
    }

    /// Parses one JSON line as [`crate::batch::parse_sample`] does, and turns the raw ids of
    /// collisionless tables into rows through their maps (read-only: an id the map does not
    /// hold is a miss, which looks up the map's miss row or nothing; never an error).
    pub fn parse_sample(&self, line: &str) -> Result<Sample> {
        let (mut s, keys) = crate::batch::parse_sample_keys(line, &self.config)?;
        let mut scratch = Vec::new();
        for (t, k) in keys.iter().enumerate() {
            if let Some(Some(m)) = self.id_maps.get(t)
                && !k.is_empty()
            {
                let r = m.resolve(&[0, k.len() as u32], k, &mut scratch);
                s.sparse[t] = r.bags.ids.to_vec();
            }
        }
        Ok(s)
    }

    /// Sets the bags of `batch`'s collisionless tables from their keys (`keys[t]`, one
    /// [`KeyBags`] per table; those of other tables are ignored), read-only as
    /// [`Model::parse_sample`] does. Returns the misses.
    pub fn resolve_keys(&self, batch: &mut Batch, keys: &[KeyBags]) -> Result<usize> {
        let mut scratch = Vec::new();
        let mut misses = 0;
        for (t, k) in keys.iter().enumerate() {
            if let Some(Some(m)) = self.id_maps.get(t) {
                let r = m.resolve(&k.offsets, &k.keys, &mut scratch);
                misses += r.misses;
                batch.set_bags(&self.config, t, r.bags)?;
            }
        }
        Ok(misses)
    }

    /// The error of a batch that touched table `t`'s corrupt shard `shard`.
    pub(crate) fn corrupt(&self, t: usize, shard: usize) -> ModelError {
        ModelError::Corrupt {
            path: self
                .dir
                .as_ref()
                .map_or_else(|| PathBuf::from("<model>"), |d| d.join(WEIGHTS_FILE)),
            tensor: format!("emb_l.{t}.weight"),
            msg: format!("shard {shard} does not match its checksum"),
        }
    }
}

/// Empty maps for the collisionless tables of `config`.
pub fn empty_id_maps(config: &DlrmConfig) -> Vec<Option<CollisionlessMap>> {
    (0..config.n_tables())
        .map(|t| {
            config
                .id_map(t)
                .collisionless()
                .map(|c| CollisionlessMap::new(*c, config.tables[t]))
        })
        .collect()
}

/// The collisionless tables' maps from `dir` (an empty map where the file is absent);
/// a bad file is an error naming it and the table.
fn load_id_maps(dir: &Path, config: &DlrmConfig) -> Result<Vec<Option<CollisionlessMap>>> {
    (0..config.n_tables())
        .map(|t| {
            config
                .id_map(t)
                .collisionless()
                .map(|c| idmap_file::load(dir, t, *c, config.tables[t]))
                .transpose()
        })
        .collect()
}
