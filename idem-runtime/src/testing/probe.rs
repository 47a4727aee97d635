//! [`assert_idempotent`]: drives a running app the way retries, double clicks and flaky
//! networks do, counts the effects with the app's own counter, and names every way the endpoint
//! misbehaved in one report.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;

/// One endpoint to check: the request, and how to count its effects.
///
/// ```no_run
/// # async fn t() {
/// use idem_runtime::testing::{assert_idempotent_at, Probe};
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
///
/// let charges = Arc::new(AtomicU64::new(0)); // incremented by the handler's side effect
/// let c = charges.clone();
/// let probe = Probe::post("/payments", move || c.load(Ordering::SeqCst))
///     .json(r#"{"amount": 1000, "currency": "EUR"}"#);
/// assert_idempotent_at("http://127.0.0.1:8080", &probe).await;
/// # }
/// ```
pub struct Probe {
    path: String,
    content_type: String,
    body: Vec<u8>,
    changed_body: Option<Vec<u8>>,
    headers: Vec<(String, String)>,
    key_header: String,
    request_id_header: String,
    duplicates: usize,
    hang_up_after: Duration,
    settle: Duration,
    executions: Arc<dyn Fn() -> u64 + Send + Sync>,
}

impl fmt::Debug for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Probe")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Probe {
    /// `POST path`, its effects counted by `executions` (read before and after each step: a
    /// counter the handler's side effect increments, or a count of rows).
    pub fn post(
        path: impl Into<String>,
        executions: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Self {
        Probe {
            path: path.into(),
            content_type: "application/json".into(),
            body: b"{}".to_vec(),
            changed_body: None,
            headers: Vec::new(),
            key_header: "Idempotency-Key".into(),
            request_id_header: "X-Request-Id".into(),
            duplicates: 8,
            hang_up_after: Duration::from_millis(20),
            settle: Duration::from_secs(10),
            executions: Arc::new(executions),
        }
    }

    /// A JSON body (the default is `{}`).
    pub fn json(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.content_type = "application/json".into();
        self.body = body.into();
        self
    }

    /// A body of another type.
    pub fn body(mut self, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        self.content_type = content_type.into();
        self.body = body.into();
        self
    }

    /// The body of the "same key, different payload" check (by default the body with a byte
    /// added: a space for JSON under `strict`, so give a real change for `result`/`semantic`).
    pub fn changed_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.changed_body = Some(body.into());
        self
    }

    /// A header every request carries (`Authorization`, say).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Where the key goes (default `Idempotency-Key`).
    pub fn key_header(mut self, name: &str) -> Self {
        self.key_header = name.into();
        self
    }

    /// How many parallel duplicates to send at once (default 8).
    pub fn duplicates(mut self, n: usize) -> Self {
        self.duplicates = n.max(2);
        self
    }

    /// How long after sending the hang-up check closes its connection (default 20 ms: choose
    /// less than the handler takes).
    pub fn hang_up_after(mut self, after: Duration) -> Self {
        self.hang_up_after = after;
        self
    }
}

/// What [`check_idempotent`] found: one line per misbehaviour, empty when the endpoint behaved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Each misbehaviour, in words that name it.
    pub problems: Vec<String>,
}

impl Report {
    /// Whether nothing was wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_clean() {
            return f.write_str("idempotent: no problem found");
        }
        writeln!(f, "not idempotent ({} problem(s)):", self.problems.len())?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

/// One answer, as the checks compare them.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn replayed(&self) -> bool {
        self.headers
            .iter()
            .any(|(n, v)| n == "idempotent-replayed" && v == "true")
    }
}

/// An actix-web app as `actix_web::test::init_service` returns it (any service answering
/// `actix_http::Request`s with `ServiceResponse`s).
pub trait TestApp:
    actix_web::dev::Service<
    actix_http::Request,
    Response = actix_web::dev::ServiceResponse<Self::Body>,
    Error = actix_web::Error,
>
{
    /// The body type of its responses.
    type Body: actix_web::body::MessageBody;
}

