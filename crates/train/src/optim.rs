//! Optimizers, with PyTorch's / FBGEMM's update rules.
//!
//! Dense parameters (MLP weights and biases):
//! - `sgd`: `w -= lr * g` (torch.optim.SGD, no momentum).
//! - `adagrad`: `s += g^2; w -= lr * g / (sqrt(s) + 1e-10)` (torch.optim.Adagrad defaults).
//! - `adam`: torch.optim.Adam defaults (betas 0.9, 0.999, eps 1e-8, bias-corrected):
//!   `m += (1 - b1)(g - m); v = b2 v + (1 - b2) g^2;
//!    w -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.
//!
//! Embedding tables, on the rows of the batch only (the gradient is sparse and coalesced:
//! a row's occurrences are summed first):
//! - `sgd`: `w_r -= lr * g_r`.
//! - `adagrad`: element-wise, as torch.optim.Adagrad on a sparse gradient:
//!   `s_r += g_r^2; w_r -= lr * g_r / (sqrt(s_r) + 1e-10)`.
//! - `rowwise-adagrad`: one accumulator per row, FBGEMM's `EXACT_ROWWISE_ADAGRAD` (TorchRec's
//!   default for tables): `s_r += mean(g_r^2); w_r -= lr / (sqrt(s_r) + 1e-8) * g_r`.

use std::collections::HashMap;
use std::path::Path;

use dlrs_model::tables::EmbeddingTable;
use dlrs_model::{Batch, Model};
use rayon::prelude::*;
use safetensors::tensor::{Dtype, SafeTensors, View};

use crate::error::{Result, TrainError};
use crate::net::{Grads, SparseGrad};

/// Epsilon of `adagrad` (torch.optim.Adagrad's default).
pub const ADAGRAD_EPS: f32 = 1e-10;
/// Epsilon of `rowwise-adagrad` (FBGEMM's default).
pub const ROWWISE_EPS: f32 = 1e-8;
pub const ADAM_BETA1: f64 = 0.9;
pub const ADAM_BETA2: f64 = 0.999;
pub const ADAM_EPS: f32 = 1e-8;
/// The safetensors metadata key of the optimizer description (a JSON object).
pub const META_KEY: &str = "dlrs_optimizer";

/// The optimizer of the embedding tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SparseOptimizer {
    Sgd,
    Adagrad,
    RowwiseAdagrad,
}

/// The optimizer of the MLPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenseOptimizer {
    Sgd,
    Adagrad,
    Adam,
}

impl SparseOptimizer {
    pub fn name(self) -> &'static str {
        match self {
            SparseOptimizer::Sgd => "sgd",
            SparseOptimizer::Adagrad => "adagrad",
            SparseOptimizer::RowwiseAdagrad => "rowwise-adagrad",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Sgd, Self::Adagrad, Self::RowwiseAdagrad]
            .into_iter()
            .find(|o| o.name() == s)
    }
}

impl DenseOptimizer {
    pub fn name(self) -> &'static str {
        match self {
            DenseOptimizer::Sgd => "sgd",
            DenseOptimizer::Adagrad => "adagrad",
            DenseOptimizer::Adam => "adam",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Sgd, Self::Adagrad, Self::Adam]
            .into_iter()
            .find(|o| o.name() == s)
    }
    fn slots(self) -> &'static [&'static str] {
        match self {
            DenseOptimizer::Sgd => &[],
            DenseOptimizer::Adagrad => &["sum"],
            DenseOptimizer::Adam => &["exp_avg", "exp_avg_sq"],
        }
    }
}

