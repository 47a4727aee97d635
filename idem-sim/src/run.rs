//! Runs a scenario: one current-thread runtime, a client task per operation, a task per fault;
//! then reads, for the oracle, which operations still have a record. On the memory store the
//! runtime's clock is paused (it jumps to the next timer whenever every task waits, so a run of
//! minutes of virtual time takes milliseconds); on a real server ([`run_on`]) it is the real
//! clock, the scenario's times scaled down, and a watch records every stall of the runtime's
//! thread as the slow store it amounts to.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use idem_runtime::testing::{Condition, Fault, Op};
use idem_runtime::MemoryStore;
use tokio::time::Instant;

use crate::app::{path, Build, Generation, ACCOUNT_HEADER, REQ_HEADER};
use crate::history::Event;
use crate::lane::Lane;
use crate::scenario::{Backend, Endpoint, FaultPlan, KeyFrom, Operation, Scenario, SendPlan};
use crate::shared_store::SharedStore;
use crate::world::{Life, OpBehaviour, World};

/// What a run left for the oracle.
#[derive(Debug)]
pub struct Outcome {
    /// What happened, in order.
    pub events: Vec<crate::history::Event>,
    /// Per operation: whether a record of its key is still in the store at the end.
    pub recorded: Vec<bool>,
}

/// An operation as its client sends it: the scenario's, with its key, account and endpoint
/// resolved (an operation that reuses an earlier one's key takes that one's account and
/// endpoint too).
#[derive(Debug, Clone)]
pub struct Resolved {
    pub key: String,
    pub principal: u8,
    pub endpoint: usize,
    /// The operation before this one with its key (it waits for that one's record to expire).
    pub after: Option<usize>,
}

/// Resolves every operation of `s`.
pub fn resolve(s: &Scenario) -> Vec<Resolved> {
    let mut out: Vec<Resolved> = Vec::with_capacity(s.ops.len());
    for (i, op) in s.ops.iter().enumerate() {
        let resolved = match op.reuse {
            Some(j) if i > 0 => {
                // After the last operation before it with that key: one user of a key at a time.
                let key = out[usize::from(j) % i].key.clone();
                let last = (0..i).rev().find(|&k| out[k].key == key).unwrap_or(0);
                Resolved {
                    after: Some(last),
                    ..out[last].clone()
                }
            }
            _ => {
                let principal = op.principal % 3;
                let endpoint = usize::from(op.endpoint) % s.endpoints.len().max(1);
                // A key another account also uses, on a scoped endpoint (each account's own
                // operation); once per account.
                let shared = format!("shared-{endpoint}");
                let key = if op.shared_key
                    && s.endpoints[endpoint].scoped
                    && !out
                        .iter()
                        .any(|o| o.key == shared && o.principal == principal)
                {
                    shared
                } else {
                    format!("k-{i}")
                };
                Resolved {
                    key,
                    principal,
                    endpoint,
                    after: None,
                }
            }
        };
        out.push(resolved);
    }
    out
}

struct Running {
    world: Arc<World>,
    scenario: Scenario,
    store: SharedStore,
    endpoints: Vec<Endpoint>,
    lives: Vec<Arc<Life>>,
    generations: RefCell<Vec<Option<Rc<Generation>>>>,
    /// Per instance, the lasting faults now on (the last one applies).
    conditions: RefCell<Vec<Vec<(usize, Condition)>>>,
    done: Vec<tokio::sync::watch::Sender<bool>>,
    /// A healthy instance that only reads the store (what a key's record is).
    reader: Generation,
    /// The rotation under way, if any, and each instance's step of it.
    rotation: Option<crate::scenario::Rotation>,
    steps: RefCell<Vec<u8>>,
}

impl Running {
    fn generation(&self, i: usize) -> Option<Rc<Generation>> {
        self.generations.borrow().get(i).cloned().flatten()
    }

