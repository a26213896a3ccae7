//! The queries: a pool of synthetic batches generated before the measurement (so generation
//! never sits on the send path), and their HTTP bodies.

use std::fmt::Write as _;

use bytes::Bytes;
use dlrs_model::synth::{IdDist, synth_batch};
use dlrs_model::{Batch, DlrmConfig};

use crate::dist::QuerySize;
use crate::error::LoadgenError;

/// Most bytes of batches a pool may take ([`batch_bytes`]): generation stops there and the
/// pool is smaller than `--pool`. Counted on the batches, not on the encoded bodies, so that
/// the HTTP load and the twin always get the same pool.
pub const MAX_POOL_BYTES: usize = 256 << 20;

/// The memory a batch holds, bytes.
pub fn batch_bytes(b: &Batch) -> usize {
    b.dense().len() * 4
        + b.bags()
            .iter()
            .map(|g| (g.ids.len() + g.offsets.len()) * 4)
            .sum::<usize>()
}

/// What the queries look like.
#[derive(Clone, Debug)]
pub struct Workload {
    pub query_size: QuerySize,
    pub dist: IdDist,
    pub ids_per_table: usize,
    /// distinct queries generated; query `i` of a schedule is pool entry `i % pool`
    pub pool: usize,
    pub seed: u64,
}

impl Workload {
    /// The pool's query sizes (the same for the HTTP load and the twin with the same seed).
    pub fn sizes(&self) -> Vec<usize> {
        self.query_size
            .draw(self.pool.max(1), self.seed ^ 0x0051_2e5a_11ce_0002)
    }

    /// Calls `each(j, batch)` for pool entry `j = 0, 1, ..` in order (`sizes()[j]` samples,
    /// standard-normal dense features, `ids_per_table` ids per bag drawn from `dist`) until
    /// the pool is complete or `each` returns false (enough memory).
    pub fn generate(
        &self,
        cfg: &DlrmConfig,
        mut each: impl FnMut(usize, Batch) -> Result<bool, LoadgenError>,
    ) -> Result<(), LoadgenError> {
        for (j, &n) in self.sizes().iter().enumerate() {
            let seed = self
                .seed
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(j as u64);
            let b = synth_batch(cfg, n, self.ids_per_table, self.dist, seed)
                .map_err(LoadgenError::Synth)?;
            if !each(j, b)? {
                break;
            }
        }
        Ok(())
    }

    /// The pool as batches (fewer than `pool` if they would exceed [`MAX_POOL_BYTES`]).
    pub fn batches(&self, cfg: &DlrmConfig) -> Result<Vec<Batch>, LoadgenError> {
        let mut out = Vec::with_capacity(self.pool);
        let mut bytes = 0;
        self.generate(cfg, |_, b| {
            bytes += batch_bytes(&b);
            out.push(b);
            Ok(bytes < MAX_POOL_BYTES)
        })?;
        Ok(out)
    }

    /// The pool as request bodies (fewer than `pool` if they would exceed [`MAX_POOL_BYTES`]).
    pub fn bodies(
        &self,
        cfg: &DlrmConfig,
        protocol: Protocol,
        binary: bool,
    ) -> Result<Vec<Body>, LoadgenError> {
        self.encoded(cfg, |b| Ok(encode(b, protocol, binary)))
    }

    /// The pool as v2 requests whose tensors are in the system shared memory region
    /// `region` ([`encode_shm`]; fewer than `pool` if they would exceed [`MAX_POOL_BYTES`]):
    /// `store` writes each tensor ([`tensors_le`]) and returns its offset in the region.
    pub fn shm_bodies(
        &self,
        cfg: &DlrmConfig,
        region: &str,
        store: &mut dyn FnMut(&[u8]) -> Result<u64, LoadgenError>,
    ) -> Result<Vec<Body>, LoadgenError> {
        self.encoded(cfg, |b| {
            let [d, l, i] = tensors_le(b);
            let ranges = [
                (store(&d)?, d.len()),
                (store(&l)?, l.len()),
                (store(&i)?, i.len()),
            ];
            Ok(encode_shm(b, region, ranges))
        })
    }

