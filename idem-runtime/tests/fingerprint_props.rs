//! Property tests of the `result` and `semantic` fingerprints: the same JSON value spelled any
//! way gives the same fingerprint; any change of a value, a key or an array's order changes it;
//! `semantic` ignores exactly the fields it is not told to look at.

use idem_runtime::Fingerprint;
use proptest::prelude::*;
use std::collections::BTreeMap;

/// A JSON value as the generator sees it: numbers as `mantissa × 10^exp`, unique object keys.
#[derive(Debug, Clone)]
enum G {
    Null,
    Bool(bool),
    Num(i64, i32),
    Str(String),
    Arr(Vec<G>),
    Obj(BTreeMap<String, G>),
}

fn leaf() -> impl Strategy<Value = G> {
    prop_oneof![
        Just(G::Null),
        any::<bool>().prop_map(G::Bool),
        (-1_000_000i64..1_000_000, -6i32..6).prop_map(|(m, e)| G::Num(m, e)),
        "[a-zA-Z0-9 é\"\\\\/\n😀]{0,8}".prop_map(G::Str),
    ]
}

fn json() -> impl Strategy<Value = G> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(G::Arr),
            prop::collection::btree_map("[a-e]{1,3}", inner, 0..6).prop_map(G::Obj),
        ]
    })
}

/// How to spell a value: key order, whitespace, number spelling, string escapes.
#[derive(Debug, Clone)]
struct Style {
    seed: u64,
}

impl Style {
    fn pick(&mut self, n: usize) -> usize {
        // xorshift: deterministic per style, different choices at every call.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        (self.seed % n.max(1) as u64) as usize
    }

    fn ws(&mut self) -> &'static str {
        ["", " ", "\n  ", "\t"][self.pick(4)]
    }
}

fn number(m: i64, e: i32, st: &mut Style) -> String {
    // Pad with k zeros (m·10^k × 10^(e−k)), then write it as an exponent or as a decimal.
    let k = st.pick(3) as i32;
    let digits = format!("{}{}", m.unsigned_abs(), "0".repeat(k as usize));
    let exp = e - k;
    let sign = if m < 0 { "-" } else { "" };
    if st.pick(2) == 0 || m == 0 {
        return format!("{sign}{digits}{}{exp}", ["e", "E"][st.pick(2)]);
    }
    if exp >= 0 {
        return format!("{sign}{digits}{}", "0".repeat(exp as usize));
    }
    let point = (-exp) as usize;
    let padded = format!(
        "{}{digits}",
        "0".repeat((point + 1).saturating_sub(digits.len()))
    );
    let (int, frac) = padded.split_at(padded.len() - point);
    format!("{sign}{int}.{frac}")
}

fn string(s: &str, st: &mut Style) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '/' if st.pick(2) == 0 => out.push_str("\\/"),
            c if st.pick(3) == 0 => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn render(g: &G, st: &mut Style) -> String {
    match g {
        G::Null => "null".into(),
        G::Bool(b) => b.to_string(),
        G::Num(m, e) => number(*m, *e, st),
        G::Str(s) => string(s, st),
        G::Arr(items) => {
            let parts: Vec<String> = items.iter().map(|v| render(v, st)).collect();
            let sep = format!(",{}", st.ws());
            format!("[{}{}{}]", st.ws(), parts.join(&sep), st.ws())
        }
        G::Obj(map) => {
            let mut members: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}{}:{}{}", string(k, st), st.ws(), st.ws(), render(v, st)))
                .collect();
            // Shuffle member order.
            for i in (1..members.len()).rev() {
                let j = st.pick(i + 1);
                members.swap(i, j);
            }
            format!("{{{}{}}}", st.ws(), members.join(","))
        }
    }
}

fn result_fp(doc: &str) -> Fingerprint {
    Fingerprint::result("POST", "/orders", "application/json", doc.as_bytes())
}

/// Same value, as the canonical form sees it (numbers by exact value).
fn same_value(a: &G, b: &G) -> bool {
    let plain = |g: &G| {
        idem_runtime::__support::canonical::parse(render(g, &mut Style { seed: 1 }).as_bytes()).map(
            |j| {
                let mut out = Vec::new();
                j.encode(&mut out);
                out
            },
        )
    };
    plain(a) == plain(b)
}

fn leaves(g: &G) -> usize {
    match g {
        G::Arr(items) => items.iter().map(leaves).sum(),
        G::Obj(map) => map.values().map(leaves).sum(),
        _ => 1,
    }
}

/// Changes one leaf (the `pick`-th, in document order) into something else.
fn mutate_leaf(g: &mut G, pick: &mut usize) -> bool {
    match g {
        G::Arr(items) => items.iter_mut().any(|v| mutate_leaf(v, pick)),
        G::Obj(map) => map.values_mut().any(|v| mutate_leaf(v, pick)),
        leaf => {
            if *pick > 0 {
                *pick -= 1;
                return false;
            }
            *leaf = match leaf {
                G::Null => G::Bool(false),
                G::Bool(b) => G::Bool(!*b),
                G::Num(m, e) => G::Num(*m + 1, *e),
                G::Str(s) => G::Str(format!("{s}x")),
                _ => unreachable!("containers are handled above"),
            };
            true
        }
    }
}

