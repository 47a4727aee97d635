//! The at-least-once windows the oracle tolerates ([`Window`]): the faults a history recorded,
//! and which of them explains an operation's further effect.

use std::collections::HashMap;

/// The at-least-once windows the runtime documents, each named by the first cell of its row in
/// docs/failure-behaviour.md ("The remaining at-least-once windows"): an effect beyond an
/// operation's first is tolerated only when one of them explains it. A test checks that each
/// name is in that table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Window {
    /// The instance was killed after the effect, before its record was written.
    Crash,
    /// The store was unreachable from the end of the handler until its lease ended.
    CompleteAbandoned,
    /// The store was unreachable for a lease while the handler ran.
    LeaseLapsed,
    /// A store slower than lease/6.
    SlowStore,
    /// `proceed` with the store unreachable at `begin`: run unprotected.
    Proceed,
    /// The record's TTL ended.
    Expired,
}

impl Window {
    /// Every window.
    pub const ALL: [Window; 6] = [
        Window::Crash,
        Window::CompleteAbandoned,
        Window::LeaseLapsed,
        Window::SlowStore,
        Window::Proceed,
        Window::Expired,
    ];

    /// The first cell of its row in docs/failure-behaviour.md.
    pub fn row(self) -> &'static str {
        match self {
            Window::Crash => "crash after the side effects, before the record is written",
            Window::CompleteAbandoned => {
                "the store unreachable from the end of the handler until the lease ends"
            }
            Window::LeaseLapsed => {
                "the store unreachable for a whole lease *while the handler runs*, and a duplicate arrives after it"
            }
            Window::SlowStore => "a short lease on a store slower than lease/6",
            Window::Proceed => "`on_store_error = \"proceed\"` with the store unreachable at `begin`",
            Window::Expired => "the record is gone: its `ttl` ended",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Sent {
    pub(crate) op: usize,
    pub(crate) instance: usize,
    pub(crate) at: u64,
    pub(crate) variant: u8,
}

#[derive(Debug, Clone)]
pub(crate) struct Effect {
    pub(crate) id: u64,
    pub(crate) op: usize,
    pub(crate) req: u64,
    pub(crate) instance: usize,
    pub(crate) began: u64,
    pub(crate) returned: Option<u64>,
    /// The payload it was had for.
    pub(crate) variant: u64,
}

/// A lasting fault on one instance: `kind` from `at` to `until`.
#[derive(Debug, Clone)]
pub(crate) struct Lasting {
    pub(crate) instance: usize,
    pub(crate) kind: String,
    pub(crate) at: u64,
    pub(crate) until: u64,
    /// The store deadline of the run's instances.
    pub(crate) timeout: u64,
}

impl Lasting {
    /// Whether every store call fails (or times out) while it lasts: down (an outage planned
    /// or a real server stopped or killed), or slower than the store deadline (a full store
    /// still reads).
    pub(crate) fn down(&self) -> bool {
        self.kind.starts_with("outage") || self.slow_ms() >= self.timeout
    }

    /// Whether a `begin` may have failed while it lasts: down (lost answers reset their
    /// connections: an outage too).
    pub(crate) fn begin_fails(&self) -> bool {
        self.down()
    }

    /// Whether renewals fail while it lasts: down, or a real Redis full (its renewal script
    /// writes: `OOM`; a simulated full store still renews).
    pub(crate) fn renewals_fail(&self) -> bool {
        self.down() || self.kind.starts_with("full, renewals refused")
    }

    /// Whether writes (`begin`, `complete`) fail while it lasts: down, too slow, or full.
    pub(crate) fn unreachable(&self) -> bool {
        self.down() || self.kind.starts_with("full")
    }

    /// How much slower than usual every store call is while it lasts: a planned slow store
    /// (`slow N ms`), a store call measured that slow (`slow N ms, measured`), or the run's
    /// own thread stalled that long (`stall N ms`: every timer and answer late).
    pub(crate) fn slow_ms(&self) -> u64 {
        self.kind
            .strip_prefix("slow ")
            .or_else(|| self.kind.strip_prefix("stall "))
            .and_then(|d| d.split(" ms").next())
            .and_then(|d| d.parse().ok())
            .unwrap_or(0)
    }
}

/// The faults a history recorded.
#[derive(Clone, Copy)]
pub(crate) struct Faults<'a> {
    pub(crate) lasting: &'a [Lasting],
    pub(crate) crashes: &'a [(usize, u64)],
    pub(crate) failures: &'a [(usize, u64)],
    /// The store deadline of the run's instances.
    pub(crate) timeout: u64,
    /// Requests answered that another held the key (409, 202) or that it was another
    /// payload's (422): their `begin` took no record.
    pub(crate) held_off: &'a std::collections::HashSet<u64>,
    /// When each request's handler began (its `begin` came before).
    pub(crate) ran_at: &'a HashMap<u64, u64>,
    /// Requests whose handler ran without a record (no `IdempotencyContext`: unprotected).
    pub(crate) unprotected: &'a std::collections::HashSet<u64>,
    /// When each request was answered or lost.
    pub(crate) ended: &'a HashMap<u64, u64>,
    /// Runs the completer re-sent: (operation, when its handler began).
    pub(crate) completer_runs: &'a [(usize, u64)],
}

/// Whether a store call of `instance` between `from` and `to` may have failed: a fault that
/// fails it, or slowness enough to run out the deadline `timeout` — adding up across layers: a
/// planned slow store (the instance's `FaultyStore`), the server or link below it (measured, or
/// a link delay) and the runtime's own stalls, with as much again as a call under the
/// recording threshold may have taken unrecorded.
pub(crate) fn store_may_fail(
    lasting: &[Lasting],
    instance: usize,
    from: u64,
    to: u64,
    timeout: u64,
) -> bool {
    let during: Vec<&Lasting> = lasting
        .iter()
        .filter(|l| l.instance == instance && l.at <= to && from <= l.until)
        .collect();
    let layer = |which: &dyn Fn(&Lasting) -> bool| {
        during
            .iter()
            .filter(|l| which(l))
            .map(|l| l.slow_ms())
            .max()
            .unwrap_or(0)
    };
    let planned = layer(&|l| l.kind.starts_with("slow ") && l.kind.ends_with(" ms"));
    let stalled = layer(&|l| l.kind.starts_with("stall "));
    let below = layer(&|l| l.kind.starts_with("slow ") && !l.kind.ends_with(" ms"));
    let unrecorded = crate::shared_store::SLOW_CALL_MS;
    during.iter().any(|l| l.begin_fails()) || planned + stalled + below + unrecorded >= timeout
}

/// The window that explains `later`, an effect of the operation `earlier` had one of, if any.
pub(crate) fn explain(
    e: &crate::scenario::Endpoint,
    earlier: &Effect,
    later: &Effect,
    sent: &HashMap<u64, Sent>,
    faults: Faults<'_>,
) -> Option<Window> {
    let Faults {
        lasting,
        crashes,
        failures,
        timeout,
        held_off,
        ran_at,
        unprotected: ran_unprotected,
        ended,
        completer_runs,
    } = faults;
    let lease = e.lease_ms;
    // The earliest a lease can lapse after its holder's store went away at `a`: its last
    // renewal (every lease/3) was sent at most lease/3 before — or one renewal deadline more
    // before, when the one then in flight was cut short (the handler returned meanwhile).
    let lapses_after = |a: u64| a + lease - lease / 3 - (lease / 6).min(timeout);
    // Unprotected under `proceed`: a request whose handler ran without a record, its `begin`
    // (between its send and its handler's start) met while its instance's store was down or
    // too slow (a full store fails closed).
    let unprotected = |x: &Effect| {
        let ran = ran_at.get(&x.req).copied().unwrap_or(x.began);
        e.proceed
            && ran_unprotected.contains(&x.req)
            && sent
                .get(&x.req)
                .is_some_and(|s| store_may_fail(lasting, s.instance, s.at, ran, timeout))
    };
    if unprotected(earlier) || unprotected(later) {
        return Some(Window::Proceed);
    }
    // Its record expired: `ttl` after the completion that kept it — or, for an operation never
    // completed (released, its steps unfinished), `ttl` after the last `begin` that took it,
    // which came before some other request of it ran, or within the store deadline after it
    // was sent (one not held off by another's record, and of the later one's payload: one of
    // another payload that took the record would have held the later one off with a 422).
    let variant = sent.get(&later.req).map(|s| s.variant);
    let wait = if e.on_conflict == crate::scenario::Conflict::Wait {
        10 * timeout
    } else {
        0
    };
    // Each such request's `begin` may have taken the record (before its handler ran, or its
    // answer; else within the store deadline and a wait after its send): it then lives `ttl`
    // past that `begin`, and a lease past the request's end (its renewals); the completer's
    // re-sent requests take it too. In send order: (sent, lives until at most).
    let mut takes: Vec<(u64, u64)> = sent
        .iter()
        .filter(|(req, s)| {
            s.op == later.op
                && **req != later.req
                && s.at <= later.began
                && !held_off.contains(req)
                && variant.is_none_or(|v| v == s.variant)
        })
        .map(|(req, s)| {
            let begin = ran_at
                .get(req)
                .or(ended.get(req))
                .copied()
                .unwrap_or(s.at + timeout + wait);
            let renewed = ended.get(req).map_or(0, |end| end + lease);
            (s.at, (begin + e.ttl_ms).max(renewed))
        })
        .chain(
            completer_runs
                .iter()
                .filter(|(op, at)| *op == later.op && *at < later.began)
                .map(|(_, at)| (*at, at + e.ttl_ms)),
        )
        .collect();
    takes.sort_unstable();
    // Whether the record, live until `until` at most, was certainly gone when the later run
    // began: each request sent while it could still live may have kept it longer; one sent
    // after it was certainly gone started a new operation (its `begin` found none).
    let gone_by = |mut until: u64| {
        for (at, lives) in &takes {
            if *at >= later.began {
                break;
            }
            if *at >= until {
                return true;
            }
            until = until.max(*lives);
        }
        later.began >= until
    };
    // (A handler that returned while its instance's writes failed may never have completed its
    // record: then it expired as a never-completed one.)
    let uncompleted = |r: u64| {
        lasting
            .iter()
            .any(|l| l.instance == earlier.instance && l.unreachable() && l.at <= r && r <= l.until)
    };
    // (A completed record is found by the requests after it — replays, which take nothing:
    // it lives `ttl` past its completion.)
    let expired = |returned: Option<u64>| match returned {
        Some(r) if later.began >= r + e.ttl_ms => true,
        Some(r) if !uncompleted(r) => false,
        _ => gone_by(earlier.began),
    };
    // A transactional endpoint's effect commits with its record, a `Steps` operation's with its
    // step record (fenced by the lease): a crash, a lapsed lease or an abandoned completion
    // rolls it back or leaves it recorded for the next attempt to skip
    // (docs/failure-behaviour.md: "no at-least-once window"; docs/multi-step.md); only an
    // unprotected run or an expired record explains a second one.
    if e.transactional || e.steps {
        return expired(earlier.returned).then_some(Window::Expired);
    }
    let returned = earlier.returned;
    let end = returned.unwrap_or(u64::MAX);
    let mine: Vec<&Lasting> = lasting
        .iter()
        .filter(|l| l.instance == earlier.instance)
        .collect();
    let down = merged(&mine, |l| l.renewals_fail(), lease / 6);
    let mut writes_fail = merged(&mine, |l| l.unreachable(), 1000);
    // Scripted failures waiting for this instance's completions fail its first tries that
    // reach the store (a try the store refused as down or full leaves them queued): each costs
    // a try and a backoff (up to 1 s), and a slow spell as long again — after the span of
    // failing writes the handler's return fell in, if any.
    let pending = failures
        .iter()
        .filter(|(i, at)| *i == earlier.instance && *at <= end)
        .count() as u64;
    if pending > 0 && end != u64::MAX {
        let slowest = mine.iter().map(|l| l.slow_ms()).max().unwrap_or(0);
        let from = writes_fail
            .iter()
            .find(|(a, b)| *a <= end && end <= *b)
            .map_or(end, |(_, b)| *b);
        writes_fail.push((end, from + pending * (1000 + slowest)));
        let spans: Vec<Lasting> = writes_fail
            .iter()
            .map(|(a, b)| Lasting {
                instance: earlier.instance,
                kind: "outage".to_owned(),
                at: *a,
                until: *b,
                timeout,
            })
            .collect();
        let refs: Vec<&Lasting> = spans.iter().collect();
        writes_fail = merged(&refs, |_| true, 1000);
    }
    // Whether the completion can have failed at every try from the handler's return until `t`:
    // writes failing since (a try may come up to one backoff, 1 s, after they work again).
    let failing_until = |t: u64| {
        writes_fail
            .iter()
            .any(|(wa, wb)| *wa <= end && wb.saturating_add(1000) >= t)
    };
    // Whether its record was still unwritten at `t`: soon after it returned, or its completion
    // failing at every try since.
    let unwritten_at = |t: u64| t <= end.saturating_add(lease) || failing_until(t);
    // Killed after the effect, before the record was written; the later run after the dead
    // holder's lease lapsed (its renewals stopped at the kill, or earlier when the store was
    // already down then).
    if crashes.iter().any(|(i, at)| {
        let stopped = down
            .iter()
            // (A renewal that failed is tried again lease/6 later: a kill that soon after the
            // store came back met no renewal in between.)
            .filter(|(a, b)| a <= at && *at <= b + lease / 6)
            .map(|(a, _)| *a)
            .min()
            .unwrap_or(*at)
            .max(earlier.began);
        *i == earlier.instance
            && *at >= earlier.began
            && unwritten_at(*at)
            && later.began >= lapses_after(stopped)
    }) {
        return Some(Window::Crash);
    }
    // The lease lapses when renewals fail (the store down) from `a` on, at `a + 2/3 lease` at
    // the earliest: renewals come every lease/3 and are tried again after lease/6.
    for (a, b) in down {
        // (A span that began before the run counts from the run's start: its `begin` landed in
        // a gap of it.)
        let a = a.max(earlier.began);
        let lapse = lapses_after(a);
        // A failed renewal is tried again lease/6 later: a store back less than that before
        // the lease's end may see no renewal in time.
        if b + lease / 6 + 5 < lapse || later.began < lapse {
            continue;
        }
        // The handler still ran when its lease lapsed.
        if a <= end && end > lapse {
            return Some(Window::LeaseLapsed);
        }
        // It had returned, and its completion failed at every try from then until the lapse
        // (the renewals beside it kept the lease until the store went down).
        if end <= lapse && failing_until(lapse) {
            return Some(Window::CompleteAbandoned);
        }
    }
    // Renewals slower than lease/6 while they were needed: the handler outlived its first
    // renewal, or its completion was still failing then.
    // (A stall of the runtime's own thread delays the renewals but abandons none: it loses
    // the lease only when it outlasts the renewals' margin, half a lease. Either way the later
    // run came after the lease could lapse.)
    if mine.iter().any(|l| {
        let from = l.at.max(earlier.began);
        let needed = if l.kind.starts_with("stall ") {
            lease / 2
        } else {
            lease / 6
        };
        l.slow_ms() >= needed
            && l.until > earlier.began
            && later.began >= lapses_after(from)
            && ((from <= end && end.saturating_sub(earlier.began) >= lease / 3)
                || (from > end && failing_until(from)))
    }) {
        return Some(Window::SlowStore);
    }
    if expired(returned) {
        return Some(Window::Expired);
    }
    None
}

/// The spans of the faults `of` that `which` selects, merged where they overlap or are apart
/// by at most `gap` ms.
pub(crate) fn merged(
    of: &[&Lasting],
    which: impl Fn(&Lasting) -> bool,
    gap: u64,
) -> Vec<(u64, u64)> {
    let mut spans: Vec<(u64, u64)> = of
        .iter()
        .filter(|l| which(l))
        .map(|l| (l.at, l.until))
        .collect();
    spans.sort();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (a, b) in spans {
        match out.last_mut() {
            Some(last) if a <= last.1 + gap => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}