    /// The pool, each batch encoded by `enc` (fewer than `pool` if the batches would exceed
    /// [`MAX_POOL_BYTES`]).
    fn encoded(
        &self,
        cfg: &DlrmConfig,
        mut enc: impl FnMut(&Batch) -> Result<Body, LoadgenError>,
    ) -> Result<Vec<Body>, LoadgenError> {
        let mut out = Vec::with_capacity(self.pool);
        let mut bytes = 0;
        self.generate(cfg, |_, b| {
            bytes += batch_bytes(&b);
            out.push(enc(&b)?);
            Ok(bytes < MAX_POOL_BYTES)
        })?;
        Ok(out)
    }
}

/// How queries are sent over HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `POST /v2/models/{name}/infer` with `dense`, `lengths`, `indices`
    V2,
    /// `POST /v1/models/{name}/predict` with `{"samples": [...]}`
    V1,
}

impl Protocol {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "v2" => Ok(Protocol::V2),
            "v1" => Ok(Protocol::V1),
            _ => Err(format!("`{s}`: expected v2 or v1")),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Protocol::V2 => "v2",
            Protocol::V1 => "v1",
        }
    }
}

/// One query's HTTP request body.
#[derive(Clone, Debug)]
pub struct Body {
    pub bytes: Bytes,
    /// `Inference-Header-Content-Length` (binary tensor data extension), if used
    pub header_len: Option<usize>,
    /// samples in the query
    pub size: usize,
}

fn push_list<T: std::fmt::Display>(s: &mut String, items: impl IntoIterator<Item = T>) {
    s.push('[');
    for (i, v) in items.into_iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        write!(s, "{v}").expect("writing to a String");
    }
    s.push(']');
}

/// `lengths[b][t]`, row-major.
fn lengths(b: &Batch) -> impl Iterator<Item = u32> + '_ {
    (0..b.size()).flat_map(move |s| {
        b.bags()
            .iter()
            .map(move |bag| bag.offsets[s + 1] - bag.offsets[s])
    })
}

/// The ids of bag `(s, t)` for every sample `s`, table `t`, in that order.
fn indices(b: &Batch) -> impl Iterator<Item = u32> + '_ {
    (0..b.size()).flat_map(move |s| {
        b.bags().iter().flat_map(move |bag| {
            bag.ids[bag.offsets[s] as usize..bag.offsets[s + 1] as usize]
                .iter()
                .copied()
        })
    })
}

/// The request body of `b` (`binary`: the v2 binary tensor data extension for all inputs).
pub fn encode(b: &Batch, protocol: Protocol, binary: bool) -> Body {
    let n = b.size();
    let nt = b.bags().len();
    let nd = b.dense().len().checked_div(n).unwrap_or(0);
    let n_ids = b.id_count();
    match protocol {
        Protocol::V1 => {
            let mut s = String::with_capacity(n * (nd * 12 + n_ids / n.max(1) * 8 + 32) + 16);
            s.push_str("{\"samples\":[");
            for i in 0..n {
                if i > 0 {
                    s.push(',');
                }
                s.push_str("{\"dense\":");
                push_list(&mut s, &b.dense()[i * nd..(i + 1) * nd]);
                s.push_str(",\"sparse\":[");
                for (t, bag) in b.bags().iter().enumerate() {
                    if t > 0 {
                        s.push(',');
                    }
                    push_list(
                        &mut s,
                        &bag.ids[bag.offsets[i] as usize..bag.offsets[i + 1] as usize],
                    );
                }
                s.push_str("]}");
            }
            s.push_str("]}");
            Body {
                bytes: Bytes::from(s),
                header_len: None,
                size: n,
            }
        }
        Protocol::V2 if binary => {
            let t = tensors_le(b);
            let params = t
                .each_ref()
                .map(|x| format!("{{\"binary_data_size\":{}}}", x.len()));
            let s = v2_header(b, &params);
            let header_len = s.len();
            let mut bytes = s.into_bytes();
            bytes.reserve(t.iter().map(Vec::len).sum());
            t.iter().for_each(|x| bytes.extend_from_slice(x));
            Body {
                bytes: Bytes::from(bytes),
                header_len: Some(header_len),
                size: n,
            }
        }
        Protocol::V2 => {
            let mut s = String::with_capacity(n * nd * 12 + n * nt * 3 + n_ids * 8 + 256);
            write!(s, "{{\"inputs\":[{{\"name\":\"dense\",\"datatype\":\"FP32\",\"shape\":[{n},{nd}],\"data\":")
                .expect("writing to a String");
            push_list(&mut s, b.dense());
            write!(
                s,
                "}},{{\"name\":\"lengths\",\"datatype\":\"INT32\",\"shape\":[{n},{nt}],\"data\":"
            )
            .expect("writing to a String");
            push_list(&mut s, lengths(b));
            write!(
                s,
                "}},{{\"name\":\"indices\",\"datatype\":\"INT64\",\"shape\":[{n_ids}],\"data\":"
            )
            .expect("writing to a String");
            push_list(&mut s, indices(b));
            s.push_str("}],\"outputs\":[{\"name\":\"score\"}]}");
            Body {
                bytes: Bytes::from(s),
                header_len: None,
                size: n,
            }
        }
    }
}

