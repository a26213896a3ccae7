//! Forward pass with saved activations, BCE loss and backward pass of the reference DLRM.
//!
//! Forward (B samples, F = tables + 1 feature vectors of width D):
//!
//! ```text
//! a_0 = dense; a_l = relu(a_{l-1} W_l^T + b_l)          bottom layers, the last one is x [B, D]
//! e_t = sum of table_t rows of bag t                    [B, D]
//! features = [x, e_1, .., e_k]                          [B, F * D]
//! R = features (cat) | [x, Z[i][j] for i > j] (dot)     Z = T T^T per sample
//! h_l = relu(h_{l-1} V_l^T + c_l) ...; p = sigmoid(last) top layers
//! loss = mean_b BCE(p_b, y_b)                           as torch.nn.BCELoss (logs clamped at -100)
//! ```
//!
//! Backward follows PyTorch's autograd formulas (so one SGD step matches it to rounding):
//! `dL/dp = (p - y) / max(p (1 - p), 1e-12) / B`, then the sigmoid's `dz = dL/dp * (1 - p) * p`;
//! per layer `dW = dz^T a`, `db = sum_b dz`, `da = dz W`, and ReLU passes `da` where its output
//! is positive. The dot interaction sends `g_ij T_j` to `T_i` and `g_ij T_i` to `T_j`
//! (`2 g_ii T_i` on the diagonal). Embedding gradients are sparse: for each id in a bag, the
//! bag's pooled gradient; duplicate ids within a batch are summed (coalesced, as PyTorch
//! coalesces a sparse gradient), giving one gradient row per distinct id, in id order.
//!
//! Samples are independent until the weight gradients are summed, so a batch is split into
//! contiguous row ranges, one per thread, and each thread runs forward and backward for its
//! range in micro-batches of [`MICRO_BATCH`] rows (the activations stay in cache), with
//! single-threaded GEMMs accumulating its own weight gradients. The ranges' gradients are
//! then summed in range order, so a step is deterministic for a given thread count.

use dlrs_kernels::grad::{column_sums, relu_backward_sums};
use dlrs_kernels::interaction::dot_interaction_backward;
use dlrs_kernels::mlp::{Activation, LinearShape, linear};
use dlrs_model::config::{Interaction, RowFormat};
use dlrs_model::forward::{dot_shape, dot_top_input};
use dlrs_model::weights::Layer;
use dlrs_model::{Batch, DlrmConfig, Model};
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
/// Rows below which a batch is not split across threads.
const MIN_ROWS_PER_THREAD: usize = 16;

/// One thread's buffers: activations of one micro-batch, and its share of the weight
/// gradients.
#[derive(Default)]
struct ThreadBuffers {
    /// outputs of the bottom layers but the last (which writes x into `features`)
    bot_acts: Vec<Vec<f32>>,
    /// `[m, F * D]`: x then the pooled embeddings
    features: Vec<f32>,
    /// `[m, interaction width]` (dot only)
    inter: Vec<f32>,
    /// outputs of the top layers but the last
    top_acts: Vec<Vec<f32>>,
    dz: Vec<f32>,
    da: Vec<f32>,
    dinter: Vec<f32>,
    bot: Vec<LayerGrad>,
    top: Vec<LayerGrad>,
}

