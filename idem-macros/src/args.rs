//! Parses `#[idempotent(...)]` into typed [`Args`] in two steps: each option's value through its
//! own parser ([`crate::options`]) into [`Written`], then defaults and the rules that relate
//! options ([`crate::rules`]). Every error is collected, each pointing at the offending token.

use proc_macro2::Span;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, Meta, Token};

use crate::options::{self, Errors, Given};
use crate::validate::{self, Millis};
use crate::values::{Guarantee, KeyKind, OnConflict, OnStoreError};

/// Every option the attribute accepts.
pub(crate) const OPTIONS: &[&str] = &[
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
    "redact",
];

/// What the attribute asked for, with defaults applied.
pub(crate) struct Args {
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
    pub transactional: bool,
    /// `(kind, name)` pairs, in order of preference; empty for the app's key header.
    pub key: Vec<(KeyKind, String)>,
    pub max_body: u64,
    pub krate: syn::Path,
    /// JSON pointers blanked in the stored copy of the response.
    pub redact: Vec<String>,
}

/// The options as written, each parsed on its own; `None` where the user left it out.
#[derive(Default)]
pub(crate) struct Written {
    pub ttl: Option<Given<Millis>>,
    pub client_error_ttl: Option<Given<Millis>>,
    pub guarantee: Option<Given<Guarantee>>,
    pub fingerprint: Option<Given<Vec<String>>>,
    pub replay_headers: Option<Given<Vec<String>>>,
    pub store: Option<Given<String>>,
    pub name: Option<Given<String>>,
    pub on_conflict: Option<Given<OnConflict>>,
    pub wait_timeout: Option<Given<Millis>>,
    pub respond_async_after: Option<Given<Millis>>,
    pub lease: Option<Given<Millis>>,
    pub required: Option<Given<bool>>,
    pub on_store_error: Option<Given<OnStoreError>>,
    pub transactional: Option<Span>,
    pub key: Option<Given<Vec<(KeyKind, String)>>>,
    pub max_body: Option<Given<u64>>,
    pub krate: Option<Given<syn::Path>>,
    pub redact: Option<Given<Vec<String>>>,
    /// Options written with a value their parser refused (already reported): rules that involve
    /// them are not checked, so one mistake is not reported again as another.
    pub invalid: Vec<String>,
}

impl Written {
    /// Whether none of `options` was written with a refused value.
    pub(crate) fn valid(&self, options: &[&str]) -> bool {
        !options.iter().any(|o| self.invalid.iter().any(|i| i == o))
    }
}

/// Parses `v` with `parse` into `slot`, which the caller has checked is empty.
fn put<T>(
    slot: &mut Option<Given<T>>,
    option: Span,
    v: &Expr,
    parse: fn(&Expr) -> Result<T, syn::Error>,
) -> Result<(), syn::Error> {
    let value = parse(v)?;
    *slot = Some(Given {
        value,
        option,
        at: v.span(),
    });
    Ok(())
}

impl Written {
    /// Parses one `name = value`. `Ok(false)` if `name` is not an option.
    fn set(&mut self, name: &str, option: Span, v: &Expr) -> Result<bool, syn::Error> {
        match name {
            "ttl" => put(&mut self.ttl, option, v, options::ttl)?,
            "client_error_ttl" => put(
                &mut self.client_error_ttl,
                option,
                v,
                options::client_error_ttl,
            )?,
            "lease" => put(&mut self.lease, option, v, options::lease)?,
            "wait_timeout" => put(&mut self.wait_timeout, option, v, options::wait_timeout)?,
            "respond_async_after" => put(
                &mut self.respond_async_after,
                option,
                v,
                options::respond_async_after,
            )?,
            "guarantee" => put(&mut self.guarantee, option, v, options::guarantee)?,
            "on_conflict" => put(&mut self.on_conflict, option, v, options::on_conflict)?,
            "on_store_error" => put(&mut self.on_store_error, option, v, options::on_store_error)?,
            "key" => put(&mut self.key, option, v, options::key)?,
            "required" => put(&mut self.required, option, v, options::required)?,
            "max_body" => put(&mut self.max_body, option, v, options::max_body)?,
            "name" => put(&mut self.name, option, v, options::name)?,
            "store" => put(&mut self.store, option, v, options::store)?,
            "fingerprint" => put(&mut self.fingerprint, option, v, options::fingerprint)?,
            "replay_headers" => put(&mut self.replay_headers, option, v, options::replay_headers)?,
            "crate" => put(&mut self.krate, option, v, options::krate)?,
            "redact" => put(&mut self.redact, option, v, options::redact)?,
            "transactional" => {
                return Err(syn::Error::new(
                    option,
                    "`transactional` is a flag: write `transactional`, without a value",
                ))
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Reads every option from the attribute's tokens: what parsed, and every error met. Only
    /// tokens that are not a list of options at all stop it.
    pub(crate) fn read(tokens: proc_macro2::TokenStream) -> Result<(Written, Errors), syn::Error> {
        let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(tokens)?;
        let mut errors = Errors::default();
        let mut seen: Vec<String> = Vec::new();
        let mut written = Written::default();
        for meta in &metas {
            let nv = match meta {
                Meta::NameValue(nv) => nv,
                // The one flag: `transactional`.
                Meta::Path(p) if p.is_ident("transactional") => {
                    if written.transactional.replace(p.span()).is_some() {
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
            if seen.contains(&name) {
                errors.push(span, format!("duplicate option `{name}`; give it once"));
                continue;
            }
            match written.set(&name, span, &nv.value) {
                Ok(true) => seen.push(name),
                Ok(false) => {
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
                }
                Err(e) => {
                    written.invalid.push(name.clone());
                    seen.push(name);
                    errors.add(e);
                }
            }
        }
        Ok((written, errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_option_has_a_parser() {
        let v: Expr = syn::parse_quote!(0);
        for name in OPTIONS {
            let mut w = Written::default();
            // A wrong value is an error from that option's parser, never "not an option".
            assert!(
                !matches!(w.set(name, Span::call_site(), &v), Ok(false)),
                "{name}"
            );
        }
        let mut w = Written::default();
        assert!(matches!(w.set("tll", Span::call_site(), &v), Ok(false)));
    }
}
