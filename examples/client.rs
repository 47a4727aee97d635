//! The Rust client half of the pattern against the demo: one key per payment, retried on
//! connection errors, 409, 429 and 5xx until the replay arrives.
//!
//! ```text
//! cargo run --example payments            # in one terminal
//! cargo run --example client              # in another (BASE_URL overrides the address)
//! ```

use idem::client::{Client, ClientError};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), ClientError> {
    let base = std::env::var("BASE_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let client = Client::new();
    let op = client.operation();
    let body = serde_json::json!({ "amount": 2500, "currency": "EUR" });

    // The same operation sent twice (a retry after a timeout, say): one payment.
    for _ in 0..2 {
        let resp = op.post_json(&format!("{base}/payments"), &body).await?;
        let replayed = resp.headers().contains_key("idempotent-replayed");
        let status = resp.status();
        let payment: serde_json::Value = resp.json().await.unwrap_or_default();
        println!(
            "{status} replayed={replayed} attempts={} key={} → {payment}",
            op.attempts(),
            op.key()
        );
    }

    // Reusing the key for another payload is refused, and typed as such.
    let other = serde_json::json!({ "amount": 9999, "currency": "EUR" });
    match op.post_json(&format!("{base}/payments"), &other).await {
        Err(ClientError::KeyReused { detail }) => println!("422 as expected: {detail}"),
        other => println!("unexpected: {other:?}"),
    }
    Ok(())
}
