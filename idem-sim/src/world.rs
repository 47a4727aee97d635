//! What every instance of a run shares: the history, the virtual clock's origin, the effects
//! handlers have, and what the handler of each operation does (from the scenario). `Send`: the
//! tower layer's inner service runs in spawned tasks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::effects::Effects;
use crate::history::{Event, History};

/// How an operation's handler behaves.
#[derive(Debug, Clone)]
pub struct OpBehaviour {
    /// Its first runs answer 503 before any effect.
    pub fails_first: u8,
    /// Its response is padded past a small `max_response_bytes`.
    pub big: bool,
}

/// One request as its handler reads it.
pub struct Run {
    /// The instance it reached.
    pub instance: usize,
    /// Its id (`x-sim-req`).
    pub req: u64,
    /// Its operation, account and body variant (from its body).
    pub op: usize,
    pub principal: u64,
    pub variant: u64,
    /// The downstream key its `IdempotencyContext` hands it (none when it runs unprotected).
    pub downstream: Option<String>,
}

/// The shared state of one run.
#[derive(Debug)]
pub struct World {
    /// What happened.
    pub history: History,
    start: Instant,
    next_effect: AtomicU64,
    next_req: AtomicU64,
    next_fault: AtomicU64,
    runs: Mutex<HashMap<usize, u32>>,
    /// Per operation, from the scenario.
    pub behaviour: Vec<OpBehaviour>,
    /// Lasting faults on now, by id: (instance, what, since).
    open: Mutex<HashMap<u64, (usize, String, u64)>>,
    /// The table committed effects are written to, on PostgreSQL (transactional endpoints).
    pub effects_table: Option<String>,
}

/// Whether an instance runs, and which incarnation of it: a killed process's handlers never
/// take another step (a `kill -9`), and its restart is a new generation.
#[derive(Debug)]
pub struct Life {
    generation: AtomicU32,
    alive: AtomicBool,
    killed: tokio::sync::watch::Sender<u32>,
}

impl Default for Life {
    fn default() -> Self {
        Life::new()
    }
}

impl Life {
    /// A running instance, generation 0.
    pub fn new() -> Self {
        Life {
            generation: AtomicU32::new(0),
            alive: AtomicBool::new(true),
            killed: tokio::sync::watch::channel(0).0,
        }
    }

    /// The generation running now.
    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Whether generation `g` is still the one running.
    pub fn is(&self, g: u32) -> bool {
        self.alive.load(Ordering::SeqCst) && self.generation() == g
    }

    /// Whether the instance runs (any generation).
    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Killed: nothing of the running generation moves again.
    pub fn kill(&self) {
        self.alive.store(false, Ordering::SeqCst);
        let g = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.killed.send_replace(g);
    }

    /// Returns once generation `g` is killed.
    pub async fn killed(&self, g: u32) {
        let mut rx = self.killed.subscribe();
        let _ = rx.wait_for(|now| *now != g).await;
    }

    /// Restarted: a new generation runs.
    pub fn restart(&self) {
        self.alive.store(true, Ordering::SeqCst);
    }
}

impl World {
    /// The world of a run of these operations, its clock starting now.
    pub fn new(behaviour: Vec<OpBehaviour>) -> Self {
        World {
            history: History::default(),
            start: Instant::now(),
            next_effect: AtomicU64::new(1),
            next_req: AtomicU64::new(1),
            next_fault: AtomicU64::new(1),
            runs: Mutex::default(),
            behaviour,
            open: Mutex::default(),
            effects_table: None,
        }
    }

    /// A lasting fault `what` on `instance` begins now; recorded once it ends
    /// ([`close_fault`](Self::close_fault)) with the time it really ended — in real time
    /// later than planned when the thread was late — or when the run ends.
    pub fn open_fault(&self, instance: usize, what: String) -> u64 {
        let id = self.next_fault.fetch_add(1, Ordering::SeqCst);
        let at = self.now();
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (instance, what, at));
        id
    }

    /// The lasting fault `id` ends now.
    pub fn close_fault(&self, id: u64) {
        let open = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Some((instance, what, at)) = open {
            self.history.push(Event::Fault {
                instance,
                what,
                at,
                until: Some(self.now()),
            });
        }
    }

    /// Every lasting fault still on ends now (the run is over).
    pub fn close_all(&self) {
        let ids: Vec<u64> = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        for id in ids {
            self.close_fault(id);
        }
    }

    /// Virtual ms since the start.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// A new request id.
    pub fn next_req(&self) -> u64 {
        self.next_req.fetch_add(1, Ordering::SeqCst)
    }

    /// The handler of every endpoint, for `run` on `life`'s generation `g`: working `work` in
    /// all and having its effect half-way. A killed generation never returns (its process is
    /// gone). Its answer: 503 on an operation's first `fails_first` runs (before any effect),
    /// else 201 with the operation, the client's account, the effect and the body's variant —
    /// padded when the operation's response is big. With a writer the effect is what it
    /// writes (in a transaction, as a step): one that fails is not had (the handler answers
    /// 500), and a step that already ran answers its recorded effect.
    pub async fn handle<W: Effects>(
        &self,
        life: &Life,
        g: u32,
        run: Run,
        work: Duration,
        write: Option<W>,
    ) -> (u16, Vec<u8>) {
        let Run {
            instance,
            req,
            op,
            principal,
            variant,
            downstream,
        } = run;
        let began = self.now();
        let stop = || std::future::pending::<(u16, Vec<u8>)>();
        if !life.is(g) {
            return stop().await;
        }
        self.history.push(Event::Ran {
            op,
            req,
            instance,
            at: began,
            downstream,
        });
        let behaviour = self.behaviour.get(op).cloned().unwrap_or(OpBehaviour {
            fails_first: 0,
            big: false,
        });
        let nth = {
            let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
            let n = runs.entry(op).or_default();
            *n += 1;
            *n
        };
        let failing = nth <= u32::from(behaviour.fails_first);
        let fails_late = write.as_ref().is_some_and(|w| w.fails_late());
        if failing && !fails_late {
            return (503, b"{\"error\":\"try again\"}".to_vec());
        }
        tokio::time::sleep(work / 2).await;
        if !life.is(g) {
            return stop().await;
        }
        let id = self.next_effect.fetch_add(1, Ordering::SeqCst);
        let effect = Event::Effect {
            id,
            op,
            req,
            instance,
            began,
            at: self.now(),
            variant,
        };
        let id = match write {
            None => {
                self.history.push(effect);
                id
            }
            Some(write) => match write.write(self, effect, failing).await {
                Ok(id) => id,
                Err(503) => return (503, b"{\"error\":\"try again\"}".to_vec()),
                Err(status) => {
                    return (
                        status,
                        b"{\"error\":\"the effect was not written\"}".to_vec(),
                    )
                }
            },
        };
        if !life.is(g) {
            return stop().await;
        }
        tokio::time::sleep(work - work / 2).await;
        if !life.is(g) {
            return stop().await;
        }
        self.history.push(Event::Returned { id, at: self.now() });
        let pad = if behaviour.big {
            "x".repeat(600)
        } else {
            String::new()
        };
        let body = format!(
            "{{\"op\":{op},\"principal\":{principal},\"effect\":{id},\"variant\":{variant},\"pad\":\"{pad}\"}}"
        );
        (201, body.into_bytes())
    }
}