    fn condition(&self, i: usize) -> Condition {
        self.conditions.borrow()[i]
            .last()
            .map_or(Condition::Healthy, |(_, c)| *c)
    }

    /// The build instance `i` runs now.
    fn build(&self, i: usize) -> Build<'_> {
        Build {
            rotation: self.rotation.as_ref(),
            step: self.steps.borrow()[i],
        }
    }

    /// Restarts instance `i` (its process killed and gone `down_ms`) as the build it runs now.
    async fn restart(&self, i: usize, down_ms: u64) {
        let life = self.lives[i].clone();
        life.kill();
        if let Some(g) = self.generation(i) {
            g.faulty.crash();
        }
        self.generations.borrow_mut()[i] = None;
        self.world.history.push(Event::Fault {
            instance: i,
            what: "kill -9".to_owned(),
            at: self.world.now(),
            until: Some(self.world.now() + down_ms),
        });
        tokio::time::sleep(Duration::from_millis(down_ms)).await;
        life.restart();
        let g = Generation::start(
            &self.world,
            &life,
            i,
            &self.store,
            &self.scenario,
            self.build(i),
        )
        .await;
        self.generations.borrow_mut()[i] = Some(Rc::new(g));
        self.apply_condition(i);
    }

    fn apply_condition(&self, i: usize) {
        if let Some(g) = self.generation(i) {
            g.faulty.set_condition(self.condition(i));
        }
    }
}

/// Runs `scenario` on the memory store, in virtual time, and returns what happened.
pub fn run(scenario: &Scenario) -> Outcome {
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap_or_else(|e| panic!("a current-thread runtime: {e}"))
    });
    let store = SharedStore::new(MemoryStore::builder().sweep_every(None).build());
    system.block_on(run_in(scenario.clone(), store, None))
}

/// Runs `scenario` on `lane`'s real server, in real time, and returns what happened (the lane
/// is emptied first); an error when its store cannot be reached at all.
pub fn run_on(scenario: &Scenario, lane: &Lane) -> Result<Outcome, String> {
    if scenario.backend == Backend::Memory {
        return Ok(run(scenario));
    }
    lane.reset()
        .map_err(|e| format!("resetting the lane's servers: {e}"))?;
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("a current-thread runtime: {e}"))
    });
    system.block_on(async {
        let conn = lane.connect().await?;
        let mut outcome = run_in(scenario.clone(), conn.store, Some((lane, &conn.link))).await;
        if scenario
            .endpoints
            .iter()
            .any(|e| e.transactional || e.steps)
        {
            uncommitted_out(scenario, &mut outcome, &lane.committed().await?);
        }
        Ok(outcome)
    })
}

/// Takes the effects of transactional and `Steps` endpoints that did not commit out of
/// `outcome`: a transaction rolled back (or left open by a killed instance) had none.
fn uncommitted_out(scenario: &Scenario, outcome: &mut Outcome, committed: &[u64]) {
    let resolved = resolve(scenario);
    let transactional = |op: usize| {
        resolved.get(op).is_some_and(|r| {
            let e = &scenario.endpoints[r.endpoint];
            e.transactional || e.steps
        })
    };
    let gone: Vec<u64> = outcome
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Effect { id, op, .. } if transactional(*op) && !committed.contains(id) => {
                Some(*id)
            }
            _ => None,
        })
        .collect();
    outcome.events.retain(|e| match e {
        Event::Effect { id, .. } | Event::Returned { id, .. } => !gone.contains(id),
        _ => true,
    });
}

