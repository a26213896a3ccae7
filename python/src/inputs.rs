//! Python inputs to a [`Batch`], read in place.
//!
//! Under the GIL, [`Inputs::take`] only acquires each array's buffer (a NumPy array or
//! anything with the buffer protocol directly; a torch tensor or other DLPack producer as
//! the NumPy view `numpy.from_dlpack` makes of it) and checks it is C-contiguous. The rest
//! runs without the GIL in [`Inputs::batch`]:
//!
//! - float32 dense features, int32 ids and int32 offsets of B + 1 entries are shared with
//!   the caller's buffers ([`Values::Shared`]): no copy;
//! - int64 ids are narrowed to the tables' `u32` row numbers, the range check fused into
//!   that one pass (`dlrs_kernels::ids::narrow_ids_le`); int64 offsets, offsets of B
//!   entries and lengths become `u32` offsets (B + 1 per table); the tables are converted
//!   in parallel on the model's threads;
//! - then the batch is validated once, as every batch is ([`Batch::from_parts_ids_checked`]).
//!
//! An id is never read through a float, clamped or remapped: out of range is an error that
//! names the table and the sample.

use std::ffi::CStr;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Arc;

use dlrs_model::batch::{check_offsets, id_out_of_range};
use dlrs_model::{Bags, Batch, DlrmConfig, ModelError, Values};
use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyList, PyTuple};
use rayon::prelude::*;

type Result<T, E = ModelError> = std::result::Result<T, E>;

/// An array's element type.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    F32,
    I32,
    I64,
    /// anything else, by its NumPy name
    Other(String),
}

/// The element type of a buffer from its struct-module format and item size.
fn kind_of(format: &CStr, size: usize) -> Kind {
    let f = format.to_bytes();
    let f = match f.first() {
        Some(b'@' | b'=' | b'<') => &f[1..],
        _ => f,
    };
    match (f, size) {
        (b"f", 4) => Kind::F32,
        (b"i" | b"l" | b"q" | b"n", 4) => Kind::I32,
        (b"i" | b"l" | b"q" | b"n", 8) => Kind::I64,
        (b"e" | b"f" | b"d" | b"g", n) => Kind::Other(format!("float{}", 8 * n)),
        (b"b" | b"h" | b"i" | b"l" | b"q" | b"n", n) => Kind::Other(format!("int{}", 8 * n)),
        (b"B" | b"H" | b"I" | b"L" | b"Q" | b"N", n) => Kind::Other(format!("uint{}", 8 * n)),
        (b"?", _) => Kind::Other("bool".into()),
        _ => Kind::Other(format!("format `{}`", String::from_utf8_lossy(f))),
    }
}

impl Kind {
    fn name(&self) -> &str {
        match self {
            Kind::F32 => "float32",
            Kind::I32 => "int32",
            Kind::I64 => "int64",
            Kind::Other(s) => s,
        }
    }
}

/// The elements of `buf` as `T`s.
///
/// Panics unless the buffer's bytes are a whole number of aligned `T`s; `T` is one of the
/// plain number types (`u8`, `u32`, `i32`, `i64`, `f32`), for which any bytes are a value.
fn elements<T: Copy>(buf: &PyUntypedBuffer) -> &[T] {
    let size = std::mem::size_of::<T>();
    let bytes = buf.len_bytes();
    let ptr = buf.buf_ptr() as *const T;
    assert!(bytes.is_multiple_of(size), "whole elements");
    if bytes == 0 {
        return &[];
    }
    assert!(ptr.is_aligned(), "aligned elements");
    // SAFETY: `buf` holds the exporter's buffer (released only when `buf` is dropped, and an
    // exporter such as NumPy refuses to resize memory while it is exported), C-contiguous
    // (checked by `Arr::take`): `bytes` bytes from `ptr`, which is non-null, aligned for `T`
    // and covers `bytes / size` whole `T`s (asserted above); every bit pattern is a valid
    // `T`. The slice lives no longer than the borrow of `buf`. The memory is the caller's:
    // `predict` documents that it must not be written while the call runs.
    unsafe { std::slice::from_raw_parts(ptr, bytes / size) }
}

