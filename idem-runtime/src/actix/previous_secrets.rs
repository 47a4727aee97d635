//! The adapters' side of rotating the app secret: the builder's previous secrets, and the
//! derivation an operation resumed across a rotation keeps (see `crate::rotation`).

use std::sync::Arc;

use super::{Idempotency, IdempotencyBuilder};
use crate::engine::Ticket;
use crate::secret::KeyDerivation;

impl<S> IdempotencyBuilder<S> {
    /// Secrets this app used before its current [`secret`](Self::secret), newest first: used to
    /// look up records written under them, never to write. A retry whose record was written
    /// under a previous secret replays it, is answered as in progress, or resumes its operation
    /// (with the downstream keys it started with); it never runs again. Records sealed under
    /// them still open (unless [`sealing_keys`](Self::sealing_keys) are set: then list the old
    /// sealing key there too).
    ///
    /// To rotate, with every instance of the app knowing, at every moment, the secret every
    /// other instance writes under (see docs/secrets.md):
    /// 1. deploy `secret(old)` with `previous_secrets([new])` — everyone still writes under
    ///    `old`, and already looks under `new`;
    /// 2. deploy `secret(new)` with `previous_secrets([old])`;
    /// 3. once the longest `ttl` has passed, deploy `secret(new)` alone.
    ///
    /// Every acquisition of a key costs one more `begin` (and one delete) per previous secret:
    /// keep them only for the rotation.
    pub fn previous_secrets<I, K>(mut self, secrets: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: Into<Vec<u8>>,
    {
        self.settings.previous_secrets = secrets
            .into_iter()
            .map(Into::into)
            .filter(|s: &Vec<u8>| !s.is_empty())
            .collect();
        self
    }
}

impl Idempotency {
    /// The derivation `ticket`'s operation started under: the current secret's, or a previous
    /// one's for an operation resumed across a rotation (its downstream keys do not change).
    pub(crate) fn derivation_for(&self, ticket: &Ticket) -> Arc<KeyDerivation> {
        ticket
            .derivation()
            .cloned()
            .unwrap_or_else(|| self.shared.derivation.clone())
    }
}

impl Idempotency {
    /// Every derivation a record of this app may be under: the current secret's, then the
    /// previous ones' (for the status resource and the operator's tools).
    pub(crate) fn derivations(&self) -> impl Iterator<Item = &Arc<KeyDerivation>> {
        std::iter::once(&self.shared.derivation).chain(self.shared.earlier.iter())
    }
}
