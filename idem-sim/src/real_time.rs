//! What a run in real time adds: a watch on the runtime's own thread, and the faults of the real
//! server itself (or of the link to it), made on the lane and recorded on every instance.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::history::Event;
use crate::lane::Lane;
use crate::proxy::FaultProxy;
use crate::scenario::{ServerFault, ServerFaultPlan};
use crate::world::World;

/// Watches the runtime's own thread (real time only): every stall of it — the thread not run
/// for [`SLOW_CALL_MS`](crate::shared_store::SLOW_CALL_MS) or more past a 5 ms timer, on a
/// machine shared by the run's other lanes and servers — is recorded on every instance as a
/// stall: every timer, renewal and answer of that span was that late.
pub(crate) async fn stalls(world: Arc<World>, instances: usize) {
    let tick = Duration::from_millis(5);
    loop {
        let before = world.now();
        tokio::time::sleep(tick).await;
        let late = world.now().saturating_sub(before + 5);
        if late >= crate::shared_store::SLOW_CALL_MS {
            for instance in 0..instances {
                world.history.push(Event::Fault {
                    instance,
                    what: format!("stall {late} ms"),
                    at: before,
                    until: Some(before + 5 + late),
                });
            }
        }
    }
}

/// Makes server fault `f` on the lane's server or on its link at its time, and ends it;
/// recorded on every instance once over (with the time the server took to come back). The
/// instances' connections to a restarted server (or through a reset link) each fail their next
/// call: those failures are recorded as they happen (`SharedStore`).
pub(crate) async fn server_fault(
    world: &World,
    instances: usize,
    lane: Option<(&Lane, &FaultProxy)>,
    start: Instant,
    f: &ServerFaultPlan,
) {
    let Some((lane, link)) = lane else { return };
    tokio::time::sleep_until(start + Duration::from_millis(f.at_ms)).await;
    let at = world.now();
    lane.server_fault(link, f.what, true).await;
    // (A reset is over once made.)
    if f.what != ServerFault::LinkReset {
        tokio::time::sleep(Duration::from_millis(f.for_ms)).await;
    }
    lane.server_fault(link, f.what, false).await;
    let until = world.now().max(at + 1);
    let what = match f.what {
        ServerFault::Stop => "outage: the server stopped (SIGSTOP)".to_owned(),
        ServerFault::Restart => "outage: the server killed (kill -9) and restarted".to_owned(),
        ServerFault::Full => "full, renewals refused: the server at maxmemory".to_owned(),
        ServerFault::LinkStall => "outage: the link stalled".to_owned(),
        ServerFault::LinkReset => "outage: every connection reset".to_owned(),
        // (A reset on an answer also drops the commands queued behind it on that connection:
        // some calls ran unheard, others never ran — renewals and completions among them.)
        ServerFault::LoseAnswers => "outage: answers lost, connections reset".to_owned(),
        // A round trip crosses the link twice.
        ServerFault::LinkDelay(ms) => format!("slow {} ms, the link delayed", 2 * ms),
    };
    for instance in 0..instances {
        world.history.push(Event::Fault {
            instance,
            what: what.clone(),
            at,
            until: Some(until),
        });
    }
}
