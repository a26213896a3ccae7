//! `dlrs._dlrs`: the Python module over dlrs's library crates (the package `dlrs`
//! re-exports it; `python/dlrs/__init__.py` adds `from_torch`).
//!
//! Inputs are taken without copying where the library's types allow it (see
//! [`inputs`]): the dense features and int32 ids and offsets are read in place through the
//! buffer protocol (torch tensors through DLPack, as NumPy views); int64 ids are narrowed
//! to the tables' `u32` row numbers with the range check fused into that one pass. All of
//! it, and the forward pass, runs with the GIL released. Errors are Python exceptions that
//! carry the library's messages; a panic is caught and raised as `dlrs.ModelError`.

mod inputs;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use dlrs_model::{
    DlrmConfig, Executor, MlpDtype, Model as Net, RowFormat, TableMode, Verified, Workspace,
};
use dlrs_train::checkpoint::TrainState;
use dlrs_train::optim::{DenseOptimizer, SparseOptimizer};
use dlrs_train::{TrainConfig, TrainError};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyException, PyFileNotFoundError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList};

use crate::inputs::{Arr, Inputs};

pyo3::create_exception!(
    dlrs,
    ModelError,
    PyException,
    "A model directory, its config or its tensors are wrong (the message names the field, tensor or table), or the library failed."
);

/// The Python exception for a library error: bad inputs are `ValueError`, a missing file
/// `FileNotFoundError`, the rest `dlrs.ModelError`; the message is the library's.
fn model_err(e: dlrs_model::ModelError) -> PyErr {
    let msg = e.to_string();
    err_as(&e, msg)
}

/// The exception class `e` maps to, with message `msg`.
fn err_as(e: &dlrs_model::ModelError, msg: String) -> PyErr {
    use dlrs_model::ModelError as E;
    match e {
        E::Input { .. } | E::UnknownPreset(_) => PyValueError::new_err(msg),
        E::Io { err, .. } if err.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(msg)
        }
        _ => ModelError::new_err(msg),
    }
}

fn train_err(e: TrainError) -> PyErr {
    match e {
        TrainError::Model(m) => model_err(m),
        TrainError::Load { dir, err } => {
            let msg = format!("loading {}: {err}", dir.display());
            err_as(&err, msg)
        }
        e @ (TrainError::Setting { .. } | TrainError::FlagGroup { .. }) => {
            PyValueError::new_err(e.to_string())
        }
        e => ModelError::new_err(e.to_string()),
    }
}

/// Runs `f`, turning a panic into `dlrs.ModelError` (nothing unwinds into Python).
fn no_panic<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        Err(ModelError::new_err(format!("internal error: {msg}")))
    })
}

fn threads_or_all(threads: Option<usize>) -> PyResult<usize> {
    match threads {
        Some(0) => Err(PyValueError::new_err("threads: must be at least 1")),
        Some(t) => Ok(t),
        None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
    }
}

/// `numpy.empty(n, dtype=numpy.float32)`.
fn empty_f32<'py>(py: Python<'py>, n: usize) -> PyResult<Bound<'py, PyAny>> {
    static EMPTY: PyOnceLock<(Py<PyAny>, Py<PyAny>)> = PyOnceLock::new();
    let (empty, f32) = EMPTY.get_or_try_init(py, || -> PyResult<_> {
        let np = py.import("numpy")?;
        Ok((
            np.getattr("empty")?.unbind(),
            np.getattr("float32")?.unbind(),
        ))
    })?;
    empty.bind(py).call1((n, f32.bind(py)))
}

/// A float32 NumPy array holding `values`.
fn to_numpy<'py>(py: Python<'py>, values: &[f32]) -> PyResult<Bound<'py, PyAny>> {
    let out = empty_f32(py, values.len())?;
    PyBuffer::<f32>::get(&out)?.copy_from_slice(py, values)?;
    Ok(out)
}

fn json_to_py<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
    py.import("json")?.call_method1("loads", (text,))
}

/// A DLRM loaded from a model directory, ready to predict.
///
/// `Model.load(dir, tables="mmap", threads=None)` loads `dir` (`config.json` and
/// `model.safetensors`); `predict(dense, sparse)` returns click probabilities. Safe to
/// call from several Python threads at once: the GIL is released while it computes.
#[pyclass(module = "dlrs", frozen)]
struct Model {
    net: Net,
    exec: Executor,
    /// scratch memory, one per concurrent call
    workspaces: Mutex<Vec<Workspace>>,
}

