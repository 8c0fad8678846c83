//! Takeover benchmark: kills the master running a crawl, in the middle of
//! its last level, again and again, and prints how long each takeover took
//! (kill to the new master's grant) and how many pages were fetched again.
//!
//! Real binaries on the real engines, with the default lease settings:
//! two masters and two workers; after each kill the dead master is started
//! again on its address, so the next round again has a choice of two.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! cargo bench -p cluster-tests --bench takeover            # 20 kills
//! cargo bench -p cluster-tests --bench takeover -- --kills 5
//! ```

use std::time::{Duration, Instant};

use cluster_tests::levels_of;
use cluster_tests::processes::ClusterSpec;
use cluster_tests::site::{SitePlan, TestSite};
use cluster_tests::ws::WsClient;

/// `/` links 4 pages, each links 4: levels of 1, 4 and 16 pages, depth 2.
const FANOUT: [usize; 2] = [4, 4];

struct Round {
    takeover: Duration,
    /// Pages of levels 0 and 1 (durable before the kill) fetched again.
    completed_refetched: usize,
    /// Pages of level 2 (in flight at the kill) fetched again.
    in_flight_refetched: usize,
}

fn kills_from_args() -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--kills")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse().expect("--kills takes a number"))
        .unwrap_or(20)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let kills = kills_from_args();
    let mut cluster = ClusterSpec::new(2, 2).start().await;
    let mut rounds = Vec::new();
    for round in 0..kills {
        // A new site each round: a new start URL, so no cached result answers it.
        let site = TestSite::serve(SitePlan::tree(&FANOUT).gate_depth(2)).await;
        let saved_before = cluster.locks[0].count_log("level saved");
        let started: Vec<usize> = cluster
            .masters
            .iter()
            .map(|m| m.count_log("crawl started"))
            .collect();
        let mut client = WsClient::connect(&cluster.ws_url()).await;
        let job = format!("bench-{round}");
        client.submit(&job, &site.url("/"), 2).await;
        site.gated_requests(1).await;
        cluster.locks[0]
            .wait_for_log("level saved", saved_before + 2)
            .await;
        let holder = (0..2)
            .find(|&i| cluster.masters[i].count_log("crawl started") > started[i])
            .expect("one master started the crawl");
        let heir = 1 - holder;
        let took_over = cluster.masters[heir].count_log("took over an orphaned job");

        let killed = Instant::now();
        cluster.masters[holder].kill();
        cluster.masters[heir]
            .wait_for_log("took over an orphaned job", took_over + 1)
            .await;
        let takeover = killed.elapsed();
        site.open_gate();
        let result = client.result(&job).await;
        assert_eq!(levels_of(&result), site.levels(2), "round {round}");

        let refetched = |depth: u32| -> usize {
            site.plan()
                .paths_at(depth)
                .iter()
                .map(|p| site.hits(p).saturating_sub(1))
                .sum()
        };
        rounds.push(Round {
            takeover,
            completed_refetched: refetched(0) + refetched(1),
            in_flight_refetched: refetched(2),
        });
        println!(
            "kill {:>2}: takeover {:.2} s, pages fetched again: {} of completed levels, {} of the level in flight",
            round + 1,
            takeover.as_secs_f64(),
            rounds.last().unwrap().completed_refetched,
            rounds.last().unwrap().in_flight_refetched
        );
        cluster.restart_master(holder).await;
    }

    let mut times: Vec<Duration> = rounds.iter().map(|r| r.takeover).collect();
    times.sort();
    let per =
        |f: fn(&Round) -> usize| rounds.iter().map(f).sum::<usize>() as f64 / rounds.len() as f64;
    println!();
    println!("master kills:                         {}", rounds.len());
    println!(
        "takeover (kill to new grant):         p50 {:.2} s, max {:.2} s (promise: 5 s)",
        percentile(&times, 0.5).as_secs_f64(),
        times.last().expect("at least one kill").as_secs_f64()
    );
    println!(
        "pages fetched again per takeover:     {:.1} of completed levels, {:.1} of the level in flight (of {})",
        per(|r| r.completed_refetched),
        per(|r| r.in_flight_refetched),
        FANOUT[0] * FANOUT[1]
    );
    cluster.cleanup().await;
}
