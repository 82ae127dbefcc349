//! Authentication, failing closed: shared tokens (bearer, `X-Webhook-Token` or `?token=`) and
//! Standard Webhooks signatures. A request passes when it satisfies any configured method.

use actix_web::HttpRequest;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::AuthSettings;

/// Standard Webhooks' tolerance for the sender's clock, both ways.
const SIGNATURE_TOLERANCE_SECS: i64 = 5 * 60;
/// Longest `webhook-id` taken as an event id.
const MAX_WEBHOOK_ID_LEN: usize = 256;

/// How a request proved who sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    Token,
    /// A verified signature; the sender's `webhook-id` becomes the event id.
    Signature {
        webhook_id: String,
    },
    /// Nothing was required (`BRIDGE_ALLOW_UNAUTHENTICATED=true`).
    Open,
}

#[derive(Debug)]
pub struct Authenticator {
    /// SHA-256 of each token: comparing digests in constant time hides the tokens' lengths too.
    token_digests: Vec<[u8; 32]>,
    webhook_keys: Vec<Hmac<Sha256>>,
    allow_unauthenticated: bool,
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

impl Authenticator {
    pub fn new(settings: &AuthSettings) -> Self {
        Self {
            token_digests: settings
                .tokens
                .iter()
                .map(|t| Sha256::digest(t.expose().as_bytes()).into())
                .collect(),
            webhook_keys: settings
                .webhook_keys
                .iter()
                .map(|k| {
                    Hmac::<Sha256>::new_from_slice(k.expose())
                        .expect("HMAC takes keys of any length")
                })
                .collect(),
            allow_unauthenticated: settings.allow_unauthenticated,
        }
    }

    /// The credential decided from headers and query alone, before the body is read.
    pub fn before_body(&self, request: &HttpRequest) -> Option<Credential> {
        if self.presents_valid_token(request) {
            return Some(Credential::Token);
        }
        if self.allow_unauthenticated && !self.is_signed(request) {
            return Some(Credential::Open);
        }
        None
    }

    /// Whether a signature could still authenticate the request once its body is read.
    pub fn may_be_signed(&self, request: &HttpRequest) -> bool {
        !self.webhook_keys.is_empty() && self.is_signed(request)
    }

    fn is_signed(&self, request: &HttpRequest) -> bool {
        request.headers().contains_key("webhook-signature")
    }

    /// Whether a request that can only authenticate by its signature has everything but the
    /// signature right: a `webhook-id` and a fresh `webhook-timestamp`. Checked before its
    /// body is read, so a stranger's stale or partial request costs no body bytes.
    pub fn signature_headers_plausible(&self, request: &HttpRequest, now_secs: i64) -> bool {
        let header = |name: &str| request.headers().get(name)?.to_str().ok();
        let id_ok =
            header("webhook-id").is_some_and(|id| !id.is_empty() && id.len() <= MAX_WEBHOOK_ID_LEN);
        let fresh = header("webhook-timestamp")
            .and_then(|t| t.trim().parse::<i64>().ok())
            .is_some_and(|sent_at| {
                now_secs.abs_diff(sent_at) <= SIGNATURE_TOLERANCE_SECS.unsigned_abs()
            });
        id_ok && fresh
    }

    /// Verifies a Standard Webhooks signature over the body.
    pub fn verify_signature(
        &self,
        request: &HttpRequest,
        body: &[u8],
        now_secs: i64,
    ) -> Option<Credential> {
        let header = |name: &str| request.headers().get(name)?.to_str().ok();
        let id = header("webhook-id")?;
        let timestamp = header("webhook-timestamp")?;
        let signatures = header("webhook-signature")?;
        if id.is_empty() || id.len() > MAX_WEBHOOK_ID_LEN {
            return None;
        }
        let sent_at: i64 = timestamp.trim().parse().ok()?;
        // `abs_diff`: a sender's timestamp may be any i64, i64::MIN included.
        if now_secs.abs_diff(sent_at) > SIGNATURE_TOLERANCE_SECS.unsigned_abs() {
            return None;
        }
        let presented: Vec<Vec<u8>> = signatures
            .split_whitespace()
            .filter_map(|s| s.strip_prefix("v1,"))
            .filter_map(|s| BASE64.decode(s).ok())
            .collect();
        let verified = self.webhook_keys.iter().any(|key| {
            let mut mac = key.clone();
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.as_bytes());
            mac.update(b".");
            mac.update(body);
            let expected = mac.finalize().into_bytes();
            presented
                .iter()
                .any(|candidate| bool::from(expected.as_slice().ct_eq(candidate)))
        });
        verified.then(|| Credential::Signature {
            webhook_id: id.to_owned(),
        })
    }

