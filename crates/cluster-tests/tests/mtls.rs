//! Mutual TLS between the services, on a real cluster: a worker without a
//! certificate of the cluster CA is refused at the TLS handshake and never
//! receives a batch; a certificate of the CA with the wrong role is refused
//! with `permission_denied`; the lock server takes only masters.

use std::time::Duration;

use cluster_tests::processes::{ClusterCerts, ClusterSpec, start_worker};
use cluster_tests::site::{SitePlan, TestSite};
use cluster_tests::ws::WsClient;
use crawler_core::ErrorCode;
use crawler_core::tls::{Role, TlsArgs};
use crawler_proto::v1::GetJobRequest;
use crawler_proto::v1::lock_service_client::LockServiceClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_a_cluster_certificate_never_receives_a_batch() {
    let mut cluster = ClusterSpec::new(1, 0).start().await;
    let master_url = format!("http://{}", cluster.masters[0].addr());
    let elsewhere = ClusterCerts::make().await;
    let own = cluster
        .certs
        .clone()
        .expect("the cluster runs on mutual TLS");
    let fast = ["--register-timeout-secs", "1"];
    let rogue = |i: usize, mut args: Vec<String>| {
        let master_url = master_url.clone();
        args.extend(fast.iter().map(|a| a.to_string()));
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            start_worker(i, &[master_url], &args).await
        }
    };
    let rogues = [
        // No certificate at all: plaintext against a TLS port.
        rogue(10, vec!["--grpc-plaintext".into()]).await,
        // A worker certificate of another CA.
        rogue(11, elsewhere.args(Role::Worker)).await,
        // A certificate of the cluster's CA, for another role.
        rogue(12, own.args(Role::LockServer)).await,
    ];
    for worker in &rogues {
        worker
            .wait_for_log("cannot reach master; retrying", 2)
            .await;
    }
    // The one with the cluster's CA got through the handshake and was
    // told why it is refused.
    assert!(rogues[2].count_log("a lock-server certificate may not call this service") > 0);
    assert_eq!(rogues[1].count_log("may not call this service"), 0);

    // A job waits: no batch goes to any of them.
    let site = TestSite::serve(SitePlan::tree(&[2])).await;
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    client.submit("j", &site.url("/"), 1).await;
    cluster.masters[0].wait_for_log("crawl started", 1).await;
    assert_eq!(cluster.masters[0].count_log("worker connected"), 0);
    assert_eq!(site.hits("/"), 0, "a rogue worker fetched a page");

    // A worker with the cluster's worker certificate registers and crawls.
    cluster.add_worker(&[]).await;
    let result = client.result("j").await;
    assert_eq!(result["levels"][1].as_array().map(Vec::len), Some(2));
    assert_eq!(cluster.masters[0].count_log("worker connected"), 1);
    for worker in &rogues {
        assert_eq!(worker.count_log("registered with master"), 0);
    }
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_server_takes_only_masters_of_the_cluster_ca() {
    let cluster = ClusterSpec::new(1, 0).start().await;
    let lock_url = format!("http://{}", cluster.locks[0].addr());
    let own = cluster
        .certs
        .clone()
        .expect("the cluster runs on mutual TLS");
    let elsewhere = ClusterCerts::make().await;
    let ask = |args: TlsArgs| {
        let lock_url = lock_url.clone();
        async move {
            let endpoint = args.load().unwrap().endpoint(&lock_url).unwrap();
            let endpoint = endpoint.connect_timeout(Duration::from_secs(5));
            let channel = match endpoint.connect().await {
                Ok(channel) => channel,
                Err(e) => return Err(format!("connect: {e:?}")),
            };
            let request = GetJobRequest {
                job_id: "no-such-job".into(),
            };
            LockServiceClient::new(channel)
                .get_job(request)
                .await
                .map(drop)
                .map_err(|status| {
                    format!(
                        "{:?} {:?} {}",
                        status.code(),
                        ErrorCode::of(&status),
                        status.message()
                    )
                })
        }
    };

    // No certificate: the TLS handshake (or the plaintext call) fails.
    let plaintext = ask(TlsArgs::plaintext()).await.unwrap_err();
    assert!(!plaintext.contains("NotFound"), "{plaintext}");
    // Another CA's master certificate: refused in the handshake.
    let foreign = ask(TlsArgs::from_dir(elsewhere.dir(), Role::Master))
        .await
        .unwrap_err();
    assert!(!foreign.contains("NotFound"), "{foreign}");
    // The cluster's CA, but a worker: refused by role.
    let worker = ask(TlsArgs::from_dir(own.dir(), Role::Worker))
        .await
        .unwrap_err();
    assert!(
        worker.contains("PermissionDenied Some(PermissionDenied)"),
        "{worker}"
    );
    // A master of the cluster gets an answer: no such job.
    let master = ask(TlsArgs::from_dir(own.dir(), Role::Master))
        .await
        .unwrap_err();
    assert!(master.starts_with("NotFound"), "{master}");
    cluster.cleanup().await;
}
