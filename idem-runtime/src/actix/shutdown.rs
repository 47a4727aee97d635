//! Graceful shutdown: the operations a deploy must let finish.
//!
//! An idempotent handler runs in a task of its own, so that a client that hangs up cannot cancel
//! it halfway through its side effects. actix-web's own graceful stop waits for *connections*, not
//! for such tasks: once the last connection is closed its workers stop and their tasks are dropped
//! at whatever `.await` they were in — a handler whose side effects happened but whose record was
//! never completed, so the retry runs it again. [`Idempotency::drain`] counts those tasks (and the
//! background completions and webhook deliveries) and waits for them;
//! [`Idempotency::serve`] puts it between the signal and actix-web's stop.

use actix_web::dev::Server;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

use super::Idempotency;

/// The tasks of one app that a shutdown waits for.
#[derive(Default)]
pub(crate) struct Inflight {
    count: AtomicUsize,
    idle: Notify,
    draining: AtomicBool,
}

/// One counted task; dropping it uncounts it.
pub(crate) struct InflightGuard(Arc<Inflight>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Inflight {
    /// Counts one more task until the guard is dropped.
    pub(crate) fn enter(self: &Arc<Self>) -> InflightGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        InflightGuard(self.clone())
    }

    /// Whether a shutdown started: no new operation is to start.
    pub(crate) fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    async fn drain(&self, timeout: Duration) -> bool {
        self.draining.store(true, Ordering::Release);
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let idle = self.idle.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(until, idle).await.is_err() {
                return self.count.load(Ordering::Acquire) == 0;
            }
        }
    }
}

impl Idempotency {
    /// Runs `work` in a task of its own (in the current span) that a graceful shutdown waits for:
    /// background completions and releases, webhook deliveries.
    /// On the current tokio runtime, whatever the framework: actix-web's worker or a
    /// multi-threaded one under tower. Without a runtime (a drop during the runtime's own
    /// shutdown) the work cannot run: it is logged and dropped — the key it would have settled
    /// frees itself when its lease ends — never a panic (which `panic = "abort"` builds would
    /// turn into an abort).
    pub(crate) fn spawn_tracked(
        &self,
        work: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        use tracing::Instrument;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("idem: no runtime to finish background work on (shutting down); a key it would have settled frees itself when its lease ends");
            return;
        };
        let inflight = self.shared.inflight.enter();
        runtime.spawn(
            async move {
                work.await;
                drop(inflight);
            }
            .in_current_span(),
        );
    }

    /// Starts a shutdown: from now on no new operation starts (a request that would run its
    /// handler gets 503 `urn:idem:problem:shutting-down` with `Retry-After`, and its key is
    /// given back, so the client's retry runs it on another instance; replays and answers to
    /// duplicates still work). Then waits until every operation in flight — handlers whose
    /// client may have hung up, completions still being retried, webhook deliveries — has
    /// finished, or `timeout` has passed. Returns whether all finished.
    ///
    /// Call it before stopping the server: actix-web's graceful stop waits only for open
    /// connections, then drops the tasks of handlers whose client is gone.
    /// [`serve`](Self::serve) does this on SIGTERM and Ctrl-C.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let done = self.shared.inflight.drain(timeout).await;
        if done {
            tracing::info!("idem: every operation in flight finished; ready to stop");
        } else {
            tracing::error!(
                ?timeout,
                "idem: operations still in flight when the shutdown timeout ended; they are dropped, and their keys free themselves when their leases end"
            );
        }
        done
    }

    /// Runs `server` until SIGTERM or SIGINT (Ctrl-C), then [`drain`](Self::drain)s for up to
    /// `timeout` and stops the server gracefully. Build the server with
    /// [`disable_signals`](actix_web::HttpServer::disable_signals), so that actix-web does not
    /// stop its workers on the same signal before the drain:
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// use actix_web::{App, HttpServer};
    /// use std::time::Duration;
    /// let idem = idem_runtime::Idempotency::builder().unscoped().build();
    /// let app_idem = idem.clone();
    /// let server = HttpServer::new(move || App::new().app_data(app_idem.clone()))
    ///     .disable_signals()
    ///     .shutdown_timeout(30)
    ///     .bind(("127.0.0.1", 8080))?
    ///     .run();
    /// idem.serve(server, Duration::from_secs(30)).await
    /// # }
    /// ```
    pub async fn serve(&self, server: Server, timeout: Duration) -> std::io::Result<()> {
        let handle = server.handle();
        let mut server = std::pin::pin!(server);
        tokio::select! {
            stopped = &mut server => return stopped,
            () = signalled() => {}
        }
        tracing::info!("idem: shutdown signal received; draining operations in flight");
        self.drain(timeout).await;
        let ((), stopped) = tokio::join!(handle.stop(true), server);
        stopped
    }
}

/// SIGTERM or SIGINT (Ctrl-C).
async fn signalled() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "idem: cannot listen for SIGTERM; only Ctrl-C starts a graceful shutdown");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
