//! Reading a request before the store is asked: its body (raw, and decoded when a form key or
//! a `result`/`semantic` fingerprint needs it), its key from the endpoint's sources, and its
//! fingerprint.

use actix_web::http::header::{HeaderName, CONTENT_ENCODING, CONTENT_LENGTH, COOKIE};
use actix_web::{dev, web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use std::io::Read;

use super::reject;
use crate::key::{parse_key_headers, IdempotencyKey};
use crate::key_source::{
    form_fingerprint_body, from_cookies, from_form, from_query, query_without, FormKeyError,
    KeySource,
};
use crate::problem::{Problem, ProblemKind};
use crate::{Fingerprint, Guarantee, Policy};

/// The request body: still a stream, or read into memory (raw, before any decompression).
pub(super) enum Body {
    /// Not read yet.
    Raw(web::Payload),
    /// Read, raw (still compressed if it was sent so).
    Buffered(Bytes),
}

impl Body {
    pub(super) async fn buffer(
        self,
        req: &HttpRequest,
        limit: usize,
    ) -> Result<Bytes, HttpResponse> {
        match self {
            Body::Raw(payload) => buffer_body(req, payload, limit).await,
            Body::Buffered(b) => Ok(b),
        }
    }

    pub(super) fn into_payload(self) -> dev::Payload {
        match self {
            Body::Raw(payload) => payload.into_inner(),
            Body::Buffered(b) => dev::Payload::from(b),
        }
    }
}

/// The key, from the first of the endpoint's sources that has one (the app's key header when
/// the endpoint names none). `Err` is the 400's detail: a malformed key where one was found.
pub(super) fn find_key(
    req: &HttpRequest,
    policy: &Policy,
    default_header: &HeaderName,
    content_type: &str,
    body: &Body,
    decoded: &Option<Option<Vec<u8>>>,
) -> Result<Option<IdempotencyKey>, String> {
    let header = |name| parse_key_headers(req.headers().get_all(name).map(|v| v.as_bytes()));
    if policy.key.is_empty() {
        return header(default_header.as_str()).map_err(|e| e.to_string());
    }
    for source in policy.key {
        let found = match *source {
            KeySource::Header(name) => header(name).map_err(FormKeyError::from),
            KeySource::Query(name) => from_query(req.query_string(), name).map_err(Into::into),
            KeySource::Cookie(name) => {
                let cookies = req.headers().get_all(COOKIE).map(|v| v.as_bytes());
                from_cookies(cookies, name).map_err(Into::into)
            }
            KeySource::Form(name) => match (body, decoded) {
                (_, Some(Some(plain))) => from_form(content_type, plain, name),
                (Body::Buffered(raw), _) => from_form(content_type, raw, name),
                (Body::Raw(_), _) => Ok(None),
            },
        };
        match found {
            Ok(Some(key)) => return Ok(Some(key)),
            Ok(None) => {}
            Err(e) => return Err(format!("{source}: {e}")),
        }
    }
    Ok(None)
}

/// The 400 detail for a missing key: where this endpoint looks for one.
pub(super) fn missing_key(policy: &Policy, default_header: &HeaderName) -> String {
    let places = if policy.key.is_empty() {
        format!("an {default_header} header")
    } else {
        policy
            .key
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" or ")
    };
    format!(
        "this endpoint requires an idempotency key in {places}: 1 to 255 printable ASCII \
         characters, unique per operation (a UUID works well)"
    )
}

/// The names of this endpoint's key sources of one kind (`pick` chooses it), if any.
pub(super) fn key_names(
    policy: &Policy,
    pick: impl Fn(KeySource) -> Option<&'static str>,
) -> Option<Vec<&'static str>> {
    let names: Vec<&'static str> = policy.key.iter().filter_map(|s| pick(*s)).collect();
    (!names.is_empty()).then_some(names)
}

