//! Labelled synthetic samples from a teacher DLRM: inputs as `dlrs bench` draws them
//! (standard-normal dense features, `ids_per_table` ids per bag, uniform or Zipf), and a
//! label drawn from Bernoulli(teacher click probability). A student trained on them has a
//! signal to learn (its AUC can approach the teacher's) without any download.
//!
//! A random teacher (Model::random) is made to carry a clear signal by [`make_teacher`]: its
//! tables get values U(±1) instead of the tiny reference init (so ids matter, whatever the
//! table size), its final layer is scaled by 2 (sharper probabilities), and its final bias is
//! set for a mean click rate of 0.25 (about Criteo's). A model given as the teacher as is
//! (`--use-weights`) is used unchanged.
//!
//! Deterministic: chunk `c` of 4096 samples draws its inputs from seed
//! `hash(seed, c)` and its labels from another stream of the same seed, so the output
//! depends only on the teacher, the seed, `rows`, `ids_per_table` and the distribution.
//!
//! Raw ids (`raw_ids`): each row `j` of table `t` is written as the 64-bit id
//! [`synth_raw_id`]`(teacher, t, j)` instead of `j`, so the rows are a vocabulary of random
//! ids whose frequencies follow the id distribution (Zipf for a power law), and the
//! teacher gives every raw id its own embedding: a student that maps two of them to one row
//! really loses information. `drift` moves the ids over the file (new ones become hot, old
//! ones fade), the case expiry exists for.
//!
//! [`run_synth`] is `dlrs synth`.

use std::io::{BufWriter, Write};
use std::time::Instant;

use dlrs_model::synth::{IdDist, synth_batch};
use dlrs_model::{Executor, Model, Workspace};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::config::{SynthConfig, exactly_one, preset_config};
use crate::error::{Result, TrainError};

/// How a random model is made into a teacher (see [`make_teacher`]).
#[derive(Clone, Copy, Debug)]
pub struct TeacherShape {
    /// table values U(±emb_scale)
    pub emb_scale: f32,
    /// the final layer's weights times this
    pub logit_scale: f32,
    /// the mean click probability the final bias is set for
    pub ctr: f64,
}

impl Default for TeacherShape {
    fn default() -> Self {
        TeacherShape {
            emb_scale: 1.0,
            logit_scale: 2.0,
            ctr: 0.25,
        }
    }
}

/// A random teacher: [`sharpen`]ed, then its final bias set so that the mean click
/// probability over 4096 probe samples (drawn like the data, from their own seed) is
/// `shape.ctr` (bisection on the logit offset).
pub fn make_teacher(
    mut model: Model,
    shape: TeacherShape,
    ids_per_table: usize,
    dist: IdDist,
    seed: u64,
    exec: &Executor,
) -> Result<Model> {
    sharpen(&mut model, shape.emb_scale, shape.logit_scale);
    let probe = synth_batch(
        &model.config,
        4096,
        ids_per_table,
        dist,
        chunk_seed(seed, u64::MAX, 3),
    )?;
    let logits: Vec<f64> = model
        .forward(&probe, &mut Workspace::default(), exec)?
        .iter()
        .map(|&p| {
            let p = (p as f64).clamp(1e-7, 1.0 - 1e-7);
            (p / (1.0 - p)).ln()
        })
        .collect();
    let mean_p = |b: f64| {
        logits
            .iter()
            .map(|z| 1.0 / (1.0 + (-(z + b)).exp()))
            .sum::<f64>()
            / logits.len() as f64
    };
    let (mut lo, mut hi) = (-60.0f64, 60.0f64);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if mean_p(mid) < shape.ctr {
            lo = mid
        } else {
            hi = mid
        }
    }
    if let Some(l) = model.weights.top.last_mut() {
        l.params_mut().1[0] += (0.5 * (lo + hi)) as f32;
        l.pack();
    }
    Ok(model)
}

/// Samples per generated chunk.
pub const CHUNK: usize = 4096;

fn chunk_seed(seed: u64, c: u64, stream: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(
        &c.to_le_bytes(),
        seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15),
    )
}

/// The raw id `dlrs synth --raw-ids` writes for row `row` of table `table` of the teacher
/// seeded `teacher`: `xxh3_64_with_seed(row as 8 LE bytes, teacher ^ (table + 1) *
/// 0x9E3779B97F4A7C15)`. XXH3 of an 8-byte input is a bijection of the 64-bit value, so the
/// rows of one table get distinct ids.
pub fn synth_raw_id(teacher: u64, table: usize, row: u32) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(
        &(row as u64).to_le_bytes(),
        teacher ^ (table as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    )
}

