//! The KServe v2 inference request and response, and the plain `/v1` predict format:
//! parsing into a validated [`Batch`], every error naming the tensor and field.

use std::fmt;
use std::sync::Arc;

use dlrs_model::batch::parse_sample;
use dlrs_model::{Bags, Batch, DlrmConfig, ModelError};
use serde::de::{self, DeserializeSeed, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::shm::{Region, Registry};

pub const DENSE: &str = "dense";
pub const LENGTHS: &str = "lengths";
pub const INDICES: &str = "indices";
pub const SCORE: &str = "score";

/// The model metadata of `GET /v2/models/{name}`. Besides the tensors, its `parameters`
/// give what a client needs to build valid requests: `n_dense`, `embedding_dim` and
/// `table_rows`, the tables' row counts as a string in config.json's `arch_embedding_size`
/// form (`"1000-20-5"`: KServe parameter values are strings, numbers or booleans).
pub fn metadata(name: &str, version: u64, cfg: &DlrmConfig) -> Value {
    let nd = cfg.n_dense() as i64;
    let nt = cfg.n_tables() as i64;
    let rows: Vec<String> = cfg.tables.iter().map(usize::to_string).collect();
    serde_json::json!({
        "name": name,
        "versions": [version.to_string()],
        "platform": "dlrs",
        "inputs": [
            {"name": DENSE, "datatype": "FP32", "shape": [-1, nd]},
            {"name": LENGTHS, "datatype": "INT32", "shape": [-1, nt]},
            {"name": INDICES, "datatype": "INT64", "shape": [-1]},
        ],
        "outputs": [{"name": SCORE, "datatype": "FP32", "shape": [-1, 1]}],
        "parameters": {"n_dense": nd, "embedding_dim": cfg.dim, "table_rows": rows.join("-")},
    })
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

/// Deserializes the JSON object `json`, found at `at` in the request (`""`: the body), into
/// `T`. A syntax error is "malformed JSON"; a data error names the field by its path (e.g.
/// `inputs[0]: missing field `shape``, `outputs: invalid type: null, expected a sequence`).
pub(crate) fn from_json<'a, T: Deserialize<'a>>(json: &'a [u8], at: &str) -> Result<T, ApiError> {
    use serde_json::error::Category;
    let within = if at.is_empty() {
        String::new()
    } else {
        format!(" in {at}")
    };
    let syntax = |e: serde_json::Error| bad(format!("malformed JSON{within}: {e}"));
    // serde takes a struct from an array of its fields in order too: not a request
    if json.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        let field = if at.is_empty() { "request body" } else { at };
        return Err(bad(format!(
            "{field}: expected a JSON object, got an array"
        )));
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let e = e.into_inner();
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => syntax(e),
            Category::Data => {
                let field = match (at, path.as_str()) {
                    ("", ".") => "request body".to_string(),
                    (at, ".") => at.to_string(),
                    ("", p) => p.to_string(),
                    (at, p) => format!("{at}.{p}"),
                };
                bad(format!("{field}: {e}"))
            }
        }
    })?;
    de.end().map_err(syntax)?;
    Ok(value)
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a KServe v2 inference request object"
)]
struct RawRequest<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(borrow)]
    inputs: Vec<&'a RawValue>,
    #[serde(default, borrow)]
    outputs: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an input tensor object")]
struct RawInput<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an output object")]
struct RawOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

/// A parsed inference request.
#[derive(Debug)]
pub struct InferRequest {
    pub batch: Batch,
    pub id: Option<String>,
    /// answer `score` with the binary tensor data extension
    pub binary_output: bool,
    /// Triton's request parameter `timeout`, in microseconds
    pub timeout_us: Option<u64>,
    /// where to write `score` instead of answering it (system shared memory extension)
    pub shm_output: Option<ShmRef>,
    /// inputs whose data came from system shared memory
    pub shm_inputs: usize,
}

