//! Scenarios on a real server: drawn as in virtual time, then run in real time, every time
//! [`REAL_SCALE`] times shorter, with faults of the server itself.

use proptest::prelude::*;

use crate::scenario::{scenario, Backend, FaultPlan, Scenario, ServerFault, ServerFaultPlan};

/// How much faster than drawn a scenario on a real server runs: leases of 100–500 ms, a store
/// deadline of 50 ms.
pub const REAL_SCALE: u64 = 10;

/// `s` on `backend`: on a real server, in real time, every time divided by
/// [`REAL_SCALE`] and a record's TTL at most 8 leases (so that a key reused after its expiry
/// waits seconds, not minutes).
pub fn on(mut s: Scenario, backend: Backend) -> Scenario {
    s.backend = backend;
    if backend == Backend::Memory {
        return s;
    }
    let k = REAL_SCALE;
    s.scale = k;
    for e in &mut s.endpoints {
        e.lease_ms /= k;
        e.ttl_ms = (e.ttl_ms / k).min(8 * e.lease_ms);
        e.work_ms /= k;
    }
    for op in &mut s.ops {
        op.start_ms /= k;
        for send in &mut op.sends {
            send.after_ms /= k;
            send.hang_up_ms = send.hang_up_ms.map(|ms| (ms / k).max(1));
        }
    }
    for f in &mut s.faults {
        scale(f, k);
    }
    s
}

/// Scenarios as [`scenario`] draws them, on `backend` (see [`on`]), with up to two faults of
/// the server itself, most of them close to an operation's first send.
pub fn scenario_on(
    backend: Backend,
    max_ops: usize,
    max_faults: usize,
) -> impl Strategy<Value = Scenario> {
    let link = prop_oneof![
        Just(ServerFault::LinkStall),
        Just(ServerFault::LinkReset),
        Just(ServerFault::LoseAnswers),
        (1u64..40).prop_map(ServerFault::LinkDelay),
    ];
    // The local PostgreSQL is not ours to stop, fill or restart: only the link to it fails.
    let what = match backend {
        Backend::Postgres => link.boxed(),
        _ => prop_oneof![
            Just(ServerFault::Stop),
            Just(ServerFault::Full),
            Just(ServerFault::Restart),
            link
        ]
        .boxed(),
    };
    let server_fault = (
        what,
        prop::option::weighted(0.7, (0usize..16, 0u64..300)),
        0u64..2_500,
        // Mostly within a lease (100–500 ms), sometimes longer.
        prop_oneof![3 => 5u64..400, 1 => 400u64..1_500],
    );
    (
        scenario(max_ops, max_faults),
        prop::collection::vec(server_fault, 0..=2),
        // Per endpoint on PostgreSQL: records only (0), transactional (1) or `Steps` (2).
        prop::collection::vec(0u8..3, 3),
        // Per scoped endpoint: `allow_anonymous`.
        prop::collection::vec(prop::bool::weighted(0.4), 3),
    )
        .prop_map(move |(s, faults, modes, anonymous)| {
            let mut s = on(s, backend);
            for (e, anonymous) in s.endpoints.iter_mut().zip(anonymous) {
                e.anonymous = e.scoped && anonymous;
            }
            if backend == Backend::Postgres {
                // Transactional and `Steps` endpoints run on actix-web (the tower layer refuses
                // them), without `proceed` (the attribute refuses it: the handler's writes need
                // the store's transaction); `Steps` not under `strict` (which does not compile
                // with it).
                for (e, mode) in s.endpoints.iter_mut().zip(modes) {
                    e.transactional = mode == 1;
                    e.steps = mode == 2;
                    if mode > 0 {
                        e.adapter = crate::scenario::Adapter::Actix;
                        e.proceed = false;
                    }
                    if e.steps && e.guarantee == crate::scenario::Guarantee::Strict {
                        e.guarantee = crate::scenario::Guarantee::Result;
                    }
                }
            }
            s.server_faults = faults
                .into_iter()
                .map(|(what, anchor, at_ms, for_ms)| ServerFaultPlan {
                    what,
                    at_ms: anchor.map_or(at_ms, |(op, offset)| {
                        s.ops[op % s.ops.len()].start_ms + offset
                    }),
                    for_ms,
                })
                .collect();
            // One at a time: the end of one must not undo another (a second `maxmemory`).
            s.server_faults.sort_by_key(|f| f.at_ms);
            let mut free_from = 0;
            for f in &mut s.server_faults {
                f.at_ms = f.at_ms.max(free_from);
                free_from = f.at_ms + f.for_ms + 1;
            }
            s
        })
}

/// Every time of it divided by `k` (a lasting fault lasts at least 1 ms).
fn scale(f: &mut FaultPlan, k: u64) {
    match f {
        FaultPlan::Outage { at_ms, for_ms, .. } | FaultPlan::Full { at_ms, for_ms, .. } => {
            *at_ms /= k;
            *for_ms = (*for_ms / k).max(1);
        }
        FaultPlan::Slow {
            at_ms,
            for_ms,
            delay_ms,
            ..
        } => {
            *at_ms /= k;
            *for_ms = (*for_ms / k).max(1);
            *delay_ms = (*delay_ms / k).max(1);
        }
        FaultPlan::Crash { at_ms, down_ms, .. } => {
            *at_ms /= k;
            *down_ms = (*down_ms / k).max(1);
        }
        FaultPlan::LoseCompletion { at_ms, .. }
        | FaultPlan::FailCompletion { at_ms, .. }
        | FaultPlan::FailDeletes { at_ms, .. }
        | FaultPlan::Deploy { at_ms, .. } => *at_ms /= k,
    }
}