/// `range` of an array's elements as batch values shared with the array (no copy).
struct Held<T> {
    buf: Arc<PyUntypedBuffer>,
    range: Range<usize>,
    _t: PhantomData<T>,
}

impl<T: Copy> AsRef<[T]> for Held<T> {
    fn as_ref(&self) -> &[T] {
        &elements::<T>(&self.buf)[self.range.clone()]
    }
}

/// An input array: its buffer, held until the batch made from it is dropped.
pub struct Arr {
    buf: Arc<PyUntypedBuffer>,
    pub kind: Kind,
    pub shape: Vec<usize>,
    /// the field errors name
    field: String,
}

/// `numpy.ndarray` and `numpy.from_dlpack`.
fn numpy(py: Python<'_>) -> PyResult<&(Py<PyAny>, Py<PyAny>)> {
    static NP: PyOnceLock<(Py<PyAny>, Py<PyAny>)> = PyOnceLock::new();
    NP.get_or_try_init(py, || {
        let np = py.import("numpy")?;
        Ok((
            np.getattr("ndarray")?.unbind(),
            np.getattr("from_dlpack")?.unbind(),
        ))
    })
}

impl Arr {
    /// Acquires the buffer of `obj`: a NumPy array (or any object with the buffer
    /// protocol), or a torch CPU tensor (any DLPack producer), without copying it.
    pub fn take(obj: &Bound<'_, PyAny>, field: &str) -> PyResult<Arr> {
        let py = obj.py();
        let (ndarray, from_dlpack) = numpy(py)?;
        let view;
        let src = if obj.is_instance(ndarray.bind(py))? {
            obj
        } else if obj.hasattr(intern!(py, "__dlpack__"))? {
            view = from_dlpack.bind(py).call1((obj,)).map_err(|e| {
                PyValueError::new_err(format!(
                    "field `{field}`: cannot be read in place: {}",
                    e.value(py)
                ))
            })?;
            &view
        } else {
            obj
        };
        let buf = PyUntypedBuffer::get(src).map_err(|_| {
            let ty = obj
                .get_type()
                .name()
                .map_or_else(|_| "?".to_string(), |n| n.to_string());
            PyTypeError::new_err(format!(
                "field `{field}`: expected a NumPy array or a torch CPU tensor, got {ty}"
            ))
        })?;
        if !buf.is_c_contiguous() {
            return Err(PyValueError::new_err(format!(
                "field `{field}`: not C-contiguous (shape {:?}, strides {:?} bytes): pass numpy.ascontiguousarray(x) or tensor.contiguous()",
                buf.shape(),
                buf.strides()
            )));
        }
        let size = buf.item_size();
        if size == 0 || !(buf.buf_ptr() as usize).is_multiple_of(size) {
            return Err(PyValueError::new_err(format!(
                "field `{field}`: its memory is not aligned to its {size}-byte elements"
            )));
        }
        Ok(Arr {
            kind: kind_of(buf.format(), size),
            shape: buf.shape().to_vec(),
            buf: Arc::new(buf),
            field: field.to_string(),
        })
    }

    fn err(&self, msg: impl Into<String>) -> ModelError {
        ModelError::input(self.field.clone(), msg)
    }

    fn want(&self, kind: &[Kind]) -> Result<()> {
        if kind.contains(&self.kind) {
            return Ok(());
        }
        let names: Vec<&str> = kind.iter().map(Kind::name).collect();
        Err(self.err(format!(
            "dtype {}, expected {}",
            self.kind.name(),
            names.join(" or ")
        )))
    }

    /// The length of a 1-D array.
    fn len_1d(&self) -> Result<usize> {
        match self.shape[..] {
            [n] => Ok(n),
            _ => Err(self.err(format!("shape {:?}, expected one dimension", self.shape))),
        }
    }

