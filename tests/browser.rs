//! The demo page in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven
//! over WebDriver): a double-click on Pay charges once; a reload while the payment is in flight,
//! then Pay again, reuses the same key and still charges once.
//!
//! Without Chromium this test says so and skips; with `CI` set that is a failure.

mod common;

use common::demo::{free_port, start_demo};
use fantoccini::{Client, ClientBuilder, Locator};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn chromium_available() -> bool {
    let found = |bin: &str| {
        Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if found("chromium") && found("chromedriver") {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("chromium or chromedriver is not on PATH, and CI is set: install Debian's `chromium` and `chromium-driver`");
    }
    eprintln!("skipped browser test: chromium/chromedriver not on PATH (apt-get install chromium chromium-driver)");
    false
}

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn browser() -> (Driver, Client, tempdir::Dir) {
    let port = free_port();
    let driver = Driver(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let profile = tempdir::Dir::new("idem-chromium");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                format!("--user-data-dir={}", profile.path.display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session");
    (driver, client, profile)
}

/// A private, removed-on-drop Chromium profile directory.
mod tempdir {
    pub struct Dir {
        pub path: std::path::PathBuf,
    }

    impl Dir {
        pub fn new(tag: &str) -> Dir {
            let path = std::env::temp_dir().join(format!(
                "{tag}-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0)
            ));
            std::fs::create_dir_all(&path).expect("profile dir");
            Dir { path }
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

async fn text(c: &Client, id: &str) -> String {
    c.find(Locator::Id(id))
        .await
        .expect("element")
        .text()
        .await
        .expect("text")
}

/// Waits (bounded) until `#result` says the payment succeeded and the attempts log shows a
/// replayed answer; returns the log.
async fn until_paid_and_replayed(c: &Client) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = text(c, "log").await;
        if text(c, "result").await.contains("succeeded") && log.contains("(replayed)") {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no success; log: {}",
            text(c, "log").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether an attempt in the log got a fresh (not replayed) 201.
fn ran_fresh(log: &str) -> bool {
    log.lines().any(|l| l.trim_end().ends_with(": 201"))
}

async fn payments_executed(base: &str) -> u64 {
    common::demo::executions(base).await["payments"]
        .as_u64()
        .expect("a count")
}

#[actix_web::test]
async fn double_click_and_reload_mid_payment_charge_once() {
    if !chromium_available() {
        return;
    }
    let (_demo, base) = start_demo(None, 1500).await;
    let (_driver, c, _profile) = browser().await;
    c.goto(&format!("{base}/")).await.expect("open the page");

    // Double-click: two clicks, two requests with one key.
    let pay = c.find(Locator::Id("pay")).await.unwrap();
    pay.click().await.unwrap();
    pay.click().await.unwrap();
    let log = until_paid_and_replayed(&c).await;
    assert_eq!(
        payments_executed(&base).await,
        1,
        "double click charged twice; log: {log}"
    );
    assert!(ran_fresh(&log), "one click ran the payment: {log}");

    // Reload while the payment is in flight, then Pay again: same key, still one charge.
    c.find(Locator::Id("pay"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let key = text(&c, "key").await;
    assert_eq!(key.len(), 36, "a UUID key is in use: {key}");
    c.refresh().await.unwrap();
    assert_eq!(
        text(&c, "key").await,
        key,
        "the key survived the reload in localStorage"
    );
    c.find(Locator::Id("pay"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let log = until_paid_and_replayed(&c).await;
    assert!(
        !ran_fresh(&log),
        "after the reload only the replay arrives: {log}"
    );
    assert_eq!(
        payments_executed(&base).await,
        2,
        "the interrupted payment ran once"
    );
    assert_eq!(
        text(&c, "key").await,
        "(none yet)",
        "success clears the key"
    );
    c.close().await.unwrap();
}
