//! `crawlctl probe URL`: one HTTP GET of a plain `http://host:port/path`,
//! success when it answers 2xx within a few seconds. The container image
//! uses it as its healthcheck, having no HTTP client of its own.

use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PATIENCE: Duration = Duration::from_secs(3);

/// Ok when `url` answers with a 2xx status.
pub async fn check(url: &str) -> anyhow::Result<()> {
    let status = tokio::time::timeout(PATIENCE, get_status(url))
        .await
        .with_context(|| format!("{url} did not answer within {PATIENCE:?}"))??;
    anyhow::ensure!((200..300).contains(&status), "{url} answered {status}");
    Ok(())
}

async fn get_status(url: &str) -> anyhow::Result<u16> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("`{url}` is not an http:// URL"))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("cannot connect to {authority}"))?;
    let request = format!("GET /{path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = vec![0; 64];
    let read = stream.read(&mut head).await?;
    let line = String::from_utf8_lossy(&head[..read]);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("{url} did not answer HTTP"))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answering(status: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0; 1024];
            let _ = socket.read(&mut buf).await;
            let _ = socket
                .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                .await;
        });
        format!("http://{addr}/readyz")
    }

    #[tokio::test]
    async fn a_2xx_passes_and_anything_else_fails_clearly() {
        assert!(check(&answering("200 OK").await).await.is_ok());
        let refused = check(&answering("503 Service Unavailable").await).await;
        assert!(refused.unwrap_err().to_string().contains("503"));
        let unreachable = check("http://127.0.0.1:1/readyz").await.unwrap_err();
        assert!(format!("{unreachable:#}").contains("cannot connect"));
        assert!(check("https://x/").await.is_err());
    }
}
