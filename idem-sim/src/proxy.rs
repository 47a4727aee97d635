//! A TCP fault proxy on loopback, between an app and its store (`tc netem` is not available
//! here): pass traffic, delay it, stall it (a blackhole that TCP would later recover from: bytes
//! are held, not lost, and delivered when the stall ends), lose the server's answers (each
//! connection that would carry one is reset instead: the command ran, its caller never hears),
//! or reset every open connection — now, or the first time the app sends bytes containing a
//! pattern (the body of a response being stored, say: a reset exactly on the first
//! completion). It also counts round trips: the times a client speaks again after its server
//! answered. Used by the simulator's lanes and by the workspace's tests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running proxy; its tasks end with the runtime that started it.
#[derive(Clone)]
pub struct FaultProxy {
    pub addr: SocketAddr,
    stalled: Arc<AtomicBool>,
    /// Each chunk waits this long (ms) before it is passed on.
    delay_ms: Arc<AtomicU64>,
    /// Answers are lost: a connection about to carry one is reset instead.
    losing: Arc<AtomicBool>,
    /// Bumped by `reset`: connections opened before the bump are torn down.
    generation: Arc<AtomicU64>,
    turns: Arc<AtomicU64>,
    /// Reset every connection the first time the app sends this; then disarmed.
    trap: Arc<Mutex<Option<Vec<u8>>>>,
    /// How many times the trap went off.
    sprung: Arc<AtomicU64>,
}

impl FaultProxy {
    /// Starts a proxy to `target` on a free loopback port (on the current tokio runtime).
    pub async fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let proxy = FaultProxy {
            addr: listener.local_addr().expect("addr"),
            stalled: Arc::default(),
            delay_ms: Arc::default(),
            losing: Arc::default(),
            generation: Arc::default(),
            turns: Arc::default(),
            trap: Arc::default(),
            sprung: Arc::default(),
        };
        let p = proxy.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = TcpStream::connect(target).await else {
                    continue;
                };
                let born = p.generation.load(Ordering::SeqCst);
                tokio::spawn(pipe(client, upstream, p.clone(), born));
            }
        });
        proxy
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// A libpq connection string through the proxy, from `config` (whose host and port are
    /// replaced).
    pub fn pg_config(&self, config: &str) -> String {
        let rest: Vec<&str> = config
            .split_whitespace()
            .filter(|kv| !kv.starts_with("host=") && !kv.starts_with("port="))
            .collect();
        format!(
            "host={} port={} {}",
            self.addr.ip(),
            self.addr.port(),
            rest.join(" ")
        )
    }

    /// Resets every open connection the first time the app sends bytes containing `pattern`;
    /// those bytes never reach the server.
    pub fn reset_on(&self, pattern: &[u8]) {
        *self.trap.lock().unwrap_or_else(|p| p.into_inner()) = Some(pattern.to_vec());
    }

    /// How many times a [`reset_on`](Self::reset_on) trap went off.
    pub fn sprung(&self) -> u64 {
        self.sprung.load(Ordering::SeqCst)
    }

    /// Whether `chunk` (to the server) springs the trap: if so it is disarmed and every
    /// connection reset.
    fn springs(&self, chunk: &[u8]) -> bool {
        let mut trap = self.trap.lock().unwrap_or_else(|p| p.into_inner());
        let hit = trap
            .as_ref()
            .is_some_and(|p| chunk.windows(p.len()).any(|w| w == p.as_slice()));
        if hit {
            *trap = None;
            self.sprung.fetch_add(1, Ordering::SeqCst);
            self.reset();
        }
        hit
    }

    /// Holds all traffic from now on (both directions) until `resume`.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    /// Delivers what was held and lets traffic flow again.
    pub fn resume(&self) {
        self.stalled.store(false, Ordering::SeqCst);
    }

    /// Every chunk, either way, waits `ms` before it is passed on (0: none).
    pub fn delay(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// From now on (`true`) until told otherwise, the server's answers are lost: a connection
    /// about to carry one is reset instead.
    pub fn lose_answers(&self, on: bool) {
        self.losing.store(on, Ordering::SeqCst);
    }

    /// Resets every connection open now; new ones pass.
    pub fn reset(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Round trips so far, over all connections: each time a client sent after reading an
    /// answer (or first).
    pub fn turns(&self) -> u64 {
        self.turns.load(Ordering::SeqCst)
    }

    fn dead(&self, born: u64) -> bool {
        self.generation.load(Ordering::SeqCst) != born
    }
}

/// Copies both ways until either side closes or the proxy resets this connection.
async fn pipe(mut client: TcpStream, mut upstream: TcpStream, proxy: FaultProxy, born: u64) {
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut up_buf, mut down_buf) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let mut answered = true;
    loop {
        let (chunk, to_upstream) = tokio::select! {
            r = client.read(&mut up_buf) => match r {
                Ok(n) if n > 0 => (n, true),
                _ => break,
            },
            r = upstream.read(&mut down_buf) => match r {
                Ok(n) if n > 0 => (n, false),
                _ => break,
            },
            // Wake up now and then to notice a reset even on an idle connection.
            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                if proxy.dead(born) { break; }
                continue;
            }
        };
        while proxy.stalled.load(Ordering::SeqCst) && !proxy.dead(born) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let delay = proxy.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if !to_upstream && proxy.losing.load(Ordering::SeqCst) {
            break;
        }
        if proxy.dead(born) || (to_upstream && proxy.springs(&up_buf[..chunk])) {
            break;
        }
        if to_upstream && answered {
            proxy.turns.fetch_add(1, Ordering::SeqCst);
        }
        answered = !to_upstream;
        let written = if to_upstream {
            upstream.write_all(&up_buf[..chunk]).await
        } else {
            client.write_all(&down_buf[..chunk]).await
        };
        if written.is_err() {
            break;
        }
    }
    // Linger 0: both sides see a reset, as after a restarted peer or a dropped path.
    let _ = client.set_zero_linger();
    let _ = upstream.set_zero_linger();
}
