//! The KServe v2 inference protocol and the plain `/v1` predict format: a request is parsed
//! into a validated [`Batch`](dlrs_model::Batch), every error naming the tensor and field;
//! the scores are answered as an output tensor.
//!
//! - `request`: the request's JSON, its inputs' headers checked against the model, and
//!   the batch built from their data;
//! - `tensor`: one input tensor's data (JSON, binary or in shared memory) decoded into
//!   typed values;
//! - `shm_ref`: the parameters naming a range of a registered shared memory region;
//! - `response`: the answers.

mod request;
mod response;
mod shm_ref;
mod tensor;

use dlrs_model::DlrmConfig;
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;

pub use request::{InferRequest, declared_batch, parse_infer, parse_predict};
pub use response::{PredictResponse, infer_response};
pub use shm_ref::ShmRef;

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

/// A 400 answer.
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
