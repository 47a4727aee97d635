//! Where a handler's effect is written, when it is not simply had: as a row of a transactional
//! endpoint's transaction, or as a `Steps` operation's steps — a `run` step writing the row and
//! a `foreign` step charging a (fake) processor under the step's downstream key. Such an effect
//! counts only if it committed (the run reads the table at its end); a step that already ran
//! answers its recorded effect instead of having another.

use std::future::Future;

use idem_runtime::tokio_postgres::types::ToSql;
use idem_runtime::{IdemTx, Steps};

use crate::history::Event;
use crate::world::World;

/// The step name of the processor call (the downstream key every run is handed is this step's).
pub const CHARGE: &str = "charge";

/// Writes a handler's effect.
pub trait Effects {
    /// Writes `effect` (an [`Event::Effect`], recorded once its row is written, before it
    /// commits); the id of the effect that stands — this one, or the one a step recorded
    /// before — or `None` if it could not be written.
    fn write(self, world: &World, effect: Event) -> impl Future<Output = Option<u64>>;
}

/// No writer: the effect is had when the handler says so (the type of `None`).
pub struct Untracked;

impl Effects for Untracked {
    async fn write(self, world: &World, effect: Event) -> Option<u64> {
        let Event::Effect { id, .. } = effect else {
            return None;
        };
        world.history.push(effect);
        Some(id)
    }
}

/// The effect as a row of `table`, written in a transactional endpoint's transaction.
pub struct InTransaction {
    pub tx: IdemTx,
    pub table: String,
}

impl Effects for InTransaction {
    async fn write(self, world: &World, effect: Event) -> Option<u64> {
        let Event::Effect { id, op, req, .. } = effect else {
            return None;
        };
        let db = self.tx.client().await.ok()?;
        let sql = format!(
            "INSERT INTO {} (id, op, req) VALUES ($1, $2, $3)",
            self.table
        );
        let params: [&(dyn ToSql + Sync); 3] = [&(id as i64), &(op as i64), &(req as i64)];
        db.execute(sql.as_str(), &params).await.ok()?;
        world.history.push(effect);
        Some(id)
    }
}

/// The effect as the steps of a multi-step operation: a `run` step writing the row of `table`
/// (it commits with its step record), then a `foreign` step charging the processor under its
/// downstream key (recorded as [`Event::Charged`]).
pub struct AsSteps {
    pub steps: Steps,
    pub table: String,
}

impl Effects for AsSteps {
    async fn write(self, world: &World, effect: Event) -> Option<u64> {
        let Event::Effect {
            id,
            op,
            req,
            instance,
            ..
        } = effect.clone()
        else {
            return None;
        };
        let table = self.table;
        let stood: u64 = self
            .steps
            .run("effect", async |tx| {
                let sql = format!("INSERT INTO {table} (id, op, req) VALUES ($1, $2, $3)");
                let params: [&(dyn ToSql + Sync); 3] = [&(id as i64), &(op as i64), &(req as i64)];
                tx.execute(sql.as_str(), &params).await?;
                // Written: had if it commits (the run keeps committed rows only).
                world.history.push(effect);
                Ok::<u64, idem_runtime::tokio_postgres::Error>(id)
            })
            .await
            .ok()?;
        self.steps
            .foreign(CHARGE, async |key| {
                world.history.push(Event::Charged {
                    op,
                    req,
                    instance,
                    at: world.now(),
                    key: key.to_owned(),
                });
                Ok::<String, std::io::Error>(key.to_owned())
            })
            .await
            .ok()?;
        Some(stood)
    }
}
