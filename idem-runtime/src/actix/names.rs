//! Endpoint names: the endpoint part of every storage key, and what metrics and the operator API
//! call an endpoint.
//!
//! A name is the attribute's `name = "payments.create"`, or else the request's method and matched
//! route pattern (`POST /payments`). Neither depends on where the handler lives in the Rust code,
//! so records outlive a rename or a move of the handler across a deploy. (A handler without a
//! route pattern — a default service — is named by its method and Rust path: a name per request
//! path would let clients mint names without bound.) A name belongs to one
//! handler per app: a second handler claiming it is refused (500) and logged.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::Policy;

/// The names this app's endpoints resolved to, each with the handler (module path) that owns
/// it. Names are leaked once each: there are as many as routes.
#[derive(Default)]
pub(crate) struct Names {
    owners: RwLock<HashMap<&'static str, &'static str>>,
}

/// Two handlers claim one name.
#[derive(Debug)]
pub(crate) struct Conflict {
    pub(crate) name: &'static str,
    pub(crate) owner: &'static str,
}

impl Names {
    /// The name of `policy`'s endpoint for a request with `method` that matched the route
    /// pattern `pattern` gives (none for a default service), claimed for its handler: what every
    /// adapter calls, so that one endpoint has one name whatever framework serves it.
    pub(crate) fn resolve_route(
        &self,
        policy: &'static Policy,
        method: &str,
        pattern: impl FnOnce() -> Option<String>,
    ) -> Result<&'static str, Conflict> {
        let derived;
        let name: &str = match policy.name {
            Some(name) => name,
            None => {
                // No route pattern (a default service matches any path): the handler's path
                // instead of the request's, so that names stay as few as the handlers and a
                // client cannot mint one per path.
                let route = pattern().unwrap_or_else(|| policy.endpoint.to_owned());
                derived = format!("{method} {route}");
                &derived
            }
        };
        let owned = |(name, owner): (&&'static str, &&'static str)| {
            if *owner == policy.endpoint {
                Ok(*name)
            } else {
                Err(Conflict { name, owner })
            }
        };
        if let Some(found) = self
            .owners
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get_key_value(name)
        {
            return owned(found);
        }
        let mut owners = self.owners.write().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = owners.get_key_value(name) {
            return owned(found);
        }
        let name: &'static str = match policy.name {
            Some(name) => name,
            None => Box::leak(name.to_owned().into_boxed_str()),
        };
        owners.insert(name, policy.endpoint);
        Ok(name)
    }
}