/// A tensor's bytes in a registered system shared memory region: the parameters
/// `shared_memory_region`, `shared_memory_byte_size` and `shared_memory_offset` (default 0),
/// checked to lie within the region. Holds the region: it stays mapped while the request
/// lives, even if it is unregistered meanwhile.
#[derive(Clone)]
pub struct ShmRef {
    pub region: Arc<Region>,
    pub offset: usize,
    pub size: usize,
    /// whether the request gave `shared_memory_offset` (echoed in the answer as given)
    pub offset_given: bool,
}

impl fmt::Debug for ShmRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmRef")
            .field("region", &self.region.name)
            .field("offset", &self.offset)
            .field("size", &self.size)
            .finish()
    }
}

impl ShmRef {
    /// The parameters naming this range, as a response output carries them.
    pub fn parameters(&self) -> Value {
        let mut p = serde_json::json!({
            "shared_memory_region": self.region.name,
            "shared_memory_byte_size": self.size,
        });
        if self.offset_given {
            p["shared_memory_offset"] = Value::from(self.offset);
        }
        p
    }

    /// Writes `data` at the start of the range (which the caller checked holds it).
    pub fn write(&self, data: &[u8]) {
        assert!(data.len() <= self.size, "the range holds the data");
        self.region.write(self.offset, data);
    }
}

/// The shared memory range `params` name for tensor `label` (`None` when they name none).
/// Errors name the tensor and the parameter: a missing or mistyped parameter, a region that
/// is not registered, a range past the region's end.
fn shm_ref(
    params: &Option<Map<String, Value>>,
    label: &str,
    shm: &Registry,
) -> Result<Option<ShmRef>, ApiError> {
    const REGION: &str = "shared_memory_region";
    const SIZE: &str = "shared_memory_byte_size";
    const OFFSET: &str = "shared_memory_offset";
    let Some(p) = params else { return Ok(None) };
    let (region, size, offset) = (p.get(REGION), p.get(SIZE), p.get(OFFSET));
    if region.is_none() && size.is_none() && offset.is_none() {
        return Ok(None);
    }
    let name = match region {
        Some(Value::String(n)) => n,
        Some(v) => {
            return Err(bad(format!(
                "{label}: parameter \"{REGION}\" must be a region name (a string), got {v}"
            )));
        }
        None => {
            return Err(bad(format!(
                "{label}: parameter \"{}\" without \"{REGION}\"",
                if size.is_some() { SIZE } else { OFFSET }
            )));
        }
    };
    let int = |key: &str, v: &Value| {
        v.as_u64().ok_or_else(|| {
            bad(format!(
                "{label}: parameter \"{key}\" must be a non-negative integer, got {v}"
            ))
        })
    };
    let size = match size {
        Some(v) => int(SIZE, v)?,
        None => {
            return Err(bad(format!(
                "{label}: parameter \"{REGION}\" needs \"{SIZE}\" too"
            )));
        }
    };
    let offset_given = offset.is_some();
    let offset = offset.map(|v| int(OFFSET, v)).transpose()?.unwrap_or(0);
    let region = shm.get(name).ok_or_else(|| {
        bad(format!(
            "{label}: parameter \"{REGION}\": no system shared memory region \"{name}\" is registered"
        ))
    })?;
    region.check_range(label, offset, size)?;
    // within the region, whose size is a usize
    Ok(Some(ShmRef {
        region,
        offset: offset as usize,
        size: size as usize,
        offset_given,
    }))
}

/// An element type of a tensor.
trait Elem: Sized + Copy {
    const DATATYPE: &'static str;
    const SIZE: usize;
    fn from_i64(v: i64) -> Result<Self, String>;
    fn from_u64(v: u64) -> Result<Self, String>;
    fn from_f64(v: f64) -> Result<Self, String>;
    fn from_le(b: &[u8]) -> Self;
}

impl Elem for f32 {
    const DATATYPE: &'static str = "FP32";
    const SIZE: usize = 4;
    fn from_i64(v: i64) -> Result<Self, String> {
        Ok(v as f32)
    }
    fn from_u64(v: u64) -> Result<Self, String> {
        Ok(v as f32)
    }
    /// Values beyond f32's range become infinite here and are refused as not finite by
    /// `Batch::from_parts_ids_checked`, which names the sample and feature.
    fn from_f64(v: f64) -> Result<Self, String> {
        Ok(v as f32)
    }
    fn from_le(b: &[u8]) -> Self {
        f32::from_le_bytes(b.try_into().expect("4 bytes"))
    }
}

