//! Compile-time checks: durations, sizes, enum values, combinations of options, and the shape of
//! the handler. Every error names what is allowed.

use crate::values::{Choice, KeyKind};
use proc_macro2::Span;
use syn::spanned::Spanned;

/// A duration in milliseconds, as written in the attribute.
pub(crate) type Millis = u64;

const SECOND: Millis = 1000;
const DAY: Millis = 24 * 3600 * SECOND;

/// Inclusive ranges each duration option accepts.
pub(crate) const TTL_RANGE: (Millis, Millis) = (SECOND, 30 * DAY);
pub(crate) const LEASE_RANGE: (Millis, Millis) = (100, 3600 * SECOND);
pub(crate) const WAIT_RANGE: (Millis, Millis) = (1, 300 * SECOND);
pub(crate) const ASYNC_AFTER_RANGE: (Millis, Millis) = (1, 300 * SECOND);
/// Largest `max_body` accepted: 1 GiB.
pub(crate) const MAX_BODY_LIMIT: u64 = 1 << 30;

/// Parses `"1h30m"`-style durations: number+unit pairs (`d`, `h`, `m`, `s`, `ms`), each unit at
/// most once, largest first.
pub(crate) fn parse_duration(s: &str) -> Result<Millis, String> {
    let bad = || {
        format!(
            "invalid duration `{s}`: expected numbers with units `d`, `h`, `m`, `s` or `ms`, \
             largest first, like \"15m\", \"24h\" or \"1h30m\""
        )
    };
    let units: [(&str, Millis); 5] = [
        ("d", DAY),
        ("h", 3600 * SECOND),
        ("m", 60 * SECOND),
        ("s", SECOND),
        ("ms", 1),
    ];
    let mut rest = s;
    let mut total: Millis = 0;
    let mut next_unit = 0;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: Millis = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let letters = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..letters];
        rest = &rest[letters..];
        let pos = units[next_unit..]
            .iter()
            .position(|(u, _)| *u == unit)
            .ok_or_else(bad)?;
        let factor = units[next_unit + pos].1;
        next_unit += pos + 1;
        total = n
            .checked_mul(factor)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    Ok(total)
}

/// Human form of a duration for messages.
pub(crate) fn show(ms: Millis) -> String {
    if ms.is_multiple_of(DAY) {
        format!("{}d", ms / DAY)
    } else if ms.is_multiple_of(3600 * SECOND) {
        format!("{}h", ms / (3600 * SECOND))
    } else if ms.is_multiple_of(60 * SECOND) {
        format!("{}m", ms / (60 * SECOND))
    } else if ms.is_multiple_of(SECOND) {
        format!("{}s", ms / SECOND)
    } else {
        format!("{ms}ms")
    }
}

/// Checks `ms` against an inclusive range, naming the option.
pub(crate) fn in_range(
    name: &str,
    ms: Millis,
    (lo, hi): (Millis, Millis),
) -> Result<Millis, String> {
    if (lo..=hi).contains(&ms) {
        Ok(ms)
    } else {
        Err(format!(
            "`{name}` must be between {} and {}, got {}",
            show(lo),
            show(hi),
            show(ms)
        ))
    }
}

/// Parses sizes like `"1MiB"`, `"512KiB"`, `"64KB"`, `"1000B"` or `"4096"`.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "invalid size `{s}`: expected a number with an optional unit `B`, `KB`, `KiB`, `MB`, \
             `MiB`, `GB` or `GiB`, like \"1MiB\""
        )
    };
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad());
    }
    let n: u64 = s[..digits].parse().map_err(|_| bad())?;
    let factor: u64 = match s[digits..].trim_start() {
        "" | "B" => 1,
        "KB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        _ => return Err(bad()),
    };
    let bytes = n.checked_mul(factor).ok_or_else(bad)?;
    if bytes == 0 || bytes > MAX_BODY_LIMIT {
        return Err(format!(
            "`max_body` must be between 1 byte and 1GiB, got `{s}`"
        ));
    }
    Ok(bytes)
}