/// Optimizer settings and state for one model.
pub struct Optimizer {
    pub sparse: SparseOptimizer,
    pub dense: DenseOptimizer,
    /// learning rate of the tables
    pub sparse_lr: f32,
    /// learning rate of the MLPs
    pub dense_lr: f32,
    /// steps taken (Adam's bias correction uses it)
    pub step: u64,
    /// per dense parameter in state-dict order (bot_l weight, bias, .., top_l ..): its slots
    dense_state: Vec<Vec<Vec<f32>>>,
    /// per table: `[rows * D]` (adagrad), `[rows]` (rowwise-adagrad) or empty (sgd)
    sparse_state: Vec<Vec<f32>>,
    /// per table: its rows
    table_rows: Vec<usize>,
}

/// Optimizer state tensors `(name, shape, values)`.
type StateTensors<'a> = Vec<(String, Vec<usize>, &'a [f32])>;

/// The state-dict names of the dense parameters, in order.
pub fn dense_param_names(model: &Model) -> Vec<String> {
    let mut v = Vec::new();
    for (prefix, n) in [
        ("bot_l", model.weights.bot.len()),
        ("top_l", model.weights.top.len()),
    ] {
        for i in 0..n {
            v.push(format!("{prefix}.{}.weight", 2 * i));
            v.push(format!("{prefix}.{}.bias", 2 * i));
        }
    }
    v
}

fn dense_params(model: &mut Model) -> Vec<&mut [f32]> {
    let w = &mut model.weights;
    w.bot
        .iter_mut()
        .chain(w.top.iter_mut())
        .flat_map(|l| {
            let (w, b) = l.params_mut();
            [w, b]
        })
        .collect()
}

fn dense_grads(g: &Grads) -> Vec<&Vec<f32>> {
    g.bot
        .iter()
        .chain(&g.top)
        .flat_map(|l| [&l.dw, &l.db])
        .collect()
}

/// An fp32 table's values, writable.
pub fn table_f32_mut(t: &mut EmbeddingTable) -> &mut [f32] {
    let b = t.bytes_mut();
    assert_eq!(b.as_ptr() as usize % 4, 0, "fp32 table not 4-byte aligned");
    // SAFETY: the start is 4-byte aligned (asserted); the slice covers len / 4 whole f32s of
    // initialised bytes, exclusively borrowed from the table for the returned lifetime; any
    // bit pattern is a valid f32.
    unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr() as *mut f32, b.len() / 4) }
}

impl Optimizer {
    /// Fresh (zero) state for `model`, one learning rate for tables and MLPs.
    pub fn new(model: &Model, sparse: SparseOptimizer, dense: DenseOptimizer, lr: f32) -> Self {
        Self::with_rates(model, sparse, dense, lr, lr)
    }

    /// Fresh (zero) state for `model`: tables at `sparse_lr`, MLPs at `dense_lr`.
    pub fn with_rates(
        model: &Model,
        sparse: SparseOptimizer,
        dense: DenseOptimizer,
        sparse_lr: f32,
        dense_lr: f32,
    ) -> Self {
        let w = &model.weights;
        let dense_state = w
            .bot
            .iter()
            .chain(&w.top)
            .flat_map(|l| [l.weight().len(), l.bias().len()])
            .map(|n| dense.slots().iter().map(|_| vec![0.0f32; n]).collect())
            .collect();
        let sparse_state = w
            .tables
            .iter()
            .map(|t| match sparse {
                SparseOptimizer::Sgd => Vec::new(),
                SparseOptimizer::Adagrad => vec![0.0f32; t.rows() * t.dim()],
                SparseOptimizer::RowwiseAdagrad => vec![0.0f32; t.rows()],
            })
            .collect();
        Optimizer {
            sparse,
            dense,
            sparse_lr,
            dense_lr,
            step: 0,
            dense_state,
            sparse_state,
            table_rows: w.tables.iter().map(|t| t.rows()).collect(),
        }
    }

    /// The per-row accumulators of table `t` (`rowwise-adagrad`), or its element-wise sums
    /// (`adagrad`).
    pub fn table_state(&self, t: usize) -> &[f32] {
        &self.sparse_state[t]
    }

