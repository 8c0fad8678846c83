//! The store conformance suite on Postgres (a fresh database per test) and
//! on in-memory SQLite.

mod common;

use std::sync::Arc;

use crawler_adapters::conformance::Subject;
use crawler_adapters::{PgStore, SqliteStore};
use crawler_core::ports::JobStore;

async fn postgres() -> Subject<dyn JobStore> {
    let server = common::postgres_server_url();
    let (store, database) = PgStore::connect_fresh(&server)
        .await
        .expect("Postgres for tests");
    let store = Arc::new(store);
    let port: Arc<dyn JobStore> = store.clone();
    Subject::new(port).with_teardown(async move {
        store.close().await;
        PgStore::drop_database(&server, &database)
            .await
            .expect("drop the test database");
    })
}

async fn sqlite() -> Subject<dyn JobStore> {
    Subject::new(Arc::new(SqliteStore::in_memory().await.expect("SQLite")))
}

mod on_postgres {
    crawler_adapters::store_conformance!(super::postgres());
}

mod on_sqlite {
    crawler_adapters::store_conformance!(super::sqlite());
}
