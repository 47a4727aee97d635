//! One parser per option: each turns the expression the user wrote into that option's typed
//! value, or an error pointing at it. No parser looks at another option; rules that relate two
//! options live in [`crate::rules`].

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, Lit};

use crate::validate::{self, Millis};
use crate::values::{Choice, Guarantee, KeyKind, OnConflict, OnStoreError};

/// Accumulates errors, as `syn::Error::combine` does.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, span: Span, msg: impl std::fmt::Display) {
        self.add(syn::Error::new(span, msg));
    }

    pub(crate) fn add(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    pub(crate) fn finish(self) -> Result<(), syn::Error> {
        self.0.map_or(Ok(()), Err)
    }
}

/// An option's value and where it was written: `option` at its name, `value` at its value.
pub(crate) struct Given<T> {
    pub value: T,
    pub option: Span,
    pub at: Span,
}

type Parsed<T> = Result<T, syn::Error>;

fn string(name: &str, expr: &Expr, example: &str) -> Parsed<(String, Span)> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok((s.value(), s.span())),
        other => Err(syn::Error::new(
            other.span(),
            format!("`{name}` expects a string literal, like `{name} = {example}`"),
        )),
    }
}

/// A string literal naming one value of `T`, with a suggestion when it is close to one.
fn choice<T: Choice>(name: &str, expr: &Expr) -> Parsed<T> {
    let (value, span) = string(name, expr, &format!("\"{}\"", T::NAMES[0]))?;
    if let Some(v) = T::from_name(&value) {
        return Ok(v);
    }
    let list = T::NAMES
        .iter()
        .map(|v| format!("`{v}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let hint = validate::suggest(&value, T::NAMES)
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default();
    Err(syn::Error::new(
        span,
        format!("`{name}` must be one of {list}{hint}"),
    ))
}

/// `["a", "b"]`: a non-empty array of string literals.
fn string_list(name: &str, expr: &Expr, example: &str) -> Parsed<Vec<(String, Span)>> {
    let wrong = |span: Span| {
        syn::Error::new(
            span,
            format!("`{name}` expects an array of string literals, like `{name} = {example}`"),
        )
    };
    let Expr::Array(arr) = expr else {
        return Err(wrong(expr.span()));
    };
    if arr.elems.is_empty() {
        return Err(wrong(arr.span()));
    }
    arr.elems
        .iter()
        .map(|e| match e {
            Expr::Lit(ExprLit {
                lit: Lit::Str(s), ..
            }) => Ok((s.value(), s.span())),
            other => Err(wrong(other.span())),
        })
        .collect()
}

fn duration(name: &str, expr: &Expr, range: (Millis, Millis)) -> Parsed<Millis> {
    let (value, span) = string(name, expr, "\"30s\"")?;
    validate::parse_duration(&value)
        .and_then(|ms| validate::in_range(name, ms, range))
        .map_err(|m| syn::Error::new(span, m))
}

/// `ttl = "24h"`.
pub(crate) fn ttl(v: &Expr) -> Parsed<Millis> {
    duration("ttl", v, validate::TTL_RANGE)
}

/// `client_error_ttl = "1m"`.
pub(crate) fn client_error_ttl(v: &Expr) -> Parsed<Millis> {
    duration("client_error_ttl", v, validate::TTL_RANGE)
}

/// `lease = "30s"`.
pub(crate) fn lease(v: &Expr) -> Parsed<Millis> {
    duration("lease", v, validate::LEASE_RANGE)
}

/// `wait_timeout = "10s"`.
pub(crate) fn wait_timeout(v: &Expr) -> Parsed<Millis> {
    duration("wait_timeout", v, validate::WAIT_RANGE)
}

/// `respond_async_after = "2s"`.
pub(crate) fn respond_async_after(v: &Expr) -> Parsed<Millis> {
    duration("respond_async_after", v, validate::ASYNC_AFTER_RANGE)
}

/// `guarantee = "strict" | "result" | "semantic"`.
pub(crate) fn guarantee(v: &Expr) -> Parsed<Guarantee> {
    choice("guarantee", v)
}

/// `on_conflict = "retry_after" | "wait" | "accepted" | "webhook"`.
pub(crate) fn on_conflict(v: &Expr) -> Parsed<OnConflict> {
    choice("on_conflict", v)
}

/// `on_store_error = "reject" | "proceed"`.
pub(crate) fn on_store_error(v: &Expr) -> Parsed<OnStoreError> {
    choice("on_store_error", v)
}

/// `key = "form:_idem"` or `key = ["header:Idempotency-Key", "form:_idem"]`.
pub(crate) fn key(v: &Expr) -> Parsed<Vec<(KeyKind, String)>> {
    let entries = match v {
        Expr::Array(_) => string_list("key", v, "[\"header:Idempotency-Key\", \"form:_idem\"]")?,
        _ => vec![string("key", v, "\"form:_idem\"")?],
    };
    let mut bad = Errors::default();
    let mut out = Vec::new();
    for (entry, sp) in entries {
        match validate::key_source(&entry) {
            Err(m) => bad.push(sp, m),
            Ok(src) if out.contains(&src) => bad.push(sp, format!("`{entry}` is listed twice")),
            Ok(src) => out.push(src),
        }
    }
    bad.finish().map(|()| out)
}

/// `required = true | false`.
pub(crate) fn required(v: &Expr) -> Parsed<bool> {
    match v {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(b), ..
        }) => Ok(b.value),
        other => Err(syn::Error::new(
            other.span(),
            "`required` expects `true` or `false`",
        )),
    }
}

