//! [`RedisStoreBuilder`]: where the store connects (a server, a cluster, the master named by
//! Sentinels), its timeouts, its durability and whether it accepts an evicting Redis.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use std::sync::Arc;
use std::time::Duration;

use super::conn::{Conn, Managers, SentinelConn};
use super::notify::{self, Target, Waiters};
use super::scripts::Scripts;
use super::{eviction, failed, RedisStore};
use crate::store::StoreError;

/// Where a [`RedisStore`] connects. Its `Debug` hides passwords (see [`redacted`]).
#[derive(Clone)]
enum Topology {
    Single(String),
    Cluster(Vec<String>),
    Sentinel {
        sentinels: Vec<String>,
        service: String,
    },
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let all = |urls: &[String]| urls.iter().map(|u| redacted(u)).collect::<Vec<_>>();
        match self {
            Topology::Single(url) => f.debug_tuple("Single").field(&redacted(url)).finish(),
            Topology::Cluster(urls) => f.debug_tuple("Cluster").field(&all(urls)).finish(),
            Topology::Sentinel { sentinels, service } => f
                .debug_struct("Sentinel")
                .field("sentinels", &all(sentinels))
                .field("service", service)
                .finish(),
        }
    }
}

/// The settings of the data nodes behind Sentinel, read from `url` (see
/// [`RedisStoreBuilder::sentinel_node`]): TLS from its scheme, credentials and database from
/// the rest; its host is ignored.
fn node_info(url: &str) -> Result<SentinelNodeConnectionInfo, StoreError> {
    use redis::{ConnectionAddr, IntoConnectionInfo, TlsMode};
    let info = url.into_connection_info().map_err(|e| {
        StoreError::Config(format!("sentinel_node `{}`: {e}", redacted(url)).into())
    })?;
    let node = SentinelNodeConnectionInfo::default()
        .set_redis_connection_info(info.redis_settings().clone());
    Ok(match info.addr() {
        ConnectionAddr::TcpTls { insecure, .. } => node.set_tls_mode(if *insecure {
            TlsMode::Insecure
        } else {
            TlsMode::Secure
        }),
        _ => node,
    })
}

/// `url` with the password of its user info replaced by `***` (`redis://user:***@host`), and
/// the values of `pass` and `password` query parameters (the `redis+unix://` form) too, so that
/// a logged builder never shows it.
fn redacted(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let mut out = match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme_end], &rest[at..])
        }
        None => url.to_owned(),
    };
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if matches!(k, "pass" | "password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect();
        out = format!("{head}{}", query.join("&"));
    }
    out
}

/// Builder for [`RedisStore`]. Its `Debug` hides passwords.
#[derive(Clone)]
pub struct RedisStoreBuilder {
    topology: Topology,
    connect_timeout: Duration,
    response_timeout: Duration,
    durability: Option<(u32, Duration)>,
    connections: usize,
    allow_eviction: bool,
    /// How to connect to the data nodes Sentinel names (a URL whose host is ignored).
    sentinel_node: Option<String>,
}

impl std::fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("topology", &self.topology)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("durability", &self.durability)
            .field("connections", &self.connections)
            .field("allow_eviction", &self.allow_eviction)
            .field(
                "sentinel_node",
                &self.sentinel_node.as_deref().map(redacted),
            )
            .finish()
    }
}

impl Default for RedisStoreBuilder {
    fn default() -> Self {
        RedisStoreBuilder {
            topology: Topology::Single("redis://127.0.0.1:6379".into()),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_millis(500),
            durability: None,
            connections: 4,
            allow_eviction: false,
            sentinel_node: None,
        }
    }
}