impl<S, B> TestApp for S
where
    S: actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse<B>,
        Error = actix_web::Error,
    >,
    B: actix_web::body::MessageBody,
{
    type Body = B;
}

/// Header names and values as the checks compare them.
fn header_list<'h>(pairs: impl Iterator<Item = (&'h str, &'h [u8])>) -> Vec<(String, String)> {
    pairs
        .map(|(n, v)| (n.to_owned(), String::from_utf8_lossy(v).into()))
        .collect()
}

/// How the checks reach the endpoint.
trait Transport {
    /// One request with `key`, `body` and the per-request id, answered in full.
    fn send<'a>(
        &'a self,
        key: &'a str,
        body: &'a [u8],
        request_id: &'a str,
    ) -> Local<'a, Result<Answer, String>>;
    /// One request whose client goes away `hang_up_after` into it.
    fn hang_up<'a>(&'a self, key: &'a str) -> Local<'a, Result<(), String>>;
}

type Local<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + 'a>>;

/// A running server, over loopback HTTP.
struct Http<'a> {
    probe: &'a Probe,
    base: String,
    http: reqwest::Client,
}

impl Transport for Http<'_> {
    fn send<'a>(
        &'a self,
        key: &'a str,
        body: &'a [u8],
        request_id: &'a str,
    ) -> Local<'a, Result<Answer, String>> {
        Box::pin(async move {
            let p = self.probe;
            let mut req = self
                .http
                .post(format!("{}{}", self.base, p.path))
                .header("content-type", &p.content_type)
                .header(&p.key_header, key)
                .header(&p.request_id_header, request_id)
                .body(body.to_vec());
            for (n, v) in &p.headers {
                req = req.header(n, v);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| format!("request failed: {e}"))?;
            let status = resp.status().as_u16();
            let headers = header_list(
                resp.headers()
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_bytes())),
            );
            let body = resp
                .bytes()
                .await
                .map_err(|e| format!("reading the answer failed: {e}"))?
                .to_vec();
            Ok(Answer {
                status,
                headers,
                body,
            })
        })
    }

    /// Sends a request on a raw connection and closes it after `hang_up_after`.
    fn hang_up<'a>(&'a self, key: &'a str) -> Local<'a, Result<(), String>> {
        Box::pin(async move {
            let p = self.probe;
            let url = reqwest::Url::parse(&self.base).map_err(|e| format!("bad base URL: {e}"))?;
            let host = url.host_str().unwrap_or("127.0.0.1").to_owned();
            let port = url.port_or_known_default().unwrap_or(80);
            let mut s = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| format!("connecting failed: {e}"))?;
            let mut head = format!(
                "POST {} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}: {key}\r\n",
                p.path,
                p.content_type,
                p.body.len(),
                p.key_header
            );
            for (n, v) in &p.headers {
                head.push_str(&format!("{n}: {v}\r\n"));
            }
            head.push_str("\r\n");
            s.write_all(head.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            s.write_all(&p.body).await.map_err(|e| e.to_string())?;
            tokio::time::sleep(p.hang_up_after).await;
            drop(s);
            Ok(())
        })
    }
}

/// An app in this process (`actix_web::test::init_service`), called directly.
struct InProcess<'a, S> {
    probe: &'a Probe,
    app: &'a S,
}

impl<'s, S> InProcess<'s, S>
where
    S: TestApp,
{
    fn request(&self, key: &str, body: &[u8], request_id: &str) -> actix_http::Request {
        let p = self.probe;
        let mut req = actix_web::test::TestRequest::post()
            .uri(&p.path)
            .insert_header(("content-type", p.content_type.as_str()))
            .insert_header((p.key_header.as_str(), key))
            .insert_header((p.request_id_header.as_str(), request_id))
            .set_payload(body.to_vec());
        for (n, v) in &p.headers {
            req = req.insert_header((n.as_str(), v.as_str()));
        }
        req.to_request()
    }
}

