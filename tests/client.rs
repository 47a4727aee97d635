//! `idem::client` (feature `client`, reached here through `idem_runtime`) against a real app
//! behind a flaky loopback proxy: dropped connections and a 503 are retried with one key, and the
//! handler runs once.

mod common;

use common::{start, Charge};
use idem_runtime::client::{Client, ClientError, RetryPolicy};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does with the n-th connection.
#[derive(Clone, Copy)]
enum Fault {
    Drop,
    Unavailable,
    Forward,
}

/// A loopback proxy that applies `plan(n)` to its n-th connection and records the
/// `Idempotency-Key` of every request it saw. Runs until the test ends.
async fn flaky_proxy(
    target: SocketAddr,
    plan: impl Fn(usize) -> Fault + Send + Sync + 'static,
) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let keys: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = keys.clone();
    let count = Arc::new(AtomicUsize::new(0));
    let plan = Arc::new(plan);
    actix_web::rt::spawn(async move {
        // Bounded: a test never needs more than this many connections.
        for _ in 0..64 {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let n = count.fetch_add(1, Ordering::SeqCst);
            let (seen, plan) = (seen.clone(), plan.clone());
            actix_web::rt::spawn(async move {
                let Some(head) = read_head(&mut conn).await else {
                    return;
                };
                if let Some(k) = key_of(&head) {
                    seen.lock().unwrap().push(k);
                }
                match plan(n) {
                    Fault::Drop => {
                        let _ = conn.set_zero_linger();
                    }
                    Fault::Unavailable => {
                        let _ = conn
                            .write_all(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                            .await;
                    }
                    Fault::Forward => {
                        let Ok(mut up) = TcpStream::connect(target).await else {
                            return;
                        };
                        if up.write_all(&head).await.is_ok() {
                            let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
                        }
                    }
                }
            });
        }
    });
    (addr, keys)
}

/// Reads up to the end of the request head (and whatever body bytes came with it).
async fn read_head(conn: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(buf)
}

fn key_of(head: &[u8]) -> Option<String> {
    String::from_utf8_lossy(head).lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("idempotency-key")
            .then(|| value.trim().to_owned())
    })
}

fn client(policy: RetryPolicy) -> Client {
    Client::with_policy(policy).with_http(common::client())
}

#[actix_web::test]
async fn dropped_connections_and_a_503_are_retried_with_one_key() {
    let app = start(Some(common::builder().build()));
    let (proxy, keys) = flaky_proxy(app.addr, |n| match n {
        0..=2 => Fault::Drop,
        3 => Fault::Unavailable,
        _ => Fault::Forward,
    })
    .await;
    let c = client(RetryPolicy {
        base_delay: Duration::from_millis(20),
        ..RetryPolicy::default()
    });
    let op = c.operation();
    let started = Instant::now();
    let resp = op
        .post_json(
            &format!("http://{proxy}/charge"),
            &Charge {
                amount: 12,
                delay_ms: 0,
            },
        )
        .await
        .expect("the operation succeeds");
    assert_eq!(resp.status(), 201);
    assert_eq!(
        op.attempts(),
        5,
        "3 dropped + one 503 + the one that got through"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was honoured"
    );
    let keys = keys.lock().unwrap().clone();
    assert_eq!(keys.len(), 5);
    assert!(
        keys.iter().all(|k| k == op.key()),
        "one key on every attempt: {keys:?}"
    );
    assert!(uuid_v4_shape(op.key()), "{}", op.key());
    assert_eq!(app.count(|c| &c.charge), 1, "exactly one execution");

    // The same operation again: the replay, not a second charge.
    let again = op
        .post_json(
            &format!("http://{proxy}/charge"),
            &Charge {
                amount: 12,
                delay_ms: 0,
            },
        )
        .await
        .unwrap();
    assert_eq!(again.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(app.count(|c| &c.charge), 1);
}

fn uuid_v4_shape(k: &str) -> bool {
    let b = k.as_bytes();
    k.len() == 36 && b[14] == b'4' && [8, 13, 18, 23].iter().all(|i| b[*i] == b'-')
}

#[actix_web::test]
async fn conflicts_are_retried_until_the_replay() {
    let app = start(Some(common::builder().build()));
    let c = client(RetryPolicy::default());
    let op = c.operation();
    let url = app.url("/charge");
    let body = Charge {
        amount: 3,
        delay_ms: 600,
    };
    // A concurrent twin of the same operation: one runs, the other meets 409 and retries.
    let (a, b) = tokio::join!(op.post_json(&url, &body), op.post_json(&url, &body));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (201, 201));
    assert_eq!(app.count(|c| &c.charge), 1);
}

#[actix_web::test]
async fn client_errors_are_not_retried() {
    let app = start(Some(common::builder().build()));
    let c = client(RetryPolicy::default());

    let op = c.operation();
    let ok = op
        .post_json(
            &app.url("/charge"),
            &Charge {
                amount: 1,
                delay_ms: 0,
            },
        )
        .await
        .unwrap();
    assert_eq!(ok.status(), 201);
    match op
        .post_json(
            &app.url("/charge"),
            &Charge {
                amount: 2,
                delay_ms: 0,
            },
        )
        .await
    {
        Err(ClientError::KeyReused { detail }) => assert!(!detail.is_empty()),
        other => panic!("422 must be KeyReused, got {other:?}"),
    }
    assert_eq!(op.attempts(), 1, "422 is not retried");

    let op = c.operation();
    let bad = op
        .post_json(&app.url("/charge"), &serde_json::json!({"amount": "x"}))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(op.attempts(), 1, "400 is not retried");
}

#[actix_web::test]
async fn gives_up_after_the_bounded_number_of_attempts() {
    let app = start(Some(common::builder().build()));
    let (proxy, keys) = flaky_proxy(app.addr, |_| Fault::Drop).await;
    let c = client(RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_millis(5),
        ..RetryPolicy::default()
    });
    let op = c.operation();
    match op
        .post_json(
            &format!("http://{proxy}/charge"),
            &Charge {
                amount: 1,
                delay_ms: 0,
            },
        )
        .await
    {
        Err(ClientError::GaveUp { attempts, .. }) => assert_eq!(attempts, 4),
        other => panic!("expected GaveUp, got {other:?}"),
    }
    assert_eq!(keys.lock().unwrap().len(), 4);
    assert_eq!(app.count(|c| &c.charge), 0);
}
