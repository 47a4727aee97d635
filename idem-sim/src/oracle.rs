//! The oracle: what a run's history must satisfy.
//!
//! - **At most one effect per operation**, unless one of the at-least-once windows that
//!   docs/failure-behaviour.md names ([`Window`]) explains each further one, from the faults
//!   the history records;
//! - **every success is that operation's response**: a 2xx carries an effect of this operation,
//!   for this client's account (never another operation's or another account's result) — or the
//!   `response-not-kept` marker of an operation whose response was too large to keep;
//! - **a 422 only for another payload**: some earlier send of the operation had another body;
//! - **a refused operation leaves no record**: one whose every request was refused before it
//!   ran (429, 400) holds no record at the end (unless its instance's deletes were failed);
//! - **one downstream key per operation**: every run of an operation is handed the downstream
//!   key the run before it was, while that run's record can still be there (across a rotation
//!   of the app secret, a run under the other secret's key would reach a processor as another
//!   operation).

use std::collections::HashMap;

use crate::history::Event;
use crate::run::{Outcome, Resolved};
use crate::scenario::{Guarantee, Scenario};
pub use crate::windows::Window;
use crate::windows::{explain, Effect, Faults, Lasting, Sent};

/// A broken rule, with the history's evidence.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation(pub String);

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a run that kept every rule did, for the long run's table.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub operations: u64,
    pub requests: u64,
    pub effects: u64,
    /// Effects beyond an operation's first, by the window that explained them.
    pub windows: HashMap<Window, u64>,
    /// Answers by status.
    pub statuses: HashMap<u16, u64>,
    pub lost: u64,
    /// Operations by option (`guarantee=Strict`, `adapter=Tower`…) and faults by kind.
    pub by_option: std::collections::BTreeMap<String, u64>,
}

impl Counts {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Counts) {
        self.operations += other.operations;
        self.requests += other.requests;
        self.effects += other.effects;
        self.lost += other.lost;
        for (w, n) in &other.windows {
            *self.windows.entry(*w).or_default() += n;
        }
        for (s, n) in &other.statuses {
            *self.statuses.entry(*s).or_default() += n;
        }
        for (o, n) in &other.by_option {
            *self.by_option.entry(o.clone()).or_default() += n;
        }
    }
}

