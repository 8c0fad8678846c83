//! A small site with a known link graph, served on loopback: the demo crawls
//! it, and the tests check every edge of it. It has relative and absolute
//! links, a `<base href>`, fragments, a cycle, a redirect, a 404, a
//! non-HTML file, and a link to another host (`localhost`, out of scope when
//! the crawl starts at 127.0.0.1).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Bytes of the sample PDF, so tests can check the `bytes` fact.
pub const REPORT_PDF: &[u8] = b"%PDF-1.4\n% sample report, not parsed by the crawler\n%%EOF\n";

pub struct SampleSite {
    pub addr: SocketAddr,
    /// The User-Agent of every request served, in order.
    pub user_agents: Arc<Mutex<Vec<String>>>,
    shutdown: CancellationToken,
}

impl SampleSite {
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let user_agents: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = user_agents.clone();
        let app = Router::new()
            .route("/", get(home))
            .route("/about.html", get(about))
            .route(
                "/team.html",
                get(|| page("Team", r#"<a href="/">home</a>"#)),
            )
            .route("/blog/", get(blog))
            .route(
                "/archive/post1.html",
                get(|| page("Post 1", r#"<a href="post2.html">next</a>"#)),
            )
            .route("/archive/post2.html", get(|| page("Post 2", "the end")))
            .route(
                "/contact",
                get(|| page("Contact", r#"<a href="about.html#team">about</a>"#)),
            )
            .route("/old", get(|| async { Redirect::permanent("/new") }))
            .route("/new", get(|| page("New", r#"<a href="/deep">deeper</a>"#)))
            .route("/deep", get(|| page("Deep", "leaf")))
            .route("/files/report.pdf", get(report))
            .fallback(not_found)
            .layer(axum::middleware::from_fn(
                move |request: Request, next: Next| {
                    let seen = seen.clone();
                    async move {
                        let agent = request
                            .headers()
                            .get(header::USER_AGENT)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string();
                        seen.lock().expect("user agents").push(agent);
                        next.run(request).await
                    }
                },
            ))
            .with_state(addr);
        let token = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await;
        });
        Ok(Self {
            addr,
            user_agents,
            shutdown,
        })
    }

    /// The start URL of a crawl of this site.
    pub fn start_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Requests served so far.
    pub fn requests(&self) -> usize {
        self.user_agents.lock().expect("user agents").len()
    }

    /// An absolute URL on this site.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for SampleSite {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn page(title: &str, body: &str) -> impl std::future::Future<Output = Response> + Send + 'static {
    let html = format!(
        "<!doctype html><html><head><title>{title}</title></head><body>{body}</body></html>"
    );
    async move { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response() }
}

async fn home(State(addr): State<SocketAddr>) -> Response {
    let port = addr.port();
    let body = format!(
        r##"<h1>Sample</h1>
        <a href="about.html">about (relative)</a>
        <a href="/blog/">blog (absolute path)</a>
        <a href="http://127.0.0.1:{port}/contact#team">contact (absolute, fragment)</a>
        <a href="#top">top (fragment only)</a>
        <a href="http://localhost:{port}/elsewhere">another host</a>
        <a href="/old">moved</a>
        <a href="/missing">broken</a>
        <a href="/files/report.pdf">report</a>
        <a href="mailto:team@example.com">mail</a>"##
    );
    page("Home", &body).await
}

async fn about() -> Response {
    page(
        "About",
        r#"<a href="/">home (cycle)</a> <a href="team.html">team</a>"#,
    )
    .await
}

async fn blog() -> Response {
    // Relative links resolve against the base, not against /blog/.
    let html = r#"<!doctype html><html><head><base href="/archive/"><title>Blog</title></head>
        <body><a href="post1.html">first post</a> <a href="../">home</a></body></html>"#;
    ([(header::CONTENT_TYPE, "text/html")], html).into_response()
}

async fn report() -> Response {
    ([(header::CONTENT_TYPE, "application/pdf")], REPORT_PDF).into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/html")],
        "<html><head><title>Not found</title></head><body>nothing here</body></html>",
    )
        .into_response()
}
