//! No secret reaches a log line: a cluster runs with a password in its
//! Postgres and Redis URLs, API tokens (a good one and a wrong one) and
//! private keys, and no service's log holds any of them. A service also
//! takes an engine's URL from a file, as a mounted secret gives it.

use cluster_tests::processes::{ClusterSpec, EngineUrls, Service, binary};
use cluster_tests::site::{SitePlan, TestSite};
use cluster_tests::ws::WsClient;
use crawler_core::tls::Role;

/// A Redis user of this test's own, with a password: other tests keep
/// using the default user.
async fn redis_user(base: &str, user: &str, password: &str) -> String {
    let client = redis::Client::open(base).expect("a Redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to Redis");
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(user)
        .arg("on")
        .arg(format!(">{password}"))
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query_async(&mut conn)
        .await
        .expect("make a Redis user");
    let mut url = url::Url::parse(base).expect("a Redis URL");
    url.set_username(user).unwrap();
    url.set_password(Some(password)).unwrap();
    url.to_string()
}

async fn drop_redis_user(base: &str, user: &str) {
    let client = redis::Client::open(base).expect("a Redis URL");
    if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
        let _: Result<(), _> = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(user)
            .query_async(&mut conn)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_service_logs_a_password_a_token_or_a_key() {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let base = EngineUrls::from_env();
    let redis_password = format!("redis-pw-{run}");
    let redis_user_name = format!("crawler-test-{}", &run[..8]);
    let redis = redis_user(&base.redis, &redis_user_name, &redis_password).await;
    // The machine's Postgres trusts local connections: any password is
    // accepted, and must still be kept out of the logs.
    let pg_password = format!("pg-pw-{run}");
    let mut postgres = url::Url::parse(&base.postgres_server).expect("a Postgres URL");
    postgres.set_password(Some(&pg_password)).unwrap();
    let engines = EngineUrls {
        amqp: base.amqp.clone(),
        redis,
        postgres_server: postgres.to_string().trim_end_matches('/').to_string(),
    };
    let cluster = ClusterSpec::new(1, 1)
        .engines(engines)
        .gateway_args(&["--auth", "token"])
        .start()
        .await;
    let token = cluster.new_token("logs", "logs").await;
    let wrong = format!("crawl_wrong{run}");

    let site = TestSite::serve(SitePlan::tree(&[2])).await;
    let mut client = WsClient::connect_with_token(&cluster.ws_url(), &token).await;
    client.submit("j", &site.url("/"), 1).await;
    client.result("j").await;
    let (status, _) = WsClient::refused_upgrade(&cluster.ws_url(), Some(&wrong)).await;
    assert_eq!(status, 401);
    let (status, _) =
        WsClient::refused_upgrade(&format!("{}?token={wrong}", cluster.ws_url()), None).await;
    assert_eq!(status, 401);

    // file-sync too, on the cluster's certificates.
    let certs = cluster.certs.clone().expect("mutual TLS");
    let spiders = tempfile::tempdir().unwrap();
    let mut args = vec![
        "--listen".to_string(),
        "127.0.0.1:0".into(),
        "--root".into(),
        spiders.path().display().to_string(),
    ];
    args.extend(certs.args(Role::FileSync));
    let file_sync = Service::start("file-sync", "file-sync", &args, true).await;
    let operator = file_sync::Remote::new(
        format!("http://{}", file_sync.addr()),
        certs.tls(Role::Operator),
    );
    assert!(
        file_sync::client::list_spiders(&operator)
            .await
            .unwrap()
            .is_empty()
    );

    // The body of every private key, line by line.
    let mut key_lines = Vec::new();
    for role in ["master", "worker", "lock-server", "file-sync", "operator"] {
        let key = std::fs::read_to_string(certs.dir().join(format!("{role}.key"))).unwrap();
        key_lines.extend(
            key.lines()
                .filter(|l| !l.starts_with("-----"))
                .map(str::to_string),
        );
    }
    assert!(!key_lines.is_empty());

    let mut services = vec![&cluster.gateway, &file_sync];
    services.extend(&cluster.locks);
    services.extend(&cluster.masters);
    services.extend(&cluster.workers);
    let mut secrets = vec![redis_password.clone(), pg_password, token, wrong];
    secrets.extend(key_lines);
    for service in services {
        assert!(service.count_log("") > 0, "a service logged nothing");
        for secret in &secrets {
            assert_eq!(
                service.count_log(secret),
                0,
                "a service logged a secret ({}…)",
                &secret[..6]
            );
        }
    }
    cluster.cleanup().await;
    drop_redis_user(&base.redis, &redis_user_name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_takes_its_database_url_from_a_mounted_file() {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let base = EngineUrls::from_env();
    let password = format!("pg-file-pw-{run}");
    let database = format!("crawler_secret_file_{}", &run[..12]);
    let mut url = url::Url::parse(&base.postgres_server).expect("a Postgres URL");
    url.set_password(Some(&password)).unwrap();
    url.set_path(&database);
    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("database-url");
    // As a Kubernetes Secret mounts it: the value and a newline.
    std::fs::write(&file, format!("{url}\n")).unwrap();

    let args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--grpc-plaintext",
        "--database-url-file",
        &file.display().to_string(),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    // It listens only once its store answered, on the URL of the file.
    let lock = Service::start("lock-server", "lock-server", &args, true).await;
    assert_eq!(lock.count_log(&password), 0, "the password was logged");
    drop(lock);
    crawler_adapters::PgStore::drop_database(&base.postgres_server, &database)
        .await
        .expect("drop the database");

    // A file that is not there: a clear refusal naming it.
    let missing = secrets.path().join("nothing-here");
    let output = std::process::Command::new(binary("lock-server"))
        .args(["--grpc-plaintext", "--database-url-file"])
        .arg(&missing)
        .output()
        .expect("run the lock server");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nothing-here"), "{stderr}");
}