async fn run_in(
    scenario: Scenario,
    store: SharedStore,
    lane: Option<(&Lane, &crate::proxy::FaultProxy)>,
) -> Outcome {
    let resolved = resolve(&scenario);
    let behaviour = scenario
        .ops
        .iter()
        .map(|o| OpBehaviour {
            fails_first: o.fails_first,
            big: o.big,
        })
        .collect();
    let mut world = World::new(behaviour);
    world.effects_table = lane.and_then(|(l, _)| l.effects_table());
    let world = Arc::new(world);
    let n = usize::from(scenario.instances.clamp(1, 3));
    let lives: Vec<Arc<Life>> = (0..n).map(|_| Arc::new(Life::new())).collect();
    let rotation = scenario.rotation.clone();
    let steps: Vec<u8> = (0..n)
        .map(|i| rotation.as_ref().map_or(0, |r| r.step_of(i)))
        .collect();
    let mut generations = Vec::new();
    for (i, life) in lives.iter().enumerate() {
        let build = Build {
            rotation: rotation.as_ref(),
            step: steps[i],
        };
        let g = Generation::start(&world, life, i, &store, &scenario, build).await;
        generations.push(Some(Rc::new(g)));
    }
    let running = Rc::new(Running {
        world: world.clone(),
        scenario: scenario.clone(),
        store: store.clone(),
        endpoints: scenario.endpoints.clone(),
        lives,
        generations: RefCell::new(generations),
        conditions: RefCell::new(vec![Vec::new(); n]),
        done: (0..scenario.ops.len())
            .map(|_| tokio::sync::watch::channel(false).0)
            .collect(),
        // Step 2 reads under both secrets.
        reader: Generation::start(
            &world,
            &Arc::new(Life::new()),
            usize::MAX,
            &store,
            &scenario,
            Build {
                rotation: rotation.as_ref(),
                step: 2,
            },
        )
        .await,
        rotation,
        steps: RefCell::new(steps),
    });
    let start = Instant::now();
    for (id, fault) in scenario.faults.iter().enumerate() {
        actix_rt::spawn(inject(running.clone(), start, id, fault.clone()));
    }
    let watch = (scenario.backend != Backend::Memory)
        .then(|| actix_rt::spawn(crate::real_time::stalls(world.clone(), n)));
    let server_faults = async {
        let faults = scenario
            .server_faults
            .iter()
            .map(|f| crate::real_time::server_fault(&running.world, n, lane, start, f));
        futures_util::future::join_all(faults).await;
    };
    let clients: Vec<_> = scenario
        .ops
        .iter()
        .enumerate()
        .map(|(i, op)| {
            actix_rt::spawn(client(
                running.clone(),
                start,
                i,
                op.clone(),
                resolved[i].clone(),
            ))
        })
        .collect();
    let clients = async {
        for c in clients {
            let _ = c.await;
        }
    };
    futures_util::future::join(clients, server_faults).await;
    // A second for what the instances still do in the background (completions and clean-ups
    // tried again): a clean-up that does not land then is seen (the record it should have
    // deleted still holds its lease, if the run ended within it). In real time, a lease: the
    // longest they go on.
    let settle = match scenario.backend {
        Backend::Memory => 1000,
        _ => {
            scenario
                .endpoints
                .iter()
                .map(|e| e.lease_ms)
                .max()
                .unwrap_or(0)
                + 100
        }
    };
    tokio::time::sleep(Duration::from_millis(settle)).await;
    let recorded = recorded(&running, &resolved).await;
    world.close_all();
    if let Some(w) = watch {
        w.abort();
    }
    Outcome {
        events: world.history.events(),
        recorded,
    }
}

/// Whether each operation's key still has a record.
async fn recorded(running: &Running, resolved: &[Resolved]) -> Vec<bool> {
    let mut out = Vec::with_capacity(resolved.len());
    for r in resolved {
        out.push(has_record(running, r).await);
    }
    out
}

/// Whether the key of `r` has a record, read through the healthy reader.
async fn has_record(running: &Running, r: &Resolved) -> bool {
    let scoped = running.endpoints[r.endpoint].scoped;
    let principal = if scoped {
        format!("acct-{}", r.principal)
    } else {
        String::new()
    };
    let found = running.reader.idems[r.endpoint]
        .inspect(&format!("ep{}", r.endpoint), &principal, &r.key)
        .await;
    matches!(found, Ok(Some(_)))
}

