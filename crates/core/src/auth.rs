//! API tokens and tenants: what a client shows the gateway, what the store
//! keeps of it, and how a job is tied to the tenant that submitted it.
//!
//! A token is 256 random bits, shown once when it is made. The store keeps
//! only its SHA-256 digest: a slow hash adds nothing to a secret that
//! cannot be guessed, and a digest lets the gateway find the token's row
//! with one indexed read.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Every token starts with this, so a leaked one is easy to recognise
/// (secret scanners, logs) and a pasted password is refused at a glance.
pub const TOKEN_PREFIX: &str = "crawl_";

/// A token's secret, as the client holds it. Never printed by `Debug`.
pub struct TokenSecret(String);

impl TokenSecret {
    /// A new token: the prefix and 32 random bytes in hex.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the operating system gives random bytes");
        Self(format!("{TOKEN_PREFIX}{}", hex::encode(bytes)))
    }

    /// What the client sends.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn digest(&self) -> TokenDigest {
        TokenDigest::of(&self.0)
    }
}

impl std::fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSecret(…)")
    }
}

/// The SHA-256 of a token, in hex: what the store keeps and looks up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenDigest(String);

impl TokenDigest {
    /// The digest of whatever a client presented; a wrong token simply
    /// finds no row.
    pub fn of(presented: &str) -> Self {
        Self(hex::encode(Sha256::digest(presented.as_bytes())))
    }

    pub fn as_hex(&self) -> &str {
        &self.0
    }
}

/// A token as the store lists it: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiToken {
    /// Unique; how an operator names the token to revoke it.
    pub name: String,
    pub tenant: Tenant,
    pub created_at_ms: u64,
    pub revoked_at_ms: Option<u64>,
}

/// Who owns jobs: every job belongs to the tenant of the token it was
/// submitted with, and only that tenant sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Tenant(String);

impl Tenant {
    /// 1 to 63 lowercase letters, digits and `-`, starting with a letter or
    /// digit: safe in keys, logs and SQL patterns.
    pub fn parse(name: &str) -> Result<Self, String> {
        let ok = (1..=63).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-');
        if ok {
            Ok(Self(name.to_string()))
        } else {
            Err(format!(
                "tenant `{name:.80}` must be 1 to 63 lowercase letters, digits or `-`, not starting with `-`"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key a job's client is stored under: the tenant, `/`, and the id
    /// the client chose. Client ids hold no `/`, so two tenants' clients
    /// never share a key, and a tenant that asks for another tenant's job
    /// finds nothing, exactly as for a job that does not exist.
    pub fn client_key(&self, client_id: &str) -> String {
        format!("{}/{client_id}", self.0)
    }

    /// The prefix every one of this tenant's client keys starts with.
    pub fn key_prefix(&self) -> String {
        format!("{}/", self.0)
    }
}

impl TryFrom<String> for Tenant {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        Self::parse(&name)
    }
}

impl From<Tenant> for String {
    fn from(tenant: Tenant) -> String {
        tenant.0
    }
}

impl std::fmt::Display for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a tenant has used, as its quotas count it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantUsage {
    /// Jobs queued or running now.
    pub running_jobs: u32,
    /// Jobs accepted in the last hour, answered from the cache or not.
    pub jobs_last_hour: u32,
    /// Pages in the results of jobs accepted in the last 24 hours, answers
    /// from the cache included (so far, for jobs still running).
    pub pages_last_day: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_prefixed_random_and_kept_only_as_its_digest() {
        let a = TokenSecret::generate();
        let b = TokenSecret::generate();
        assert!(a.expose().starts_with(TOKEN_PREFIX));
        assert_eq!(a.expose().len(), TOKEN_PREFIX.len() + 64);
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.digest(), TokenDigest::of(a.expose()));
        assert_eq!(a.digest().as_hex().len(), 64);
        assert!(!format!("{a:?}").contains(&a.expose()[TOKEN_PREFIX.len()..]));
    }

    #[test]
    fn tenant_names_are_tame_and_scope_client_ids() {
        for bad in ["", "-a", "A", "a/b", "a_b", "a%", &"a".repeat(64)] {
            assert!(Tenant::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let t = Tenant::parse("team-7").unwrap();
        assert_eq!(t.client_key("c1"), "team-7/c1");
        assert!(t.client_key("c1").starts_with(&t.key_prefix()));
        assert!(serde_json::from_str::<Tenant>("\"Bad\"").is_err());
    }
}
