#!/usr/bin/env python3
"""Writes the hand-made seeds of fuzz/corpus/<target>/ (named seed-*; the
hash-named files next to them are what `cargo fuzz cmin` kept from fuzzing).
Sources: the KwikPaisa reference vectors, the shipped and deployed
gateway.toml files, the test configs, and hostile JSON. Run from the repo
root: python3 fuzz/make_seeds.py"""
import base64, hashlib, hmac, json, os, re, struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")
TS = "1778659835"


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


vectors = json.load(open(os.path.join(ROOT, "tests", "data", "kwikpaisa-vectors.json")))
bodies = {}
for group in ("a", "b", "webhook"):
    for label, signed, _sig in vectors[group]:
        vid = label.split()[0].lower()
        if signed.startswith(TS):
            body = signed[len(TS):]
        else:
            body = re.sub(r"\d{10,13}$", "", signed)
        bodies[vid] = body

# --- canonical: the vector bodies, then hostile JSON ---------------------
for vid, body in bodies.items():
    write("canonical", "vector-" + vid, body)
hostile = {
    "empty": b"",
    "whitespace": b" \t\r\n",
    "bom": b"\xef\xbb\xbf{}",
    "depth-128": b"[" * 128 + b"]" * 128,
    "depth-129": b"[" * 129 + b"]" * 129,
    "depth-128-objects": b'{"a":' * 127 + b"{}" + b"}" * 127,
    "depth-20k-unclosed": b"[" * 20000,
    "depth-mixed": b'[{"a":' * 70 + b"1" + b"}]" * 70,
    "duplicate-key": b'{"a":1,"a":2}',
    "duplicate-key-escaped": b'{"a":1,"\\u0061":2}',
    "duplicate-key-nested": b'{"x":{"b":1,"c":2,"b":3}}',
    "duplicate-key-long-prefix": b'{"abcdefghij":1,"abcdefghik":2,"abcdefghij":3}',
    "lone-high-surrogate": b'"\\ud800"',
    "lone-low-surrogate": b'"\\udc00"',
    "high-surrogate-then-letter": b'"\\ud800\\u0041"',
    "high-surrogate-at-end": b'"\\ud800\\',
    "surrogate-pair": b'"\\ud83d\\ude00"',
    "utf8-surrogate": b'"\xed\xa0\x80"',
    "utf8-overlong": b'"\xc0\xaf"',
    "utf8-invalid": b'{"a":"\xff"}',
    "utf8-truncated": b'"\xe2\x82"',
    "utf8-max": b'"\xf4\x8f\xbf\xbf"',
    "utf8-above-max": b'"\xf4\x90\x80\x80"',
    "huge-exponent": b"[1e400,-1E+999999999999,0.1e-400]",
    "huge-integer": b"123456789012345678901234567890123456789012345678901234567890",
    "minus-zero": b"[-0,-0.0,0e0]",
    "leading-zero": b"[01]",
    "bad-numbers": b"[1.,.5,+1,-,1e]",
    "trailing-garbage": b'{"a":1} x',
    "two-documents": b"{}{}",
    "trailing-comma-object": b'{"a":1,}',
    "trailing-comma-array": b"[1,]",
    "truncated-key": b'{"a":',
    "truncated-escape": b'"\\u12',
    "bad-escape": b'"\\x41"',
    "raw-control": b'"a\x01b"',
    "escapes": b'["\\/\\b\\f\\n\\r\\t\\u0000\\u001f\\u007f\\u0022\\u005c\\u00e9\\u00E9"]',
    "literals": b"[true,false,null]",
    "literal-truncated": b"[tru",
    "literal-bad": b"[nul1]",
    "unicode-keys-order": '{"\uffff":1,"\U0001F600":2,"\u00e9":3,"e":4}'.encode(),
    "escaped-key-order": b'{"\\u00e9":1,"\\ud83d\\ude00":2,"\\uffff":3}',
    "many-members-unsorted": ("{" + ",".join('"k%02d":%d' % (i, i) for i in reversed(range(40))) + "}").encode(),
    "pretty-nested": b'{\n  "z": [ { "b" : 1 , "a" : [ 2 , { "d":3, "c":4 } ] } ],\n  "a": "x"\n}\n',
    "long-string-escapes": b'"' + b"abcdefgh\\n\xc3\xa9" * 50 + b'"',
    "empty-containers": b'{"b":[],"a":{},"c":[{}]}',
}
for name, data in hostile.items():
    write("canonical", name, data)