    /// Values of optimizer state per row of table `t` (0 for SGD).
    fn row_width(&self, t: usize, rows: usize) -> usize {
        self.sparse_state[t].len() / rows.max(1)
    }

    /// Zeroes the optimizer state of `rows` of table `t` (rows given to new ids).
    pub fn reset_rows(&mut self, t: usize, rows: &[u32]) {
        let n = self.table_rows(t);
        let w = self.row_width(t, n);
        for &r in rows {
            self.sparse_state[t][r as usize * w..][..w].fill(0.0);
        }
    }

    /// Row `r` of table `t`'s optimizer state.
    pub fn row_state(&self, t: usize, r: u32) -> Vec<f32> {
        let w = self.row_width(t, self.table_rows(t));
        self.sparse_state[t][r as usize * w..][..w].to_vec()
    }

    /// Sets row `r` of table `t`'s optimizer state.
    pub fn set_row_state(&mut self, t: usize, r: u32, v: &[f32]) {
        let w = self.row_width(t, self.table_rows(t));
        self.sparse_state[t][r as usize * w..][..w].copy_from_slice(v);
    }

    fn table_rows(&self, t: usize) -> usize {
        self.table_rows[t]
    }

    /// Applies one step of gradients to `model`.
    pub fn step(&mut self, model: &mut Model, grads: &Grads) {
        self.dense_step(model, grads);
        let sparse = self.sparse;
        let sparse_lr = self.sparse_lr;
        let d = model.config.dim;
        model
            .weights
            .tables
            .par_iter_mut()
            .zip(&grads.emb)
            .zip(self.sparse_state.par_iter_mut())
            .for_each(|((table, g), st)| {
                sparse_update(sparse, sparse_lr, d, table_f32_mut(table), g, st);
            });
    }

    /// One step whose table gradients are still per bag (`sparse` must be SGD): the MLPs from
    /// `grads`, and every id of bag (b, t) of `batch` moved by `-lr` times that bag's gradient,
    /// `pooled[b * F * D + (t + 1) * D..][..D]`, one occurrence at a time in the batch's order.
    /// That is how PyTorch applies a sparse gradient to a dense table (`add_` of an uncoalesced
    /// tensor is an `index_add_`). For SGD it equals [`step`](Self::step) on the coalesced
    /// gradient up to the order of the float additions, without building that gradient.
    pub fn step_pooled(&mut self, model: &mut Model, grads: &Grads, batch: &Batch, pooled: &[f32]) {
        assert_eq!(
            self.sparse,
            SparseOptimizer::Sgd,
            "per-bag table gradients need SGD"
        );
        self.dense_step(model, grads);
        let (lr, d, width) = (
            self.sparse_lr,
            model.config.dim,
            model.config.features_width(),
        );
        assert_eq!(
            pooled.len(),
            batch.size() * width,
            "pooled gradients do not fit the batch"
        );
        model
            .weights
            .tables
            .par_iter_mut()
            .zip(batch.bags())
            .enumerate()
            .for_each(|(t, (table, bag))| {
                sgd_from_bags(
                    lr,
                    d,
                    table_f32_mut(table),
                    &bag.offsets,
                    &bag.ids,
                    &pooled[(t + 1) * d..],
                    width,
                );
            });
    }

    /// The step count and the MLPs' update.
    fn dense_step(&mut self, model: &mut Model, grads: &Grads) {
        self.step += 1;
        let lr = self.dense_lr;
        let dense = self.dense;
        let t = self.step;
        let params = dense_params(model);
        let gs = dense_grads(grads);
        assert_eq!(params.len(), gs.len(), "gradients do not fit the model");
        params
            .into_par_iter()
            .zip(gs)
            .zip(self.dense_state.par_iter_mut())
            .for_each(|((p, g), st)| {
                dense_update(dense, lr, t, p, g, st);
            });
        // the forward reads the packed weights: pack the updated ones
        model.weights.pack_layers();
    }

