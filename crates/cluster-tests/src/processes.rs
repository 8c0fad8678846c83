//! The service binaries as child processes, and a cluster of them on the
//! real engines, isolated per test by a namespace and a fresh database.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crawler_core::tls::{Role, TlsArgs};

use crate::proxy::FaultProxy;

/// Where the engines are; overridable for machines that run them elsewhere.
#[derive(Debug, Clone)]
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
    // target/<profile>/deps/<test> -> target/<profile>/<name>, and a binary
    // of this crate runs from target/<profile> itself.
    let parent = exe.parent().expect("an executable lives in a folder");
    let dir = if parent.ends_with("deps") {
        parent.parent().expect("deps is inside target/<profile>")
    } else {
        parent
    };
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
        let mut command = Command::new(binary(bin));
        command.args(args);
        Self::spawn(name, command, expect_addr).await
    }

    /// Starts any command as a service (its stderr is its log).
    pub async fn spawn(name: &str, mut command: Command, expect_addr: bool) -> Self {
        let bin = command.get_program().to_string_lossy().into_owned();
        let mut child = command
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
        self.signal("TERM");
    }

    /// Freezes the service (SIGSTOP): its sockets stay open, it answers nothing.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Thaws a frozen service (SIGCONT).
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "cannot send SIG{name} to {}", self.name);
    }

    /// Waits (with a deadline) until the process has exited by itself.
    pub async fn wait_for_exit(&mut self) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} did not exit",
                self.name
            );
            tick.tick().await;
        }
    }

    /// The process's resident memory now (VmRSS), from /proc.
    pub fn rss_bytes(&self) -> u64 {
        self.status_kib("VmRSS:") * 1024
    }

    /// The most resident memory the process has had (VmHWM), from /proc.
    pub fn peak_rss_bytes(&self) -> u64 {
        self.status_kib("VmHWM:") * 1024
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the process is running");
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("/proc/<pid>/status has {field}"))
    }

    /// CPU time the process has used so far (user and system), from /proc.
    pub fn cpu_time(&self) -> Duration {
        cpu_time_of(&format!("/proc/{}/stat", self.child.id()))
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

    /// The first value it logged for `key` (as `key=value`), if any.
    pub fn logged_value(&self, key: &str) -> Option<String> {
        let prefix = format!("{key}=");
        let log = self.log.lock().expect("log lock");
        log.iter()
            .flat_map(|line| line.split_whitespace())
            .find_map(|word| word.strip_prefix(prefix.as_str()).map(str::to_string))
    }

    /// The address of its /healthz, /readyz and /metrics endpoint, which it
    /// logs as `admin=` (waiting, with a deadline, until it has).
    pub async fn admin_addr(&self) -> String {
        self.wait_for_log("admin=", 1).await;
        let log = self.log.lock().expect("log lock");
        log.iter()
            .flat_map(|line| line.split_whitespace())
            .find_map(|word| word.strip_prefix("admin="))
            .expect("the admin address was logged")
            .to_string()
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

/// How a test cluster is made up.
#[derive(Default)]
pub struct ClusterSpec {
    pub lock_servers: usize,
    pub masters: usize,
    pub workers: usize,
    pub lock_args: Vec<String>,
    pub master_args: Vec<String>,
    pub worker_args: Vec<String>,
    pub gateway_args: Vec<String>,
    /// Gateway processes; one unless asked.
    pub gateways: usize,
    /// Masters reach each lock server through a [`FaultProxy`].
    pub lock_proxies: bool,
    /// The gateway reaches RabbitMQ through a [`FaultProxy`].
    pub gateway_amqp_proxy: bool,
    /// Engines of the test's own (see [`crate::engines`]) instead of the
    /// machine's.
    pub engines: Option<EngineUrls>,
    /// gRPC without TLS, chosen explicitly; mutual TLS otherwise.
    pub grpc_plaintext: bool,
    /// Certificates made before the cluster (a file-sync started first);
    /// the cluster makes its own when none are given.
    pub certs: Option<Arc<ClusterCerts>>,
}

impl ClusterSpec {
    pub fn new(masters: usize, workers: usize) -> Self {
        Self {
            lock_servers: 1,
            masters,
            workers,
            gateways: 1,
            ..Self::default()
        }
    }

    /// Runs the cluster on these engines instead of the machine's.
    pub fn engines(mut self, engines: EngineUrls) -> Self {
        self.engines = Some(engines);
        self
    }

    pub fn lock_servers(mut self, n: usize) -> Self {
        self.lock_servers = n;
        self
    }

    pub fn lock_args(mut self, args: &[&str]) -> Self {
        self.lock_args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    pub fn master_args(mut self, args: &[&str]) -> Self {
        self.master_args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    pub fn worker_args(mut self, args: &[&str]) -> Self {
        self.worker_args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    pub fn gateways(mut self, n: usize) -> Self {
        self.gateways = n;
        self
    }

    pub fn gateway_args(mut self, args: &[&str]) -> Self {
        self.gateway_args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    pub fn lock_proxies(mut self) -> Self {
        self.lock_proxies = true;
        self
    }

    pub fn gateway_amqp_proxy(mut self) -> Self {
        self.gateway_amqp_proxy = true;
        self
    }

    /// The services use these certificates instead of new ones.
    pub fn with_certs(mut self, certs: Arc<ClusterCerts>) -> Self {
        self.certs = Some(certs);
        self
    }

    /// The services speak gRPC in plaintext (`--grpc-plaintext`).
    pub fn grpc_plaintext(mut self) -> Self {
        self.grpc_plaintext = true;
        self
    }

    pub async fn start(self) -> Cluster {
        Cluster::from_spec(self).await
    }
}

/// Separate lock-server, master, worker and gateway processes on the real engines.
pub struct Cluster {
    pub namespace: String,
    pub engines: EngineUrls,
    pub database: String,
    /// Lock-server replicas; the first one started leads.
    pub locks: Vec<Service>,
    pub masters: Vec<Service>,
    pub workers: Vec<Service>,
    pub gateway: Service,
    /// The gateways after the first, when the spec asked for more.
    pub other_gateways: Vec<Service>,
    /// One per lock server, when the spec asked for them.
    pub lock_proxies: Vec<FaultProxy>,
    pub gateway_amqp_proxy: Option<FaultProxy>,
    /// The certificates of the services, unless the spec chose plaintext.
    pub certs: Option<Arc<ClusterCerts>>,
    lock_args: Vec<String>,
    master_restart_args: Vec<Vec<String>>,
    gateway_restart_args: Vec<Vec<String>>,
    worker_args: Vec<String>,
}

impl Cluster {
    /// A cluster of one lock server and the given masters and workers.
    pub async fn start(
        masters: usize,
        workers: usize,
        master_args: &[&str],
        worker_args: &[&str],
    ) -> Self {
        ClusterSpec::new(masters, workers)
            .master_args(master_args)
            .worker_args(worker_args)
            .start()
            .await
    }

    async fn from_spec(spec: ClusterSpec) -> Self {
        let engines = spec.engines.clone().unwrap_or_else(EngineUrls::from_env);
        let namespace = format!("test-{}", uuid::Uuid::new_v4().simple());
        let (store, database) = crawler_adapters::PgStore::connect_fresh(&engines.postgres_server)
            .await
            .expect("create a fresh database (is Postgres running?)");
        store.close().await;
        let database_url = format!("{}/{database}", engines.postgres_server);
        let s = |v: &str| v.to_string();
        let certs = match (spec.grpc_plaintext, &spec.certs) {
            (true, _) => None,
            (false, Some(certs)) => Some(certs.clone()),
            (false, None) => Some(Arc::new(ClusterCerts::make().await)),
        };
        let tls = |role: Role| tls_args(certs.as_deref(), role);
        let mut lock_args = tls(Role::LockServer);
        lock_args.extend(spec.lock_args.iter().cloned());

        let mut locks = Vec::new();
        for i in 0..spec.lock_servers.max(1) {
            locks.push(start_lock(i, "127.0.0.1:0", &database_url, &lock_args).await);
        }
        let mut lock_proxies = Vec::new();
        let mut lock_urls = Vec::new();
        for lock in &locks {
            if spec.lock_proxies {
                let proxy = FaultProxy::start(lock.addr().parse().expect("a socket address")).await;
                lock_urls.push(format!("http://{}", proxy.addr()));
                lock_proxies.push(proxy);
            } else {
                lock_urls.push(format!("http://{}", lock.addr()));
            }
        }
        let master_args = |i: usize, listen: &str| {
            let mut args = vec![
                s("--listen"),
                s(listen),
                s("--lock-server"),
                lock_urls.join(","),
                s("--amqp-url"),
                engines.amqp.clone(),
                s("--redis-url"),
                engines.redis.clone(),
                s("--namespace"),
                namespace.clone(),
                s("--master-id"),
                format!("master-{i}"),
            ];
            args.extend(tls(Role::Master));
            args.extend(spec.master_args.iter().cloned());
            args
        };
        let mut master_services = Vec::new();
        for i in 0..spec.masters {
            let args = master_args(i, "127.0.0.1:0");
            master_services
                .push(Service::start(&format!("master-{i}"), "master", &args, true).await);
        }
        // A restarted master keeps its address (workers know masters by it).
        let master_restart_args: Vec<Vec<String>> = master_services
            .iter()
            .enumerate()
            .map(|(i, m)| master_args(i, m.addr()))
            .collect();
        let master_urls: Vec<String> = master_services
            .iter()
            .map(|m| format!("http://{}", m.addr()))
            .collect();
        // Workers share the cluster's host gate, as in a deployment.
        let mut all_worker_args = vec![
            s("--host-gate"),
            engines.redis.clone(),
            s("--namespace"),
            namespace.clone(),
        ];
        all_worker_args.extend(tls(Role::Worker));
        all_worker_args.extend(spec.worker_args.iter().cloned());
        let worker_args: Vec<&str> = all_worker_args.iter().map(String::as_str).collect();
        let mut worker_services = Vec::new();
        for i in 0..spec.workers {
            worker_services.push(start_worker(i, &master_urls, &worker_args).await);
        }
        let gateway_amqp_proxy = match spec.gateway_amqp_proxy {
            true => Some(FaultProxy::start(amqp_socket(&engines.amqp)).await),
            false => None,
        };
        let gateway_amqp = match &gateway_amqp_proxy {
            Some(proxy) => via(&engines.amqp, proxy.addr()),
            None => engines.amqp.clone(),
        };
        let mut gateway_args = vec![
            s("--listen"),
            s("127.0.0.1:0"),
            s("--amqp-url"),
            gateway_amqp,
            s("--redis-url"),
            engines.redis.clone(),
            s("--database-url"),
            database_url,
            s("--namespace"),
            namespace.clone(),
            s("--allow-network"),
            s("127.0.0.0/8"),
        ];
        // Clients need no token unless the test asks for token auth.
        if !spec.gateway_args.iter().any(|a| a == "--auth") {
            gateway_args.extend([s("--auth"), s("none")]);
        }
        gateway_args.extend(spec.gateway_args.iter().cloned());
        let gateway = Service::start("ws-gateway", "ws-gateway", &gateway_args, true).await;
        let mut other_gateways = Vec::new();
        for i in 1..spec.gateways.max(1) {
            let name = format!("ws-gateway-{i}");
            other_gateways.push(Service::start(&name, "ws-gateway", &gateway_args, true).await);
        }
        // A restarted gateway keeps its address (clients know gateways by it).
        let gateway_restart_args = std::iter::once(&gateway)
            .chain(&other_gateways)
            .map(|g| {
                let mut args = gateway_args.clone();
                args[1] = g.addr().to_string();
                args
            })
            .collect();
        let cluster = Self {
            namespace,
            engines,
            database,
            locks,
            masters: master_services,
            workers: worker_services,
            gateway,
            other_gateways,
            lock_proxies,
            gateway_amqp_proxy,
            certs,
            lock_args,
            master_restart_args,
            gateway_restart_args,
            worker_args: all_worker_args,
        };
        cluster.wait_until_ready().await;
        cluster
    }

    /// Starts master `i` again on its old address, after it was killed or
    /// stopped, and waits until every worker has registered with it.
    pub async fn restart_master(&mut self, i: usize) {
        self.masters[i].kill();
        let name = format!("master-{i}");
        self.masters[i] = Service::start(&name, "master", &self.master_restart_args[i], true).await;
        self.masters[i]
            .wait_for_log("worker connected", self.workers.len())
            .await;
    }

    /// Kills gateway `i` (0 is `gateway`, then `other_gateways`) and starts
    /// it again on its old address.
    pub async fn restart_gateway(&mut self, i: usize) {
        let name = if i == 0 {
            "ws-gateway".to_string()
        } else {
            format!("ws-gateway-{i}")
        };
        let slot = if i == 0 {
            &mut self.gateway
        } else {
            &mut self.other_gateways[i - 1]
        };
        slot.kill();
        *slot = Service::start(&name, "ws-gateway", &self.gateway_restart_args[i], true).await;
    }

    /// Kills worker `i` and starts it again, of every master.
    pub async fn restart_worker(&mut self, i: usize) {
        self.workers[i].kill();
        let master_urls: Vec<String> = self
            .masters
            .iter()
            .map(|m| format!("http://{}", m.addr()))
            .collect();
        let args: Vec<&str> = self.worker_args.iter().map(String::as_str).collect();
        self.workers[i] = start_worker(i, &master_urls, &args).await;
    }

    /// Starts one more worker of every master, on the cluster's host gate.
    pub async fn add_worker(&mut self, worker_args: &[&str]) {
        let master_urls: Vec<String> = self
            .masters
            .iter()
            .map(|m| format!("http://{}", m.addr()))
            .collect();
        let redis = self.engines.redis.clone();
        let tls = self.tls_args(Role::Worker);
        let mut args = vec!["--host-gate", &redis, "--namespace", &self.namespace];
        args.extend(tls.iter().map(String::as_str));
        args.extend(worker_args);
        let worker = start_worker(self.workers.len() + 100, &master_urls, &args).await;
        self.workers.push(worker);
    }

    /// Starts lock server `i` again on its old address, after it was killed.
    pub async fn restart_lock(&mut self, i: usize) {
        let addr = self.locks[i].addr().to_string();
        self.locks[i].kill();
        let database_url = self.database_url();
        self.locks[i] = start_lock(i, &addr, &database_url, &self.lock_args).await;
    }

    /// The flags that give a service of `role` the cluster's certificate,
    /// or `--grpc-plaintext` when the cluster runs without TLS.
    pub fn tls_args(&self, role: Role) -> Vec<String> {
        tls_args(self.certs.as_deref(), role)
    }

    pub fn database_url(&self) -> String {
        format!("{}/{}", self.engines.postgres_server, self.database)
    }

    /// Runs `crawlctl token ARGS` on this cluster's store, as an operator
    /// would, and returns its stdout once it succeeded.
    pub async fn token_command(&self, args: &[&str]) -> String {
        let database_url = self.database_url();
        let mut all = vec!["token", "--database-url", &database_url];
        all.extend(args);
        run_crawlctl(&all, Duration::from_secs(60)).await
    }

    /// A new API token of `tenant` (for a gateway run with `--auth token`).
    pub async fn new_token(&self, name: &str, tenant: &str) -> String {
        self.token_command(&["create", "--name", name, "--tenant", tenant])
            .await
    }

    /// The index of the master whose log holds `needle`, waiting (with a
    /// deadline) until one does.
    pub async fn master_that_logged(&self, needle: &str) -> usize {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            if let Some(i) = self.masters.iter().position(|m| m.count_log(needle) > 0) {
                return i;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no master logged `{needle}`"
            );
            tick.tick().await;
        }
    }

    /// Ready: every worker registered with every master, the gateway subscribed.
    async fn wait_until_ready(&self) {
        for master in &self.masters {
            master
                .wait_for_log("worker connected", self.workers.len())
                .await;
        }
        for gateway in std::iter::once(&self.gateway).chain(&self.other_gateways) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            while http_get(gateway.addr(), "/readyz").await.0 != 200 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{} never became ready",
                    gateway.name
                );
                tick.tick().await;
            }
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.gateway.addr())
    }

    /// A counter from the gateway's `/metrics`.
    pub async fn gateway_metric(&self, name: &str) -> u64 {
        let (_, body) = http_get(self.gateway.addr(), "/metrics").await;
        metric_value(&body, name).unwrap_or_else(|| panic!("no metric {name} in {body}")) as u64
    }

    /// The cluster's queue, as a client of RabbitMQ in the same namespace.
    pub async fn queue(&self) -> crawler_adapters::RabbitQueue {
        crawler_adapters::RabbitQueue::connect(
            &self.engines.amqp,
            None,
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
            locks,
            masters,
            workers,
            gateway,
            other_gateways,
            lock_proxies,
            gateway_amqp_proxy,
            certs: _,
            lock_args: _,
            master_restart_args: _,
            gateway_restart_args: _,
            worker_args: _,
        } = self;
        drop((gateway, other_gateways, workers, masters, locks));
        drop((lock_proxies, gateway_amqp_proxy));
        if let Ok(queue) = crawler_adapters::RabbitQueue::connect(
            &engines.amqp,
            None,
            &namespace,
            Default::default(),
        )
        .await
        {
            let _ = queue.delete_namespace().await;
            queue.close_connection().await;
        }
        let _ = crawler_adapters::PgStore::drop_database(&engines.postgres_server, &database).await;
    }
}

async fn start_lock(i: usize, listen: &str, database_url: &str, extra: &[String]) -> Service {
    let mut args: Vec<String> = [
        "--listen",
        listen,
        "--database-url",
        database_url,
        "--id",
        &format!("lock-{i}"),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(extra.iter().cloned());
    Service::start(&format!("lock-{i}"), "lock-server", &args, true).await
}

/// The cluster's CA and a certificate per role, made by `crawlctl certs`
/// as an operator would, in a folder that lives as long as the cluster.
pub struct ClusterCerts {
    dir: tempfile::TempDir,
}

impl ClusterCerts {
    pub async fn make() -> Self {
        let dir = tempfile::tempdir().expect("a folder for the certificates");
        let out = dir.path().display().to_string();
        run_crawlctl(&["certs", "--out", &out], Duration::from_secs(30)).await;
        Self { dir }
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The flags that give a service of `role` its certificate.
    pub fn args(&self, role: Role) -> Vec<String> {
        let files = TlsArgs::from_dir(self.dir(), role);
        [
            ("--tls-ca", files.ca),
            ("--tls-cert", files.cert),
            ("--tls-key", files.key),
        ]
        .into_iter()
        .flat_map(|(flag, file)| {
            let file = file.expect("from_dir names every file");
            [flag.to_string(), file.display().to_string()]
        })
        .collect()
    }

    /// The TLS settings of a client of `role`.
    pub fn tls(&self, role: Role) -> crawler_core::tls::GrpcSecurity {
        TlsArgs::from_dir(self.dir(), role)
            .load()
            .expect("the certificates load")
    }
}

/// Runs `crawlctl ARGS` within `deadline` and returns its stdout, once it
/// succeeded.
pub async fn run_crawlctl(args: &[&str], deadline: Duration) -> String {
    let run = tokio::process::Command::new(binary("crawlctl"))
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(deadline, run)
        .await
        .expect("crawlctl ended")
        .expect("run crawlctl");
    assert!(
        out.status.success(),
        "crawlctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("UTF-8")
        .trim()
        .to_string()
}

/// The flags of a service of `role`: its certificate, or plaintext.
fn tls_args(certs: Option<&ClusterCerts>, role: Role) -> Vec<String> {
    match certs {
        None => vec!["--grpc-plaintext".to_string()],
        Some(certs) => certs.args(role),
    }
}

/// The host and port of an `amqp://` URL.
fn amqp_socket(amqp_url: &str) -> std::net::SocketAddr {
    let url = url::Url::parse(amqp_url).expect("a valid AMQP URL");
    let host = url.host_str().expect("an AMQP host");
    let port = url.port().unwrap_or(5672);
    std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .expect("resolve the AMQP host")
        .next()
        .expect("an address")
}

/// `amqp_url` pointed at `addr` instead of its own host and port.
fn via(amqp_url: &str, addr: std::net::SocketAddr) -> String {
    let mut url = url::Url::parse(amqp_url).expect("a valid AMQP URL");
    url.set_host(Some(&addr.ip().to_string()))
        .expect("an AMQP URL has a host");
    url.set_port(Some(addr.port()))
        .expect("an AMQP URL has a port");
    url.to_string()
}

/// A worker of the given masters (their URLs), with `worker_args` besides.
pub async fn start_worker(i: usize, master_urls: &[String], worker_args: &[&str]) -> Service {
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

/// User plus system CPU time of a process, from its `/proc/<pid>/stat`
/// (fields 14 and 15, in clock ticks of 1/100 s on Linux).
pub fn cpu_time_of(stat_path: &str) -> Duration {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    // The command name may hold spaces; fields are counted after its `)`.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    Duration::from_millis(fields.iter().sum::<u64>() * 10)
}

/// The value of the sample `name` (with its labels, e.g.
/// `crawler_worker_pages_fetched_total{status="2xx"}`) in Prometheus text.
pub fn metric_value(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
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
