//! The engines over TLS, each an instance of the test's own that takes TLS
//! connections only, with a certificate of a private CA. The job store
//! connects when its URL asks for `sslmode=verify-full` with that CA as
//! `sslrootcert`; the cache and the host gate connect to `rediss://`, and
//! the queue to `amqps://`, given the CA (`--redis-ca`, `--amqp-ca`).
//! Without TLS, or trusting another CA, they are refused.

use std::time::Duration;

use cluster_tests::engines::{PrivatePostgres, PrivateRabbit, PrivateRedis};
use cluster_tests::processes::ClusterCerts;
use crawler_adapters::{PgStore, QueueSettings, RabbitQueue, RedisCache, RedisHostGate};
use crawler_core::ports::{HostGate, HostLimits, JobQueue, JobStore, ResultCache};
use crawler_core::tls::Role;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_connects_to_postgres_over_verified_tls() {
    let certs = ClusterCerts::make().await;
    // Any server certificate of the CA, valid for 127.0.0.1.
    let cert = certs.dir().join(format!("{}.pem", Role::LockServer));
    let key = certs.dir().join(format!("{}.key", Role::LockServer));
    let postgres = PrivatePostgres::start_with_tls(&cert, &key).await;
    let ca = certs.dir().join("ca.pem").display().to_string();
    let url = format!(
        "{}/crawler?sslmode=verify-full&sslrootcert={ca}",
        postgres.server_url()
    );

    let store = PgStore::connect(&url).await.expect("connect over TLS");
    store.ping().await.expect("the store answers");
    store.close().await;

    // Without TLS: the server takes none.
    let plain = format!("{}/crawler?sslmode=disable", postgres.server_url());
    assert!(
        PgStore::connect(&plain).await.is_err(),
        "a plaintext connection was taken"
    );

    // A CA the server's certificate does not chain to: refused.
    let elsewhere = ClusterCerts::make().await;
    let wrong = format!(
        "{}/crawler?sslmode=verify-full&sslrootcert={}",
        postgres.server_url(),
        elsewhere.dir().join("ca.pem").display()
    );
    let refused = PgStore::connect(&wrong).await;
    assert!(refused.is_err(), "a certificate of another CA was trusted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_and_the_host_gate_reach_redis_over_verified_tls() {
    let certs = ClusterCerts::make().await;
    let file = |name: &str| certs.dir().join(name);
    let redis = PrivateRedis::start_tls(
        &file("lock-server.pem"),
        &file("lock-server.key"),
        &file("ca.pem"),
    )
    .await;
    let url = redis.url();
    assert!(url.starts_with("rediss://"), "{url}");
    let ca = file("ca.pem");

    let cache = RedisCache::connect(&url, Some(&ca), "tls-test")
        .await
        .expect("the cache connects over TLS");
    cache.ping().await.expect("the cache answers");
    let gate = RedisHostGate::new(&url, Some(&ca), "tls-test").unwrap();
    let limits = HostLimits {
        concurrency: 1,
        delay: Duration::ZERO,
        lease: Duration::from_secs(10),
    };
    assert_eq!(
        gate.try_enter("example.test", "t1", limits).await.unwrap(),
        None,
        "the gate admits the first fetch"
    );

    // Plaintext to the TLS port, or another CA: refused.
    let plain = url.replacen("rediss://", "redis://", 1);
    assert!(RedisCache::connect(&plain, None, "tls-test").await.is_err());
    let elsewhere = ClusterCerts::make().await;
    let foreign_ca = elsewhere.dir().join("ca.pem");
    assert!(
        RedisCache::connect(&url, Some(&foreign_ca), "tls-test")
            .await
            .is_err(),
        "a certificate of another CA was trusted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_reaches_rabbitmq_over_verified_tls() {
    let certs = ClusterCerts::make().await;
    let file = |name: &str| certs.dir().join(name);
    let rabbit = PrivateRabbit::start_tls(&file("lock-server.pem"), &file("lock-server.key")).await;
    let url = rabbit.url();
    assert!(url.starts_with("amqps://"), "a TLS URL");
    let ca = file("ca.pem");

    let queue = RabbitQueue::connect(&url, Some(&ca), "tls-test", Default::default())
        .await
        .expect("the queue connects over TLS");
    queue.ping().await.expect("the queue answers");
    queue.close_connection().await;

    // Plaintext to the TLS port, or another CA: refused.
    let plain = url.replacen("amqps://", "amqp://", 1);
    let settings = QueueSettings {
        connect_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    assert!(
        RabbitQueue::connect(&plain, None, "tls-test", settings.clone())
            .await
            .is_err()
    );
    let elsewhere = ClusterCerts::make().await;
    let foreign_ca = elsewhere.dir().join("ca.pem");
    assert!(
        RabbitQueue::connect(&url, Some(&foreign_ca), "tls-test", settings)
            .await
            .is_err(),
        "a certificate of another CA was trusted"
    );
}
