//! Training's forward and backward of the reference DLRM, with the BCE loss.
//!
//! The forward is the serving forward ([`dlrs_model::forward::forward_range`]) run with its
//! activations kept ([`Activations::for_training`]); this module adds the loss and the
//! backward (B samples, F = tables + 1 feature vectors of width D):
//!
//! ```text
//! loss = mean_b BCE(p_b, y_b)                           as torch.nn.BCELoss (logs clamped at -100)
//! ```
//!
//! Backward follows PyTorch's autograd formulas (so one SGD step matches it to rounding):
//! `dL/dp = (p - y) / max(p (1 - p), 1e-12) / B`, then the sigmoid's `dz = dL/dp * (1 - p) * p`;
//! per layer `dW = dz^T a`, `db = sum_b dz`, `da = dz W` (`dlrs_kernels::mlp::grad_weight`,
//! `grad_input`), and ReLU passes `da` where its output is positive. The dot interaction
//! sends `g_ij T_j` to `T_i` and `g_ij T_i` to `T_j` (`2 g_ii T_i` on the diagonal).
//! Embedding gradients are sparse: for each id in a bag, the bag's pooled gradient; duplicate
//! ids within a batch are summed (coalesced, as PyTorch coalesces a sparse gradient), giving
//! one gradient row per distinct id, in id order.
//!
//! Samples are independent until the weight gradients are summed, so a batch is split into
//! the forward's row ranges ([`dlrs_model::forward::row_ranges`]), one per thread, and each
//! thread runs forward and backward for its range in micro-batches of [`MICRO_BATCH`] rows
//! (the activations stay in cache), with single-threaded GEMMs accumulating its own weight
//! gradients. The ranges' gradients are then summed in range order, so a step is
//! deterministic for a given thread count.

use std::ops::Range;

use dlrs_kernels::grad::{column_sums, relu_backward_sums};
use dlrs_kernels::interaction::dot_interaction_backward;
use dlrs_kernels::mlp::{LinearShape, grad_input, grad_weight};
use dlrs_model::config::{Interaction, RowFormat};
use dlrs_model::forward::{
    Activations, dot_shape, forward_range, prepare_tables, row_ranges, run_split,
};
use dlrs_model::tables::{Staging, TableView};
use dlrs_model::weights::Layer;
use dlrs_model::{Batch, Model};
use rayon::prelude::*;

use crate::error::{Result, TrainError};

/// Gradient of one `nn.Linear`: `dw [out, in]` row-major, `db [out]`.
#[derive(Clone, Debug, Default)]
pub struct LayerGrad {
    pub dw: Vec<f32>,
    pub db: Vec<f32>,
}

/// The coalesced gradient of one table: distinct ids in increasing order, one row of D per id.
#[derive(Clone, Debug, Default)]
pub struct SparseGrad {
    pub ids: Vec<u32>,
    /// `[ids.len(), D]` row-major
    pub values: Vec<f32>,
    /// scratch: `(id << 32) | sample` per occurrence
    keys: Vec<u64>,
    /// scratch of [`sort_keys`]
    scratch: Vec<u64>,
}

/// All gradients of one step (mean over the batch).
#[derive(Clone, Debug, Default)]
pub struct Grads {
    pub bot: Vec<LayerGrad>,
    pub top: Vec<LayerGrad>,
    pub emb: Vec<SparseGrad>,
}

/// Rows a thread takes at a time (the weight gradients of successive micro-batches
/// accumulate). Large: each GEMM call packs its weight operand again, and at 128 rows that
/// packing cost more than keeping activations in L2 saved (batch 2048, 2 threads: 1024 rows
/// gave +7% samples/s over 128; 256 and 512 fell between).
pub const MICRO_BATCH: usize = 1024;

/// One thread's buffers: the forward's activations of one micro-batch, the backward's
/// scratch, and its share of the weight gradients.
struct ThreadBuffers {
    acts: Activations,
    dz: Vec<f32>,
    da: Vec<f32>,
    dinter: Vec<f32>,
    bot: Vec<LayerGrad>,
    top: Vec<LayerGrad>,
}

