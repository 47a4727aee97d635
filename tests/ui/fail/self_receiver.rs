use idem::idempotent;

struct Api;

impl Api {
    #[idempotent]
    async fn create(&self) -> &'static str {
        "ok"
    }
}

fn main() {}
