//! Vault/OpenBao JSON answers, read in place from the zeroizing body: only the
//! fields needed are kept (secrets as `SecretBytes`, tokens as
//! `Zeroizing<String>`), everything else is skipped unread, and no error ever
//! quotes the content. Nothing here derives `Debug` over a secret.

use std::fmt;
use std::time::Duration;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::secrets::SecretBytes;

/// One requested field of the KV secret.
pub enum Field {
    Absent,
    NotString,
    Value(SecretBytes),
}

/// `data.data.<api_key_field>`, `data.data.<secret_field>`, `data.metadata.version`.
pub struct KvSecret {
    pub api_key: Field,
    pub secret: Field,
    pub version: Option<u64>,
}

/// Parse a KV v2 read answer; `None` if the body is not one. Without a
/// `secret_field` (a Transit credential's API key), `secret` is `Absent`
/// and every other field is skipped unread.
pub fn kv(body: &[u8], api_key_field: &str, secret_field: Option<&str>) -> Option<KvSecret> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let out = Root {
        fields: (api_key_field, secret_field),
    }
    .deserialize(&mut de)
    .ok()?;
    de.end().ok()?;
    out
}

/// A token from a login or renewal (`auth`).
pub struct Grant {
    pub token: Zeroizing<String>,
    pub ttl: Duration,
    pub renewable: bool,
}

/// Parse `auth.client_token`, `auth.lease_duration`, `auth.renewable`.
pub fn grant(body: &[u8]) -> Option<Grant> {
    #[derive(Deserialize)]
    struct Answer {
        auth: Option<Auth>,
    }
    #[derive(Deserialize)]
    struct Auth {
        #[serde(deserialize_with = "zeroizing_string")]
        client_token: Zeroizing<String>,
        #[serde(default)]
        lease_duration: u64,
        #[serde(default)]
        renewable: bool,
    }
    let a = serde_json::from_slice::<Answer>(body).ok()?.auth?;
    if a.client_token.is_empty() {
        return None;
    }
    Some(Grant {
        token: a.client_token,
        ttl: Duration::from_secs(a.lease_duration),
        renewable: a.renewable,
    })
}

/// `lookup-self`: the token's remaining TTL (0 = never expires) and whether
/// it can be renewed. The token's own id in the answer is skipped unread.
pub fn lookup(body: &[u8]) -> Option<(Duration, bool)> {
    #[derive(Deserialize)]
    struct Answer {
        data: Option<Data>,
    }
    #[derive(Deserialize)]
    struct Data {
        #[serde(default)]
        ttl: u64,
        #[serde(default)]
        renewable: bool,
    }
    let d = serde_json::from_slice::<Answer>(body).ok()?.data?;
    Some((Duration::from_secs(d.ttl), d.renewable))
}

/// Vault's `errors` list as one short printable line ("" if none). Vault
/// puts no request data in these ("permission denied", "Vault is sealed");
/// callers still scrub known secrets out of them.
pub fn errors(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Answer {
        #[serde(default)]
        errors: Vec<String>,
    }
    let Ok(a) = serde_json::from_slice::<Answer>(body) else {
        return String::new();
    };
    let joined = a.errors.join("; ");
    let mut out: String = joined
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    while out.contains("  ") {
        out = out.replace("  ", " ");
    }
    out.trim().to_string()
}

fn zeroizing_string<'de, D: Deserializer<'de>>(d: D) -> Result<Zeroizing<String>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Zeroizing<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(Zeroizing::new(s.to_owned()))
        }
        fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
            Ok(Zeroizing::new(s))
        }
    }
    d.deserialize_str(V)
}

/// `{"data": …}` at the top.
struct Root<'a> {
    fields: (&'a str, Option<&'a str>),
}

/// `{"data": {…fields…}, "metadata": {"version": N}}`.
struct Data<'a> {
    fields: (&'a str, Option<&'a str>),
}

/// The secret's own key/value map.
struct Fields<'a> {
    fields: (&'a str, Option<&'a str>),
}

/// Any JSON value: a string is kept as secret bytes, anything else noted.
struct AnyValue;

#[derive(Deserialize)]
struct Metadata {
    version: Option<u64>,
}

