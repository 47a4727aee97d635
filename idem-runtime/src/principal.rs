//! Who a request belongs to, as the app's scope finds it — one principal, none, or an
//! ambiguous answer — and what a keyed request gets when it is not exactly one.

use crate::problem::{Problem, ProblemKind};

/// What the app's scope found on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Found {
    /// One principal.
    One(String),
    /// None: no scope header (or an empty one), no extension, the closure returned none.
    Missing,
    /// The scope header came with more than one value.
    Ambiguous,
    /// The scope header's value is not UTF-8: read lossily, two different values would become
    /// one principal.
    Unreadable,
}

/// Headers whose value may itself contain commas (an authentication scheme's parameters):
/// there a comma does not separate two values.
const NOT_LISTS: [&str; 2] = ["authorization", "proxy-authorization"];

/// What the values of scope header `name` say: one non-blank value is the principal (without
/// the spaces and tabs around it, as HTTP/1 parsers already strip them); none (or a blank one)
/// is missing; two lines — or, for a header that is not a credential, one line holding a
/// comma-separated list — are ambiguous. A gateway that appends its authenticated value behind
/// the client's own produces exactly that, and the first value would be the client's. A value
/// that is not UTF-8 is refused, never read lossily (`j\xFCrgen` and `j\xF6rgen` would be one).
pub(crate) fn from_header<'a>(name: &str, mut values: impl Iterator<Item = &'a [u8]>) -> Found {
    let Some(first) = values.next() else {
        return Found::Missing;
    };
    let listed = !NOT_LISTS.contains(&name) && first.contains(&b',');
    if values.next().is_some() || listed {
        return Found::Ambiguous;
    }
    match std::str::from_utf8(first) {
        Ok(v) => from_value(Some(v.trim_matches([' ', '\t']).to_owned())),
        Err(_) => Found::Unreadable,
    }
}

/// What a closure or an extension gave: a blank value is no principal.
pub(crate) fn from_value(value: Option<String>) -> Found {
    match value {
        Some(v) if !v.trim().is_empty() => Found::One(v),
        _ => Found::Missing,
    }
}

impl Found {
    /// The principal a keyed request runs under: its own, the anonymous scope (`""`) when the
    /// app allows requests without one, or the problem it is refused with.
    pub(crate) fn principal(self, anonymous: bool) -> Result<String, Problem> {
        match self {
            Found::One(p) => Ok(p),
            Found::Missing if anonymous => Ok(String::new()),
            Found::Missing => Err(Problem::new(
                ProblemKind::PrincipalMissing,
                "this request does not say who it belongs to (the app scopes idempotency keys \
                 by an account its authentication sets), and the app does not accept anonymous \
                 requests with a key",
            )),
            Found::Ambiguous => Err(Problem::new(
                ProblemKind::ScopeAmbiguous,
                "the header this app scopes idempotency keys by came with more than one value; \
                 send it once",
            )),
            Found::Unreadable => Err(Problem::new(
                ProblemKind::ScopeAmbiguous,
                "the header this app scopes idempotency keys by is not UTF-8, so who the \
                 request belongs to cannot be read exactly",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(name: &str, values: &[&str]) -> Found {
        from_header(name, values.iter().map(|v| v.as_bytes()))
    }

    #[test]
    fn one_value_is_the_principal_two_are_ambiguous() {
        assert_eq!(found("x-account-id", &["a"]), Found::One("a".into()));
        assert_eq!(found("x-account-id", &[]), Found::Missing);
        assert_eq!(found("x-account-id", &[""]), Found::Missing);
        assert_eq!(found("x-account-id", &["a", "b"]), Found::Ambiguous);
        assert_eq!(found("x-account-id", &["a, b"]), Found::Ambiguous);
        assert_eq!(found("x-account-id", &["a,b"]), Found::Ambiguous);
        // A credential's parameters are not a list of credentials.
        let digest = r#"Digest username="a", realm="r""#;
        assert_eq!(found("authorization", &[digest]), Found::One(digest.into()));
        assert_eq!(
            found("authorization", &["Bearer a", "Bearer b"]),
            Found::Ambiguous
        );
        assert_eq!(from_value(Some(String::new())), Found::Missing);
        // Blank is nobody; the spaces around a value are not part of it (HTTP/2 keeps them).
        assert_eq!(found("x-account-id", &[" \t "]), Found::Missing);
        assert_eq!(found("x-account-id", &[" a "]), Found::One("a".into()));
        assert_eq!(from_value(Some("  ".into())), Found::Missing);
    }

    #[test]
    fn a_value_that_is_not_utf8_is_refused_not_read_lossily() {
        let latin1 = [b"j\xFCrgen".as_slice()];
        assert_eq!(
            from_header("x-account-id", latin1.into_iter()),
            Found::Unreadable
        );
        let refused = Found::Unreadable.principal(true).map_err(|p| p.kind);
        assert_eq!(refused, Err(ProblemKind::ScopeAmbiguous));
    }

    #[test]
    fn a_missing_principal_is_refused_unless_anonymous_requests_are_allowed() {
        assert_eq!(Found::Missing.principal(true).ok(), Some(String::new()));
        let refused = Found::Missing.principal(false).map_err(|p| p.kind);
        assert_eq!(refused, Err(ProblemKind::PrincipalMissing));
        let ambiguous = Found::Ambiguous.principal(true).map_err(|p| p.kind);
        assert_eq!(ambiguous, Err(ProblemKind::ScopeAmbiguous));
    }
}