/// How [`write_samples`] writes ids: rows, or raw ids with optional drift.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct IdOutput {
    /// `Some(teacher)`: raw ids of [`synth_raw_id`] for that teacher seed
    pub raw: Option<u64>,
    /// see [`SynthConfig::drift`](crate::SynthConfig::drift)
    pub drift: f64,
}

/// Writes `rows` labelled samples as JSON Lines to `out`; returns the number of clicks.
pub fn write_samples(
    teacher: &Model,
    rows: u64,
    ids_per_table: usize,
    dist: IdDist,
    seed: u64,
    exec: &Executor,
    out: &mut dyn Write,
) -> Result<u64> {
    write_samples_with(
        teacher,
        rows,
        ids_per_table,
        dist,
        seed,
        IdOutput::default(),
        exec,
        out,
    )
}

/// [`write_samples`], writing ids as `ids` says.
#[allow(clippy::too_many_arguments)]
pub fn write_samples_with(
    teacher: &Model,
    rows: u64,
    ids_per_table: usize,
    dist: IdDist,
    seed: u64,
    ids_out: IdOutput,
    exec: &Executor,
    out: &mut dyn Write,
) -> Result<u64> {
    let cfg = &teacher.config;
    let mut ws = Workspace::default();
    let mut clicks = 0u64;
    let mut line = String::new();
    let mut done = 0u64;
    let mut c = 0u64;
    while done < rows {
        let n = (rows - done).min(CHUNK as u64) as usize;
        let mut batch = synth_batch(cfg, n, ids_per_table, dist, chunk_seed(seed, c, 1))?;
        if ids_out.drift != 0.0 {
            let f = done as f64 / rows as f64;
            let bags = batch
                .bags()
                .iter()
                .zip(&cfg.tables)
                .map(|(b, &r)| {
                    let shift =
                        ((f * ids_out.drift * r as f64).floor() as i64).rem_euclid(r as i64) as u64;
                    dlrs_model::Bags {
                        offsets: b.offsets.clone(),
                        ids: b
                            .ids
                            .iter()
                            .map(|&j| ((j as u64 + shift) % r as u64) as u32)
                            .collect(),
                    }
                })
                .collect();
            batch = dlrs_model::Batch::from_parts(cfg, n, batch.dense().to_vec(), bags)?;
        }
        let scores = teacher.forward(&batch, &mut ws, exec)?;
        let mut rng = SmallRng::seed_from_u64(chunk_seed(seed, c, 2));
        let nd = cfg.n_dense();
        for (i, &p) in scores.iter().enumerate() {
            let label = u8::from(rng.random::<f32>() < p);
            clicks += label as u64;
            line.clear();
            line.push_str("{\"dense\":[");
            for (j, v) in batch.dense()[i * nd..(i + 1) * nd].iter().enumerate() {
                if j > 0 {
                    line.push(',');
                }
                line.push_str(&format!("{v}"));
            }
            line.push_str("],\"sparse\":[");
            for (t, bags) in batch.bags().iter().enumerate() {
                if t > 0 {
                    line.push(',');
                }
                line.push('[');
                let ids = &bags.ids[bags.offsets[i] as usize..bags.offsets[i + 1] as usize];
                for (k, &id) in ids.iter().enumerate() {
                    if k > 0 {
                        line.push(',');
                    }
                    match ids_out.raw {
                        Some(teach) => line.push_str(&synth_raw_id(teach, t, id).to_string()),
                        None => line.push_str(&id.to_string()),
                    }
                }
                line.push(']');
            }
            line.push_str(&format!("],\"label\":{label}}}\n"));
            out.write_all(line.as_bytes()).map_err(TrainError::Output)?;
        }
        done += n as u64;
        c += 1;
    }
    Ok(clicks)
}

/// Turns a random model into a teacher with a learnable signal: table values rescaled from
/// the reference init U(±sqrt(1/rows)) to U(±emb_scale) (so ids matter as much as dense
/// features, whatever the table size), and the final layer (weights and bias) multiplied by
/// `logit_scale` (a sharper click probability).
pub fn sharpen(model: &mut Model, emb_scale: f32, logit_scale: f32) {
    use rayon::prelude::*;
    for t in &mut model.weights.tables {
        let k = emb_scale * (t.rows() as f32).sqrt();
        crate::optim::table_f32_mut(t)
            .par_chunks_mut(1 << 16)
            .for_each(|c| c.iter_mut().for_each(|v| *v *= k));
    }
    if let Some(l) = model.weights.top.last_mut() {
        let (w, b) = l.params_mut();
        w.iter_mut()
            .chain(b.iter_mut())
            .for_each(|v| *v *= logit_scale);
        l.pack();
    }
}

