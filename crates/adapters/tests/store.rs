//! The store and election conformance suites on Postgres (a fresh database
//! per test) and on in-memory SQLite.

mod common;

use std::sync::Arc;

use crawler_adapters::conformance::Subject;
use crawler_adapters::{PgStore, SqliteStore};
use crawler_core::ports::{Election, JobStore, TokenStore};

async fn postgres() -> Subject<dyn JobStore> {
    let (store, teardown) = fresh_postgres().await;
    Subject::new(store as Arc<dyn JobStore>).with_teardown(teardown)
}

async fn postgres_election() -> Subject<dyn Election> {
    let (store, teardown) = fresh_postgres().await;
    Subject::new(store as Arc<dyn Election>).with_teardown(teardown)
}

async fn fresh_postgres() -> (Arc<PgStore>, impl Future<Output = ()> + Send + 'static) {
    let server = common::postgres_server_url();
    let (store, database) = PgStore::connect_fresh(&server)
        .await
        .expect("Postgres for tests");
    let store = Arc::new(store);
    let closing = store.clone();
    let teardown = async move {
        closing.close().await;
        PgStore::drop_database(&server, &database)
            .await
            .expect("drop the test database");
    };
    (store, teardown)
}

async fn sqlite() -> Subject<dyn JobStore> {
    Subject::new(Arc::new(SqliteStore::in_memory().await.expect("SQLite")))
}

async fn postgres_tokens() -> Subject<dyn TokenStore> {
    let (store, teardown) = fresh_postgres().await;
    Subject::new(store as Arc<dyn TokenStore>).with_teardown(teardown)
}

async fn sqlite_tokens() -> Subject<dyn TokenStore> {
    Subject::new(Arc::new(SqliteStore::in_memory().await.expect("SQLite")))
}

async fn sqlite_election() -> Subject<dyn Election> {
    Subject::new(Arc::new(SqliteStore::in_memory().await.expect("SQLite")))
}

mod on_postgres {
    crawler_adapters::store_conformance!(super::postgres());
}

mod on_sqlite {
    crawler_adapters::store_conformance!(super::sqlite());
}

mod election_on_postgres {
    crawler_adapters::election_conformance!(super::postgres_election());
}

mod election_on_sqlite {
    crawler_adapters::election_conformance!(super::sqlite_election());
}

mod tokens_on_postgres {
    crawler_adapters::tokens_conformance!(super::postgres_tokens());
}

mod tokens_on_sqlite {
    crawler_adapters::tokens_conformance!(super::sqlite_tokens());
}
