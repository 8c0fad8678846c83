//! The queue conformance suite on RabbitMQ and on the in-process queue.

mod common;

use std::sync::Arc;

use crawler_adapters::conformance::{Subject, queue::settings};
use crawler_adapters::{MemoryQueue, RabbitQueue};
use crawler_core::ports::JobQueue;

async fn rabbit() -> Subject<dyn JobQueue> {
    let queue = Arc::new(
        RabbitQueue::connect(&common::amqp_url(), None, &common::namespace(), settings())
            .await
            .expect("RabbitMQ for tests"),
    );
    let port: Arc<dyn JobQueue> = queue.clone();
    Subject::new(port).with_teardown(async move {
        queue
            .delete_namespace()
            .await
            .expect("delete the test namespace");
    })
}

async fn memory() -> Subject<dyn JobQueue> {
    Subject::new(Arc::new(MemoryQueue::new(settings())))
}

mod on_rabbitmq {
    crawler_adapters::queue_conformance!(super::rabbit());
}

mod in_memory {
    crawler_adapters::queue_conformance!(super::memory());
}
