//! Reading a request before the store is asked, whatever the framework: its key from the
//! endpoint's sources, its body decoded when a form key or a `result`/`semantic` fingerprint
//! needs it, and its fingerprint.

use std::io::Read;

use super::Head;
use crate::key::{parse_key_headers, IdempotencyKey};
use crate::key_source::{
    form_fingerprint_body, from_cookies, from_form, from_query, query_without, FormKeyError,
    KeySource,
};
use crate::problem::{Problem, ProblemKind};
use crate::{Fingerprint, Guarantee, Policy};

/// The key, from the first of the endpoint's sources that has one (the app's key header when
/// the endpoint names none). `Err` is the 400's detail: a malformed key where one was found.
///
/// `form` is the body a form key is read from (decoded), `None` while the body is not read.
pub(crate) fn find_key(
    req: &impl Head,
    policy: &Policy,
    default_header: &str,
    content_type: &str,
    form: Option<&[u8]>,
) -> Result<Option<IdempotencyKey>, String> {
    let header = |name| parse_key_headers(req.header_values(name));
    if policy.key.is_empty() {
        return header(default_header).map_err(|e| e.to_string());
    }
    for source in policy.key {
        let found = match *source {
            KeySource::Header(name) => header(name).map_err(FormKeyError::from),
            KeySource::Query(name) => from_query(req.query(), name).map_err(Into::into),
            KeySource::Cookie(name) => {
                from_cookies(req.header_values("cookie"), name).map_err(Into::into)
            }
            KeySource::Form(name) => match form {
                Some(body) => from_form(content_type, body, name),
                None => Ok(None),
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
pub(crate) fn missing_key(policy: &Policy, default_header: &str) -> String {
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
pub(crate) fn key_names(
    policy: &Policy,
    pick: impl Fn(KeySource) -> Option<&'static str>,
) -> Option<Vec<&'static str>> {
    let names: Vec<&'static str> = policy.key.iter().filter_map(|s| pick(*s)).collect();
    (!names.is_empty()).then_some(names)
}

/// The body as the handler's extractors will see it: gunzipped or inflated per
/// `Content-Encoding` (`gzip`, `x-gzip`, `deflate`), at most `limit` bytes once decoded.
/// `Ok(None)` when it is not encoded (or in an encoding left as it is).
pub(crate) fn decode(
    req: &impl Head,
    raw: &[u8],
    limit: usize,
) -> Result<Option<Vec<u8>>, Problem> {
    let Some(encoding) = req.header("content-encoding") else {
        return Ok(None);
    };
    let encoding = String::from_utf8_lossy(encoding)
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
pub(crate) fn fingerprint(
    req: &impl Head,
    policy: &Policy,
    content_type: &str,
    raw: &[u8],
    decoded: Option<&[u8]>,
) -> Fingerprint {
    let without_key = key_names(policy, |s| match s {
        KeySource::Query(name) => Some(name),
        _ => None,
    })
    .and_then(|names| query_without(req.query(), &names))
    .map(|q| match q.as_str() {
        "" => req.path().to_owned(),
        q => format!("{}?{q}", req.path()),
    });
    let path = match &without_key {
        Some(p) => p.as_str(),
        None => req.path_and_query(),
    };
    let method = req.method();
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
