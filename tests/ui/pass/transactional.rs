// A transactional handler: it takes the transaction as an extractor, next to its others.
#![deny(warnings)]

use actix_web::{post, web, App, HttpResponse};
use idem::{idempotent, Idempotency, IdempotencyContext};
// PostgreSQL items come from the runtime: `idem` re-exports them with its own `postgres`
// feature, which a package cannot turn on for its own tests.
use idem_runtime::IdemTx;

#[derive(serde::Deserialize)]
struct Charge {
    amount: i64,
}

#[post("/charges")]
#[idempotent(store = "pg", transactional, on_conflict = "wait")]
async fn charge(
    tx: IdemTx,
    ctx: IdempotencyContext,
    body: web::Json<Charge>,
) -> actix_web::Result<HttpResponse> {
    let db = tx.client().await?;
    db.execute(
        "INSERT INTO ledger (operation, amount) VALUES ($1, $2)",
        &[&ctx.key(), &body.amount],
    )
    .await
    .map_err(actix_web::error::ErrorInternalServerError)?;
    Ok(HttpResponse::Created().finish())
}

#[post("/refunds")]
#[idempotent(transactional, required = false)]
async fn refund(tx: Option<IdemTx>) -> HttpResponse {
    HttpResponse::Created().json(tx.is_some())
}

fn main() {
    let idem = Idempotency::builder().unscoped().build();
    let _app = App::new().app_data(idem).service(charge).service(refund);
}