#[pymethods]
impl Model {
    /// Loads a model directory. `tables`: "mmap" (memory-mapped, verified shard by shard
    /// on first touch) or "ram"; `threads`: threads per call (default: every core).
    #[staticmethod]
    #[pyo3(signature = (dir, tables = "mmap", threads = None))]
    fn load(py: Python<'_>, dir: PathBuf, tables: &str, threads: Option<usize>) -> PyResult<Self> {
        let mode = TableMode::parse(tables).ok_or_else(|| {
            PyValueError::new_err(format!("tables: `{tables}`: expected \"mmap\" or \"ram\""))
        })?;
        let threads = threads_or_all(threads)?;
        py.detach(|| {
            no_panic(|| {
                let net = Net::load_with(&dir, mode).map_err(model_err)?;
                let exec = Executor::new(threads).map_err(model_err)?;
                Ok(Model {
                    net,
                    exec,
                    workspaces: Mutex::new(Vec::new()),
                })
            })
        })
    }

    /// Click probabilities, float32 of shape (B,).
    ///
    /// `dense`: float32 (B, n_dense). `sparse`: one `(values, offsets)` pair per table
    /// (offsets of B + 1 entries, or B as `torch.nn.EmbeddingBag` takes them), or with
    /// `bags="lengths"` one `(values, lengths)` pair per table; or an object with TorchRec's
    /// `KeyedJaggedTensor` surface (`keys()`, `values()`, `lengths()`), its keys taken in
    /// order as the tables. Arrays are NumPy arrays or torch CPU tensors, C-contiguous; ids
    /// and offsets int64 or int32. They are read in place, not copied: do not write to them
    /// while the call runs.
    #[pyo3(signature = (dense, sparse, *, bags = "offsets"))]
    fn predict<'py>(
        &self,
        py: Python<'py>,
        dense: &Bound<'py, PyAny>,
        sparse: &Bound<'py, PyAny>,
        bags: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let inputs = Inputs::take(dense, sparse, bags, &self.net.config)?;
        let scores = py.detach(|| no_panic(|| self.run(inputs)))?;
        to_numpy(py, &scores)
    }

    /// The model's `config.json` as a dict (the reference DLRM's flag names).
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_to_py(py, &self.net.config.to_json_string())
    }

    /// Dense features per sample.
    #[getter]
    fn n_dense(&self) -> usize {
        self.net.config.n_dense()
    }

    /// Rows of each embedding table.
    #[getter]
    fn table_rows(&self) -> Vec<usize> {
        self.net.config.tables.clone()
    }

    /// Threads each call runs on.
    #[getter]
    fn threads(&self) -> usize {
        self.exec.threads()
    }

    /// Where the batch `predict` would run reads its inputs: `{"dense": address,
    /// "ids": [address per table], "offsets": [...]}` (for tests of the no-copy path).
    #[pyo3(signature = (dense, sparse, *, bags = "offsets"))]
    fn _input_addresses<'py>(
        &self,
        py: Python<'py>,
        dense: &Bound<'py, PyAny>,
        sparse: &Bound<'py, PyAny>,
        bags: &str,
    ) -> PyResult<Bound<'py, PyDict>> {
        let inputs = Inputs::take(dense, sparse, bags, &self.net.config)?;
        let batch = no_panic(|| inputs.batch(&self.net.config, false).map_err(model_err))?;
        let d = PyDict::new(py);
        d.set_item("dense", batch.dense().as_ptr() as usize)?;
        let ids: Vec<usize> = batch
            .bags()
            .iter()
            .map(|b| b.ids.as_ptr() as usize)
            .collect();
        let offs: Vec<usize> = batch
            .bags()
            .iter()
            .map(|b| b.offsets.as_ptr() as usize)
            .collect();
        d.set_item("ids", ids)?;
        d.set_item("offsets", offs)?;
        Ok(d)
    }

    /// Seconds the forward pass alone takes on these inputs, timed in Rust with the batch
    /// built beforehand (for benchmarks of the Python call's overhead).
    #[pyo3(signature = (dense, sparse, *, bags = "offsets"))]
    fn _time_forward(
        &self,
        py: Python<'_>,
        dense: &Bound<'_, PyAny>,
        sparse: &Bound<'_, PyAny>,
        bags: &str,
    ) -> PyResult<f64> {
        let inputs = Inputs::take(dense, sparse, bags, &self.net.config)?;
        py.detach(|| {
            no_panic(|| {
                let batch = self.batch(&inputs)?;
                let mut ws = self.workspace();
                let t = std::time::Instant::now();
                let out = self.net.forward(&batch, &mut ws, &self.exec).map(|_| ());
                let secs = t.elapsed().as_secs_f64();
                self.give_back(ws);
                out.map_err(model_err)?;
                Ok(secs)
            })
        })
    }

    fn __repr__(&self) -> String {
        let c = &self.net.config;
        format!(
            "dlrs.Model({} dense, {} tables of dim {}, {} interaction, {} threads)",
            c.n_dense(),
            c.n_tables(),
            c.dim,
            c.interaction.name(),
            self.exec.threads()
        )
    }
}

