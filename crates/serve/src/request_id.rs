//! Request ids: every HTTP request is handled inside a span `request{id=...}`, so that each
//! line logged while it is handled names it, and its answer carries the id in the
//! `x-request-id` header.
//!
//! The id is the client's `x-request-id` header when it has one (1 to 128 visible ASCII
//! characters); else, for a v2 inference request, its KServe `"id"` when it has one (of the
//! same form) and the request got as far as being parsed; else one generated here, unique
//! within the process (`<12 hex digits, random per process>-<counter>`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::{Instrument, Span};

/// The header a request's id comes in and goes back in.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest id taken from a client.
const MAX_ID_LEN: usize = 128;

/// The id of the request being handled (a request extension): settled once (from the
/// header, the KServe id or generated) and then recorded in the request's span.
#[derive(Clone)]
pub(crate) struct RequestId(Arc<Slot>);

struct Slot {
    id: OnceLock<Arc<str>>,
    span: Span,
}

impl RequestId {
    fn new(span: Span) -> Self {
        RequestId(Arc::new(Slot {
            id: OnceLock::new(),
            span,
        }))
    }

    fn settle(&self, make: impl FnOnce() -> Arc<str>) -> Arc<str> {
        let id = self.0.id.get_or_init(|| {
            let id = make();
            self.0.span.record("id", tracing::field::display(&id));
            id
        });
        Arc::clone(id)
    }

    /// The request's id, a generated one if none was settled yet.
    pub fn get(&self) -> Arc<str> {
        self.settle(generate)
    }

    /// Settles the id to a KServe request's `id`, unless one was settled already (the
    /// header's) or it is not usable as an id.
    pub fn offer(&self, kserve_id: Option<&str>) {
        if let Some(id) = kserve_id.filter(|id| valid(id)) {
            self.settle(|| id.into());
        }
    }
}

/// Whether `id` can be taken as a request id: 1 to [`MAX_ID_LEN`] visible ASCII characters
/// (no spaces or control characters: it goes into log lines and a header as it is).
fn valid(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// A new id, unique within the process and, with its random prefix, very likely across
/// processes.
fn generate() -> Arc<str> {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        // std's hasher keys are random per process
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish() & 0xffff_ffff_ffff
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix:012x}-{n}").into()
}

/// Whether the id of a request to `route` may come from its body: a v2 inference request's
/// KServe `id`, known once it is parsed.
fn id_from_body(route: &str) -> bool {
    route.starts_with("/v2/models/") && route.ends_with("/infer")
}

/// The middleware: runs the request inside its span `request{id}` and answers with the id
/// in [`REQUEST_ID_HEADER`].
pub(crate) async fn layer(mut req: Request, next: Next) -> Response {
    let span = tracing::info_span!("request", id = tracing::field::Empty);
    let rid = RequestId::new(span.clone());
    let header = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| valid(id));
    let later = req
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|p| id_from_body(p.as_str()));
    match header {
        Some(id) => {
            rid.settle(|| id.into());
        }
        None if later => {}
        None => {
            rid.get();
        }
    }
    // (only formatted when the answer is logged)
    let what = tracing::enabled!(tracing::Level::DEBUG)
        .then(|| format!("{} {}", req.method(), req.uri().path()));
    req.extensions_mut().insert(rid.clone());
    let t0 = Instant::now();
    let mut resp = next.run(req).instrument(span.clone()).await;
    let id = rid.get();
    if let Some(what) = what {
        span.in_scope(|| {
            tracing::debug!(
                "{what}: {} in {:.3} ms",
                resp.status().as_u16(),
                t0.elapsed().as_secs_f64() * 1e3
            )
        });
    }
    resp.headers_mut().insert(
        REQUEST_ID_HEADER,
        HeaderValue::from_str(&id).expect("ids are visible ASCII"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_visible_ascii_of_bounded_length() {
        assert!(valid("a"));
        assert!(valid("4bf92f3577b34da6-a3ce929d0e0e4736"));
        assert!(valid(&"x".repeat(MAX_ID_LEN)));
        for bad in ["", "a b", "a\nb", "é", "\t"] {
            assert!(!valid(bad), "{bad:?}");
        }
        assert!(!valid(&"x".repeat(MAX_ID_LEN + 1)));
    }

    #[test]
    fn generated_ids_are_unique_and_valid() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert!(valid(&a) && valid(&b), "{a} {b}");
        assert_eq!(
            a.split('-').next(),
            b.split('-').next(),
            "one prefix a process"
        );
    }

    #[test]
    fn the_first_settled_id_stays() {
        let rid = RequestId::new(Span::none());
        rid.offer(Some("has space"));
        rid.offer(None);
        rid.offer(Some("kserve-1"));
        rid.offer(Some("kserve-2"));
        assert_eq!(&*rid.get(), "kserve-1");
        let rid = RequestId::new(Span::none());
        let generated = rid.get();
        rid.offer(Some("late"));
        assert_eq!(rid.get(), generated);
    }

    #[test]
    fn only_v2_inference_takes_its_id_from_the_body() {
        assert!(id_from_body("/v2/models/{name}/infer"));
        assert!(id_from_body("/v2/models/{name}/versions/{version}/infer"));
        assert!(!id_from_body("/v1/models/{name}/predict"));
        assert!(!id_from_body("/v2/repository/models/{name}/load"));
    }
}