    /// The state as safetensors tensors (name, shape, data) plus metadata.
    fn tensors<'a>(&'a self, model: &Model) -> (StateTensors<'a>, HashMap<String, String>) {
        let mut v = Vec::new();
        for ((name, slots), shape) in dense_param_names(model)
            .into_iter()
            .zip(&self.dense_state)
            .zip(dense_shapes(model))
        {
            for (slot, data) in self.dense.slots().iter().zip(slots) {
                v.push((format!("{name}.{slot}"), shape.clone(), data.as_slice()));
            }
        }
        for (t, st) in self.sparse_state.iter().enumerate() {
            let tab = &model.weights.tables[t];
            match self.sparse {
                SparseOptimizer::Sgd => {}
                SparseOptimizer::Adagrad => v.push((
                    format!("emb_l.{t}.weight.sum"),
                    vec![tab.rows(), tab.dim()],
                    st,
                )),
                SparseOptimizer::RowwiseAdagrad => {
                    v.push((format!("emb_l.{t}.weight.momentum1"), vec![tab.rows()], st))
                }
            }
        }
        // one entry: a HashMap of several would serialize in a random order, and a checkpoint
        // must be byte-identical for identical state
        let info = serde_json::json!({
            "format": "dlrs-optimizer",
            "optimizer": self.sparse.name(),
            "dense_optimizer": self.dense.name(),
            "step": self.step,
            "sparse_lr": self.sparse_lr.to_string(),
            "dense_lr": self.dense_lr.to_string(),
        });
        let meta = HashMap::from([(META_KEY.to_string(), info.to_string())]);
        (v, meta)
    }

    /// Writes the state as a safetensors file, atomically (temp, fsync, rename).
    pub fn save(&self, model: &Model, path: &Path) -> Result<()> {
        let (tensors, meta) = self.tensors(model);
        let views: Vec<(String, F32View)> = tensors
            .into_iter()
            .map(|(n, shape, data)| {
                (
                    n,
                    F32View {
                        shape,
                        data: f32_bytes(data),
                    },
                )
            })
            .collect();
        dlrs_model::weights::atomic_write(path, |tmp| {
            safetensors::tensor::serialize_to_file(views, Some(meta), tmp)
                .map_err(std::io::Error::other)
        })?;
        Ok(())
    }

    /// Reads a state written by [`save`](Self::save) for `model`; the optimizers named in it
    /// must be `sparse` and `dense`. The learning rates are the caller's (the training state
    /// holds the ones a resume must match).
    pub fn load(
        model: &Model,
        path: &Path,
        sparse: SparseOptimizer,
        dense: DenseOptimizer,
        sparse_lr: f32,
        dense_lr: f32,
    ) -> Result<Self> {
        // mapped, not read: the state of full Adagrad is as large as the tables
        let (file, _) =
            dlrs_model::files::open_regular(path).map_err(TrainError::io("opening", path))?;
        // SAFETY: mapped read-only; checkpoints are replaced by rename, never in place, so the
        // mapping keeps seeing the file it opened (another program truncating it in place
        // would fault, as with any mmap reader).
        let bytes =
            unsafe { memmap2::Mmap::map(&file) }.map_err(TrainError::io("mapping", path))?;
        let bad = |msg: String| TrainError::checkpoint(path, msg);
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let info: serde_json::Value = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| {
                bad(format!(
                    "not a dlrs optimizer state (no `{META_KEY}` metadata)"
                ))
            })?;
        let get = |k: &str| -> Result<String> {
            match &info[k] {
                serde_json::Value::String(s) => Ok(s.clone()),
                serde_json::Value::Number(n) => Ok(n.to_string()),
                _ => Err(bad(format!("metadata `{k}` missing"))),
            }
        };
        if get("format")? != "dlrs-optimizer" {
            return Err(bad("not a dlrs optimizer state".into()));
        }
        for (k, want) in [
            ("optimizer", sparse.name()),
            ("dense_optimizer", dense.name()),
        ] {
            let got = get(k)?;
            if got != want {
                return Err(bad(format!(
                    "the checkpoint was trained with --{} {got}, not {want}",
                    k.replace('_', "-")
                )));
            }
        }
        let step: u64 = get("step")?
            .parse()
            .map_err(|e| bad(format!("bad step: {e}")))?;
        let mut opt = Optimizer::with_rates(model, sparse, dense, sparse_lr, dense_lr);
        opt.step = step;
        let (expected, _) = opt.tensors(model);
        let expected: Vec<(String, Vec<usize>)> =
            expected.into_iter().map(|(n, s, _)| (n, s)).collect();
        let mut names: Vec<&str> = st.names();
        names.retain(|n| !expected.iter().any(|(e, _)| e == n));
        if let Some(n) = names.first() {
            return Err(bad(format!(
                "unexpected tensor `{n}` for this model and optimizer"
            )));
        }
        let mut datas: Vec<&mut Vec<f32>> = opt
            .dense_state
            .iter_mut()
            .flat_map(|s| s.iter_mut())
            .chain(opt.sparse_state.iter_mut().filter(|s| !s.is_empty()))
            .collect();
        assert_eq!(datas.len(), expected.len());
        for ((name, shape), dst) in expected.iter().zip(datas.iter_mut()) {
            let v = st
                .tensor(name)
                .map_err(|_| bad(format!("tensor `{name}` missing")))?;
            if v.dtype() != Dtype::F32 || v.shape() != shape.as_slice() {
                return Err(bad(format!(
                    "tensor `{name}`: {:?} {:?}, expected F32 {:?}",
                    v.dtype(),
                    v.shape(),
                    shape
                )));
            }
            for (d, s) in dst.iter_mut().zip(v.data().chunks_exact(4)) {
                *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
        }
        Ok(opt)
    }
}

