//! Canonical JSON for the `result` and `semantic` fingerprints.
//!
//! Two bodies that mean the same JSON value give the same bytes: object key order, whitespace,
//! string escapes (`"\u0041"` is `"A"`) and number spelling (`1`, `1.0`, `10e-1`, `1E0`) do not
//! matter. Numbers are compared as exact decimals, never through `f64`, so two different large
//! integers never collide. Any change of a value, a key, or the order of an array changes the
//! bytes.
//!
//! The parser is our own rather than `serde_json` because exact numbers would need serde_json's
//! `arbitrary_precision` feature, which changes `serde_json` for the whole dependency graph of
//! every user. It is bounded: nesting deeper than [`MAX_DEPTH`] is "not JSON" (the caller then
//! fingerprints the exact bytes), and it never panics on any input.

/// Deepest nesting accepted.
pub const MAX_DEPTH: usize = 128;

/// A parsed JSON value, numbers already canonical.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Json {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// Canonical decimal: sign, significant digits, exponent (`-12e3` for -12000).
    Num(String),
    /// A string, unescaped.
    Str(String),
    /// An array, in order.
    Arr(Vec<Json>),
    /// An object's members, in document order (duplicates kept).
    Obj(Vec<(String, Json)>),
}

/// Parses a whole document; `None` if it is not JSON (or nests deeper than [`MAX_DEPTH`]).
pub fn parse(bytes: &[u8]) -> Option<Json> {
    let mut p = Parser { b: bytes, i: 0 };
    let v = p.value(0)?;
    p.ws();
    (p.i == bytes.len()).then_some(v)
}

impl Json {
    /// Appends the canonical encoding: self-delimiting, with object members sorted.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Json::Null => out.push(b'n'),
            Json::Bool(true) => out.push(b't'),
            Json::Bool(false) => out.push(b'f'),
            Json::Num(n) => {
                out.push(b'd');
                out.extend_from_slice(n.as_bytes());
                out.push(b';');
            }
            Json::Str(s) => encode_str(s, out),
            Json::Arr(items) => {
                out.push(b'[');
                for v in items {
                    v.encode(out);
                }
                out.push(b']');
            }
            Json::Obj(members) => {
                let mut encoded: Vec<Vec<u8>> = members
                    .iter()
                    .map(|(k, v)| {
                        let mut m = Vec::new();
                        encode_str(k, &mut m);
                        v.encode(&mut m);
                        m
                    })
                    .collect();
                encoded.sort();
                out.push(b'{');
                for m in encoded {
                    out.extend_from_slice(&m);
                }
                out.push(b'}');
            }
        }
    }

    /// The value at an RFC 6901 JSON pointer (`""` is the whole document); `None` if absent.
    pub fn pointer(&self, pointer: &str) -> Option<&Json> {
        if pointer.is_empty() {
            return Some(self);
        }
        let rest = pointer.strip_prefix('/')?;
        let mut cur = self;
        for raw in rest.split('/') {
            let token = raw.replace("~1", "/").replace("~0", "~");
            cur = match cur {
                // With duplicate keys, the last one wins, as most JSON readers do.
                Json::Obj(members) => &members.iter().rev().find(|(k, _)| *k == token)?.1,
                Json::Arr(items) => {
                    let valid = !token.is_empty()
                        && token.bytes().all(|b| b.is_ascii_digit())
                        && (token == "0" || !token.starts_with('0'));
                    if !valid {
                        return None;
                    }
                    items.get(token.parse::<usize>().ok()?)?
                }
                _ => return None,
            };
        }
        Some(cur)
    }
}

