//! What one idempotent policy adds to one OpenAPI operation, and the shared components.

use std::time::Duration;

use serde_json::{json, Value};
use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::path::{Operation, Parameter, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{
    Components, Content, Header, OpenApi, Ref, RefOr, Required, Response, Schema,
};

use crate::key::MAX_KEY_LEN;
use crate::key_source::KeySource;
use crate::policy::{Guarantee, OnConflict, OnStoreError, Policy};
use crate::problem::ProblemKind;

/// The schema component every problem response refers to.
const PROBLEM_SCHEMA: &str = "IdempotencyProblem";
const PROBLEM_JSON: &str = "application/problem+json";

/// Whether two policies document alike (everything but the handler's module path).
pub(super) fn same_docs(a: &Policy, b: &Policy) -> bool {
    Policy { endpoint: "", ..*a } == Policy { endpoint: "", ..*b }
}

/// Adds the key parameter(s), the replay header, the problem responses and `x-idempotency` to
/// `op`.
pub(super) fn document(op: &mut Operation, policy: &Policy, header_name: &'static str) {
    let default_source = [KeySource::Header(header_name)];
    let sources = if policy.key.is_empty() {
        &default_source[..]
    } else {
        policy.key
    };
    for p in key_parameters(policy, sources) {
        add_parameter(op, p);
    }
    if policy.on_conflict == OnConflict::Webhook {
        let mut callback = Parameter::new("Idempotency-Callback");
        callback.parameter_in = ParameterIn::Header;
        callback.required = Required::False;
        callback.description = Some(
            "Where the first request's response is POSTed (signed) when this request is a \
             duplicate of one still running; required on such a duplicate."
                .into(),
        );
        callback.schema = Some(string_schema(None));
        add_parameter(op, callback);
    }

    for (code, response) in op.responses.responses.iter_mut() {
        if let (true, RefOr::T(r)) = (code.starts_with('2'), response) {
            r.headers
                .entry("Idempotent-Replayed".into())
                .or_insert_with(|| RefOr::T(replayed_header()));
        }
    }
    for (status, kinds, retry_after) in problems(policy) {
        add_problem(op, status, &kinds, retry_after);
    }
    if matches!(
        policy.on_conflict,
        OnConflict::Accepted | OnConflict::Webhook
    ) {
        op.responses
            .responses
            .entry("202".into())
            .or_insert_with(|| RefOr::T(accepted(policy.on_conflict)));
    }

    op.extensions
        .get_or_insert_with(Extensions::default)
        .insert("x-idempotency".into(), extension(policy, sources));
}

/// The `IdempotencyProblem` schema, once per document.
pub(super) fn add_components(doc: &mut OpenApi) {
    let components = doc.components.get_or_insert_with(Components::new);
    components
        .schemas
        .entry(PROBLEM_SCHEMA.into())
        .or_insert_with(|| RefOr::T(problem_schema()));
}

fn key_parameters(policy: &Policy, sources: &[KeySource]) -> Vec<Parameter> {
    // Several sources: any one of them carries the key, so none alone is required.
    let required = policy.required && sources.len() == 1;
    sources
        .iter()
        .filter_map(|source| {
            let (name, place) = match *source {
                KeySource::Header(n) => (n, ParameterIn::Header),
                KeySource::Query(n) => (n, ParameterIn::Query),
                KeySource::Cookie(n) => (n, ParameterIn::Cookie),
                // A body field is not a parameter; `x-idempotency` names it.
                KeySource::Form(_) => return None,
            };
            let mut p = Parameter::new(name);
            p.parameter_in = place;
            p.required = if required {
                Required::True
            } else {
                Required::False
            };
            p.description = Some(key_description(policy));
            p.schema = Some(string_schema(Some(MAX_KEY_LEN)));
            Some(p)
        })
        .collect()
}

fn key_description(policy: &Policy) -> String {
    let mut d = format!(
        "Idempotency key: 1-{MAX_KEY_LEN} printable ASCII characters, one per operation (a \
         UUID). Every retry of the operation sends the same key and gets the first response \
         back for {}; the handler runs once.",
        human(policy.ttl)
    );
    if !policy.required {
        d.push_str(" Optional: without it the request runs unprotected.");
    }
    d
}

/// Adds `p` unless the operation already documents a parameter of that name and place.
fn add_parameter(op: &mut Operation, p: Parameter) {
    let params = op.parameters.get_or_insert_with(Vec::new);
    let present = params.iter().any(|q| match q {
        RefOr::T(q) => q.name.eq_ignore_ascii_case(&p.name) && q.parameter_in == p.parameter_in,
        RefOr::Ref(_) => false,
    });
    if !present {
        params.push(RefOr::T(p));
    }
}

/// The problem answers of one endpoint: status, the kinds it covers, whether `Retry-After`
/// comes with it.
fn problems(policy: &Policy) -> Vec<(u16, Vec<ProblemKind>, bool)> {
    let mut bad_request = vec![ProblemKind::KeyInvalid, ProblemKind::BodyUnreadable];
    if policy.required {
        bad_request.insert(0, ProblemKind::KeyMissing);
    }
    if policy.on_conflict == OnConflict::Webhook {
        bad_request.push(ProblemKind::CallbackInvalid);
    }
    let mut unavailable = vec![ProblemKind::ShuttingDown];
    if policy.on_store_error == OnStoreError::Reject {
        unavailable.insert(0, ProblemKind::StoreUnavailable);
    }
    vec![
        (400, bad_request, false),
        (409, vec![ProblemKind::InProgress], true),
        (413, vec![ProblemKind::BodyTooLarge], false),
        (422, vec![ProblemKind::KeyReused], false),
        (429, vec![ProblemKind::TooManyKeys], true),
        (503, unavailable, true),
    ]
}

fn add_problem(op: &mut Operation, status: u16, kinds: &[ProblemKind], retry_after: bool) {
    let content = || {
        let mut c = Content::new(Some(Ref::from_schema_name(PROBLEM_SCHEMA)));
        if let Some(first) = kinds.first() {
            c.example = Some(json!({
                "type": first.type_uri(),
                "title": first.title(),
                "status": status,
                "detail": "…",
            }));
        }
        c
    };
    let types: Vec<String> = kinds
        .iter()
        .map(|k| format!("`{}` ({})", k.type_uri(), k.title()))
        .collect();
    let description = format!("Idempotency: {}.", types.join("; "));
    let response = op
        .responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| RefOr::T(Response::new(description)));
    let RefOr::T(response) = response else {
        return; // The handler's own reference: left as written.
    };
    if !response.content.contains_key(PROBLEM_JSON) {
        response
            .content
            .insert(PROBLEM_JSON.into(), RefOr::T(content()));
    }
    if retry_after {
        response
            .headers
            .entry("Retry-After".into())
            .or_insert_with(|| {
                let mut h = Header::new(integer_schema());
                h.description = Some("Seconds to wait before retrying with the same key.".into());
                RefOr::T(h)
            });
    }
}

