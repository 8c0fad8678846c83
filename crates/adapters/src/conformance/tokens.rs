//! The [`TokenStore`] suite.

use crawler_core::auth::{ApiToken, Tenant, TokenDigest, TokenSecret};
use crawler_core::ports::{TokenError, TokenStore};

fn token(name: &str, tenant: &str, created_at_ms: u64) -> ApiToken {
    ApiToken {
        name: name.into(),
        tenant: Tenant::parse(tenant).unwrap(),
        created_at_ms,
        revoked_at_ms: None,
    }
}

pub async fn a_token_is_found_by_its_digest_only(tokens: &dyn TokenStore) {
    let secret = TokenSecret::generate();
    let made = token("ci", "team-a", 1_000);
    tokens.create_token(&made, &secret.digest()).await.unwrap();
    let found = tokens.token_by_digest(&secret.digest()).await.unwrap();
    assert_eq!(found, Some(made));
    let wrong = TokenDigest::of("crawl_0000");
    assert_eq!(tokens.token_by_digest(&wrong).await.unwrap(), None);
}

pub async fn a_name_is_taken_once(tokens: &dyn TokenStore) {
    let first = TokenSecret::generate();
    tokens
        .create_token(&token("ci", "team-a", 1_000), &first.digest())
        .await
        .unwrap();
    let second = TokenSecret::generate();
    let refused = tokens
        .create_token(&token("ci", "team-b", 2_000), &second.digest())
        .await;
    assert!(
        matches!(&refused, Err(TokenError::NameTaken(name)) if name == "ci"),
        "{refused:?}"
    );
    assert_eq!(
        tokens.token_by_digest(&second.digest()).await.unwrap(),
        None
    );
}

pub async fn a_revoked_token_stays_listed_as_revoked(tokens: &dyn TokenStore) {
    let (a, b) = (TokenSecret::generate(), TokenSecret::generate());
    tokens
        .create_token(&token("b-second", "team-b", 2_000), &b.digest())
        .await
        .unwrap();
    tokens
        .create_token(&token("a-first", "team-a", 1_000), &a.digest())
        .await
        .unwrap();
    assert!(tokens.revoke_token("a-first", 5_000).await.unwrap());
    assert!(
        !tokens.revoke_token("a-first", 6_000).await.unwrap(),
        "revoked once"
    );
    assert!(!tokens.revoke_token("nobody", 6_000).await.unwrap());

    let found = tokens.token_by_digest(&a.digest()).await.unwrap().unwrap();
    assert_eq!(found.revoked_at_ms, Some(5_000));
    let listed = tokens.list_tokens().await.unwrap();
    let names: Vec<(&str, Option<u64>)> = listed
        .iter()
        .map(|t| (t.name.as_str(), t.revoked_at_ms))
        .collect();
    assert_eq!(names, [("a-first", Some(5_000)), ("b-second", None)]);
}

#[macro_export]
macro_rules! tokens_conformance {
    ($setup:expr) => {
        $crate::__conformance_tests!(
            tokens,
            $setup,
            [
                a_token_is_found_by_its_digest_only,
                a_name_is_taken_once,
                a_revoked_token_stays_listed_as_revoked,
            ]
        );
    };
}