    fn shared<T: Copy + Send + Sync + 'static>(&self, range: Range<usize>) -> Values<T> {
        Values::Shared(Arc::new(Held {
            buf: self.buf.clone(),
            range,
            _t: PhantomData,
        }))
    }

    fn ints(&self, range: Range<usize>) -> Result<Ints<'_>> {
        match self.kind {
            Kind::I32 => Ok(Ints::I32(&elements::<i32>(&self.buf)[range])),
            Kind::I64 => Ok(Ints::I64(&elements::<i64>(&self.buf)[range])),
            _ => Err(self.want(&[Kind::I64, Kind::I32]).unwrap_err()),
        }
    }

    /// The bytes of a float32 tensor (for writing it out).
    pub fn f32_bytes(&self) -> Result<&[u8]> {
        self.want(&[Kind::F32])?;
        Ok(elements::<u8>(&self.buf))
    }

    /// Training labels for `b` samples: float32 `(b,)` or `(b, 1)`, each in [0, 1].
    pub fn labels(&self, b: usize) -> Result<&[f32]> {
        self.want(&[Kind::F32])?;
        if !matches!(self.shape[..], [n] | [n, 1] if n == b) {
            return Err(self.err(format!("shape {:?}, expected ({b},)", self.shape)));
        }
        let l = elements::<f32>(&self.buf);
        if let Some(i) = l.iter().position(|v| !(0.0..=1.0).contains(v)) {
            return Err(ModelError::input(
                format!("{}[{i}]", self.field),
                format!("{} is not a label in [0, 1]", l[i]),
            ));
        }
        Ok(l)
    }
}

