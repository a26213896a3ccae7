//! The requests: a KServe v2 inference request checked against the model and turned into a
//! [`Batch`] (the JSON, then each input's header, the shapes, the data, the requested
//! outputs, in that order, so that the first error found is the one answered), and the
//! plain `/v1` predict request.

use dlrs_model::batch::parse_sample;
use dlrs_model::tables::idmap::{IdMapSpec, RawId, hash_row};
use dlrs_model::{Bags, Batch, DlrmConfig, ModelError};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::shm_ref::ShmRef;
use super::tensor::{Data, Input, Values, input_label};
use super::{DENSE, INDICES, LENGTHS, SCORE, bad, from_json};
use crate::error::ApiError;
use crate::shm::Registry;

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
    let (json, binary) = split_body(body, header_len)?;
    let req: RawRequest = from_json(json, "")?;
    let inputs = Inputs::read(&req.inputs, body.len(), binary, shm)?;
    let b = inputs.batch_size(cfg)?;
    let batch = inputs.batch(b, cfg)?;
    let (binary_output, shm_output) = requested_outputs(&req, b, shm)?;
    let timeout_us = timeout(&req.parameters)?;
    Ok(InferRequest {
        batch,
        id: req.id,
        binary_output,
        timeout_us,
        shm_output,
        shm_inputs: inputs.from_shm,
    })
}

/// The body's JSON and, with the binary tensor data extension (`header_len`), the binary
/// data after it.
fn split_body(body: &[u8], header_len: Option<usize>) -> Result<(&[u8], Binary<'_>), ApiError> {
    match header_len {
        Some(l) if l > body.len() => Err(bad(format!(
            "header Inference-Header-Content-Length: {l} is larger than the body ({} bytes)",
            body.len()
        ))),
        Some(l) => {
            let (json, rest) = body.split_at(l);
            Ok((
                json,
                Binary {
                    rest,
                    declared: true,
                },
            ))
        }
        None => Ok((
            body,
            Binary {
                rest: &[],
                declared: false,
            },
        )),
    }
}

/// The binary data after the JSON, handed out to the binary inputs in input order.
struct Binary<'a> {
    /// what the inputs so far left
    rest: &'a [u8],
    /// whether the request has an `Inference-Header-Content-Length` header at all
    declared: bool,
}

impl<'a> Binary<'a> {
    /// The next `n` bytes, for the input `label`.
    fn take(&mut self, label: &str, n: usize) -> Result<&'a [u8], ApiError> {
        if !self.declared {
            return Err(bad(format!(
                "{label}: parameter \"binary_data_size\" needs the Inference-Header-Content-Length header"
            )));
        }
        if n > self.rest.len() {
            return Err(bad(format!(
                "{label}: binary_data_size {n} but only {} bytes of binary data are left",
                self.rest.len()
            )));
        }
        let (mine, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(mine)
    }

    /// Checks that the binary inputs took all of it.
    fn finish(&self) -> Result<(), ApiError> {
        if self.rest.is_empty() {
            return Ok(());
        }
        Err(bad(format!(
            "{} bytes of binary data after the last binary input",
            self.rest.len()
        )))
    }
}

/// The three inputs' headers, checked, with where their data is.
struct Inputs<'a> {
    dense: Input<'a>,
    lengths: Input<'a>,
    indices: Input<'a>,
    /// inputs whose data is in system shared memory
    from_shm: usize,
}

