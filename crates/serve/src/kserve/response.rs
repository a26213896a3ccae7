//! The answers: the v2 inference response (the `score` output as JSON, as binary data
//! after the JSON, or written to shared memory) and the `/v1` predict response.

use serde::Serialize;
use serde_json::Value;

use super::SCORE;
use super::shm_ref::ShmRef;

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

/// The `/v1` predict answer: one score per sample.
#[derive(Serialize)]
pub struct PredictResponse<'a> {
    pub scores: &'a [f32],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_answered_as_json_or_after_it_in_binary() {
        let (body, header) = infer_response("m", 3, Some("q1"), &[0.5, 0.25], false, None);
        assert_eq!(header, None);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"model_name": "m", "model_version": "3", "id": "q1",
                "outputs": [{"name": "score", "datatype": "FP32", "shape": [2, 1],
                    "data": [0.5, 0.25]}]})
        );
        let (body, header) = infer_response("m", 3, None, &[0.5, 0.25], true, None);
        let h = header.unwrap();
        let v: Value = serde_json::from_slice(&body[..h]).unwrap();
        assert_eq!(
            v["outputs"][0]["parameters"],
            serde_json::json!({"binary_data_size": 8})
        );
        assert!(v.get("id").is_none());
        let scores: Vec<f32> = body[h..]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(scores, [0.5, 0.25]);
    }
}