fn encode_str(s: &str, out: &mut Vec<u8>) {
    out.push(b's');
    out.extend_from_slice(s.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(s.as_bytes());
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, lit: &[u8]) -> Option<()> {
        if self.b.get(self.i..self.i + lit.len())? == lit {
            self.i += lit.len();
            Some(())
        } else {
            None
        }
    }

    fn value(&mut self, depth: usize) -> Option<Json> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.ws();
        match self.peek()? {
            b'n' => self.eat(b"null").map(|_| Json::Null),
            b't' => self.eat(b"true").map(|_| Json::Bool(true)),
            b'f' => self.eat(b"false").map(|_| Json::Bool(false)),
            b'"' => self.string().map(Json::Str),
            b'[' => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.peek()? == b']' {
                    self.i += 1;
                    return Some(Json::Arr(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    match self.peek()? {
                        b',' => self.i += 1,
                        b']' => {
                            self.i += 1;
                            return Some(Json::Arr(items));
                        }
                        _ => return None,
                    }
                }
            }
            b'{' => {
                self.i += 1;
                let mut members = Vec::new();
                self.ws();
                if self.peek()? == b'}' {
                    self.i += 1;
                    return Some(Json::Obj(members));
                }
                loop {
                    self.ws();
                    if self.peek()? != b'"' {
                        return None;
                    }
                    let k = self.string()?;
                    self.ws();
                    self.eat(b":")?;
                    let v = self.value(depth + 1)?;
                    members.push((k, v));
                    self.ws();
                    match self.peek()? {
                        b',' => self.i += 1,
                        b'}' => {
                            self.i += 1;
                            return Some(Json::Obj(members));
                        }
                        _ => return None,
                    }
                }
            }
            b'-' | b'0'..=b'9' => self.number().map(Json::Num),
            _ => None,
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let h = self.b.get(self.i..self.i + 4)?;
        let s = std::str::from_utf8(h).ok()?;
        let v = u32::from_str_radix(s, 16).ok()?;
        if !h.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        self.i += 4;
        Some(v)
    }

    fn string(&mut self) -> Option<String> {
        self.i += 1; // opening quote
        let mut out = Vec::new();
        loop {
            let c = self.peek()?;
            self.i += 1;
            match c {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    let e = self.peek()?;
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                self.eat(b"\\u")?;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return None;
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            char::from_u32(code)?
                        }
                        _ => return None,
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                0x00..=0x1f => return None,
                _ => out.push(c),
            }
        }
    }

    /// RFC 8259 number → canonical `[-]digits e exp`: no leading or trailing zeros in the
    /// digits, zero as `0e0` whatever its sign.
    fn number(&mut self) -> Option<String> {
        let neg = self.eat(b"-").is_some();
        let start = self.i;
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => {
                while matches!(self.peek(), Some(b'0'..=b'9')) {
                    self.i += 1;
                }
            }
            _ => return None,
        }
        let int = &self.b[start..self.i];
        let mut frac: &[u8] = &[];
        if self.peek() == Some(b'.') {
            self.i += 1;
            let f = self.i;
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.i += 1;
            }
            if self.i == f {
                return None;
            }
            frac = &self.b[f..self.i];
        }
        let mut exp: i64 = 0;
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            let eneg = match self.peek() {
                Some(b'-') => {
                    self.i += 1;
                    true
                }
                Some(b'+') => {
                    self.i += 1;
                    false
                }
                _ => false,
            };
            let e = self.i;
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.i += 1;
            }
            if self.i == e {
                return None;
            }
            // Exponents beyond this are not numbers any request means; treat as not JSON.
            let digits = std::str::from_utf8(&self.b[e..self.i]).ok()?;
            let v: i64 = digits.parse().ok().filter(|v: &i64| *v <= 1_000_000_000)?;
            exp = if eneg { -v } else { v };
        }
        // value = 0.[int frac] digits shifted: digits = int ++ frac, exponent = exp - len(frac)
        let mut digits: Vec<u8> = int.iter().chain(frac).copied().collect();
        let mut e = exp - frac.len() as i64;
        let lead = digits.iter().take_while(|d| **d == b'0').count();
        digits.drain(..lead);
        if digits.is_empty() {
            return Some("0e0".into());
        }
        while digits.last() == Some(&b'0') {
            digits.pop();
            e += 1;
        }
        let mut s = String::with_capacity(digits.len() + 8);
        if neg {
            s.push('-');
        }
        s.push_str(std::str::from_utf8(&digits).ok()?);
        s.push('e');
        s.push_str(&e.to_string());
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        parse(s.as_bytes()).expect("json").encode(&mut out);
        out
    }

    #[test]
    fn numbers_are_exact_decimals() {
        for same in [
            ["1", "1.0"],
            ["1", "10e-1"],
            ["100", "1e2"],
            ["0", "-0.0"],
            ["1.5", "15E-1"],
        ] {
            assert_eq!(canon(same[0]), canon(same[1]), "{same:?}");
        }
        assert_ne!(canon("12345678901234567890"), canon("12345678901234567891"));
        assert_ne!(canon("0.1"), canon("0.10000000000000001"));
        assert_ne!(canon("1"), canon("-1"));
    }

    #[test]
    fn order_and_whitespace_and_escapes() {
        assert_eq!(
            canon(r#"{"a":1,"b":[1,2]}"#),
            canon(" { \"b\" : [ 1 , 2 ] ,\n\"a\":1.0 } ")
        );
        assert_eq!(canon(r#""\u0041\n""#), canon("\"A\\n\""));
        assert_eq!(canon(r#""\ud83d\ude00""#), canon("\"😀\""));
        assert_ne!(canon("[1,2]"), canon("[2,1]"));
        assert_ne!(canon(r#"{"a":1}"#), canon(r#"{"b":1}"#));
        assert_ne!(canon(r#"["a","b"]"#), canon(r#"["ab"]"#));
    }

    #[test]
    fn rejects_what_is_not_json() {
        for bad in [
            "",
            "{",
            "[1,]",
            "01",
            "1.",
            "-",
            "\"\\x\"",
            "nul",
            "{\"a\" 1}",
            "1 2",
            "\"\u{1}\"",
            "1e",
        ] {
            assert!(parse(bad.as_bytes()).is_none(), "{bad:?}");
        }
        let deep = "[".repeat(MAX_DEPTH + 2) + &"]".repeat(MAX_DEPTH + 2);
        assert!(parse(deep.as_bytes()).is_none());
        assert!(parse(&[0xff, 0xfe]).is_none());
    }

    #[test]
    fn pointers() {
        let v = parse(br#"{"a":{"b/c":[10,{"~d":true}]},"a2":null}"#).unwrap();
        assert_eq!(v.pointer(""), Some(&v));
        assert_eq!(v.pointer("/a/b~1c/0"), Some(&Json::Num("1e1".into())));
        assert_eq!(v.pointer("/a/b~1c/1/~0d"), Some(&Json::Bool(true)));
        assert_eq!(v.pointer("/a/b~1c/01"), None);
        assert_eq!(v.pointer("/missing"), None);
        assert_eq!(v.pointer("no-slash"), None);
    }
}