impl Default for ThreadBuffers {
    fn default() -> Self {
        ThreadBuffers {
            acts: Activations::for_training(),
            dz: Vec::new(),
            da: Vec::new(),
            dinter: Vec::new(),
            bot: Vec::new(),
            top: Vec::new(),
        }
    }
}

/// Buffers of a training step, reused across steps (nothing allocated once warm).
#[derive(Default)]
pub struct TrainWorkspace {
    threads: Vec<ThreadBuffers>,
    staging: Vec<Staging>,
    /// click probabilities `[B]` of the last step
    scores: Vec<f32>,
    /// `[B, F * D]`: gradient of the features (the pooled embeddings' columns feed the tables)
    dfeatures: Vec<f32>,
    /// gradients of the last step
    pub grads: Grads,
    batch: usize,
    /// F * D of the last step's model
    width: usize,
}

/// Checks that a model can be trained: every table fp32 and held in memory (writable).
pub fn check_trainable(model: &Model) -> Result<()> {
    if model.config.mlp_dtype != dlrs_model::MlpDtype::F32 {
        return Err(TrainError::Setting {
            flag: "model",
            msg: format!(
                "has {} MLP weights: training needs fp32 (train in fp32, then `dlrs quantize --mlp-dtype {}` the result)",
                model.config.mlp_dtype.name(),
                model.config.mlp_dtype.name()
            ),
        });
    }
    for (t, (f, table)) in model
        .config
        .table_formats
        .iter()
        .zip(&model.weights.tables)
        .enumerate()
    {
        let not_trainable = |msg: String| Err(TrainError::NotTrainable { table: t, msg });
        if *f != RowFormat::F32 {
            return not_trainable(format!(
                "is {}: training needs fp32 tables (train in fp32, then `dlrs quantize` the result)",
                f.name()
            ));
        }
        if table.is_mapped() {
            return not_trainable(
                "is memory-mapped (read-only): load the model with TableMode::Ram to train it"
                    .into(),
            );
        }
        if !(table.bytes().as_ptr() as usize).is_multiple_of(4) {
            return not_trainable("is not 4-byte aligned".into());
        }
    }
    Ok(())
}

/// One sample's BCE as torch.nn.BCELoss computes it in f32 (logs clamped at -100).
#[inline]
pub fn bce(p: f32, y: f32) -> f32 {
    (y - 1.0) * (-p).ln_1p().max(-100.0) - y * p.ln().max(-100.0)
}

fn ensure(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

fn size_grads(ls: &[Layer], gs: &mut Vec<LayerGrad>) {
    gs.resize_with(ls.len(), LayerGrad::default);
    for (l, lg) in ls.iter().zip(gs.iter_mut()) {
        lg.dw.resize(l.out_w * l.in_w, 0.0);
        lg.db.resize(l.out_w, 0.0);
    }
}

/// `dst = sum of srcs` in order (deterministic for a given thread count), in chunks across
/// the pool (one thread summing 474k floats was ~2% of a step with the other core idle).
fn reduce_into(dst: &mut [LayerGrad], srcs: &[&Vec<LayerGrad>]) {
    const CHUNK: usize = 16 << 10;
    let sum = |l: usize, c: usize, out: &mut [f32], field: fn(&LayerGrad) -> &Vec<f32>| {
        let r = c * CHUNK..c * CHUNK + out.len();
        out.copy_from_slice(&field(&srcs[0][l])[r.clone()]);
        for s in &srcs[1..] {
            out.iter_mut()
                .zip(&field(&s[l])[r.clone()])
                .for_each(|(a, b)| *a += b);
        }
    };
    dst.par_iter_mut().enumerate().for_each(|(l, g)| {
        g.dw.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, out)| sum(l, c, out, |g| &g.dw));
        g.db.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, out)| sum(l, c, out, |g| &g.db));
    });
}

impl TrainWorkspace {
    pub fn new() -> Self {
        Self::default()
    }

    /// The click probabilities of the last step's batch (before its update).
    pub fn scores(&self) -> &[f32] {
        &self.scores[..self.batch]
    }