/// Where the teacher's architecture comes from.
enum Arch<'a> {
    Preset(&'a str),
    Model(&'a std::path::Path),
}

/// `dlrs synth`, with the summary line on stdout (logged instead when the samples go to
/// stdout).
pub fn synth(cfg: SynthConfig) -> Result<()> {
    let stdout = std::io::stdout();
    run_synth(&cfg, &mut stdout.lock())
}

/// `dlrs synth`, with the summary line to `log` (logged instead when the samples go to
/// stdout, `out` = `-`).
pub fn run_synth(cfg: &SynthConfig, log: &mut dyn Write) -> Result<()> {
    let arch = exactly_one(
        &["preset", "model"],
        [
            cfg.preset.as_deref().map(Arch::Preset),
            cfg.model.as_deref().map(Arch::Model),
        ],
    )?;
    let dist = IdDist::parse(&cfg.dist)?;
    let exec = Executor::new(cfg.threads)?;
    if !(cfg.ctr > 0.0 && cfg.ctr < 1.0) {
        return Err(TrainError::setting("ctr", "must be between 0 and 1"));
    }
    let shape = TeacherShape {
        emb_scale: cfg.emb_scale,
        logit_scale: cfg.logit_scale,
        ctr: cfg.ctr,
    };
    let seed = cfg.seed.unwrap_or(cfg.teacher);
    if !cfg.drift.is_finite() {
        return Err(TrainError::setting("drift", "must be a finite number"));
    }
    let ids_out = IdOutput {
        raw: cfg.raw_ids.then_some(cfg.teacher),
        drift: cfg.drift,
    };
    let (teacher, ids) = match arch {
        Arch::Preset(name) => {
            let (c, preset_ids) = preset_config(name, cfg.rows_cap)?;
            let ids = cfg.ids_per_table.unwrap_or(preset_ids);
            let m = exec.install(|| Model::random(c, cfg.teacher))?;
            (make_teacher(m, shape, ids, dist, cfg.teacher, &exec)?, ids)
        }
        Arch::Model(dir) => {
            let ids = cfg.ids_per_table.unwrap_or(1);
            let load = || {
                Model::load(dir).map_err(|err| TrainError::Load {
                    dir: dir.to_path_buf(),
                    err,
                })
            };
            if cfg.use_weights {
                (load()?, ids)
            } else {
                let m = load()?;
                let m = exec.install(|| Model::random(m.config.clone(), cfg.teacher))?;
                (make_teacher(m, shape, ids, dist, cfg.teacher, &exec)?, ids)
            }
        }
    };
    if let Some(dir) = &cfg.save_teacher {
        teacher.save(dir).map_err(|err| TrainError::SaveTeacher {
            dir: dir.clone(),
            err,
        })?;
    }
    let to_stdout = cfg.out.as_os_str() == "-";
    let t0 = Instant::now();
    let clicks = if to_stdout {
        let stdout = std::io::stdout();
        let mut w = BufWriter::new(stdout.lock());
        let c = write_samples_with(&teacher, cfg.rows, ids, dist, seed, ids_out, &exec, &mut w)?;
        w.flush().map_err(TrainError::Output)?;
        c
    } else {
        let mut clicks = 0;
        dlrs_model::weights::atomic_write(&cfg.out, |tmp| {
            let f = BufWriter::with_capacity(1 << 20, std::fs::File::create(tmp)?);
            let write = |w: &mut dyn Write| {
                write_samples_with(&teacher, cfg.rows, ids, dist, seed, ids_out, &exec, w).map_err(
                    |e| match e {
                        // the file's own error: atomic_write names the file
                        TrainError::Output(e) => e,
                        e => std::io::Error::other(e),
                    },
                )
            };
            if cfg.out.extension().is_some_and(|e| e == "gz") {
                let mut enc = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
                clicks = write(&mut enc)?;
                enc.finish()?.flush()?;
            } else {
                let mut f = f;
                clicks = write(&mut f)?;
                f.flush()?;
            }
            Ok(())
        })?;
        clicks
    };
    let msg = format!(
        "wrote {} samples ({} clicks, ctr {:.4}) to {} in {:.1}s",
        cfg.rows,
        clicks,
        clicks as f64 / cfg.rows.max(1) as f64,
        cfg.out.display(),
        t0.elapsed().as_secs_f64()
    );
    if to_stdout {
        tracing::info!("{msg}");
    } else {
        writeln!(log, "{msg}").map_err(TrainError::Output)?;
    }
    Ok(())
}
