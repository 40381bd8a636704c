//! Per-request identity: the request id, taken from a well-formed client
//! `x-request-id`, else a fresh ULID.

use http::HeaderValue;

/// Longest client-supplied request id accepted as is.
pub const MAX_REQUEST_ID_LEN: usize = 128;

#[derive(Debug, Clone)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// Keep a client id made only of `[A-Za-z0-9._:-]` (1–128 chars) so it is
    /// safe in logs and headers; otherwise generate a ULID.
    pub fn parse_or_new(client: Option<&HeaderValue>) -> RequestId {
        if let Some(v) = client {
            let b = v.as_bytes();
            if !b.is_empty()
                && b.len() <= MAX_REQUEST_ID_LEN
                && b.iter().all(|c| c.is_ascii_alphanumeric() || b"._:-".contains(c))
            {
                return RequestId(v.clone());
            }
        }
        let mut buf = [0u8; ulid::ULID_LEN];
        let id = ulid::Ulid::new().array_to_str(&mut buf);
        RequestId(HeaderValue::from_str(id).unwrap_or(HeaderValue::from_static("invalid")))
    }

    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("")
    }

    pub fn header_value(&self) -> HeaderValue {
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        let good = HeaderValue::from_static("abc-123_x.y:z");
        assert_eq!(RequestId::parse_or_new(Some(&good)).as_str(), "abc-123_x.y:z");
        for bad in ["", "a b", "a\"b", "<script>"] {
            let v = HeaderValue::from_str(bad).unwrap();
            let id = RequestId::parse_or_new(Some(&v));
            assert_eq!(id.as_str().len(), 26, "{bad:?} replaced by a ULID");
        }
        let long = HeaderValue::from_str(&"a".repeat(129)).unwrap();
        assert_eq!(RequestId::parse_or_new(Some(&long)).as_str().len(), 26);
    }
}
