//! Hostile input, generated: random keys (every byte HTTP lets through), repeated key headers,
//! content types and encodings, bodies of random bytes or corrupt gzip, sizes up to and past the
//! limit. Never a panic, never a 5xx other than the documented 503, always problem+json for
//! errors — and the server keeps serving.

mod common;

use common::start;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug, Clone)]
struct Hostile {
    path: &'static str,
    keys: Vec<Vec<u8>>,
    content_type: Option<String>,
    encoding: Option<&'static str>,
    body: Vec<u8>,
}

/// Bytes an HTTP/1.1 header value may carry (tab, visible ASCII, obs-text); anything else is
/// refused by the HTTP parser before any handler runs.
fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            8 => 0x21u8..0x7f,
            1 => Just(b' '),
            1 => Just(b'\t'),
            1 => 0x80u8..=0xff,
            1 => Just(b'"'),
            1 => Just(b'\\'),
        ],
        0..300,
    )
}

fn hostile() -> impl Strategy<Value = Hostile> {
    (
        prop_oneof![
            Just("/charge"),
            Just("/small"),
            Just("/result"),
            Just("/semantic")
        ],
        prop_oneof![
            1 => Just(Vec::new()),
            4 => "[A-Za-z0-9_.:-]{1,60}".prop_map(|k| vec![k.into_bytes()]),
            1 => "[A-Za-z0-9 !#-~]{0,80}".prop_map(|k| vec![format!("\"{k}\"").into_bytes()]),
            2 => prop::collection::vec(header_value(), 1..3),
        ],
        prop::option::of(prop_oneof![
            Just("application/json".to_string()),
            Just("application/json; charset=utf-8".to_string()),
            Just("text/plain".to_string()),
            Just("application/x-www-form-urlencoded".to_string()),
            "[a-z/;= -]{0,40}",
        ]),
        prop::option::of(prop_oneof![
            Just("gzip"),
            Just("deflate"),
            Just("br"),
            Just("zstd"),
            Just("identity"),
            Just("x-garbage"),
        ]),
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..1500),
            "[ -~]{0,200}".prop_map(String::into_bytes),
            Just(br#"{"amount":1,"delay_ms":0}"#.to_vec()),
            (any::<i64>(), "[a-z]{0,8}")
                .prop_map(
                    |(a, n)| format!(r#"{{"amount":{a},"note":"{n}","delay_ms":0}}"#).into_bytes()
                ),
            (0usize..3000).prop_map(|n| vec![b'{'; n]),
        ],
    )
        .prop_map(|(path, keys, content_type, encoding, body)| Hostile {
            path,
            keys,
            content_type,
            encoding,
            body,
        })
}

/// Sends the request raw and returns (status, content type, body).
fn send(addr: SocketAddr, h: &Hostile) -> (u16, String, Vec<u8>) {
    let mut req = format!(
        "POST {} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n",
        h.path
    )
    .into_bytes();
    for k in &h.keys {
        req.extend_from_slice(b"Idempotency-Key: ");
        req.extend_from_slice(k);
        req.extend_from_slice(b"\r\n");
    }
    if let Some(ct) = &h.content_type {
        req.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
    }
    if let Some(enc) = h.encoding {
        req.extend_from_slice(format!("Content-Encoding: {enc}\r\n").as_bytes());
    }
    req.extend_from_slice(format!("Content-Length: {}\r\n\r\n", h.body.len()).as_bytes());
    req.extend_from_slice(&h.body);

    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&req).expect("send");
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no response head for {h:?}: {:?}",
                String::from_utf8_lossy(&resp)
            )
        });
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    let status: u16 = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, content_type, resp[split + 4..].to_vec())
}

#[actix_web::test]
async fn hostile_requests_get_clear_errors_and_nothing_breaks() {
    let app = start(Some(common::builder().build()));
    let addr = app.addr;
    // The requests are blocking: run them off this thread, which drives the server.
    let result = tokio::task::spawn_blocking(move || {
        let mut runner = TestRunner::new(Config {
            cases: 400,
            failure_persistence: None,
            ..Config::default()
        });
        let seen = std::sync::Mutex::new(std::collections::BTreeMap::<u16, u32>::new());
        let outcome = runner.run(&hostile(), |h| {
            let (status, content_type, body) = send(addr, &h);
            *seen.lock().unwrap().entry(status).or_default() += 1;
            prop_assert!(status < 500 || status == 503, "{status} for {h:?}");
            if status >= 400 {
                prop_assert_eq!(
                    &content_type,
                    "application/problem+json",
                    "{} for {:?}",
                    status,
                    h
                );
                let v: serde_json::Value = serde_json::from_slice(&body)
                    .map_err(|e| TestCaseError::fail(format!("not JSON: {e}")))?;
                prop_assert_eq!(v["status"].as_u64(), Some(u64::from(status)));
                prop_assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()));
            }
            Ok(())
        });
        println!("statuses seen: {:?}", seen.lock().unwrap());
        // The failure, as text: proptest's error type is too large to pass around.
        outcome.map_err(|e| e.to_string())
    })
    .await;
    let outcome = result.expect("no panic in the client thread");
    assert!(outcome.is_ok(), "{outcome:?}");
    // Still serving.
    let r = app
        .post("/charge", "after-the-storm")
        .json(&common::Charge {
            amount: 1,
            delay_ms: 0,
        })
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}
