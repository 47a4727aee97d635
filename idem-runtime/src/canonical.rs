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

/// The canonical encoding of a whole document, without building a tree (what `result` hashes);
/// `None` if it is not JSON. Equal to [`Json::encode`] of [`parse`]'s value.
pub fn canonicalize(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut p = Parser { b: bytes, i: 0 };
    let mut out = Vec::with_capacity(bytes.len() + 64);
    p.canon(&mut out, 0)?;
    p.ws();
    (p.i == bytes.len()).then_some(out)
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
                // Members in key order; only duplicate keys (rare) need their values' encodings
                // to order them.
                let mut sorted: Vec<&(String, Json)> = members.iter().collect();
                sorted.sort_by(|a, b| a.0.cmp(&b.0));
                out.push(b'{');
                let mut i = 0;
                while i < sorted.len() {
                    let mut j = i + 1;
                    while j < sorted.len() && sorted[j].0 == sorted[i].0 {
                        j += 1;
                    }
                    if j - i == 1 {
                        encode_str(&sorted[i].0, out);
                        sorted[i].1.encode(out);
                    } else {
                        let mut dups: Vec<Vec<u8>> = sorted[i..j]
                            .iter()
                            .map(|(_, v)| {
                                let mut e = Vec::new();
                                v.encode(&mut e);
                                e
                            })
                            .collect();
                        dups.sort();
                        for e in dups {
                            encode_str(&sorted[i].0, out);
                            out.extend_from_slice(&e);
                        }
                    }
                    i = j;
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
    out.extend_from_slice(&(s.len() as u64).to_be_bytes());
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
        let mut out = Vec::new();
        self.string_into(&mut out)?;
        String::from_utf8(out).ok()
    }

    /// Appends the unescaped UTF-8 of the string at the cursor (opening quote included).
    fn string_into(&mut self, out: &mut Vec<u8>) -> Option<()> {
        self.i += 1; // opening quote
        let from = out.len();
        loop {
            // Copy the run up to the next quote, escape or control character in one go.
            let run = self.b.get(self.i..)?;
            let plain = run
                .iter()
                .position(|c| matches!(c, b'"' | b'\\' | 0x00..=0x1f))?;
            out.extend_from_slice(&run[..plain]);
            self.i += plain;
            let c = self.peek()?;
            self.i += 1;
            match c {
                b'"' => return std::str::from_utf8(&out[from..]).ok().map(|_| ()),
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
                _ => return None, // a raw control character
            }
        }
    }

    fn number(&mut self) -> Option<String> {
        let mut out = Vec::new();
        self.number_into(&mut out)?;
        String::from_utf8(out).ok()
    }

    /// Appends the canonical form of the RFC 8259 number at the cursor: `[-]digits e exp`, no
    /// leading or trailing zeros in the digits, zero as `0e0` whatever its sign.
    fn number_into(&mut self, out: &mut Vec<u8>) -> Option<()> {
        use std::io::Write;
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
        // The value is (int ++ frac) × 10^(exp − len(frac)); strip zeros at both ends.
        let all = || int.iter().chain(frac.iter());
        let total = int.len() + frac.len();
        let lead = all().take_while(|d| **d == b'0').count();
        if lead == total {
            out.extend_from_slice(b"0e0");
            return Some(());
        }
        let trail = int
            .iter()
            .chain(frac.iter())
            .rev()
            .take_while(|d| **d == b'0')
            .count();
        if neg {
            out.push(b'-');
        }
        out.extend(all().skip(lead).take(total - lead - trail));
        write!(out, "e{}", exp - frac.len() as i64 + trail as i64).ok()
    }

    /// Appends the canonical encoding of the value at the cursor without building a tree: the
    /// same bytes as [`Json::encode`] of the parsed value.
    fn canon(&mut self, out: &mut Vec<u8>, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.ws();
        match self.peek()? {
            b'n' => self.eat(b"null").map(|_| out.push(b'n')),
            b't' => self.eat(b"true").map(|_| out.push(b't')),
            b'f' => self.eat(b"false").map(|_| out.push(b'f')),
            b'"' => self.canon_str(out),
            b'-' | b'0'..=b'9' => {
                out.push(b'd');
                self.number_into(out)?;
                out.push(b';');
                Some(())
            }
            b'[' => {
                self.i += 1;
                out.push(b'[');
                self.ws();
                if self.peek()? == b']' {
                    self.i += 1;
                    out.push(b']');
                    return Some(());
                }
                loop {
                    self.canon(out, depth + 1)?;
                    self.ws();
                    match self.peek()? {
                        b',' => self.i += 1,
                        b']' => {
                            self.i += 1;
                            out.push(b']');
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b'{' => {
                self.i += 1;
                // Members are encoded side by side in one buffer, then copied out in order.
                let mut buf = Vec::new();
                let mut members: Vec<(usize, usize, usize)> = Vec::new();
                self.ws();
                if self.peek()? != b'}' {
                    loop {
                        self.ws();
                        if self.peek()? != b'"' {
                            return None;
                        }
                        let start = buf.len();
                        self.canon_str(&mut buf)?;
                        let key_end = buf.len();
                        self.ws();
                        self.eat(b":")?;
                        self.canon(&mut buf, depth + 1)?;
                        members.push((start, key_end, buf.len()));
                        self.ws();
                        match self.peek()? {
                            b',' => self.i += 1,
                            b'}' => break,
                            _ => return None,
                        }
                    }
                }
                self.i += 1;
                // Key order (the key's bytes after its 9-byte tag), then the whole member for
                // duplicate keys: the order `Json::encode` uses.
                members.sort_by(|a, b| {
                    buf[a.0 + 9..a.1]
                        .cmp(&buf[b.0 + 9..b.1])
                        .then_with(|| buf[a.1..a.2].cmp(&buf[b.1..b.2]))
                });
                out.push(b'{');
                for (start, _, end) in members {
                    out.extend_from_slice(&buf[start..end]);
                }
                out.push(b'}');
                Some(())
            }
            _ => None,
        }
    }

    /// `s` + length (8 bytes, big endian) + the unescaped bytes, as `encode_str` writes.
    fn canon_str(&mut self, out: &mut Vec<u8>) -> Option<()> {
        out.push(b's');
        let len_at = out.len();
        out.extend_from_slice(&[0; 8]);
        self.string_into(out)?;
        let len = (out.len() - len_at - 8) as u64;
        out[len_at..len_at + 8].copy_from_slice(&len.to_be_bytes());
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The canonical bytes, checking that the streaming and tree encoders agree.
    fn canon(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        parse(s.as_bytes()).expect("json").encode(&mut out);
        assert_eq!(canonicalize(s.as_bytes()).as_deref(), Some(&out[..]), "{s}");
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
        assert_eq!(
            canon(r#"{"k":2,"k":1,"a":{"z":0,"y":[]}}"#),
            canon(r#"{"a":{"y":[],"z":0},"k":1,"k":2}"#)
        );
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
