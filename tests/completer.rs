//! The completer against production conditions, in-process on the local PostgreSQL: it resumes
//! the operation it claimed under that operation's recorded identity (whatever the re-sent
//! request would derive), claims only its own app's operations, and keeps no credential once
//! the operation is over. Deploys and expiry: `completer_deploys.rs`.

mod common;

use actix_web::http::header::HeaderName;
use common::gate::{
    abandon, ada, app, completer, crashed, gate, scoped, stop, Crashed, Kind, KINDS,
};
use common::pg;
use common::rides::{
    die_after_first_step, drop_tables, kinds, post_as, setup, stored_requests, until_receipt,
    until_receipts, SECRET,
};
use idem::Idempotency;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// One operation abandoned after its first step and finished by the completer, its keys scoped
/// as `kind` says. With `rotate`, the client's token is replaced between the crash and the
/// completion (the old one revoked) and the app lets `Resumed` requests through. Asserts one
/// ride, one charge, one downstream key, no stored request left, and the client's replay —
/// except when the scope is the rotated credential itself (another principal: why the builder
/// advises scoping by account). `false` when there is no PostgreSQL (skipped).
async fn resume_case(test: &str, kind: Kind, key: &str, rotate: bool) -> bool {
    let Some((store, world, db, tables)) = setup(test).await else {
        return false;
    };
    let gate = gate();
    let idem = |renew| scoped(kind, &store, renew, "idem:", SECRET);
    abandon(idem(false), &world, &gate, key).await;
    let token = if rotate {
        let mut tokens = gate.tokens.lock().unwrap();
        tokens.insert("tok-1".into(), false);
        tokens.insert("tok-2".into(), true);
        gate.trust_resumed.store(true, Ordering::SeqCst);
        "Bearer tok-2"
    } else {
        "Bearer tok-1"
    };
    let c = completer(idem(true), &world, &gate, 5);
    until_receipt(&db, &tables[0], Duration::from_secs(5)).await;
    // Another completer pass, had it started a second operation, would show here.
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop(c).await;
    let case = format!("{kind:?}, rotated: {rotate}");
    assert_eq!(
        kinds(&db, &tables[0]).await,
        (1, 1),
        "{case}: rides, receipts"
    );
    assert_eq!(world.processor_calls.load(Ordering::SeqCst), 1, "{case}");
    assert_eq!(world.distinct_downstream_keys(), 1, "{case}");
    assert_eq!(stored_requests(&db, &tables[1]).await, 0, "{case}");
    if !(rotate && matches!(kind, Kind::Authorization)) {
        let live =
            actix_web::test::init_service(app(idem(true), world.clone(), gate.clone())).await;
        let (status, replayed, body) =
            post_as(&live, "/rides", key, &ada(token), json!({ "rider": "ada" })).await;
        assert_eq!((status, replayed), (201, true), "{case}: {body}");
        assert_eq!(kinds(&db, &tables[0]).await, (1, 1), "{case}");
        assert_eq!(world.processor_calls.load(Ordering::SeqCst), 1, "{case}");
    }
    drop_tables(&db, &tables).await;
    true
}

/// Under every kind of scope, the completer resumes the operation it claimed — the recorded
/// storage key and principal, not what the re-sent request (which carries only some headers)
/// would derive: one ride, one charge, one downstream key, and the client's retry replays.
#[actix_web::test]
async fn the_completer_resumes_under_the_recorded_identity() {
    for kind in KINDS {
        if !resume_case(
            "the_completer_resumes_under_the_recorded_identity",
            kind,
            "k1",
            false,
        )
        .await
        {
            return;
        }
    }
}

