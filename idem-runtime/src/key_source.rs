//! Where an endpoint reads its idempotency key: a header (the default), a query parameter, a
//! form field (urlencoded or multipart body) or a cookie, in the order of preference the
//! attribute lists (`key = ["header:Idempotency-Key", "form:_idem"]`).
//!
//! The first source that is present decides: a malformed key there is a 400, never a fall-through
//! to the next source. Every source gets the same validation ([`parse_key`]: 1–255 printable
//! ASCII, a bare token or an RFC 8941 string) and the same limits. A form field that carries the
//! key is left out of the request fingerprint ([`form_fingerprint_body`]), and so is a multipart
//! body's boundary, which browsers choose afresh for every submission; so is a query parameter
//! that carries the key ([`query_without`]).

use crate::key::{parse_key, IdempotencyKey, KeyError};

/// One place a key may come from. Built by `#[idempotent(key = …)]`, checked at compile time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// A request header: `"header:Idempotency-Key"`.
    Header(&'static str),
    /// A query-string parameter: `"query:idempotency_key"`.
    Query(&'static str),
    /// A field of an `application/x-www-form-urlencoded` or `multipart/form-data` body:
    /// `"form:_idem"`. Excluded from the fingerprint.
    Form(&'static str),
    /// A cookie: `"cookie:idem"`.
    Cookie(&'static str),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Header(n) => write!(f, "header `{n}`"),
            KeySource::Query(n) => write!(f, "query parameter `{n}`"),
            KeySource::Form(n) => write!(f, "form field `{n}`"),
            KeySource::Cookie(n) => write!(f, "cookie `{n}`"),
        }
    }
}

/// Mints a fresh key for a server-rendered form: a random UUIDv4 (122 random bits, so nobody
/// can guess another visitor's key). Render it as a hidden field ([`form_key_input`]) each time
/// the form is rendered; the form's endpoint takes `key = "form:<field>"`.
pub fn form_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// `<input type="hidden" name="{field}" value="{fresh key}">`, with `field` HTML-escaped.
pub fn form_key_input(field: &str) -> String {
    let mut escaped = String::with_capacity(field.len());
    for c in field.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    format!(
        r#"<input type="hidden" name="{escaped}" value="{}">"#,
        form_key()
    )
}

/// `application/x-www-form-urlencoded` percent-decoding (`+` is a space). `None` for a `%` not
/// followed by two hex digits.
fn percent_decode(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = raw.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Some(out)
}

/// The `&`-separated pairs of a query string or urlencoded body, as raw byte slices.
fn pairs(raw: &[u8]) -> impl Iterator<Item = (&[u8], &[u8], &[u8])> {
    raw.split(|b| *b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.iter().position(|b| *b == b'=') {
            Some(i) => (p, &p[..i], &p[i + 1..]),
            None => (p, p, &p[p.len()..]),
        })
}

/// The value of `name` in a query string or urlencoded body; repeated → an error.
fn urlencoded_value(raw: &[u8], name: &str) -> Result<Option<Vec<u8>>, KeyError> {
    let mut found = None;
    for (_, n, v) in pairs(raw) {
        if percent_decode(n).as_deref() != Some(name.as_bytes()) {
            continue;
        }
        if found.is_some() {
            return Err(KeyError::Repeated);
        }
        found = Some(percent_decode(v).ok_or(KeyError::InvalidCharacter)?);
    }
    Ok(found)
}

/// The key in the query string `query` (without the `?`), if parameter `name` is there.
pub fn from_query(query: &str, name: &str) -> Result<Option<IdempotencyKey>, KeyError> {
    urlencoded_value(query.as_bytes(), name)?
        .map(|v| parse_key(&v))
        .transpose()
}

/// `query` without the parameters named in `names` (the key's own parameters are not part of the
/// request's fingerprint); `None` when none of them is there.
pub fn query_without(query: &str, names: &[&str]) -> Option<String> {
    let is_key =
        |n: &[u8]| percent_decode(n).is_some_and(|n| names.iter().any(|k| k.as_bytes() == n));
    if !pairs(query.as_bytes()).any(|(_, n, _)| is_key(n)) {
        return None;
    }
    let kept: Vec<&[u8]> = pairs(query.as_bytes())
        .filter(|(_, n, _)| !is_key(n))
        .map(|(pair, _, _)| pair)
        .collect();
    Some(String::from_utf8_lossy(&kept.join(&b'&')).into_owned())
}

/// The key in cookie `name`, from every `Cookie` header value. The same cookie twice (browsers
/// send one per matching path) must carry the same value.
pub fn from_cookies<'a, I>(headers: I, name: &str) -> Result<Option<IdempotencyKey>, KeyError>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut found: Option<&[u8]> = None;
    for header in headers {
        for pair in header.split(|b| *b == b';') {
            let pair = trim(pair);
            let Some(eq) = pair.iter().position(|b| *b == b'=') else {
                continue;
            };
            if trim(&pair[..eq]) != name.as_bytes() {
                continue;
            }
            let mut value = trim(&pair[eq + 1..]);
            // RFC 6265: a cookie value may be wrapped in double quotes.
            if let [b'"', inner @ .., b'"'] = value {
                value = inner;
            }
            match found {
                Some(earlier) if earlier != value => return Err(KeyError::Repeated),
                _ => found = Some(value),
            }
        }
    }
    found.map(parse_key).transpose()
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// The kind of form a `Content-Type` announces.
enum FormKind<'a> {
    UrlEncoded,
    Multipart { boundary: &'a str },
}

fn form_kind(content_type: &str) -> Option<FormKind<'_>> {
    let mut parts = content_type.split(';');
    let mime = parts.next()?.trim();
    if mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Some(FormKind::UrlEncoded);
    }
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    parts
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"'))
        .filter(|b| !b.is_empty() && b.len() <= 70)
        .map(|boundary| FormKind::Multipart { boundary })
}

