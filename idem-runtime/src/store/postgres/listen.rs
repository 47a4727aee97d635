//! The `LISTEN` connection: wakes local waiters when a marked row completes, and tells replay
//! caches what other instances purged or erased.

use futures_util::StreamExt;
use std::sync::Weak;
use std::time::Duration;
use tokio_postgres::AsyncMessage;

use super::Tls;
use crate::store::waiters::Waiters;
use crate::store::Invalidation;

/// The channels listened on.
pub(super) struct Channels {
    /// Completions and releases of marked rows: the storage key.
    pub(super) done: String,
    /// Purges: the storage key.
    pub(super) purged: String,
    /// Erasures: the storage-key prefix.
    pub(super) erased: String,
}

/// Where notifications go.
#[derive(Clone)]
pub(super) struct Sinks {
    pub(super) waiters: Weak<Waiters>,
    pub(super) invalidations: tokio::sync::broadcast::Sender<Invalidation>,
}

/// Keeps one `LISTEN` connection for as long as the store's waiters live, reconnecting with a
/// short backoff.
pub(super) async fn listen_forever<T: Tls>(
    config: tokio_postgres::Config,
    tls: T,
    channels: Channels,
    sinks: Sinks,
) {
    while sinks.waiters.strong_count() > 0 {
        if let Err(error) = listen(&config, tls.clone(), &channels, &sinks).await {
            tracing::debug!(%error, "idem: PostgreSQL LISTEN connection failed; retrying");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn listen<T: Tls>(
    config: &tokio_postgres::Config,
    tls: T,
    channels: &Channels,
    sinks: &Sinks,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(tls).await?;
    // Notifications arrive through the connection, which this task drives.
    let to = sinks.clone();
    let (purged, erased) = (channels.purged.clone(), channels.erased.clone());
    let mut driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let Some(w) = to.waiters.upgrade() else {
                        return;
                    };
                    let payload = n.payload().to_owned();
                    if n.channel() == erased {
                        let _ = to.invalidations.send(Invalidation::Prefix(payload));
                    } else if n.channel() == purged {
                        // A purged record in progress ends its waiters' wait too.
                        w.wake(&payload);
                        let _ = to.invalidations.send(Invalidation::Key(payload));
                    } else {
                        w.wake(&payload);
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, "idem: PostgreSQL LISTEN connection ended");
                    return;
                }
            }
        }
    });
    client
        .batch_execute(&format!(
            "LISTEN \"{}\"; LISTEN \"{}\"; LISTEN \"{}\"",
            channels.done, channels.purged, channels.erased
        ))
        .await?;
    // Whatever was notified while this connection was down is lost: caches start afresh.
    let _ = sinks.invalidations.send(Invalidation::All);
    loop {
        tokio::select! {
            _ = &mut driver => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(5)) => {
                if sinks.waiters.strong_count() == 0 {
                    driver.abort();
                    return Ok(());
                }
            }
        }
    }
}