# --- template: flags, u64 LE timestamp, then template\0api_key\0method\0path\0query\0body
CANON, B64, MILLIS, ESC, EMPTY_OBJ = 1, 2, 4, 8, 16


def template_seed(name, flags, ts, template, body=b"", api_key=b"pk_test_x", method=b"POST",
                  path=b"/api/v3/pg/order/create", query=b""):
    if isinstance(template, str):
        template = template.encode()
    if isinstance(body, str):
        body = body.encode()
    data = bytes([flags]) + struct.pack("<Q", ts) + b"\0".join([template, api_key, method, path, query, body])
    write("template", name, data)


template_seed("kwikpaisa-a2", CANON | ESC, int(TS), "{body}{timestamp}", bodies["a2"])
template_seed("kwikpaisa-b1-raw-utf8", CANON, int(TS), "{body}{timestamp}", bodies["b1"])
template_seed("kwikpaisa-empty-body", CANON | ESC, int(TS), "{body}{timestamp}", b"")
template_seed("kwikpaisa-empty-object", CANON | ESC | EMPTY_OBJ, int(TS), "{body}{timestamp}", b"")
template_seed("acme-dots", CANON | B64, int(TS), "{timestamp}.{method}.{path}.{body}", bodies["w1"])
template_seed("all-placeholders-millis", MILLIS, int(TS) * 1000,
              "{api_key}|{timestamp}|{method}|{path}|{query}|{body}", b"raw \x00 bytes \xff",
              query=b"a=1&b=%20")
template_seed("braces-escaped", 0, 0, "{{literal}}{timestamp}}}{{", b"{}")
template_seed("unicode-literal", B64, 2**64 - 1, "\u20b9{timestamp}\u0915\u0930{body}", "{\"n\":\"\u20b9\"}")
template_seed("invalid-json-canonical", CANON, int(TS), "{body}{timestamp}", b'{"a":1,"a":2}')
template_seed("no-timestamp", 0, 1, "{body}", b"x")
template_seed("escaped-timestamp", 0, 1, "{{timestamp}}", b"x")
template_seed("unknown-placeholder", 0, 1, "{timestamp}{secret}", b"x")
template_seed("unclosed", 0, 1, "{timestamp}{body", b"x")
template_seed("lone-close", 0, 1, "}{timestamp}", b"x")
template_seed("empty-template", 0, 1, "", b"")
template_seed("invalid-utf8-template", 0, 1, b"\xff{timestamp}\xc3", b"")
template_seed("header-hostile-key", 0, 5, "{api_key}{timestamp}", b"", api_key=b"\r\n\x7f\xff")

# --- config: shipped, deployed and test configs, then broken ones ----------
for rel, name in [("gateway.toml", "gateway"), ("deploy/systemd/gateway.toml", "systemd"),
                  ("deploy/container/gateway.toml", "container")]:
    write("config", name + ".toml", open(os.path.join(ROOT, rel), "rb").read())
for rel in ("deploy/kubernetes/egress.yaml", "deploy/kubernetes/sidecar.yaml"):
    text = open(os.path.join(ROOT, rel)).read()
    m = re.search(r"  gateway\.toml: \|\n((?:    .*\n|\n)+)", text)
    if m:
        toml = "".join(line[4:] + "\n" for line in m.group(1).splitlines())
        write("config", "k8s-" + os.path.basename(rel).replace(".yaml", "") + ".toml", toml)