fn dense_shapes(model: &Model) -> Vec<Vec<usize>> {
    let w = &model.weights;
    w.bot
        .iter()
        .chain(&w.top)
        .flat_map(|l| [vec![l.out_w, l.in_w], vec![l.out_w]])
        .collect()
}

/// One dense parameter's update.
pub fn dense_update(
    opt: DenseOptimizer,
    lr: f32,
    step: u64,
    p: &mut [f32],
    g: &[f32],
    st: &mut [Vec<f32>],
) {
    assert_eq!(p.len(), g.len());
    match opt {
        DenseOptimizer::Sgd => {
            for (w, g) in p.iter_mut().zip(g) {
                *w -= lr * g;
            }
        }
        DenseOptimizer::Adagrad => {
            for ((w, g), s) in p.iter_mut().zip(g).zip(st[0].iter_mut()) {
                *s += g * g;
                *w -= lr * g / (s.sqrt() + ADAGRAD_EPS);
            }
        }
        DenseOptimizer::Adam => {
            let bc1 = 1.0 - ADAM_BETA1.powi(step as i32);
            let bc2 = 1.0 - ADAM_BETA2.powi(step as i32);
            let step_size = (lr as f64 / bc1) as f32;
            let bc2_sqrt = bc2.sqrt() as f32;
            let (b1, b2) = (ADAM_BETA1 as f32, ADAM_BETA2 as f32);
            let (m, v) = st.split_at_mut(1);
            for (((w, &g), m), v) in p
                .iter_mut()
                .zip(g)
                .zip(m[0].iter_mut())
                .zip(v[0].iter_mut())
            {
                *m += (1.0 - b1) * (g - *m);
                *v = *v * b2 + (1.0 - b2) * g * g;
                let denom = v.sqrt() / bc2_sqrt + ADAM_EPS;
                *w -= step_size * *m / denom;
            }
        }
    }
}

