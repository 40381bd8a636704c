use super::*;
use hmac::{Hmac, Mac};
use proptest::prelude::*;
use sha2::Sha256;

/// Location of the provider test vectors, relative to this file (change when moving the module).
macro_rules! vectors_path {
    () => {
        "../../tests/data/kwikpaisa-vectors.json"
    };
}
const VECTORS_JSON: &str = include_str!(vectors_path!());

const SECRET: &[u8] = b"YOUR_SECRET_KEY";
const TS: &str = "1778659835";

const RAW: Options = Options {
    escape_unicode: false,
    max_depth: DEFAULT_MAX_DEPTH,
};
const PHP: Options = Options {
    escape_unicode: true,
    max_depth: DEFAULT_MAX_DEPTH,
};

/// The nested input object (vectors B1–B7), insertion order and layout as in
/// `docs/signing.md` ("Test vectors").
const NESTED_INPUT: &str = r#"{
  "order_id": "ORD-2026-0001",
  "order_amount": 105.5,
  "quantity": 2,
  "return_url": "https://merchant.example.com/pay/return?order=ORD-2026-0001",
  "service_type": "DIGITAL",
  "customer": {
    "phone": "9816512345",
    "name": "Ajay Kumar",
    "email": "dev@merchant.example.com"
  },
  "order_note": "Fee ₹105.50 / कर",
  "meta": {
    "tags": [
      "z/1",
      "a"
    ],
    "b": {
      "y": 1,
      "x": 2.25
    }
  }
}"#;

const WEBHOOK_INPUT: &str = r#"{"event": "payment.success", "data": {"order_id": "6116229263036", "amount": "105.00",
  "currency": "INR", "status": "PAID"}}"#;

