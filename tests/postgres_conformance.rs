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

/// Configuration mistakes are reported as such, not as an unavailable store.
#[test]
fn a_bad_table_name_or_config_is_a_configuration_error() {
    idem_runtime::conformance::block_on(async {
        for (config, table) in [
            (common::pg::config(), "no spaces allowed"),
            ("host=127.0.0.1 port=notaport".to_owned(), "idem_records"),
        ] {
            match idem_runtime::PostgresStore::connect_table(&config, table).await {
                Err(idem::StoreError::Config(why)) => assert!(!why.to_string().is_empty()),
                other => panic!("{table}: expected a configuration error, got {other:?}"),
            }
        }
    });
}