good = open(os.path.join(ROOT, "src", "config", "tests.rs")).read().split('const GOOD: &str = r#"', 1)[1].split('"#;', 1)[0]
write("config", "unit-good.toml", good)
support = open(os.path.join(ROOT, "tests", "support", "mod.rs")).read()
m = re.search(r'r#"\n(\[listener\]\naddr = "127\.0\.0\.1:0".*?)"#', support, re.S)
if m:
    t = m.group(1)
    for k, v in {"{audit}": "audit.jsonl", "{ca}": "ca.pem", "{cred}": "cred.toml",
                 "{upstream}": "https://127.0.0.1:8443", "{egress_extra}": "", "{route_extra}": "", "{extra}": ""}.items():
        t = t.replace(k, v)
    write("config", "integration-base.toml", t)
minimal = '[access]\nallow = ["127.0.0.0/8"]\n'
webhook_cfg = minimal + '''[credentials.kwikpaisa]
source = "env"
api_key_env = "K"
secret_env = "S"
[state]
dir = "state"
[[webhook]]
name = "kwikpaisa-events"
match_path = "/webhooks/kwikpaisa"
credential = "kwikpaisa"
scheme = "kwikpaisa"
tolerance_secs = 300
forward_to = "http://127.0.0.1:9000/payments/events"
verify_canonical = true
dedup_keys = ["/event", "/data/order_id"]
'''
vault_cfg = minimal + '''[credentials.v]
source = "vault"
vault_addr = "http://127.0.0.1:8200"
vault_path = "kwikpaisa/prod"
vault_auth = "approle"
vault_role_id_file = "/run/role-id"
vault_secret_id_file = "/run/secret-id"
vault_max_stale_secs = 3600
[credentials.f]
source = "file"
path = "secret.json"
[scheme.acme]
message = "{{timestamp}}{timestamp}.{body}"
body = "canonical_json"
encoding = "base64"
timestamp_unit = "millis"
escape_unicode = false
empty_body = "{}"
api_key_header = "X-Key"
timestamp_header = "X-Ts"
signature_header = "X-Sig"
[[route]]
name = "acme"
match_prefix = "/acme"
upstream = "https://api.acme.example:8443/base"
credential = "f"
scheme = "acme"
methods = ["POST", "GET"]
allow = ["127.0.0.1/32"]
limit = { rate = 10, burst = 20 }
duplicate_key = "/order_id"
max_inflight = 4
queue_timeout_ms = 100
'''
configs = {
    "minimal.toml": minimal,
    "webhook.toml": webhook_cfg,
    "vault-template-route.toml": vault_cfg,
    "empty.toml": "",
    "not-toml.toml": "[[[ = \"",
    "unknown-keys.toml": minimal + "[listener]\nadress = \"1.2.3.4:5\"\n[nope]\nx = 1\n",
    "wrong-types.toml": '[access]\nallow = "127.0.0.1"\n[listener]\nmax_connections = -1\nheader_timeout_ms = "5"\n[[route]]\nname = 1\n',
    "allow-empty.toml": "[access]\nallow = []\n",
    "huge-numbers.toml": minimal + "[listener]\nmax_body_bytes = 9223372036854775807\nidle_timeout_ms = 9223372036854775807\n[limits]\nglobal = { rate = 9223372036854775807, burst = 9223372036854775807 }\n",
    "bad-template.toml": minimal + '[scheme.x]\nmessage = "{body}"\napi_key_header = "a"\ntimestamp_header = "a"\nsignature_header = "bad header"\n',
    "deep-arrays.toml": "a = " + "[" * 500 + "]" * 500 + "\n",
    "deep-inline-tables.toml": "a = " + "{b = " * 300 + "1" + "}" * 300 + "\n",
    "route-references.toml": minimal + '[[route]]\nname = "r"\nmatch_prefix = "/r"\nupstream = "http://x"\ncredential = "missing"\nscheme = "missing"\n[[webhook]]\nname = "w"\n',
}
for name, text in configs.items():
    write("config", name, text)