impl<'a> Inputs<'a> {
    /// Reads the request's `inputs` (each once, in order): every one known and given once,
    /// with its datatype, a shape without negative dimensions and exactly one place for its
    /// data (`data`, binary data, or shared memory), then the binary data all taken and no
    /// input missing. `body_len` bounds the elements a shape may declare.
    fn read(
        raw: &[&'a RawValue],
        body_len: usize,
        mut binary: Binary<'a>,
        shm: &Registry,
    ) -> Result<Self, ApiError> {
        let mut slots: [Option<Input>; 3] = [None, None, None];
        for (i, raw) in raw.iter().enumerate() {
            let inp: RawInput = from_json(raw.get().as_bytes(), &format!("inputs[{i}]"))?;
            let (slot, name) = input_slot(i, &inp.name)?;
            if let Some(prev) = &slots[slot] {
                return Err(bad(format!(
                    "inputs[{i}]: duplicate input \"{name}\" (also inputs[{}])",
                    prev.index
                )));
            }
            let label = input_label(i, name);
            let shape = checked_shape(&label, name, &inp)?;
            let data = data_of(&label, inp, &shape, body_len, &mut binary, shm)?;
            slots[slot] = Some(Input {
                index: i,
                name,
                shape,
                data,
            });
        }
        binary.finish()?;
        let [Some(dense), Some(lengths), Some(indices)] = slots else {
            return Err(missing_inputs(&slots));
        };
        let from_shm = [&dense, &lengths, &indices]
            .iter()
            .filter(|i| matches!(i.data, Data::Shm(_)))
            .count();
        Ok(Inputs {
            dense,
            lengths,
            indices,
            from_shm,
        })
    }

    /// Checks the shapes against the model and returns the batch size B: `dense` is
    /// `[B, n_dense]`, `lengths` `[B, n_tables]`, `indices` `[N]`.
    fn batch_size(&self, cfg: &DlrmConfig) -> Result<usize, ApiError> {
        let nd = cfg.n_dense();
        let nt = cfg.n_tables();
        let dense = &self.dense;
        if dense.shape.len() != 2 || dense.shape[1] != nd {
            return Err(bad(format!(
                "{}: shape {} does not match [B, {nd}]",
                dense.label(),
                dense.shape_str()
            )));
        }
        let b = dense.shape[0];
        if self.lengths.shape != [b, nt] {
            return Err(bad(format!(
                "{}: shape {} does not match [{b}, {nt}] ([B, n_tables], B = {b} from \"dense\")",
                self.lengths.label(),
                self.lengths.shape_str()
            )));
        }
        if self.indices.shape.len() != 1 {
            return Err(bad(format!(
                "{}: shape {} does not match [N]",
                self.indices.label(),
                self.indices.shape_str()
            )));
        }
        Ok(b)
    }

    /// The batch of `b` samples the inputs' data make, every value read once: the dense
    /// features, and the bags the lengths cut the ids into, each id range-checked as it is
    /// copied.
    fn batch(&self, b: usize, cfg: &DlrmConfig) -> Result<Batch, ApiError> {
        let dense: Vec<f32> = self.dense.values()?.into_vec();
        let lengths: Vec<i32> = self.lengths.values()?.into_vec();
        let indices = self.indices.values::<i64>()?;
        let per_table = self.ids_per_table(&lengths, indices.len(), cfg.n_tables())?;
        let bags = self.bags(&lengths, &indices, &per_table, b, cfg)?;
        // the ids were range-checked as they were narrowed (push_ids)
        Batch::from_parts_ids_checked(cfg, b, dense, bags).map_err(|e| {
            let label = match &e {
                ModelError::Input { field, .. } if field.starts_with("dense") => self.dense.label(),
                _ => self.indices.label(),
            };
            match ApiError::from_input(e) {
                ApiError::BadRequest(m) => bad(format!("{label}: {m}")),
                other => other,
            }
        })
    }

    /// How many ids each of the `nt` tables gets: the lengths, none negative, must sum to
    /// the `n_ids` ids given, and no table may get 2^32 or more.
    fn ids_per_table(
        &self,
        lengths: &[i32],
        n_ids: usize,
        nt: usize,
    ) -> Result<Vec<usize>, ApiError> {
        let mut total: usize = 0;
        let mut per_table = vec![0usize; nt];
        for (k, &l) in lengths.iter().enumerate() {
            if l < 0 {
                return Err(bad(format!(
                    "{}: lengths[{}][{}] = {l} is negative",
                    self.lengths.label(),
                    k / nt,
                    k % nt
                )));
            }
            total += l as usize;
            per_table[k % nt] += l as usize;
        }
        if total != n_ids {
            return Err(bad(format!(
                "{}: {n_ids} values but lengths sum to {total}",
                self.indices.label(),
            )));
        }
        if let Some(t) = per_table.iter().position(|&n| n > u32::MAX as usize) {
            return Err(bad(format!(
                "{}: more than 2^32 ids for table {t}",
                self.indices.label()
            )));
        }
        Ok(per_table)
    }

    /// The bags of `b` samples: bag `(s, t)` takes the next `lengths[s][t]` ids, row-major,
    /// each checked against table `t`'s rows (never clamped or remapped).
    fn bags(
        &self,
        lengths: &[i32],
        indices: &Values<'_, i64>,
        per_table: &[usize],
        b: usize,
        cfg: &DlrmConfig,
    ) -> Result<Vec<Bags>, ApiError> {
        let nt = per_table.len();
        let mut bags: Vec<Bags> = per_table
            .iter()
            .map(|&n| {
                let mut offsets = Vec::with_capacity(b + 1);
                offsets.push(0);
                Bags {
                    offsets: offsets.into(),
                    ids: Vec::with_capacity(n).into(),
                }
            })
            .collect();
        let mut at = 0usize;
        for s in 0..b {
            for (t, bag) in bags.iter_mut().enumerate() {
                let l = lengths[s * nt + t] as usize;
                let rows = cfg.tables[t] as u64;
                match cfg.id_map(t) {
                    IdMapSpec::Index => {}
                    IdMapSpec::Hash => {
                        // raw ids: each value read once, then hashed to its row
                        let ids = bag.ids.to_mut();
                        for j in at..at + l {
                            let v = indices.get(j);
                            if v < 0 {
                                return Err(bad(format!(
                                    "{}: indices[{j}] = {v} (sample {s}, table {t}): a raw id of table {t} (hash id map) must be non-negative",
                                    self.indices.label()
                                )));
                            }
                            ids.push(hash_row(RawId::Int(v as u64), t, rows as usize));
                        }
                        at += l;
                        let n = bag.ids.len() as u32;
                        bag.offsets.to_mut().push(n);
                        continue;
                    }
                    IdMapSpec::Collisionless(_) => {
                        return Err(bad(format!(
                            "{}: table {t} has a collisionless id map, whose raw ids this endpoint does not resolve (dlrs predict does)",
                            self.indices.label()
                        )));
                    }
                }
                // (a negative id is >= rows as u64)
                match indices.push_ids(at..at + l, rows, bag.ids.to_mut()) {
                    Ok(()) => {}
                    Err(Some(j)) => {
                        return Err(bad(format!(
                            "{}: indices[{j}] = {} (sample {s}, table {t}): out of range for table {t} with {rows} rows",
                            self.indices.label(),
                            indices.get(j)
                        )));
                    }
                    Err(None) => {
                        return Err(bad(format!(
                            "{}: an id of sample {s}, table {t} was out of range for table {t} with {rows} rows when read, and changed after (shared memory written while the request was read)",
                            self.indices.label()
                        )));
                    }
                }
                at += l;
                let n = bag.ids.len() as u32;
                bag.offsets.to_mut().push(n);
            }
        }
        Ok(bags)
    }
}

/// Which of the three inputs `inputs[i]` named `name` is (0 dense, 1 lengths, 2 indices).
fn input_slot(i: usize, name: &str) -> Result<(usize, &'static str), ApiError> {
    match name {
        DENSE => Ok((0, DENSE)),
        LENGTHS => Ok((1, LENGTHS)),
        INDICES => Ok((2, INDICES)),
        other => Err(bad(format!(
            "inputs[{i}]: unknown input {other:?} (the model takes \"dense\", \"lengths\", \"indices\")"
        ))),
    }
}

/// The "missing input(s)" error for the empty `slots`.
fn missing_inputs(slots: &[Option<Input>; 3]) -> ApiError {
    let missing: Vec<&str> = [DENSE, LENGTHS, INDICES]
        .into_iter()
        .zip(slots)
        .filter(|(_, s)| s.is_none())
        .map(|(n, _)| n)
        .collect();
    let s = if missing.len() > 1 { "s" } else { "" };
    bad(format!("missing input{s} \"{}\"", missing.join("\", \"")))
}

fn expected_datatype(name: &str) -> &'static str {
    match name {
        DENSE => "FP32",
        LENGTHS => "INT32",
        _ => "INT64",
    }
}

