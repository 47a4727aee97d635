//! A lane of a run on a real store: the servers one scenario at a time uses (a private
//! `redis-server`), emptied between scenarios, and the server faults a scenario plans on them —
//! `SIGSTOP`, `kill -9` and restart, `maxmemory` — made with real signals and commands. A run
//! goes down several lanes at once, each on a thread of its own.

use std::sync::{Arc, Mutex, MutexGuard};

use idem_runtime::RedisStore;

use crate::scenario::{Backend, ServerFault};
use crate::servers::RedisServer;
use crate::shared_store::SharedStore;

/// The servers of one lane.
pub struct Lane {
    /// The store its scenarios run on.
    pub backend: Backend,
    redis: Option<Arc<Mutex<RedisServer>>>,
}

impl Lane {
    /// A lane for `backend`, its servers started.
    pub fn new(backend: Backend) -> std::io::Result<Lane> {
        let redis = match backend {
            Backend::Memory => None,
            Backend::Redis => Some(Arc::new(Mutex::new(RedisServer::start()?))),
        };
        Ok(Lane { backend, redis })
    }

    fn redis(&self) -> Option<MutexGuard<'_, RedisServer>> {
        self.redis
            .as_ref()
            .map(|r| r.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Empties its servers for the next scenario (and undoes any fault a scenario left on).
    pub fn reset(&self) -> std::io::Result<()> {
        match self.redis() {
            Some(mut r) => r.reset(),
            None => Ok(()),
        }
    }

    /// A connection to its store, made on the current runtime (its tasks end with it).
    pub async fn store(&self) -> Result<SharedStore, String> {
        let url = self.redis().map(|r| r.url());
        match url {
            Some(url) => RedisStore::builder()
                .url(url)
                .connect()
                .await
                .map(SharedStore::new)
                .map_err(|e| format!("connecting to the lane's Redis: {e}")),
            None => Err("this lane has no server".to_owned()),
        }
    }

    /// Its servers' logs, for a failing run's report.
    pub fn logs(&self) -> String {
        self.redis()
            .map(|r| format!("redis-server on {}:\n{}", r.port, r.log()))
            .unwrap_or_default()
    }

    /// Begins (`on`) or ends server fault `what`, without blocking the runtime (it runs
    /// `redis-cli` and `kill`).
    pub async fn server_fault(&self, what: ServerFault, on: bool) {
        let Some(redis) = self.redis.clone() else {
            return;
        };
        let apply = move || {
            let handle = redis.lock().unwrap_or_else(|p| p.into_inner()).handle();
            match (what, on) {
                (ServerFault::Stop, true) => handle.pause(),
                (ServerFault::Stop, false) => handle.resume(),
                (ServerFault::Full, true) => handle.fill(),
                (ServerFault::Full, false) => handle.unfill(),
                (ServerFault::Restart, on) => {
                    let mut r = redis.lock().unwrap_or_else(|p| p.into_inner());
                    r.resume();
                    r.kill();
                    if !on {
                        let _ = r.restart();
                    }
                }
            }
        };
        let _ = tokio::task::spawn_blocking(apply).await;
    }
}