    /// Mean BCE loss of the last step against `labels` (f64 sum of f32 terms).
    pub fn loss(&self, labels: &[f32]) -> f64 {
        assert_eq!(labels.len(), self.batch);
        if self.batch == 0 {
            return 0.0;
        }
        let s: f64 = self.scores[..self.batch]
            .iter()
            .zip(labels)
            .map(|(&p, &y)| bce(p, y) as f64)
            .sum();
        s / self.batch as f64
    }

    /// Forward and backward of the mean BCE loss over `batch`: fills
    /// [`grads`](Self::grads) and [`scores`](Self::scores); returns the loss. Runs on the
    /// current rayon pool: `threads` threads each take a contiguous range of rows, in
    /// micro-batches of [`MICRO_BATCH`], and their weight gradients are summed in thread order.
    pub fn forward_backward(
        &mut self,
        model: &Model,
        batch: &Batch,
        labels: &[f32],
        threads: usize,
    ) -> f64 {
        let loss = self.forward_backward_mlps(model, batch, labels, threads);
        self.coalesce_tables(model, batch);
        loss
    }

    /// [`forward_backward`](Self::forward_backward) up to the pooled embeddings' gradients:
    /// the MLP gradients land in [`grads`](Self::grads), and each bag's gradient stays in
    /// [`pooled_grads`](Self::pooled_grads) (the tables' [`SparseGrad`]s are not built).
    pub fn forward_backward_mlps(
        &mut self,
        model: &Model,
        batch: &Batch,
        labels: &[f32],
        threads: usize,
    ) -> f64 {
        let cfg = &model.config;
        let b = batch.size();
        assert_eq!(labels.len(), b, "one label per sample");
        self.batch = b;
        let fw = cfg.features_width();
        self.width = fw;
        let w = &model.weights;
        self.scores.resize(b, 0.0);
        ensure(&mut self.dfeatures, b * fw);
        let tables = model.table_views();
        prepare_tables(model, &tables, batch, &mut self.staging)
            .expect("training tables are in memory and unchecked: preparing them cannot fail");
        let ranges = row_ranges(b, threads);
        let n = ranges.len();
        if self.threads.len() < n {
            self.threads.resize_with(n, ThreadBuffers::default);
        }
        for tb in &mut self.threads[..n] {
            size_grads(&w.bot, &mut tb.bot);
            size_grads(&w.top, &mut tb.top);
        }
        let step = Step {
            model,
            tables: &tables,
            staging: &self.staging,
            batch,
            labels,
            inv_b: if b > 0 { 1.0 / b as f32 } else { 0.0 },
        };
        let mut jobs = Vec::with_capacity(n);
        let (mut sc, mut df) = (&mut self.scores[..b], &mut self.dfeatures[..b * fw]);
        for (r, tb) in ranges.into_iter().zip(&mut self.threads) {
            let (s0, s1) = std::mem::take(&mut sc).split_at_mut(r.len());
            let (d0, d1) = std::mem::take(&mut df).split_at_mut(r.len() * fw);
            jobs.push((r, tb, s0, d0));
            sc = s1;
            df = d1;
        }
        run_split(jobs, threads, |(r, tb, s, d), gemm_threads| {
            step.run_range(r, tb, s, d, gemm_threads)
        });
        let g = &mut self.grads;
        size_grads(&w.bot, &mut g.bot);
        size_grads(&w.top, &mut g.top);
        let used = &self.threads[..n];
        reduce_into(&mut g.bot, &used.iter().map(|t| &t.bot).collect::<Vec<_>>());
        reduce_into(&mut g.top, &used.iter().map(|t| &t.top).collect::<Vec<_>>());
        self.loss(labels)
    }

    /// The tables' sparse gradients from the last [`forward_backward_mlps`](Self::forward_backward_mlps)
    /// on `batch`: coalesced per table (tables in parallel).
    pub fn coalesce_tables(&mut self, model: &Model, batch: &Batch) {
        let cfg = &model.config;
        let (d, fw) = (cfg.dim, cfg.features_width());
        let g = &mut self.grads;
        g.emb.resize_with(cfg.n_tables(), SparseGrad::default);
        let dfeatures = &self.dfeatures;
        g.emb
            .par_iter_mut()
            .zip(batch.bags())
            .enumerate()
            .for_each(|(t, (sg, bag))| {
                sg.coalesce(&bag.offsets, &bag.ids, &dfeatures[(t + 1) * d..], fw, d);
            });
    }

