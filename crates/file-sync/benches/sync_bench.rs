//! Benchmark harness (not a timed test). Prints, in one run:
//!
//! (a) `--clients` (50) concurrent clients mirroring the same spider of
//!     `--files` (1000) files / `--total-mb` (50) MB from a separate
//!     `file-sync` process: the scans and hash passes the server did, bytes
//!     sent, wall time, against the same number of concurrent `rsync -a`
//!     copies of the same tree measured in the same run;
//! (b) one file of `--big-mb` (2048) MB: throughput against `cp` and a plain
//!     127.0.0.1 TCP copy, and the server's memory growth during the transfer
//!     (VmRSS / VmHWM of the server process, read from /proc).
//!
//! Run: `cargo bench -p file-sync --bench sync_bench -- --big-mb 256`
//! (the sizes can also be set as FILE_SYNC_BENCH_BIG_MB, _FILES, _TOTAL_MB,
//! _CLIENTS). Data lives in a temporary folder removed at the end.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use file_sync::client::{self, MirrorOptions};

struct Args {
    big_mb: u64,
    files: usize,
    total_mb: u64,
    clients: usize,
}

fn parse_args() -> Args {
    let env = |k: &str, d: u64| {
        std::env::var(format!("FILE_SYNC_BENCH_{k}"))
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let mut a = Args {
        big_mb: env("BIG_MB", 2048),
        files: env("FILES", 1000) as usize,
        total_mb: env("TOTAL_MB", 50),
        clients: env("CLIENTS", 50) as usize,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let value = || argv.get(i + 1).and_then(|v| v.parse::<u64>().ok());
        match argv[i].as_str() {
            "--big-mb" => a.big_mb = value().expect("--big-mb N"),
            "--files" => a.files = value().expect("--files N") as usize,
            "--total-mb" => a.total_mb = value().expect("--total-mb N"),
            "--clients" => a.clients = value().expect("--clients N") as usize,
            _ => {
                i += 1; // `--bench` and other harness flags
                continue;
            }
        }
        i += 2;
    }
    a
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(root: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_file-sync"))
            .args(["--listen", "127.0.0.1:0", "--grpc-plaintext", "--root"])
            .arg(root)
            .args(["--scan-ttl-ms", "60000"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start file-sync");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("file-sync listening on ")
            .expect("address line")
            .parse()
            .unwrap();
        Self { child, addr }
    }
    /// Plaintext: the bench measures file-sync's own transfer.
    fn endpoint(&self) -> file_sync::Remote {
        file_sync::Remote::plaintext(self.url())
    }
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    fn status_kb(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fill(out: &mut [u8], seed: &mut u64) {
    for chunk in out.chunks_mut(8) {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let b = seed.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// A spider tree: `files` files in 20 nested folders, half text, half noise.
fn make_tree(dir: &Path, files: usize, total: u64) {
    let per = (total / files as u64) as usize;
    let mut seed = 0x1234_5678_9abc_def1u64;
    let text =
        b"<div class=\"quote\"><span class=\"text\">The world as we have created it</span></div>\n";
    for i in 0..files {
        let sub = dir.join(format!("pkg{:02}/mod{}", i % 20, i % 3));
        std::fs::create_dir_all(&sub).unwrap();
        let mut data = vec![0u8; per];
        if i % 2 == 0 {
            for (j, b) in data.iter_mut().enumerate() {
                *b = text[j % text.len()];
            }
        } else {
            fill(&mut data, &mut seed);
        }
        std::fs::write(sub.join(format!("file{i}.dat")), data).unwrap();
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    let args = parse_args();
    let tmp = tempfile::Builder::new()
        .prefix("file-sync-bench")
        .tempdir()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    println!(
        "file-sync benchmark (temporary data in {})",
        tmp.path().display()
    );

    // (a) many clients, one spider.
    {
        let root = tmp.path().join("root-a");
        let spider = root.join("bench");
        make_tree(&spider, args.files, args.total_mb << 20);
        let server = Server::start(&root);
        let ep = server.endpoint();
        let start = Instant::now();
        let reports = rt.block_on(async {
            let tasks: Vec<_> = (0..args.clients)
                .map(|i| {
                    let (ep, target) = (ep.clone(), tmp.path().join(format!("a-clients/c{i}")));
                    tokio::spawn(async move {
                        client::mirror(&ep, "bench", &target, &MirrorOptions::default()).await
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap().expect("mirror"));
            }
            out
        });
        let ours = start.elapsed();
        let stats = rt.block_on(client::stats(&ep)).unwrap();
        let downloaded: u64 = reports.iter().map(|r| r.files_downloaded).sum();
        assert_eq!(downloaded, (args.files * args.clients) as u64);
        std::fs::remove_dir_all(tmp.path().join("a-clients")).unwrap();

        let start = Instant::now();
        let children: Vec<_> = (0..args.clients)
            .map(|i| {
                let dst = tmp.path().join(format!("a-rsync/r{i}/"));
                std::fs::create_dir_all(&dst).unwrap();
                Command::new("rsync")
                    .arg("-a")
                    .arg(format!("{}/", spider.display()))
                    .arg(&dst)
                    .spawn()
                    .expect("rsync is installed")
            })
            .collect();
        for mut c in children {
            assert!(c.wait().unwrap().success());
        }
        let rsync = start.elapsed();
        std::fs::remove_dir_all(tmp.path().join("a-rsync")).unwrap();

        println!();
        println!(
            "(a) {} concurrent clients, spider of {} files / {} MB",
            args.clients, args.files, args.total_mb
        );
        println!(
            "    server scans: {}   hash passes: {}   files hashed: {}   (bar: 1 scan, 1 hash pass)",
            stats.scans, stats.hash_passes, stats.files_hashed
        );
        println!(
            "    bytes sent: {:.1} MB on the wire for {:.1} MB of file data ({} chunks compressed, {} raw)",
            mb(stats.bytes_sent),
            mb(stats.raw_bytes_sent),
            stats.chunks_compressed,
            stats.chunks_raw
        );
        println!("    file-sync wall time: {:.2} s", ours.as_secs_f64());
        println!(
            "    {} concurrent `rsync -a` local copies: {:.2} s   ratio file-sync/rsync: {:.2}",
            args.clients,
            rsync.as_secs_f64(),
            ours.as_secs_f64() / rsync.as_secs_f64()
        );
    }

    // (b) one big file.
    {
        let root = tmp.path().join("root-b");
        let spider = root.join("big");
        std::fs::create_dir_all(&spider).unwrap();
        let src = spider.join("blob.bin");
        let size = args.big_mb << 20;
        {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&src).unwrap());
            let mut buf = vec![0u8; 1 << 20];
            let mut seed = 0xfeed_beefu64;
            for _ in 0..args.big_mb {
                fill(&mut buf, &mut seed);
                f.write_all(&buf).unwrap();
            }
        }
        let server = Server::start(&root);
        let ep = server.endpoint();
        // The one scan hashes the file; measured apart from the transfer.
        let t = Instant::now();
        let _ = rt.block_on(client::list_spiders(&ep)).unwrap();
        rt.block_on(async {
            let mut c =
                file_sync::proto::file_sync_client::FileSyncClient::connect(ep.url().to_string())
                    .await
                    .unwrap();
            let mut s = c
                .stream_file_scan(file_sync::proto::ScanRequest {
                    spider: "big".into(),
                    path: String::new(),
                })
                .await
                .unwrap()
                .into_inner();
            while s.message().await.unwrap().is_some() {}
        });
        let scan_time = t.elapsed();
        let rss_before = server.status_kb("VmRSS:");
        let hwm_before = server.status_kb("VmHWM:");
        let peak_rss = Arc::new(AtomicU64::new(rss_before));
        let done = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (peak, done) = (peak_rss.clone(), done.clone());
            let pid = server.child.id();
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                        && let Some(kb) = s
                            .lines()
                            .find_map(|l| l.strip_prefix("VmRSS:"))
                            .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
                    {
                        peak.fetch_max(kb, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        let target = tmp.path().join("b-mirror/big");
        let t = Instant::now();
        let report = rt
            .block_on(client::mirror(
                &ep,
                "big",
                &target,
                &MirrorOptions {
                    chunk_size: file_sync::MAX_CHUNK_BYTES,
                    ..MirrorOptions::default()
                },
            ))
            .expect("mirror");
        let ours = t.elapsed();
        done.store(true, Ordering::Relaxed);
        sampler.join().unwrap();
        let hwm_after = server.status_kb("VmHWM:");
        assert_eq!(report.bytes_downloaded, size);
        std::fs::remove_dir_all(tmp.path().join("b-mirror")).unwrap();

        let cp_dst = tmp.path().join("b-cp.bin");
        let t = Instant::now();
        assert!(
            Command::new("cp")
                .arg(&src)
                .arg(&cp_dst)
                .status()
                .unwrap()
                .success()
        );
        let cp = t.elapsed();
        std::fs::remove_file(&cp_dst).unwrap();

        let tcp_dst = tmp.path().join("b-tcp.bin");
        let t = Instant::now();
        tcp_copy(&src, &tcp_dst);
        let tcp = t.elapsed();
        std::fs::remove_file(&tcp_dst).unwrap();

        let rate = |d: Duration| mb(size) / d.as_secs_f64();
        println!();
        println!("(b) one file of {} MB (incompressible)", args.big_mb);
        println!(
            "    server scan + hash: {:.2} s ({:.0} MB/s), done once and cached",
            scan_time.as_secs_f64(),
            rate(scan_time)
        );
        println!(
            "    file-sync download (verified, renamed into place): {:.2} s = {:.0} MB/s",
            ours.as_secs_f64(),
            rate(ours)
        );
        println!(
            "    baselines: cp {:.2} s = {:.0} MB/s;  127.0.0.1 TCP copy {:.2} s = {:.0} MB/s",
            cp.as_secs_f64(),
            rate(cp),
            tcp.as_secs_f64(),
            rate(tcp)
        );
        println!(
            "    file-sync vs TCP copy: {:.2}x the time;  vs cp: {:.2}x",
            ours.as_secs_f64() / tcp.as_secs_f64(),
            ours.as_secs_f64() / cp.as_secs_f64()
        );
        println!(
            "    server memory: RSS before {} KB, peak RSS sampled during transfer {} KB (growth {} KB); VmHWM {} -> {} KB (growth {} KB)",
            rss_before,
            peak_rss.load(Ordering::Relaxed),
            peak_rss.load(Ordering::Relaxed).saturating_sub(rss_before),
            hwm_before,
            hwm_after,
            hwm_after.saturating_sub(hwm_before)
        );
    }
}

/// Reads `src` and streams it through a 127.0.0.1 TCP socket into `dst`.
fn tcp_copy(src: &Path, dst: &Path) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dst: PathBuf = dst.to_path_buf();
    let receiver = std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        let mut out = std::fs::File::create(dst).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = sock.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).unwrap();
        }
        out.sync_all().unwrap();
    });
    let mut sock = TcpStream::connect(addr).unwrap();
    let mut input = std::fs::File::open(src).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        sock.write_all(&buf[..n]).unwrap();
    }
    drop(sock);
    receiver.join().unwrap();
}