/// Buffers of a training step, reused across steps (nothing allocated once warm).
#[derive(Default)]
pub struct TrainWorkspace {
    threads: Vec<ThreadBuffers>,
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

fn gemm_par(threads: usize) -> gemm::Parallelism {
    if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// Layer inputs narrower than this get their weight gradient as `dw^T` ([`grad_weight`]).
const NARROW_IN: usize = 64;

thread_local! {
    /// `dw^T` of a narrow-input layer, reused across calls.
    static NARROW_DWT: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `dw[out, in] (+)= dz^T a` with `dz: [m, out]` (row stride `ldz`), `a: [m, in]` (stride
/// `lda`); `accumulate` adds to `dw` instead of overwriting it.
#[allow(clippy::too_many_arguments)]
pub fn grad_weight(
    dz: &[f32],
    ldz: usize,
    a: &[f32],
    lda: usize,
    m: usize,
    out: usize,
    inp: usize,
    dw: &mut [f32],
    accumulate: bool,
    threads: usize,
) {
    assert_eq!(dw.len(), out * inp);
    if m == 0 {
        if !accumulate {
            dw.fill(0.0);
        }
        return;
    }
    assert!(ldz >= out && lda >= inp);
    assert!(dz.len() >= (m - 1) * ldz + out && a.len() >= (m - 1) * lda + inp);
    if inp < NARROW_IN && out >= 64 && m >= 64 {
        // a narrow input (the 13 dense features): as `dw [out, in]`, gemm's vector lanes run
        // along `in` (one 16-lane tile, 13 used) and it packs all of dz; as `dw^T [in, out]`
        // they run along `out`, unit stride in dz (m = 1024, out = 512: 187-227 us -> 108 us)
        NARROW_DWT.with_borrow_mut(|dwt| {
            dwt.resize(inp * out, 0.0);
            // SAFETY: by the asserts above: lhs = dz^T as out x m with element (o, b) at
            // dz[b * ldz + o] (row step 1, column step ldz); rhs = a as m x in with element
            // (b, j) at a[b * lda + j] (row step lda, column step 1); dst = dwt as out x in
            // with element (o, j) at dwt[j * out + o] (row step 1, column step out), inside
            // its inp * out floats. dwt is a thread-local buffer aliasing neither input.
            unsafe {
                gemm::gemm(
                    out,
                    inp,
                    m,
                    dwt.as_mut_ptr(),
                    out as isize,
                    1,
                    false,
                    dz.as_ptr(),
                    ldz as isize,
                    1,
                    a.as_ptr(),
                    1,
                    lda as isize,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm_par(threads),
                );
            }
            for (o, row) in dw.chunks_exact_mut(inp).enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    let g = dwt[j * out + o];
                    *v = if accumulate { *v + g } else { g };
                }
            }
        });
        return;
    }
    // SAFETY: the asserts above prove every element addressed lies inside its slice:
    // lhs = dz^T is out x m, element (o, b) at dz[b * ldz + o] (row step 1, column step ldz);
    // rhs = a is m x in, element (b, j) at a[b * lda + j] (row step lda, column step 1);
    // dst = dw is out x in row-major. dw is exclusively borrowed and aliases neither input.
    // read_dst = accumulate: dw = 1 * dw + dz^T a, or dw = dz^T a.
    unsafe {
        gemm::gemm(
            out,
            inp,
            m,
            dw.as_mut_ptr(),
            1,
            inp as isize,
            accumulate,
            dz.as_ptr(),
            ldz as isize,
            1,
            a.as_ptr(),
            1,
            lda as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm_par(threads),
        );
    }
}

/// `da[m, in] = dz w` with `dz: [m, out]` (stride `ldz`), `w: [out, in]` row-major, `da`
/// row stride `ldda` (overwritten).
#[allow(clippy::too_many_arguments)]
pub fn grad_input(
    dz: &[f32],
    ldz: usize,
    w: &[f32],
    m: usize,
    out: usize,
    inp: usize,
    da: &mut [f32],
    ldda: usize,
    threads: usize,
) {
    if m == 0 || inp == 0 {
        return;
    }
    assert_eq!(w.len(), out * inp);
    assert!(ldz >= out && ldda >= inp);
    assert!(dz.len() >= (m - 1) * ldz + out && da.len() >= (m - 1) * ldda + inp);
    if out == 0 {
        for r in 0..m {
            da[r * ldda..r * ldda + inp].fill(0.0);
        }
        return;
    }
    // SAFETY: by the asserts, lhs = dz is m x out (row step ldz, column step 1), rhs = w is
    // out x in row-major (row step in, column step 1), dst = da is m x in (row step ldda);
    // all addressed elements are inside their slices and da aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            inp,
            out,
            da.as_mut_ptr(),
            1,
            ldda as isize,
            false,
            dz.as_ptr(),
            1,
            ldz as isize,
            w.as_ptr(),
            1,
            inp as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm_par(threads),
        );
    }
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
        let n_ranges = threads.max(1).min(b / MIN_ROWS_PER_THREAD).max(1);
        if self.threads.len() < n_ranges {
            self.threads.resize_with(n_ranges, ThreadBuffers::default);
        }
        for tb in &mut self.threads[..n_ranges] {
            size_grads(&w.bot, &mut tb.bot);
            size_grads(&w.top, &mut tb.top);
        }
        let inv_b = if b > 0 { 1.0 / b as f32 } else { 0.0 };
        if n_ranges == 1 {
            // a small batch: one range, its GEMMs may use the pool
            run_range(
                model,
                batch,
                labels,
                0,
                b,
                inv_b,
                &mut self.threads[0],
                &mut self.scores,
                &mut self.dfeatures[..b * fw],
                threads,
            );
        } else {
            let bounds: Vec<usize> = (0..=n_ranges).map(|i| b * i / n_ranges).collect();
            let mut jobs = Vec::with_capacity(n_ranges);
            let (mut sc, mut df) = (&mut self.scores[..b], &mut self.dfeatures[..b * fw]);
            for (i, tb) in self.threads[..n_ranges].iter_mut().enumerate() {
                let n = bounds[i + 1] - bounds[i];
                let (s0, s1) = std::mem::take(&mut sc).split_at_mut(n);
                let (d0, d1) = std::mem::take(&mut df).split_at_mut(n * fw);
                jobs.push((bounds[i], bounds[i + 1], tb, s0, d0));
                sc = s1;
                df = d1;
            }
            jobs.into_par_iter().for_each(|(r0, r1, tb, s, d)| {
                run_range(model, batch, labels, r0, r1, inv_b, tb, s, d, 1)
            });
        }
        let g = &mut self.grads;
        size_grads(&w.bot, &mut g.bot);
        size_grads(&w.top, &mut g.top);
        let used = &self.threads[..n_ranges];
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

/// Rows `r0..r1` on one thread, micro-batch by micro-batch: `scores` and `dfeat` are the
/// range's rows of the batch-wide buffers.
#[allow(clippy::too_many_arguments)]
fn run_range(
    model: &Model,
    batch: &Batch,
    labels: &[f32],
    r0: usize,
    r1: usize,
    inv_b: f32,
    tb: &mut ThreadBuffers,
    scores: &mut [f32],
    dfeat: &mut [f32],
    gemm_threads: usize,
) {
    let fw = model.config.features_width();
    let mut c0 = r0;
    let mut first = true;
    if r0 == r1 {
        // no rows: zero gradients
        for g in tb.bot.iter_mut().chain(tb.top.iter_mut()) {
            g.dw.fill(0.0);
            g.db.fill(0.0);
        }
        return;
    }
    while c0 < r1 {
        let c1 = (c0 + MICRO_BATCH).min(r1);
        let (a, b) = (c0 - r0, c1 - r0);
        micro_batch(
            model,
            batch,
            labels,
            c0,
            c1,
            inv_b,
            tb,
            &mut scores[a..b],
            &mut dfeat[a * fw..b * fw],
            !first,
            gemm_threads,
        );
        first = false;
        c0 = c1;
    }
}

/// Forward and backward of rows `r0..r1`; weight gradients added to the thread's when
/// `accumulate`.
#[allow(clippy::too_many_arguments)]
fn micro_batch(
    model: &Model,
    batch: &Batch,
    labels: &[f32],
    r0: usize,
    r1: usize,
    inv_b: f32,
    tb: &mut ThreadBuffers,
    scores: &mut [f32],
    dfeat: &mut [f32],
    accumulate: bool,
    threads: usize,
) {
    let cfg: &DlrmConfig = &model.config;
    let w = &model.weights;
    let m = r1 - r0;
    let d = cfg.dim;
    let fw = cfg.features_width();
    let iw = cfg.interaction_width();
    let nd = cfg.n_dense();
    let (nb, nt) = (w.bot.len(), w.top.len());
    ensure(&mut tb.features, m * fw);
    tb.bot_acts.resize_with(nb - 1, Vec::new);
    tb.top_acts.resize_with(nt - 1, Vec::new);
    let widest = w
        .bot
        .iter()
        .chain(&w.top)
        .map(|l| l.out_w.max(l.in_w))
        .max()
        .unwrap_or(1);
    ensure(&mut tb.dz, m * widest);
    ensure(&mut tb.da, m * widest);

    // ---- forward ----
    // embedding bags, pooled into their columns of `features`
    for (t, (table, bag)) in w.tables.iter().zip(batch.bags()).enumerate() {
        table.bag_sum(
            &bag.offsets[r0..=r1],
            &bag.ids,
            &mut tb.features[(t + 1) * d..],
            fw,
        );
    }
    // bottom MLP, ReLU after every layer, the last writing x into `features`
    let dense = &batch.dense()[r0 * nd..r1 * nd];
    for (l, layer) in w.bot.iter().enumerate() {
        let (prev, rest) = tb.bot_acts.split_at_mut(l.min(nb - 1));
        let (src, ld): (&[f32], usize) = if l == 0 {
            (dense, nd)
        } else {
            (&prev[l - 1], w.bot[l - 1].out_w)
        };
        if l == nb - 1 {
            let shape = LinearShape {
                m,
                k: layer.in_w,
                n: layer.out_w,
                ldx: ld,
                ldy: fw,
            };
            linear(
                src,
                &layer.weight,
                &layer.bias,
                &mut tb.features,
                shape,
                Activation::Relu,
                threads,
            );
        } else {
            let dst = &mut rest[0];
            ensure(dst, m * layer.out_w);
            let shape = LinearShape {
                m,
                k: layer.in_w,
                n: layer.out_w,
                ldx: ld,
                ldy: layer.out_w,
            };
            linear(
                src,
                &layer.weight,
                &layer.bias,
                dst,
                shape,
                Activation::Relu,
                threads,
            );
        }
    }
    // interaction
    if cfg.interaction == Interaction::Dot {
        ensure(&mut tb.inter, m * iw);
        dot_top_input(cfg, &tb.features, m, &mut tb.inter);
    }
    // top MLP: ReLU between layers, sigmoid at the end
    for (l, layer) in w.top.iter().enumerate() {
        let (prev, rest) = tb.top_acts.split_at_mut(l.min(nt - 1));
        let (src, ld): (&[f32], usize) = if l == 0 {
            match cfg.interaction {
                Interaction::Cat => (&tb.features, fw),
                Interaction::Dot => (&tb.inter, iw),
            }
        } else {
            (&prev[l - 1], w.top[l - 1].out_w)
        };
        if l == nt - 1 {
            let shape = LinearShape {
                m,
                k: layer.in_w,
                n: 1,
                ldx: ld,
                ldy: 1,
            };
            linear(
                src,
                &layer.weight,
                &layer.bias,
                scores,
                shape,
                Activation::Sigmoid,
                threads,
            );
        } else {
            let dst = &mut rest[0];
            ensure(dst, m * layer.out_w);
            let shape = LinearShape {
                m,
                k: layer.in_w,
                n: layer.out_w,
                ldx: ld,
                ldy: layer.out_w,
            };
            linear(
                src,
                &layer.weight,
                &layer.bias,
                dst,
                shape,
                Activation::Relu,
                threads,
            );
        }
    }

    // ---- backward ----
    // BCE (mean over the whole batch) then sigmoid, as autograd computes them
    for ((dz, &p), &y) in tb.dz.iter_mut().zip(scores.iter()).zip(&labels[r0..r1]) {
        let dp = inv_b * (p - y) / ((1.0 - p) * p).max(1e-12);
        *dz = dp * (1.0 - p) * p;
    }
    // top MLP
    for l in (0..nt).rev() {
        let layer = &w.top[l];
        let (src, ld): (&[f32], usize) = if l == 0 {
            match cfg.interaction {
                Interaction::Cat => (&tb.features, fw),
                Interaction::Dot => (&tb.inter, iw),
            }
        } else {
            (&tb.top_acts[l - 1], layer.in_w)
        };
        let (g, below) = with_below(&mut tb.top, &tb.top_acts, l);
        layer_backward(
            layer,
            src,
            ld,
            m,
            below,
            &mut tb.dz,
            &mut tb.da,
            g,
            l == nt - 1,
            accumulate,
            threads,
        );
        if l == 0 {
            match cfg.interaction {
                Interaction::Cat => grad_input(
                    &tb.dz,
                    layer.out_w,
                    &layer.weight,
                    m,
                    layer.out_w,
                    layer.in_w,
                    dfeat,
                    fw,
                    threads,
                ),
                Interaction::Dot => {
                    ensure(&mut tb.dinter, m * iw);
                    grad_input(
                        &tb.dz,
                        layer.out_w,
                        &layer.weight,
                        m,
                        layer.out_w,
                        layer.in_w,
                        &mut tb.dinter,
                        iw,
                        threads,
                    );
                }
            }
        }
    }
    // dot interaction backward: the pairs' gradients back to the features, then x's own
    // gradient (it also feeds the top MLP directly, as the first D inputs)
    if cfg.interaction == Interaction::Dot {
        dot_interaction_backward(&tb.features, &tb.dinter[d..], dfeat, dot_shape(cfg, m));
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
            let x = tb.features[r * fw + c];
            tb.dz[r * d + c] = if x > 0.0 { dfeat[r * fw + c] } else { 0.0 };
        }
    }
    for l in (0..nb).rev() {
        let layer = &w.bot[l];
        let (src, ld): (&[f32], usize) = if l == 0 {
            (dense, nd)
        } else {
            (&tb.bot_acts[l - 1], layer.in_w)
        };
        let (g, below) = with_below(&mut tb.bot, &tb.bot_acts, l);
        layer_backward(
            layer,
            src,
            ld,
            m,
            below,
            &mut tb.dz,
            &mut tb.da,
            g,
            l == nb - 1,
            accumulate,
            threads,
        );
    }
}

