//! `crawlctl token`: the gateway's API tokens, managed in the job store the
//! gateways read them from. A token's secret is printed once, when it is
//! made; the store keeps only its digest.

use std::io::Write;

use anyhow::Context;
use crawler_adapters::PgStore;
use crawler_core::auth::{ApiToken, Tenant, TokenSecret};
use crawler_core::ports::TokenStore;

/// Makes a token for `tenant` (the name itself when unset) and writes its
/// secret, alone on a line, to `out`.
pub async fn create(
    database_url: &str,
    name: &str,
    tenant: Option<&str>,
    out: &mut impl Write,
) -> anyhow::Result<ApiToken> {
    anyhow::ensure!(
        !name.is_empty() && name.len() <= 128 && !name.chars().any(char::is_control),
        "--name must be 1 to 128 printable characters"
    );
    let tenant = Tenant::parse(tenant.unwrap_or(name)).map_err(anyhow::Error::msg)?;
    let store = PgStore::connect(database_url).await?;
    let secret = TokenSecret::generate();
    let token = ApiToken {
        name: name.to_string(),
        tenant,
        created_at_ms: crawler_core::now_ms(),
        revoked_at_ms: None,
    };
    store.create_token(&token, &secret.digest()).await?;
    writeln!(out, "{}", secret.expose()).context("writing the token")?;
    Ok(token)
}

/// Every token, one line each: name, tenant, made, revoked.
pub async fn list(database_url: &str, out: &mut impl Write) -> anyhow::Result<()> {
    let store = PgStore::connect(database_url).await?;
    writeln!(out, "NAME\tTENANT\tCREATED_MS\tREVOKED_MS")?;
    for token in store.list_tokens().await? {
        let revoked = token
            .revoked_at_ms
            .map_or_else(|| "-".to_string(), |at| at.to_string());
        writeln!(
            out,
            "{}\t{}\t{}\t{revoked}",
            token.name, token.tenant, token.created_at_ms
        )?;
    }
    Ok(())
}

pub async fn revoke(database_url: &str, name: &str) -> anyhow::Result<()> {
    let store = PgStore::connect(database_url).await?;
    anyhow::ensure!(
        store.revoke_token(name, crawler_core::now_ms()).await?,
        "no live token is named `{name}`"
    );
    Ok(())
}