/// Reads the raw body (still compressed, if it was sent compressed), refusing more than `limit`.
pub(super) async fn buffer_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Bytes, HttpResponse> {
    let too_large = || {
        reject(
            ProblemKind::BodyTooLarge,
            format!("the request body is larger than this endpoint's limit of {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    // The usual body arrives in one chunk: keep that chunk rather than copying it.
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    let mut total = 0usize;
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            reject(
                ProblemKind::BodyUnreadable,
                format!("the request body could not be read: {e}"),
            )
        })?;
        total += chunk.len();
        if total > limit {
            return Err(too_large());
        }
        match first.take() {
            None if buf.is_empty() => first = Some(chunk),
            earlier => {
                if let Some(earlier) = earlier {
                    buf.reserve(declared.map_or(0, |n| n as usize).min(limit));
                    buf.extend_from_slice(&earlier);
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}

/// The body as the handler's extractors will see it: gunzipped or inflated per
/// `Content-Encoding` (`gzip`, `x-gzip`, `deflate`), at most `limit` bytes once decoded.
/// `Ok(None)` when it is not encoded (or in an encoding left as it is).
pub(super) fn decode(
    req: &HttpRequest,
    raw: &[u8],
    limit: usize,
) -> Result<Option<Vec<u8>>, Problem> {
    let Some(encoding) = req.headers().get(CONTENT_ENCODING) else {
        return Ok(None);
    };
    let encoding = String::from_utf8_lossy(encoding.as_bytes())
        .trim()
        .to_ascii_lowercase();
    let reader: Box<dyn Read + '_> = match encoding.as_str() {
        "gzip" | "x-gzip" => Box::new(flate2::read::MultiGzDecoder::new(raw)),
        "deflate" => Box::new(flate2::read::ZlibDecoder::new(raw)),
        _ => return Ok(None),
    };
    let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(limit));
    // One byte past the limit tells a body that is too large once decoded.
    match reader.take(limit as u64 + 1).read_to_end(&mut out) {
        Ok(_) if out.len() > limit => Err(Problem::new(
            ProblemKind::BodyTooLarge,
            format!("the request body is larger than this endpoint's limit of {limit} bytes once decoded"),
        )),
        Ok(_) => Ok(Some(out)),
        Err(e) => Err(Problem::new(
            ProblemKind::BodyUnreadable,
            format!("the request body is not valid {encoding}: {e}"),
        )),
    }
}

/// The request's fingerprint under the endpoint's guarantee. `strict` takes the raw body;
/// `result` and `semantic` the decoded one. A key's own query parameter and form field, and a
/// multipart boundary, are left out.
pub(super) fn fingerprint(
    req: &HttpRequest,
    policy: &Policy,
    content_type: &str,
    raw: &[u8],
    decoded: Option<&[u8]>,
) -> Fingerprint {
    let without_key = key_names(policy, |s| match s {
        KeySource::Query(name) => Some(name),
        _ => None,
    })
    .and_then(|names| query_without(req.query_string(), &names))
    .map(|q| match q.as_str() {
        "" => req.path().to_owned(),
        q => format!("{}?{q}", req.path()),
    });
    let path = match &without_key {
        Some(p) => p.as_str(),
        None => req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/"),
    };
    let method = req.method().as_str();
    let body = match (policy.guarantee, decoded) {
        (Guarantee::Strict, _) | (_, None) => raw,
        (_, Some(plain)) => plain,
    };
    // A form is read decoded whatever the guarantee: its fields are what it says.
    let form = key_names(policy, |s| match s {
        KeySource::Form(name) => Some(name),
        _ => None,
    })
    .and_then(|fields| form_fingerprint_body(content_type, decoded.unwrap_or(raw), &fields));
    let (fp_type, fp_body): (&str, &[u8]) = match &form {
        Some((t, b)) => (t, b),
        None => (content_type, body),
    };
    match policy.guarantee {
        Guarantee::Strict => Fingerprint::strict(method, path, fp_type, fp_body),
        Guarantee::Result => Fingerprint::result(method, path, fp_type, fp_body),
        Guarantee::Semantic => Fingerprint::semantic(method, path, policy.fingerprint, fp_body),
    }
}