impl<S> Transport for InProcess<'_, S>
where
    S: TestApp,
{
    fn send<'a>(
        &'a self,
        key: &'a str,
        body: &'a [u8],
        request_id: &'a str,
    ) -> Local<'a, Result<Answer, String>> {
        Box::pin(async move {
            let resp = self
                .app
                .call(self.request(key, body, request_id))
                .await
                .map_err(|e| format!("the app failed: {e}"))?;
            let status = resp.status().as_u16();
            let headers = header_list(
                resp.headers()
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_bytes())),
            );
            let body = actix_web::body::to_bytes(resp.into_body())
                .await
                .map_err(|_| "reading the answer failed".to_owned())?
                .to_vec();
            Ok(Answer {
                status,
                headers,
                body,
            })
        })
    }

    /// Starts the call and drops it `hang_up_after` in: what a client going away does to it.
    fn hang_up<'a>(&'a self, key: &'a str) -> Local<'a, Result<(), String>> {
        Box::pin(async move {
            let call = self
                .app
                .call(self.request(key, &self.probe.body, "hang-up"));
            let _ = tokio::time::timeout(self.probe.hang_up_after, call).await;
            Ok(())
        })
    }
}

/// Runs every check against the endpoint of an app in this process (what
/// `actix_web::test::init_service` returns) and reports what went wrong: a first request, a
/// sequential retry (a byte-identical replay, no new effect, no header carrying the first
/// request's own values), parallel duplicates (one effect), a retry with a changed body (422, no
/// effect), and a retry after the client hung up mid-handler (one effect in all).
pub async fn check_idempotent<S>(app: &S, probe: &Probe) -> Report
where
    S: TestApp,
{
    check(&InProcess { probe, app }, probe).await
}

/// [`check_idempotent`] against a running server at `base` (`http://127.0.0.1:8080`).
pub async fn check_idempotent_at(base: &str, probe: &Probe) -> Report {
    let http = Http {
        probe,
        base: base.trim_end_matches('/').to_owned(),
        http: reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap_or_default(),
    };
    check(&http, probe).await
}

/// Per-run names: keys and request ids no other run uses.
struct Names {
    run: String,
    n: std::sync::atomic::AtomicU64,
}

impl Names {
    fn request_id(&self) -> String {
        let n = self.n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("probe-{}-{n}", self.run)
    }
}