fn accepted(on_conflict: OnConflict) -> Response {
    let mut r = Response::new(match on_conflict {
        OnConflict::Webhook => {
            "Idempotency: a duplicate of a request still running; the first request's \
             response will be POSTed, signed, to this request's `Idempotency-Callback`."
        }
        _ => {
            "Idempotency: a request with this key is running (this one, when it runs longer \
             than the endpoint allows, or an earlier one); poll `Location` for its result."
        }
    });
    if on_conflict == OnConflict::Accepted {
        let mut location = Header::new(string_schema(None));
        location.description = Some("The status resource of the operation.".into());
        r.headers.insert("Location".into(), RefOr::T(location));
        let mut retry = Header::new(integer_schema());
        retry.description = Some("Seconds before polling `Location`.".into());
        r.headers.insert("Retry-After".into(), RefOr::T(retry));
    }
    r
}

fn replayed_header() -> Header {
    let schema = ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["true"]))
        .build();
    let mut h = Header::new(Schema::Object(schema));
    h.description = Some(
        "`true` when this response is the replay of the first response to this key, not a new \
         run of the operation."
            .into(),
    );
    h
}

fn problem_schema() -> Schema {
    let string = |d: &str| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(d))
            .build()
    };
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "RFC 9457 problem details: every answer idem gives instead of the handler's.",
            ))
            .property(
                "type",
                string("A stable URI for the case, `urn:idem:problem:…`."),
            )
            .property("title", string("A short, fixed summary of the case."))
            .property(
                "status",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .description(Some("The HTTP status code.")),
            )
            .property("detail", string("What happened to this request."))
            .required("type")
            .required("title")
            .required("status")
            .build(),
    )
}

fn string_schema(max_length: Option<usize>) -> RefOr<Schema> {
    let mut b = ObjectBuilder::new().schema_type(Type::String);
    if let Some(max) = max_length {
        b = b.min_length(Some(1)).max_length(Some(max));
    }
    RefOr::T(Schema::Object(b.build()))
}

fn integer_schema() -> RefOr<Schema> {
    RefOr::T(Schema::Object(
        ObjectBuilder::new().schema_type(Type::Integer).build(),
    ))
}

fn extension(policy: &Policy, sources: &[KeySource]) -> Value {
    let key: Vec<Value> = sources
        .iter()
        .map(|s| {
            let (place, name) = match *s {
                KeySource::Header(n) => ("header", n),
                KeySource::Query(n) => ("query", n),
                KeySource::Form(n) => ("form", n),
                KeySource::Cookie(n) => ("cookie", n),
            };
            json!({ "in": place, "name": name })
        })
        .collect();
    let mut x = json!({
        "ttl": human(policy.ttl),
        "ttl_seconds": policy.ttl.as_secs(),
        "guarantee": match policy.guarantee {
            Guarantee::Strict => "strict",
            Guarantee::Result => "result",
            Guarantee::Semantic => "semantic",
        },
        "on_conflict": match policy.on_conflict {
            OnConflict::RetryAfter => "retry_after",
            OnConflict::Wait => "wait",
            OnConflict::Accepted => "accepted",
            OnConflict::Webhook => "webhook",
        },
        "key_required": policy.required,
        "key": key,
        "max_body": policy.max_body,
    });
    if let Some(name) = policy.name {
        x["name"] = json!(name);
    }
    if policy.guarantee == Guarantee::Semantic {
        x["fingerprint"] = json!(policy.fingerprint);
    }
    if let Some(ttl) = policy.client_error_ttl {
        x["client_error_ttl"] = json!(human(ttl));
    }
    x
}

/// A duration as the attribute spells it: the largest unit up to hours that divides it (`24h`,
/// `90s`).
fn human(d: Duration) -> String {
    let ms = d.as_millis();
    const UNITS: [(u128, &str); 3] = [(3_600_000, "h"), (60_000, "m"), (1_000, "s")];
    for (size, unit) in UNITS {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_the_attribute_writes_them() {
        assert_eq!(human(Duration::from_secs(86_400)), "24h");
        assert_eq!(human(Duration::from_secs(7_200)), "2h");
        assert_eq!(human(Duration::from_secs(90)), "90s");
        assert_eq!(human(Duration::from_millis(1_500)), "1500ms");
        assert_eq!(human(Duration::ZERO), "0ms");
    }
}
