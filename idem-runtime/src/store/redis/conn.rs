//! The Redis store's connections: one server, a cluster, or whichever master a set of Sentinels
//! names; and, for a durable store, `WAIT` pipelined behind each write in the same round trip.
//!
//! `WAIT` blocks the connection it runs on until the replicas acknowledge (or its timeout), so a
//! durable store never shares its connections with calls that do not wait: it keeps a few of its
//! own and spreads its calls over them.

use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::SentinelClient;
use redis::{Cmd, ErrorKind, RedisError, ServerErrorKind, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The connections of one store.
#[derive(Clone)]
pub(super) enum Conn {
    /// One server, through one or more self-reconnecting connections (used in turn).
    Single(Arc<Managers>),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
    /// The master named by Sentinels, found again after a failover.
    Sentinel(Arc<SentinelConn>),
}

/// Connections to one server, used in turn.
pub(super) struct Managers {
    conns: Vec<ConnectionManager>,
    next: AtomicUsize,
}

impl Managers {
    pub(super) fn new(conns: Vec<ConnectionManager>) -> Self {
        Managers {
            conns,
            next: AtomicUsize::new(0),
        }
    }

    fn pick(&self) -> ConnectionManager {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len().max(1);
        self.conns[i].clone()
    }
}

/// The master a set of Sentinels names, with one multiplexed connection to it. A call that
/// fails as after a failover (the connection dropped or timed out, or the old master, demoted,
/// answers `READONLY`) forgets that connection; the next call asks the Sentinels again.
pub(super) struct SentinelConn {
    client: tokio::sync::Mutex<SentinelClient>,
    current: RwLock<Option<MultiplexedConnection>>,
    config: redis::AsyncConnectionConfig,
}

impl SentinelConn {
    pub(super) fn new(client: SentinelClient, config: redis::AsyncConnectionConfig) -> Self {
        SentinelConn {
            client: tokio::sync::Mutex::new(client),
            current: RwLock::new(None),
            config,
        }
    }

    /// The current master's address as the Sentinels name it (connecting if needed).
    pub(super) async fn master(&self) -> Result<redis::Client, RedisError> {
        self.client.lock().await.async_get_client().await
    }

    async fn connection(&self) -> Result<MultiplexedConnection, RedisError> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let mut client = self.client.lock().await;
        // Another call may have connected while this one waited for the lock.
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let master = client.async_get_client().await?;
        let conn = master
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    fn cached(&self) -> Option<MultiplexedConnection> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Forgets the connection after an error that may mean a failover.
    fn after(&self, error: &RedisError) {
        let failover = error.is_io_error()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_timeout()
            || matches!(
                error.kind(),
                ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
            );
        if failover {
            tracing::info!(%error, "idem: the Redis master may have changed; asking the Sentinels again");
            *self.current.write().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }
}

impl Conn {
    /// One command.
    pub(super) async fn query(&self, cmd: &Cmd) -> Result<Value, RedisError> {
        match self {
            Conn::Single(m) => cmd.query_async(&mut m.pick()).await,
            Conn::Cluster(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Sentinel(s) => {
                let answer = cmd.query_async(&mut s.connection().await?).await;
                if let Err(e) = &answer {
                    s.after(e);
                }
                answer
            }
        }
    }

    /// `cmd`, then `WAIT replicas timeout`, in one round trip: the command's answer, and how many
    /// replicas acknowledged every write sent on that connection so far.
    pub(super) async fn query_then_wait(
        &self,
        cmd: &Cmd,
        replicas: u32,
        timeout: Duration,
    ) -> Result<(Value, i64), RedisError> {
        let mut pipe = redis::pipe();
        pipe.add_command(cmd.clone())
            .cmd("WAIT")
            .arg(replicas)
            .arg(timeout.as_millis() as u64);
        let answers: Vec<Value> = match self {
            Conn::Single(m) => pipe.query_async(&mut m.pick()).await?,
            Conn::Sentinel(s) => {
                let answers = pipe.query_async(&mut s.connection().await?).await;
                if let Err(e) = &answers {
                    s.after(e);
                }
                answers?
            }
            Conn::Cluster(_) => {
                return Err(RedisError::from((
                    ErrorKind::Client,
                    "durability is not available on a Redis Cluster",
                )))
            }
        };
        let mut answers = answers.into_iter();
        match (answers.next(), answers.next()) {
            (Some(value), Some(Value::Int(acked))) => Ok((value, acked)),
            _ => Err(RedisError::from((
                ErrorKind::Parse,
                "unexpected answer to a command followed by WAIT",
            ))),
        }
    }

    /// Runs `cmd` on every node whose configuration matters: the server, the master, or every
    /// node of a cluster. Each answer comes with the node's name.
    pub(super) async fn on_every_node(
        &self,
        cmd: &Cmd,
    ) -> Result<Vec<(String, Value)>, RedisError> {
        match self {
            Conn::Single(_) | Conn::Sentinel(_) => {
                Ok(vec![("server".into(), self.query(cmd).await?)])
            }
            Conn::Cluster(c) => {
                use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
                let all = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllNodes, None));
                match c.clone().route_command(cmd.clone(), all).await? {
                    Value::Map(answers) => Ok(answers
                        .into_iter()
                        .map(|(node, v)| match node {
                            Value::BulkString(b) => (String::from_utf8_lossy(&b).into_owned(), v),
                            _ => ("node".into(), v),
                        })
                        .collect()),
                    other => Ok(vec![("cluster".into(), other)]),
                }
            }
        }
    }
}