/// Layer `l`'s gradient, and for `l > 0` what [`layer_backward`] needs of the layer below:
/// its ReLU output `acts[l - 1]` (layer `l`'s input) and its bias gradient.
fn with_below<'a>(
    grads: &'a mut [LayerGrad],
    acts: &'a [Vec<f32>],
    l: usize,
) -> (&'a mut LayerGrad, Option<(&'a [f32], &'a mut [f32])>) {
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
    src: &[f32],
    ld: usize,
    m: usize,
    below: Option<(&[f32], &mut [f32])>,
    dz: &mut Vec<f32>,
    da: &mut Vec<f32>,
    g: &mut LayerGrad,
    own_db: bool,
    accumulate: bool,
    threads: usize,
) {
    grad_weight(
        dz,
        layer.out_w,
        src,
        ld,
        m,
        layer.out_w,
        layer.in_w,
        &mut g.dw,
        accumulate,
        threads,
    );
    if own_db {
        column_sums(dz, layer.out_w, m, &mut g.db, accumulate);
    }
    if let Some((a, lower_db)) = below {
        grad_input(
            dz,
            layer.out_w,
            &layer.weight,
            m,
            layer.out_w,
            layer.in_w,
            da,
            layer.in_w,
            threads,
        );
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

    fn vals(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104729) % 61) as f32 - 30.0) / 17.0)
            .collect()
    }

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

    proptest! {
        /// Both GEMM layouts of the weight gradient (the narrow-input one needs m >= 64 and
        /// out >= 64) and the input gradient against f64 sums, with padded strides.
        #[test]
        fn layer_gradients_match_reference(m in prop_oneof![1usize..20, 64usize..100],
                                           out in prop_oneof![1usize..20, 64usize..80],
                                           inp in prop_oneof![1usize..20, 60usize..70],
                                           pad in 0usize..3, accumulate: bool, threads in 1usize..3) {
            let (ldz, lda) = (out + pad, inp + pad);
            let dz = vals(m * ldz, 1);
            let a = vals(m * lda, 2);
            let w = vals(out * inp, 3);
            let start = vals(out * inp, 4);
            let mut dw = start.clone();
            grad_weight(&dz, ldz, &a, lda, m, out, inp, &mut dw, accumulate, threads);
            for o in 0..out {
                for j in 0..inp {
                    let s: f64 = (0..m).map(|b| dz[b * ldz + o] as f64 * a[b * lda + j] as f64).sum();
                    let want = s + if accumulate { start[o * inp + j] as f64 } else { 0.0 };
                    let got = dw[o * inp + j] as f64;
                    prop_assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "dw[{}][{}]: {} vs {}", o, j, got, want);
                }
            }
            let mut da = vec![9.0f32; m * lda];
            grad_input(&dz, ldz, &w, m, out, inp, &mut da, lda, threads);
            for b in 0..m {
                for j in 0..lda {
                    let got = da[b * lda + j] as f64;
                    if j >= inp {
                        prop_assert_eq!(got, 9.0, "padding written at row {} column {}", b, j);
                        continue;
                    }
                    let want: f64 = (0..out).map(|o| dz[b * ldz + o] as f64 * w[o * inp + j] as f64).sum();
                    prop_assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "da[{}][{}]: {} vs {}", b, j, got, want);
                }
            }
        }
    }
}