/// One part of a multipart body.
struct Part<'a> {
    name: Option<&'a [u8]>,
    filename: Option<&'a [u8]>,
    content_type: Option<&'a [u8]>,
    data: &'a [u8],
}

/// Linear-time substring search (a hostile body cannot make it quadratic).
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// `name="…"`-style parameter of a `Content-Disposition` value.
fn disposition_param<'a>(value: &'a [u8], param: &[u8]) -> Option<&'a [u8]> {
    for piece in value.split(|b| *b == b';').skip(1) {
        let piece = trim(piece);
        let eq = piece.iter().position(|b| *b == b'=')?;
        if trim(&piece[..eq]).eq_ignore_ascii_case(param) {
            let v = trim(&piece[eq + 1..]);
            return Some(match v {
                [b'"', inner @ .., b'"'] => inner,
                v => v,
            });
        }
    }
    None
}

/// Splits a multipart body into its parts; `None` if it is not well formed.
fn multipart<'a>(body: &'a [u8], boundary: &str) -> Option<Vec<Part<'a>>> {
    let delimiter = [b"--", boundary.as_bytes()].concat();
    let start = find(body, &delimiter)?;
    let mut rest = &body[start + delimiter.len()..];
    let next = [b"\r\n--", boundary.as_bytes()].concat();
    let mut parts = Vec::new();
    loop {
        if rest.starts_with(b"--") {
            return Some(parts);
        }
        rest = rest.strip_prefix(b"\r\n")?;
        let end = find(rest, &next)?;
        let (part, after) = (&rest[..end], &rest[end + next.len()..]);
        let split = find(part, b"\r\n\r\n");
        let (head, data) = match split {
            Some(i) => (&part[..i], &part[i + 4..]),
            // A part with no headers at all starts with the blank line.
            None => (&part[..0], part.strip_prefix(b"\r\n")?),
        };
        let mut p = Part {
            name: None,
            filename: None,
            content_type: None,
            data,
        };
        for line in head.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let (h, v) = (trim(&line[..colon]), trim(&line[colon + 1..]));
            if h.eq_ignore_ascii_case(b"content-disposition") {
                p.name = disposition_param(v, b"name");
                p.filename = disposition_param(v, b"filename");
            } else if h.eq_ignore_ascii_case(b"content-type") {
                p.content_type = Some(v);
            }
        }
        parts.push(p);
        rest = after;
    }
}

/// The key in form field `name` of a urlencoded or multipart `body`. `Ok(None)` when the body is
/// not a form or has no such field; a form that cannot be parsed is an error.
pub fn from_form(
    content_type: &str,
    body: &[u8],
    name: &str,
) -> Result<Option<IdempotencyKey>, FormKeyError> {
    let value = match form_kind(content_type) {
        None => return Ok(None),
        Some(FormKind::UrlEncoded) => urlencoded_value(body, name)?,
        Some(FormKind::Multipart { boundary }) => {
            let parts = multipart(body, boundary).ok_or(FormKeyError::Unparsable)?;
            let mut found = None;
            for p in parts.iter().filter(|p| p.name == Some(name.as_bytes())) {
                if found.is_some() {
                    return Err(KeyError::Repeated.into());
                }
                found = Some(p.data.to_vec());
            }
            found
        }
    };
    Ok(value.map(|v| parse_key(&v)).transpose()?)
}

/// Why a form field could not give a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormKeyError {
    /// The field's value is not a valid key.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The multipart body is malformed (no closing boundary, a part without headers' end, …).
    #[error("the multipart/form-data body could not be parsed")]
    Unparsable,
}

