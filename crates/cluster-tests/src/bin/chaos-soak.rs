//! The chaos soak: a thousand jobs against a cluster of two gateways, two
//! masters, three workers and two lock servers on engines of its own,
//! while every few seconds a random master, worker or gateway is killed
//! (SIGKILL) and started again, and RabbitMQ, Redis and Postgres are each
//! restarted once. It runs the same workload fault-free first, prints both
//! rows of the chaos table and every fault it struck, and exits non-zero
//! unless nothing accepted was lost, duplicated or failed.
//!
//! Run it with `just chaos` (it builds the release binaries first); the
//! services' logs go to stderr. docs/chaos.md holds the output of a run.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use cluster_tests::chaos::{self, JobHistory, Report, Workload};
use cluster_tests::engines::{PrivatePostgres, PrivateRabbit, PrivateRedis};
use cluster_tests::processes::{Cluster, ClusterSpec, EngineUrls};
use cluster_tests::site::{SitePlan, TestSite};

#[derive(Parser, Debug)]
#[command(about = "Kill and restart services and engines under a thousand jobs")]
struct Args {
    /// Clients submitting at once.
    #[arg(long, default_value_t = 20)]
    clients: usize,
    /// Jobs each client submits (1,000 in all by default).
    #[arg(long, default_value_t = 50)]
    jobs_per_client: usize,
    /// Milliseconds between two submits of one client.
    #[arg(long, default_value_t = 2000)]
    pace_ms: u64,
    /// Seconds between two faults.
    #[arg(long, default_value_t = 5)]
    fault_every_secs: u64,
    /// Seed of the fault choice, to replay a run (random when not given).
    #[arg(long)]
    seed: Option<u64>,
}

/// What one tick of the fault schedule strikes.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Master(usize),
    Worker(usize),
    Gateway(usize),
    RabbitMq,
    Redis,
    Postgres,
}

/// The cluster's shape.
const MASTERS: usize = 2;
const WORKERS: usize = 3;
const GATEWAYS: usize = 2;
const LOCK_SERVERS: usize = 2;

/// The ticks at which each engine is restarted (spread over the run, each
/// once); every other tick kills a service.
const ENGINE_TICKS: [(u64, Fault); 3] = [
    (3, Fault::RabbitMq),
    (7, Fault::Redis),
    (11, Fault::Postgres),
];

struct Engines {
    postgres: PrivatePostgres,
    redis: PrivateRedis,
    rabbit: PrivateRabbit,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let mut rng = fastrand::Rng::with_seed(seed);
    println!("chaos soak, seed {seed}: starting private engines and the cluster");
    let mut engines = Engines {
        postgres: PrivatePostgres::start().await,
        redis: PrivateRedis::start().await,
        rabbit: PrivateRabbit::start().await,
    };
    let urls = EngineUrls {
        postgres_server: engines.postgres.server_url(),
        redis: engines.redis.url(),
        amqp: engines.rabbit.url(),
    };
    let mut cluster = ClusterSpec::new(MASTERS, WORKERS)
        .gateways(GATEWAYS)
        .lock_servers(LOCK_SERVERS)
        .engines(urls)
        .start()
        .await;
    let site = TestSite::serve(SitePlan::tree(&[3]).slow(Duration::from_millis(40))).await;
    let work = Workload {
        clients: args.clients,
        jobs_per_client: args.jobs_per_client,
        pace: Duration::from_millis(args.pace_ms),
        url: site.url("/"),
        depth: 1,
        patience: Duration::from_secs(180),
        spread: true,
    };
    let gateways: Vec<String> = std::iter::once(&cluster.gateway)
        .chain(&cluster.other_gateways)
        .map(|g| format!("ws://{}/ws", g.addr()))
        .collect();

    println!(
        "fault-free reference: {} jobs",
        work.clients * work.jobs_per_client
    );
    let (histories, reconnects) = chaos::run(&work, &gateways, "reference").await;
    let reference = Report::of(&histories, reconnects);

    println!(
        "soak: a fault every {} s while submitting",
        args.fault_every_secs
    );
    let run = {
        let (work, gateways) = (work.clone(), gateways.clone());
        tokio::spawn(async move { chaos::run(&work, &gateways, "soak").await })
    };
    let submitting = work.pace * work.jobs_per_client as u32;
    let every = Duration::from_secs(args.fault_every_secs);
    let started = Instant::now();
    let mut struck = Vec::new();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick = 0;
    while !run.is_finished() && started.elapsed() < submitting {
        ticks.tick().await;
        tick += 1;
        let fault = ENGINE_TICKS
            .iter()
            .find(|(at, _)| *at == tick)
            .map(|(_, fault)| *fault)
            .unwrap_or_else(|| random_service(&mut rng));
        let at = started.elapsed();
        strike(fault, &mut cluster, &mut engines).await;
        struck.push((at, fault, started.elapsed() - at));
    }
    let (histories, reconnects): (Vec<JobHistory>, usize) = run.await.expect("the soak ran");
    let soak = Report::of(&histories, reconnects);

    println!();
    println!("{}", Report::header());
    println!("{}", reference.row("fault-free reference"));
    println!("{}", soak.row("soak"));
    println!();
    println!("faults struck (seed {seed}):");
    for (at, fault, took) in &struck {
        println!(
            "  at {:>6.1} s  {:<24} back after {:.1} s",
            at.as_secs_f64(),
            describe(*fault),
            took.as_secs_f64()
        );
    }
    cluster.cleanup().await;
    if reference.is_clean() && soak.is_clean() {
        ExitCode::SUCCESS
    } else {
        println!("FAILED: something accepted was lost, duplicated or failed");
        ExitCode::FAILURE
    }
}

fn random_service(rng: &mut fastrand::Rng) -> Fault {
    match rng.usize(..3) {
        0 => Fault::Master(rng.usize(..MASTERS)),
        1 => Fault::Worker(rng.usize(..WORKERS)),
        _ => Fault::Gateway(rng.usize(..GATEWAYS)),
    }
}

/// Strikes `fault` and returns once the thing struck is back.
async fn strike(fault: Fault, cluster: &mut Cluster, engines: &mut Engines) {
    match fault {
        Fault::Master(i) => cluster.restart_master(i).await,
        Fault::Worker(i) => cluster.restart_worker(i).await,
        Fault::Gateway(i) => cluster.restart_gateway(i).await,
        Fault::RabbitMq => {
            engines.rabbit.down().await;
            engines.rabbit.up().await;
        }
        Fault::Redis => {
            engines.redis.down().await;
            engines.redis.up().await;
        }
        Fault::Postgres => {
            engines.postgres.down().await;
            engines.postgres.up().await;
        }
    }
}

fn describe(fault: Fault) -> String {
    match fault {
        Fault::Master(i) => format!("master-{i} -9, restarted"),
        Fault::Worker(i) => format!("worker-{i} -9, restarted"),
        Fault::Gateway(i) => format!("gateway-{i} -9, restarted"),
        Fault::RabbitMq => "RabbitMQ restarted".into(),
        Fault::Redis => "Redis restarted".into(),
        Fault::Postgres => "Postgres restarted".into(),
    }
}
