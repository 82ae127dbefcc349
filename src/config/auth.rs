//! Who may send webhooks: shared tokens, Standard Webhooks signing keys, or (asked for
//! explicitly) anyone.

use super::variables::{ALLOW_UNAUTHENTICATED, AUTH_TOKENS, Env, WEBHOOK_SECRETS};
use super::{ConfigError, Secret};

/// How senders prove who they are. At least one method is configured, or unauthenticated
/// access was asked for explicitly.
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    /// Shared secrets presented as a bearer token, `X-Webhook-Token` or `?token=`.
    pub tokens: Vec<Secret>,
    /// Standard Webhooks signing keys (the bytes behind `whsec_<base64>`).
    pub webhook_keys: Vec<Secret<Vec<u8>>>,
    /// `BRIDGE_ALLOW_UNAUTHENTICATED`: anyone who reaches the port may send.
    pub allow_unauthenticated: bool,
}

/// The shortest credential accepted, in characters for a token and bytes for a signing key:
/// 128 bits, beyond guessing by sending requests.
pub const SHORTEST_CREDENTIAL: usize = 16;

pub(super) fn settings(env: &Env) -> Result<AuthSettings, ConfigError> {
    let tokens: Vec<Secret> = env
        .list(&AUTH_TOKENS)
        .into_iter()
        .map(Secret::new)
        .collect();
    if tokens
        .iter()
        .any(|t| t.expose().chars().count() < SHORTEST_CREDENTIAL)
    {
        return Err(ConfigError::new(
            AUTH_TOKENS.name,
            format!(
                "a token is shorter than {SHORTEST_CREDENTIAL} characters, short enough to guess; \
                 generate one with `openssl rand -hex 32`"
            ),
        ));
    }
    let mut webhook_keys = Vec::new();
    for secret in env.list(&WEBHOOK_SECRETS) {
        use base64::Engine as _;
        let encoded = secret.strip_prefix("whsec_").unwrap_or(&secret);
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                ConfigError::new(
                    WEBHOOK_SECRETS.name,
                    "each secret must be `whsec_` followed by base64",
                )
            })?;
        if key.len() < SHORTEST_CREDENTIAL {
            return Err(ConfigError::new(
                WEBHOOK_SECRETS.name,
                format!(
                    "a signing key is shorter than {SHORTEST_CREDENTIAL} bytes, short enough to \
                     guess; generate one with `echo whsec_$(openssl rand -base64 32)`"
                ),
            ));
        }
        webhook_keys.push(Secret::new(key));
    }
    let allow_unauthenticated = env.flag(&ALLOW_UNAUTHENTICATED)?;
    if tokens.is_empty() && webhook_keys.is_empty() && !allow_unauthenticated {
        return Err(ConfigError::new(
            AUTH_TOKENS.name,
            "no credential is configured: set BRIDGE_AUTH_TOKENS or BRIDGE_WEBHOOK_SECRETS \
             (or BRIDGE_ALLOW_UNAUTHENTICATED=true to accept anyone)",
        ));
    }
    Ok(AuthSettings {
        tokens,
        webhook_keys,
        allow_unauthenticated,
    })
}
