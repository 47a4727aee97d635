//! Three Redis Sentinels on loopback watching one master (`mymaster`, quorum 2, a master is
//! down after 1 s), stopped when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The service name the sentinels monitor.
pub const SERVICE: &str = "mymaster";

pub struct Sentinels {
    pub ports: Vec<u16>,
    children: Vec<Child>,
    dir: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Sentinels {
    /// Three sentinels on `master_port`; returns once they know the master's `replicas` replicas
    /// and each other.
    pub fn start(master_port: u16, replicas: usize) -> Sentinels {
        Self::start_with_auth(master_port, replicas, None)
    }

    /// Like [`start`](Self::start), for data nodes that need `password`.
    pub fn start_with_auth(master_port: u16, replicas: usize, password: Option<&str>) -> Sentinels {
        let auth = password
            .map(|p| format!("sentinel auth-pass {SERVICE} {p}\n"))
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!(
            "idem-sentinel-{}-{master_port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("sentinel dir");
        let mut ports = Vec::new();
        let mut children = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {}\n\
                     sentinel monitor {SERVICE} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {SERVICE} 1000\n\
                     sentinel failover-timeout {SERVICE} 5000\n\
                     sentinel parallel-syncs {SERVICE} 1\n{auth}",
                    dir.display()
                ),
            )
            .expect("write sentinel.conf");
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start a sentinel");
            ports.push(port);
            children.push(child);
        }
        let s = Sentinels {
            ports,
            children,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        for &p in &s.ports {
            loop {
                let known = cli(p, &["SENTINEL", "master", SERVICE]).unwrap_or_default();
                let field = |name: &str| {
                    let mut lines = known.lines();
                    while let Some(l) = lines.next() {
                        if l == name {
                            return lines.next().and_then(|v| v.parse::<usize>().ok());
                        }
                    }
                    None
                };
                if field("num-slaves") == Some(replicas) && field("num-other-sentinels") == Some(2)
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "sentinel {p} did not discover the replicas and the other sentinels"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        s
    }

    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// The master's port as the first sentinel names it.
    pub fn master_port(&self) -> Option<u16> {
        let out = cli(
            self.ports[0],
            &["SENTINEL", "get-master-addr-by-name", SERVICE],
        )?;
        out.lines().nth(1)?.trim().parse().ok()
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