/// Renames the first key of the first object found (to one no object here uses).
fn rename_key(g: &mut G) -> bool {
    match g {
        G::Obj(map) => {
            if let Some(k) = map.keys().next().cloned() {
                let v = map.remove(&k).unwrap();
                map.insert(format!("{k}-renamed-zz"), v);
                return true;
            }
            false
        }
        G::Arr(items) => items.iter_mut().any(rename_key),
        _ => false,
    }
}

/// Swaps two elements of the first array that has two different ones.
fn swap_array(g: &mut G) -> bool {
    match g {
        G::Arr(items) => {
            for i in 1..items.len() {
                if !same_value(&items[0], &items[i]) {
                    items.swap(0, i);
                    return true;
                }
            }
            items.iter_mut().any(swap_array)
        }
        G::Obj(map) => map.values_mut().any(swap_array),
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn spelling_does_not_matter(g in json(), a in any::<u64>(), b in any::<u64>()) {
        let one = render(&g, &mut Style { seed: a | 1 });
        let two = render(&g, &mut Style { seed: b | 1 });
        prop_assert_eq!(result_fp(&one), result_fp(&two), "{} vs {}", one, two);
    }

    #[test]
    fn any_change_of_a_value_changes_it(g in json(), pick in any::<usize>(), seed in any::<u64>()) {
        let mut changed = g.clone();
        let mut n = pick % leaves(&g).max(1);
        if !mutate_leaf(&mut changed, &mut n) {
            // Only empty containers: the change is adding an element.
            changed = match changed {
                G::Arr(mut items) => { items.push(G::Null); G::Arr(items) }
                G::Obj(mut map) => { map.insert("new".into(), G::Null); G::Obj(map) }
                other => other,
            };
        }
        let before = render(&g, &mut Style { seed: seed | 1 });
        let after = render(&changed, &mut Style { seed: seed | 1 });
        prop_assert_ne!(result_fp(&before), result_fp(&after), "{} vs {}", before, after);
    }

    #[test]
    fn any_change_of_a_key_changes_it(
        map in prop::collection::btree_map("[a-e]{1,3}", json(), 1..5),
        seed in any::<u64>(),
    ) {
        let g = G::Obj(map);
        let mut changed = g.clone();
        prop_assert!(rename_key(&mut changed));
        let before = render(&g, &mut Style { seed: seed | 1 });
        let after = render(&changed, &mut Style { seed: seed | 1 });
        prop_assert_ne!(result_fp(&before), result_fp(&after));
    }

    #[test]
    fn array_order_changes_it(items in prop::collection::vec(json(), 2..6), seed in any::<u64>()) {
        let g = G::Arr(items);
        let mut changed = g.clone();
        prop_assume!(swap_array(&mut changed));
        let before = render(&g, &mut Style { seed: seed | 1 });
        let after = render(&changed, &mut Style { seed: seed | 1 });
        prop_assert_ne!(result_fp(&before), result_fp(&after));
    }

    #[test]
    fn semantic_ignores_exactly_the_unlisted_fields(
        listed in prop::collection::btree_map("[a-c]", leaf(), 0..3),
        unlisted in prop::collection::btree_map("[x-z]", json(), 0..3),
        other in prop::collection::btree_map("[x-z]", json(), 0..3),
        bump in "[a-c]",
        seed in any::<u64>(),
    ) {
        let pointers = ["/a", "/b", "/c"];
        let doc = |fields: &BTreeMap<String, G>, rest: &BTreeMap<String, G>| {
            let mut all = fields.clone();
            all.extend(rest.clone());
            render(&G::Obj(all), &mut Style { seed: seed | 1 })
        };
        let fp = |d: &str| Fingerprint::semantic("POST", "/p", &pointers, d.as_bytes());
        // Unlisted fields may change freely.
        prop_assert_eq!(fp(&doc(&listed, &unlisted)), fp(&doc(&listed, &other)));
        // A listed field may not: change (or add) one.
        let mut changed = listed.clone();
        let entry = changed.entry(bump.clone()).or_insert(G::Null);
        let mut n = 0;
        mutate_leaf(entry, &mut n);
        prop_assert_ne!(fp(&doc(&listed, &unlisted)), fp(&doc(&changed, &unlisted)));
        // A missing listed field is the same as an explicit null.
        let mut with_null = listed.clone();
        with_null.entry(bump).or_insert(G::Null);
        prop_assert_eq!(fp(&doc(&listed, &unlisted)), fp(&doc(&with_null, &unlisted)));
    }
}