# --- webhook: flags, flip, then timestamp\0signature\0body -----------------
TEMPLATE, VERIFY_CANONICAL, WITH_PREVIOUS, SIGN_PREVIOUS = 1, 2, 4, 8
SECRETS = {"current": b"fuzz-current-secret-0123456789", "previous": b"fuzz-previous-secret-987654321"}
PATH = "/webhooks/kwikpaisa"


def sig(secret, ts, body, template=False):
    if template:
        msg = ts.encode() + b".POST." + PATH.encode() + b"." + body
        return base64.b64encode(hmac.new(secret, msg, hashlib.sha256).digest()).decode()
    return hmac.new(secret, body + ts.encode(), hashlib.sha256).hexdigest()


def webhook_seed(name, flags, flip, ts, signature, body):
    if isinstance(body, str):
        body = body.encode()
    data = bytes([flags, flip]) + ts.encode() + b"\0" + signature.encode() + b"\0" + body
    write("webhook", name, data)


w1, w2 = bodies["w1"].encode(), bodies["w2"].encode()
cur = SECRETS["current"]
webhook_seed("w1-valid", 0, 0, TS, sig(cur, TS, w1), w1)
webhook_seed("w1-upper-hex", 0x30, 7, TS, sig(cur, TS, w1).upper(), w1)
webhook_seed("w1-canonical-signature", VERIFY_CANONICAL, 3, TS, sig(cur, TS, w2), w1)
webhook_seed("w1-canonical-not-configured", 0, 3, TS, sig(cur, TS, w2), w1)
webhook_seed("w2-previous-in-grace", WITH_PREVIOUS | SIGN_PREVIOUS, 9, TS, sig(SECRETS["previous"], TS, w2), w2)
webhook_seed("w2-previous-expired", SIGN_PREVIOUS, 9, TS, sig(SECRETS["previous"], TS, w2), w2)
webhook_seed("w1-stale", 0, 0, "1778650000", sig(cur, "1778650000", w1), w1)
webhook_seed("w1-future", 0, 0, "1778669835", sig(cur, "1778669835", w1), w1)
webhook_seed("w1-template-millis", TEMPLATE, 1, TS + "000", sig(cur, TS + "000", w1, True), w1)
webhook_seed("w1-template-canonical", TEMPLATE | VERIFY_CANONICAL | 0x40, 200, TS + "123", sig(cur, TS + "123", w2, True), w1)
webhook_seed("not-json-genuine", 0, 1, TS, sig(cur, TS, b"not json"), "not json")
webhook_seed("invalid-utf8-genuine", VERIFY_CANONICAL, 1, TS, sig(cur, TS, b'{"a":"\xff"}'), b'{"a":"\xff"}')
webhook_seed("timestamp-plus-sign", 0, 0, "+" + TS, sig(cur, "+" + TS, w1), w1)
webhook_seed("timestamp-not-a-number", 0, 0, "abc", sig(cur, "abc", w1), w1)
webhook_seed("timestamp-huge", 0, 0, "99999999999999999999", sig(cur, "99999999999999999999", w1), w1)
webhook_seed("timestamp-u64-max", TEMPLATE, 0, "18446744073709551615", "", w1)
webhook_seed("signature-empty", 0, 0, TS, "", w1)
webhook_seed("signature-not-hex", 0, 0, TS, "zz" * 32, w1)
webhook_seed("signature-short", 0, 0, TS, "ab", w1)
webhook_seed("signature-base64-garbage", TEMPLATE, 0, TS, "====", w1)
webhook_seed("header-control-bytes", 0, 0, "17786\x7f59835", "\x01\x02", w1)
webhook_seed("header-obs-text", 0, 0, TS, "\xe9", w1)
webhook_seed("empty-body", 0, 0, TS, sig(cur, TS, b""), "")
webhook_seed("body-with-nul", VERIFY_CANONICAL, 5, TS, sig(cur, TS, b'{"a":"\x00"}'), b'{"a":"\x00"}')
webhook_seed("whitespace-body-canonical", VERIFY_CANONICAL | 0x20, 0, TS, sig(cur, TS, b"{}"), b"{\r}")
