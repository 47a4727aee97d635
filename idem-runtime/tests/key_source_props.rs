//! Property tests of the key sources on hostile input: query strings, cookie headers and form
//! bodies of arbitrary bytes never panic; a key they return is always a valid key; and the key
//! field never changes a form's fingerprint body.

use idem_runtime::__support::key_source::{
    form_fingerprint_body, from_cookies, from_form, from_query, query_without,
};
use idem_runtime::__support::parse_key;
use proptest::prelude::*;

const MULTIPART: &str = "multipart/form-data; boundary=b0";

/// Bytes that look like forms often enough to reach the parsers' deeper branches.
fn formish() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..400),
        prop::collection::vec(
            prop_oneof![
                Just(b"&".to_vec()),
                Just(b"=".to_vec()),
                Just(b"_idem".to_vec()),
                Just(b"%".to_vec()),
                Just(b"%4".to_vec()),
                Just(b"+".to_vec()),
                Just(b"--b0".to_vec()),
                Just(b"\r\n".to_vec()),
                Just(b"\r\n\r\n".to_vec()),
                Just(b"Content-Disposition: form-data; name=\"_idem\"".to_vec()),
                Just(b"\"".to_vec()),
                "[ -~]{0,6}".prop_map(String::into_bytes),
            ],
            0..40
        )
        .prop_map(|parts| parts.concat()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn hostile_sources_never_panic_and_only_yield_valid_keys(body in formish()) {
        let text = String::from_utf8_lossy(&body).into_owned();
        for found in [
            from_query(&text, "_idem"),
            from_cookies([body.as_slice()], "_idem"),
            from_form("application/x-www-form-urlencoded", &body, "_idem").map_err(|_| idem_runtime::KeyError::Empty),
            from_form(MULTIPART, &body, "_idem").map_err(|_| idem_runtime::KeyError::Empty),
        ] {
            if let Ok(Some(key)) = found {
                prop_assert!(parse_key(key.as_str().as_bytes()).is_ok());
            }
        }
        let _ = query_without(&text, &["_idem"]);
        let _ = form_fingerprint_body(MULTIPART, &body, &["_idem"]);
    }

    #[test]
    fn the_key_field_never_changes_a_form_fingerprint(
        fields in prop::collection::vec(("[a-z]{1,5}", "[a-zA-Z0-9]{0,8}"), 0..6),
        k1 in "[a-zA-Z0-9-]{1,40}",
        k2 in "[a-zA-Z0-9-]{1,40}",
        at in 0usize..6,
    ) {
        let form = |key: &str| {
            let mut pairs: Vec<String> = fields
                .iter()
                .filter(|(n, _)| n != "_idem")
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            pairs.insert(at.min(pairs.len()), format!("_idem={key}"));
            pairs.join("&")
        };
        let ue = "application/x-www-form-urlencoded";
        let (a, b) = (form(&k1), form(&k2));
        prop_assert_eq!(
            form_fingerprint_body(ue, a.as_bytes(), &["_idem"]),
            form_fingerprint_body(ue, b.as_bytes(), &["_idem"])
        );
        let key = from_form(ue, a.as_bytes(), "_idem").unwrap().unwrap();
        prop_assert_eq!(key.as_str(), k1.as_str());
    }
}
