//! A job recorded by the gateway whose publish then fails is still
//! published and completed (the outbox), and the client's retry of the same
//! job attaches to it instead of being refused.

use cluster_tests::levels_of;
use cluster_tests::processes::ClusterSpec;
use cluster_tests::proxy::Fault;
use cluster_tests::site::{SitePlan, TestSite};
use cluster_tests::ws::WsClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_that_fails_after_the_insert_is_published_again_and_a_retry_attaches() {
    let cluster = ClusterSpec::new(1, 1).gateway_amqp_proxy().start().await;
    let site = TestSite::serve(SitePlan::tree(&[2])).await;
    let rabbit = cluster.gateway_amqp_proxy.as_ref().expect("asked for");

    // The gateway loses RabbitMQ between recording the job and publishing it.
    rabbit.set(Fault::Reset);
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    client.submit("J", &site.url("/"), 1).await;
    let accepted = client.next_where(|m| m["jobId"] == "J").await;
    assert_eq!(
        accepted["type"], "accepted",
        "the job is durable, so accepted: {accepted}"
    );
    cluster
        .gateway
        .wait_for_log("cannot publish the job now; the outbox will", 1)
        .await;

    // The client's connection drops; it comes back and submits the same job again.
    let client_id = client.client_id.clone();
    drop(client);
    let base = cluster.ws_url();
    let mut client = WsClient::reconnect(&base, &client_id).await;
    let queued = client.next_where(|m| m["jobId"] == "J").await;
    assert_eq!(
        queued["type"], "progress",
        "told where its job stands: {queued}"
    );
    client.submit("J", &site.url("/"), 1).await;
    let attached = client.next_where(|m| m["jobId"] == "J").await;
    assert_eq!(
        attached["type"], "accepted",
        "attached, not a duplicate: {attached}"
    );

    rabbit.set(Fault::Pass);
    let result = client.result("J").await;
    assert_eq!(levels_of(&result), site.levels(1));
    assert_eq!(site.hits("/"), 1, "crawled once");
    assert_eq!(
        cluster
            .gateway_metric("crawler_gateway_jobs_republished_total")
            .await,
        1
    );
    assert_eq!(
        cluster
            .gateway_metric("crawler_gateway_jobs_attached_total")
            .await,
        1
    );
    assert_eq!(cluster.masters[0].count_log("crawl finished"), 1);

    // Another request reusing the id is still a mistake.
    client.submit("J", &site.url("/"), 0).await;
    assert_eq!(client.error().await["code"], "duplicate_job");
    cluster.cleanup().await;
}