fn sign(canonical: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
    mac.update(canonical);
    mac.update(TS.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// (payload without timestamp, expected hex) of the vector whose label starts with `id` + ' '.
fn vector(group: &str, id: &str) -> (String, String) {
    let v: serde_json::Value = serde_json::from_str(VECTORS_JSON).unwrap();
    let row = v[group]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r[0].as_str().unwrap().starts_with(&format!("{id} ")))
        .unwrap_or_else(|| panic!("vector {id} missing"));
    let signed = row[1].as_str().unwrap();
    let payload = signed.strip_suffix(TS).unwrap().to_string();
    (payload, row[2].as_str().unwrap().to_string())
}

fn check_vector(input: &str, opts: &Options, group: &str, id: &str) {
    let (payload, hex) = vector(group, id);
    let out = canonicalize(input.as_bytes(), opts).unwrap();
    assert_eq!(String::from_utf8(out.clone()).unwrap(), payload, "{id}");
    assert_eq!(sign(&out), hex, "{id}");
}

fn canon_str(input: &str, opts: &Options) -> String {
    String::from_utf8(canonicalize(input.as_bytes(), opts).unwrap()).unwrap()
}

#[test]
fn a1_doc_example() {
    for opts in [RAW, PHP] {
        check_vector(r#"{"order_id":"123456","amount":"100"}"#, &opts, "a", "A1");
        let pretty = "\n\t{\r\n    \"amount\" :  \"100\",\n    \"order_id\": \"123456\"\n}\n";
        check_vector(pretty, &opts, "a", "A1");
    }
}

#[test]
fn b1_b2_nested_payload() {
    check_vector(NESTED_INPUT, &RAW, "b", "B1");
    check_vector(NESTED_INPUT, &PHP, "b", "B2");
}

#[test]
fn b6_b7_number_text_preserved() {
    let b6 = NESTED_INPUT.replace("\"order_amount\": 105.5,", "\"order_amount\": 105.0,");
    check_vector(&b6, &RAW, "b", "B6");
    let b7 = NESTED_INPUT.replace("\"order_amount\": 105.5,", "\"order_amount\": 105,");
    check_vector(&b7, &RAW, "b", "B7");
}

#[test]
fn w2_webhook() {
    for opts in [RAW, PHP] {
        check_vector(WEBHOOK_INPUT, &opts, "webhook", "W2");
    }
}

#[test]
fn rejections() {
    let deep = "[".repeat(100_000);
    let cases: &[(&[u8], usize, &str)] = &[
        (b"", 0, "expected a JSON value"),
        (b" \n\t\r ", 5, "expected a JSON value"),
        (b"\xEF\xBB\xBF{}", 0, "UTF-8 BOM not allowed"),
        (b"\"a\xFFb\"", 2, "invalid UTF-8 in string"),
        (b"\"\xC3\"", 1, "invalid UTF-8 in string"),
        (b"\"\xC0\xAF\"", 1, "invalid UTF-8 in string"),
        (b"\"\xED\xA0\x80\"", 1, "invalid UTF-8 in string"),
        (b"\"\xF4\x90\x80\x80\"", 1, "invalid UTF-8 in string"),
        (b"{\"k\xF5\":1}", 3, "invalid UTF-8 in string"),
        (b"\"ok\xE2\x82\"", 3, "invalid UTF-8 in string"),
        (b"\"a\x01\"", 2, "unescaped control character in string"),
        (b"[\"a\nb\"]", 3, "unescaped control character in string"),
        (b"\"\\x\"", 1, "invalid escape"),
        (b"\"\\U0041\"", 1, "invalid escape"),
        (b"\"ab\\u12G4\"", 3, "invalid \\u escape"),
        (b"\"\\ud800\"", 1, "unpaired surrogate"),
        (b"\"\\udc00\"", 1, "unpaired surrogate"),
        (b"\"a\\ud800\\u0041\"", 2, "unpaired surrogate"),
        (b"\"\\ud800\\ud800\"", 1, "unpaired surrogate"),
        (b"\"\\uDBFFx\"", 1, "unpaired surrogate"),
        (b"\"\\ud800\\n\"", 1, "unpaired surrogate"),
        (b"\"\\ud83d\\ude0G\"", 7, "invalid \\u escape"),
        (b"01", 1, "leading zero in number"),
        (b"-01", 2, "leading zero in number"),
        (b"[00]", 2, "leading zero in number"),
        (b"1.", 2, "invalid number"),
        (b"[1.]", 3, "invalid number"),
        (b"1.e5", 2, "invalid number"),
        (b"1e", 2, "invalid number"),
        (b"1e+", 3, "invalid number"),
        (b"-", 1, "invalid number"),
        (b"--1", 1, "invalid number"),
        (b".5", 0, "expected a JSON value"),
        (b"+1", 0, "expected a JSON value"),
        (b"NaN", 0, "expected a JSON value"),
        (b"[Infinity]", 1, "expected a JSON value"),
        (b"{\"a\":1,\"a\":2}", 7, "duplicate key"),
        (b"{\"a\":1,\"\\u0061\":2}", 7, "duplicate key"),
        (b"{\"a\":1,\"b\":2,\"b\":3,\"a\":4}", 13, "duplicate key"),
        (b"[{\"b\":{\"x\":1,\"x\":2}}]", 13, "duplicate key"),
        (b"{\"\\/\":1,\"/\":2}", 8, "duplicate key"),
        (b"{} x", 3, "trailing characters"),
        (b"{}{}", 2, "trailing characters"),
        (b"1 2", 2, "trailing characters"),
        (b"0x10", 1, "trailing characters"),
        (b"1.5.3", 3, "trailing characters"),
        (b"\"a\"\"b\"", 3, "trailing characters"),
        (b"{}\x00", 2, "trailing characters"),
        (deep.as_bytes(), 128, "nesting too deep"),
        (b"{", 1, "unexpected end of input"),
        (b"[", 1, "unexpected end of input"),
        (b"{\"a\"", 4, "unexpected end of input"),
        (b"{\"a\":", 5, "unexpected end of input"),
        (b"{\"a\":1", 6, "unexpected end of input"),
        (b"[1,", 3, "unexpected end of input"),
        (b"\"abc", 4, "unexpected end of input"),
        (b"\"\\", 2, "unexpected end of input"),
        (b"\"\\u12", 5, "unexpected end of input"),
        (b"\"\\ud800\\", 8, "unexpected end of input"),
        (b"tru", 3, "unexpected end of input"),
        (b"nulx", 0, "invalid literal"),
        (b"True", 0, "expected a JSON value"),
        (b"{1:2}", 1, "expected string key"),
        (b"{\"a\":1,}", 7, "expected string key"),
        (b"{\"a\" 1}", 5, "expected ':'"),
        (b"[1 2]", 3, "expected ',' or ']'"),
        (b"{\"a\":1 \"b\":2}", 7, "expected ',' or '}'"),
        (b"{\"a\":1]", 6, "expected ',' or '}'"),
        (b"[1,]", 3, "expected a JSON value"),
        (b"[,1]", 1, "expected a JSON value"),
        (b"\x0c{}", 0, "expected a JSON value"),
    ];
    let mut c = Canonicalizer::new();
    for &(input, offset, reason) in cases {
        for opts in [RAW, PHP] {
            let mut out = b"prefix".to_vec();
            let err = c.encode(input, &opts, &mut out).unwrap_err();
            let shown = String::from_utf8_lossy(&input[..input.len().min(40)]);
            assert_eq!(err, Error { offset, reason }, "input {shown:?}");
            assert_eq!(out, b"prefix", "out restored for {shown:?}");
        }
    }
    let e = canonicalize(b"{\"a\":1,\"a\":2}", &PHP).unwrap_err();
    assert_eq!(e.to_string(), "invalid JSON at byte 7: duplicate key");
}

#[test]
fn depth_limits() {
    let n = 100_000;
    let deep = format!("{}{}", "[".repeat(n), "]".repeat(n));
    let unlimited = Options {
        max_depth: usize::MAX,
        ..RAW
    };
    assert_eq!(canonicalize(deep.as_bytes(), &unlimited).unwrap(), deep.as_bytes());
    let objs = format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n));
    assert_eq!(canonicalize(objs.as_bytes(), &unlimited).unwrap(), objs.as_bytes());
    let at = |d: usize| format!("{}{}", "[".repeat(d), "]".repeat(d));
    assert!(canonicalize(at(128).as_bytes(), &PHP).is_ok());
    let err = canonicalize(at(129).as_bytes(), &PHP).unwrap_err();
    assert_eq!((err.offset, err.reason), (128, "nesting too deep"));
    let zero = Options { max_depth: 0, ..PHP };
    assert_eq!(canonicalize(b"1", &zero).unwrap(), b"1");
    assert_eq!(canonicalize(b" {}", &zero).unwrap_err().offset, 1);
}

