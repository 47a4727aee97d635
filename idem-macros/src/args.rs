//! Parses `#[idempotent(...)]` into typed [`Args`], collecting every error instead of stopping at
//! the first, each pointing at the offending token.

use proc_macro2::Span;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, Lit, Meta, Token};

use crate::validate::{self, Millis};
use crate::values::{Choice, Guarantee, KeyKind, OnConflict, OnStoreError};

/// Every option DESIGN §5 defines.
pub const OPTIONS: &[&str] = &[
    "ttl",
    "guarantee",
    "on_conflict",
    "lease",
    "wait_timeout",
    "required",
    "store",
    "on_store_error",
    "max_body",
    "crate",
    "fingerprint",
    "respond_async_after",
    "replay_headers",
    "transactional",
    "key",
    "name",
    "client_error_ttl",
];

/// What the attribute asked for, with defaults applied.
pub struct Args {
    pub ttl: Millis,
    /// A shorter TTL for 4xx answers.
    pub client_error_ttl: Option<Millis>,
    pub guarantee: Guarantee,
    pub fingerprint: Vec<String>,
    pub replay_headers: Vec<String>,
    pub store: Option<String>,
    /// The endpoint's stable name; `None` for method + route pattern, read at run time.
    pub name: Option<String>,
    pub on_conflict: OnConflict,
    pub wait_timeout: Millis,
    pub respond_async_after: Option<Millis>,
    pub lease: Millis,
    pub required: bool,
    pub on_store_error: OnStoreError,
    pub transactional: Option<Span>,
    /// `(kind, name)` pairs, in order of preference; empty for the app's key header.
    pub key: Vec<(KeyKind, String)>,
    pub max_body: u64,
    pub krate: syn::Path,
}

/// Accumulates errors, as `syn::Error::combine` does.
#[derive(Default)]
pub struct Errors(Option<syn::Error>);

impl Errors {
    pub fn push(&mut self, span: Span, msg: impl std::fmt::Display) {
        self.add(syn::Error::new(span, msg));
    }

