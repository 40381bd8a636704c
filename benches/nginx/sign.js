// KwikPaisa v3 signing in njs, for the nginx+njs contender of benches/run.sh.
//
// Same rule as signgate's `kwikpaisa` scheme (docs/signing.md, "KwikPaisa v3"):
//   canonical JSON = object keys sorted at every depth (objects inside arrays
//   too), compact, "/" unescaped, non-ASCII as lowercase \uXXXX;
//   X-SIGNATURE = lowercase hex HMAC-SHA256(secret, canonical JSON + X-TIMESTAMP).
// Differences from signgate that do not matter for the benchmark body:
// numbers go through JSON.parse (so `105.0` would become `105`), duplicate keys
// are not refused, keys sort by UTF-16 code unit (same as code point for the
// ASCII keys used), and invalid JSON is sent unsigned instead of refused.
// benches/run.sh checks, before timing, that this file and signgate put the
// same body and signature on the wire.
//
// nginx: js_set $kp_body sign.body; js_set $kp_ts sign.timestamp;
//        js_set $kp_sig sign.signature; js_set $kp_key sign.apiKey;
// js_set values are cached per request, so the body is canonicalized once.

const crypto = require('crypto');

const NON_ASCII = /[^\x00-\x7f]/;
const NON_ASCII_G = /[^\x00-\x7f]/g;

function escapeChar(c) {
    return '\\u' + ('000' + c.charCodeAt(0).toString(16)).slice(-4);
}

function enc(v) {
    if (v === null || typeof v !== 'object') {
        return JSON.stringify(v);
    }
    let s;
    if (Array.isArray(v)) {
        s = '[';
        for (let i = 0; i < v.length; i++) {
            if (i) {
                s += ',';
            }
            s += enc(v[i]);
        }
        return s + ']';
    }
    const keys = Object.keys(v).sort();
    s = '{';
    for (let i = 0; i < keys.length; i++) {
        if (i) {
            s += ',';
        }
        s += JSON.stringify(keys[i]) + ':' + enc(v[keys[i]]);
    }
    return s + '}';
}

function canonical(text) {
    const s = enc(JSON.parse(text));
    return NON_ASCII.test(s) ? s.replace(NON_ASCII_G, escapeChar) : s;
}

function sign(body, ts) {
    return crypto.createHmac('sha256', process.env.KWIKPAISA_SECRET_KEY)
        .update(body).update(ts).digest('hex');
}

// $kp_body: the canonical body (sent with proxy_set_body and signed).
function body(r) {
    const text = r.requestText;
    if (!text) {
        return '';
    }
    try {
        return canonical(text);
    } catch (e) {
        return text;
    }
}

// $kp_ts: Unix seconds, evaluated once per request.
function timestamp(r) {
    return String(Math.floor(Date.now() / 1000));
}

// $kp_sig: HMAC over the canonical body and the timestamp of this request.
function signature(r) {
    return sign(r.variables.kp_body, r.variables.kp_ts);
}

function apiKey(r) {
    return process.env.KWIKPAISA_API_KEY;
}

export default {body, timestamp, signature, apiKey, canonical, sign};