/// The shape of input `label` (named `name`), checked: its datatype is the one the model
/// takes for it, and no dimension is negative.
fn checked_shape(label: &str, name: &str, inp: &RawInput) -> Result<Vec<usize>, ApiError> {
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
    Ok(inp.shape.iter().map(|&d| d as usize).collect())
}

/// Where the data of input `label` of `shape` is: its `data`, its `binary_data_size` bytes
/// of `binary`, or the shared memory range its parameters name; exactly one of them. Its
/// shape may not declare more elements than that place could hold (every element takes at
/// least a byte of the `body_len`-byte body or of the range).
fn data_of<'a>(
    label: &str,
    inp: RawInput<'a>,
    shape: &[usize],
    body_len: usize,
    binary: &mut Binary<'a>,
    shm: &Registry,
) -> Result<Data<'a>, ApiError> {
    let binary_size = match inp
        .parameters
        .as_ref()
        .and_then(|p| p.get("binary_data_size"))
    {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            bad(format!(
                "{label}: parameter \"binary_data_size\" must be a non-negative integer, got {v}"
            ))
        })? as usize),
    };
    let in_shm = ShmRef::from_parameters(&inp.parameters, label, shm)?;
    let (room, of) = match &in_shm {
        Some(r) => (r.size, "shared memory range"),
        None => (body_len, "body"),
    };
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if count.is_none_or(|c| c > room) {
        return Err(bad(format!(
            "{label}: shape {shape:?} has more elements than the {of} could hold"
        )));
    }
    match (binary_size, inp.data, in_shm) {
        (_, Some(_), Some(_)) => Err(bad(format!(
            "{label}: has both \"data\" and parameter \"shared_memory_region\""
        ))),
        (Some(_), None, Some(_)) => Err(bad(format!(
            "{label}: has both parameters \"binary_data_size\" and \"shared_memory_region\""
        ))),
        (None, None, Some(r)) => Ok(Data::Shm(r)),
        (Some(_), Some(_), None) => Err(bad(format!(
            "{label}: has both \"data\" and parameter \"binary_data_size\""
        ))),
        (Some(n), None, None) => binary.take(label, n).map(Data::Binary),
        (None, Some(raw), None) => Ok(Data::Json(raw)),
        (None, None, None) => Err(bad(format!("{label}: missing \"data\""))),
    }
}

