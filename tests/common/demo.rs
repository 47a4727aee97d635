//! The `payments` example as a child process, for tests that drive the main job.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The running demo process; killed when dropped.
pub struct Demo(Child);

impl Demo {
    /// `kill -9`.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Sends SIGTERM (what a deploy sends) and waits up to `within` for the process to exit;
    /// returns its exit status, or `None` if it was still running (it is then killed).
    pub async fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill();
        None
    }
}

impl Demo {
    /// Waits up to `within` for the process to exit on its own; its exit status, or `None`.
    pub async fn exited(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `cargo test` builds the examples next to the test binaries: target/<profile>/examples/.
pub fn example_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current test binary");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let bin = profile_dir.join("examples").join(name);
    assert!(
        bin.exists(),
        "{} is missing: `cargo test` builds examples, run it through cargo",
        bin.display()
    );
    bin
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The demos with one HTTP contract: actix-web (`examples/payments`) and axum
/// (`examples/axum_payments`). The contract tests run against each.
pub const DEMOS: [&str; 2] = ["payments", "axum_payments"];

/// Starts `examples/payments` on a free port (memory store, or Redis at `redis_url`), its
/// handler taking `delay_ms`; returns it and its base URL once it listens.
pub async fn start_demo(redis_url: Option<&str>, delay_ms: u64) -> (Demo, String) {
    start_demo_of("payments", redis_url, delay_ms).await
}

/// [`start_demo`] for the demo `name` (one of [`DEMOS`]).
pub async fn start_demo_of(name: &str, redis_url: Option<&str>, delay_ms: u64) -> (Demo, String) {
    let port = free_port();
    let mut env = vec![("PAYMENT_DELAY_MS", delay_ms.to_string())];
    if let Some(url) = redis_url {
        env.push(("IDEM_REDIS_URL", url.to_string()));
    }
    let demo = start_example(name, port, &env).await;
    (demo, format!("http://127.0.0.1:{port}"))
}

/// The command that runs example `name` with `PORT=port` and `env`, and no inherited
/// `IDEM_REDIS_*`, `IDEM_ADMIN_TOKEN` or `IDEM_SECRET`.
fn example_command(name: &str, port: u16, env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(example_binary(name));
    cmd.env("PORT", port.to_string())
        .env_remove("IDEM_REDIS_URL")
        .env_remove("IDEM_REDIS_CLUSTER")
        .env_remove("IDEM_REDIS_ALLOW_EVICTION")
        .env_remove("IDEM_ADMIN_TOKEN")
        .env_remove("IDEM_SECRET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs example `name` with `PORT=port` and `env` until it exits (within `within`, or it is
/// killed and this panics); its exit status and what it wrote to stderr.
pub async fn run_example_to_exit(
    name: &str,
    port: u16,
    env: &[(&str, String)],
    within: Duration,
) -> (std::process::ExitStatus, String) {
    let mut child = example_command(name, port, env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start example {name}: {e}"));
    let until = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            return (status, err);
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("example {name} was still running after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts example `name` with `PORT=port` and `env` (and no inherited `IDEM_REDIS_*`), and
/// waits until it listens.
pub async fn start_example(name: &str, port: u16, env: &[(&str, String)]) -> Demo {
    start_example_with(name, port, env, Stdio::inherit()).await
}

/// Like [`start_example`], its stderr written to a file; returns the file's path.
pub async fn start_example_logged(
    name: &str,
    port: u16,
    env: &[(&str, String)],
) -> (Demo, std::path::PathBuf) {
    let log = std::env::temp_dir().join(format!("idem-{name}-{}-{port}.log", std::process::id()));
    let file = std::fs::File::create(&log).expect("a log file");
    (
        start_example_with(name, port, env, Stdio::from(file)).await,
        log,
    )
}

async fn start_example_with(name: &str, port: u16, env: &[(&str, String)], stderr: Stdio) -> Demo {
    let child = example_command(name, port, env)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("start example {name}: {e}"));
    let demo = Demo(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "example {name} did not start listening"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    demo
}

/// The demo's count of `endpoint` handler runs, read without an async runtime (a blocking
/// HTTP/1.0 `GET /stats` on loopback): for the testing kit's execution counter, a plain `Fn`.
pub fn executions_now(base: &str, endpoint: &str) -> u64 {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the demo");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(s, "GET /stats HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send GET /stats");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read /stats");
    let body = answer.split("\r\n\r\n").nth(1).expect("a body");
    let stats: serde_json::Value = serde_json::from_str(body).expect("stats JSON");
    stats["executions"][endpoint].as_u64().expect("a count")
}

/// `GET {base}/stats` → the demo's `executions` object (handler bodies run per endpoint).
pub async fn executions(base: &str) -> serde_json::Value {
    let stats: serde_json::Value = super::client()
        .get(format!("{base}/stats"))
        .send()
        .await
        .expect("GET /stats")
        .json()
        .await
        .expect("stats JSON");
    stats["executions"].clone()
}