fn integral(v: f64, dt: &str) -> Result<i64, String> {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        Ok(v as i64)
    } else {
        Err(format!("{v} is not an {dt} integer"))
    }
}

impl Elem for i32 {
    const DATATYPE: &'static str = "INT32";
    const SIZE: usize = 4;
    fn from_i64(v: i64) -> Result<Self, String> {
        i32::try_from(v).map_err(|_| format!("{v} is out of range for INT32"))
    }
    fn from_u64(v: u64) -> Result<Self, String> {
        i32::try_from(v).map_err(|_| format!("{v} is out of range for INT32"))
    }
    fn from_f64(v: f64) -> Result<Self, String> {
        Self::from_i64(integral(v, Self::DATATYPE)?)
    }
    fn from_le(b: &[u8]) -> Self {
        i32::from_le_bytes(b.try_into().expect("4 bytes"))
    }
}

impl Elem for i64 {
    const DATATYPE: &'static str = "INT64";
    const SIZE: usize = 8;
    fn from_i64(v: i64) -> Result<Self, String> {
        Ok(v)
    }
    fn from_u64(v: u64) -> Result<Self, String> {
        i64::try_from(v).map_err(|_| format!("{v} is out of range for INT64"))
    }
    fn from_f64(v: f64) -> Result<Self, String> {
        integral(v, Self::DATATYPE)
    }
    fn from_le(b: &[u8]) -> Self {
        i64::from_le_bytes(b.try_into().expect("8 bytes"))
    }
}

/// Deserializes tensor data, flat or nested to any depth, into one flat vector.
struct Flat<'v, T> {
    out: &'v mut Vec<T>,
    depth: u32,
}

impl<'de, T: Elem> DeserializeSeed<'de> for Flat<'_, T> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<T: Elem> Flat<'_, T> {
    fn push<E: de::Error>(self, v: Result<T, String>) -> Result<(), E> {
        let i = self.out.len();
        self.out
            .push(v.map_err(|m| E::custom(format!("data element {i}: {m}")))?);
        Ok(())
    }
    fn not_a_number<E: de::Error>(self, what: fmt::Arguments<'_>) -> Result<(), E> {
        Err(E::custom(format!(
            "data element {}: {what} is not a number",
            self.out.len()
        )))
    }
}

impl<'de, T: Elem> Visitor<'de> for Flat<'_, T> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an array of {} numbers (flat or nested)", T::DATATYPE)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.push(T::from_i64(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.push(T::from_u64(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.push(T::from_f64(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.not_a_number(format_args!("{v:?}"))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.not_a_number(format_args!("{v}"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.not_a_number(format_args!("null"))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.not_a_number(format_args!("an object"))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth >= 16 {
            return Err(de::Error::custom("data nested deeper than 16 levels"));
        }
        let (out, depth) = (self.out, self.depth + 1);
        while seq
            .next_element_seed(Flat {
                out: &mut *out,
                depth,
            })?
            .is_some()
        {}
        Ok(())
    }
}

/// One input's header, checked, with where its data is.
struct Input<'a> {
    index: usize,
    name: &'static str,
    shape: Vec<usize>,
    data: Data<'a>,
}