/// Checks `outcome` of `scenario` (its operations resolved as `resolved`).
pub fn check(
    scenario: &Scenario,
    resolved: &[Resolved],
    outcome: &Outcome,
) -> Result<Counts, Violation> {
    let timeout = scenario.store_timeout_ms();
    let mut counts = Counts {
        operations: scenario.ops.len() as u64,
        ..Counts::default()
    };
    let mut sent: HashMap<u64, Sent> = HashMap::new();
    let mut effects: Vec<Effect> = Vec::new();
    let mut lasting: Vec<Lasting> = Vec::new();
    let mut crashes: Vec<(usize, u64)> = Vec::new();
    // Scripted completion failures, by instance and time injected (each fails one try).
    let mut failures: Vec<(usize, u64)> = Vec::new();
    let mut answers: Vec<(u64, u64, u16, &str)> = Vec::new();
    let mut lost_at: Vec<(u64, u64)> = Vec::new();
    let mut inspected: Vec<(u64, usize, u64)> = Vec::new();
    let mut ran: Vec<(usize, u64, u64, Option<&str>)> = Vec::new();
    // Scripted delete failures, by instance and time injected.
    let mut deletes_failed: Vec<(usize, u64)> = Vec::new();
    for e in &outcome.events {
        match e {
            Event::Send {
                req,
                op,
                instance,
                at,
                variant,
                ..
            } => {
                counts.requests += 1;
                sent.insert(
                    *req,
                    Sent {
                        op: *op,
                        instance: *instance,
                        at: *at,
                        variant: *variant,
                    },
                );
            }
            Event::Answer {
                req,
                at,
                status,
                body,
                ..
            } => {
                *counts.statuses.entry(*status).or_default() += 1;
                if *status == 500 {
                    // Which problem (a 500 is never a client's fault: the table names it).
                    let kind = body
                        .split("urn:idem:problem:")
                        .nth(1)
                        .and_then(|t| t.split('"').next())
                        .unwrap_or("not a problem");
                    // (An internal error says which in its detail.)
                    let detail = match kind {
                        "internal" => body
                            .split("\"detail\":\"")
                            .nth(1)
                            .and_then(|t| t.split('"').next())
                            .map(|d| format!(": {d}"))
                            .unwrap_or_default(),
                        _ => String::new(),
                    };
                    *counts
                        .by_option
                        .entry(format!("answer 500={kind}{detail}"))
                        .or_default() += 1;
                }
                answers.push((*req, *at, *status, body));
            }
            Event::Lost { req, why, at } => {
                counts.lost += 1;
                lost_at.push((*req, *at));
                // Refused at the door of a dead instance: it reached no store, nor handler.
                if why.starts_with("refused") {
                    sent.remove(req);
                }
            }
            Event::Inspected {
                req,
                op,
                at,
                recorded: true,
            } => inspected.push((*req, *op, *at)),
            Event::Inspected { .. } => {}
            Event::Effect {
                id,
                op,
                req,
                instance,
                began,
                variant,
                ..
            } => effects.push(Effect {
                id: *id,
                op: *op,
                req: *req,
                instance: *instance,
                began: *began,
                returned: None,
                variant: *variant,
            }),
            Event::Ran {
                op,
                req,
                at,
                downstream,
                ..
            } => {
                if !sent.contains_key(req) {
                    *counts
                        .by_option
                        .entry("completer=re-sent a request".into())
                        .or_default() += 1;
                }
                ran.push((*op, *req, *at, downstream.as_deref()))
            }
            // A processor charged under a step's downstream key: one key per operation too.
            Event::Charged {
                op, req, at, key, ..
            } => ran.push((*op, *req, *at, Some(key.as_str()))),
            Event::Returned { id, at } => {
                if let Some(e) = effects.iter_mut().find(|e| e.id == *id) {
                    e.returned = Some(*at);
                }
            }
            Event::Fault {
                instance,
                what,
                at,
                until,
            } => {
                if what == "kill -9" {
                    crashes.push((*instance, *at));
                } else if what.starts_with("fail ") && what.ends_with(" deletes") {
                    deletes_failed.push((*instance, *at));
                } else if what == "fail a completion" {
                    failures.push((*instance, *at));
                } else if let Some(until) = until {
                    if *instance == 0 && what.starts_with("stall ") {
                        *counts
                            .by_option
                            .entry("measured=runtime stall".into())
                            .or_default() += 1;
                    } else if what.ends_with(", measured") {
                        *counts
                            .by_option
                            .entry("measured=slow store call".into())
                            .or_default() += 1;
                    }
                    lasting.push(Lasting {
                        instance: *instance,
                        kind: what.clone(),
                        at: *at,
                        until: *until,
                        timeout,
                    });
                }
            }
        }
    }
    counts.effects = effects.len() as u64;
    // Requests whose `begin` took no record: held off by another's (a 409 in-progress, a 202,
    // a 422), refused before it (400), or refused by a full store — or may have taken none: a
    // store error before any handler ran (the begin failed, or landed unheard: a story in
    // which it failed is as consistent).
    let ran_reqs: std::collections::HashSet<u64> = ran.iter().map(|(_, req, ..)| *req).collect();
    let held_off: std::collections::HashSet<u64> = answers
        .iter()
        .filter(|(req, _, status, body)| {
            matches!(status, 202 | 422 | 400)
                || (*status == 409 && body.contains("in-progress"))
                || (*status == 503 && body.contains("store is full"))
                || (*status == 503 && body.contains("store-unavailable") && !ran_reqs.contains(req))
        })
        .map(|(req, ..)| *req)
        .collect();
    let unprotected: std::collections::HashSet<u64> = ran
        .iter()
        .filter(|(_, _, _, downstream)| downstream.is_none())
        .map(|(_, req, ..)| *req)
        .collect();
    let mut ended: HashMap<u64, u64> = answers.iter().map(|(req, at, ..)| (*req, *at)).collect();
    ended.extend(lost_at.iter().map(|(req, at)| (*req, *at)));
    let completer_runs: Vec<(usize, u64)> = ran
        .iter()
        .filter(|(_, req, ..)| !sent.contains_key(req))
        .map(|(op, _, at, _)| (*op, *at))
        .collect();
    let mut ran_at: HashMap<u64, u64> = HashMap::new();
    for (_, req, at, _) in &ran {
        let first = ran_at.entry(*req).or_insert(*at);
        *first = (*first).min(*at);
    }
    tally(scenario, resolved, &mut counts);
    let endpoint = |op: usize| &scenario.endpoints[resolved[op].endpoint];

    // At most one effect per operation, each further one explained by a window.
    let mut by_op: HashMap<usize, Vec<&Effect>> = HashMap::new();
    for e in &effects {
        by_op.entry(e.op).or_default().push(e);
    }
    for (op, list) in &by_op {
        let e = endpoint(*op);
        for (k, later) in list.iter().enumerate().skip(1) {
            let window = list[..k].iter().find_map(|earlier| {
                let faults = Faults {
                    lasting: &lasting,
                    crashes: &crashes,
                    failures: &failures,
                    timeout,
                    held_off: &held_off,
                    ran_at: &ran_at,
                    unprotected: &unprotected,
                    ended: &ended,
                    completer_runs: &completer_runs,
                };
                explain(e, earlier, later, &sent, faults)
            });
            match window {
                Some(w) => *counts.windows.entry(w).or_default() += 1,
                None => {
                    return Err(Violation(format!(
                        "operation {op} ran {} times: effect {} (request {}, instance {}, at {} ms) after effect {} (request {}, instance {}, at {} ms), and no documented window explains it",
                        list.len(),
                        later.id,
                        later.req,
                        later.instance,
                        later.began,
                        list[0].id,
                        list[0].req,
                        list[0].instance,
                        list[0].began
                    )))
                }
            }
        }
    }

    // One downstream key per operation, while the record of its last run can be there: a record
    // lives at least `ttl` from the `begin` that made or took it, which came after its send.
    let mut last: HashMap<usize, (u64, &str, u64)> = HashMap::new();
    for (op, req, at, downstream) in &ran {
        let Some(key) = downstream else { continue };
        let since = sent.get(req).map_or(*at, |s| s.at);
        if let Some((before, theirs, their_req)) = last.get(op) {
            if theirs != key && *at < before + endpoint(*op).ttl_ms {
                return Err(Violation(format!(
                    "operation {op} ran under two downstream keys: request {their_req} was handed {theirs}, request {req} (at {at} ms) {key}, while the record of the run before could still be there"
                )));
            }
        }
        last.insert(*op, (since, key, *req));
    }

    // Every record opens: no simulated app removes a sealing key, so a 500 record-unreadable
    // means one instance wrote what another cannot read (a rotation's or an adoption's step).
    if let Some((req, _, _, body)) = answers
        .iter()
        .find(|(_, _, status, body)| *status == 500 && body.contains("record-unreadable"))
    {
        let op = sent.get(req).map_or(usize::MAX, |s| s.op);
        return Err(Violation(format!(
            "request {req} of operation {op} got 500 record-unreadable: {body}"
        )));
    }

    // Every answer: a success is this operation's, for its payload (and, under `strict`, the
    // same bytes and status every time), a 422 only for another payload.
    let mut first_answer: HashMap<u64, (u16, &str)> = HashMap::new();
    for (req, at, status, body) in &answers {
        let Some(s) = sent.get(req) else { continue };
        let op = s.op;
        if (200..300).contains(status) && *status != 202 {
            let asked = Asked {
                op,
                req: *req,
                variant: s.variant,
            };
            if let Some(effect) = success(asked, resolved, scenario, &by_op, *status, body)? {
                let strict =
                    scenario.endpoints[resolved[op].endpoint].guarantee == Guarantee::Strict;
                let first = *first_answer.entry(effect).or_insert((*status, body));
                if strict && first != (*status, *body) {
                    return Err(Violation(format!(
                        "request {req} of operation {op} got effect {effect} as {status} {body}, first answered as {} {}: a strict replay is byte for byte",
                        first.0, first.1
                    )));
                }
            }
        }
        if *status == 422 {
            let other = sent
                .values()
                .any(|o| o.op == op && o.variant != s.variant && o.at <= *at);
            if !other {
                return Err(Violation(format!(
                    "request {req} of operation {op} got 422 though every send of it had the same payload"
                )));
            }
        }
    }

    // A request refused for its admission limit leaves no record: none is there right after
    // the 429, unless another request of the operation had been sent (it may hold the key).
    for (req, op, at) in &inspected {
        let others = sent
            .iter()
            .any(|(other, s)| other != req && s.op == *op && s.at <= *at);
        // (A refusal's delete that the store refused leaves the record: a failed delete.)
        let unreachable = sent.get(req).is_some_and(|s| {
            crate::windows::store_may_fail(&lasting, s.instance, s.at, *at, timeout)
                || deletes_failed
                    .iter()
                    .any(|(i, when)| *i == s.instance && when <= at)
        });
        if !others && !unreachable {
            return Err(Violation(format!(
                "request {req} of operation {op} was refused for its admission limit (429) and left a record of its key"
            )));
        }
    }

    // A refused operation leaves no record.
    for (op, r) in resolved.iter().enumerate() {
        let mine: Vec<&(u64, u64, u16, &str)> = answers
            .iter()
            .filter(|(req, ..)| sent.get(req).is_some_and(|s| s.op == op))
            .collect();
        let sends = sent.values().filter(|s| s.op == op).count();
        let refused = !mine.is_empty()
            && mine.len() == sends
            && mine
                .iter()
                .all(|(_, _, status, _)| matches!(status, 429 | 400))
            && !by_op.contains_key(&op);
        // A refusal's clean-up is tried again while its lease is held: only a store
        // unreachable from the refusal until its lease ended may leave its record
        // (docs/failure-behaviour.md, the admission row).
        let lease = scenario.endpoints[r.endpoint].lease_ms;
        let troubled = sent.iter().filter(|(_, s)| s.op == op).any(|(req, s)| {
            let answered = answers
                .iter()
                .find(|(r, ..)| r == req)
                .map_or(u64::MAX, |(_, at, ..)| *at);
            let deletes = deletes_failed
                .iter()
                .any(|(i, when)| *i == s.instance && *when <= answered);
            deletes
                || lasting.iter().any(|l| {
                    l.instance == s.instance
                        && l.down()
                        && l.at <= answered
                        && s.at <= l.until
                        && l.until.saturating_add(timeout) >= s.at + lease / 2
                })
        });
        let reused = resolved.iter().any(|o| o.key == r.key && o.after.is_some());
        if refused && !troubled && !reused && outcome.recorded.get(op) == Some(&true) {
            return Err(Violation(format!(
                "operation {op} was only ever refused (429/400) yet a record of its key is left"
            )));
        }
    }
    Ok(counts)
}