    fn presents_valid_token(&self, request: &HttpRequest) -> bool {
        if self.token_digests.is_empty() {
            return false;
        }
        let headers = request.headers();
        let bearer = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        let header = headers.get("x-webhook-token").and_then(|v| v.to_str().ok());
        let query = actix_web::web::Query::<TokenQuery>::from_query(request.query_string())
            .ok()
            .and_then(|q| q.into_inner().token);
        [bearer, header, query.as_deref()]
            .into_iter()
            .flatten()
            .any(|token| self.is_known_token(token))
    }

    fn is_known_token(&self, token: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every configured token is compared, so timing says nothing about which one matched.
        self.token_digests
            .iter()
            .fold(subtle::Choice::from(0), |found, known| {
                found | known.ct_eq(&digest)
            })
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use actix_web::test::TestRequest;

    fn authenticator() -> Authenticator {
        Authenticator::new(&AuthSettings {
            tokens: vec![
                Secret::new("first-token-0123456789"),
                Secret::new("second-token-0123456789"),
            ],
            webhook_keys: vec![Secret::new(b"signing key".to_vec())],
            allow_unauthenticated: false,
        })
    }

    fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("key");
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn an_extreme_timestamp_is_refused_without_overflowing() {
        let auth = authenticator();
        let body = b"{}";
        for timestamp in [i64::MIN, i64::MAX, -1] {
            let request = TestRequest::default()
                .insert_header(("webhook-id", "msg_1"))
                .insert_header(("webhook-timestamp", timestamp.to_string()))
                .insert_header((
                    "webhook-signature",
                    sign(b"signing key", "msg_1", timestamp, body),
                ))
                .to_http_request();
            assert_eq!(
                auth.verify_signature(&request, body, 1_700_000_000),
                None,
                "{timestamp}"
            );
        }
    }

    #[test]
    fn accepts_each_configured_token_in_each_place() {
        let auth = authenticator();
        for token in ["first-token-0123456789", "second-token-0123456789"] {
            for request in [
                TestRequest::default().insert_header(("Authorization", format!("Bearer {token}"))),
                TestRequest::default().insert_header(("Authorization", format!("bearer {token}"))),
                TestRequest::default().insert_header(("X-Webhook-Token", token)),
                TestRequest::with_uri(&format!("/webhooks/omnichat?a=1&token={token}")),
            ] {
                assert_eq!(
                    auth.before_body(&request.to_http_request()),
                    Some(Credential::Token)
                );
            }
        }
    }

    #[test]
    fn refuses_unknown_missing_and_partial_tokens() {
        let auth = authenticator();
        for request in [
            TestRequest::default(),
            TestRequest::default().insert_header(("Authorization", "Bearer first-token")),
            TestRequest::default().insert_header(("Authorization", "Basic first-token-0123456789")),
            TestRequest::default().insert_header(("X-Webhook-Token", "first-token-01234567890")),
            TestRequest::with_uri("/webhooks/omnichat?token="),
        ] {
            assert_eq!(auth.before_body(&request.to_http_request()), None);
        }
    }

    #[test]
    fn verifies_standard_webhooks_signatures_within_five_minutes() {
        let auth = authenticator();
        let body = br#"{"objectId":"a"}"#;
        let now = 1_700_000_000;
        let request = |ts: i64, signature: String| {
            TestRequest::default()
                .insert_header(("webhook-id", "msg_1"))
                .insert_header(("webhook-timestamp", ts.to_string()))
                .insert_header(("webhook-signature", signature))
                .to_http_request()
        };
        let good = sign(b"signing key", "msg_1", now, body);
        assert_eq!(
            auth.verify_signature(&request(now, good.clone()), body, now + 299),
            Some(Credential::Signature {
                webhook_id: "msg_1".into()
            })
        );
        let rotated = format!("v1,bm90IGl0 {good}");
        assert!(
            auth.verify_signature(&request(now, rotated), body, now)
                .is_some(),
            "any listed signature may match"
        );
        assert!(
            auth.verify_signature(&request(now, good.clone()), body, now + 301)
                .is_none(),
            "too old"
        );
        assert!(
            auth.verify_signature(&request(now, good.clone()), body, now - 301)
                .is_none(),
            "from the future"
        );
        assert!(
            auth.verify_signature(&request(now, good), b"{}", now)
                .is_none(),
            "another body"
        );
        let wrong_key = sign(b"other key", "msg_1", now, body);
        assert!(
            auth.verify_signature(&request(now, wrong_key), body, now)
                .is_none()
        );
    }
}