    /// The gradient of every bag of the last step: `[B, F * D]` row-major, bag (b, t) at
    /// `[b * F * D + (t + 1) * D..][..D]` (the first D columns are x's).
    pub fn pooled_grads(&self) -> &[f32] {
        &self.dfeatures[..self.batch * self.width]
    }
}

/// What every range of one training step shares.
struct Step<'a> {
    model: &'a Model,
    tables: &'a [TableView<'a>],
    staging: &'a [Staging],
    batch: &'a Batch,
    labels: &'a [f32],
    /// 1 / B: the loss is the batch mean
    inv_b: f32,
}

impl Step<'_> {
    /// Rows `r` on one thread, micro-batch by micro-batch: `scores` and `dfeat` are the
    /// range's rows of the batch-wide buffers.
    fn run_range(
        &self,
        r: Range<usize>,
        tb: &mut ThreadBuffers,
        scores: &mut [f32],
        dfeat: &mut [f32],
        gemm_threads: usize,
    ) {
        let fw = self.model.config.features_width();
        if r.is_empty() {
            // no rows: zero gradients
            for g in tb.bot.iter_mut().chain(tb.top.iter_mut()) {
                g.dw.fill(0.0);
                g.db.fill(0.0);
            }
            return;
        }
        let mut c0 = r.start;
        while c0 < r.end {
            let c1 = (c0 + MICRO_BATCH).min(r.end);
            let (a, b) = (c0 - r.start, c1 - r.start);
            let scores = &mut scores[a..b];
            forward_range(
                self.model,
                self.tables,
                self.staging,
                self.batch,
                c0..c1,
                &mut tb.acts,
                scores,
                gemm_threads,
            );
            self.backward(
                c0..c1,
                tb,
                scores,
                &mut dfeat[a * fw..b * fw],
                c0 > r.start,
                gemm_threads,
            );
            c0 = c1;
        }
    }

    /// The backward of rows `rows` from the activations of their forward; weight gradients
    /// added to the thread's when `accumulate`.
    fn backward(
        &self,
        rows: Range<usize>,
        tb: &mut ThreadBuffers,
        scores: &[f32],
        dfeat: &mut [f32],
        accumulate: bool,
        threads: usize,
    ) {
        let cfg = &self.model.config;
        let w = &self.model.weights;
        let m = rows.len();
        let d = cfg.dim;
        let fw = cfg.features_width();
        let iw = cfg.interaction_width();
        let nd = cfg.n_dense();
        let widest = w
            .bot
            .iter()
            .chain(&w.top)
            .map(|l| l.out_w.max(l.in_w))
            .max()
            .unwrap_or(1);
        ensure(&mut tb.dz, m * widest);
        ensure(&mut tb.da, m * widest);
        let acts = &tb.acts;
        // the top MLP's input: the features (cat) or the interaction (dot)
        let (top_in, ld_top): (&[f32], usize) = match cfg.interaction {
            Interaction::Cat => (&acts.features, fw),
            Interaction::Dot => (&acts.interaction, iw),
        };

        // BCE (mean over the whole batch) then sigmoid, as autograd computes them
        for ((dz, &p), &y) in tb
            .dz
            .iter_mut()
            .zip(scores.iter())
            .zip(&self.labels[rows.clone()])
        {
            let dp = self.inv_b * (p - y) / ((1.0 - p) * p).max(1e-12);
            *dz = dp * (1.0 - p) * p;
        }
        // top MLP; then the gradient of its input, from layer 0's output gradient left in dz
        let top_w = &w.top;
        mlp_backward(
            top_w,
            &mut tb.top,
            &acts.top,
            (top_in, ld_top),
            m,
            (&mut tb.dz, &mut tb.da),
            accumulate,
            threads,
        );
        let (dst, ldd) = match cfg.interaction {
            Interaction::Cat => (&mut *dfeat, fw),
            Interaction::Dot => {
                ensure(&mut tb.dinter, m * iw);
                (&mut tb.dinter[..], iw)
            }
        };
        let shape = LinearShape {
            m,
            k: top_w[0].in_w,
            n: top_w[0].out_w,
            ldx: ldd,
            ldy: top_w[0].out_w,
        };
        grad_input(&tb.dz, top_w[0].weight(), dst, shape, threads);
        // dot interaction backward: the pairs' gradients back to the features, then x's own
        // gradient (it also feeds the top MLP directly, as the first D inputs)
        if cfg.interaction == Interaction::Dot {
            dot_interaction_backward(&acts.features, &tb.dinter[d..], dfeat, dot_shape(cfg, m));
            for i in 0..m {
                for (o, g) in dfeat[i * fw..i * fw + d]
                    .iter_mut()
                    .zip(&tb.dinter[i * iw..i * iw + d])
                {
                    *o += g;
                }
            }
        }
        // bottom MLP: x = features[:, 0..D] had a ReLU
        for r in 0..m {
            for c in 0..d {
                let x = acts.features[r * fw + c];
                tb.dz[r * d + c] = if x > 0.0 { dfeat[r * fw + c] } else { 0.0 };
            }
        }
        let dense = &self.batch.dense()[rows.start * nd..rows.end * nd];
        mlp_backward(
            &w.bot,
            &mut tb.bot,
            &acts.bottom,
            (dense, nd),
            m,
            (&mut tb.dz, &mut tb.da),
            accumulate,
            threads,
        );
    }
}

