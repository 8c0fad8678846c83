//! `spider-peer URL DEPTH LIMIT`: crawls URL with the `spider` crate, as its
//! documentation shows, to DEPTH (as the pipeline counts it: the start page
//! is depth 0) and at most LIMIT pages, and prints one line
//! of JSON: the pages it visited and the milliseconds the crawl took (the
//! process's start-up not counted, as for the pipeline it is compared with).

use std::time::Instant;

use spider::website::Website;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, depth, limit] = args.as_slice() else {
        eprintln!("usage: spider-peer URL DEPTH LIMIT");
        std::process::exit(2);
    };
    let depth: usize = depth.parse().expect("DEPTH is a number");
    let limit: u32 = limit.parse().expect("LIMIT is a number");
    let mut website = Website::new(url);
    website
        // spider's depth 1 is the start page alone.
        .with_depth(depth + 1)
        .with_limit(limit)
        .with_respect_robots_txt(false);
    let started = Instant::now();
    website.crawl().await;
    let elapsed = started.elapsed();
    println!(
        "{{\"pages\":{},\"elapsed_ms\":{},\"cpu_ms\":{}}}",
        // `get_size`, not `get_links().len()`: with the default features,
        // spider keeps visited links past 15,000 on disk, which
        // `get_links` does not count.
        website.get_size().await,
        elapsed.as_millis(),
        cpu_ms()
    );
}

/// User plus system CPU time of this process so far, from /proc (Linux
/// counts it in ticks of 1/100 s).
fn cpu_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum::<u64>()
        * 10
}
