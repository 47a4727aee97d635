//! The demo in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven over
//! WebDriver). The scripted page: a double-click on Pay charges once; a reload while the payment
//! is in flight, then Pay again, reuses the same key and still charges once. The server-rendered
//! checkout form (no JavaScript): a double-click, a reload, the back button and a re-submit, and
//! the reload of a POST with its resubmission confirmed, place one order.
//!
//! Without Chromium this test says so and skips; with `CI` set that is a failure.

mod common;

use common::demo::{free_port, start_demo};
use fantoccini::actions::{InputSource, MouseActions, PointerAction, MOUSE_BUTTON_LEFT};
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
    until("a success and a replayed answer in the log", || async {
        let log = text(c, "log").await;
        (text(c, "result").await.contains("succeeded") && log.contains("(replayed)")).then_some(log)
    })
    .await
}

/// Polls `check` every 100 ms until it gives a value; fails after 30 s, naming `what`.
async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "waited 30 s for {what}");
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

async fn orders_executed(base: &str) -> u64 {
    common::demo::executions(base).await["orders"]
        .as_u64()
        .expect("a count")
}

/// POSTs to `/checkout` that reached idem, whatever it answered (from the demo's `/metrics`).
async fn checkout_posts(base: &str) -> u64 {
    let text = common::client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| {
            l.starts_with("idem_requests_total{") && l.contains("endpoint=\"checkout.place\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn hidden_key(c: &Client) -> String {
    c.find(Locator::Css("input[name=_idem]"))
        .await
        .expect("the hidden key field")
        .attr("value")
        .await
        .expect("its value")
        .expect("a value")
}

/// Waits (bounded) for the receipt page; returns its order id.
async fn receipt_order(c: &Client) -> String {
    until("the receipt page", || async {
        let url = c.current_url().await.ok()?;
        if !url.path().starts_with("/receipts/") {
            return None;
        }
        c.find(Locator::Id("order")).await.ok()?.text().await.ok()
    })
    .await
}

#[actix_web::test]
async fn checkout_form_resubmitted_every_way_places_one_order() {
    let Some((_demo, base, _driver, c, _profile)) = checkout(1000).await else {
        return;
    };
    let key = hidden_key(&c).await;
    assert_eq!(key.len(), 36, "a fresh UUID key in the form: {key}");

    // A real double click on the submit button: two submissions of one form.
    double_click(&c, "place").await;
    let order = receipt_order(&c).await;
    assert_eq!(
        orders_executed(&base).await,
        1,
        "one order for the double click"
    );
    let posts = checkout_posts(&base).await;
    assert!(posts >= 2, "both clicks submitted the form ({posts} POSTs)");

    // Reload the receipt: the same order.
    c.refresh().await.unwrap();
    assert_eq!(receipt_order(&c).await, order);

    // Back to the form: the browser shows the page it had, with the same key; submit again.
    c.back().await.unwrap();
    assert_eq!(
        hidden_key(&c).await,
        key,
        "the back button keeps the rendered key"
    );
    c.find(Locator::Id("place"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(
        receipt_order(&c).await,
        order,
        "the re-submit shows the same receipt"
    );
    assert_eq!(orders_executed(&base).await, 1);
    assert!(
        checkout_posts(&base).await > posts,
        "the re-submit reached the server"
    );

    // A POST whose answer is a page (here the form's refusal, a 422 kept like any answer):
    // reload it and confirm the resubmission. The browser POSTs again; nothing runs again.
    c.goto(&format!("{base}/checkout")).await.unwrap();
    assert_ne!(hidden_key(&c).await, key, "a new visit, a new key");
    c.execute(
        "document.getElementById('quantity').value = '0'; document.forms[0].submit();",
        vec![],
    )
    .await
    .unwrap();
    wait_for_text(&c, "Order not placed").await;
    let refused = hidden_key(&c).await;
    let before = (orders_executed(&base).await, checkout_posts(&base).await);
    assert_eq!(before.0, 2, "the refusal is an execution");
    reload_confirming(&c).await;
    wait_for_text(&c, "Order not placed").await;
    assert_eq!(
        hidden_key(&c).await,
        refused,
        "the very same page came back (its new key included)"
    );
    let after = (orders_executed(&base).await, checkout_posts(&base).await);
    assert_eq!(after.0, 2, "the reloaded POST ran nothing");
    assert_eq!(after.1, before.1 + 1, "the reload did POST again");

    c.close().await.unwrap();
}

/// The POST itself reloaded: with the order slower (4 s) than a duplicate's wait (3 s), the
/// double click's second submission shows the 409 page, a POST result. Reloading it and
/// confirming the resubmission POSTs the form again, which lands on the receipt of the one
/// order; so does every later reload.
#[actix_web::test]
async fn reloading_the_post_after_a_double_click_shows_the_one_receipt() {
    let Some((_demo, base, _driver, c, _profile)) = checkout(4000).await else {
        return;
    };
    double_click(&c, "place").await;
    wait_for_text(&c, "urn:idem:problem:in-progress").await;
    assert_eq!(
        c.current_url().await.unwrap().path(),
        "/checkout",
        "a POST result"
    );
    let posts = checkout_posts(&base).await;
    reload_confirming(&c).await;
    let order = receipt_order(&c).await;
    assert!(
        checkout_posts(&base).await > posts,
        "the reload POSTed the form again"
    );
    c.refresh().await.unwrap();
    assert_eq!(receipt_order(&c).await, order);
    assert_eq!(
        orders_executed(&base).await,
        1,
        "one order for three submissions"
    );
    c.close().await.unwrap();
}

/// The demo's API docs page: Swagger UI served from the binary (no web host is reachable here,
/// so a page that needed a CDN would stay blank) renders the OpenAPI document with the key
/// header and idem's answers that `#[idempotent]` documented.
#[actix_web::test]
async fn the_api_docs_page_shows_the_idempotency_key() {
    if !chromium_available() {
        return;
    }
    let (_demo, base) = start_demo(None, 10).await;
    let (_driver, c, _profile) = browser().await;
    c.goto(&format!("{base}/docs/"))
        .await
        .expect("open the docs");
    // Swagger UI renders in stages: each text is waited for (bounded) in turn.
    for needle in [
        "Idempotency-Key",
        "/payments",
        "Idempotent-Replayed",
        "urn:idem:problem:key-reused",
    ] {
        wait_for_text(&c, needle).await;
    }
    c.close().await.unwrap();
}

/// The demo (orders taking `delay_ms`) and a browser on its checkout form; `None` without
/// Chromium.
async fn checkout(
    delay_ms: u64,
) -> Option<(common::demo::Demo, String, Driver, Client, tempdir::Dir)> {
    if !chromium_available() {
        return None;
    }
    let (demo, base) = start_demo(None, delay_ms).await;
    let (driver, c, profile) = browser().await;
    c.goto(&format!("{base}/checkout"))
        .await
        .expect("open the form");
    Some((demo, base, driver, c, profile))
}

/// Reloads a page that was a POST's answer; Chromium asks to confirm the resubmission, which
/// is accepted (the reload command itself may not return until the dialog is dealt with).
async fn reload_confirming(c: &Client) {
    let _ = tokio::time::timeout(Duration::from_secs(10), c.refresh()).await;
    let _ = c.accept_alert().await;
}

/// A person's double click on element `id`: the second press ~150 ms after the first.
async fn double_click(c: &Client, id: &str) {
    let target = c.find(Locator::Id(id)).await.unwrap();
    let press = |actions: MouseActions| {
        actions
            .then(PointerAction::Down {
                button: MOUSE_BUTTON_LEFT,
            })
            .then(PointerAction::Up {
                button: MOUSE_BUTTON_LEFT,
            })
    };
    let actions = MouseActions::new("mouse".into()).then(PointerAction::MoveToElement {
        element: target,
        duration: None,
        x: 0.0,
        y: 0.0,
    });
    let actions = press(press(actions).then(PointerAction::Pause {
        duration: Duration::from_millis(150),
    }));
    c.perform_actions(actions).await.expect("double click");
}

/// Waits (bounded) until the page's text contains `needle`; returns the text.
async fn wait_for_text(c: &Client, needle: &str) -> String {
    until(&format!("`{needle}` on the page"), || async {
        let t = c.find(Locator::Css("body")).await.ok()?.text().await.ok()?;
        t.contains(needle).then_some(t)
    })
    .await
}
