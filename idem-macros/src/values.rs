//! The values of the attribute's enumerated options as types. Each is parsed once from its
//! string and written as the runtime's own path; every match over them is exhaustive, so a value
//! that validation lets through can never fall silently to a default.

use proc_macro2::TokenStream;
use quote::quote;

/// An option whose value is one of a fixed set of names.
pub(crate) trait Choice: Sized + Copy {
    /// The accepted spellings, the default first.
    const NAMES: &'static [&'static str];
    /// The value an accepted spelling names.
    fn from_name(name: &str) -> Option<Self>;
}

/// An enum of named values: `Choice`, its spelling, and its path in the runtime's `__private`.
macro_rules! choice {
    ($(#[$doc:meta])* $ty:ident { $($variant:ident = $name:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) enum $ty {
            $($variant),+
        }

        impl Choice for $ty {
            const NAMES: &'static [&'static str] = &[$($name),+];
            fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($name => Some($ty::$variant),)+
                    _ => None,
                }
            }
        }

        impl $ty {
            /// How the attribute spells it (for messages; not every option needs it).
            #[allow(dead_code)]
            pub(crate) fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }

            /// The runtime's value, under `private` (`<crate>::__private_vN`).
            pub(crate) fn tokens(self, private: &TokenStream) -> TokenStream {
                match self {
                    $($ty::$variant => quote!(#private::$ty::$variant)),+
                }
            }
        }
    };
}

choice!(
    /// `guarantee`.
    Guarantee { Strict = "strict", Result = "result", Semantic = "semantic" }
);
choice!(
    /// `on_conflict`.
    OnConflict { RetryAfter = "retry_after", Wait = "wait", Accepted = "accepted", Webhook = "webhook" }
);
choice!(
    /// `on_store_error`.
    OnStoreError { Reject = "reject", Proceed = "proceed" }
);

/// Where a `key` source reads the key (the part before the colon).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Header,
    Query,
    Form,
    Cookie,
}

impl Choice for KeyKind {
    const NAMES: &'static [&'static str] = &["header", "query", "form", "cookie"];
    fn from_name(name: &str) -> Option<Self> {
        match name {
            "header" => Some(KeyKind::Header),
            "query" => Some(KeyKind::Query),
            "form" => Some(KeyKind::Form),
            "cookie" => Some(KeyKind::Cookie),
            _ => None,
        }
    }
}

impl KeyKind {
    /// The runtime's `KeySource` reading `name` from this kind of place.
    pub(crate) fn tokens(self, private: &TokenStream, name: &str) -> TokenStream {
        match self {
            KeyKind::Header => quote!(#private::KeySource::Header(#name)),
            KeyKind::Query => quote!(#private::KeySource::Query(#name)),
            KeyKind::Form => quote!(#private::KeySource::Form(#name)),
            KeyKind::Cookie => quote!(#private::KeySource::Cookie(#name)),
        }
    }
}
