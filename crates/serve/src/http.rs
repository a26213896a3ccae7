//! Routes and handlers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use http_body_util::BodyExt;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::batcher::{Job, Reply, ReplyTo, Reservation};
use crate::error::ApiError;
use crate::kserve;
use crate::request_id::{self, RequestId};
use crate::state::{AppState, InflightGuard, Version};

type St = State<Arc<AppState>>;

/// The header carrying a request's deadline, in milliseconds from its arrival.
pub const DEADLINE_HEADER: &str = "x-dlrs-deadline-ms";
/// The binary tensor data extension's header: length of the JSON part of the body.
pub const HEADER_LEN: &str = "inference-header-content-length";

/// Bodies at least this large are parsed on a blocking thread, not on the HTTP workers.
const PARSE_OFFLOAD_BYTES: usize = 64 << 10;

pub fn router(state: Arc<AppState>) -> Router {
    let budget = Arc::new(BodyBudget::new(state.config.max_body_memory_bytes));
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(model_metadata_v),
        )
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready_v),
        )
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer_v))
        .route("/v1/models/{name}/predict", post(predict))
        .route("/v2/repository/models/{name}/load", post(load))
        .route("/v2/systemsharedmemory/status", get(shm_status_all))
        .route(
            "/v2/systemsharedmemory/region/{region}/status",
            get(shm_status),
        )
        .route(
            "/v2/systemsharedmemory/region/{region}/register",
            post(shm_register),
        )
        .route(
            "/v2/systemsharedmemory/region/{region}/unregister",
            post(shm_unregister),
        )
        .route(
            "/v2/systemsharedmemory/unregister",
            post(shm_unregister_all),
        )
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(Arc::clone(&state), count))
        .layer(middleware::from_fn(request_id::layer))
        .layer(Extension(budget))
        .with_state(state)
}

/// Counts every answered request by route and status.
async fn count(State(st): St, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let t0 = Instant::now();
    let resp = next.run(req).await;
    st.metrics
        .request(&endpoint, resp.status().as_u16(), t0.elapsed());
    resp
}

async fn not_found(req: Request) -> ApiError {
    ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{} is not allowed on {}",
        req.method(),
        req.uri().path()
    ))
}

async fn server_metadata(State(st): St) -> Response {
    let mut extensions = vec!["binary_tensor_data", "model_repository"];
    if st.shm.enabled() {
        extensions.push("system_shared_memory");
    }
    axum::Json(json!({
        "name": "dlrs",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": extensions,
    }))
    .into_response()
}

async fn live() -> Response {
    axum::Json(json!({"live": true})).into_response()
}

async fn ready(State(st): St) -> Response {
    let r = st.ready();
    let status = if r {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(json!({"ready": r}))).into_response()
}

fn metadata_of(st: &AppState, name: &str, version: Option<&str>) -> Result<Response, ApiError> {
    let v = st.check_model(name, version)?;
    Ok(axum::Json(kserve::metadata(&st.name, v.number, &v.model.config)).into_response())
}

async fn model_metadata(State(st): St, Path(name): Path<String>) -> Result<Response, ApiError> {
    metadata_of(&st, &name, None)
}

async fn model_metadata_v(
    State(st): St,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    metadata_of(&st, &name, Some(&version))
}

fn ready_of(st: &AppState, name: &str, version: Option<&str>) -> Result<Response, ApiError> {
    st.check_model(name, version)?;
    let r = st.ready();
    let status = if r {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, axum::Json(json!({"name": st.name, "ready": r}))).into_response())
}

async fn model_ready(State(st): St, Path(name): Path<String>) -> Result<Response, ApiError> {
    ready_of(&st, &name, None)
}

async fn model_ready_v(
    State(st): St,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    ready_of(&st, &name, Some(&version))
}