impl RedisStoreBuilder {
    /// One Redis server: `redis://[:password@]host:port[/db]` (`rediss://` with feature
    /// `redis-tls`).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.topology = Topology::Single(url.into());
        self
    }

    /// A Redis Cluster, reached through any of these seed nodes.
    pub fn cluster<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.topology = Topology::Cluster(urls.into_iter().map(Into::into).collect());
        self
    }

    /// The master that these Sentinels (`redis://host:port` each) name for `service`: after a
    /// failover the store finds the new master by itself — its writes and its completion
    /// subscriber go there — without a restart.
    pub fn sentinel<I, S>(mut self, sentinels: I, service: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.topology = Topology::Sentinel {
            sentinels: sentinels.into_iter().map(Into::into).collect(),
            service: service.into(),
        };
        self
    }

    /// How to connect to the data nodes (master and replicas) that the Sentinels name, which
    /// usually differ from the Sentinels themselves: a URL whose host is ignored, e.g.
    /// `redis://:password@master/2` or `rediss://user:password@master` — its scheme says
    /// whether to use TLS (`rediss`; `#insecure` skips certificate checks), its user info the
    /// credentials, its path the database. Without it the store connects to the data nodes
    /// in clear, without credentials, to database 0.
    pub fn sentinel_node(mut self, url: impl Into<String>) -> Self {
        self.sentinel_node = Some(url.into());
        self
    }

    /// Deadline for establishing a connection (default 1 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Deadline for one command's answer inside the client (default 500 ms). The engine puts its
    /// own `store_timeout` around every call as well.
    pub fn response_timeout(mut self, t: Duration) -> Self {
        self.response_timeout = t;
        self
    }

    /// Every write (`begin`, `complete`, `renew`, `release`, `purge`) is acknowledged by at least
    /// `replicas` replicas within `timeout` before it counts: `WAIT replicas timeout` is
    /// pipelined behind it, in the same round trip. A `begin` not acknowledged in time fails
    /// closed (503, the handler does not run) and is released; a `complete` is retried like any
    /// failed completion. Asynchronous replication then loses no acknowledged record on a
    /// failover to one of those replicas. The store keeps connections of its own (`WAIT` blocks
    /// the connection it runs on). Not available on a cluster. Keep `timeout` well under the
    /// app's `store_timeout`.
    pub fn durability(mut self, replicas: u32, timeout: Duration) -> Self {
        self.durability = Some((replicas, timeout));
        self
    }

    /// How many connections a single-server or durable store spreads its calls over (default
    /// 4; a non-durable single server uses one multiplexed connection per call in turn).
    pub fn connections(mut self, n: usize) -> Self {
        self.connections = n.max(1);
        self
    }

    /// Runs even on a Redis whose `maxmemory-policy` may evict records (anything but
    /// `noeviction`): evictions are then logged as errors and counted
    /// (`idem_redis_evicted_keys_total`), and a retry of an evicted record's operation runs
    /// again. Without it, `connect` refuses such a Redis, and a store whose Redis starts evicting
    /// fails closed.
    pub fn allow_eviction(mut self) -> Self {
        self.allow_eviction = true;
        self
    }

    /// Connects, checks the eviction policy of every node, and loads the scripts on every
    /// primary.
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.response_timeout));
        let indexed = matches!(self.topology, Topology::Cluster(_));
        let (conn, target) = match &self.topology {
            Topology::Cluster(urls) => {
                if self.durability.is_some() {
                    return Err(StoreError::Config(
                        "durability (WAIT) is not available on a Redis Cluster store".into(),
                    ));
                }
                let client = ClusterClient::builder(urls.clone())
                    .connection_timeout(self.connect_timeout)
                    .response_timeout(self.response_timeout)
                    .build()
                    .map_err(failed)?;
                let conn = client.get_async_connection().await.map_err(failed)?;
                (Conn::Cluster(conn), Target::Urls(urls.clone()))
            }
            Topology::Single(url) => {
                let client = redis::Client::open(url.as_str()).map_err(failed)?;
                let manager = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.connect_timeout))
                    .set_response_timeout(Some(self.response_timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                let n = if self.durability.is_some() {
                    self.connections
                } else {
                    1
                };
                let mut conns = Vec::with_capacity(n);
                for _ in 0..n {
                    conns.push(
                        ConnectionManager::new_with_config(client.clone(), manager.clone())
                            .await
                            .map_err(failed)?,
                    );
                }
                (
                    Conn::Single(Arc::new(Managers::new(conns))),
                    Target::Urls(vec![url.clone()]),
                )
            }
            Topology::Sentinel { sentinels, service } => {
                let node = self.sentinel_node.as_deref().map(node_info).transpose()?;
                let client = SentinelClient::build(
                    sentinels.clone(),
                    service.clone(),
                    node,
                    SentinelServerType::Master,
                )
                .map_err(failed)?;
                let sentinel = Arc::new(SentinelConn::new(client, config));
                (Conn::Sentinel(sentinel.clone()), Target::Sentinel(sentinel))
            }
        };
        let watch = Arc::new(eviction::Watch::default());
        let policy = eviction::check(&conn, self.allow_eviction, &watch).await?;
        tokio::spawn(eviction::watch_forever(
            conn.clone(),
            self.allow_eviction,
            Arc::downgrade(&watch),
        ));
        let store = RedisStore {
            conn,
            scripts: Arc::new(Scripts::new()),
            waiters: Arc::new(Waiters::default()),
            invalidations: tokio::sync::broadcast::channel(1024).0,
            reloading: Arc::default(),
            durability: self.durability,
            watch,
            policy: Arc::from(policy),
            indexed,
        };
        store.load_scripts().await?;
        tokio::spawn(notify::subscribe(
            target,
            notify::Sinks {
                waiters: Arc::downgrade(&store.waiters),
                invalidations: store.invalidations.clone(),
            },
        ));
        Ok(store)
    }
}