/// Checks RFC 6901 syntax: `""` or `/`-separated tokens where `~` is only `~0` or `~1`.
pub(crate) fn json_pointer(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err(
            "an empty JSON pointer means the whole body; use `guarantee = \"result\"` \
                    for that"
                .into(),
        );
    }
    if !p.starts_with('/') {
        return Err(format!(
            "`{p}` is not a JSON pointer: it must start with `/`, like \"/amount\""
        ));
    }
    let b = p.as_bytes();
    for (i, c) in b.iter().enumerate() {
        if *c == b'~' && !matches!(b.get(i + 1), Some(b'0' | b'1')) {
            return Err(format!(
                "`{p}` is not a JSON pointer: `~` must be followed by `0` (for `~`) or `1` (for `/`)"
            ));
        }
    }
    Ok(())
}

/// Headers never replayed, whatever the attribute says (idem-runtime's `NEVER_REPLAYED`, which
/// also enforces this at run time).
const NEVER_REPLAYED: &[&str] = &[
    "set-cookie",
    "authorization",
    "www-authenticate",
    "proxy-authenticate",
    "date",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "content-length",
];

/// An RFC 9110 token (header names, cookie names).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Checks one `key` entry, `"<kind>:<name>"`; returns the kind and the name (a header name in
/// lower case).
pub(crate) fn key_source(entry: &str) -> Result<(KeyKind, String), String> {
    let example = "like `\"header:Idempotency-Key\"`, `\"query:idem\"`, `\"form:_idem\"` or `\"cookie:idem\"`";
    let Some((kind, name)) = entry.split_once(':') else {
        return Err(format!(
            "`{entry}` is not `<source>:<name>`; write it {example}"
        ));
    };
    let Some(source) = KeyKind::from_name(kind) else {
        let hint = suggest(kind, KeyKind::NAMES)
            .map(|s| format!("did you mean `{s}`? "))
            .unwrap_or_default();
        return Err(format!(
            "unknown key source `{kind}`; {hint}use one of `header`, `query`, `form`, `cookie`"
        ));
    };
    if name.is_empty() {
        return Err(format!(
            "`{entry}` names no {kind}: write the name after the colon, like `\"{kind}:idem\"`"
        ));
    }
    let token = matches!(source, KeyKind::Header | KeyKind::Cookie);
    let ok = if token {
        is_token(name)
    } else {
        // Compared after percent-decoding: no byte that form encoding would rewrite.
        name.bytes()
            .all(|b| b.is_ascii_graphic() && !b"\"&=;,%+#?".contains(&b))
    };
    if !ok || name.len() > 64 {
        return Err(format!(
            "`{name}` is not a valid {kind} name for a key: 1 to 64 characters, {}",
            if token {
                "letters, digits and `!#$%&'*+-.^_`|~`"
            } else {
                "printable ASCII without spaces or `\"&=;,%+#?`"
            }
        ));
    }
    let name = if source == KeyKind::Header {
        name.to_ascii_lowercase()
    } else {
        name.to_owned()
    };
    Ok((source, name))
}

/// Checks an HTTP header name (RFC 9110 token) and that it may be replayed; returns it lower-case.
pub(crate) fn header_name(h: &str) -> Result<String, String> {
    if !is_token(h) {
        return Err(format!("`{h}` is not a valid header name"));
    }
    let lower = h.to_ascii_lowercase();
    if NEVER_REPLAYED.contains(&lower.as_str()) {
        return Err(format!(
            "`{h}` is never replayed: credentials, `Date` and hop-by-hop headers belong to one \
             response only"
        ));
    }
    Ok(lower)
}

