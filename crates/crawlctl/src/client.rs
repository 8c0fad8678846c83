//! A websocket client of the gateway: submit a job, follow its progress,
//! return its result.

use anyhow::{Context, bail};
use crawler_core::protocol::{Assembled, ResultAssembler, ServerMessage};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// What the client asks for.
#[derive(Debug, Clone)]
pub struct CrawlRequest {
    pub job_id: String,
    pub url: String,
    pub depth: u32,
    pub max_pages: Option<u32>,
    pub allowed_hosts: Vec<String>,
    pub include_subdomains: bool,
    pub spider: Option<String>,
}

impl CrawlRequest {
    pub fn to_json(&self) -> Value {
        let mut msg =
            json!({"type": "submit", "jobId": self.job_id, "url": self.url, "depth": self.depth});
        if let Some(p) = self.max_pages {
            msg["maxPages"] = json!(p);
        }
        if !self.allowed_hosts.is_empty() {
            msg["allowedHosts"] = json!(self.allowed_hosts);
        }
        if self.include_subdomains {
            msg["includeSubdomains"] = json!(true);
        }
        if let Some(s) = &self.spider {
            msg["spider"] = json!(s);
        }
        msg
    }
}

/// Submits `request` to the gateway at `ws_url` and waits for its result
/// message (putting a result sent in parts back together), calling
/// `on_progress` with each progress message.
pub async fn crawl(
    ws_url: &str,
    request: &CrawlRequest,
    mut on_progress: impl FnMut(&Value),
) -> anyhow::Result<Value> {
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url)
        .await
        .with_context(|| format!("cannot connect to the gateway at {ws_url}"))?;
    socket
        .send(Message::text(request.to_json().to_string()))
        .await
        .context("sending the job")?;
    let mut parts: Option<ResultAssembler> = None;
    while let Some(frame) = socket.next().await {
        let text = match frame.context("reading from the gateway")? {
            Message::Text(text) => text,
            Message::Close(_) => break,
            _ => continue,
        };
        let message: Value = serde_json::from_str(text.as_str())
            .context("the gateway sent something that is not JSON")?;
        if message["jobId"] != json!(request.job_id) {
            continue;
        }
        match message["type"].as_str() {
            Some("result") => {
                let _ = socket.close(None).await;
                return Ok(message);
            }
            Some("resultHead") => {
                let head: ServerMessage =
                    serde_json::from_value(message).context("reading a result's head")?;
                parts = ResultAssembler::new(head);
            }
            Some("resultPart") => {
                let Some(assembler) = parts.as_mut() else {
                    bail!("the gateway sent a result part before its head");
                };
                let ServerMessage::ResultPart { part, pages, .. } =
                    serde_json::from_value(message).context("reading a result part")?
                else {
                    bail!("the gateway sent a malformed result part");
                };
                if let Assembled::Done(result) =
                    assembler.add(part, pages).map_err(anyhow::Error::msg)?
                {
                    let _ = socket.close(None).await;
                    return Ok(serde_json::to_value(result)?);
                }
            }
            Some("error") => bail!(
                "{}: {}",
                message["code"].as_str().unwrap_or("error"),
                message["message"].as_str().unwrap_or("")
            ),
            Some("progress") => on_progress(&message),
            _ => {}
        }
    }
    bail!("the gateway closed the connection before the result arrived")
}

/// A readable summary of a result message.
pub fn summarize(result: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let pages = result["pages"].as_array().map_or(0, Vec::len);
    let _ = writeln!(
        out,
        "{} to depth {}: {} pages in {} ms{}{}",
        result["url"].as_str().unwrap_or("?"),
        result["depth"],
        pages,
        result["elapsedMs"],
        if result["cached"] == json!(true) {
            " (from cache)"
        } else {
            ""
        },
        if result["truncated"] == json!(true) {
            " (page cap reached)"
        } else {
            ""
        },
    );
    let facts: std::collections::HashMap<&str, &Value> = result["pages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["url"].as_str()?, p)))
        .collect();
    for (depth, level) in result["levels"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let urls = level.as_array().map(Vec::as_slice).unwrap_or_default();
        let _ = writeln!(out, "level {depth}: {} URLs", urls.len());
        for url in urls.iter().filter_map(Value::as_str) {
            let page = facts.get(url);
            let status = page
                .and_then(|p| {
                    p["status"]
                        .as_u64()
                        .map(|s| s.to_string())
                        .or_else(|| p["error"].as_str().map(|e| format!("error: {e}")))
                })
                .unwrap_or_else(|| "-".into());
            let title = page.and_then(|p| p["title"].as_str()).unwrap_or("");
            let _ = writeln!(out, "  [{status}] {url}  {title}");
        }
    }
    out
}
