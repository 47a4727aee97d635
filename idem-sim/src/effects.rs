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
    /// before — or the status to answer instead: 500 if it could not be written, 503 if
    /// `refused` made its processor refuse it.
    fn write(
        self,
        world: &World,
        effect: Event,
        refused: bool,
    ) -> impl Future<Output = Result<u64, u16>>;

    /// Whether a run that fails (the operation's first runs, see `OpBehaviour::fails_first`)
    /// fails inside the writer — a `Steps` operation's processor refusing the charge after the
    /// first step — rather than before any effect.
    fn fails_late(&self) -> bool {
        false
    }
}

/// No writer: the effect is had when the handler says so (the type of `None`).
pub struct Untracked;

impl Effects for Untracked {
    async fn write(self, world: &World, effect: Event, _: bool) -> Result<u64, u16> {
        let Event::Effect { id, .. } = effect else {
            return Err(500);
        };
        world.history.push(effect);
        Ok(id)
    }
}

/// The effect as a row of `table`, written in a transactional endpoint's transaction.
pub struct InTransaction {
    pub tx: IdemTx,
    pub table: String,
}

impl Effects for InTransaction {
    async fn write(self, world: &World, effect: Event, _: bool) -> Result<u64, u16> {
        let Event::Effect { id, op, req, .. } = effect else {
            return Err(500);
        };
        let db = self.tx.client().await.map_err(|_| 500u16)?;
        let sql = format!(
            "INSERT INTO {} (id, op, req) VALUES ($1, $2, $3)",
            self.table
        );
        let params: [&(dyn ToSql + Sync); 3] = [&(id as i64), &(op as i64), &(req as i64)];
        db.execute(sql.as_str(), &params)
            .await
            .map_err(|_| 500u16)?;
        world.history.push(effect);
        Ok(id)
    }
}

/// The effect as the steps of a multi-step operation: a `run` step writing the row of `table`
/// (it commits with its step record), then a `foreign` step charging the processor under its
/// downstream key (recorded as [`Event::Charged`]) — which refuses it on the operation's first
/// failing runs: a 503 after the first step, which the next attempt resumes.
pub struct AsSteps {
    pub steps: Steps,
    pub table: String,
}

impl Effects for AsSteps {
    fn fails_late(&self) -> bool {
        true
    }

    async fn write(self, world: &World, effect: Event, refused: bool) -> Result<u64, u16> {
        let Event::Effect {
            id,
            op,
            req,
            instance,
            ..
        } = effect.clone()
        else {
            return Err(500);
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
            .map_err(|_| 500u16)?;
        self.steps
            .foreign(CHARGE, async |key| {
                if refused {
                    return Err(std::io::Error::other("the processor is down"));
                }
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
            .map_err(|_| 503u16)?;
        Ok(stood)
    }
}