impl Model {
    /// Builds the batch and runs the forward pass (no GIL needed): a large batch's tables
    /// are converted on the model's threads, in the same hand-off to its pool as the
    /// forward pass (a small one's on the calling thread: handing work to the pool costs
    /// more than it saves).
    fn run(&self, inputs: Inputs) -> PyResult<Vec<f32>> {
        let parallel = self.parallel(&inputs);
        let go = || {
            let batch = inputs
                .batch(&self.net.config, parallel)
                .map_err(model_err)?;
            let mut ws = self.workspace();
            let out = self
                .net
                .forward(&batch, &mut ws, &self.exec)
                .map(<[f32]>::to_vec)
                .map_err(model_err);
            self.give_back(ws);
            out
        };
        // (the forward's own `install` runs inline on a thread of the pool)
        if parallel {
            self.exec.install(go)
        } else {
            go()
        }
    }

    /// Whether to convert the tables of `inputs` in parallel.
    fn parallel(&self, inputs: &Inputs) -> bool {
        /// ids from which the tables are converted in parallel (RMC1 at batch 256 has 164k)
        const PARALLEL_IDS: usize = 1 << 15;
        self.exec.threads() > 1 && inputs.id_count() >= PARALLEL_IDS
    }

    /// The batch of `inputs`, converted as [`Model::run`] converts it.
    fn batch(&self, inputs: &Inputs) -> PyResult<dlrs_model::Batch> {
        let cfg = &self.net.config;
        if self.parallel(inputs) {
            self.exec.install(|| inputs.batch(cfg, true))
        } else {
            inputs.batch(cfg, false)
        }
        .map_err(model_err)
    }

    /// A workspace of the pool (a new one when every one is in use).
    fn workspace(&self) -> Workspace {
        self.workspaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default()
    }

    fn give_back(&self, ws: Workspace) {
        self.workspaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ws);
    }
}

/// Converts a model's tables to `dtype` ("fp16", "int8", "int4"; `tables` picks some, all by
/// default) and/or its MLP weights to `mlp_dtype` ("bf16"), writing the result to `out_dir`.
/// Returns each conversion's error: `{"tables": [{"table", "rows", "dtype",
/// "max_abs_error", "mean_abs_error"}], "mlp": {"dtype", "max_abs_error",
/// "mean_abs_error"} or None}`.
#[pyfunction]
#[pyo3(signature = (model_dir, out_dir, dtype = None, *, tables = None, mlp_dtype = None))]
fn quantize<'py>(
    py: Python<'py>,
    model_dir: PathBuf,
    out_dir: PathBuf,
    dtype: Option<&str>,
    tables: Option<Vec<usize>>,
    mlp_dtype: Option<&str>,
) -> PyResult<Bound<'py, PyDict>> {
    let format = dtype
        .map(|d| {
            RowFormat::parse(d).ok_or_else(|| {
                PyValueError::new_err(format!(
                    "dtype: `{d}` is not a row format (fp32, fp16, int8, int4)"
                ))
            })
        })
        .transpose()?;
    let mlp = mlp_dtype
        .map(|d| {
            MlpDtype::parse(d).ok_or_else(|| {
                PyValueError::new_err(format!("mlp_dtype: `{d}`: expected fp32 or bf16"))
            })
        })
        .transpose()?;
    let tables = tables.unwrap_or_default();
    let q = py.detach(|| {
        no_panic(|| {
            Net::quantize_dir(&model_dir, format, mlp, &tables, &out_dir).map_err(model_err)
        })
    })?;
    let report = PyDict::new(py);
    let rows = PyList::empty(py);
    for &(t, max, mean) in &q.tables {
        let r = PyDict::new(py);
        r.set_item("table", t)?;
        r.set_item("rows", q.model.config.tables[t])?;
        r.set_item("dtype", q.model.config.table_formats[t].name())?;
        r.set_item("max_abs_error", max)?;
        r.set_item("mean_abs_error", mean)?;
        rows.append(r)?;
    }
    report.set_item("tables", rows)?;
    match (mlp, q.mlp) {
        (Some(d), Some((max, mean))) => {
            let m = PyDict::new(py);
            m.set_item("dtype", d.name())?;
            m.set_item("max_abs_error", max)?;
            m.set_item("mean_abs_error", mean)?;
            report.set_item("mlp", m)?;
        }
        _ => report.set_item("mlp", py.None())?,
    }
    Ok(report)
}

