//! The request pipeline. [`handle`] opens a [`scope::Scope`] (the request's
//! bookkeeping, finished in `Drop` whatever ends the request) and runs
//! [`pipeline`], which calls one named step per stage, in the order
//! ARCHITECTURE.md describes ("The request pipeline"): reserve the audit
//! slot, dispatch webhooks, admit, route, authorize, pick the credential,
//! the route's kill switch, limit, read the body, canonicalize, claim,
//! reserve the amount, credential, prepare, send, respond. Every refusal is
//! a [`GatewayError`], answered as the contract's JSON error.

mod context;
mod error;
mod exchange;
mod record;
mod response;
mod scope;
mod steps;
mod webhook;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt as _;
use http::{Request, Response};
use hyper::body::Incoming;

pub use context::RequestId;
pub use error::GatewayError;
pub use response::ResponseBody;

use crate::listener::{ConnInfo, Handler};
use crate::state::Shared;
use scope::Scope;

/// The traffic listener's handler: the signing pipeline.
#[derive(Clone)]
pub(crate) struct Proxy {
    shared: Arc<Shared>,
}

impl Proxy {
    pub fn new(shared: Arc<Shared>) -> Self {
        Proxy { shared }
    }
}

impl Handler for Proxy {
    type Body = ResponseBody;

    fn call(
        self,
        req: Request<Incoming>,
        conn: Arc<ConnInfo>,
    ) -> impl std::future::Future<Output = Response<ResponseBody>> + Send + 'static {
        handle(self.shared, conn, req)
    }
}

/// Serve one request. Never fails: refusals become JSON error responses, a
/// panic inside the pipeline becomes a 500 for that request only, and a
/// request its client abandons is still counted and audited (its scope
/// finishes in `Drop`).
async fn handle(shared: Arc<Shared>, conn: Arc<ConnInfo>, req: Request<Incoming>) -> Response<ResponseBody> {
    let mut scope = Scope::open(shared, conn, &req);
    let result = AssertUnwindSafe(pipeline(&mut scope, req))
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            tracing::error!(request_id = scope.rid.as_str(), "panic while handling a request");
            Err(GatewayError::Internal)
        });
    let mut resp = scope.finish(result);
    // HTTP/2: an early answer waits for the rest of the request body,
    // within the linger bounds (`response`).
    resp.body_mut().discard_first().await;
    resp
}

/// The steps in order (see the module doc); each returns early with its refusal.
async fn pipeline(scope: &mut Scope, req: Request<Incoming>) -> Result<Response<ResponseBody>, GatewayError> {
    let parts = scope.take_body(req);
    steps::reserve_audit(scope).await?;
    if let Some(hook) = scope.snap.webhook_for(parts.uri.path()).cloned() {
        // Boxed: the webhook path's future would otherwise size every
        // request's pipeline (moved whole into the connection's task).
        return Box::pin(webhook::receive(scope, &hook, &parts)).await;
    }
    steps::admit(scope, &parts)?;
    let route = steps::route(scope, &parts)?;
    steps::authorize(scope, &route)?;
    let slot = steps::pick_credential(scope, &route)?;
    steps::enabled(scope, &route)?;
    steps::limit(scope, Some(&route)).await?;
    let raw = steps::read_body(scope, &parts).await?;
    let body = steps::canonicalize(&route, raw)?;
    let claim = steps::claim(scope, &route, &parts, &body).await?;
    let reservation = steps::reserve_amount(scope, &route, &body).await?;
    let holds = exchange::Holds { claim, reservation };
    let cred = steps::credential(scope, &slot)?;
    let outgoing = steps::prepare(scope, &route, parts, body).await?;
    // A cooldown that began, or a kill switch turned, while this request
    // waited: the claim and the reservation are released as they drop
    // (nothing was sent).
    steps::cooled(scope, &route)?;
    steps::enabled(scope, &route)?;
    let exchanged = exchange::send(scope, &route, cred, outgoing, holds).await?;
    Ok(response::respond(scope, &route, exchanged))
}