/// `max_body = "1MiB"`.
pub(crate) fn max_body(v: &Expr) -> Parsed<u64> {
    let (s, sp) = string("max_body", v, "\"1MiB\"")?;
    validate::parse_size(&s).map_err(|m| syn::Error::new(sp, m))
}

/// `name = "payments.create"`.
pub(crate) fn name(v: &Expr) -> Parsed<String> {
    let (name, sp) = string("name", v, "\"payments.create\"")?;
    validate::endpoint_name(&name).map_err(|m| syn::Error::new(sp, m))?;
    Ok(name)
}

/// `store = "pg"`.
pub(crate) fn store(v: &Expr) -> Parsed<String> {
    let (name, sp) = string("store", v, "\"pg\"")?;
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        return Err(syn::Error::new(
            sp,
            "`store` names a store registered with `named_store`: letters, digits, `_` and `-`, \
             like `store = \"pg\"`",
        ));
    }
    Ok(name)
}

/// `fingerprint = ["/amount", "/currency"]`.
pub(crate) fn fingerprint(v: &Expr) -> Parsed<Vec<String>> {
    pointers("fingerprint", v, "[\"/amount\", \"/currency\"]")
}

/// `redact = ["/card/number"]`.
pub(crate) fn redact(v: &Expr) -> Parsed<Vec<String>> {
    pointers("redact", v, "[\"/card/number\"]")
}

/// A non-empty list of distinct JSON pointers.
fn pointers(name: &str, v: &Expr, example: &str) -> Parsed<Vec<String>> {
    let mut bad = Errors::default();
    let mut out = Vec::new();
    for (p, sp) in string_list(name, v, example)? {
        if let Err(m) = validate::json_pointer(&p) {
            bad.push(sp, m);
        } else if out.contains(&p) {
            bad.push(sp, format!("`{p}` is listed twice"));
        } else {
            out.push(p);
        }
    }
    bad.finish().map(|()| out)
}

/// `replay_headers = ["x-request-id"]`: lower-cased, a repeat kept once.
pub(crate) fn replay_headers(v: &Expr) -> Parsed<Vec<String>> {
    let mut bad = Errors::default();
    let mut out = Vec::new();
    for (h, sp) in string_list("replay_headers", v, "[\"x-request-id\"]")? {
        match validate::header_name(&h) {
            Err(m) => bad.push(sp, m),
            Ok(h) if !out.contains(&h) => out.push(h),
            Ok(_) => {}
        }
    }
    bad.finish().map(|()| out)
}

/// `crate = "::idem"`.
pub(crate) fn krate(v: &Expr) -> Parsed<syn::Path> {
    let (s, sp) = string("crate", v, "\"::idem\"")?;
    syn::parse_str(&s)
        .map_err(|_| syn::Error::new(sp, format!("`crate` must be a path, got `{s}`")))
}
