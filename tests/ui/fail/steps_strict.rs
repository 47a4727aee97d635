use actix_web::{post, HttpResponse};
use idem::idempotent;
use idem_runtime::{StepError, Steps};

// Under `strict` (the default) a step's failure would be kept as the operation's final answer
// while the operation is half done.
#[post("/a")]
#[idempotent(store = "pg")]
async fn implicit(steps: Steps) -> Result<HttpResponse, StepError> {
    steps.foreign("x", async |_| Ok::<_, std::io::Error>(1)).await?;
    Ok(HttpResponse::Ok().finish())
}

#[post("/b")]
#[idempotent(store = "pg", guarantee = "strict")]
async fn explicit(steps: idem_runtime::Steps) -> Result<HttpResponse, StepError> {
    steps.foreign("x", async |_| Ok::<_, std::io::Error>(1)).await?;
    Ok(HttpResponse::Ok().finish())
}

fn main() {}
