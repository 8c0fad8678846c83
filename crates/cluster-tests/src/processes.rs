//! The service binaries as child processes, and a cluster of them on the
//! real engines, isolated per test by a namespace and a fresh database.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

/// Where the engines are; overridable for machines that run them elsewhere.
pub struct EngineUrls {
    pub amqp: String,
    pub redis: String,
    /// The Postgres server, without a database name.
    pub postgres_server: String,
}

impl EngineUrls {
    pub fn from_env() -> Self {
        let var =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_string());
        Self {
            amqp: var(
                "CRAWLER_TEST_AMQP_URL",
                "amqp://guest:guest@127.0.0.1:5672/%2f",
            ),
            redis: var("CRAWLER_TEST_REDIS_URL", "redis://127.0.0.1:6379/"),
            postgres_server: var(
                "CRAWLER_TEST_DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432",
            ),
        }
    }
}

/// A built binary of this workspace, next to the test executable's folder.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("tests run from target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace --bins` before these tests (scripts/test does)",
        path.display()
    );
    path
}

/// A running service. Killed when dropped.
pub struct Service {
    pub name: String,
    child: Child,
    /// The address it logged as `addr=...` when it started listening.
    pub addr: Option<String>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Service {
    /// Starts `bin` with `args` and, when `expect_addr`, waits (with a
    /// deadline) until it logs the address it bound.
    pub async fn start(name: &str, bin: &str, args: &[String], expect_addr: bool) -> Self {
        let mut child = Command::new(binary(bin))
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("RUST_BACKTRACE")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = oneshot::channel();
        let (lines, label) = (log.clone(), name.to_string());
        std::thread::spawn(move || {
            let mut addr_tx = Some(addr_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{label}] {line}");
                if let Some(addr) = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    && let Some(tx) = addr_tx.take()
                {
                    let _ = tx.send(addr.to_string());
                }
                lines.lock().expect("log lock").push(line);
            }
        });
        let addr = if expect_addr {
            match tokio::time::timeout(Duration::from_secs(30), addr_rx).await {
                Ok(Ok(addr)) => Some(addr),
                _ => panic!(
                    "{name} did not report a listening address; its log: {:?}",
                    log.lock().unwrap()
                ),
            }
        } else {
            None
        };
        Self {
            name: name.to_string(),
            child,
            addr,
            log,
        }
    }

    pub fn addr(&self) -> &str {
        self.addr.as_deref().expect("this service listens")
    }