/// The client's credential is rotated between the crash and the completion (the old token
/// revoked): an app whose auth lets the completer's `Resumed` requests through gets the
/// operation finished once, under every kind of scope, and the client's retry with its new
/// token replays it.
#[actix_web::test]
async fn a_rotated_credential_does_not_stop_the_completer() {
    for kind in KINDS {
        if !resume_case(
            "a_rotated_credential_does_not_stop_the_completer",
            kind,
            "r1",
            true,
        )
        .await
        {
            return;
        }
    }
    // An app whose auth refuses the completer's old token: the completer cannot finish it, and
    // the client's retry with the new token resumes it — still one ride, one downstream key.
    let Some(Crashed {
        store,
        world,
        db,
        tables,
        gate,
    }) = crashed("a_rotated_credential_does_not_stop_the_completer", "r2").await
    else {
        return;
    };
    gate.tokens.lock().unwrap().insert("tok-1".into(), false);
    gate.tokens.lock().unwrap().insert("tok-2".into(), true);
    let c = completer(
        scoped(Kind::Header, &store, true, "idem:", SECRET),
        &world,
        &gate,
        2,
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stop(c).await;
    assert_eq!(
        kinds(&db, &tables[0]).await,
        (1, 0),
        "refused by the app's auth"
    );
    // The completer gave up: the request it kept is blanked, and a client's retry that dies
    // again does not put its credentials back into a row no completer will use.
    let request = format!(
        "SELECT failed_at IS NOT NULL, length(request) FROM {}_requests",
        tables[1]
    );
    let row = db.query_one(&request, &[]).await.unwrap();
    assert_eq!((row.get::<_, bool>(0), row.get::<_, i32>(1)), (true, 0));
    let dying = actix_web::test::init_service(app(
        scoped(Kind::Header, &store, false, "idem:", SECRET),
        world.clone(),
        gate.clone(),
    ))
    .await;
    let headers = ada("Bearer tok-2");
    let retry = post_as(&dying, "/rides", "r2", &headers, json!({"rider": "ada"}));
    die_after_first_step(&world, retry).await;
    let row = db.query_one(&request, &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(1), 0, "still blank");
    // Its lease (1 s) lapses; the client's next retry finishes the operation.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let live = actix_web::test::init_service(app(
        scoped(Kind::Header, &store, true, "idem:", SECRET),
        world.clone(),
        gate.clone(),
    ))
    .await;
    let (status, replayed, body) = post_as(
        &live,
        "/rides",
        "r2",
        &ada("Bearer tok-2"),
        json!({"rider": "ada"}),
    )
    .await;
    assert_eq!((status, replayed), (201, false), "{body}");
    assert_eq!(kinds(&db, &tables[0]).await, (1, 1));
    assert_eq!(world.processor_calls.load(Ordering::SeqCst), 1);
    assert_eq!(world.distinct_downstream_keys(), 1);
    drop_tables(&db, &tables).await;
}