impl<'de> DeserializeSeed<'de> for Root<'_> {
    type Value = Option<KvSecret>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Root<'_> {
    type Value = Option<KvSecret>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a KV v2 answer")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = None;
        while let Some(k) = map.next_key::<String>()? {
            if k == "data" {
                out = map.next_value_seed(Data { fields: self.fields })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(out)
    }
}

impl<'de> DeserializeSeed<'de> for Data<'_> {
    type Value = Option<KvSecret>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for Data<'_> {
    type Value = Option<KvSecret>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a KV v2 data object")
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = None;
        let mut version = None;
        while let Some(k) = map.next_key::<String>()? {
            match k.as_str() {
                "data" => fields = map.next_value_seed(Fields { fields: self.fields })?,
                "metadata" => version = map.next_value::<Option<Metadata>>()?.and_then(|m| m.version),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        // `data.data` absent or null: not a KV v2 secret (a KV v1 mount answers
        // with the fields directly under `data`).
        Ok(fields.map(|(api_key, secret)| KvSecret {
            api_key,
            secret,
            version,
        }))
    }
}

impl<'de> DeserializeSeed<'de> for Fields<'_> {
    type Value = Option<(Field, Field)>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for Fields<'_> {
    type Value = Option<(Field, Field)>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the secret's fields")
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut key, mut secret) = (Field::Absent, Field::Absent);
        while let Some(k) = map.next_key::<String>()? {
            if k == self.fields.0 {
                key = map.next_value_seed(AnyValue)?;
            } else if Some(k.as_str()) == self.fields.1 {
                secret = map.next_value_seed(AnyValue)?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Some((key, secret)))
    }
}

impl<'de> DeserializeSeed<'de> for AnyValue {
    type Value = Field;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Field, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for AnyValue {
    type Value = Field;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Field, E> {
        Ok(Field::Value(SecretBytes::new(s.as_bytes().to_vec())))
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Field, E> {
        Ok(Field::Value(SecretBytes::from(s)))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Field, E> {
        Ok(Field::NotString)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Field, E> {
        Ok(Field::NotString)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Field, E> {
        Ok(Field::NotString)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Field, E> {
        Ok(Field::NotString)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Field, E> {
        Ok(Field::NotString)
    }
    fn visit_none<E: de::Error>(self) -> Result<Field, E> {
        Ok(Field::NotString)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Field::NotString)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Field::NotString)
    }
}

/// `GET {mount}/keys/{key}`: the key's type and latest version.
pub fn transit_key(body: &[u8]) -> Option<(String, u64)> {
    #[derive(Deserialize)]
    struct Answer {
        data: Option<Data>,
    }
    #[derive(Deserialize)]
    struct Data {
        #[serde(rename = "type")]
        kind: String,
        latest_version: u64,
    }
    let d = serde_json::from_slice::<Answer>(body).ok()?.data?;
    Some((d.kind, d.latest_version))
}

/// `POST {mount}/hmac/{key}/sha2-256`: `data.hmac` = `vault:vN:<base64>`,
/// as the key version and the 32-byte MAC.
pub fn transit_hmac(body: &[u8]) -> Option<(u64, [u8; 32])> {
    #[derive(Deserialize)]
    struct Answer {
        data: Option<Data>,
    }
    #[derive(Deserialize)]
    struct Data {
        hmac: String,
    }
    let hmac = serde_json::from_slice::<Answer>(body).ok()?.data?.hmac;
    let rest = hmac.strip_prefix("vault:v")?;
    let (version, b64) = rest.split_once(':')?;
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let version: u64 = version.parse().ok()?;
    let mut mac = [0u8; 32];
    use base64::Engine as _;
    match base64::engine::general_purpose::STANDARD.decode_slice(b64, &mut mac) {
        Ok(32) => Some((version, mac)),
        _ => None,
    }
}

/// `POST {mount}/verify/{key}/sha2-256`: `data.valid`.
pub fn transit_valid(body: &[u8]) -> Option<bool> {
    #[derive(Deserialize)]
    struct Answer {
        data: Option<Data>,
    }
    #[derive(Deserialize)]
    struct Data {
        valid: bool,
    }
    Some(serde_json::from_slice::<Answer>(body).ok()?.data?.valid)
}
