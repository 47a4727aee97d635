//! The store conformance suite against PostgreSQL (the local server: 127.0.0.1:5432, trust auth,
//! database `test`; `IDEM_PG` overrides). Without a reachable server the cases say so and skip;
//! with `CI` set that is a failure.

mod common;

async fn store() -> Option<((), idem_runtime::PostgresStore)> {
    common::pg::store("PostgreSQL conformance", "idem_conformance")
        .await
        .map(|s| ((), s))
}

idem_runtime::store_conformance_tests!(guarded store());
