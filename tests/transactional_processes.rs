//! Transactional mode across processes: the ledger app (`examples/ledger_app.rs`) killed between
//! its ledger write and its response, three instances under 300 duplicates, and the store over
//! TLS. The local PostgreSQL; skipped with one line without it, outside CI.

mod common;

use actix_web::{error, post, HttpResponse};
use common::demo::{free_port, start_example, Demo};
use common::pg;
use idem::idempotent;
use idem_runtime::{IdemTx, PostgresStore};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// `examples/ledger_app` instances on one ledger and one records table.
struct Apps {
    db: idem_runtime::tokio_postgres::Client,
    ledger: String,
    records: String,
}

impl Apps {
    async fn new(test: &str) -> Option<Apps> {
        let records = pg::table("idem_app");
        // Creates the records table, and tells whether PostgreSQL is there at all.
        let _: PostgresStore = pg::store(test, &records).await?;
        Some(Apps {
            db: pg::client().await,
            ledger: pg::table("ledger_app"),
            records,
        })
    }

    async fn start(&self, port: u16, stall_ms: u64) -> Demo {
        let env = [
            ("IDEM_PG", pg::config()),
            ("LEDGER_TABLE", self.ledger.clone()),
            ("IDEM_TABLE", self.records.clone()),
            ("STALL_AFTER_WRITE_MS", stall_ms.to_string()),
        ];
        start_example("ledger_app", port, &env).await
    }

    async fn rows(&self) -> i64 {
        pg::count(&self.db, &self.ledger).await
    }

    async fn runs(&self) -> i64 {
        pg::count(&self.db, &format!("{}_runs", self.ledger)).await
    }

    async fn drop_tables(&self) {
        let runs = format!("{}_runs", self.ledger);
        pg::drop_tables(&self.db, &[&self.ledger, &runs, &self.records]).await;
    }
}

fn charge(c: &reqwest::Client, port: u16, key: &str) -> reqwest::RequestBuilder {
    c.post(format!("http://127.0.0.1:{port}/charges"))
        .header("Idempotency-Key", key)
        .json(&json!({"account": "acct_1", "amount": 500}))
}

/// `kill -9` after the ledger write, before the commit and the response. Nothing of that
/// attempt survives; the restarted app waits out the lease (2 s), runs the charge once, and
/// replays it from then on. Two executions, one ledger row.
#[actix_web::test]
async fn killed_between_the_ledger_write_and_the_response_leaves_one_row() {
    let test = "killed_between_the_ledger_write_and_the_response_leaves_one_row";
    let Some(apps) = Apps::new(test).await else {
        return;
    };
    let port = free_port();
    let mut app = apps.start(port, 30_000).await;
    let c = common::client();
    let doomed = actix_web::rt::spawn(charge(&c, port, "crash").send());
    let started = Instant::now();
    while apps.runs().await < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the handler never ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.kill();
    assert!(
        doomed.await.unwrap().is_err(),
        "the killed request got no answer"
    );
    assert_eq!(
        apps.rows().await,
        0,
        "the uncommitted ledger row died with the process"
    );

    let _app = apps.start(port, 0).await;
    let retry = charge(&c, port, "crash").send().await.unwrap();
    assert_eq!(retry.status(), 201);
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(
        retry["attempt"], 2,
        "the retry took over the crashed attempt"
    );
    let replay = charge(&c, port, "crash").send().await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.json::<Value>().await.unwrap(), retry);
    assert_eq!((apps.rows().await, apps.runs().await), (1, 2));
    apps.drop_tables().await;
}

/// Three app processes on one PostgreSQL, 300 concurrent duplicates spread over them: one
/// execution, one row, and the same answer for all 300.
#[actix_web::test]
async fn three_instances_and_300_duplicates_make_one_row() {
    let test = "three_instances_and_300_duplicates_make_one_row";
    let Some(apps) = Apps::new(test).await else {
        return;
    };
    let ports = [free_port(), free_port(), free_port()];
    let mut running = Vec::new();
    for port in ports {
        // Each execution holds its transaction open for 300 ms, so the duplicates overlap it.
        running.push(apps.start(port, 300).await);
    }
    let c = common::client();
    let sends: Vec<_> = (0..300)
        .map(|i| actix_web::rt::spawn(charge(&c, ports[i % 3], "dup").send()))
        .collect();
    let mut bodies = Vec::new();
    for s in sends {
        let r = s.await.unwrap().expect("an answer");
        assert_eq!(r.status(), 201);
        bodies.push(r.json::<Value>().await.unwrap());
    }
    assert!(bodies.iter().all(|b| *b == bodies[0]), "one answer for all");
    assert_eq!((apps.rows().await, apps.runs().await), (1, 1));
    drop(running);
    apps.drop_tables().await;
}

/// Test-only: accepts any server certificate (the local PostgreSQL serves Debian's self-signed
/// "snakeoil" one). What this test checks is that the store's connections are encrypted; how a
/// certificate is verified is the connector's business.
#[derive(Debug)]
struct AcceptAnyCert(rustls::crypto::CryptoProvider);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[post("/tls")]
#[idempotent(store = "pg", transactional)]
async fn tls_in_use(tx: IdemTx) -> actix_web::Result<HttpResponse> {
    let db = tx.client().await?;
    let ssl: bool = db
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(error::ErrorInternalServerError)?
        .get(0);
    Ok(HttpResponse::Created().json(json!({ "ssl": ssl })))
}

/// `PostgresStore::builder(…).tls(connector)`: with `sslmode=require`, every connection of the
/// store (the handler's transaction included) is encrypted.
#[actix_web::test]
async fn the_store_connects_over_tls() {
    let Some(_probe) = pg::store("the_store_connects_over_tls", "idem_tls_probe").await else {
        return;
    };
    let provider = rustls::crypto::ring::default_provider();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone().into())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    let records = pg::table("idem_tls");
    let store = PostgresStore::builder(&format!("{} sslmode=require", pg::config()))
        .table(&records)
        .max_connections(2)
        .tls(tokio_postgres_rustls::MakeRustlsConnect::new(config))
        .connect()
        .await
        .expect("a TLS connection (the local PostgreSQL has ssl = on)");
    let idem = common::builder().named_store("pg", store).build();
    let (addr, handle) = common::serve(1, move |cfg| {
        cfg.app_data(idem.clone()).service(tls_in_use);
    });
    let r = common::client()
        .post(format!("http://{addr}/tls"))
        .header("Idempotency-Key", "tls-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap()["ssl"], true);
    handle.stop(false).await;
    pg::drop_tables(&pg::client().await, &[&records, "idem_tls_probe"]).await;
}