/// The requested outputs: whether `score` is answered as binary data (the request's
/// `binary_data_output`, or the output's own `binary_data`), and the shared memory range it
/// is written to instead, if any (one that holds `b` scores).
fn requested_outputs(
    req: &RawRequest,
    b: usize,
    shm: &Registry,
) -> Result<(bool, Option<ShmRef>), ApiError> {
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
        if let Some(r) = ShmRef::from_parameters(&out.parameters, &label, shm)? {
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
    Ok((binary_output, shm_output))
}

/// Triton's request parameter `timeout`, in microseconds.
fn timeout(params: &Option<Map<String, Value>>) -> Result<Option<u64>, ApiError> {
    match params.as_ref().and_then(|p| p.get("timeout")) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            bad(format!(
                "parameters: \"timeout\" must be a non-negative integer of microseconds, got {v}"
            ))
        }),
    }
}

/// The boolean parameter `key` of `params` (false when absent); the error names `what`.
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
                offsets: vec![0, 2, 3].into(),
                ids: vec![4, 0, 3].into()
            }
        );
        assert_eq!(
            b.bags()[1],
            Bags {
                offsets: vec![0, 0, 1].into(),
                ids: vec![2].into()
            }
        );
        assert!(!flat.binary_output);
    }

    #[test]
    fn raw_ids_of_hash_tables_are_hashed_exactly_and_checked() {
        let with = |map: &str| {
            DlrmConfig::from_json_str(&format!(
                r#"{{"arch_mlp_bot":"2-4","arch_mlp_top":"3-1","arch_embedding_size":"5-1000000",
                "arch_sparse_feature_size":4,"arch_interaction_op":"cat","dlrs_id_map":["index","{map}"]}}"#
            ))
            .unwrap()
        };
        let (a, b) = ((1i64 << 62) + 2, (1i64 << 62) + 3);
        let got = parse_infer(
            req(
                "[1, 2.5, 3, 4]",
                "[1, 1, 0, 1]",
                &format!("[4, {a}, {b}]"),
                3,
            )
            .as_bytes(),
            None,
            &with("hash"),
            &Registry::new(false),
        )
        .unwrap();
        let rows = |v: i64| hash_row(RawId::Int(v as u64), 1, 1_000_000);
        assert_eq!(got.batch.bags()[1].ids, vec![rows(a), rows(b)]);
        assert_ne!(rows(a), rows(b));
        let e = parse_infer(
            req("[1, 2.5, 3, 4]", "[1, 1, 0, 1]", "[4, -7, 1]", 3).as_bytes(),
            None,
            &with("hash"),
            &Registry::new(false),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("indices[1] = -7") && e.contains("table 1"),
            "{e}"
        );
        let e = parse_infer(
            req("[1, 2.5, 3, 4]", "[1, 1, 0, 1]", "[4, 7, 1]", 3).as_bytes(),
            None,
            &with("collisionless"),
            &Registry::new(false),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("table 1 has a collisionless id map"), "{e}");
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

    #[test]
    fn binary_data_is_handed_out_in_order_and_must_all_be_taken() {
        let (json, mut bin) = split_body(b"{}abcdef", Some(2)).unwrap();
        assert_eq!(json, b"{}");
        assert_eq!(bin.take("a", 2).unwrap(), b"ab");
        let e = bin.take("b", 5).unwrap_err();
        assert_eq!(
            e.message(),
            "b: binary_data_size 5 but only 4 bytes of binary data are left"
        );
        assert_eq!(
            bin.finish().unwrap_err().message(),
            "4 bytes of binary data after the last binary input"
        );
        assert_eq!(bin.take("b", 4).unwrap(), b"cdef");
        assert!(bin.finish().is_ok());
        let (_, mut none) = split_body(b"{}", None).unwrap();
        assert!(none.finish().is_ok());
        assert!(
            none.take("c", 0)
                .unwrap_err()
                .message()
                .contains("needs the Inference-Header-Content-Length header")
        );
    }

    #[test]
    fn missing_inputs_are_named_together() {
        let e = parse_infer(
            br#"{"inputs": [{"name": "lengths", "datatype": "INT32", "shape": [0, 2], "data": []}]}"#,
            None,
            &cfg(),
            &Registry::new(false),
        )
        .unwrap_err();
        assert_eq!(e.message(), "missing inputs \"dense\", \"indices\"");
    }

    #[test]
    fn the_timeout_parameter_is_microseconds() {
        let p = |v: Value| Some(Map::from_iter([("timeout".to_string(), v)]));
        assert_eq!(timeout(&None).unwrap(), None);
        assert_eq!(timeout(&p(Value::from(1500))).unwrap(), Some(1500));
        assert!(timeout(&p(Value::from(-1))).is_err());
        assert!(timeout(&p(Value::from("1"))).is_err());
    }
}