/// Levenshtein distance, for "did you mean" hints.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The closest of `candidates` to `word`, when close enough to be a likely typo.
pub(crate) fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (distance(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3) || (word.len() >= 3 && c.starts_with(word)))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Checks that the item is something `#[idempotent]` can wrap: a free `async fn` without
/// generics and with at most 16 extractors (actix-web's tuple limit).
pub(crate) fn fn_shape(sig: &syn::Signature) -> Result<(), syn::Error> {
    let mut errors: Option<syn::Error> = None;
    let mut push = |span: Span, msg: &str| {
        let e = syn::Error::new(span, msg);
        match &mut errors {
            Some(all) => all.combine(e),
            None => errors = Some(e),
        }
    };
    if sig.asyncness.is_none() {
        push(
            sig.fn_token.span,
            "`#[idempotent]` handlers must be `async fn`; add `async`",
        );
    }
    if let Some(recv) = sig.receiver() {
        push(
            recv.span(),
            "`#[idempotent]` cannot wrap a method taking `self`; use a free `async fn` handler",
        );
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        push(
            sig.generics.span(),
            "`#[idempotent]` handlers cannot be generic; use concrete extractor types",
        );
    }
    if sig.inputs.len() > 16 {
        push(
            sig.inputs.span(),
            "`#[idempotent]` handlers take at most 16 extractors (actix-web's limit)",
        );
    }
    if let Some(v) = &sig.variadic {
        push(v.span(), "`#[idempotent]` handlers cannot be variadic");
    }
    errors.map_or(Ok(()), Err)
}

/// `Steps` (a multi-step operation) under `guarantee = "strict"`: a step's failure would be
/// kept as the operation's final answer while the operation is half done. The runtime never
/// keeps a step's failure whatever the guarantee (a type alias hides `Steps` from this check);
/// this makes the choice explicit where it can be seen.
pub(crate) fn steps_guarantee(
    guarantee: crate::values::Guarantee,
    sig: &syn::Signature,
) -> Result<(), syn::Error> {
    if guarantee != crate::values::Guarantee::Strict {
        return Ok(());
    }
    let steps = sig.inputs.iter().find_map(|a| match a {
        syn::FnArg::Typed(t) => match &*t.ty {
            syn::Type::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == "Steps") => {
                Some(t.ty.span())
            }
            _ => None,
        },
        syn::FnArg::Receiver(_) => None,
    });
    match steps {
        Some(at) => Err(syn::Error::new(
            at,
            "`Steps` needs `guarantee = \"result\"`: under `\"strict\"` (the default) a step's \
             failure would be kept as the final answer of an operation left half done. Set \
             `guarantee = \"result\"`",
        )),
        None => Ok(()),
    }
}

/// An endpoint `name`: 1 to 100 characters, a letter first, then letters, digits and `.`, `_`,
/// `-`, `:` or `/` — stable across deploys, so that records outlive renames and moves.
pub(crate) fn endpoint_name(name: &str) -> Result<(), String> {
    let ok = (1..=100).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'/'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`name` must be 1 to 100 characters: a letter, then letters, digits, `.`, `_`, `-`, \
             `:` or `/`, like `name = \"payments.create\"`; got {name:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h"), Ok(24 * 3600 * 1000));
        assert_eq!(parse_duration("1h30m"), Ok(90 * 60 * 1000));
        assert_eq!(parse_duration("7d"), Ok(7 * DAY));
        assert_eq!(parse_duration("1500ms"), Ok(1500));
        assert_eq!(parse_duration("1s500ms"), Ok(1500));
        for bad in [
            "",
            "24",
            "h",
            "1x",
            "30m1h",
            "1h1h",
            "1.5h",
            "-1s",
            " 1s",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("64KB"), Ok(64_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("0").is_err());
        assert!(parse_size("2GiB").is_err());
        assert!(parse_size("1 parsec").is_err());
    }

    #[test]
    fn pointers_and_headers() {
        assert!(json_pointer("/amount").is_ok());
        assert!(json_pointer("/a~0b/c~1d/0").is_ok());
        for bad in ["", "amount", "/a~", "/a~2"] {
            assert!(json_pointer(bad).is_err(), "{bad}");
        }
        assert_eq!(header_name("X-Request-Id"), Ok("x-request-id".into()));
        assert!(header_name("Set-Cookie").is_err());
        assert!(header_name("bad header").is_err());
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("ttll", &["ttl", "lease"]), Some("ttl"));
        assert_eq!(
            suggest("on_conflit", &["on_conflict", "ttl"]),
            Some("on_conflict")
        );
        assert_eq!(suggest("zzzzzz", &["ttl", "lease"]), None);
        assert_eq!(
            suggest("retry", &["retry_after", "wait"]),
            Some("retry_after")
        );
    }
}