enum Ints<'a> {
    I32(&'a [i32]),
    I64(&'a [i64]),
}

/// How a call gave the bags.
enum Sparse {
    /// one `(values, offsets)` pair per table, or `(values, lengths)` with `lengths`
    Pairs {
        tables: Vec<(Arr, Arr)>,
        lengths: bool,
    },
    /// a `KeyedJaggedTensor`: every table's ids in one array, table after table, and the
    /// lengths `[tables * B]` (table-major)
    Jagged { values: Arr, lengths: Arr },
}

/// A call's inputs, their buffers held, ready to become a [`Batch`] without the GIL.
pub struct Inputs {
    dense: Arr,
    sparse: Sparse,
}

impl Inputs {
    /// Acquires the arrays of a call (see `Model.predict`).
    pub fn take(
        dense: &Bound<'_, PyAny>,
        sparse: &Bound<'_, PyAny>,
        bags: &str,
        cfg: &DlrmConfig,
    ) -> PyResult<Inputs> {
        let py = sparse.py();
        let lengths = match bags {
            "offsets" => false,
            "lengths" => true,
            _ => {
                return Err(PyValueError::new_err(format!(
                    "bags: `{bags}`: expected \"offsets\" or \"lengths\""
                )));
            }
        };
        let dense = Arr::take(dense, "dense")?;
        let nt = cfg.n_tables();
        let is_seq = sparse.is_instance_of::<PyList>() || sparse.is_instance_of::<PyTuple>();
        let sparse = if !is_seq
            && sparse.hasattr(intern!(py, "keys"))?
            && sparse.hasattr(intern!(py, "values"))?
            && sparse.hasattr(intern!(py, "lengths"))?
        {
            let keys = sparse.call_method0(intern!(py, "keys"))?.len()?;
            if keys != nt {
                return Err(PyValueError::new_err(format!(
                    "field `sparse`: {keys} keys, the model has {nt} tables (key i is table i)"
                )));
            }
            if sparse.hasattr(intern!(py, "weights_or_none"))?
                && !sparse
                    .call_method0(intern!(py, "weights_or_none"))?
                    .is_none()
            {
                return Err(PyValueError::new_err(
                    "field `sparse`: weighted bags are not supported (the reference DLRM pools by sum)",
                ));
            }
            Sparse::Jagged {
                values: Arr::take(
                    &sparse.call_method0(intern!(py, "values"))?,
                    "sparse.values()",
                )?,
                lengths: Arr::take(
                    &sparse.call_method0(intern!(py, "lengths"))?,
                    "sparse.lengths()",
                )?,
            }
        } else {
            let n = sparse.len().map_err(|_| {
                PyTypeError::new_err(
                    "field `sparse`: expected one (values, offsets) pair per table, or a KeyedJaggedTensor",
                )
            })?;
            if n != nt {
                return Err(PyValueError::new_err(format!(
                    "field `sparse`: {n} tables, the model has {nt}"
                )));
            }
            let second = if lengths { "lengths" } else { "offsets" };
            let mut tables = Vec::with_capacity(nt);
            for t in 0..nt {
                let pair = sparse.get_item(t)?;
                if pair.len().ok() != Some(2) {
                    return Err(PyValueError::new_err(format!(
                        "field `sparse[{t}]`: expected a (values, {second}) pair"
                    )));
                }
                tables.push((
                    Arr::take(&pair.get_item(0)?, &format!("sparse[{t}] values"))?,
                    Arr::take(&pair.get_item(1)?, &format!("{second}[{t}]"))?,
                ));
            }
            Sparse::Pairs { tables, lengths }
        };
        Ok(Inputs { dense, sparse })
    }

    /// Ids over all tables (as the arrays' sizes say).
    pub fn id_count(&self) -> usize {
        let size = |a: &Arr| a.shape.iter().product::<usize>();
        match &self.sparse {
            Sparse::Pairs { tables, .. } => tables.iter().map(|(v, _)| size(v)).sum(),
            Sparse::Jagged { values, .. } => size(values),
        }
    }

    /// The validated batch (no GIL needed): shared where the inputs allow it, see the
    /// module doc. With `parallel`, the tables are converted in parallel on the current
    /// rayon pool (call it inside the model's `Executor::install`).
    pub fn batch(&self, cfg: &DlrmConfig, parallel: bool) -> Result<Batch> {
        let nd = cfg.n_dense();
        self.dense.want(&[Kind::F32])?;
        let b = match self.dense.shape[..] {
            [b, n] if n == nd => b,
            _ => {
                return Err(self.dense.err(format!(
                    "shape {:?}, expected (batch, {nd})",
                    self.dense.shape
                )));
            }
        };
        let dense = self.dense.shared::<f32>(0..b * nd);
        let nt = cfg.n_tables();
        let each = |f: &(dyn Fn(usize) -> Result<Bags> + Sync)| -> Result<Vec<Bags>> {
            if parallel {
                (0..nt).into_par_iter().map(f).collect()
            } else {
                (0..nt).map(f).collect()
            }
        };
        let bags = match &self.sparse {
            Sparse::Pairs { tables, lengths } => each(&|t| {
                let (values, bounds) = &tables[t];
                let n = values.len_1d()?;
                let offsets = if *lengths {
                    offsets_from_lengths(t, bounds, 0..bounds.len_1d()?, b)?
                } else {
                    offsets_of(t, bounds, b, n)?
                };
                check_offsets(t, &offsets, b, n)?;
                let ids = ids_of(t, values, 0..n, cfg.tables[t], &offsets)?;
                Ok(Bags { offsets, ids })
            })?,
            Sparse::Jagged { values, lengths } => {
                let n_values = values.len_1d()?;
                let n_lengths = lengths.len_1d()?;
                if n_lengths != nt * b {
                    return Err(lengths.err(format!(
                        "{n_lengths} lengths, expected tables x batch = {nt} x {b}"
                    )));
                }
                // each key's offsets and where its ids start in `values`
                let mut parts = Vec::with_capacity(nt);
                let mut start = 0usize;
                for t in 0..nt {
                    let offsets = offsets_from_lengths(t, lengths, t * b..(t + 1) * b, b)?;
                    let n = offsets[b] as usize;
                    if start + n > n_values {
                        return Err(values.err(format!(
                            "{n_values} values, fewer than the lengths of the first {} keys add up to",
                            t + 1
                        )));
                    }
                    parts.push((offsets, start..start + n));
                    start += n;
                }
                if start != n_values {
                    return Err(values.err(format!(
                        "{n_values} values, but the lengths add up to {start}"
                    )));
                }
                each(&|t| {
                    let (offsets, range) = &parts[t];
                    let ids = ids_of(t, values, range.clone(), cfg.tables[t], offsets)?;
                    Ok(Bags {
                        offsets: offsets.clone(),
                        ids,
                    })
                })?
            }
        };
        Batch::from_parts_ids_checked(cfg, b, dense, bags)
    }
}

/// Table `t`'s offsets from `arr`: B + 1 entries (int32: shared; int64: narrowed), or B
/// (the last, the id count `n`, implied, as `torch.nn.EmbeddingBag` takes them).
fn offsets_of(t: usize, arr: &Arr, b: usize, n: usize) -> Result<Values<u32>> {
    let len = arr.len_1d()?;
    if len != b + 1 && len != b {
        return Err(arr.err(format!(
            "{len} offsets for a batch of {b}: need {b} + 1 (or {b}, the last implied)"
        )));
    }
    let bad =
        |v: i64| ModelError::input(format!("offsets[{t}]"), format!("offset {v} out of range"));
    let mut out: Vec<u32> = match arr.ints(0..len)? {
        Ints::I32(_) if len == b + 1 => return Ok(arr.shared::<u32>(0..len)),
        Ints::I32(s) => {
            let mut v = Vec::with_capacity(b + 1);
            for &o in s {
                v.push(u32::try_from(o).map_err(|_| bad(o.into()))?);
            }
            v
        }
        Ints::I64(s) => {
            let mut v = Vec::with_capacity(b + 1);
            for &o in s {
                v.push(u32::try_from(o).map_err(|_| bad(o))?);
            }
            v
        }
    };
    if len == b {
        out.push(u32::try_from(n).map_err(|_| bad(n as i64))?);
    }
    Ok(out.into())
}

/// Table `t`'s offsets (B + 1) from `range` of the lengths in `arr` (B of them).
fn offsets_from_lengths(t: usize, arr: &Arr, range: Range<usize>, b: usize) -> Result<Values<u32>> {
    if range.len() != b {
        return Err(arr.err(format!("{} lengths for a batch of {b}", range.len())));
    }
    let mut out = Vec::with_capacity(b + 1);
    out.push(0u32);
    let mut end = 0u64;
    let mut push = |s: usize, l: i64| {
        if l < 0 {
            return Err(ModelError::input(
                format!("lengths[{t}][{s}]"),
                format!("{l} is negative"),
            ));
        }
        end += l as u64;
        out.push(u32::try_from(end).map_err(|_| {
            ModelError::input(
                format!("lengths[{t}]"),
                "more than 2^32 ids per table in one batch",
            )
        })?);
        Ok(())
    };
    match arr.ints(range)? {
        Ints::I32(s) => s
            .iter()
            .enumerate()
            .try_for_each(|(i, &l)| push(i, l.into()))?,
        Ints::I64(s) => s.iter().enumerate().try_for_each(|(i, &l)| push(i, l))?,
    }
    Ok(out.into())
}

/// Table `t`'s ids, `range` of `arr`, checked against the table's `rows` (bags as the
/// checked `offsets` say): int32 shared, int64 narrowed to `u32` in the same pass.
fn ids_of(
    t: usize,
    arr: &Arr,
    range: Range<usize>,
    rows: usize,
    offsets: &[u32],
) -> Result<Values<u32>> {
    let bad_at = |j: usize, id: i64| id_out_of_range(t, offsets, j, id, rows);
    match arr.ints(range.clone())? {
        Ints::I32(s) => {
            // a negative id read as u32 is >= 2^31: out of range of any table up to 2^31
            // rows, and of the check against 2^31 for larger tables
            let as_u32 = &elements::<u32>(&arr.buf)[range.clone()];
            if !dlrs_kernels::ids::ids_below(as_u32, rows.min(1 << 31)) {
                let j = s
                    .iter()
                    .position(|&v| v < 0 || v as usize >= rows)
                    .unwrap_or(0);
                return Err(bad_at(j, s[j].into()));
            }
            Ok(arr.shared::<u32>(range))
        }
        Ints::I64(s) => {
            let n = s.len();
            let mut ids: Vec<u32> = Vec::with_capacity(n);
            let bytes = &elements::<u8>(&arr.buf)[range.start * 8..range.end * 8];
            let ok = dlrs_kernels::ids::narrow_ids_le_uninit(
                bytes,
                rows as u64,
                &mut ids.spare_capacity_mut()[..n],
            );
            // SAFETY: the capacity is `n`, and narrow_ids_le_uninit initializes every one of
            // the `n` elements it is given, whether it returns true or false (its contract).
            unsafe { ids.set_len(n) };
            if !ok {
                let j = s
                    .iter()
                    .position(|&v| v < 0 || v as u64 >= rows as u64)
                    .unwrap_or(0);
                return Err(bad_at(j, s[j]));
            }
            Ok(ids.into())
        }
    }
}