enum Data<'a> {
    Json(&'a RawValue),
    Binary(&'a [u8]),
    Shm(ShmRef),
}

impl Input<'_> {
    fn label(&self) -> String {
        format!("inputs[{}] \"{}\"", self.index, self.name)
    }
    fn count(&self) -> usize {
        self.shape.iter().product()
    }
    fn shape_str(&self) -> String {
        format!("{:?}", self.shape)
    }

    /// The values, decoded from JSON or read in place from the binary data or the shared
    /// memory region (whose bytes another process may change meanwhile: see
    /// [`Region::bytes`]; every value is read once, into the batch).
    fn values<T: Elem>(&self) -> Result<Values<'_, T>, ApiError> {
        let n = self.count();
        let (bytes, param) = match &self.data {
            Data::Binary(bytes) => (*bytes, "binary_data_size"),
            Data::Shm(r) => (r.region.bytes(r.offset, r.size), "shared_memory_byte_size"),
            Data::Json(raw) => return self.decode(raw, n),
        };
        if bytes.len() != n * T::SIZE {
            return Err(bad(format!(
                "{}: {param} {} bytes for shape {} of {} ({} bytes expected)",
                self.label(),
                bytes.len(),
                self.shape_str(),
                T::DATATYPE,
                n * T::SIZE
            )));
        }
        Ok(Values::Le(bytes, std::marker::PhantomData))
    }

    /// The values of JSON `data`.
    fn decode<T: Elem>(&self, raw: &RawValue, n: usize) -> Result<Values<'_, T>, ApiError> {
        let mut out = Vec::with_capacity(n.min(raw.get().len() / 2 + 1));
        let mut de = serde_json::Deserializer::from_str(raw.get());
        Flat {
            out: &mut out,
            depth: 0,
        }
        .deserialize(&mut de)
        .map_err(|e| bad(format!("{}: {e}", self.label())))?;
        if out.len() != n {
            return Err(bad(format!(
                "{}: {} values in \"data\" for shape {} ({n} expected)",
                self.label(),
                out.len(),
                self.shape_str()
            )));
        }
        Ok(Values::Decoded(out))
    }
}

/// A tensor's values: decoded from JSON, or little-endian binary data read in place (ids go
/// from the request body straight into the batch, with no intermediate copy).
enum Values<'a, T> {
    Decoded(Vec<T>),
    Le(&'a [u8], std::marker::PhantomData<T>),
}

impl<T: Elem> Values<'_, T> {
    fn len(&self) -> usize {
        match self {
            Values::Decoded(v) => v.len(),
            Values::Le(b, _) => b.len() / T::SIZE,
        }
    }
    #[inline]
    fn get(&self, i: usize) -> T {
        match self {
            Values::Decoded(v) => v[i],
            Values::Le(b, _) => T::from_le(&b[i * T::SIZE..(i + 1) * T::SIZE]),
        }
    }
    fn into_vec(self) -> Vec<T> {
        match self {
            Values::Decoded(v) => v,
            Values::Le(b, _) => b.chunks_exact(T::SIZE).map(T::from_le).collect(),
        }
    }
}

impl Values<'_, i64> {
    /// Appends ids `range` to `dst` as u32, written straight into its spare capacity (no
    /// zeroing first; the caller reserves each table's ids once, or this grows `dst`).
    /// `Err(Some(k))` when id `k` (an index into these values) is negative or not below
    /// `rows`; `dst` is then unchanged. The binary data goes through `narrow_ids_le_uninit`,
    /// which vectorizes the check into the copy and reads each id once for both, so the ids
    /// appended are the ids checked even from shared memory. `Err(None)`: an id was out of
    /// range when copied but no longer is when looked for (shared memory that its client
    /// changed meanwhile).
    fn push_ids(
        &self,
        range: std::ops::Range<usize>,
        rows: u64,
        dst: &mut Vec<u32>,
    ) -> Result<(), Option<usize>> {
        let (start, end) = (range.start, range.end);
        let n = end - start;
        dst.reserve(n);
        let out = &mut dst.spare_capacity_mut()[..n];
        let ok = match self {
            Values::Decoded(v) => {
                let mut ok = true;
                for (d, &id) in out.iter_mut().zip(&v[start..end]) {
                    ok &= (id as u64) < rows;
                    d.write(id as u32);
                }
                ok
            }
            Values::Le(b, _) => {
                dlrs_kernels::ids::narrow_ids_le_uninit(&b[start * 8..end * 8], rows, out)
            }
        };
        if ok {
            // SAFETY: `out`, the `n` elements after `dst.len()`, lies within the capacity
            // and is initialized: the loop zips it with `n` values and writes each, and
            // `narrow_ids_le_uninit` initializes all of its `dst`.
            unsafe { dst.set_len(dst.len() + n) };
            return Ok(());
        }
        Err((start..end).find(|&k| (self.get(k) as u64) >= rows))
    }
}

