//! What one simulated run is: the endpoints and their options, the app instances, the logical
//! operations and what their clients do, and the faults — all drawn from a seed by the
//! [`scenario`] strategy (proptest), which also shrinks a failing one. Serializable: a shrunk
//! failure is kept as JSON and replayed as a test.

use proptest::prelude::*;
use serde::{Deserialize, Serialize};

/// One simulated run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    /// The endpoints every instance serves (at least one).
    pub endpoints: Vec<Endpoint>,
    /// How many app instances share the store (1 to 3).
    pub instances: u8,
    /// The logical operations, each with its client's plan.
    pub ops: Vec<Operation>,
    /// What goes wrong, and when.
    pub faults: Vec<FaultPlan>,
    /// A rotation of the app secret under way, if any (a rolling deploy between two steps).
    #[serde(default)]
    pub rotation: Option<Rotation>,
    /// The store the instances share.
    #[serde(default)]
    pub backend: Backend,
    /// Every time of the scenario is its drawn one divided by this (1 in virtual time; a run
    /// on a real server runs in real time, [`REAL_SCALE`](crate::real::REAL_SCALE) times faster
    /// than drawn).
    #[serde(default = "one")]
    pub scale: u64,
    /// Faults of the real server itself, which every instance meets (none in virtual time).
    #[serde(default)]
    pub server_faults: Vec<ServerFaultPlan>,
}

/// What happens to a real server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFault {
    /// `SIGSTOP`, then `SIGCONT`: it keeps its connections and answers nothing meanwhile.
    Stop,
    /// At `maxmemory`: every write that needs memory answered `OOM`.
    Full,
    /// `kill -9`, then started again (from its append-only file).
    Restart,
    /// The link between the instances and the server stalls: bytes held, delivered when it
    /// ends.
    LinkStall,
    /// Every connection between the instances and the server is reset, once.
    LinkReset,
    /// The server's answers are lost: each connection that would carry one is reset instead
    /// (the command ran; its caller never hears).
    LoseAnswers,
    /// Every chunk over the link waits this long (ms, at the scenario's scale).
    LinkDelay(u64),
}

/// A server fault, at a time (ms, at the scenario's scale), for a while.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerFaultPlan {
    pub what: ServerFault,
    pub at_ms: u64,
    pub for_ms: u64,
}

fn one() -> u64 {
    1
}

impl Scenario {
    /// `ms` of the scenario as drawn, at its scale.
    pub fn ms(&self, ms: u64) -> u64 {
        ms / self.scale.max(1)
    }

    /// The store deadline of every instance (500 ms as drawn).
    pub fn store_timeout_ms(&self) -> u64 {
        self.ms(500)
    }
}

/// The store a run's instances share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Backend {
    /// The in-process `MemoryStore`, in virtual time.
    #[default]
    Memory,
    /// A private `redis-server` (the run's lane's), in real time.
    Redis,
    /// A table of the local PostgreSQL (the run's lane's), in real time; endpoints may be
    /// `transactional`.
    Postgres,
}

/// A rotation of the app secret, or the adoption of a first one, in the steps of
/// docs/secrets.md: step 0 writes under the old secret (none, when adopting), step 1 also looks
/// under the new one, step 2 writes under the new one and looks under the old. A rolling deploy
/// runs two adjacent steps at once; a [`FaultPlan::Deploy`] moves an instance one step on when
/// the fleet stays within two adjacent steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rotation {
    /// No secret before the new one: a first secret adopted.
    pub adopt: bool,
    /// The step the fleet starts at (0 or 1).
    pub from: u8,
    /// Per instance (modulo their number): whether it starts one step ahead.
    pub ahead: Vec<bool>,
}

impl Rotation {
    /// The step instance `i` starts at.
    pub fn step_of(&self, i: usize) -> u8 {
        let ahead = !self.ahead.is_empty() && self.ahead[i % self.ahead.len()];
        self.from.min(1) + u8::from(ahead)
    }
}

/// `guarantee`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Guarantee {
    Strict,
    Result,
    Semantic,
}

/// `on_conflict` (`webhook` needs a receiver over HTTP: part 2 of the simulator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Conflict {
    RetryAfter,
    Wait,
    Accepted,
}

