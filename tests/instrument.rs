//! `#[tracing::instrument]` stacked under `#[idempotent]` names its span after the handler (the
//! expansion keeps the user's function name), and its fields are recorded.

mod common;

use actix_web::{post, HttpResponse};
use idem::idempotent;
use std::sync::{Arc, Mutex};
use tracing::span;
use tracing::subscriber::Subscriber;

/// A subscriber that keeps the names of the spans created.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<String>>>);

impl Subscriber for Spans {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &span::Attributes<'_>) -> span::Id {
        let mut names = self.0.lock().unwrap();
        names.push(attrs.metadata().name().to_owned());
        span::Id::from_u64(names.len() as u64)
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

#[post("/charge")]
#[idempotent]
#[tracing::instrument(skip_all)]
async fn create_charge() -> HttpResponse {
    HttpResponse::Created().finish()
}

#[actix_web::test]
async fn an_instrumented_handler_names_its_span_after_itself() {
    let spans = Spans::default();
    // Global: the server's worker runs on threads of its own. This binary has this one test.
    tracing::subscriber::set_global_default(spans.clone()).expect("the only subscriber");
    let idem = common::builder().build();
    let (addr, _h) = common::serve(1, move |cfg| {
        cfg.app_data(idem.clone()).service(create_charge);
    });
    let r = common::client()
        .post(format!("http://{addr}/charge"))
        .header("Idempotency-Key", "traced")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let names = spans.0.lock().unwrap().clone();
    assert!(
        names.iter().any(|n| n == "create_charge"),
        "spans created: {names:?}"
    );
    assert!(!names.iter().any(|n| n.contains("__idem")), "{names:?}");
}
