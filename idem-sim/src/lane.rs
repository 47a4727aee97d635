//! A lane of a run on a real store: the server one scenario at a time uses — a private
//! `redis-server`, or tables of its own on the local PostgreSQL — emptied between scenarios, the
//! link to it (a TCP fault proxy, started with each scenario's runtime), and the server faults a
//! scenario plans, made with real signals, commands and sockets. A run goes down several lanes
//! at once, each on a thread of its own.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use idem_runtime::tokio_postgres::{self, NoTls};
use idem_runtime::{PostgresStore, RedisStore};

use crate::proxy::FaultProxy;
use crate::scenario::{Backend, ServerFault};
use crate::servers::{pg_address, pg_config, RedisServer};
use crate::shared_store::SharedStore;

/// Pooled PostgreSQL connections per lane (every lane's, and the run's other tests', within
/// the server's 100).
const PG_CONNECTIONS: usize = 6;

/// The servers of one lane.
pub struct Lane {
    /// The store its scenarios run on.
    pub backend: Backend,
    redis: Option<Arc<Mutex<RedisServer>>>,
    /// Its records table on PostgreSQL (with `<table>_steps`, `<table>_requests` and the
    /// committed effects, `<table>_effects`).
    table: Option<String>,
}

/// A scenario's way to its lane's server.
pub struct Connection {
    /// The store, through the link.
    pub store: SharedStore,
    /// The link: every byte between the instances and the server goes through it.
    pub link: FaultProxy,
}

impl Lane {
    /// A lane for `backend`, its servers started.
    pub fn new(backend: Backend) -> std::io::Result<Lane> {
        static LANES: AtomicUsize = AtomicUsize::new(0);
        let (redis, table) = match backend {
            Backend::Memory => (None, None),
            Backend::Redis => (Some(Arc::new(Mutex::new(RedisServer::start()?))), None),
            Backend::Postgres => {
                let n = LANES.fetch_add(1, Ordering::SeqCst);
                (None, Some(format!("idem_sim_{}_{n}", std::process::id())))
            }
        };
        Ok(Lane {
            backend,
            redis,
            table,
        })
    }

    fn redis(&self) -> Option<MutexGuard<'_, RedisServer>> {
        self.redis
            .as_ref()
            .map(|r| r.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The table committed effects go to, on PostgreSQL.
    pub fn effects_table(&self) -> Option<String> {
        self.table.as_ref().map(|t| format!("{t}_effects"))
    }

    /// Empties its Redis for the next scenario (and undoes any fault a scenario left on); its
    /// PostgreSQL tables are emptied by [`connect`](Self::connect).
    pub fn reset(&self) -> std::io::Result<()> {
        match self.redis() {
            Some(mut r) => r.reset(),
            None => Ok(()),
        }
    }

    /// The way to its server for one scenario, made on the current runtime (the link's and
    /// the store's tasks end with it); PostgreSQL tables emptied.
    pub async fn connect(&self) -> Result<Connection, String> {
        let port = self.redis().map(|r| r.port);
        if let Some(port) = port {
            let link = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], port))).await;
            let store = RedisStore::builder()
                .url(link.url())
                .connect()
                .await
                .map_err(|e| format!("connecting to the lane's Redis: {e}"))?;
            return Ok(Connection {
                store: SharedStore::new(store),
                link,
            });
        }
        let Some(table) = &self.table else {
            return Err("this lane has no server".to_owned());
        };
        let config = pg_config();
        let link = FaultProxy::start(pg_address(&config)?).await;
        let store = PostgresStore::builder(&link.pg_config(&config))
            .table(table)
            .max_connections(PG_CONNECTIONS)
            .connect()
            .await
            .map_err(|e| format!("connecting to PostgreSQL ({config}): {e}"))?;
        let db = client(&config).await?;
        db.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {table}_effects (id bigint PRIMARY KEY, op bigint NOT NULL, req bigint NOT NULL);
             TRUNCATE {table}, {table}_steps, {table}_requests, {table}_effects;"
        ))
        .await
        .map_err(|e| format!("emptying the lane's tables: {e}"))?;
        Ok(Connection {
            store: SharedStore::new(store),
            link,
        })
    }

    /// The effects committed in its effects table (PostgreSQL), by id.
    pub async fn committed(&self) -> Result<Vec<u64>, String> {
        let Some(table) = self.effects_table() else {
            return Ok(Vec::new());
        };
        let db = client(&pg_config()).await?;
        let rows = db
            .query(&format!("SELECT id FROM {table}"), &[])
            .await
            .map_err(|e| format!("reading committed effects: {e}"))?;
        Ok(rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect())
    }

    /// Its servers' logs, for a failing run's report.
    pub fn logs(&self) -> String {
        self.redis()
            .map(|r| format!("redis-server on {}:\n{}", r.port, r.log()))
            .unwrap_or_default()
    }

    /// Begins (`on`) or ends server fault `what` on the server or on `link`, without blocking
    /// the runtime (`redis-cli` and `kill` run on a blocking thread).
    pub async fn server_fault(&self, link: &FaultProxy, what: ServerFault, on: bool) {
        match what {
            ServerFault::LinkStall if on => return link.stall(),
            ServerFault::LinkStall => return link.resume(),
            ServerFault::LinkReset if on => return link.reset(),
            ServerFault::LinkReset => return,
            ServerFault::LoseAnswers => return link.lose_answers(on),
            ServerFault::LinkDelay(ms) => return link.delay(if on { ms } else { 0 }),
            ServerFault::Stop | ServerFault::Full | ServerFault::Restart => {}
        }
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
                (_, on) => {
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

impl Drop for Lane {
    fn drop(&mut self) {
        let Some(table) = self.table.clone() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            if let Ok(db) = client(&pg_config()).await {
                let _ = db
                    .batch_execute(&format!(
                        "DROP TABLE IF EXISTS {table}_effects, {table}_steps, {table}_requests, {table};
                         DROP SEQUENCE IF EXISTS {table}_token;"
                    ))
                    .await;
            }
        });
    }
}

/// A plain client of the local PostgreSQL (its connection driven on the current runtime).
async fn client(config: &str) -> Result<tokio_postgres::Client, String> {
    let (db, conn) = tokio_postgres::connect(config, NoTls)
        .await
        .map_err(|e| format!("connecting to PostgreSQL ({config}): {e}"))?;
    tokio::spawn(conn);
    Ok(db)
}
