//! What the conformance suites cannot say through the ports: connecting,
//! reconnecting, creating databases, and errors that name the engine
//! without leaking its password.

mod common;

use std::time::Duration;

use crawler_adapters::conformance::PATIENCE;
use crawler_adapters::{
    ClusterEngineConfig, PgStore, QueueSettings, RabbitQueue, RedisCache, SqliteStore,
    cluster_engines, embedded_engines,
};
use crawler_core::model::{CachedCrawl, CrawlOptions, JobId, JobSpec};
use crawler_core::ports::{InsertOutcome, JobQueue};
use futures::StreamExt;

fn spec() -> JobSpec {
    JobSpec {
        job_id: JobId::new_random(),
        client_id: "client".into(),
        client_job_id: uuid::Uuid::new_v4().to_string(),
        url: "https://example.com/".into(),
        depth: 1,
        options: CrawlOptions::default(),
        gateway_key: "gw".into(),
        accepted_at_ms: 1_000,
        trace: Default::default(),
    }
}

async fn next_payload(jobs: &mut crawler_core::ports::DeliveryStream) -> Vec<u8> {
    let delivery = tokio::time::timeout(PATIENCE, jobs.next())
        .await
        .expect("a delivery in time")
        .expect("an open stream")
        .expect("a delivery");
    let payload = delivery.payload.clone();
    delivery.ack().await.unwrap();
    payload
}

#[tokio::test]
async fn rabbit_reconnects_after_its_connection_closes() {
    let queue = RabbitQueue::connect(
        &common::amqp_url(),
        None,
        &common::namespace(),
        QueueSettings::default(),
    )
    .await
    .unwrap();
    queue
        .publish_job(b"before".to_vec(), &Default::default())
        .await
        .unwrap();
    queue.close_connection().await;

    queue
        .publish_job(b"after".to_vec(), &Default::default())
        .await
        .unwrap();
    let mut jobs = queue.consume_jobs(2).await.unwrap();
    assert_eq!(next_payload(&mut jobs).await, b"before");
    assert_eq!(next_payload(&mut jobs).await, b"after");
    drop(jobs);
    queue.delete_namespace().await.unwrap();
}

#[tokio::test]
async fn a_zero_prefetch_is_refused() {
    let memory = crawler_adapters::MemoryQueue::default();
    assert!(memory.consume_jobs(0).await.is_err());
}

#[tokio::test]
async fn unreachable_rabbitmq_is_named_without_its_password() {
    let settings = QueueSettings {
        connect_timeout: Duration::from_secs(3),
        ..QueueSettings::default()
    };
    let error = RabbitQueue::connect("amqp://guest:hunter2@127.0.0.1:1/%2f", None, "ns", settings)
        .await
        .err()
        .expect("nothing listens on port 1");
    let text = error.to_string();
    assert!(
        text.contains("cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:1/"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn unreachable_redis_is_named_without_its_password() {
    let error = RedisCache::connect("redis://:hunter2@127.0.0.1:1/", None, "ns")
        .await
        .err()
        .expect("nothing listens on port 1");
    let text = error.to_string();
    assert!(text.contains("cannot reach Redis at redis://"), "{text}");
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn unreachable_postgres_is_named_without_its_password() {
    let error = PgStore::connect("postgres://crawler:hunter2@127.0.0.1:1/jobs")
        .await
        .err()
        .expect("nothing listens on port 1");
    let text = error.to_string();
    assert!(
        text.contains("cannot reach Postgres at postgres://crawler:***@127.0.0.1:1/jobs"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn postgres_connect_creates_a_missing_database_once() {
    let server = common::postgres_server_url();
    let name = format!("crawler_test_{}", uuid::Uuid::new_v4().simple());
    let url = format!("{}/{name}", server.trim_end_matches('/'));

    let store = PgStore::connect(&url).await.unwrap();
    let spec = spec();
    use crawler_core::ports::JobStore;
    assert_eq!(
        store.insert_job(&spec).await.unwrap(),
        InsertOutcome::Created
    );
    store.close().await;

    // The second connect finds the database and its schema in place.
    let again = PgStore::connect(&url).await.unwrap();
    assert!(again.get(&spec.job_id).await.unwrap().is_some());
    again.close().await;
    PgStore::drop_database(&server, &name).await.unwrap();
}

#[tokio::test]
async fn sqlite_file_store_keeps_jobs_across_reopening() {
    use crawler_core::ports::JobStore;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("jobs.db").display());
    let spec = spec();

    let store = SqliteStore::connect(&url).await.unwrap();
    assert_eq!(
        store.insert_job(&spec).await.unwrap(),
        InsertOutcome::Created
    );
    store.close().await;

    let reopened = SqliteStore::connect(&url).await.unwrap();
    assert_eq!(
        reopened.get(&spec.job_id).await.unwrap().map(|r| r.spec),
        Some(spec)
    );
    reopened.close().await;
}

#[tokio::test]
async fn embedded_engines_need_no_infrastructure() {
    let engines = embedded_engines().await.unwrap();
    let spec = spec();
    assert_eq!(
        engines.store.insert_job(&spec).await.unwrap(),
        InsertOutcome::Created
    );
    engines
        .cache
        .put(
            "k",
            &CachedCrawl {
                summary: Default::default(),
                job_id: spec.job_id.clone(),
                pages: Some(Vec::new()),
            },
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert!(engines.cache.get("k").await.unwrap().is_some());
    let mut jobs = engines.queue.consume_jobs(1).await.unwrap();
    engines
        .queue
        .publish_job(b"job".to_vec(), &Default::default())
        .await
        .unwrap();
    assert_eq!(next_payload(&mut jobs).await, b"job");
}

#[tokio::test]
async fn cluster_engines_connect_all_three() {
    let server = common::postgres_server_url();
    let database = format!("crawler_test_{}", uuid::Uuid::new_v4().simple());
    let namespace = common::namespace();
    let config = ClusterEngineConfig::new(
        common::amqp_url(),
        common::redis_url(),
        format!("{}/{database}", server.trim_end_matches('/')),
        namespace.clone(),
    );
    let engines = cluster_engines(&config).await.unwrap();
    let spec = spec();
    assert_eq!(
        engines.store.insert_job(&spec).await.unwrap(),
        InsertOutcome::Created
    );
    assert_eq!(engines.queue.dead_letter_count().await.unwrap(), 0);
    assert_eq!(engines.cache.get("absent").await.unwrap(), None);
    drop(engines);

    let queue = RabbitQueue::connect(
        &common::amqp_url(),
        None,
        &namespace,
        QueueSettings::default(),
    )
    .await
    .unwrap();
    queue.delete_namespace().await.unwrap();
    PgStore::drop_database(&server, &database).await.unwrap();
}
