//! API tokens at the gateway, on a real cluster: tokens are made and
//! revoked with `crawlctl token`; a client without a good token gets
//! `unauthenticated`; a job belongs to its token's tenant, and another
//! tenant asking about it gets the answer for an unknown job; a tenant past
//! a quota gets `quota_exceeded`.

use std::process::Output;
use std::time::Duration;

use cluster_tests::processes::{Cluster, ClusterSpec, binary};
use cluster_tests::site::{SitePlan, TestSite};
use cluster_tests::ws::WsClient;
use serde_json::{Value, json};

async fn crawlctl(args: &[&str]) -> Output {
    let run = tokio::process::Command::new(binary("crawlctl"))
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("crawlctl ended")
        .expect("run crawlctl")
}

async fn new_token(cluster: &Cluster, name: &str, tenant: &str) -> String {
    let token = cluster.new_token(name, tenant).await;
    assert!(token.starts_with("crawl_") && token.len() == 70, "{token}");
    token
}

fn code(message: &Value) -> &str {
    message["code"].as_str().unwrap_or_default()
}

async fn status(client: &mut WsClient, job_id: &str) -> Value {
    client
        .send_json(&json!({"type": "status", "jobId": job_id}))
        .await;
    // Not the progress a connection that followed the job still holds.
    client
        .next_where(|m| {
            m["jobId"] == job_id
                && ["result", "error", "status"].contains(&m["type"].as_str().unwrap_or_default())
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_good_token_gets_in_and_a_tenant_sees_only_its_jobs() {
    let cluster = ClusterSpec::new(1, 1)
        .gateway_args(&["--auth", "token"])
        .start()
        .await;
    let ws = cluster.ws_url();
    let site = TestSite::serve(SitePlan::tree(&[2])).await;
    let alice = new_token(&cluster, "alice-ci", "alice").await;
    let alice_laptop = new_token(&cluster, "alice-laptop", "alice").await;
    let bob = new_token(&cluster, "bob", "bob").await;

    // No token: the connection opens (a browser sends `auth` next), and
    // every request is refused until a token comes.
    let mut anonymous = WsClient::connect(&ws).await;
    anonymous.submit("j", &site.url("/"), 1).await;
    let refused = anonymous.error().await;
    assert_eq!(
        (code(&refused), refused["jobId"].as_str()),
        ("unauthenticated", Some("j"))
    );

    // A wrong token, in the header or the query: refused at the upgrade.
    for (url, token) in [
        (ws.clone(), Some("crawl_wrong")),
        (format!("{ws}?token=crawl_wrong"), None),
        (ws.clone(), Some("")),
    ] {
        let (http, error) = WsClient::refused_upgrade(&url, token).await;
        assert_eq!((http, code(&error)), (401, "unauthenticated"), "{error}");
    }
    // A wrong token in an `auth` message: refused, and the connection stays.
    anonymous
        .send_json(&json!({"type": "auth", "token": "crawl_wrong"}))
        .await;
    assert_eq!(code(&anonymous.error().await), "unauthenticated");

    // Alice crawls with her token in the header.
    let mut alices = WsClient::connect_with_token(&ws, &alice).await;
    alices.submit("mine", &site.url("/"), 1).await;
    let result = alices.result("mine").await;
    assert_eq!(result["levels"][1].as_array().map(Vec::len), Some(2));

    // Bob, by an `auth` message, as the web page does, under Alice's
    // client id: her job is unknown to him, as a job never submitted is.
    let bobs_url = format!("{ws}?clientId={}", alices.client_id);
    let mut bobs = WsClient::connect(&bobs_url).await;
    bobs.send_json(&json!({"type": "auth", "token": bob})).await;
    let authenticated = bobs.next_where(|m| m["type"] == "authenticated").await;
    assert_eq!(authenticated["tenant"], "bob");
    let unknown = status(&mut bobs, "mine").await;
    assert_eq!(code(&unknown), "unknown_job", "{unknown}");
    let never = status(&mut bobs, "never-submitted").await;
    assert_eq!(
        unknown["message"]
            .as_str()
            .map(|m| m.replace("mine", "never-submitted")),
        never["message"].as_str().map(str::to_string),
        "another tenant's job is answered as an unknown one"
    );
    // His tenant cannot change on this connection.
    bobs.send_json(&json!({"type": "auth", "token": alice}))
        .await;
    assert_eq!(code(&bobs.error().await), "invalid_message");

    // Another token of Alice's tenant sees her job.
    let mut laptop = WsClient::connect_with_token(&bobs_url, &alice_laptop).await;
    assert_eq!(status(&mut laptop, "mine").await["type"], "result");

    // Revoked: refused at the next upgrade, and on the open connection
    // within the few seconds a verdict is remembered.
    cluster.token_command(&["revoke", "alice-ci"]).await;
    let (http, error) = WsClient::refused_upgrade(&ws, Some(&alice)).await;
    assert_eq!((http, code(&error)), (401, "unauthenticated"));
    assert!(error["message"].as_str().unwrap().contains("revoked"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = status(&mut alices, "mine").await;
        if code(&answer) == "unauthenticated" {
            break;
        }
        assert_eq!(answer["type"], "result", "{answer}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "a revoked token still works"
        );
        // Each status asks again; the gateway forgets its verdict after 5 s.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let listed = cluster.token_command(&["list"]).await;
    let revoked: Vec<&str> = listed
        .lines()
        .filter(|l| !l.ends_with("\t-") && !l.starts_with("NAME"))
        .collect();
    assert_eq!(revoked.len(), 1, "{listed}");
    assert!(revoked[0].starts_with("alice-ci\talice\t"), "{listed}");
    assert!(!listed.contains(&bob[6..]), "a secret was listed: {listed}");

    // crawlctl sends its token as a header; without one it is refused (3).
    let url = site.url("/");
    let crawled = crawlctl(&["crawl", &url, "--gateway", &ws, "--token", &bob]).await;
    assert!(
        crawled.status.success(),
        "{}",
        String::from_utf8_lossy(&crawled.stderr)
    );
    let refused = crawlctl(&["crawl", &url, "--gateway", &ws]).await;
    assert_eq!(refused.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unauthenticated"));
    let wrong = crawlctl(&["crawl", &url, "--gateway", &ws, "--token", "crawl_x"]).await;
    assert_eq!(wrong.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("unauthenticated"));

    assert!(
        cluster
            .gateway_metric("crawler_gateway_auth_refused_total")
            .await
            >= 6
    );
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_past_a_quota_is_refused_with_its_own_code() {
    let cluster = ClusterSpec::new(1, 1)
        .gateway_args(&[
            "--auth",
            "token",
            "--tenant-running-jobs",
            "1",
            "--tenant-pages-per-day",
            "5",
            "--tenant-jobs-per-hour",
            "3",
        ])
        .start()
        .await;
    let ws = cluster.ws_url();
    let site = TestSite::serve(SitePlan::tree(&[3]).gate_depth(1)).await;
    let alice = new_token(&cluster, "alice", "alice").await;
    let bob = new_token(&cluster, "bob", "bob").await;
    let mut alices = WsClient::connect_with_token(&ws, &alice).await;

    // One job running is all Alice's tenant may have.
    alices.submit("a", &site.url("/"), 1).await;
    site.gated_requests(1).await;
    alices.submit("b", &site.url("/?other"), 0).await;
    let refused = alices.next_where(|m| m["jobId"] == "b").await;
    assert_eq!(code(&refused), "quota_exceeded", "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("running"));
    site.open_gate();
    let first = alices.result("a").await;
    assert_eq!(first["pages"].as_array().map(Vec::len), Some(4));

    // 4 pages so far; one more page reaches the 5 a day, and then no more.
    alices.submit("c", &site.url("/?other"), 0).await;
    alices.result("c").await;
    alices.submit("d", &site.url("/?third"), 0).await;
    let refused = alices.next_where(|m| m["jobId"] == "d").await;
    assert_eq!(code(&refused), "quota_exceeded", "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("pages"));

    // Bob's tenant has its own quotas: three jobs an hour, then no more.
    let mut bobs = WsClient::connect_with_token(&ws, &bob).await;
    for path in site.plan().paths_at(1) {
        bobs.submit(&path, &site.url(&path), 0).await;
        bobs.result(&path).await;
    }
    bobs.submit("fourth", &site.url("/?fourth"), 0).await;
    let refused = bobs.next_where(|m| m["jobId"] == "fourth").await;
    assert_eq!(code(&refused), "quota_exceeded", "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("hour"));

    assert_eq!(
        cluster
            .gateway_metric("crawler_gateway_quota_exceeded_total")
            .await,
        3
    );
    cluster.cleanup().await;
}