/// Counts the scenario's operations by option and its faults by kind.
fn tally(scenario: &Scenario, resolved: &[Resolved], counts: &mut Counts) {
    let mut add = |k: String| *counts.by_option.entry(k).or_default() += 1;
    for (op, r) in scenario.ops.iter().zip(resolved) {
        let e = &scenario.endpoints[r.endpoint];
        add(format!("guarantee={:?}", e.guarantee));
        add(format!("on_conflict={:?}", e.on_conflict));
        add(format!(
            "on_store_error={}",
            if e.proceed { "proceed" } else { "reject" }
        ));
        add(format!("key={:?}", e.key_from));
        add(format!(
            "scope={}",
            if e.scoped { "header" } else { "unscoped" }
        ));
        add(format!(
            "admission={}",
            if e.admission.is_some() { "on" } else { "off" }
        ));
        add(format!("cache={}", if e.cache { "on" } else { "off" }));
        if e.transactional {
            add("transactional=on".to_owned());
        }
        if e.steps {
            add("steps=on".to_owned());
        }
        if e.anonymous {
            add("scope=header, anonymous allowed".to_owned());
        }
        add(format!("adapter={:?}", e.adapter));
        add(format!("instances={}", scenario.instances.clamp(1, 3)));
        if let Some(rotation) = &scenario.rotation {
            let what = if rotation.adopt {
                "adopting"
            } else {
                "rotating"
            };
            add(format!("secret={what} from step {}", rotation.from.min(1)));
        }
        if r.after.is_some() {
            add("client=key reused after expiry".to_owned());
        }
        if op.fails_first > 0 {
            add("handler=503 first".to_owned());
        }
        if op.big && e.small_responses {
            add("handler=response not kept".to_owned());
        }
        for s in &op.sends {
            if s.copies > 1 {
                add("client=parallel duplicates".to_owned());
            }
            if s.hang_up_ms.is_some() {
                add("client=hang-up".to_owned());
            }
            if s.changed_body {
                add("client=changed body".to_owned());
            }
            if s.doubled_scope {
                add("client=doubled scope header".to_owned());
            }
        }
    }
    for f in &scenario.server_faults {
        let what = format!("{:?}", f.what);
        add(format!(
            "server fault={}",
            what.split('(').next().unwrap_or_default()
        ));
    }
    for f in &scenario.faults {
        let kind = format!("{f:?}");
        add(format!(
            "fault={}",
            kind.split([' ', '{']).next().unwrap_or_default()
        ));
    }
}

