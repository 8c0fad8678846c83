//! Who a connection speaks for. With `--auth token` (the default) a client
//! presents an API token, as `Authorization: Bearer` on the upgrade, as a
//! `token` query parameter, or in a first `auth` message (what a browser
//! can do without putting the token in a URL); its jobs then belong to the
//! token's tenant. With `--auth none` every client is its own owner, as
//! before tokens existed: for local development only.

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use crawler_core::ErrorCode;
use crawler_core::auth::{Tenant, TokenDigest};
use crawler_core::ports::TokenStore;
use serde::Serialize;

/// How the gateway authenticates clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every client presents an API token (`crawlctl token create`).
    Token,
    /// No authentication: for local development, never on a shared network.
    None,
}

/// How long a token's verdict is trusted before the store is asked again:
/// a revoked token stops working on open connections within this.
pub const VERDICT_TTL: Duration = Duration::from_secs(5);

/// Who the client on a connection is.
#[derive(Debug, Clone)]
pub enum Identity {
    /// `--auth none`: the client owns its jobs by its client id alone.
    Open,
    /// `--auth token`, and no token yet: only `auth` is answered.
    Pending,
    /// Authenticated with the token of this digest.
    Tenant { tenant: Tenant, digest: TokenDigest },
}

impl Identity {
    /// The key the client's jobs are stored under, once it may have jobs.
    pub fn client_key(&self, client_id: &str) -> Option<String> {
        match self {
            Self::Open => Some(client_id.to_string()),
            Self::Pending => None,
            Self::Tenant { tenant, .. } => Some(tenant.client_key(client_id)),
        }
    }

    pub fn tenant(&self) -> Option<&Tenant> {
        match self {
            Self::Tenant { tenant, .. } => Some(tenant),
            _ => None,
        }
    }
}

/// Why a token was not accepted; the message says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    fn unauthenticated(message: &str) -> Self {
        Self {
            code: ErrorCode::Unauthenticated,
            message: message.to_string(),
        }
    }
}

/// What a connection needs before it may submit or ask about jobs.
pub const NO_TOKEN: &str = "this gateway needs an API token: send `Authorization: Bearer <token>` \
     when connecting, or {\"type\":\"auth\",\"token\":\"<token>\"} first";

/// Checks tokens against the store: at each upgrade and `auth`, and then
/// from a verdict remembered for [`VERDICT_TTL`], so a busy connection does
/// not read the store for every request.
pub struct Authenticator {
    mode: AuthMode,
    tokens: Arc<dyn TokenStore>,
    verdicts: moka::future::Cache<TokenDigest, Result<Tenant, Refusal>>,
}

impl Authenticator {
    pub fn new(mode: AuthMode, tokens: Arc<dyn TokenStore>) -> Self {
        Self {
            mode,
            tokens,
            verdicts: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(VERDICT_TTL)
                .build(),
        }
    }

    /// The identity a new connection starts with, from the token on its
    /// upgrade request if it brought one.
    pub async fn at_upgrade(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<Identity, Refusal> {
        if self.mode == AuthMode::None {
            return Ok(Identity::Open);
        }
        match presented_token(headers, query_token)? {
            Some(token) => self.verify(token).await,
            None => Ok(Identity::Pending),
        }
    }

    /// The identity a token gives, asked of the store itself: a token
    /// revoked a moment ago opens no new connection.
    pub async fn verify(&self, token: &str) -> Result<Identity, Refusal> {
        let digest = TokenDigest::of(token);
        let tenant = self.ask_store(&digest).await?;
        Ok(Identity::Tenant { tenant, digest })
    }

    /// Whether an authenticated connection's token still holds (it may
    /// have been revoked since), from a verdict at most [`VERDICT_TTL`] old.
    /// A connection without a token has none to recheck.
    pub async fn recheck(&self, identity: &Identity) -> Result<(), Refusal> {
        match identity {
            Identity::Open | Identity::Pending => Ok(()),
            Identity::Tenant { digest, .. } => match self.verdicts.get(digest).await {
                Some(verdict) => verdict.map(drop),
                None => self.ask_store(digest).await.map(drop),
            },
        }
    }

    /// The store's verdict on a token, remembered for rechecks.
    async fn ask_store(&self, digest: &TokenDigest) -> Result<Tenant, Refusal> {
        let verdict = match self.tokens.token_by_digest(digest).await {
            Ok(Some(token)) if token.revoked_at_ms.is_none() => Ok(token.tenant),
            Ok(Some(_)) => Err(Refusal::unauthenticated(
                "this token was revoked; ask for a new one",
            )),
            Ok(None) => Err(Refusal::unauthenticated("this token is not valid")),
            // An outage is not a verdict: not remembered.
            Err(e) => {
                return Err(Refusal {
                    code: ErrorCode::Unavailable,
                    message: format!("cannot check the token now: {e}"),
                });
            }
        };
        self.verdicts.insert(digest.clone(), verdict.clone()).await;
        verdict
    }
}

/// The token on an upgrade request: the `Authorization` header first,
/// then the `token` query parameter.
fn presented_token<'a>(
    headers: &'a HeaderMap,
    query_token: Option<&'a str>,
) -> Result<Option<&'a str>, Refusal> {
    if let Some(value) = headers.get(axum::http::header::AUTHORIZATION) {
        let bearer = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        return match bearer {
            Some(token) => Ok(Some(token)),
            None => Err(Refusal::unauthenticated(
                "the Authorization header must be `Bearer <token>`",
            )),
        };
    }
    Ok(query_token.filter(|t| !t.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_header_wins_over_the_query_and_must_be_a_bearer_token() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented_token(&headers, Some("q")), Ok(Some("q")));
        assert_eq!(presented_token(&headers, Some("")), Ok(None));
        headers.insert("authorization", HeaderValue::from_static("Bearer h"));
        assert_eq!(presented_token(&headers, Some("q")), Ok(Some("h")));
        headers.insert("authorization", HeaderValue::from_static("Basic h"));
        let refused = presented_token(&headers, None).unwrap_err();
        assert_eq!(refused.code, ErrorCode::Unauthenticated);
    }
}
