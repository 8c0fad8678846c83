//! Where the test engines live; each can be overridden from the environment.

#![allow(dead_code)] // Each test binary uses only some of these.

pub fn amqp_url() -> String {
    std::env::var("CRAWLER_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn redis_url() -> String {
    std::env::var("CRAWLER_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

/// A Postgres server URL without a database; tests create their own.
pub fn postgres_server_url() -> String {
    std::env::var("CRAWLER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A namespace no other test uses.
pub fn namespace() -> String {
    format!("crawler-test-{}", uuid::Uuid::new_v4().simple())
}
