//! Private instances of the engines, for the tests that stop and restart
//! them: a PostgreSQL cluster made with `initdb`, a `redis-server`, and a
//! RabbitMQ node of its own name, each on free ports of their own, so the
//! tests running beside them keep the machine's engines. Each is stopped
//! when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

/// A free TCP port on loopback (free when asked; the engine binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits (with a deadline) until something listens on `port`, or stops.
async fn until_listening(port: u16, listening: bool, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let up = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok();
        if up == listening {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} on port {port} never {}",
            if listening { "listened" } else { "stopped" }
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn run(command: &mut Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A `redis-server` of its own; it keeps nothing on disk, so a restart
/// starts empty, as a cache that lost its memory.
pub struct PrivateRedis {
    port: u16,
    child: Option<Child>,
    /// Serves TLS only, with these files (certificate, key, CA).
    tls: Option<[PathBuf; 3]>,
}

impl PrivateRedis {
    pub async fn start() -> Self {
        let mut redis = Self {
            port: free_port(),
            child: None,
            tls: None,
        };
        redis.up().await;
        redis
    }

    /// A server that takes TLS connections only, with this certificate
    /// and key (PEM); clients show no certificate.
    pub async fn start_tls(
        cert: &std::path::Path,
        key: &std::path::Path,
        ca: &std::path::Path,
    ) -> Self {
        let mut redis = Self {
            port: free_port(),
            child: None,
            tls: Some([cert.to_path_buf(), key.to_path_buf(), ca.to_path_buf()]),
        };
        redis.up().await;
        redis
    }

    pub fn url(&self) -> String {
        match self.tls {
            None => format!("redis://127.0.0.1:{}/", self.port),
            Some(_) => format!("rediss://127.0.0.1:{}/", self.port),
        }
    }

    pub async fn up(&mut self) {
        let port = self.port.to_string();
        let listen: Vec<String> = match &self.tls {
            None => vec!["--port".into(), port],
            Some([cert, key, ca]) => vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port,
                "--tls-cert-file".into(),
                cert.display().to_string(),
                "--tls-key-file".into(),
                key.display().to_string(),
                "--tls-ca-cert-file".into(),
                ca.display().to_string(),
                "--tls-auth-clients".into(),
                "no".into(),
            ],
        };
        let child = Command::new("redis-server")
            .args(&listen)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        until_listening(self.port, true, "redis").await;
    }

    /// Kills it (SIGKILL): what it held is gone.
    pub async fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        until_listening(self.port, false, "redis").await;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A PostgreSQL cluster of its own, made with `initdb` in a temporary
/// folder, run as the `postgres` user (PostgreSQL refuses to run as root).
pub struct PrivatePostgres {
    dir: TempDir,
    port: u16,
    bin: PathBuf,
    /// Serves TLS with the certificate and key copied into its folder.
    tls: bool,
}

/// Runs `command` as the `postgres` user when this process is root.
fn as_postgres(bin: &std::path::Path, program: &str) -> Command {
    let program = bin.join(program);
    if Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
    {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

impl PrivatePostgres {
    pub async fn start() -> Self {
        Self::make(None).await
    }

    /// A cluster that serves TCP clients over TLS only, with this
    /// certificate and key (PEM): a plaintext connection is refused.
    pub async fn start_with_tls(cert: &std::path::Path, key: &std::path::Path) -> Self {
        Self::make(Some((cert, key))).await
    }

    async fn make(tls: Option<(&std::path::Path, &std::path::Path)>) -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|versions| versions.filter_map(Result::ok).map(|e| e.path()).max())
            .map(|version| version.join("bin"))
            .filter(|bin| bin.join("initdb").exists())
            .expect("PostgreSQL's server programs are installed under /usr/lib/postgresql");
        let dir = tempfile::Builder::new()
            .prefix("crawler-pg-")
            .tempdir()
            .expect("a temporary folder");
        run(
            Command::new("chown").args(["postgres:postgres", &dir.path().display().to_string()]),
            "chown the cluster folder",
        );
        let data = dir.path().join("data");
        run(
            as_postgres(&bin, "initdb")
                .args(["-D", &data.display().to_string(), "-U", "postgres"])
                .args(["--auth=trust", "--no-sync", "-E", "UTF8"]),
            "initdb",
        );
        if let Some((cert, key)) = tls {
            let hba = data.join("pg_hba.conf");
            std::fs::write(
                &hba,
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            )
            .expect("write pg_hba.conf");
            for (from, name) in [(cert, "server.crt"), (key, "server.key")] {
                let to = dir.path().join(name);
                std::fs::copy(from, &to).expect("copy the server's certificate and key");
                run(
                    Command::new("chown").args(["postgres:postgres", &to.display().to_string()]),
                    "chown the certificate",
                );
                run(
                    Command::new("chmod").args(["600", &to.display().to_string()]),
                    "chmod the certificate",
                );
            }
        }
        let postgres = Self {
            dir,
            port: free_port(),
            bin,
            tls: tls.is_some(),
        };
        postgres.up().await;
        postgres
    }

    /// The server's URL, without a database.
    pub fn server_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    pub async fn up(&self) {
        let data = self.dir.path().join("data");
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        if self.tls {
            let dir = self.dir.path().display();
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key"
            ));
        }
        run(
            as_postgres(&self.bin, "pg_ctl")
                .args([
                    "-D",
                    &data.display().to_string(),
                    "-o",
                    &options,
                    "-w",
                    "start",
                ])
                .args(["-l", &self.dir.path().join("log").display().to_string()]),
            "pg_ctl start",
        );
        until_listening(self.port, true, "postgres").await;
    }

    /// Stops it at once (`immediate`: no checkpoint, as a crash), keeping its data.
    pub async fn down(&self) {
        let data = self.dir.path().join("data");
        run(
            as_postgres(&self.bin, "pg_ctl").args([
                "-D",
                &data.display().to_string(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ]),
            "pg_ctl stop",
        );
        until_listening(self.port, false, "postgres").await;
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = as_postgres(&self.bin, "pg_ctl")
            .args(["-D", &data.display().to_string(), "-m", "immediate", "stop"])
            .output();
    }
}

/// A RabbitMQ node of its own name, ports and data folder. Its data lives
/// across a restart, as a broker's does.
pub struct PrivateRabbit {
    dir: TempDir,
    node: String,
    port: u16,
    child: Option<Child>,
    /// With TLS, `port` takes TLS and plain AMQP moves to this port.
    plain_port: Option<u16>,
}

impl PrivateRabbit {
    pub async fn start() -> Self {
        Self::make(None).await
    }

    /// A node whose AMQP port takes TLS, with this certificate and key
    /// (PEM); clients show no certificate.
    pub async fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Self {
        Self::make(Some((cert, key))).await
    }

    async fn make(tls: Option<(&std::path::Path, &std::path::Path)>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("crawler-rabbit-")
            .tempdir()
            .expect("a temporary folder");
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("make the node's folders");
        }
        std::fs::write(dir.path().join("enabled_plugins"), "").expect("no plugins");
        let port = free_port();
        let plain_port = tls.map(|(cert, key)| {
            for (from, name) in [(cert, "server.pem"), (key, "server.key")] {
                std::fs::copy(from, dir.path().join(name)).expect("copy the broker's certificate");
            }
            let base = dir.path().display();
            let conf = format!(
                "listeners.ssl.default = {port}\n\
                 ssl_options.certfile = {base}/server.pem\n\
                 ssl_options.keyfile = {base}/server.key\n\
                 ssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n"
            );
            std::fs::write(dir.path().join("tls.conf"), conf).expect("write the node's config");
            free_port()
        });
        // As root, rabbitmq-server runs the node as the rabbitmq user.
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq", &dir.path().display().to_string()])
            .output();
        let mut rabbit = Self {
            node: format!("crawler-test-{port}@localhost"),
            dir,
            port,
            child: None,
            plain_port,
        };
        rabbit.up().await;
        rabbit
    }

    pub fn url(&self) -> String {
        match self.plain_port {
            None => format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port),
            Some(_) => format!("amqps://guest:guest@127.0.0.1:{}/%2f", self.port),
        }
    }

    pub async fn up(&mut self) {
        let base = self.dir.path();
        let child = Command::new("rabbitmq-server")
            .env("RABBITMQ_NODENAME", &self.node)
            .env(
                "RABBITMQ_NODE_PORT",
                self.plain_port.unwrap_or(self.port).to_string(),
            )
            .env("RABBITMQ_DIST_PORT", (self.port + 10_000).to_string())
            .env("RABBITMQ_MNESIA_BASE", base.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", base.join("log"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                base.join("enabled_plugins"),
            )
            .env(
                "RABBITMQ_CONFIG_FILE",
                base.join(match self.plain_port {
                    None => "no-config",
                    Some(_) => "tls.conf",
                }),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rabbitmq-server is installed");
        self.child = Some(child);
        until_listening(self.port, true, "rabbitmq").await;
    }

    /// Stops the node (gracefully, as a restart does); its data stays.
    pub async fn down(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-n", &self.node, "stop"])
            .output();
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        until_listening(self.port, false, "rabbitmq").await;
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = Command::new("rabbitmqctl")
                .args(["-n", &self.node, "stop"])
                .output();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
