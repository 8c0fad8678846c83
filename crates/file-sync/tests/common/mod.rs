//! Helpers shared by the integration tests: starting servers (as a real
//! process or in-process), building trees and comparing them.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crawler_core::tls::TlsArgs;
use file_sync::metrics::Metrics;
use file_sync::{Config, FileSyncServer, Remote};
use tokio_util::sync::CancellationToken;

/// The `file-sync` binary running on a free port with its own root.
pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
}

impl ServerProcess {
    /// Starts the binary on port 0 and reads the bound address from the
    /// line it prints, with a deadline.
    pub fn start(root: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_file-sync"))
            .args(["--listen", "127.0.0.1:0", "--grpc-plaintext", "--root"])
            .arg(root)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the file-sync binary starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("file-sync prints its address within 20 s");
        let addr = line
            .strip_prefix("file-sync listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("a socket address");
        Self { child, addr }
    }

    /// The server as a client reaches it: in plaintext, as these tests run it.
    pub fn endpoint(&self) -> Remote {
        Remote::plaintext(self.url())
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A server running inside the test process.
pub struct InProcess {
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    stop: CancellationToken,
}

impl InProcess {
    pub async fn start(root: &Path) -> Self {
        Self::start_with(Config::for_root(root)).await
    }

    /// Serves `config` in plaintext, as these tests choose.
    pub async fn start_with(mut config: Config) -> Self {
        config.tls = TlsArgs::plaintext();
        let server = FileSyncServer::build(config).await.expect("server builds");
        let addr = server.local_addr();
        let metrics = server.metrics();
        let stop = CancellationToken::new();
        tokio::spawn(server.run_until_stopped(stop.clone()));
        Self {
            addr,
            metrics,
            stop,
        }
    }

    /// The server as a client reaches it: in plaintext, as these tests run it.
    pub fn endpoint(&self) -> Remote {
        Remote::plaintext(self.url())
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Writes a file (creating its folders) with a mode.
pub fn write_file(root: &Path, rel: &str, content: &[u8], mode: u32) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Deterministic pseudo-random bytes (incompressible).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// What a tree holds: per relative path, its kind, permission bits and
/// content hash. Links are recorded as such, never followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir { mode: u32 },
    File { mode: u32, hash: String },
    Link,
}

pub fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    fn go(dir: &Path, prefix: &str, out: &mut BTreeMap<String, Node>) {
        for item in std::fs::read_dir(dir).unwrap() {
            let item = item.unwrap();
            let name = item.file_name().into_string().unwrap();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let meta = std::fs::symlink_metadata(item.path()).unwrap();
            let mode = meta.permissions().mode() & 0o777;
            if meta.file_type().is_symlink() {
                out.insert(rel, Node::Link);
            } else if meta.is_dir() {
                out.insert(rel.clone(), Node::Dir { mode });
                go(&item.path(), &rel, out);
            } else {
                let data = std::fs::read(item.path()).unwrap();
                out.insert(
                    rel,
                    Node::File {
                        mode,
                        hash: blake3::hash(&data).to_hex().to_string(),
                    },
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    go(root, "", &mut out);
    out
}

/// Polls `check` until it holds or the deadline passes.
pub async fn wait_until(what: &str, deadline: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The spider used by most tests: nested folders, an executable, text.
pub fn write_spider_v1(dir: &Path) {
    write_file(
        dir,
        "spider.toml",
        b"allowed_domains = [\"quotes.toscrape.com\"]\n",
        0o644,
    );
    write_file(
        dir,
        "crawlab_project/spiders/quotes.py",
        b"import scrapy\n\nclass QuotesSpider(scrapy.Spider):\n    name = 'quotes'\n",
        0o644,
    );
    write_file(dir, "crawlab_project/__init__.py", b"", 0o644);
    write_file(
        dir,
        "crawlab_project/settings.py",
        b"BOT_NAME = 'crawlab'\n",
        0o600,
    );
    write_file(
        dir,
        "bin/run.sh",
        b"#!/bin/sh\nexec scrapy crawl quotes\n",
        0o755,
    );
    write_file(dir, "data/old.csv", b"a,b\n1,2\n", 0o644);
    write_file(
        dir,
        "data/seeds/list.txt",
        b"https://quotes.toscrape.com/\n",
        0o644,
    );
}