/// Two apps share one table under their own `key_prefix` (and secrets): each completer claims
/// only its own app's operations. The other app's abandoned operation is neither re-sent, nor
/// charged its attempts, nor marked failed; its own completer finishes it.
#[actix_web::test]
async fn completers_of_two_apps_on_one_table_leave_each_other_alone() {
    let Some((store, world, db, tables)) =
        setup("completers_of_two_apps_on_one_table_leave_each_other_alone").await
    else {
        return;
    };
    let gate = gate();
    let other = "another-apps-secret-0123456789abcdef";
    abandon(
        scoped(Kind::Header, &store, false, "a:", SECRET),
        &world,
        &gate,
        "k5",
    )
    .await;
    // App b's completer, eager to give up: one attempt.
    let b = completer(
        scoped(Kind::Header, &store, true, "b:", other),
        &world,
        &gate,
        1,
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stop(b).await;
    let row = db
        .query_one(
            &format!(
                "SELECT attempts, failed_at IS NULL FROM {}_requests",
                tables[1]
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i32>(0), row.get::<_, bool>(1)),
        (0, true),
        "app b's completer left app a's operation alone"
    );
    assert_eq!(kinds(&db, &tables[0]).await, (1, 0));
    let _a = completer(
        scoped(Kind::Header, &store, true, "a:", SECRET),
        &world,
        &gate,
        1,
    );
    until_receipt(&db, &tables[0], Duration::from_secs(5)).await;
    assert_eq!(kinds(&db, &tables[0]).await, (1, 1));
    assert_eq!(world.processor_calls.load(Ordering::SeqCst), 1);
    drop_tables(&db, &tables).await;
}

/// `pg_dump --data-only` of the test database contains `marker`. Tests running beside this one
/// drop their tables: a dump that met a table dropped under it is taken again.
fn dump_contains(marker: &str) -> bool {
    for _ in 0..10 {
        let out = std::process::Command::new("pg_dump")
            .args(["--data-only", "--dbname", &pg::config()])
            .output()
            .expect("run pg_dump");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).contains(marker);
        }
        assert!(stderr.contains("does not exist"), "pg_dump: {stderr}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!("pg_dump kept meeting tables dropped under it");
}

/// A marker no other test writes.
fn marker(what: &str) -> String {
    format!("marker-{what}-{}-{:x}", std::process::id(), rand_u64())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(7);
    h.finish()
}

/// Credentials a stored request held are gone once its operation is over: finished by the
/// client, or by the completer after a crash. Without an app secret `Steps` is refused with a
/// clear error and nothing is stored.
#[actix_web::test]
async fn no_credential_outlives_its_operation() {
    let Some((store, world, db, tables)) = setup("no_credential_outlives_its_operation").await
    else {
        return;
    };
    let gate = gate();
    let token = marker("bearer");
    let cookie = format!("session={}", marker("cookie"));
    gate.tokens.lock().unwrap().insert(token.clone(), true);
    let bearer = format!("Bearer {token}");
    let headers = [
        ("authorization", bearer.as_str()),
        ("cookie", cookie.as_str()),
        ("x-account-id", "acct_ada"),
    ];
    let idem = || scoped(Kind::Header, &store, true, "idem:", SECRET);
    let live = actix_web::test::init_service(app(idem(), world.clone(), gate.clone())).await;
    let (status, _, body) = post_as(&live, "/rides", "m1", &headers, json!({"rider": "ada"})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        stored_requests(&db, &tables[1]).await,
        0,
        "finished by its client"
    );
    // Crashed after its first step, finished by the completer.
    let dying = actix_web::test::init_service(app(
        scoped(Kind::Header, &store, false, "idem:", SECRET),
        world.clone(),
        gate.clone(),
    ))
    .await;
    let request = post_as(&dying, "/rides", "m2", &headers, json!({"rider": "ada"}));
    die_after_first_step(&world, request).await;
    assert_eq!(
        stored_requests(&db, &tables[1]).await,
        1,
        "kept while unfinished"
    );
    let sealed = db
        .query_one(&format!("SELECT request FROM {}_requests", tables[1]), &[])
        .await
        .unwrap()
        .get::<_, Vec<u8>>(0);
    assert!(
        !String::from_utf8_lossy(&sealed).contains("marker-"),
        "sealed at rest"
    );
    let c = completer(idem(), &world, &gate, 5);
    until_receipts(&db, &tables[0], 2, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop(c).await;
    assert_eq!(kinds(&db, &tables[0]).await, (2, 2));
    assert_eq!(
        stored_requests(&db, &tables[1]).await,
        0,
        "finished by the completer"
    );
    assert!(!dump_contains(&token), "no bearer token in the database");
    assert!(!dump_contains("marker-cookie"), "no cookie in the database");

    // Without an app secret: refused at the first request, nothing stored.
    let plain = Idempotency::builder()
        .scope_by_header(HeaderName::from_static("x-account-id"))
        .store_timeout(Duration::from_millis(300))
        .named_store("pg", store.clone())
        .build();
    let refusing = actix_web::test::init_service(app(plain, world.clone(), gate.clone())).await;
    let (status, _, body) =
        post_as(&refusing, "/rides", "m3", &headers, json!({"rider": "ada"})).await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("secret")),
        "{body}"
    );
    assert_eq!(stored_requests(&db, &tables[1]).await, 0);
    assert_eq!(kinds(&db, &tables[0]).await, (2, 2), "nothing ran");
    assert!(!dump_contains(&token));
    drop_tables(&db, &tables).await;
}