async fn metrics(State(st): St) -> Response {
    let mut text = st.metrics.render();
    // a remote table tier's counters (cache hits, fetches, zero rows, ...), of the version
    // serving now
    if let Some(remote) = &st.current().model.remote {
        let tier = remote.tier();
        for (name, v) in remote.counters() {
            text.push_str(&format!(
                "# TYPE dlrs_{tier}_{name}_total counter\ndlrs_{tier}_{name}_total {v}\n"
            ));
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn load(State(st): St, Path(name): Path<String>) -> Result<Response, ApiError> {
    st.check_model(&name, None)?;
    let number = st.reload(false).await?;
    Ok(axum::Json(json!({"name": st.name, "version": number.to_string()})).into_response())
}

async fn shm_status_all(State(st): St) -> Result<Response, ApiError> {
    Ok(axum::Json(st.shm.status(None)?).into_response())
}

async fn shm_status(State(st): St, Path(region): Path<String>) -> Result<Response, ApiError> {
    Ok(axum::Json(st.shm.status(Some(&region))?).into_response())
}

async fn shm_register(
    State(st): St,
    Extension(budget): Budget,
    Path(region): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let mut drained = false;
    let body = read_body(&st, &budget, &headers, body, None, &mut drained).await?;
    let req = kserve::from_json(&body.bytes, "")?;
    st.shm.register(&region, req)?;
    Ok(StatusCode::OK.into_response())
}

async fn shm_unregister(State(st): St, Path(region): Path<String>) -> Response {
    st.shm.unregister(Some(&region));
    StatusCode::OK.into_response()
}

async fn shm_unregister_all(State(st): St) -> Response {
    st.shm.unregister(None);
    StatusCode::OK.into_response()
}

/// The deadline of a request that arrived at `t0`.
fn deadline(st: &AppState, headers: &HeaderMap, t0: Instant) -> Result<Instant, ApiError> {
    let ms = match headers.get(DEADLINE_HEADER) {
        None => st.config.default_deadline_ms as f64,
        Some(v) => {
            let text = v.to_str().unwrap_or("<not text>").trim();
            match text.parse::<f64>() {
                Ok(ms) if ms.is_finite() && ms >= 0.0 => ms,
                _ => {
                    return Err(ApiError::BadRequest(format!(
                        "header {DEADLINE_HEADER}: `{text}` is not a non-negative number of milliseconds"
                    )));
                }
            }
        }
    };
    // a year is as good as forever and keeps Instant arithmetic from overflowing
    Ok(t0 + Duration::from_secs_f64((ms / 1000.0).min(3.15e7)))
}

/// The request-body bytes all requests together may hold in memory (`--max-body-memory-bytes`),
/// so that many large or slow bodies at once cannot exhaust memory.
struct BodyBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

impl BodyBudget {
    fn new(total: usize) -> Self {
        BodyBudget {
            bytes: Arc::new(Semaphore::new(total.min(Semaphore::MAX_PERMITS))),
            total,
        }
    }

    /// Holds nothing yet.
    fn none(&self) -> OwnedSemaphorePermit {
        Arc::clone(&self.bytes)
            .try_acquire_many_owned(0)
            .expect("0 permits are always available")
    }

    /// Takes `n` more bytes into `held`, or refuses at once (503) when the budget is spent.
    fn take(&self, held: &mut OwnedSemaphorePermit, n: usize) -> Result<(), ApiError> {
        let more = u32::try_from(n)
            .ok()
            .and_then(|n| Arc::clone(&self.bytes).try_acquire_many_owned(n).ok());
        match more {
            Some(p) => {
                held.merge(p);
                Ok(())
            }
            None => Err(ApiError::Overloaded(format!(
                "request bodies in memory: {} of {} bytes in use (--max-body-memory-bytes); retry later",
                self.total - self.bytes.available_permits().min(self.total),
                self.total
            ))),
        }
    }
}

/// A request body, holding its share of the [`BodyBudget`] until dropped.
struct BodyBytes {
    bytes: Vec<u8>,
    _held: OwnedSemaphorePermit,
}

/// Room in the queue for the batch a v2 request's JSON declares (none if it declares none):
/// taken before the request is parsed, so that under overload it is refused at once.
fn hold_room(st: &AppState, json: &[u8]) -> Result<Option<Reservation>, ApiError> {
    kserve::declared_batch(json)
        .filter(|&n| n > 0)
        .map(|n| st.queue.reserve(n))
        .transpose()
}

/// A look at the start of a body while it is read (see [`read_body`]).
type PrefixCheck<'a> = &'a mut (dyn FnMut(&[u8]) -> Result<(), ApiError> + Send);

/// Reads a request body within the limits: 413 before reading when `Content-Length` is over
/// the limit, or as soon as a streamed body crosses it; 408 when it has not all arrived
/// within `--body-timeout-ms`; 503 when the bodies in memory would exceed
/// `--max-body-memory-bytes`. With `on_prefix = Some((n, f))`, `f` sees the
/// body's first `n` bytes as soon as they are in (once, if the body has that many); an error
/// from it is returned at once (the answer goes out while the body is still arriving), the
/// rest of the body is read and dropped by a task of its own (so the connection stays usable
/// and the client reads its answer instead of a reset), and `drained` is set.
async fn read_body(
    st: &AppState,
    budget: &BodyBudget,
    headers: &HeaderMap,
    mut body: Body,
    mut on_prefix: Option<(usize, PrefixCheck<'_>)>,
    drained: &mut bool,
) -> Result<BodyBytes, ApiError> {
    let limit = st.config.max_body_bytes;
    let too_large = |n: String| {
        ApiError::TooLarge(format!(
            "request body of {n} bytes is over the limit of {limit} bytes (--max-body-bytes)"
        ))
    };
    let declared = match headers.get(header::CONTENT_LENGTH) {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) {
            Some(n) => Some(n),
            None => {
                return Err(ApiError::BadRequest(
                    "header Content-Length: not a number".into(),
                ));
            }
        },
    };
    if let Some(n) = declared
        && n > limit as u64
    {
        return Err(too_large(n.to_string()));
    }
    let timeout = Duration::from_millis(st.config.body_timeout_ms);
    let until = tokio::time::Instant::now() + timeout;
    let mut held = budget.none();
    let mut buf = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    let mut read = 0usize;
    loop {
        let frame = match tokio::time::timeout_at(until, body.frame()).await {
            Err(_) => {
                return Err(ApiError::BodyTimeout(format!(
                    "the request body did not arrive within {} ms ({} bytes received)",
                    timeout.as_millis(),
                    buf.len()
                )));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ApiError::BadRequest(format!(
                    "reading the request body: {e}"
                )));
            }
            Ok(Some(Ok(f))) => f,
        };
        if let Ok(data) = frame.into_data() {
            read += data.len();
            if read > limit {
                return Err(too_large(format!("more than {limit}")));
            }
            budget.take(&mut held, data.len())?;
            buf.extend_from_slice(&data);
            if let Some((n, f)) = on_prefix.take_if(|(n, _)| buf.len() >= *n)
                && let Err(e) = f(&buf[..n])
            {
                tokio::spawn(drain(body, until, limit.saturating_sub(read)));
                *drained = true;
                return Err(e);
            }
        }
    }
    Ok(BodyBytes {
        bytes: buf,
        _held: held,
    })
}

/// Reads and drops the rest of a refused request's body (at most `left` bytes, until `until`);
/// beyond either, or on a read error, the body is dropped and hyper closes the connection.
async fn drain(mut body: Body, until: tokio::time::Instant, mut left: usize) {
    while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(until, body.frame()).await {
        if let Ok(data) = frame.into_data() {
            if data.len() > left {
                return;
            }
            left -= data.len();
        }
    }
}

#[derive(Clone, Copy)]
enum Protocol {
    V2,
    V1,
}

type Budget = Extension<Arc<BodyBudget>>;

/// What an inference request is, besides its body.
struct InferenceCall {
    proto: Protocol,
    name: String,
    version: Option<String>,
    headers: HeaderMap,
    id: RequestId,
}

async fn infer(
    State(st): St,
    Extension(budget): Budget,
    Extension(id): Extension<RequestId>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let call = InferenceCall {
        proto: Protocol::V2,
        name,
        version: None,
        headers,
        id,
    };
    run_inference(st, &budget, call, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn infer_v(
    State(st): St,
    Extension(budget): Budget,
    Extension(id): Extension<RequestId>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let call = InferenceCall {
        proto: Protocol::V2,
        name,
        version: Some(version),
        headers,
        id,
    };
    run_inference(st, &budget, call, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn predict(
    State(st): St,
    Extension(budget): Budget,
    Extension(id): Extension<RequestId>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let call = InferenceCall {
        proto: Protocol::V1,
        name,
        version: None,
        headers,
        id,
    };
    run_inference(st, &budget, call, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// What a parsed request needs to be answered.
enum Parsed {
    V2(kserve::InferRequest),
    V1(dlrs_model::Batch),
}

fn parse(
    proto: Protocol,
    body: &[u8],
    header_len: Option<usize>,
    v: &Version,
    st: &AppState,
) -> Result<Parsed, ApiError> {
    match proto {
        Protocol::V2 => {
            let r = kserve::parse_infer(body, header_len, &v.model.config, &st.shm)?;
            if r.shm_inputs > 0 {
                st.metrics.shm_inputs.increment(r.shm_inputs as u64);
            }
            Ok(Parsed::V2(r))
        }
        Protocol::V1 => kserve::parse_predict(body, &v.model.config).map(Parsed::V1),
    }
}

/// A received inference request: its body read within the limits, and what was settled
/// before it was parsed.
struct Received {
    _inflight: InflightGuard,
    deadline: Instant,
    header_len: Option<usize>,
    body: BodyBytes,
    /// room held in the queue from the JSON header, before the binary data was read
    reservation: Option<Reservation>,
}

async fn run_inference(
    st: Arc<AppState>,
    budget: &BodyBudget,
    call: InferenceCall,
    body: Body,
) -> Result<Response, Failure> {
    let t0 = Instant::now();
    let proto = call.proto;
    let Received {
        _inflight,
        deadline,
        header_len,
        body,
        reservation,
    } = receive(&st, budget, &call, t0, body).await?;
    // a JSON request small enough to parse here (one whose tensors are in shared memory,
    // say) holds its room before it is parsed: under overload it is refused for the price of
    // reading its header, not of copying its ids
    let reservation = match reservation {
        None if matches!(proto, Protocol::V2)
            && header_len.is_none()
            && body.bytes.len() < PARSE_OFFLOAD_BYTES =>
        {
            hold_room(&st, &body.bytes)?
        }
        r => r,
    };
    // the version serving now; the request runs on it even if a reload swaps in another
    let v = st.current();
    // the body (and its share of the budget) is dropped once parsed
    let parsed = if body.bytes.len() >= PARSE_OFFLOAD_BYTES {
        let (v, st) = (Arc::clone(&v), Arc::clone(&st));
        tokio::task::spawn_blocking(move || parse(proto, &body.bytes, header_len, &v, &st))
            .await
            .map_err(|e| ApiError::Internal(format!("parsing the request failed: {e}")))??
    } else {
        let parsed = parse(proto, &body.bytes, header_len, &v, &st);
        drop(body);
        parsed?
    };
    let (batch, answer, deadline) = match parsed {
        Parsed::V2(r) => {
            call.id.offer(r.id.as_deref());
            let timeout = r
                .timeout_us
                .and_then(|us| t0.checked_add(Duration::from_micros(us)));
            let until = timeout.map_or(deadline, |t| deadline.min(t));
            (
                r.batch,
                Answer::V2 {
                    id: r.id,
                    binary: r.binary_output,
                    shm: r.shm_output,
                },
                until,
            )
        }
        Parsed::V1(b) => (b, Answer::V1, deadline),
    };
    let scores = compute(&st, &v, batch, deadline, reservation, &call.id).await?;
    Ok(answer.response(&st.name, v.number, &scores))
}

/// The first steps of an inference request, up to its body in memory: counted in flight
/// (refused once shutting down), its model and version checked, its deadline and binary
/// header read, and its body read within the limits. Errors here may come before the body
/// was read in full (see [`Failure`]).
async fn receive(
    st: &Arc<AppState>,
    budget: &BodyBudget,
    call: &InferenceCall,
    t0: Instant,
    body: Body,
) -> Result<Received, Failure> {
    // set when a request was refused from its JSON header: the rest of its body is drained by
    // a task of its own, so the connection stays usable (no `Connection: close`)
    let mut drained = false;
    let received = async {
        let inflight = st.enter()?;
        st.check_model(&call.name, call.version.as_deref())?;
        let deadline = deadline(st, &call.headers, t0)?;
        let header_len = binary_header_len(&call.headers, call.proto)?;
        // a binary request says its batch size in its JSON header: hold room in the queue
        // for it then, so that under overload it is refused before its binary data is read
        let mut reservation = None;
        let mut reserve = |json: &[u8]| {
            reservation = hold_room(st, json)?;
            Ok(())
        };
        let on_prefix = header_len.map(|n| (n, &mut reserve as PrefixCheck<'_>));
        let body = read_body(st, budget, &call.headers, body, on_prefix, &mut drained).await?;
        Ok(Received {
            _inflight: inflight,
            deadline,
            header_len,
            body,
            reservation,
        })
    };
    received.await.map_err(|error| Failure {
        error,
        body_unread: !drained,
    })
}

/// The `Inference-Header-Content-Length` header (the binary tensor data extension; v2 only).
fn binary_header_len(headers: &HeaderMap, proto: Protocol) -> Result<Option<usize>, ApiError> {
    let Some(v) = headers.get(HEADER_LEN) else {
        return Ok(None);
    };
    let n = v
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .ok_or_else(|| {
            ApiError::BadRequest(
                "header Inference-Header-Content-Length: not a non-negative integer".into(),
            )
        })?;
    if matches!(proto, Protocol::V1) {
        return Err(ApiError::BadRequest(
            "header Inference-Header-Content-Length: /v1 predict takes JSON only".into(),
        ));
    }
    Ok(Some(n))
}

/// The scores of `batch`, computed on version `v` by the queue by `deadline` (504 after).
async fn compute(
    st: &AppState,
    v: &Arc<Version>,
    batch: dlrs_model::Batch,
    deadline: Instant,
    reservation: Option<Reservation>,
    id: &RequestId,
) -> Result<Vec<f32>, ApiError> {
    if batch.size() == 0 {
        return Ok(Vec::new());
    }
    if Instant::now() >= deadline {
        return Err(ApiError::DeadlineExceeded(
            "deadline passed before the request was queued".into(),
        ));
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job = Job {
        model: Arc::clone(v),
        batch: Arc::new(batch),
        deadline,
        reply: ReplyTo::Channel(tx),
        request_id: Some(id.get()),
    };
    st.queue.submit(job, reservation)?;
    wait(rx, deadline).await
}

/// An inference request's failure. One answered before its body was read in full says
/// `Connection: close`: the rest of the body is never read, so hyper closes the connection
/// after the answer, and a client told so does not send its next request on it.
struct Failure {
    error: ApiError,
    body_unread: bool,
}

impl From<ApiError> for Failure {
    fn from(error: ApiError) -> Self {
        Failure {
            error,
            body_unread: false,
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut resp = self.error.into_response();
        if self.body_unread {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// How to answer a request once its scores are known.
enum Answer {
    /// `shm`: write the scores there (holding the region mapped until then)
    V2 {
        id: Option<String>,
        binary: bool,
        shm: Option<kserve::ShmRef>,
    },
    V1,
}

impl Answer {
    /// The answer with `scores`, computed by `version` of model `model`.
    fn response(self, model: &str, version: u64, scores: &[f32]) -> Response {
        let (id, binary, shm) = match self {
            Answer::V1 => {
                return axum::Json(kserve::PredictResponse { scores }).into_response();
            }
            Answer::V2 { id, binary, shm } => (id, binary, shm),
        };
        if let Some(r) = &shm {
            let bytes: Vec<u8> = scores.iter().flat_map(|s| s.to_le_bytes()).collect();
            r.write(&bytes);
        }
        let (body, json_len) =
            kserve::infer_response(model, version, id.as_deref(), scores, binary, shm.as_ref());
        match json_len {
            None => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Some(h) => (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    ),
                    (HeaderName::from_static(HEADER_LEN), HeaderValue::from(h)),
                ],
                body,
            )
                .into_response(),
        }
    }
}

/// Waits for the batcher's answer, or answers 504 at the deadline.
async fn wait(
    rx: tokio::sync::oneshot::Receiver<Reply>,
    deadline: Instant,
) -> Result<Vec<f32>, ApiError> {
    tokio::select! {
        biased;
        r = rx => match r {
            Ok(r) => r,
            Err(_) => Err(ApiError::Internal("the batcher dropped the request".into())),
        },
        _ = tokio::time::sleep_until(deadline.into()) => {
            Err(ApiError::DeadlineExceeded("deadline passed before the request was answered".into()))
        }
    }
}