/// Applies one planned fault at its time (and ends a lasting one).
async fn inject(running: Rc<Running>, start: Instant, id: usize, fault: FaultPlan) {
    let n = running.lives.len();
    let world = running.world.clone();
    let record = |instance: usize, what: String, until: Option<u64>| {
        world.history.push(Event::Fault {
            instance,
            what,
            at: world.now(),
            until,
        })
    };
    let (instance, at_ms) = match &fault {
        FaultPlan::Outage {
            instance, at_ms, ..
        }
        | FaultPlan::Slow {
            instance, at_ms, ..
        }
        | FaultPlan::Full {
            instance, at_ms, ..
        }
        | FaultPlan::LoseCompletion { instance, at_ms }
        | FaultPlan::FailCompletion { instance, at_ms }
        | FaultPlan::Crash {
            instance, at_ms, ..
        }
        | FaultPlan::FailDeletes {
            instance, at_ms, ..
        }
        | FaultPlan::Deploy { instance, at_ms } => (usize::from(*instance) % n, *at_ms),
    };
    tokio::time::sleep_until(start + Duration::from_millis(at_ms)).await;
    let lasting = match fault {
        FaultPlan::Outage { for_ms, .. } => Some((Condition::Down, for_ms, "outage".to_owned())),
        FaultPlan::Slow {
            for_ms, delay_ms, ..
        } => Some((
            Condition::Slow(Duration::from_millis(delay_ms)),
            for_ms,
            format!("slow {delay_ms} ms"),
        )),
        FaultPlan::Full { for_ms, .. } => Some((Condition::Full, for_ms, "full".to_owned())),
        FaultPlan::LoseCompletion { .. } | FaultPlan::FailCompletion { .. } => {
            let (fault, what) = match fault {
                FaultPlan::LoseCompletion { .. } => (Fault::LoseAnswer, "lose a completion"),
                _ => (Fault::Fail, "fail a completion"),
            };
            if let Some(g) = running.generation(instance) {
                g.faulty.inject(Op::Complete, fault, 1);
                record(instance, what.to_owned(), None);
            }
            None
        }
        FaultPlan::Crash { down_ms, .. } => {
            if running.lives[instance].alive() {
                running.restart(instance, down_ms).await;
            }
            None
        }
        FaultPlan::FailDeletes { count, .. } => {
            if let Some(g) = running.generation(instance) {
                g.faulty.inject(Op::Purge, Fault::Fail, usize::from(count));
                record(instance, format!("fail {count} deletes"), None);
            }
            None
        }
        FaultPlan::Deploy { .. } => {
            // One step on, if the fleet stays within two adjacent steps (a deploy that would
            // not is not made: the steps say to wait).
            let next = {
                let steps = running.steps.borrow();
                let next = steps[instance] + 1;
                let adjacent = steps.iter().all(|s| *s + 1 >= next);
                (running.rotation.is_some() && next <= 2 && adjacent).then_some(next)
            };
            if let (Some(next), true) = (next, running.lives[instance].alive()) {
                running.steps.borrow_mut()[instance] = next;
                record(instance, format!("deploy step {next}"), None);
                running.restart(instance, running.scenario.ms(100)).await;
            }
            None
        }
    };
    if let Some((condition, for_ms, what)) = lasting {
        running.conditions.borrow_mut()[instance].push((id, condition));
        running.apply_condition(instance);
        let open = world.open_fault(instance, what);
        tokio::time::sleep(Duration::from_millis(for_ms)).await;
        running.conditions.borrow_mut()[instance].retain(|(i, _)| *i != id);
        running.apply_condition(instance);
        world.close_fault(open);
    }
}