/// Where the key is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyFrom {
    Header,
    Query,
}

/// Which adapter serves the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Adapter {
    /// actix-web, the attribute's runtime entry point, in-process.
    Actix,
    /// The tower layer around a tower service, in-process.
    Tower,
}

/// One endpoint's options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    pub guarantee: Guarantee,
    pub on_conflict: Conflict,
    /// `on_store_error = "proceed"` (else `reject`).
    pub proceed: bool,
    pub key_from: KeyFrom,
    /// Scoped by the `X-Account` header (else unscoped).
    pub scoped: bool,
    /// Scoped, with `allow_anonymous`: a request without the header runs in the anonymous
    /// scope (the completer's re-sent request carries no `X-Account`: it must still resume
    /// under the recorded principal).
    #[serde(default)]
    pub anonymous: bool,
    /// `admission_limit(n, 10 s)`.
    pub admission: Option<u32>,
    /// A `CachedStore` in front of the instance's store.
    pub cache: bool,
    pub adapter: Adapter,
    pub lease_ms: u64,
    pub ttl_ms: u64,
    /// How long the handler works (virtual time); its effect happens half-way.
    pub work_ms: u64,
    /// `max_response_bytes`: the handler's big responses (see [`Operation::big`]) exceed it.
    pub small_responses: bool,
    /// `transactional` (PostgreSQL, actix-web): the handler's effect is a row written in the
    /// transaction its record commits with.
    #[serde(default)]
    pub transactional: bool,
    /// A multi-step operation (PostgreSQL, actix-web, with the completer running): the
    /// handler's effect is a `run` step writing a row, then a `foreign` step charging a
    /// processor under its downstream key.
    #[serde(default)]
    pub steps: bool,
}

/// A logical operation: one client's intent, sent as many times as its plan says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    /// The client's account (0 to 2).
    pub principal: u8,
    /// Index into the endpoints (modulo their number).
    pub endpoint: u8,
    /// Reuses the key of this earlier operation (same principal and endpoint), once its record
    /// can have expired; else a key of its own.
    pub reuse: Option<u8>,
    /// Uses the key other accounts use too on its (scoped) endpoint, where each account's is
    /// its own operation.
    #[serde(default)]
    pub shared_key: bool,
    /// When the first send goes, in ms from the start.
    pub start_ms: u64,
    /// The sends, in order; each waits for the one before (or for its hang-up).
    pub sends: Vec<SendPlan>,
    /// The handler answers 503 before its effect on this many of its first runs.
    pub fails_first: u8,
    /// The handler's response is larger than a small `max_response_bytes`.
    pub big: bool,
}

/// One send of an operation (possibly several copies at once).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendPlan {
    /// The instance it goes to (modulo their number).
    pub instance: u8,
    /// Wait after the previous send's answer (at least its `Retry-After`).
    pub after_ms: u64,
    /// Copies sent at once (duplicates in parallel), spread over the instances from
    /// `instance` on, as a load balancer would.
    pub copies: u8,
    /// The client hangs up after this long without an answer.
    pub hang_up_ms: Option<u64>,
    /// The body is changed (another payload under the same key).
    pub changed_body: bool,
    /// A proxy appended another account's `X-Account` in front of the client's.
    pub doubled_scope: bool,
}

/// A fault, at a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FaultPlan {
    /// Every store call of `instance` fails for `for_ms`.
    Outage {
        instance: u8,
        at_ms: u64,
        for_ms: u64,
    },
    /// Every store call of `instance` waits `delay_ms` for `for_ms`.
    Slow {
        instance: u8,
        at_ms: u64,
        for_ms: u64,
        delay_ms: u64,
    },
    /// The store refuses `instance`'s writes as full for `for_ms`.
    Full {
        instance: u8,
        at_ms: u64,
        for_ms: u64,
    },
    /// `instance`'s next completion after `at_ms` lands but its answer is lost.
    LoseCompletion { instance: u8, at_ms: u64 },
    /// `instance`'s next completion after `at_ms` fails once.
    FailCompletion { instance: u8, at_ms: u64 },
    /// `instance` is killed (`kill -9`) at `at_ms` and restarted `down_ms` later.
    Crash {
        instance: u8,
        at_ms: u64,
        down_ms: u64,
    },
    /// `instance`'s next `count` deletes (a look's clean-up, a refusal's, a give-up) fail.
    FailDeletes { instance: u8, at_ms: u64, count: u8 },
    /// During a rotation, `instance` is replaced at `at_ms` (killed and restarted 100 ms later)
    /// by the next step's build, when the fleet stays within two adjacent steps.
    Deploy { instance: u8, at_ms: u64 },
}