/// The three input tensors of `b` (dense FP32, lengths INT32, indices INT64) as
/// little-endian bytes: the binary data of the binary tensor data extension, and what system
/// shared memory holds.
pub fn tensors_le(b: &Batch) -> [Vec<u8>; 3] {
    [
        b.dense().iter().flat_map(|v| v.to_le_bytes()).collect(),
        lengths(b).flat_map(|v| (v as i32).to_le_bytes()).collect(),
        indices(b).flat_map(|v| (v as i64).to_le_bytes()).collect(),
    ]
}

/// The JSON of a v2 request for `b` whose inputs `dense`, `lengths`, `indices` carry
/// `parameters` (JSON objects) instead of data; the output is answered in JSON.
fn v2_header(b: &Batch, parameters: &[String; 3]) -> String {
    let n = b.size();
    let nt = b.bags().len();
    let nd = b.dense().len().checked_div(n).unwrap_or(0);
    let n_ids = b.id_count();
    let [pd, pl, pi] = parameters;
    format!(
        "{{\"inputs\":[\
         {{\"name\":\"dense\",\"datatype\":\"FP32\",\"shape\":[{n},{nd}],\"parameters\":{pd}}},\
         {{\"name\":\"lengths\",\"datatype\":\"INT32\",\"shape\":[{n},{nt}],\"parameters\":{pl}}},\
         {{\"name\":\"indices\",\"datatype\":\"INT64\",\"shape\":[{n_ids}],\"parameters\":{pi}}}],\
         \"outputs\":[{{\"name\":\"score\"}}]}}"
    )
}

/// The v2 request body of `b` whose three input tensors ([`tensors_le`]) are at `ranges`
/// (offset, byte size) of the system shared memory region `region` (Triton's system shared
/// memory extension): a small JSON request, no tensor data.
pub fn encode_shm(b: &Batch, region: &str, ranges: [(u64, usize); 3]) -> Body {
    let params = ranges.map(|(offset, size)| {
        format!(
            "{{\"shared_memory_region\":\"{region}\",\"shared_memory_offset\":{offset},\"shared_memory_byte_size\":{size}}}"
        )
    });
    Body {
        bytes: Bytes::from(v2_header(b, &params)),
        header_len: None,
        size: b.size(),
    }
}

#[derive(serde::Deserialize)]
struct V2Response {
    outputs: Vec<V2Output>,
}

#[derive(serde::Deserialize)]
struct V2Output {
    name: String,
    shape: Vec<usize>,
    #[serde(default)]
    data: Option<Vec<f32>>,
}

#[derive(serde::Deserialize)]
struct V1Response {
    scores: Vec<f32>,
}

/// Whether a 200 answer carries exactly `size` scores.
pub fn answer_ok(protocol: Protocol, body: &[u8], size: usize) -> bool {
    match protocol {
        Protocol::V2 => serde_json::from_slice::<V2Response>(body).is_ok_and(|r| {
            r.outputs.iter().any(|o| {
                o.name == "score"
                    && o.shape.first() == Some(&size)
                    && o.data.as_ref().is_none_or(|d| d.len() == size)
            })
        }),
        Protocol::V1 => {
            serde_json::from_slice::<V1Response>(body).is_ok_and(|r| r.scores.len() == size)
        }
    }
}
