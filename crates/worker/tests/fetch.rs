//! The fetcher against a real local server: network policy on resolved
//! addresses and on every redirect hop, redirect limit, body cap.

use axum::Router;
use axum::response::{Html, Redirect};
use axum::routing::get;
use crawler_core::net_policy::NetworkPolicy;
use url::Url;
use worker::fetch::{FetchConfig, Fetcher};

async fn serve() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = Router::new()
        .route(
            "/",
            get(|| async { Html("<title>Hi</title><a href='/a'>a</a>") }),
        )
        .route("/loop", get(|| async { Redirect::temporary("/loop") }))
        .route("/big", get(|| async { Html("x".repeat(3 * 1024 * 1024)) }))
        .route(
            "/to-other-loopback",
            get(move || async move { Redirect::temporary(&format!("http://127.0.0.2:{port}/")) }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://127.0.0.1:{port}")
}

fn fetcher(allow: &str, config: FetchConfig) -> Fetcher {
    Fetcher::new(
        &config,
        NetworkPolicy::new(NetworkPolicy::parse_list(allow).unwrap()),
    )
    .unwrap()
}

fn url(s: &str) -> Url {
    Url::parse(s).unwrap()
}

#[tokio::test]
async fn loopback_is_refused_unless_allowed() {
    let base = serve().await;
    let refused = fetcher("", FetchConfig::default())
        .fetch(&url(&format!("{base}/")), 0, None)
        .await;
    assert!(refused.status.is_none());
    assert!(
        refused
            .error
            .as_deref()
            .unwrap()
            .contains("forbidden address"),
        "{refused:?}"
    );

    let allowed = fetcher("127.0.0.0/8", FetchConfig::default())
        .fetch(&url(&format!("{base}/")), 0, None)
        .await;
    assert_eq!(allowed.status, Some(200));
    assert_eq!(allowed.title.as_deref(), Some("Hi"));
    assert_eq!(allowed.links, vec![format!("{base}/a")]);
}

#[tokio::test]
async fn every_redirect_hop_is_checked_against_the_policy() {
    let base = serve().await;
    let only_one = fetcher("127.0.0.1/32", FetchConfig::default());
    let page = only_one
        .fetch(&url(&format!("{base}/to-other-loopback")), 0, None)
        .await;
    assert!(
        page.error.as_deref().unwrap().contains("forbidden address"),
        "{page:?}"
    );
    // A name is checked after resolution: localhost resolves to loopback addresses.
    let none = fetcher("", FetchConfig::default());
    let page = none.fetch(&url("http://localhost:9/"), 0, None).await;
    assert!(
        page.error.as_deref().unwrap().contains("forbidden address"),
        "{page:?}"
    );
}

#[tokio::test]
async fn redirect_loops_stop_at_the_limit() {
    let base = serve().await;
    let config = FetchConfig {
        max_redirects: 3,
        ..Default::default()
    };
    let page = fetcher("127.0.0.0/8", config)
        .fetch(&url(&format!("{base}/loop")), 0, None)
        .await;
    assert!(
        page.error
            .as_deref()
            .unwrap()
            .contains("more than 3 redirects"),
        "{page:?}"
    );
}

#[tokio::test]
async fn the_body_cap_bounds_what_is_read() {
    let base = serve().await;
    let config = FetchConfig {
        max_body_bytes: 64 * 1024,
        ..Default::default()
    };
    let page = fetcher("127.0.0.0/8", config)
        .fetch(&url(&format!("{base}/big")), 0, None)
        .await;
    assert_eq!(page.status, Some(200));
    assert_eq!(page.bytes, 64 * 1024);
}