/// What the fingerprint of a form request is computed over: the body without the fields in
/// `key_fields`, and the content type without a multipart boundary. `None` when the body is not
/// a form (or not a well-formed one): then the raw body and content type are used.
pub fn form_fingerprint_body(
    content_type: &str,
    body: &[u8],
    key_fields: &[&str],
) -> Option<(&'static str, Vec<u8>)> {
    let is_key = |raw_name: &[u8]| key_fields.iter().any(|f| f.as_bytes() == raw_name);
    match form_kind(content_type)? {
        FormKind::UrlEncoded => {
            let kept: Vec<&[u8]> = pairs(body)
                .filter(|(_, n, _)| !percent_decode(n).is_some_and(|n| is_key(&n)))
                .map(|(pair, _, _)| pair)
                .collect();
            Some(("application/x-www-form-urlencoded", kept.join(&b'&')))
        }
        FormKind::Multipart { boundary } => {
            let mut out = Vec::with_capacity(body.len());
            for p in multipart(body, boundary)? {
                if p.name.is_some_and(is_key) {
                    continue;
                }
                // Length-prefixed, so that no two different forms encode alike.
                for field in [
                    p.name.unwrap_or_default(),
                    p.filename.unwrap_or_default(),
                    p.content_type.unwrap_or_default(),
                    p.data,
                ] {
                    out.extend_from_slice(&(field.len() as u64).to_be_bytes());
                    out.extend_from_slice(field);
                }
            }
            Some(("multipart/form-data", out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded_and_validated() {
        let k = from_query("a=1&idem=k%2D1&b", "idem").unwrap().unwrap();
        assert_eq!(k.as_str(), "k-1");
        assert_eq!(from_query("a=1", "idem"), Ok(None));
        assert_eq!(from_query("idem=", "idem"), Err(KeyError::Empty));
        assert_eq!(from_query("idem=a&idem=b", "idem"), Err(KeyError::Repeated));
        assert_eq!(
            from_query("idem=%ZZ", "idem"),
            Err(KeyError::InvalidCharacter)
        );
        assert_eq!(
            from_query("idem=%C3%A9", "idem"),
            Err(KeyError::InvalidCharacter)
        );
    }

    #[test]
    fn key_parameters_leave_the_query() {
        assert_eq!(
            query_without("a=1&idem=k&b=2", &["idem"]).as_deref(),
            Some("a=1&b=2")
        );
        assert_eq!(query_without("idem=k", &["idem"]).as_deref(), Some(""));
        assert_eq!(query_without("a=1", &["idem"]), None);
    }

    #[test]
    fn cookies_are_found_among_others() {
        let k = from_cookies([&b"a=1; idem=\"k1\" ;b=2"[..]], "idem")
            .unwrap()
            .unwrap();
        assert_eq!(k.as_str(), "k1");
        assert_eq!(from_cookies([&b"idemx=1"[..]], "idem"), Ok(None));
        assert!(from_cookies([&b"idem=a"[..], &b"idem=a"[..]], "idem").is_ok());
        assert_eq!(
            from_cookies([&b"idem=a; idem=b"[..]], "idem"),
            Err(KeyError::Repeated)
        );
    }

    const MP: &str = "multipart/form-data; boundary=XyZ";

    fn multipart_body(boundary: &str, key: &str) -> Vec<u8> {
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"amount\"\r\n\r\n500\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"_idem\"\r\n\r\n{key}\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"note\"; filename=\"a.txt\"\r\n\
             Content-Type: text/plain\r\n\r\nhello\r\n--{boundary}--\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn form_fields_from_both_encodings() {
        let ue = "application/x-www-form-urlencoded";
        let k = from_form(ue, b"amount=5&_idem=abc", "_idem")
            .unwrap()
            .unwrap();
        assert_eq!(k.as_str(), "abc");
        assert_eq!(from_form(ue, b"amount=5", "_idem"), Ok(None));
        assert_eq!(from_form("application/json", b"{}", "_idem"), Ok(None));
        let k = from_form(MP, &multipart_body("XyZ", "k-9"), "_idem")
            .unwrap()
            .unwrap();
        assert_eq!(k.as_str(), "k-9");
        assert_eq!(
            from_form(MP, b"--XyZ\r\nbroken", "_idem"),
            Err(FormKeyError::Unparsable)
        );
    }

    #[test]
    fn the_key_field_and_the_boundary_do_not_change_the_fingerprint_body() {
        let ue = "application/x-www-form-urlencoded";
        let a = form_fingerprint_body(ue, b"amount=5&_idem=a&x=1", &["_idem"]).unwrap();
        let b = form_fingerprint_body(ue, b"amount=5&_idem=b&x=1", &["_idem"]).unwrap();
        assert_eq!(a, b);
        let c = form_fingerprint_body(ue, b"amount=6&_idem=a&x=1", &["_idem"]).unwrap();
        assert_ne!(a, c);

        let one = form_fingerprint_body(MP, &multipart_body("XyZ", "k1"), &["_idem"]).unwrap();
        let two = form_fingerprint_body(
            "multipart/form-data; boundary=\"other\"",
            &multipart_body("other", "k2"),
            &["_idem"],
        )
        .unwrap();
        assert_eq!(one, two);
        assert_eq!(one.0, "multipart/form-data");
    }

    #[test]
    fn form_key_inputs_are_fresh_and_escaped() {
        assert_ne!(form_key(), form_key());
        assert!(parse_key(form_key().as_bytes()).is_ok());
        let input = form_key_input("a\"b");
        assert!(input.starts_with(r#"<input type="hidden" name="a&quot;b" value=""#));
    }
}