fn endpoint() -> impl Strategy<Value = Endpoint> {
    (
        (
            prop_oneof![
                Just(Guarantee::Strict),
                Just(Guarantee::Result),
                Just(Guarantee::Semantic)
            ],
            prop_oneof![
                3 => Just(Conflict::RetryAfter),
                2 => Just(Conflict::Wait),
                1 => Just(Conflict::Accepted)
            ],
            prop::bool::weighted(0.3),
            prop_oneof![3 => Just(KeyFrom::Header), 1 => Just(KeyFrom::Query)],
            prop::bool::weighted(0.6),
            prop::option::weighted(0.4, prop_oneof![2 => Just(1u32), 1 => 2u32..4]),
        ),
        (
            prop::bool::weighted(0.3),
            prop_oneof![Just(Adapter::Actix), Just(Adapter::Tower)],
            1u64..=5,
            2u64..=40,
            0u64..=3000,
            prop::bool::weighted(0.2),
        ),
    )
        .prop_map(
            |(
                (guarantee, on_conflict, proceed, key_from, scoped, admission),
                (cache, adapter, lease_s, ttl_factor, work_ms, small_responses),
            )| {
                let lease_ms = lease_s * 1000;
                Endpoint {
                    guarantee,
                    on_conflict,
                    proceed,
                    key_from,
                    scoped,
                    admission,
                    cache,
                    adapter,
                    lease_ms,
                    ttl_ms: lease_ms * ttl_factor,
                    work_ms,
                    small_responses,
                    transactional: false,
                    steps: false,
                    anonymous: false,
                }
            },
        )
}

fn send_plan() -> impl Strategy<Value = SendPlan> {
    (
        0u8..3,
        0u64..4000,
        prop_oneof![6 => Just(1u8), 2 => Just(2u8), 1 => Just(3u8)],
        prop::option::weighted(0.15, 1u64..3000),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.05),
    )
        .prop_map(
            |(instance, after_ms, copies, hang_up_ms, changed_body, doubled_scope)| SendPlan {
                instance,
                after_ms,
                copies,
                hang_up_ms,
                changed_body,
                doubled_scope,
            },
        )
}

fn operation() -> impl Strategy<Value = Operation> {
    (
        0u8..3,
        0u8..3,
        prop::option::weighted(0.1, 0u8..8),
        // Often at one of a few moments: bursts of new keys at once.
        prop_oneof![3 => 0u64..10_000, 2 => (0u64..8).prop_map(|k| k * 1250)],
        prop::collection::vec(send_plan(), 1..5),
        prop_oneof![8 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)],
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.25),
    )
        .prop_map(
            |(principal, endpoint, reuse, start_ms, sends, fails_first, big, shared_key)| {
                Operation {
                    principal,
                    endpoint,
                    reuse,
                    shared_key,
                    start_ms,
                    sends,
                    fails_first,
                    big,
                }
            },
        )
}