fn expected_datatype(name: &str) -> &'static str {
    match name {
        DENSE => "FP32",
        LENGTHS => "INT32",
        _ => "INT64",
    }
}

fn bool_param(
    params: &Option<Map<String, Value>>,
    key: &str,
    what: &str,
) -> Result<bool, ApiError> {
    match params.as_ref().and_then(|p| p.get(key)) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(bad(format!(
            "{what}: parameter \"{key}\" must be true or false, got {other}"
        ))),
    }
}

/// The batch size a binary-extension request declares in its JSON header (the first
/// dimension of input "dense"), read before the binary data arrives so that a request the
/// queue cannot take is refused without reading its body. `None` when the header does not
/// say (the full parse then reports what is wrong).
pub fn declared_batch(json_header: &[u8]) -> Option<usize> {
    let req: RawRequest = serde_json::from_slice(json_header).ok()?;
    req.inputs.iter().find_map(|raw| {
        let inp: RawInput = serde_json::from_str(raw.get()).ok()?;
        (inp.name == DENSE).then(|| inp.shape.first().and_then(|&b| usize::try_from(b).ok()))?
    })
}

/// Parses a KServe v2 inference request. `header_len` is the `Inference-Header-Content-Length`
/// header (the binary tensor data extension): the JSON is that many leading bytes, the
/// binary data of the inputs follows in input order. Inputs and the output may name ranges
/// of the system shared memory regions registered in `shm` instead.
pub fn parse_infer(
    body: &[u8],
    header_len: Option<usize>,
    cfg: &DlrmConfig,
    shm: &Registry,
) -> Result<InferRequest, ApiError> {
    let (json, mut binary) = match header_len {
        Some(l) if l > body.len() => {
            return Err(bad(format!(
                "header Inference-Header-Content-Length: {l} is larger than the body ({} bytes)",
                body.len()
            )));
        }
        Some(l) => body.split_at(l),
        None => (body, &[][..]),
    };
    let req: RawRequest = from_json(json, "")?;

    // input headers: names, datatypes, shapes, where the data is
    let mut slots: [Option<Input>; 3] = [None, None, None];
    let mut shm_inputs = 0;
    for (i, raw) in req.inputs.iter().enumerate() {
        let inp: RawInput = from_json(raw.get().as_bytes(), &format!("inputs[{i}]"))?;
        let (slot, name) = match inp.name.as_str() {
            DENSE => (0, DENSE),
            LENGTHS => (1, LENGTHS),
            INDICES => (2, INDICES),
            other => {
                return Err(bad(format!(
                    "inputs[{i}]: unknown input {other:?} (the model takes \"dense\", \"lengths\", \"indices\")"
                )));
            }
        };
        if let Some(prev) = &slots[slot] {
            return Err(bad(format!(
                "inputs[{i}]: duplicate input \"{name}\" (also inputs[{}])",
                prev.index
            )));
        }
        let label = format!("inputs[{i}] \"{name}\"");
        let want = expected_datatype(name);
        if inp.datatype != want {
            return Err(bad(format!(
                "{label}: datatype {}, expected {want}",
                inp.datatype
            )));
        }
        if let Some(d) = inp.shape.iter().find(|&&d| d < 0) {
            return Err(bad(format!(
                "{label}: shape {:?} has a negative dimension {d}",
                inp.shape
            )));
        }
        let shape: Vec<usize> = inp.shape.iter().map(|&d| d as usize).collect();
        let binary_size = match inp.parameters.as_ref().and_then(|p| p.get("binary_data_size")) {
            None => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                bad(format!("{label}: parameter \"binary_data_size\" must be a non-negative integer, got {v}"))
            })? as usize),
        };
        let in_shm = shm_ref(&inp.parameters, &label, shm)?;
        // every element takes at least a byte of the body or of the shared memory range
        let (room, of) = match &in_shm {
            Some(r) => (r.size, "shared memory range"),
            None => (body.len(), "body"),
        };
        let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if count.is_none_or(|c| c > room) {
            return Err(bad(format!(
                "{label}: shape {shape:?} has more elements than the {of} could hold"
            )));
        }
        let data = match (binary_size, inp.data, in_shm) {
            (_, Some(_), Some(_)) => {
                return Err(bad(format!(
                    "{label}: has both \"data\" and parameter \"shared_memory_region\""
                )));
            }
            (Some(_), None, Some(_)) => {
                return Err(bad(format!(
                    "{label}: has both parameters \"binary_data_size\" and \"shared_memory_region\""
                )));
            }
            (None, None, Some(r)) => {
                shm_inputs += 1;
                Data::Shm(r)
            }
            (Some(_), Some(_), None) => {
                return Err(bad(format!(
                    "{label}: has both \"data\" and parameter \"binary_data_size\""
                )));
            }
            (Some(n), None, None) => {
                if header_len.is_none() {
                    return Err(bad(format!(
                        "{label}: parameter \"binary_data_size\" needs the Inference-Header-Content-Length header"
                    )));
                }
                if n > binary.len() {
                    return Err(bad(format!(
                        "{label}: binary_data_size {n} but only {} bytes of binary data are left",
                        binary.len()
                    )));
                }
                let (mine, rest) = binary.split_at(n);
                binary = rest;
                Data::Binary(mine)
            }
            (None, Some(raw), None) => Data::Json(raw),
            (None, None, None) => return Err(bad(format!("{label}: missing \"data\""))),
        };
        slots[slot] = Some(Input {
            index: i,
            name,
            shape,
            data,
        });
    }
    if !binary.is_empty() {
        return Err(bad(format!(
            "{} bytes of binary data after the last binary input",
            binary.len()
        )));
    }
    let [Some(dense_in), Some(lengths_in), Some(indices_in)] = slots else {
        let missing: Vec<&str> = [DENSE, LENGTHS, INDICES]
            .into_iter()
            .zip(&slots)
            .filter(|(_, s)| s.is_none())
            .map(|(n, _)| n)
            .collect();
        let s = if missing.len() > 1 { "s" } else { "" };
        return Err(bad(format!(
            "missing input{s} \"{}\"",
            missing.join("\", \"")
        )));
    };

    // shapes against the model
    let nd = cfg.n_dense();
    let nt = cfg.n_tables();
    if dense_in.shape.len() != 2 || dense_in.shape[1] != nd {
        return Err(bad(format!(
            "{}: shape {} does not match [B, {nd}]",
            dense_in.label(),
            dense_in.shape_str()
        )));
    }
    let b = dense_in.shape[0];
    if lengths_in.shape != [b, nt] {
        return Err(bad(format!(
            "{}: shape {} does not match [{b}, {nt}] ([B, n_tables], B = {b} from \"dense\")",
            lengths_in.label(),
            lengths_in.shape_str()
        )));
    }
    if indices_in.shape.len() != 1 {
        return Err(bad(format!(
            "{}: shape {} does not match [N]",
            indices_in.label(),
            indices_in.shape_str()
        )));
    }

    // data
    let dense: Vec<f32> = dense_in.values()?.into_vec();
    let lengths: Vec<i32> = lengths_in.values()?.into_vec();
    let indices = indices_in.values::<i64>()?;
    let mut total: usize = 0;
    let mut per_table = vec![0usize; nt];
    for (k, &l) in lengths.iter().enumerate() {
        if l < 0 {
            return Err(bad(format!(
                "{}: lengths[{}][{}] = {l} is negative",
                lengths_in.label(),
                k / nt,
                k % nt
            )));
        }
        total += l as usize;
        per_table[k % nt] += l as usize;
    }
    if total != indices.len() {
        return Err(bad(format!(
            "{}: {} values but lengths sum to {total}",
            indices_in.label(),
            indices.len()
        )));
    }
    if let Some(t) = per_table.iter().position(|&n| n > u32::MAX as usize) {
        return Err(bad(format!(
            "{}: more than 2^32 ids for table {t}",
            indices_in.label()
        )));
    }
    let mut bags: Vec<Bags> = per_table
        .iter()
        .map(|&n| {
            let mut offsets = Vec::with_capacity(b + 1);
            offsets.push(0);
            Bags {
                offsets,
                ids: Vec::with_capacity(n),
            }
        })
        .collect();
    let mut at = 0usize;
    for s in 0..b {
        for (t, bag) in bags.iter_mut().enumerate() {
            let l = lengths[s * nt + t] as usize;
            let rows = cfg.tables[t] as u64;
            // (a negative id is >= rows as u64)
            match indices.push_ids(at..at + l, rows, &mut bag.ids) {
                Ok(()) => {}
                Err(Some(j)) => {
                    return Err(bad(format!(
                        "{}: indices[{j}] = {} (sample {s}, table {t}): out of range for table {t} with {rows} rows",
                        indices_in.label(),
                        indices.get(j)
                    )));
                }
                Err(None) => {
                    return Err(bad(format!(
                        "{}: an id of sample {s}, table {t} was out of range for table {t} with {rows} rows when read, and changed after (shared memory written while the request was read)",
                        indices_in.label()
                    )));
                }
            }
            at += l;
            bag.offsets.push(bag.ids.len() as u32);
        }
    }
    // the ids were range-checked as they were narrowed (push_ids)
    let batch = Batch::from_parts_ids_checked(cfg, b, dense, bags).map_err(|e| {
        let label = match &e {
            ModelError::Input { field, .. } if field.starts_with("dense") => dense_in.label(),
            _ => indices_in.label(),
        };
        match ApiError::from_input(e) {
            ApiError::BadRequest(m) => bad(format!("{label}: {m}")),
            other => other,
        }
    })?;

    // requested outputs
    let mut binary_output = bool_param(&req.parameters, "binary_data_output", "parameters")?;
    let mut shm_output = None;
    for (i, raw) in req.outputs.iter().flatten().enumerate() {
        let out: RawOutput = from_json(raw.get().as_bytes(), &format!("outputs[{i}]"))?;
        if out.name != SCORE {
            return Err(bad(format!(
                "outputs[{i}]: unknown output {:?} (the model has \"score\")",
                out.name
            )));
        }
        let label = format!("outputs[{i}] \"score\"");
        if out
            .parameters
            .as_ref()
            .is_some_and(|p| p.contains_key("binary_data"))
        {
            binary_output = bool_param(&out.parameters, "binary_data", &label)?;
        }
        if let Some(r) = shm_ref(&out.parameters, &label, shm)? {
            let need = b * 4;
            if r.size < need {
                return Err(bad(format!(
                    "{label}: parameter \"shared_memory_byte_size\" {} is too small for shape [{b}, 1] of FP32 ({need} bytes)",
                    r.size
                )));
            }
            shm_output = Some(r);
        }
    }
    let timeout_us = match req.parameters.as_ref().and_then(|p| p.get("timeout")) {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            bad(format!(
                "parameters: \"timeout\" must be a non-negative integer of microseconds, got {v}"
            ))
        })?),
    };
    Ok(InferRequest {
        batch,
        id: req.id,
        binary_output,
        timeout_us,
        shm_output,
        shm_inputs,
    })
}