/// SGD on one table straight from its bags' gradients: each id of bag `s` (`ids[offsets[s]
/// ..offsets[s + 1]]`) takes `w -= lr * pooled[s * stride..][..d]`, in bag order.
pub fn sgd_from_bags(
    lr: f32,
    d: usize,
    table: &mut [f32],
    offsets: &[u32],
    ids: &[u32],
    pooled: &[f32],
    stride: usize,
) {
    let bags = offsets.len().saturating_sub(1);
    if bags == 0 {
        return;
    }
    assert!(
        pooled.len() >= (bags - 1) * stride + d,
        "pooled gradients too short"
    );
    let n = offsets[bags] as usize;
    assert!(offsets[0] == 0 && n <= ids.len());
    let rows = table.len() / d;
    // as sparse_update: rows are random in a large table, so ask for one a few ids ahead
    const AHEAD: usize = 16;
    let row_bytes = d * std::mem::size_of::<f32>();
    let mut k = 0usize;
    for (s, w) in offsets.windows(2).enumerate() {
        let g = &pooled[s * stride..s * stride + d];
        for &id in &ids[w[0] as usize..w[1] as usize] {
            if let Some(&next) = ids[..n].get(k + AHEAD) {
                dlrs_kernels::prefetch::row(
                    table.as_ptr().cast(),
                    next as usize,
                    row_bytes,
                    row_bytes,
                );
            }
            k += 1;
            let r = id as usize;
            assert!(r < rows, "id {r} out of the table's {rows} rows");
            for (w, g) in table[r * d..r * d + d].iter_mut().zip(g) {
                *w -= lr * g;
            }
        }
    }
}

/// One table's update from its coalesced gradient.
pub fn sparse_update(
    opt: SparseOptimizer,
    lr: f32,
    d: usize,
    table: &mut [f32],
    g: &SparseGrad,
    st: &mut [f32],
) {
    // the rows are random in a large table: ask for a row a few updates ahead (each update
    // is a few dozen instructions, far shorter than a miss to memory)
    const AHEAD: usize = 16;
    let row_bytes = d * std::mem::size_of::<f32>();
    for (k, &id) in g.ids.iter().enumerate() {
        if let Some(&next) = g.ids.get(k + AHEAD) {
            dlrs_kernels::prefetch::row(table.as_ptr().cast(), next as usize, row_bytes, row_bytes);
            match opt {
                SparseOptimizer::Sgd => {}
                SparseOptimizer::Adagrad => dlrs_kernels::prefetch::row(
                    st.as_ptr().cast(),
                    next as usize,
                    row_bytes,
                    row_bytes,
                ),
                SparseOptimizer::RowwiseAdagrad => {
                    dlrs_kernels::prefetch::row(st.as_ptr().cast(), next as usize, 4, 4)
                }
            }
        }
        let r = id as usize;
        let gr = &g.values[k * d..k * d + d];
        let w = &mut table[r * d..r * d + d];
        match opt {
            SparseOptimizer::Sgd => {
                for (w, g) in w.iter_mut().zip(gr) {
                    *w -= lr * g;
                }
            }
            SparseOptimizer::Adagrad => {
                for ((w, g), s) in w.iter_mut().zip(gr).zip(&mut st[r * d..r * d + d]) {
                    *s += g * g;
                    *w -= lr * g / (s.sqrt() + ADAGRAD_EPS);
                }
            }
            SparseOptimizer::RowwiseAdagrad => {
                let mean_sq = gr.iter().map(|g| g * g).sum::<f32>() / d as f32;
                st[r] += mean_sq;
                let mult = lr / (st[r].sqrt() + ROWWISE_EPS);
                for (w, g) in w.iter_mut().zip(gr) {
                    *w -= mult * g;
                }
            }
        }
    }
}

struct F32View<'a> {
    shape: Vec<usize>,
    data: &'a [u8],
}

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

pub(crate) fn f32_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and every byte is initialised; u8 has alignment 1 and the
    // byte slice covers exactly `v`'s memory for the same lifetime.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}