/// A request, as the oracle checks its answer.
#[derive(Debug, Clone, Copy)]
struct Asked {
    op: usize,
    req: u64,
    variant: u8,
}

/// A 2xx answer to a request: one of its operation's effects, for its account and its
/// payload — or the marker of a response too large to keep. The effect it carries, if any.
fn success(
    asked: Asked,
    resolved: &[Resolved],
    scenario: &Scenario,
    by_op: &HashMap<usize, Vec<&Effect>>,
    status: u16,
    text: &str,
) -> Result<Option<u64>, Violation> {
    let Asked { op, req, variant } = asked;
    if text.contains("response-not-kept") {
        let big = scenario.ops[op].big && scenario.endpoints[resolved[op].endpoint].small_responses;
        if big && by_op.contains_key(&op) {
            return Ok(None);
        }
        return Err(Violation(format!(
            "request {req} of operation {op} got a response-not-kept marker for a response that ran {} times and was not too large",
            by_op.get(&op).map_or(0, Vec::len)
        )));
    }
    let parsed: Option<serde_json::Value> = serde_json::from_str(text).ok();
    let field = |k: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(serde_json::Value::as_u64)
    };
    let (Some(their_op), Some(principal), Some(effect), Some(their_variant)) = (
        field("op"),
        field("principal"),
        field("effect"),
        field("variant"),
    ) else {
        return Err(Violation(format!(
            "request {req} of operation {op} got {status} with a body that is no response of the handler: {text}"
        )));
    };
    if their_op as usize != op || principal != u64::from(resolved[op].principal) {
        return Err(Violation(format!(
            "request {req} of operation {op} (account {}) got operation {their_op}'s result for account {principal}",
            resolved[op].principal
        )));
    }
    if their_variant != u64::from(variant) {
        return Err(Violation(format!(
            "request {req} of operation {op} sent payload {variant} and got the response to payload {their_variant}: another payload's result (422 expected)"
        )));
    }
    let Some(had) = by_op
        .get(&op)
        .and_then(|list| list.iter().find(|e| e.id == effect))
    else {
        return Err(Violation(format!(
            "request {req} of operation {op} got effect {effect}, which is not one of its effects"
        )));
    };
    // The effect was had for this payload (a step recorded for another one, resumed, is
    // another payload's result too — whoever had it, a client's request or the completer's).
    if had.variant != u64::from(variant) {
        return Err(Violation(format!(
            "request {req} of operation {op} sent payload {variant} and got effect {effect}, had by request {} for payload {}: another payload's work resumed (422 expected)",
            had.req, had.variant
        )));
    }
    Ok(Some(effect))
}