#[derive(Serialize)]
struct OutputTensor<'a> {
    name: &'static str,
    datatype: &'static str,
    shape: [usize; 2],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a [f32]>,
}

#[derive(Serialize)]
struct InferResponse<'a> {
    model_name: &'a str,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: [OutputTensor<'a>; 1],
}

/// The response body, and the JSON header length when the scores follow it in binary.
/// With `shm` (the scores were written to shared memory), the output carries that range's
/// parameters and no data.
pub fn infer_response(
    model: &str,
    version: u64,
    id: Option<&str>,
    scores: &[f32],
    binary: bool,
    shm: Option<&ShmRef>,
) -> (Vec<u8>, Option<usize>) {
    let binary = binary && shm.is_none();
    let parameters = match shm {
        Some(r) => Some(r.parameters()),
        None => binary.then(|| serde_json::json!({"binary_data_size": scores.len() * 4})),
    };
    let out = OutputTensor {
        name: SCORE,
        datatype: "FP32",
        shape: [scores.len(), 1],
        parameters,
        data: (!binary && shm.is_none()).then_some(scores),
    };
    let resp = InferResponse {
        model_name: model,
        model_version: version.to_string(),
        id,
        outputs: [out],
    };
    let mut body = serde_json::to_vec(&resp).expect("serializable");
    if !binary {
        return (body, None);
    }
    let header = body.len();
    body.reserve(scores.len() * 4);
    for s in scores {
        body.extend_from_slice(&s.to_le_bytes());
    }
    (body, Some(header))
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a predict request object {\"samples\": [..]}"
)]
struct PredictRequest<'a> {
    #[serde(borrow)]
    samples: Vec<&'a RawValue>,
}

