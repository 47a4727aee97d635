//! The adapters' side of rotating the app secret: the builder's previous secrets, and the
//! derivation an operation resumed across a rotation keeps (see `crate::rotation`).

use std::sync::Arc;

use super::config::{Settings, Shared};
use super::{Idempotency, IdempotencyBuilder};
use crate::engine::Ticket;
use crate::seal::{RecordSeal, Sealer};
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

    /// The app ran without a [`secret`](Self::secret) before the current one: also look up
    /// the records written without one, as a previous secret. Adopting a first secret (as the
    /// startup warning asks) takes the three steps of a rotation, "no secret" being the old one
    /// (docs/secrets.md):
    /// 1. deploy without a secret, with `previous_secrets([new])` — everyone still writes
    ///    without one (in clear), and already looks under `new` (and opens what it sealed);
    /// 2. deploy `secret(new)` with `previously_without_secret()`;
    /// 3. once the longest `ttl` has passed, deploy `secret(new)` alone.
    ///
    /// Until step 3, a record in clear under the public derivation is replayed as it is (it was
    /// written without a secret): whoever can write to the store can plant one there.
    /// Nothing to do for an app without a secret.
    pub fn previously_without_secret(mut self) -> Self {
        self.settings.previously_without_secret = true;
        self
    }
}

impl Settings {
    /// The derivations of the previous secrets, newest first, then the public one when the app ran
    /// without a secret before. The current secret among them would look up every request's own
    /// record: dropped.
    pub(super) fn earlier(&self) -> Vec<Arc<KeyDerivation>> {
        let keyed = self
            .previous_secrets
            .iter()
            .filter(|s| Some(*s) != self.secret.as_ref())
            .map(|s| Arc::new(KeyDerivation::keyed(s)));
        let public = (self.previously_without_secret && self.secret.as_ref().is_some())
            .then(|| Arc::new(KeyDerivation::unkeyed()));
        keyed.chain(public).collect()
    }

    /// What seals and opens stored responses. Without sealing keys, records are sealed under the
    /// secret and still open under the previous ones; an app without a secret that looks under
    /// one (step 1 of adopting it) seals nothing but opens what it sealed.
    pub(super) fn sealer(&self) -> Option<Arc<Sealer>> {
        match (&self.sealing_keys[..], self.secret.as_ref()) {
            ([], Some(secret)) => Sealer::new(
                &std::iter::once(secret.clone())
                    .chain(self.previous_secrets.iter().cloned())
                    .collect::<Vec<_>>(),
            ),
            ([], None) => Sealer::open_only(&self.previous_secrets),
            (keys, _) => Sealer::new(keys),
        }
    }
}

impl Shared {
    /// The seal of the record of raw key `raw` under `derivation` (see
    /// [`RecordSeal::for_derivation`]).
    pub(crate) fn seal_for(&self, derivation: &KeyDerivation, raw: &str) -> Option<RecordSeal> {
        let seal = self.sealer.as_ref()?.record(raw);
        Some(seal.for_derivation(derivation.is_keyed()))
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
