//! Real servers for runs on a real store: a private `redis-server` on a free loopback port (each
//! lane of a run has its own, so that a fault on it — `SIGSTOP`, `kill -9`, `maxmemory` — meets
//! only that lane's scenario), and the local PostgreSQL. Without them a run says so and stops;
//! under `CI` that is a failure.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether the servers a run on `backend` needs are here: `redis-server` on PATH, the local
/// PostgreSQL accepting connections; else what is missing.
pub fn available(backend: crate::scenario::Backend) -> Result<(), String> {
    use crate::scenario::Backend;
    match backend {
        Backend::Memory => Ok(()),
        Backend::Redis if redis_available() => Ok(()),
        Backend::Redis => Err("redis-server is not on PATH (install redis-server)".to_owned()),
        Backend::Postgres => {
            let config = pg_config();
            let reachable = pg_address(&config).is_ok_and(|a| {
                std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok()
            });
            match reachable {
                true => Ok(()),
                false => Err(format!("no PostgreSQL at `{config}`")),
            }
        }
    }
}

/// The host and port in a libpq connection string (loopback).
pub fn pg_address(config: &str) -> Result<std::net::SocketAddr, String> {
    let field = |name: &str| {
        config
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name))
    };
    let host = field("host=").unwrap_or("127.0.0.1");
    let port = field("port=").unwrap_or("5432");
    format!("{host}:{port}")
        .parse()
        .map_err(|e| format!("the PostgreSQL address in `{config}`: {e}"))
}

/// Whether `redis-server` is on PATH.
pub fn redis_available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The libpq connection string of the local PostgreSQL (`IDEM_PG` overrides).
pub fn pg_config() -> String {
    std::env::var("IDEM_PG")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".into())
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A private `redis-server` process, stopped when dropped.
pub struct RedisServer {
    /// Its loopback port.
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one on a free port, refusing writes when full (`noeviction`: what idem requires),
    /// with an append-only file (in memory, under `/dev/shm` where there is one): a `kill -9`
    /// loses nothing it acknowledged, as in production.
    pub fn start() -> std::io::Result<RedisServer> {
        let port = free_port()?;
        let shm = std::path::Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("idem-sim-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut s = RedisServer {
            port,
            dir,
            child: None,
        };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let log = std::fs::File::create(self.dir.join("redis.log"))?;
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
            .args(["--save", "", "--appendonly", "yes"])
            .args(["--maxmemory-policy", "noeviction"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).as_deref() != Some("PONG") {
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "redis-server on {} did not start",
                    self.port
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs one command with `redis-cli`: its trimmed output, or `None` if it failed.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        cli(self.port, args)
    }

    /// What pauses, resumes, fills and empties it without holding it (a command to a stopped
    /// server waits for it).
    pub fn handle(&self) -> Handle {
        Handle {
            port: self.port,
            pid: self.child.as_ref().map(Child::id),
        }
    }

    /// Empties it and lifts any memory limit: a fresh server for the next scenario (started
    /// again if a scenario left it dead).
    pub fn reset(&mut self) -> std::io::Result<()> {
        self.resume();
        if self.cli(&["PING"]).as_deref() != Some("PONG") {
            self.kill();
            self.spawn()?;
        }
        self.handle().unfill();
        self.cli(&["FLUSHALL"]);
        Ok(())
    }

    /// Its log (printed with a failing run's history).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Started again on the same port, with what its append-only file kept.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        self.spawn()
    }

    /// `SIGCONT`.
    pub fn resume(&self) {
        self.handle().resume();
    }
}

/// A running server's port and process, to signal and command it.
#[derive(Debug, Clone, Copy)]
pub struct Handle {
    port: u16,
    pid: Option<u32>,
}

impl Handle {
    /// `SIGSTOP`: it keeps its socket and answers nothing.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// `SIGCONT`.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Full: a `maxmemory` below what it holds, so that every write that needs memory gets
    /// `OOM` (`noeviction`).
    pub fn fill(&self) {
        cli(self.port, &["CONFIG", "SET", "maxmemory", "1"]);
    }

    /// Room again.
    pub fn unfill(&self) {
        cli(self.port, &["CONFIG", "SET", "maxmemory", "0"]);
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid {
            let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
        }
    }
}

/// `redis-cli` against the server on `port`, given 2 s (a stopped server answers nothing): its
/// trimmed output, or `None` if it failed.
fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("timeout")
        .args(["2", "redis-cli", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.starts_with("Could not connect")).then_some(text)
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume();
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