    pub fn add(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    pub fn finish(self) -> Result<(), syn::Error> {
        self.0.map_or(Ok(()), Err)
    }
}

fn string(name: &str, expr: &Expr, example: &str) -> Result<(String, Span), syn::Error> {
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

/// A string literal that must be one of `allowed`.
fn one_of(name: &str, expr: &Expr, allowed: &[&str]) -> Result<String, syn::Error> {
    let (value, span) = string(name, expr, &format!("\"{}\"", allowed[0]))?;
    if allowed.contains(&value.as_str()) {
        return Ok(value);
    }
    let list = allowed
        .iter()
        .map(|v| format!("`{v}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let hint = validate::suggest(&value, allowed)
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default();
    Err(syn::Error::new(
        span,
        format!("`{name}` must be one of {list}{hint}"),
    ))
}

/// A string literal naming one value of `T`.
fn choice<T: Choice>(name: &str, expr: &Expr) -> Result<T, syn::Error> {
    let value = one_of(name, expr, T::NAMES)?;
    T::from_name(&value)
        .ok_or_else(|| syn::Error::new(expr.span(), format!("`{name}`: unknown value `{value}`")))
}

/// `["a", "b"]`: a non-empty array of string literals.
fn string_list(name: &str, expr: &Expr, example: &str) -> Result<Vec<(String, Span)>, syn::Error> {
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

fn duration(name: &str, expr: &Expr, range: (Millis, Millis)) -> Result<Millis, syn::Error> {
    let (value, span) = string(name, expr, "\"30s\"")?;
    validate::parse_duration(&value)
        .and_then(|ms| validate::in_range(name, ms, range))
        .map_err(|m| syn::Error::new(span, m))
}

impl Args {
    /// Parses the attribute's tokens.
    pub fn parse(tokens: proc_macro2::TokenStream) -> Result<Args, syn::Error> {
        let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(tokens)?;
        let mut errors = Errors::default();
        let mut seen: Vec<String> = Vec::new();
        let mut ttl: Option<(Millis, Span)> = None;
        let mut client_error_ttl: Option<(Millis, Span)> = None;
        let mut lease: Option<(Millis, Span)> = None;
        let mut wait_timeout: Option<Span> = None;
        let mut fingerprint_span: Option<Span> = None;
        let mut guarantee_span: Option<Span> = None;
        let mut async_after: Option<Span> = None;
        let mut args = Args {
            ttl: 24 * 3600 * 1000,
            client_error_ttl: None,
            guarantee: Guarantee::Strict,
            fingerprint: Vec::new(),
            replay_headers: Vec::new(),
            store: None,
            name: None,
            on_conflict: OnConflict::RetryAfter,
            wait_timeout: 10 * 1000,
            respond_async_after: None,
            lease: 30 * 1000,
            required: true,
            on_store_error: OnStoreError::Reject,
            transactional: None,
            key: Vec::new(),
            max_body: 2 << 20,
            krate: syn::parse_quote!(::idem),
        };

        let mut on_store_error_span: Option<Span> = None;
        for meta in &metas {
            let nv = match meta {
                Meta::NameValue(nv) => nv,
                // The one flag: `transactional`.
                Meta::Path(p) if p.is_ident("transactional") => {
                    if args.transactional.replace(p.span()).is_some() {
                        errors.push(p.span(), "duplicate option `transactional`; give it once");
                    }
                    continue;
                }
                other => {
                    errors.push(
                        other.span(),
                        "expected `option = value`, like `ttl = \"24h\"` (or the flag \
                         `transactional`)",
                    );
                    continue;
                }
            };
            let name = nv
                .path
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_else(|| {
                    let p = &nv.path;
                    quote::quote!(#p).to_string().replace(' ', "")
                });
            let span = nv.path.span();
            if !OPTIONS.contains(&name.as_str()) {
                let hint = validate::suggest(&name, OPTIONS)
                    .map(|s| format!("did you mean `{s}`? "))
                    .unwrap_or_default();
                errors.push(
                    span,
                    format!(
                        "unknown option `{name}`; {hint}allowed: {}",
                        OPTIONS.join(", ")
                    ),
                );
                continue;
            }
            if seen.contains(&name) {
                errors.push(span, format!("duplicate option `{name}`; give it once"));
                continue;
            }
            seen.push(name.clone());
            let v = &nv.value;
            let result: Result<(), syn::Error> = (|| {
                match name.as_str() {
                    "ttl" => ttl = Some((duration("ttl", v, validate::TTL_RANGE)?, v.span())),
                    "client_error_ttl" => {
                        client_error_ttl = Some((
                            duration("client_error_ttl", v, validate::TTL_RANGE)?,
                            v.span(),
                        ))
                    }
                    "lease" => {
                        lease = Some((duration("lease", v, validate::LEASE_RANGE)?, v.span()))
                    }
                    "wait_timeout" => {
                        args.wait_timeout = duration("wait_timeout", v, validate::WAIT_RANGE)?;
                        wait_timeout = Some(span);
                    }
                    "respond_async_after" => {
                        args.respond_async_after = Some(duration(
                            "respond_async_after",
                            v,
                            validate::ASYNC_AFTER_RANGE,
                        )?);
                        async_after = Some(span);
                    }
                    "guarantee" => {
                        args.guarantee = choice("guarantee", v)?;
                        guarantee_span = Some(v.span());
                    }
                    "on_conflict" => {
                        args.on_conflict = choice("on_conflict", v)?;
                    }
                    "on_store_error" => {
                        args.on_store_error = choice("on_store_error", v)?;
                        on_store_error_span = Some(v.span());
                    }
                    "key" => {
                        // One string, or an array of them.
                        let entries = match v {
                            Expr::Array(_) => string_list(
                                "key",
                                v,
                                "[\"header:Idempotency-Key\", \"form:_idem\"]",
                            )?,
                            _ => vec![string("key", v, "\"form:_idem\"")?],
                        };
                        let mut bad = Errors::default();
                        for (entry, sp) in entries {
                            match validate::key_source(&entry) {
                                Err(m) => bad.push(sp, m),
                                Ok(src) if args.key.contains(&src) => {
                                    bad.push(sp, format!("`{entry}` is listed twice"))
                                }
                                Ok(src) => args.key.push(src),
                            }
                        }
                        bad.finish()?;
                    }
                    "transactional" => {
                        return Err(syn::Error::new(
                            span,
                            "`transactional` is a flag: write `transactional`, without a value",
                        ))
                    }
                    "required" => match v {
                        Expr::Lit(ExprLit {
                            lit: Lit::Bool(b), ..
                        }) => args.required = b.value,
                        other => {
                            return Err(syn::Error::new(
                                other.span(),
                                "`required` expects `true` or `false`",
                            ))
                        }
                    },
                    "max_body" => {
                        let (s, sp) = string("max_body", v, "\"1MiB\"")?;
                        args.max_body =
                            validate::parse_size(&s).map_err(|m| syn::Error::new(sp, m))?;
                    }
                    "name" => {
                        let (name, sp) = string("name", v, "\"payments.create\"")?;
                        validate::endpoint_name(&name).map_err(|m| syn::Error::new(sp, m))?;
                        args.name = Some(name);
                    }
                    "store" => {
                        let (name, sp) = string("store", v, "\"pg\"")?;
                        let ok = !name.is_empty()
                            && name
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                        if !ok {
                            return Err(syn::Error::new(
                                sp,
                                "`store` names a store registered with `named_store`: letters, \
                                 digits, `_` and `-`, like `store = \"pg\"`",
                            ));
                        }
                        args.store = Some(name);
                    }
                    "fingerprint" => {
                        fingerprint_span = Some(span);
                        let mut bad = Errors::default();
                        for (p, sp) in
                            string_list("fingerprint", v, "[\"/amount\", \"/currency\"]")?
                        {
                            if let Err(m) = validate::json_pointer(&p) {
                                bad.push(sp, m);
                            } else if args.fingerprint.contains(&p) {
                                bad.push(sp, format!("`{p}` is listed twice"));
                            } else {
                                args.fingerprint.push(p);
                            }
                        }
                        bad.finish()?;
                    }
                    "replay_headers" => {
                        let mut bad = Errors::default();
                        for (h, sp) in string_list("replay_headers", v, "[\"x-request-id\"]")? {
                            match validate::header_name(&h) {
                                Err(m) => bad.push(sp, m),
                                Ok(h) if !args.replay_headers.contains(&h) => {
                                    args.replay_headers.push(h)
                                }
                                Ok(_) => {}
                            }
                        }
                        bad.finish()?;
                    }
                    "crate" => {
                        let (s, sp) = string("crate", v, "\"::idem\"")?;
                        args.krate = syn::parse_str(&s).map_err(|_| {
                            syn::Error::new(sp, format!("`crate` must be a path, got `{s}`"))
                        })?;
                    }
                    _ => unreachable!("every name in OPTIONS is handled"),
                }
                Ok(())
            })();
            if let Err(e) = result {
                errors.add(e);
            }
        }

        match (args.guarantee, fingerprint_span) {
            (Guarantee::Semantic, None) => errors.push(
                guarantee_span.unwrap_or_else(Span::call_site),
                "`guarantee = \"semantic\"` needs the fields that decide \"same request\": \
                 add `fingerprint = [\"/amount\", \"/currency\"]` (JSON pointers)",
            ),
            (Guarantee::Semantic, Some(_)) | (_, None) => {}
            (_, Some(span)) => errors.push(
                span,
                "`fingerprint` only applies with `guarantee = \"semantic\"`; set that or remove \
                 `fingerprint`",
            ),
        }
        for (span, option, policy) in [
            (wait_timeout, "wait_timeout", OnConflict::Wait),
            (async_after, "respond_async_after", OnConflict::Accepted),
        ] {
            if let Some(span) = span {
                if args.on_conflict != policy {
                    errors.push(
                        span,
                        format!(
                            "`{option}` only applies with `on_conflict = \"{}\"`; \
                             set that or remove `{option}`",
                            policy.name()
                        ),
                    );
                }
            }
        }
        if let (Some(_), true, Some(span)) = (
            args.transactional,
            args.on_store_error == OnStoreError::Proceed,
            on_store_error_span,
        ) {
            errors.push(
                span,
                "`transactional` cannot run without its store: remove `on_store_error = \"proceed\"` \
                 (a transactional handler needs the PostgreSQL store to open its transaction)",
            );
        }
        if let Some((ms, _)) = ttl {
            args.ttl = ms;
        }
        match client_error_ttl {
            Some((ms, span)) if ms > args.ttl => errors.push(
                span,
                format!(
                    "`client_error_ttl` ({}) must not be longer than `ttl` ({}): it is the \
                     shorter life of cached 4xx answers",
                    validate::show(ms),
                    validate::show(args.ttl)
                ),
            ),
            Some((ms, _)) => args.client_error_ttl = Some(ms),
            None => {}
        }
        match lease {
            Some((ms, span)) if ms >= args.ttl => errors.push(
                span,
                format!(
                    "`lease` ({}) must be shorter than `ttl` ({})",
                    validate::show(ms),
                    validate::show(args.ttl)
                ),
            ),
            Some((ms, _)) => args.lease = ms,
            // The default lease must stay below a short ttl.
            None => args.lease = args.lease.min(args.ttl / 2),
        }
        errors.finish().map(|()| args)
    }
}
