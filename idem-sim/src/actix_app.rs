//! The actix-web app of an instance (the attribute's runtime entry point, in-process): one
//! route per actix-web endpoint, each with its `Idempotency`, its policy and the shared
//! handler, its effect written as the endpoint says (plain, in a transaction, as steps). Built
//! from `Send` parts: the completer of an instance serving `Steps` endpoints builds it again on
//! its own thread.

use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{web, FromRequest, HttpMessage, HttpRequest, HttpResponse};
use idem_runtime::__private_v0_1::Policy;
use idem_runtime::{Idempotency, IdempotencyContext, Resumed};

use crate::app::{path, req_id, Handler, REQ_HEADER};
use crate::effects::{AsSteps, InTransaction, Untracked, CHARGE};

/// How a route's handler has its effect.
#[derive(Clone)]
pub enum Mode {
    /// When it says so.
    Plain,
    /// As a row of this table, in its `IdemTx` transaction.
    Transactional(String),
    /// As the steps of a multi-step operation, the row in this table.
    Steps(String),
}

/// One actix-web route.
#[derive(Clone)]
pub struct Route {
    /// The endpoint's index (its path).
    pub index: usize,
    pub policy: &'static Policy,
    pub idem: Idempotency,
    pub handler: Handler,
    pub effects: Mode,
}

/// The app serving `routes`.
pub fn app(
    routes: &[Route],
) -> actix_web::App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let mut app = actix_web::App::new();
    for r in routes {
        let route = r.clone();
        app = app.service(web::resource(path(r.index)).app_data(r.idem.clone()).route(
            web::post().to(move |req: HttpRequest, payload: web::Payload| {
                let route = route.clone();
                idem_runtime::__private_v0_1::run(req, payload, route.policy, move |req, p| {
                    handle(route, req, p)
                })
            }),
        ));
    }
    app
}

/// One request, through the route's handler.
async fn handle(
    route: Route,
    req: HttpRequest,
    mut payload: actix_web::dev::Payload,
) -> actix_web::Result<HttpResponse> {
    let h = route.handler;
    // A request the completer re-sent keeps none of the client's own headers: an id of its own.
    let id = match req_id(req.headers().get(REQ_HEADER).map(|v| v.as_bytes())) {
        0 if Resumed::of(&req).is_some() => h.world.next_req(),
        id => id,
    };
    // (Asked after the extractors, as a handler's body does: `Steps` fixes the operation the
    // key derives from.)
    let downstream = |req: &HttpRequest| {
        req.extensions()
            .get::<IdempotencyContext>()
            .map(|c| c.downstream_key(CHARGE))
    };
    let (status, out) = match route.effects {
        Mode::Plain => {
            let body = web::Bytes::from_request(&req, &mut payload).await?;
            h.answer(id, downstream(&req), &body, None::<Untracked>)
                .await
        }
        Mode::Transactional(table) => {
            let tx = idem_runtime::IdemTx::from_request(&req, &mut payload).await?;
            let body = web::Bytes::from_request(&req, &mut payload).await?;
            let write = InTransaction { tx, table };
            h.answer(id, downstream(&req), &body, Some(write)).await
        }
        Mode::Steps(table) => {
            let steps = idem_runtime::Steps::from_request(&req, &mut payload).await?;
            let body = web::Bytes::from_request(&req, &mut payload).await?;
            let write = AsSteps { steps, table };
            h.answer(id, downstream(&req), &body, Some(write)).await
        }
    };
    let status =
        actix_web::http::StatusCode::from_u16(status).unwrap_or(actix_web::http::StatusCode::OK);
    Ok(HttpResponse::build(status)
        .content_type("application/json")
        .body(out))
}