fn fault() -> impl Strategy<Value = FaultPlan> {
    prop_oneof![
        (0u8..3, 0u64..25_000, 100u64..12_000).prop_map(|(instance, at_ms, for_ms)| {
            FaultPlan::Outage {
                instance,
                at_ms,
                for_ms,
            }
        }),
        (
            0u8..3,
            0u64..25_000,
            100u64..8_000,
            // Mostly slower than usual but within the store deadline (500 ms): calls overlap.
            prop_oneof![3 => 10u64..450, 1 => 450u64..3_000]
        )
            .prop_map(|(instance, at_ms, for_ms, delay_ms)| FaultPlan::Slow {
                instance,
                at_ms,
                for_ms,
                delay_ms,
            }),
        (0u8..3, 0u64..25_000, 100u64..8_000).prop_map(|(instance, at_ms, for_ms)| {
            FaultPlan::Full {
                instance,
                at_ms,
                for_ms,
            }
        }),
        (0u8..3, 0u64..25_000)
            .prop_map(|(instance, at_ms)| FaultPlan::LoseCompletion { instance, at_ms }),
        (0u8..3, 0u64..25_000)
            .prop_map(|(instance, at_ms)| FaultPlan::FailCompletion { instance, at_ms }),
        (0u8..3, 0u64..25_000, 100u64..10_000).prop_map(|(instance, at_ms, down_ms)| {
            FaultPlan::Crash {
                instance,
                at_ms,
                down_ms,
            }
        }),
        // Enough to outlast a clean-up's tries while its lease is held, or a few.
        (0u8..3, 0u64..25_000, prop_oneof![1u8..4, Just(60u8)]).prop_map(
            |(instance, at_ms, count)| FaultPlan::FailDeletes {
                instance,
                at_ms,
                count
            }
        ),
        (0u8..3, 0u64..25_000).prop_map(|(instance, at_ms)| FaultPlan::Deploy { instance, at_ms }),
    ]
}

fn rotation() -> impl Strategy<Value = Rotation> {
    (
        prop::bool::weighted(0.3),
        0u8..2,
        prop::collection::vec(prop::bool::ANY, 3),
    )
        .prop_map(|(adopt, from, ahead)| Rotation { adopt, from, ahead })
}

/// Scenarios of up to `max_ops` operations and `max_faults` faults. Most faults are drawn
/// close to an operation's first send (within 3 s after it): where they find a request in
/// flight.
pub fn scenario(max_ops: usize, max_faults: usize) -> impl Strategy<Value = Scenario> {
    (
        prop::collection::vec(endpoint(), 1..=3),
        1u8..=3,
        prop::collection::vec((operation(), prop::bool::weighted(0.3)), 1..=max_ops.max(1)),
        prop::collection::vec(
            (
                fault(),
                prop::option::weighted(0.7, (0usize..16, 0u64..3000)),
            ),
            0..=max_faults,
        ),
        prop::option::weighted(0.5, rotation()),
    )
        .prop_map(|(endpoints, instances, ops, faults, rotation)| {
            // An operation marked as its predecessor's sibling is sent with it: the same
            // account, endpoint, moment and instance — a client starting several operations at
            // once (what an admission limit meets).
            let mut list: Vec<Operation> = Vec::with_capacity(ops.len());
            for (mut op, sibling) in ops {
                if let (true, Some(before)) = (sibling, list.last()) {
                    op.principal = before.principal;
                    op.endpoint = before.endpoint;
                    op.start_ms = before.start_ms;
                    op.reuse = None;
                    if let (Some(first), Some(theirs)) =
                        (op.sends.first_mut(), before.sends.first())
                    {
                        first.instance = theirs.instance;
                    }
                }
                list.push(op);
            }
            let ops = list;
            let faults = faults
                .into_iter()
                .map(|(mut fault, anchor)| {
                    if let Some((op, offset)) = anchor {
                        let at = ops[op % ops.len()].start_ms + offset;
                        fault.set_at(at);
                    }
                    fault
                })
                .collect();
            Scenario {
                endpoints,
                instances,
                ops,
                faults,
                rotation,
                backend: Backend::Memory,
                scale: 1,
                server_faults: Vec::new(),
            }
        })
}

impl FaultPlan {
    /// Moves the fault to `at` ms.
    fn set_at(&mut self, at: u64) {
        match self {
            FaultPlan::Outage { at_ms, .. }
            | FaultPlan::Slow { at_ms, .. }
            | FaultPlan::Full { at_ms, .. }
            | FaultPlan::LoseCompletion { at_ms, .. }
            | FaultPlan::FailCompletion { at_ms, .. }
            | FaultPlan::Crash { at_ms, .. }
            | FaultPlan::FailDeletes { at_ms, .. }
            | FaultPlan::Deploy { at_ms, .. } => *at_ms = at,
        }
    }
}