/// The backward of an MLP whose output gradient is in `dz`: each layer's weight and bias
/// gradients into `grads` (`accumulate`: added), the gradient passed down through the ReLUs
/// (the hidden layers' outputs, `hidden`). `input` is the first layer's input (with its
/// row stride); at the end `dz` holds the first layer's output gradient.
#[allow(clippy::too_many_arguments)]
fn mlp_backward(
    layers: &[Layer],
    grads: &mut [LayerGrad],
    hidden: &[Vec<f32>],
    input: (&[f32], usize),
    m: usize,
    (dz, da): (&mut [f32], &mut [f32]),
    accumulate: bool,
    threads: usize,
) {
    let n = layers.len();
    for l in (0..n).rev() {
        let layer = &layers[l];
        let src = if l == 0 {
            input
        } else {
            (&hidden[l - 1][..], layer.in_w)
        };
        let (g, below) = with_below(grads, hidden, l);
        layer_backward(
            layer,
            src,
            m,
            below,
            (&mut *dz, &mut *da),
            g,
            (l == n - 1, accumulate),
            threads,
        );
    }
}

/// What [`layer_backward`] needs of the layer below a hidden layer: its ReLU output (the
/// layer's input) and its bias gradient.
type Below<'a> = Option<(&'a [f32], &'a mut [f32])>;

/// Layer `l`'s gradient, and for `l > 0` what [`layer_backward`] needs of the layer below:
/// its ReLU output `acts[l - 1]` (layer `l`'s input) and its bias gradient.
fn with_below<'a>(
    grads: &'a mut [LayerGrad],
    acts: &'a [Vec<f32>],
    l: usize,
) -> (&'a mut LayerGrad, Below<'a>) {
    let (lower, here) = grads.split_at_mut(l);
    let below = lower
        .last_mut()
        .map(|g| (acts[l - 1].as_slice(), g.db.as_mut_slice()));
    (&mut here[0], below)
}

/// One `nn.Linear` backward: `dW` from `dz` and the layer's input `src` (row stride `ld`),
/// and `db` when `own_db` (otherwise the layer above made it with the mask below); then, for a
/// hidden layer whose input came out of a ReLU (`below` = that ReLU's output and the lower
/// layer's bias gradient), the input gradient through that ReLU, left in `dz` for the layer
/// below, and the lower layer's bias gradient from it in the same pass.
#[allow(clippy::too_many_arguments)]
fn layer_backward(
    layer: &Layer,
    (src, ld): (&[f32], usize),
    m: usize,
    below: Below,
    (dz, da): (&mut [f32], &mut [f32]),
    g: &mut LayerGrad,
    (own_db, accumulate): (bool, bool),
    threads: usize,
) {
    let shape = LinearShape {
        m,
        k: layer.in_w,
        n: layer.out_w,
        ldx: ld,
        ldy: layer.out_w,
    };
    grad_weight(dz, src, &mut g.dw, shape, accumulate, threads);
    if own_db {
        column_sums(dz, layer.out_w, m, &mut g.db, accumulate);
    }
    if let Some((a, lower_db)) = below {
        let shape = LinearShape {
            ldx: layer.in_w,
            ..shape
        };
        grad_input(dz, layer.weight(), da, shape, threads);
        debug_assert_eq!(lower_db.len(), layer.in_w);
        relu_backward_sums(dz, da, a, m, lower_db, accumulate);
    }
}