/// One operation's client: its sends, in order, each after the previous one's answer (and at
/// least its `Retry-After`).
async fn client(running: Rc<Running>, start: Instant, i: usize, op: Operation, resolved: Resolved) {
    match resolved.after {
        Some(j) => {
            // Its key's earlier operation done, and its record past any expiry.
            let mut rx = running.done[j].subscribe();
            let _ = rx.wait_for(|done| *done).await;
            let e = &running.endpoints[resolved.endpoint];
            let margin = e.ttl_ms + 3 * e.lease_ms + 2 * e.work_ms + running.scenario.ms(5_000);
            let spread = op.start_ms % running.scenario.ms(1000).max(1);
            tokio::time::sleep(Duration::from_millis(margin + spread)).await;
            // A completion a full store delayed (its renewals go on) expires later: wait for the
            // key to have no record (bounded).
            for _ in 0..240 {
                if !has_record(&running, &resolved).await {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(running.scenario.ms(500))).await;
            }
        }
        None => tokio::time::sleep_until(start + Duration::from_millis(op.start_ms)).await,
    }
    let mut retry_after = 0;
    for (k, send) in op.sends.iter().enumerate() {
        if k > 0 {
            let wait = send.after_ms.max(running.scenario.ms(retry_after * 1000));
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        let copies = (0..send.copies.max(1)).map(|c| {
            let instance = (usize::from(send.instance) + usize::from(c)) % running.lives.len();
            one(&running, i, &resolved, send, instance)
        });
        retry_after = futures_util::future::join_all(copies)
            .await
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(0);
    }
    running.done[i].send_replace(true);
}

/// One request: sent, and what came back recorded. Its `Retry-After`, if any.
async fn one(
    running: &Running,
    i: usize,
    r: &Resolved,
    send: &SendPlan,
    instance: usize,
) -> Option<u64> {
    let world = &running.world;
    let req = world.next_req();
    let variant = u8::from(send.changed_body);
    world.history.push(Event::Send {
        req,
        op: i,
        instance,
        at: world.now(),
        variant,
        doubled: send.doubled_scope,
    });
    let lost = |why: &str| {
        world.history.push(Event::Lost {
            req,
            at: world.now(),
            why: why.to_owned(),
        });
        None
    };
    let life = running.lives[instance].clone();
    let g = life.generation();
    let Some(generation) = running.generation(instance).filter(|_| life.alive()) else {
        return lost("refused: the instance is down");
    };
    let e = &running.endpoints[r.endpoint];
    let mut headers = vec![
        (REQ_HEADER, req.to_string()),
        ("content-type", "application/json".to_owned()),
    ];
    if send.doubled_scope {
        headers.push((ACCOUNT_HEADER, format!("acct-{}", (r.principal + 1) % 3)));
    }
    headers.push((ACCOUNT_HEADER, format!("acct-{}", r.principal)));
    let uri = match e.key_from {
        KeyFrom::Header => {
            headers.push(("idempotency-key", r.key.clone()));
            path(r.endpoint)
        }
        KeyFrom::Query => format!("{}?idempotency_key={}", path(r.endpoint), r.key),
    };
    let body = format!(
        "{{\"op\":{i},\"principal\":{},\"variant\":{variant}}}",
        r.principal
    );
    let call = generation.call(r.endpoint, &uri, &headers, Bytes::from(body));
    drop(generation);
    let hang_up = async {
        match send.hang_up_ms {
            Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            None => std::future::pending().await,
        }
    };
    // Biased: an answer, a hang-up and a kill ready in the same virtual instant are taken in
    // this order every time (one scenario, one history).
    tokio::select! {
        biased;
        answered = call => match answered {
            Some((status, body, retry_after)) => {
                world.history.push(Event::Answer {
                    req,
                    at: world.now(),
                    status,
                    body: String::from_utf8_lossy(&body).into_owned(),
                    retry_after,
                });
                if status == 429 {
                    let recorded = has_record(running, r).await;
                    world.history.push(Event::Inspected { req, op: i, at: world.now(), recorded });
                }
                retry_after
            }
            None => lost("no answer: the app failed"),
        },
        _ = hang_up => lost("the client hung up"),
        _ = life.killed(g) => lost("reset: the instance was killed"),
    }
}