/// Checks a model directory: its config, every tensor's shape and dtype, and every checksum
/// of its manifest. Returns `{"manifest": True, "tables": n, "bytes": n}`, or without a
/// manifest `{"manifest": False, "tensors": n}` (with `require_manifest`, an error). Raises
/// `dlrs.ModelError` naming the first tensor or table shard that fails.
#[pyfunction]
#[pyo3(signature = (model_dir, *, require_manifest = false))]
fn verify<'py>(
    py: Python<'py>,
    model_dir: PathBuf,
    require_manifest: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let v = py
        .detach(|| no_panic(|| Net::verify_dir(&model_dir, require_manifest).map_err(model_err)))?;
    let d = PyDict::new(py);
    match v {
        Verified::NoManifest { tensors } => {
            d.set_item("manifest", false)?;
            d.set_item("tensors", tensors)?;
        }
        Verified::Checksums { tables, bytes } => {
            d.set_item("manifest", true)?;
            d.set_item("tables", tables)?;
            d.set_item("bytes", bytes)?;
        }
    }
    Ok(d)
}

/// Writes a model directory from a config (`config.json`'s text) and named float32 tensors
/// (the reference state-dict keys): `model.safetensors` with a checksum manifest, and
/// `config.json`. The tensors are checked as loading checks them (errors name the tensor).
/// `dlrs.from_torch` calls this.
#[pyfunction]
fn _write_model(
    py: Python<'_>,
    config_json: &str,
    tensors: Vec<(String, Bound<'_, PyAny>)>,
    out_dir: PathBuf,
) -> PyResult<()> {
    let config = DlrmConfig::from_json_str(config_json).map_err(model_err)?;
    let arrs = tensors
        .iter()
        .map(|(name, t)| Ok((name.clone(), Arr::take(t, &format!("tensor `{name}`"))?)))
        .collect::<PyResult<Vec<_>>>()?;
    py.detach(|| no_panic(|| write_model(&config, &arrs, &out_dir)))
}

fn write_model(config: &DlrmConfig, tensors: &[(String, Arr)], out: &Path) -> PyResult<()> {
    use safetensors::tensor::{Dtype, TensorView};
    let mut views = Vec::with_capacity(tensors.len());
    for (name, a) in tensors {
        let bytes = a.f32_bytes().map_err(model_err)?;
        let view = TensorView::new(Dtype::F32, a.shape.clone(), bytes)
            .map_err(|e| ModelError::new_err(format!("tensor `{name}`: {e}")))?;
        views.push((name.clone(), view));
    }
    std::fs::create_dir_all(out).map_err(|e| {
        model_err(dlrs_model::ModelError::Io {
            path: out.into(),
            err: e,
        })
    })?;
    let weights = out.join(dlrs_model::WEIGHTS_FILE);
    dlrs_model::weights::atomic_write(&weights, |tmp| {
        safetensors::serialize_to_file(views, None, tmp).map_err(std::io::Error::other)
    })
    .map_err(model_err)?;
    dlrs_model::weights::atomic_write_bytes(
        &out.join(dlrs_model::CONFIG_FILE),
        config.to_json_string().as_bytes(),
    )
    .map_err(model_err)?;
    // loading checks every tensor against the config; saving adds the checksum manifest
    let net = Net::load_with(out, TableMode::Ram).map_err(model_err)?;
    net.save(out).map_err(model_err)
}

/// Trains a model directory's weights from Python, batch by batch: the engine of `dlrs
/// train` (same forward, backward and optimizers; the same batches in the same order give
/// the same weights).
///
/// `Trainer(model_dir, optimizer="sgd", dense_optimizer="sgd", lr=0.01, sparse_lr=None,
/// dense_lr=None, threads=1)`: `optimizer` is the tables' (sgd, adagrad, rowwise-adagrad),
/// `dense_optimizer` the MLPs' (sgd, adagrad, adam). Tables must be fp32.
#[pyclass(module = "dlrs")]
struct Trainer {
    trainer: dlrs_train::Trainer,
    state: TrainState,
}

#[pymethods]
impl Trainer {
    #[new]
    #[pyo3(signature = (model_dir, optimizer = "sgd", dense_optimizer = "sgd", lr = 0.01, sparse_lr = None, dense_lr = None, threads = 1))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model_dir: PathBuf,
        optimizer: &str,
        dense_optimizer: &str,
        lr: f32,
        sparse_lr: Option<f32>,
        dense_lr: Option<f32>,
        threads: usize,
    ) -> PyResult<Self> {
        let sparse = SparseOptimizer::parse(optimizer).ok_or_else(|| {
            PyValueError::new_err(format!(
                "optimizer: `{optimizer}`: expected sgd, adagrad or rowwise-adagrad"
            ))
        })?;
        let dense = DenseOptimizer::parse(dense_optimizer).ok_or_else(|| {
            PyValueError::new_err(format!(
                "dense_optimizer: `{dense_optimizer}`: expected sgd, adagrad or adam"
            ))
        })?;
        let cfg = TrainConfig {
            model: Some(model_dir.clone()),
            lr,
            sparse_lr,
            dense_lr,
            optimizer: sparse,
            dense_optimizer: dense,
            threads: threads.max(1),
            ..TrainConfig::new("-", &model_dir)
        };
        py.detach(|| {
            no_panic(|| {
                let model = Net::load_with(&model_dir, TableMode::Ram).map_err(|err| {
                    train_err(TrainError::Load {
                        dir: model_dir.clone(),
                        err,
                    })
                })?;
                let (trainer, state) = dlrs_train::start_fresh(&cfg, model).map_err(train_err)?;
                Ok(Trainer { trainer, state })
            })
        })
    }

    /// Forward, backward and one optimizer step on a batch (inputs as `Model.predict`
    /// takes them; `labels`: float32 (B,), each 0 or 1). Returns the batch's mean log loss
    /// before the update.
    #[pyo3(signature = (dense, sparse, labels, *, bags = "offsets"))]
    fn step(
        &mut self,
        py: Python<'_>,
        dense: &Bound<'_, PyAny>,
        sparse: &Bound<'_, PyAny>,
        labels: &Bound<'_, PyAny>,
        bags: &str,
    ) -> PyResult<f64> {
        let cfg = &self.trainer.model.config;
        let inputs = Inputs::take(dense, sparse, bags, cfg)?;
        let labels = Arr::take(labels, "labels")?;
        let (trainer, state) = (&mut self.trainer, &mut self.state);
        py.detach(|| {
            no_panic(|| {
                let batch = inputs
                    .batch(&trainer.model.config, false)
                    .map_err(model_err)?;
                let labels = labels.labels(batch.size()).map_err(model_err)?;
                let loss = trainer.step(&batch, labels);
                let n = batch.size() as u64;
                state.step += 1;
                state.samples_in_epoch += n;
                state.samples_total += n;
                Ok(loss)
            })
        })
    }

    /// Writes the model and the optimizer state to `dir` (a `dlrs train` checkpoint: a
    /// model directory `dlrs.Model.load` and every command read), replacing it atomically.
    fn save(&self, py: Python<'_>, dir: PathBuf) -> PyResult<()> {
        py.detach(|| {
            no_panic(|| {
                dlrs_train::checkpoint::write(
                    &dir,
                    &self.trainer.model,
                    &self.trainer.opt,
                    &self.state,
                )
                .map_err(train_err)
            })
        })
    }

    /// Optimizer steps taken.
    #[getter]
    fn steps(&self) -> u64 {
        self.state.step
    }

    /// The model's `config.json` as a dict.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_to_py(py, &self.trainer.model.config.to_json_string())
    }
}

#[pymodule]
fn _dlrs(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()?;
    m.add_class::<Trainer>()?;
    m.add_function(wrap_pyfunction!(quantize, m)?)?;
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add_function(wrap_pyfunction!(_write_model, m)?)?;
    m.add("ModelError", m.py().get_type::<ModelError>())?;
    Ok(())
}
