//! The load benchmark's client: our own bounded keep-alive HTTP/1.1 load (fixed connections,
//! fixed duration, at most `MAX_REQUESTS_PER_CONN` requests each, loopback only) for the three
//! scenarios, and the row each run prints.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Never more than this many requests per connection, whatever the duration.
const MAX_REQUESTS_PER_CONN: usize = 2_000_000;

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Scenario {
    NewKey,
    Replay,
    Storm,
}

impl Scenario {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::NewKey => "new key",
            Scenario::Replay => "replay",
            Scenario::Storm => "same-key storm",
        }
    }

    fn key(self, run: u64, conn: usize, i: usize, started: Instant) -> String {
        match self {
            Scenario::NewKey => format!("n-{run}-{conn}-{i}"),
            Scenario::Replay => format!("replay-{run}"),
            Scenario::Storm => format!("storm-{run}-{}", started.elapsed().as_millis() / 10),
        }
    }
}

#[derive(Default)]
struct Outcome {
    latencies_us: Vec<u32>,
    fresh: usize,
    replayed: usize,
    conflict: usize,
    other: usize,
}

/// Where and what one measured run sends.
#[derive(Clone, Copy)]
struct Run {
    addr: SocketAddr,
    path: &'static str,
    scenario: Scenario,
    id: u64,
}

/// One keep-alive connection sending requests back to back until `deadline`.
async fn connection(
    Run {
        addr,
        path,
        scenario,
        id: run,
    }: Run,
    conn: usize,
    body: &[u8],
    deadline: Instant,
    max_requests: usize,
) -> Outcome {
    let mut out = Outcome::default();
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return out;
    };
    let _ = s.set_nodelay(true);
    let started = Instant::now();
    let mut buf = vec![0u8; 16 * 1024];
    for i in 0..max_requests.min(MAX_REQUESTS_PER_CONN) {
        if Instant::now() >= deadline {
            break;
        }
        let key = scenario.key(run, conn, i, started);
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n\
             Idempotency-Key: {key}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        let t = Instant::now();
        if s.write_all(&req).await.is_err() {
            break;
        }
        let Some((status, replayed)) = read_response(&mut s, &mut buf).await else {
            break;
        };
        out.latencies_us
            .push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
        match (status, replayed) {
            (201, false) => out.fresh += 1,
            (201, true) => out.replayed += 1,
            (409, _) => out.conflict += 1,
            _ => out.other += 1,
        }
    }
    out
}

/// Reads one response; returns its status and whether it was a replay.
async fn read_response(s: &mut TcpStream, buf: &mut [u8]) -> Option<(u16, bool)> {
    let mut len = 0;
    let head_end = loop {
        let n = s.read(&mut buf[len..]).await.ok()?;
        if n == 0 {
            return None;
        }
        len += n;
        if let Some(p) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if len == buf.len() {
            return None;
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let status: u16 = head.get(9..12)?.parse().ok()?;
    let mut content_length = 0usize;
    let mut replayed = false;
    for line in head.lines() {
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            content_length = v.trim().parse().ok()?;
        } else if lower.starts_with("idempotent-replayed:") {
            replayed = true;
        }
    }
    let mut have = len - head_end;
    while have < content_length {
        let n = s.read(buf).await.ok()?;
        if n == 0 {
            return None;
        }
        have += n;
    }
    Some((status, replayed))
}

pub(crate) struct Row {
    pub(crate) scenario: &'static str,
    pub(crate) target: &'static str,
    pub(crate) rps: f64,
    pub(crate) p50: u32,
    pub(crate) p99: u32,
    pub(crate) ratio: Option<f64>,
    /// Redis commands, or PostgreSQL round trips, per request.
    pub(crate) store_per_req: Option<f64>,
    pub(crate) mix: String,
}

pub(crate) async fn drive(
    addr: SocketAddr,
    path: &'static str,
    scenario: Scenario,
    run: u64,
    conns: usize,
    secs: f64,
    body: &[u8],
) -> (f64, u32, u32, usize, String) {
    let target = Run {
        addr,
        path,
        scenario,
        id: run,
    };
    if scenario == Scenario::Replay {
        // Complete the key first, so every measured request is a replay.
        let deadline = Instant::now() + Duration::from_secs(10);
        let _ = connection(target, 0, body, deadline, 1).await;
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..conns)
        .map(|c| {
            let body = body.to_vec();
            tokio::task::spawn_local(async move {
                connection(target, c, &body, deadline, usize::MAX).await
            })
        })
        .collect();
    let mut all = Outcome::default();
    for t in tasks {
        let o = t.await.expect("connection task");
        all.latencies_us.extend(o.latencies_us);
        all.fresh += o.fresh;
        all.replayed += o.replayed;
        all.conflict += o.conflict;
        all.other += o.other;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = all.latencies_us.len();
    all.latencies_us.sort_unstable();
    let pct = |p: f64| {
        all.latencies_us
            .get(((n as f64 * p) as usize).min(n.saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let mix = format!(
        "{} fresh / {} replayed / {} 409 / {} other",
        all.fresh, all.replayed, all.conflict, all.other
    );
    (n as f64 / elapsed, pct(0.50), pct(0.99), n, mix)
}
