//! The demo's OpenAPI document (`GET /openapi.json`) and Swagger UI (`GET /docs/`).
//!
//! The handlers carry `#[utoipa::path]` for what they do themselves; `IdempotencyDocs` adds what
//! `#[idempotent]` does: the key (header or form field), `Idempotent-Replayed`, and the
//! 400/409/413/422/429/503 problem answers (202 for refunds). The UI's files are compiled into
//! the binary (utoipa-swagger-ui's `vendored` feature): the page loads nothing from elsewhere.

// `idem::openapi` with the `utoipa` feature; the examples of a package cannot turn its own
// features on.
use idem_runtime::openapi::IdempotencyDocs;
use utoipa::OpenApi;
use utoipa_swagger_ui::{Config, SwaggerUi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "idem payments demo",
        description = "Every POST runs once per `Idempotency-Key`; retries get the first response."
    ),
    paths(
        super::create_payment,
        super::create_transfer,
        super::create_refund,
        super::get_payment,
        super::place_order
    ),
    modifiers(&IdempotencyDocs)
)]
struct ApiDoc;

/// The document, as `/openapi.json` serves it.
pub(crate) fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// `/openapi.json` and the Swagger UI under `/docs/`.
pub(crate) fn routes() -> SwaggerUi {
    let config = Config::default()
        // Operations open, so their parameters and answers show without a click.
        .doc_expansion("full")
        .show_extensions(true)
        // Swagger UI's default asks swagger.io to validate the document: nothing leaves.
        .validator_url("none");
    SwaggerUi::new("/docs/{_:.*}")
        .url("/openapi.json", document())
        .config(config)
}
