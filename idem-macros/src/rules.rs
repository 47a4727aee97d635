//! The build step: defaults for what was left out, and the rules that relate one option to
//! another (each option's own value was checked by its parser in [`crate::options`]).

use proc_macro2::Span;

use crate::args::{Args, Written};
use crate::options::{Errors, Given};
use crate::validate::{self, Millis};
use crate::values::{Guarantee, OnConflict, OnStoreError};

/// A day, the default `ttl`.
const DEFAULT_TTL: Millis = 24 * 3600 * 1000;
/// The default `lease`, lowered to half a shorter `ttl`.
const DEFAULT_LEASE: Millis = 30 * 1000;
/// The default `wait_timeout`.
const DEFAULT_WAIT: Millis = 10 * 1000;
/// The default `max_body`: 2 MiB.
const DEFAULT_MAX_BODY: u64 = 2 << 20;

fn value<T>(given: Option<Given<T>>) -> Option<T> {
    given.map(|g| g.value)
}

impl Args {
    /// Parses the attribute's tokens: each option, then the rules between them (checked on what
    /// did parse, so one run reports every mistake).
    pub(crate) fn parse(tokens: proc_macro2::TokenStream) -> Result<Args, syn::Error> {
        let (written, errors) = Written::read(tokens)?;
        build(written, errors)
    }
}

/// `Args` from what was written, adding every broken rule to `errors`.
fn build(w: Written, mut errors: Errors) -> Result<Args, syn::Error> {
    let guarantee = w.guarantee.as_ref().map_or(Guarantee::Strict, |g| g.value);
    let on_conflict = w
        .on_conflict
        .as_ref()
        .map_or(OnConflict::RetryAfter, |g| g.value);
    let on_store_error = w
        .on_store_error
        .as_ref()
        .map_or(OnStoreError::Reject, |g| g.value);

    match (guarantee, &w.fingerprint) {
        _ if !w.valid(&["guarantee", "fingerprint"]) => {}
        (Guarantee::Semantic, None) => errors.push(
            w.guarantee.as_ref().map_or_else(Span::call_site, |g| g.at),
            "`guarantee = \"semantic\"` needs the fields that decide \"same request\": \
             add `fingerprint = [\"/amount\", \"/currency\"]` (JSON pointers)",
        ),
        (Guarantee::Semantic, Some(_)) | (_, None) => {}
        (_, Some(f)) => errors.push(
            f.option,
            "`fingerprint` only applies with `guarantee = \"semantic\"`; set that or remove \
             `fingerprint`",
        ),
    }
    for (given, option, policy) in [
        (w.wait_timeout.as_ref(), "wait_timeout", OnConflict::Wait),
        (
            w.respond_async_after.as_ref(),
            "respond_async_after",
            OnConflict::Accepted,
        ),
    ] {
        if let Some(g) = given.filter(|_| w.valid(&["on_conflict"])) {
            if on_conflict != policy {
                errors.push(
                    g.option,
                    format!(
                        "`{option}` only applies with `on_conflict = \"{}\"`; set that or \
                         remove `{option}`",
                        policy.name()
                    ),
                );
            }
        }
    }
    if let Some(r) = &w.redact {
        if guarantee == Guarantee::Strict && w.valid(&["guarantee"]) {
            errors.push(
                r.option,
                "`redact` changes what replays return, which `guarantee = \"strict\"` (the \
                 default) forbids: it promises a byte-exact replay. Set `guarantee = \"result\"` \
                 or `\"semantic\"`, or remove `redact`",
            );
        }
    }
    if let (Some(_), Some(g)) = (w.transactional, &w.on_store_error) {
        if g.value == OnStoreError::Proceed {
            errors.push(
                g.at,
                "`transactional` cannot run without its store: remove `on_store_error = \
                 \"proceed\"` (a transactional handler needs the PostgreSQL store to open its \
                 transaction)",
            );
        }
    }

    let ttl = w.ttl.as_ref().map_or(DEFAULT_TTL, |g| g.value);
    let ttl_known = w.valid(&["ttl"]);
    let client_error_ttl = match w.client_error_ttl {
        Some(g) if ttl_known && g.value > ttl => {
            errors.push(
                g.at,
                format!(
                    "`client_error_ttl` ({}) must not be longer than `ttl` ({}): it is the \
                     shorter life of cached 4xx answers",
                    validate::show(g.value),
                    validate::show(ttl)
                ),
            );
            None
        }
        other => value(other),
    };
    let lease = match w.lease {
        Some(g) if ttl_known && g.value >= ttl => {
            errors.push(
                g.at,
                format!(
                    "`lease` ({}) must be shorter than `ttl` ({})",
                    validate::show(g.value),
                    validate::show(ttl)
                ),
            );
            DEFAULT_LEASE
        }
        Some(g) => g.value,
        // The default lease must stay below a short ttl.
        None => DEFAULT_LEASE.min(ttl / 2),
    };
    errors.finish()?;
    Ok(Args {
        ttl,
        client_error_ttl,
        guarantee,
        fingerprint: value(w.fingerprint).unwrap_or_default(),
        replay_headers: value(w.replay_headers).unwrap_or_default(),
        store: value(w.store),
        name: value(w.name),
        on_conflict,
        wait_timeout: value(w.wait_timeout).unwrap_or(DEFAULT_WAIT),
        respond_async_after: value(w.respond_async_after),
        lease,
        required: value(w.required).unwrap_or(true),
        on_store_error,
        transactional: w.transactional.is_some(),
        key: value(w.key).unwrap_or_default(),
        max_body: value(w.max_body).unwrap_or(DEFAULT_MAX_BODY),
        redact: value(w.redact).unwrap_or_default(),
        krate: w
            .krate
            .map_or_else(|| syn::parse_quote!(::idem), |g| g.value),
    })
}