/// Parses `{"samples": [<predict-format samples>]}`; errors name the sample and field.
pub fn parse_predict(body: &[u8], cfg: &DlrmConfig) -> Result<Batch, ApiError> {
    let req: PredictRequest = from_json(body, "")?;
    let mut batch = Batch::empty(cfg);
    for (i, raw) in req.samples.iter().enumerate() {
        let prefix = |e| match ApiError::from_input(e) {
            ApiError::BadRequest(m) => bad(format!("samples[{i}]: {m}")),
            other => other,
        };
        let s = parse_sample(raw.get(), cfg).map_err(prefix)?;
        batch.push(cfg, &s).map_err(prefix)?;
    }
    Ok(batch)
}

#[derive(Serialize)]
pub struct PredictResponse<'a> {
    pub scores: &'a [f32],
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DlrmConfig {
        DlrmConfig::from_json_str(
            r#"{"arch_mlp_bot":"2-4","arch_mlp_top":"3-1","arch_embedding_size":"5-3",
                "arch_sparse_feature_size":4,"arch_interaction_op":"cat"}"#,
        )
        .unwrap()
    }

    fn req(dense: &str, lengths: &str, indices: &str, n: usize) -> String {
        format!(
            r#"{{"inputs": [
                {{"name": "dense", "datatype": "FP32", "shape": [2, 2], "data": {dense}}},
                {{"name": "lengths", "datatype": "INT32", "shape": [2, 2], "data": {lengths}}},
                {{"name": "indices", "datatype": "INT64", "shape": [{n}], "data": {indices}}}]}}"#
        )
    }

    #[test]
    fn flat_and_nested_data_give_the_same_batch() {
        let flat = parse_infer(
            req("[1, 2.5, 3, 4]", "[2, 0, 1, 1]", "[4, 0, 3, 2]", 4).as_bytes(),
            None,
            &cfg(),
            &Registry::new(false),
        )
        .unwrap();
        let nested = parse_infer(
            req("[[1, 2.5], [3, 4]]", "[[2, 0], [1, 1]]", "[4, 0, 3, 2]", 4).as_bytes(),
            None,
            &cfg(),
            &Registry::new(false),
        )
        .unwrap();
        assert_eq!(flat.batch, nested.batch);
        let b = &flat.batch;
        assert_eq!(b.dense(), &[1.0, 2.5, 3.0, 4.0]);
        // bag (b, t) takes the next lengths[b][t] ids, row-major
        assert_eq!(
            b.bags()[0],
            Bags {
                offsets: vec![0, 2, 3],
                ids: vec![4, 0, 3]
            }
        );
        assert_eq!(
            b.bags()[1],
            Bags {
                offsets: vec![0, 0, 1],
                ids: vec![2]
            }
        );
        assert!(!flat.binary_output);
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let e = parse_infer(
            req(&deep, "[2, 0, 1, 1]", "[4, 0, 3, 2]", 4).as_bytes(),
            None,
            &cfg(),
            &Registry::new(false),
        )
        .unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(e.message().contains("inputs[0] \"dense\""), "{e}");
    }

    #[test]
    fn binary_header_length_past_the_body_is_400() {
        let e = parse_infer(b"{}", Some(10), &cfg(), &Registry::new(false)).unwrap_err();
        assert!(
            e.message().contains("Inference-Header-Content-Length: 10"),
            "{e}"
        );
    }
}