impl SparseGrad {
    /// Coalesces the gradient of a table: `dpooled[b * stride ..][..d]` is bag b's gradient;
    /// each id occurrence receives it, and the occurrences of an id are summed in sample order.
    pub fn coalesce(
        &mut self,
        offsets: &[u32],
        ids: &[u32],
        dpooled: &[f32],
        stride: usize,
        d: usize,
    ) {
        self.keys.clear();
        for (s, w) in offsets.windows(2).enumerate() {
            self.keys.extend(
                ids[w[0] as usize..w[1] as usize]
                    .iter()
                    .map(|&id| ((id as u64) << 32) | s as u64),
            );
        }
        sort_keys(&mut self.keys, &mut self.scratch);
        self.ids.clear();
        self.values.clear();
        let mut last = u64::MAX;
        // the rows are read in id order, i.e. at random samples: fetch them ahead
        const AHEAD: usize = 8;
        let base = dpooled.as_ptr().cast::<u8>();
        for &k in self.keys.iter().take(AHEAD) {
            dlrs_kernels::prefetch::row(base, (k & 0xffff_ffff) as usize, stride * 4, d * 4);
        }
        for (i, &k) in self.keys.iter().enumerate() {
            if let Some(&ahead) = self.keys.get(i + AHEAD) {
                dlrs_kernels::prefetch::row(
                    base,
                    (ahead & 0xffff_ffff) as usize,
                    stride * 4,
                    d * 4,
                );
            }
            let id = k >> 32;
            let s = (k & 0xffff_ffff) as usize;
            let row = &dpooled[s * stride..s * stride + d];
            if id != last {
                self.ids.push(id as u32);
                self.values.extend_from_slice(row);
                last = id;
            } else {
                let n = self.values.len();
                for (v, g) in self.values[n - d..].iter_mut().zip(row) {
                    *v += g;
                }
            }
        }
    }
}

/// Sorts `(id << 32) | sample` keys whose samples already increase in slice order, as
/// `sort_unstable` would: a stable least-significant-digit radix sort on the id's bits only,
/// 8 bits a pass (at 2048 keys of a 10M-row table, three passes of two sweeps each instead of
/// a comparison sort's ~11 compares per key).
fn sort_keys(keys: &mut Vec<u64>, scratch: &mut Vec<u64>) {
    let Some(max) = keys.iter().map(|k| k >> 32).max() else {
        return;
    };
    let bits = 64 - max.leading_zeros() as usize;
    scratch.resize(keys.len(), 0);
    let mut shift = 32;
    while shift < 32 + bits {
        let mut count = [0usize; 256];
        for &k in keys.iter() {
            count[((k >> shift) & 0xff) as usize] += 1;
        }
        let mut at = 0;
        for c in count.iter_mut() {
            let n = *c;
            *c = at;
            at += n;
        }
        for &k in keys.iter() {
            let b = ((k >> shift) & 0xff) as usize;
            scratch[count[b]] = k;
            count[b] += 1;
        }
        std::mem::swap(keys, scratch);
        shift += 8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Keys with samples in increasing order (as `coalesce` builds them) sort exactly as
        /// `sort_unstable` sorts them, ids of 0 to 32 bits.
        #[test]
        fn radix_sort_matches_sort(ids in proptest::collection::vec(0u64..u64::MAX, 0..600), bits in 0u32..=32) {
            let mut keys: Vec<u64> = ids.iter().enumerate()
                .map(|(s, &id)| ((id >> (64 - bits.max(1))) * u64::from(bits > 0)) << 32 | s as u64)
                .collect();
            let mut want = keys.clone();
            want.sort_unstable();
            sort_keys(&mut keys, &mut Vec::new());
            prop_assert_eq!(keys, want);
        }
    }
}
