//! Request ids and logs: every answer carries an `x-request-id` (the client's, else the
//! KServe request's `id`, else a generated one), and the lines logged while a request is
//! handled name it.

mod common;

use std::sync::{Arc, Mutex, OnceLock};

use common::*;

/// The log lines of this test binary (one subscriber for all its tests).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The text logged so far (the subscriber is installed on first use).
fn logs() -> String {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    let c = LOGS.get_or_init(|| {
        let c = Captured::default();
        tracing_subscriber::fmt()
            .with_env_filter("dlrs_serve=debug")
            .with_writer(c.clone())
            .with_ansi(false)
            .init();
        c
    });
    String::from_utf8_lossy(&c.0.lock().unwrap()).into_owned()
}

/// The lines logged so far that contain every one of `parts`.
fn lines_with(parts: &[&str]) -> Vec<String> {
    logs()
        .lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .map(str::to_string)
        .collect()
}

/// `GET path`: the status and the `x-request-id` header.
fn get_id(srv: &Server, path: &str, id: Option<&str>) -> (u16, Option<String>) {
    let mut req = srv.agent.get(srv.url(path));
    if let Some(id) = id {
        req = req.header("x-request-id", id);
    }
    let r = req.call().unwrap();
    let id = r
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string());
    (r.status().as_u16(), id)
}

#[test]
fn answers_carry_the_client_s_the_kserve_or_a_generated_request_id() {
    logs();
    let md = ModelDir::new(1);
    let srv = Server::start(md.args());
    let s = samples(&mut Lcg(3), 2);
    let infer = format!("/v2/models/{NAME}/infer");
    let with_id = v2_request(&s, Some("req-42")).to_string();
    let without = v2_request(&s, None).to_string();

    // the client's header first
    let r = srv.post_with(&infer, &with_id, &[("x-request-id", "client-7")]);
    assert_eq!((r.status, r.request_id.as_deref()), (200, Some("client-7")));
    assert_eq!(r.json()["id"], "req-42", "the KServe id is still echoed");
    // else the KServe id
    let r = srv.post(&infer, &with_id);
    assert_eq!((r.status, r.request_id.as_deref()), (200, Some("req-42")));
    // else a generated one, new each time
    let a = srv.post(&infer, &without).request_id.unwrap();
    let b = srv.post(&infer, &without).request_id.unwrap();
    assert!(!a.is_empty() && a != b, "{a} {b}");
    assert!(a.bytes().all(|c| c.is_ascii_graphic()), "{a}");
    // a header that cannot be an id is replaced, not echoed
    let r = srv.post_with(&infer, &without, &[("x-request-id", "has space")]);
    let got = r.request_id.unwrap();
    assert!(got != "has space" && !got.is_empty(), "{got}");
    // a KServe id that cannot be one, likewise
    let spaced = v2_request(&s, Some("has space")).to_string();
    assert_ne!(srv.post(&infer, &spaced).request_id.unwrap(), "has space");
    // errors too: a request refused before its id was parsed gets a generated one
    let r = srv.post(&infer, "{not json");
    assert_eq!(r.status, 400);
    assert!(r.request_id.is_some_and(|id| !id.is_empty()));
    let r = srv.post_with(&infer, "{not json", &[("x-request-id", "bad-1")]);
    assert_eq!((r.status, r.request_id.as_deref()), (400, Some("bad-1")));
    let r = srv.post(
        &format!("/v1/models/{NAME}/predict"),
        &v1_request(&s).to_string(),
    );
    assert_eq!(r.status, 200);
    assert!(r.request_id.is_some());
    // every other route
    let (status, id) = get_id(&srv, "/v2/health/live", Some("live-1"));
    assert_eq!((status, id.as_deref()), (200, Some("live-1")));
    let (status, id) = get_id(&srv, "/no/such/path", None);
    assert_eq!(status, 404);
    assert!(id.is_some());

    // at debug level every answer is logged inside the request's span
    let answered = lines_with(&["request{id=client-7}", "POST /v2/models/tiny/infer: 200 in"]);
    assert_eq!(answered.len(), 1, "{}", logs());
    assert_eq!(
        lines_with(&["request{id=bad-1}", "POST /v2/models/tiny/infer: 400 in"]).len(),
        1,
        "{}",
        logs()
    );
}

#[test]
fn lines_logged_while_handling_a_request_carry_its_id() {
    logs();
    let md = ModelDir::new(1);
    let mut args = md.args();
    args.hooks.before_forward = Some(Arc::new(|b: &dlrs_model::Batch| {
        assert!(b.size() != 3, "boom")
    }));
    let srv = Server::start(args);

    // a reload asked for by a request
    replace_model(&md.dir(), 2);
    let r = srv.post_with(
        &format!("/v2/repository/models/{NAME}/load"),
        "",
        &[("x-request-id", "reload-1")],
    );
    assert_eq!((r.status, r.request_id.as_deref()), (200, Some("reload-1")));
    let reloaded = lines_with(&["request{id=reload-1}", "now serving version 2 from"]);
    assert_eq!(reloaded.len(), 1, "{}", logs());
    assert!(reloaded[0].contains(" INFO "), "{}", reloaded[0]);

    // a batch that panics names its requests
    let s = samples(&mut Lcg(5), 3);
    let r = srv.post(
        &format!("/v2/models/{NAME}/infer"),
        &v2_request(&s, Some("boom-1")).to_string(),
    );
    assert_eq!((r.status, r.request_id.as_deref()), (500, Some("boom-1")));
    let panicked = lines_with(&["a batch of 3 samples panicked", "requests=boom-1"]);
    assert_eq!(panicked.len(), 1, "{}", logs());
    assert!(panicked[0].contains(" ERROR "), "{}", panicked[0]);

    // the start line, outside any request, names the model and its address
    assert!(
        lines_with(&[
            "model \"tiny\" (version 1) from",
            &format!("on http://{}", srv.addr)
        ])
        .len()
            == 1,
        "{}",
        logs()
    );
}
