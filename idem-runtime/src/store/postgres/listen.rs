//! The `LISTEN` connection that wakes local waiters when a marked row completes.

use futures_util::StreamExt;
use std::sync::Weak;
use std::time::Duration;
use tokio_postgres::AsyncMessage;

use super::Tls;
use crate::store::waiters::Waiters;

/// Keeps one `LISTEN` connection on `channel` for as long as `waiters` lives, reconnecting with
/// a short backoff.
pub(super) async fn listen_forever<T: Tls>(
    config: tokio_postgres::Config,
    tls: T,
    channel: String,
    waiters: Weak<Waiters>,
) {
    while waiters.strong_count() > 0 {
        if let Err(error) = listen(&config, tls.clone(), &channel, &waiters).await {
            tracing::debug!(%error, "idem: PostgreSQL LISTEN connection failed; retrying");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn listen<T: Tls>(
    config: &tokio_postgres::Config,
    tls: T,
    channel: &str,
    waiters: &Weak<Waiters>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(tls).await?;
    // Notifications arrive through the connection, which this task drives.
    let to_wake = waiters.clone();
    let mut driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => match to_wake.upgrade() {
                    Some(w) => w.wake(n.payload()),
                    None => return,
                },
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, "idem: PostgreSQL LISTEN connection ended");
                    return;
                }
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN \"{channel}\""))
        .await?;
    loop {
        tokio::select! {
            _ = &mut driver => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(5)) => {
                if waiters.strong_count() == 0 {
                    driver.abort();
                    return Ok(());
                }
            }
        }
    }
}
