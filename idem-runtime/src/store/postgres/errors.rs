//! What a PostgreSQL error means to the engine: an operator's fix, a store at capacity, or an
//! outage.

use tokio_postgres::error::SqlState;

use crate::store::StoreError;

/// What kind of store error a SQLSTATE is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Fixed by the operator, not by retrying.
    Config,
    /// The server answered that it has no room: class 53, insufficient resources — 53100
    /// `disk_full`, 53200 `out_of_memory`, 53300 `too_many_connections`, 53400
    /// `configuration_limit_exceeded`.
    Full,
    /// Anything else: I/O, a restart, a failover, a timeout.
    Unavailable,
}

/// The class of `code` (`None`: no SQLSTATE, an I/O or protocol error).
///
/// 53300 `too_many_connections` is `Full`, not `Unavailable`, on purpose: the server is up and
/// answered that it is at a capacity limit, which is what a flood of requests (ours, or another
/// app's on the same server) produces. Under `on_store_error = "proceed"` an outage runs
/// requests unprotected; a capacity limit must not, or a flood could switch idempotency off.
fn class(code: Option<&SqlState>) -> Class {
    let Some(code) = code else {
        return Class::Unavailable;
    };
    match &code.code()[..2] {
        // Syntax error or access rule violation, invalid authorization, invalid catalog name,
        // invalid schema name.
        "42" | "28" | "3D" | "3F" => Class::Config,
        "53" => Class::Full,
        _ => Class::Unavailable,
    }
}

/// A driver error as a store error, keeping it as the source (except for `Full`, which says it
/// all): what only the operator can fix (no such table, column or schema, no privilege, refused
/// credentials, no such database) is [`StoreError::Config`]; a server out of disk, memory or
/// connections [`StoreError::Full`]; anything else [`StoreError::Unavailable`].
pub(crate) fn failed(e: tokio_postgres::Error) -> StoreError {
    match class(e.code()) {
        Class::Config => StoreError::Config(Box::new(e)),
        Class::Full => {
            tracing::warn!(error = %e, "idem: PostgreSQL is out of resources; refusing requests until it recovers");
            StoreError::Full
        }
        Class::Unavailable => StoreError::Unavailable(Box::new(e)),
    }
}

/// A pool error as a store error: a connection the server refused is classified like any
/// driver error.
pub(super) fn pool_failed(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => failed(e),
        other => StoreError::Unavailable(Box::new(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_disk_memory_or_connections_is_full() {
        for code in [
            SqlState::DISK_FULL,
            SqlState::OUT_OF_MEMORY,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::INSUFFICIENT_RESOURCES,
            SqlState::CONFIGURATION_LIMIT_EXCEEDED,
        ] {
            assert_eq!(class(Some(&code)), Class::Full, "{}", code.code());
        }
    }

    #[test]
    fn what_an_operator_fixes_is_config_and_the_rest_unavailable() {
        for code in [
            SqlState::UNDEFINED_TABLE,
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::INVALID_PASSWORD,
            SqlState::UNDEFINED_DATABASE,
            SqlState::INVALID_SCHEMA_NAME,
        ] {
            assert_eq!(class(Some(&code)), Class::Config, "{}", code.code());
        }
        for code in [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::QUERY_CANCELED,
            SqlState::READ_ONLY_SQL_TRANSACTION,
        ] {
            assert_eq!(class(Some(&code)), Class::Unavailable, "{}", code.code());
        }
        assert_eq!(class(None), Class::Unavailable);
    }
}