#[test]
fn escaping_table() {
    // (input, escape_unicode=false, escape_unicode=true)
    let cases: &[(&str, &str, &str)] = &[
        (r#""\/""#, r#""/""#, r#""/""#),
        (r#""a/b""#, r#""a/b""#, r#""a/b""#),
        (r#""\u0041""#, r#""A""#, r#""A""#),
        (r#""\"\\""#, r#""\"\\""#, r#""\"\\""#),
        (r#""\u0022\u005C\u005c""#, r#""\"\\\\""#, r#""\"\\\\""#),
        (r#""\b\f\n\r\t""#, r#""\b\f\n\r\t""#, r#""\b\f\n\r\t""#),
        (
            r#""\u0008\u000C\u000a\u000D\u0009""#,
            r#""\b\f\n\r\t""#,
            r#""\b\f\n\r\t""#,
        ),
        (
            r#""\u0000\u001f\u001F\u000B""#,
            r#""\u0000\u001f\u001f\u000b""#,
            r#""\u0000\u001f\u001f\u000b""#,
        ),
        ("\"\u{7f}\\u007f\"", "\"\u{7f}\u{7f}\"", "\"\u{7f}\u{7f}\""),
        (r#""\u0080""#, "\"\u{80}\"", r#""\u0080""#),
        ("\"é\\u00e9\"", "\"éé\"", r#""\u00e9\u00e9""#),
        ("\"₹\"", "\"₹\"", r#""\u20b9""#),
        (r#""\u20B9""#, "\"₹\"", r#""\u20b9""#),
        ("\"😀\"", "\"😀\"", r#""\ud83d\ude00""#),
        (r#""\ud83d\ude00""#, "\"😀\"", r#""\ud83d\ude00""#),
        (r#""\uD83D\uDE00x""#, "\"😀x\"", r#""\ud83d\ude00x""#),
        ("\"\u{10ffff}\"", "\"\u{10ffff}\"", r#""\udbff\udfff""#),
        ("\"\u{ffff}\u{2028}\"", "\"\u{ffff}\u{2028}\"", r#""\uffff\u2028""#),
        (" \"plain ascii\" ", r#""plain ascii""#, r#""plain ascii""#),
        (
            "[1E5, -0, 105.0, 0.1e-7, 1e+2, -12.50E-003]",
            "[1E5,-0,105.0,0.1e-7,1e+2,-12.50E-003]",
            "[1E5,-0,105.0,0.1e-7,1e+2,-12.50E-003]",
        ),
        (" [ true , false , null ] ", "[true,false,null]", "[true,false,null]"),
        (" 12 ", "12", "12"),
        (r#"{"b":1,"\u0061":2}"#, r#"{"a":2,"b":1}"#, r#"{"a":2,"b":1}"#),
        ("{\"é\":1,\"z\":2}", "{\"z\":2,\"é\":1}", r#"{"z":2,"\u00e9":1}"#),
        (
            r#"{"\ud83d\ude00":2,"\uffff":1}"#,
            "{\"\u{ffff}\":1,\"😀\":2}",
            r#"{"\uffff":1,"\ud83d\ude00":2}"#,
        ),
        (
            r#"{"b":0,"a\u0000":1,"a":2,"":3}"#,
            r#"{"":3,"a":2,"a\u0000":1,"b":0}"#,
            r#"{"":3,"a":2,"a\u0000":1,"b":0}"#,
        ),
        (
            r#"[{"b":1,"a":2},[{"d":0,"c":0}]]"#,
            r#"[{"a":2,"b":1},[{"c":0,"d":0}]]"#,
            r#"[{"a":2,"b":1},[{"c":0,"d":0}]]"#,
        ),
        (
            r#"{ "a" : { } , "b" : [ ] }"#,
            r#"{"a":{},"b":[]}"#,
            r#"{"a":{},"b":[]}"#,
        ),
    ];
    for &(input, raw, php) in cases {
        assert_eq!(canon_str(input, &RAW), raw, "raw: {input}");
        assert_eq!(canon_str(input, &PHP), php, "php: {input}");
    }
}

#[test]
fn reuse_and_append() {
    let mut c = Canonicalizer::new();
    let mut out = b"X".to_vec();
    c.encode(br#"{"b":[1,{"d":1,"c":2}],"a":"\u20ac"}"#, &PHP, &mut out)
        .unwrap();
    assert!(c.encode(b"{\"a\":1,\"a\":1}", &PHP, &mut out).is_err());
    c.encode(WEBHOOK_INPUT.as_bytes(), &RAW, &mut out).unwrap();
    let expected = format!(
        "X{}{}",
        r#"{"a":"\u20ac","b":[1,{"c":2,"d":1}]}"#,
        vector("webhook", "W2").0
    );
    assert_eq!(String::from_utf8(out).unwrap(), expected);
}

// ---------- property tests ----------

#[derive(Clone, Debug)]
enum J {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

fn arb_string() -> impl Strategy<Value = String> {
    let specials = vec![
        '"',
        '\\',
        '/',
        '\u{7f}',
        '\u{80}',
        'é',
        '₹',
        'क',
        '\u{ffff}',
        '\u{fffe}',
        '😀',
        '\u{10ffff}',
        '\u{2028}',
        '\u{feff}',
        '\0',
        '\n',
        '\u{1f}',
    ];
    let ch = prop_oneof![
        4 => proptest::char::range('a', 'e'),
        2 => proptest::char::range('\0', '\x7f'),
        2 => proptest::sample::select(specials),
        1 => any::<char>(),
    ];
    proptest::collection::vec(ch, 0..8).prop_map(|v| v.into_iter().collect())
}

fn arb_json() -> impl Strategy<Value = J> {
    let num = proptest::string::string_regex("-?(0|[1-9][0-9]{0,12})(\\.[0-9]{1,8})?([eE][+-]?[0-9]{1,2})?").unwrap();
    let leaf = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        num.prop_map(J::Num),
        arb_string().prop_map(J::Str),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(J::Arr),
            proptest::collection::vec((arb_string(), inner), 0..6).prop_map(|mut m| {
                let mut seen = std::collections::HashSet::new();
                m.retain(|(k, _)| seen.insert(k.clone()));
                J::Obj(m)
            }),
        ]
    })
}

/// Independent oracle for the canonical form.
fn model(j: &J, esc: bool, out: &mut String) {
    match j {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Num(n) => out.push_str(n),
        J::Str(s) => model_str(s, esc, out),
        J::Arr(v) => {
            out.push('[');
            for (i, x) in v.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                model(x, esc, out);
            }
            out.push(']');
        }
        J::Obj(m) => {
            let mut m: Vec<_> = m.iter().collect();
            m.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, v)) in m.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                model_str(k, esc, out);
                out.push(':');
                model(v, esc, out);
            }
            out.push('}');
        }
    }
}

fn model_str(s: &str, esc: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c < ' ' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if c.is_ascii() || !esc => out.push(c),
            c => {
                for u in c.encode_utf16(&mut [0; 2]) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
    }
    out.push('"');
}

/// Deterministic noise source for rendering variants.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn one_in(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n)
    }
}

fn ws(r: &mut Rng, out: &mut String) {
    while r.one_in(3) {
        out.push([' ', '\t', '\n', '\r'][(r.next() % 4) as usize]);
    }
}

fn u_escape(u: u32, r: &mut Rng, out: &mut String) {
    let s = format!("\\u{u:04x}");
    out.push_str(&if r.one_in(2) {
        s.to_uppercase().replace("\\U", "\\u")
    } else {
        s
    });
}

/// Renders `j` with shuffled members, random whitespace and random (valid) escaping.
fn noisy(j: &J, r: &mut Rng, out: &mut String) {
    ws(r, out);
    match j {
        J::Str(s) => noisy_str(s, r, out),
        J::Arr(v) => {
            out.push('[');
            for (i, x) in v.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                noisy(x, r, out);
            }
            ws(r, out);
            out.push(']');
        }
        J::Obj(m) => {
            let mut idx: Vec<usize> = (0..m.len()).collect();
            for i in (1..idx.len()).rev() {
                idx.swap(i, (r.next() % (i as u64 + 1)) as usize);
            }
            out.push('{');
            for (n, &i) in idx.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                ws(r, out);
                noisy_str(&m[i].0, r, out);
                ws(r, out);
                out.push(':');
                noisy(&m[i].1, r, out);
            }
            ws(r, out);
            out.push('}');
        }
        other => model(other, false, out),
    }
    ws(r, out);
}

fn noisy_str(s: &str, r: &mut Rng, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        let short = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '/' => Some("\\/"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            _ => None,
        };
        let must = c < ' ' || c == '"' || c == '\\';
        if must || r.one_in(4) {
            match short {
                Some(e) if r.one_in(2) => out.push_str(e),
                _ => {
                    for u in c.encode_utf16(&mut [0; 2]) {
                        u_escape(u32::from(*u), r, out);
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out.push('"');
}

fn canon(input: &str, opts: &Options) -> String {
    let out = canonicalize(input.as_bytes(), opts).unwrap_or_else(|e| panic!("{e} for {input:?}"));
    String::from_utf8(out).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn prop_matches_model_and_is_idempotent(j in arb_json(), seed in 1u64..) {
        let mut text = String::new();
        noisy(&j, &mut Rng(seed), &mut text);
        for esc in [false, true] {
            let opts = Options { escape_unicode: esc, ..Options::default() };
            let mut expected = String::new();
            model(&j, esc, &mut expected);
            let once = canon(&text, &opts);
            prop_assert_eq!(&once, &expected);
            prop_assert_eq!(canon(&once, &opts), once);
        }
    }

    #[test]
    fn prop_insensitive_to_order_whitespace_escapes(j in arb_json(), s1 in 1u64.., s2 in 1u64..) {
        let (mut a, mut b, mut plain) = (String::new(), String::new(), String::new());
        noisy(&j, &mut Rng(s1), &mut a);
        noisy(&j, &mut Rng(s2), &mut b);
        model(&j, false, &mut plain);
        for opts in [RAW, PHP] {
            let c = canon(&plain, &opts);
            prop_assert_eq!(canon(&a, &opts), c.clone());
            prop_assert_eq!(canon(&b, &opts), c);
        }
    }

    #[test]
    fn prop_serde_equivalent_and_ascii(j in arb_json(), seed in 1u64..) {
        let mut text = String::new();
        noisy(&j, &mut Rng(seed), &mut text);
        let want: serde_json::Value = serde_json::from_str(&text).unwrap();
        let raw = canon(&text, &RAW);
        prop_assert_eq!(serde_json::from_str::<serde_json::Value>(&raw).unwrap(), want.clone());
        let php = canon(&text, &PHP);
        prop_assert!(php.is_ascii());
        prop_assert_eq!(serde_json::from_str::<serde_json::Value>(&php).unwrap(), want);
    }

    #[test]
    fn prop_hostile_bytes_never_panic(j in arb_json(), seed in 1u64.., junk in proptest::collection::vec(any::<u8>(), 0..64)) {
        // Mutate a valid document (truncate / flip / splice) and also try pure junk.
        let mut text = String::new();
        noisy(&j, &mut Rng(seed), &mut text);
        let mut bytes = text.into_bytes();
        let mut r = Rng(seed);
        for _ in 0..(r.next() % 4) {
            if bytes.is_empty() { break; }
            let at = (r.next() % bytes.len() as u64) as usize;
            match r.next() % 3 {
                0 => bytes.truncate(at),
                1 => bytes[at] = r.next() as u8,
                _ => { bytes.splice(at..at, junk.iter().copied().take(3)); }
            }
        }
        for input in [&bytes[..], &junk[..]] {
            for opts in [RAW, PHP] {
                match canonicalize(input, &opts) {
                    Ok(out) => match serde_json::from_slice::<serde_json::Value>(input) {
                        // Anything we accept, serde_json accepts too (we are stricter)...
                        Ok(a) => prop_assert_eq!(serde_json::from_slice::<serde_json::Value>(&out).unwrap(), a),
                        // ...but for numbers beyond f64 (`1e400`): RFC 8259 allows them and
                        // the canonical form keeps their text, which serde_json refuses.
                        Err(e) if e.to_string().starts_with("number out of range") => {
                            prop_assert_eq!(canonicalize(&out, &opts).unwrap(), out.clone());
                        }
                        Err(e) => prop_assert!(false, "accepted what serde_json refuses ({e}): {:?}", String::from_utf8_lossy(input)),
                    },
                    Err(e) => prop_assert!(e.offset <= input.len()),
                }
            }
        }
    }
}