async fn check(s: &dyn Transport, probe: &Probe) -> Report {
    let mut problems = Vec::new();
    let names = Names {
        run: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
            .to_string(),
        n: Default::default(),
    };
    let count = || (probe.executions)();
    let key = |name: &str| format!("probe-{}-{name}", names.run);

    // 1. A first request, then a sequential retry.
    let e0 = count();
    let first_id = names.request_id();
    let first = match s.send(&key("first"), &probe.body, &first_id).await {
        Ok(a) => a,
        Err(e) => {
            problems.push(format!("the first request got no answer: {e}"));
            return Report { problems };
        }
    };
    let ran = count().saturating_sub(e0);
    if ran != 1 {
        problems.push(format!(
            "one request with a new key counted {ran} executions (expected 1)"
        ));
    }
    match s
        .send(&key("first"), &probe.body, &names.request_id())
        .await
    {
        Err(e) => problems.push(format!("the retry got no answer: {e}")),
        Ok(retry) => {
            let again = count().saturating_sub(e0 + ran);
            if again > 0 && retry.replayed() {
                problems.push(format!(
                    "a sequential retry was answered as a replay (Idempotent-Replayed: true) yet \
                     counted {again} more execution(s): the effect happens outside the \
                     #[idempotent] handler (a middleware, a guard, an extractor?)"
                ));
            } else if again > 0 && first.status >= 500 {
                problems.push(format!(
                    "a sequential retry ran the operation again after a {} answer: under \
                     guarantee = \"result\" or \"semantic\" a 5xx is not kept, so a handler that \
                     answers 5xx after its side effect repeats it on every retry (fail before the \
                     side effect, or use guarantee = \"strict\")",
                    first.status
                ));
            } else if again > 0 {
                problems.push(format!(
                    "a sequential retry ran the operation again ({again} more execution(s))"
                ));
            }
            if again == 0 && !retry.replayed() && first.status < 500 {
                problems.push(format!(
                    "a sequential retry was not a replay (status {}, no Idempotent-Replayed)",
                    retry.status
                ));
            }
            if retry.replayed() && (retry.status, &retry.body) != (first.status, &first.body) {
                problems.push(format!(
                    "the replay differs from the first answer (status {} vs {}, {} vs {} body \
                     bytes)",
                    retry.status,
                    first.status,
                    retry.body.len(),
                    first.body.len()
                ));
            }
            if retry.replayed() {
                for (name, value) in &retry.headers {
                    if value.contains(&first_id) {
                        problems.push(format!(
                            "the replay's `{name}` header carries the first request's own \
                             {} ({first_id}): a per-request value is kept for replay and leaks \
                             to every retry (remove it from replay_headers)",
                            probe.request_id_header
                        ));
                    }
                }
            }
        }
    }

    // 2. Parallel duplicates of a new key.
    let before = count();
    let dup_key = key("parallel");
    let answers = futures_util::future::join_all(
        (0..probe.duplicates).map(|_| s.send(&dup_key, &probe.body, &first_id)),
    )
    .await;
    let ran = count().saturating_sub(before);
    if ran != 1 {
        problems.push(format!(
            "{} parallel duplicates counted {ran} executions (expected 1)",
            probe.duplicates
        ));
    }
    let odd: Vec<u16> = answers
        .iter()
        .filter_map(|a| a.as_ref().ok())
        .map(|a| a.status)
        .filter(|s| *s >= 500 && *s != 503)
        .collect();
    if !odd.is_empty() {
        problems.push(format!("parallel duplicates got server errors: {odd:?}"));
    }

    // 3. The first key again, with another body.
    let changed = probe.changed_body.clone().unwrap_or_else(|| {
        let mut b = probe.body.clone();
        b.push(b' ');
        b
    });
    let before = count();
    match s.send(&key("first"), &changed, &names.request_id()).await {
        Err(e) => problems.push(format!("the changed-body retry got no answer: {e}")),
        Ok(a) => {
            let ran = count().saturating_sub(before);
            if ran > 0 {
                problems.push(format!(
                    "a retry with the same key and a different body ran the operation again \
                     ({ran} execution(s)) instead of 422"
                ));
            } else if a.status != 422 && !a.replayed() {
                problems.push(format!(
                    "a retry with the same key and a different body got {} (expected 422)",
                    a.status
                ));
            }
        }
    }

    // 4. A client that hangs up mid-handler, then retries until it gets the outcome.
    let before = count();
    let gone = key("hang-up");
    if let Err(e) = s.hang_up(&gone).await {
        problems.push(format!("the hang-up check could not connect: {e}"));
    } else {
        let until = Instant::now() + probe.settle;
        let mut outcome = None;
        while Instant::now() < until {
            match s.send(&gone, &probe.body, &names.request_id()).await {
                Ok(a) if a.status == 409 || a.status == 202 => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Ok(a) => {
                    outcome = Some(a);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let ran = count().saturating_sub(before);
        match outcome {
            None => problems.push(format!(
                "after a client hung up mid-handler, retries got no outcome within {:?}",
                probe.settle
            )),
            Some(_) if ran != 1 => problems.push(format!(
                "a client hung up mid-handler and retried: {ran} executions in all (expected 1)"
            )),
            Some(_) => {}
        }
    }
    Report { problems }
}

/// [`check_idempotent`], panicking with the whole report unless it is clean.
pub async fn assert_idempotent<S>(app: &S, probe: &Probe)
where
    S: TestApp,
{
    let report = check_idempotent(app, probe).await;
    assert!(report.is_clean(), "POST {}\n{report}", probe.path);
}

/// [`check_idempotent_at`], panicking with the whole report unless it is clean.
pub async fn assert_idempotent_at(base: &str, probe: &Probe) {
    let report = check_idempotent_at(base, probe).await;
    assert!(report.is_clean(), "POST {base}{}\n{report}", probe.path);
}