    /// Kills the service at once (SIGKILL) and waits until it is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks the service to stop gracefully (SIGTERM).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "cannot signal {}", self.name);
    }

    /// Log lines containing `needle`, so far.
    pub fn count_log(&self, needle: &str) -> usize {
        self.log
            .lock()
            .expect("log lock")
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until the log holds `needle` at least `times` times.
    pub async fn wait_for_log(&self, needle: &str, times: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        while self.count_log(needle) < times {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never logged `{needle}` {times} times",
                self.name
            );
            tick.tick().await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Separate lock-server, master, worker and gateway processes on the real engines.
pub struct Cluster {
    pub namespace: String,
    pub engines: EngineUrls,
    pub database: String,
    pub lock: Service,
    pub masters: Vec<Service>,
    pub workers: Vec<Service>,
    pub gateway: Service,
}

impl Cluster {
    pub async fn start(
        masters: usize,
        workers: usize,
        master_args: &[&str],
        worker_args: &[&str],
    ) -> Self {
        let engines = EngineUrls::from_env();
        let namespace = format!("test-{}", uuid::Uuid::new_v4().simple());
        let (store, database) = crawler_adapters::PgStore::connect_fresh(&engines.postgres_server)
            .await
            .expect("create a fresh database (is Postgres running?)");
        store.close().await;
        let database_url = format!("{}/{database}", engines.postgres_server);
        let s = |v: &str| v.to_string();

        let lock = Service::start(
            "lock-server",
            "lock-server",
            &[
                s("--listen"),
                s("127.0.0.1:0"),
                s("--database-url"),
                database_url.clone(),
            ],
            true,
        )
        .await;
        let mut master_services = Vec::new();
        for i in 0..masters {
            let mut args = vec![
                s("--listen"),
                s("127.0.0.1:0"),
                s("--lock-server"),
                format!("http://{}", lock.addr()),
                s("--amqp-url"),
                engines.amqp.clone(),
                s("--redis-url"),
                engines.redis.clone(),
                s("--namespace"),
                namespace.clone(),
                s("--master-id"),
                format!("master-{i}"),
            ];
            args.extend(master_args.iter().map(|a| a.to_string()));
            master_services
                .push(Service::start(&format!("master-{i}"), "master", &args, true).await);
        }
        let master_urls: Vec<String> = master_services
            .iter()
            .map(|m| format!("http://{}", m.addr()))
            .collect();
        let mut worker_services = Vec::new();
        for i in 0..workers {
            worker_services.push(start_worker(i, &master_urls, worker_args).await);
        }
        let gateway = Service::start(
            "ws-gateway",
            "ws-gateway",
            &[
                s("--listen"),
                s("127.0.0.1:0"),
                s("--amqp-url"),
                engines.amqp.clone(),
                s("--redis-url"),
                engines.redis.clone(),
                s("--database-url"),
                database_url,
                s("--namespace"),
                namespace.clone(),
                s("--allow-network"),
                s("127.0.0.0/8"),
            ],
            true,
        )
        .await;
        let cluster = Self {
            namespace,
            engines,
            database,
            lock,
            masters: master_services,
            workers: worker_services,
            gateway,
        };
        cluster.wait_until_ready().await;
        cluster
    }

    /// Starts one more worker of every master.
    pub async fn add_worker(&mut self, worker_args: &[&str]) {
        let master_urls: Vec<String> = self
            .masters
            .iter()
            .map(|m| format!("http://{}", m.addr()))
            .collect();
        let worker = start_worker(self.workers.len() + 100, &master_urls, worker_args).await;
        self.workers.push(worker);
    }

    /// Ready: every worker registered with every master, the gateway subscribed.
    async fn wait_until_ready(&self) {
        for master in &self.masters {
            master
                .wait_for_log("worker connected", self.workers.len())
                .await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        while http_get(self.gateway.addr(), "/readyz").await.0 != 200 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the gateway never became ready"
            );
            tick.tick().await;
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.gateway.addr())
    }

    /// A counter from the gateway's `/metrics`.
    pub async fn gateway_metric(&self, name: &str) -> u64 {
        let (_, body) = http_get(self.gateway.addr(), "/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in {body}"))
    }

    /// The cluster's queue, as a client of RabbitMQ in the same namespace.
    pub async fn queue(&self) -> crawler_adapters::RabbitQueue {
        crawler_adapters::RabbitQueue::connect(
            &self.engines.amqp,
            &self.namespace,
            Default::default(),
        )
        .await
        .expect("connect to RabbitMQ")
    }

    /// Removes what the test left on the engines.
    pub async fn cleanup(self) {
        let Self {
            namespace,
            engines,
            database,
            lock,
            masters,
            workers,
            gateway,
        } = self;
        drop((gateway, workers, masters, lock));
        if let Ok(queue) =
            crawler_adapters::RabbitQueue::connect(&engines.amqp, &namespace, Default::default())
                .await
        {
            let _ = queue.delete_namespace().await;
            queue.close_connection().await;
        }
        let _ = crawler_adapters::PgStore::drop_database(&engines.postgres_server, &database).await;
    }
}

async fn start_worker(i: usize, master_urls: &[String], worker_args: &[&str]) -> Service {
    let mut args: Vec<String> = [
        "--master",
        &master_urls.join(","),
        "--allow-network",
        "127.0.0.0/8",
        "--worker-id",
        &format!("worker-{i}"),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(worker_args.iter().map(|a| a.to_string()));
    Service::start(&format!("worker-{i}"), "worker", &args, false).await
}

/// A minimal HTTP GET, enough for health and metrics endpoints.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut raw = String::new();
    let _ = stream.read_to_string(&mut raw).await;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
