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

const PAGE: &str = "<title>Hi</title><a href='/a'>a</a>";

/// Serves `body` as HTML with `Content-Encoding: encoding`.
fn encoded(encoding: &'static str, body: Vec<u8>) -> axum::response::Response {
    axum::response::IntoResponse::into_response((
        [
            (axum::http::header::CONTENT_TYPE, "text/html"),
            (axum::http::header::CONTENT_ENCODING, encoding),
        ],
        body,
    ))
}

fn gzip(body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(body).unwrap();
    e.finish().unwrap()
}

/// HTTP's `deflate` is the zlib format (RFC 9110, 8.4.1.2).
fn deflate(body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(body).unwrap();
    e.finish().unwrap()
}

fn brotli(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::BrotliCompress(&mut &body[..], &mut out, &Default::default()).unwrap();
    out
}

fn zstd(body: &[u8]) -> Vec<u8> {
    zstd::encode_all(body, 3).unwrap()
}

async fn serve_encoded() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let bomb = || format!("<title>bomb</title>{}", "x".repeat(8 * 1024 * 1024));
    let app = Router::new()
        .route(
            "/gzip",
            get(|| async { encoded("gzip", gzip(PAGE.as_bytes())) }),
        )
        .route(
            "/deflate",
            get(|| async { encoded("deflate", deflate(PAGE.as_bytes())) }),
        )
        .route(
            "/br",
            get(|| async { encoded("br", brotli(PAGE.as_bytes())) }),
        )
        .route(
            "/zstd",
            get(|| async { encoded("zstd", zstd(PAGE.as_bytes())) }),
        )
        .route(
            "/br-bomb",
            get(move || async move { encoded("br", brotli(bomb().as_bytes())) }),
        )
        .route(
            "/zstd-bomb",
            get(move || async move { encoded("zstd", zstd(bomb().as_bytes())) }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://127.0.0.1:{port}")
}

#[tokio::test]
async fn gzip_deflate_brotli_and_zstd_bodies_are_decoded_within_the_body_cap() {
    let base = serve_encoded().await;
    let fetcher = fetcher(
        "127.0.0.0/8",
        FetchConfig {
            max_body_bytes: 64 * 1024,
            ..FetchConfig::default()
        },
    );
    for encoding in ["gzip", "deflate", "br", "zstd"] {
        let page = fetcher
            .fetch(&url(&format!("{base}/{encoding}")), 0, None)
            .await;
        assert_eq!(page.status, Some(200), "{encoding}: {page:?}");
        assert_eq!(page.title.as_deref(), Some("Hi"), "{encoding}");
        assert_eq!(page.links, [format!("{base}/a")], "{encoding}");
        assert_eq!(
            page.bytes,
            PAGE.len() as u64,
            "{encoding}: the decoded size"
        );
    }
    // 8 MiB that compress to a few KiB: reading stops at the cap.
    for bomb in ["br-bomb", "zstd-bomb"] {
        let page = fetcher
            .fetch(&url(&format!("{base}/{bomb}")), 0, None)
            .await;
        assert_eq!(page.bytes, 64 * 1024, "{bomb}");
        assert_eq!(page.title.as_deref(), Some("bomb"));
    }
}

#[tokio::test]
async fn a_windows_1252_page_is_decoded_by_its_charset() {
    // "Café – naïve" and a link to /café, in windows-1252.
    let (body, _, _) =
        encoding_rs::WINDOWS_1252.encode("<title>Café – naïve</title><a href='/café'>x</a>");
    let with_meta = [b"<meta charset=\"windows-1252\">".as_slice(), &body].concat();
    let body = body.into_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app =
        Router::new()
            .route(
                "/header",
                get(move || async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/html; charset=Windows-1252",
                        )],
                        body,
                    )
                }),
            )
            .route(
                "/meta",
                get(move || async move {
                    ([(axum::http::header::CONTENT_TYPE, "text/html")], with_meta)
                }),
            );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let fetcher = fetcher("127.0.0.0/8", FetchConfig::default());
    for how in ["header", "meta"] {
        let page = fetcher.fetch(&url(&format!("{base}/{how}")), 0, None).await;
        assert_eq!(page.title.as_deref(), Some("Café – naïve"), "{how}");
        assert_eq!(page.links, [format!("{base}/caf%C3%A9")], "{how}");
    }
}
