use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use crawlctl::client::{self, Failure};
use crawlctl::embedded::{EmbeddedCluster, EmbeddedOptions};
use crawlctl::sample_site::SampleSite;
use crawler_adapters::StoreArgs;
use crawler_core::protocol::SubmitRequest;
use crawler_core::tls::TlsArgs;
use indicatif::{ProgressBar, ProgressStyle};
use ipnet::IpNet;

#[derive(Parser)]
#[command(
    name = "crawlctl",
    version,
    about = "Command-line client of the crawler"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Crawl URL to DEPTH. Without --gateway, runs every service in this process.
    Crawl {
        url: String,
        /// Crawl depth: 0 fetches the URL alone, 1 also the pages it links to, and so on.
        #[arg(long, short, default_value_t = 1)]
        depth: u32,
        /// Gateway websocket URL, e.g. ws://127.0.0.1:8080/ws. Without it, an embedded cluster runs in this process.
        #[arg(long, env = "CRAWLCTL__GATEWAY")]
        gateway: Option<String>,
        /// Print the full result as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Networks the embedded cluster may crawl although they are loopback or private (comma-separated CIDRs).
        #[arg(long = "allow-network", value_delimiter = ',')]
        allow_network: Vec<IpNet>,
        /// Page cap of this job (the gateway's default when unset).
        #[arg(long)]
        max_pages: Option<u32>,
        /// More hosts in scope besides the start URL's host (comma-separated).
        #[arg(long = "allow-host", value_delimiter = ',')]
        allowed_hosts: Vec<String>,
        /// Also crawl subdomains of the in-scope hosts.
        #[arg(long)]
        include_subdomains: bool,
        /// Job id sent to the gateway; random when unset.
        #[arg(long)]
        job_id: Option<String>,
        /// Spider whose rules apply (needs a cluster whose workers reach file-sync).
        #[arg(long)]
        spider: Option<String>,
        /// Fetch pages robots.txt disallows (workers whose operator forces robots.txt refuse them still).
        #[arg(long)]
        ignore_robots: bool,
        /// API token for the gateway (`crawlctl token create`), sent as
        /// `Authorization: Bearer`; not needed by the embedded cluster.
        #[arg(long, env = "CRAWLCTL__TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Write every fetched response to FILE as WARC 1.1 records (with the
        /// embedded cluster; against a cluster, a job with `"warc": true`
        /// leaves its records in the workers' `--warc-dir`).
        #[arg(long, value_name = "FILE", conflicts_with = "gateway")]
        warc: Option<std::path::PathBuf>,
    },
    /// Make, list and revoke the gateway's API tokens, in the job store.
    Token {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Publish, list and fetch spiders on a file-sync server.
    Spider {
        /// file-sync address.
        #[arg(
            long,
            env = "CRAWLCTL__FILE_SYNC",
            default_value = "http://127.0.0.1:50053",
            global = true
        )]
        file_sync: String,
        /// An operator's certificate (`crawlctl certs` writes `operator.pem`),
        /// or --grpc-plaintext for a file-sync without TLS.
        #[command(flatten)]
        tls: TlsArgs,
        #[command(subcommand)]
        command: SpiderCommand,
    },
    /// Write a cluster CA (kept when DIR has one) and a certificate per role
    /// (master, worker, lock-server, file-sync, operator) for mutual TLS,
    /// and `secrets.yaml` with them as Kubernetes Secrets.
    Certs {
        /// Folder to write into.
        #[arg(long)]
        out: std::path::PathBuf,
        /// Host names and addresses the services are dialled by, besides
        /// localhost (comma-separated), e.g. masters,lock-server,file-sync.
        #[arg(long = "name", value_delimiter = ',')]
        names: Vec<String>,
    },
    /// Exit 0 when URL (http://host:port/path) answers 2xx, else 1: the
    /// healthcheck of the container image, which has no HTTP client of its own.
    Probe { url: String },
    /// Serve a small sample site on loopback and crawl it with the embedded cluster: no network needed.
    Demo {
        #[arg(long, short, default_value_t = 2)]
        depth: u32,
        /// Print the full result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a token and print it once, on stdout: it cannot be shown again.
    Create {
        /// Unique name of the token, to revoke it by.
        #[arg(long)]
        name: String,
        /// Tenant whose jobs the token's clients own; the name when unset.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// List every token (never their secrets).
    List,
    /// Revoke a token: gateways refuse it within seconds.
    Revoke { name: String },
}

#[derive(Subcommand)]
enum SpiderCommand {
    /// Publish DIR as a spider; workers see the new version all at once.
    Push {
        dir: std::path::PathBuf,
        /// Spider name; the folder's name when unset.
        #[arg(long)]
        name: Option<String>,
    },
    /// List the spiders the server holds.
    List,
    /// Mirror spider NAME into DIR exactly (files the server lacks are deleted from DIR).
    Pull {
        name: String,
        dir: std::path::PathBuf,
    },
}

/// Exit codes: 0 done; 2 bad input (clap's code for bad arguments too);
/// 3 refused by the gateway; 4 the crawl failed; 5 connection lost; 1 any
/// other error (see `client::Failure`).
#[tokio::main]
async fn main() {
    let _telemetry = crawler_core::telemetry::init_tracing("crawlctl", "warn", Default::default());
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("error: {e:#}");
        let code = e.downcast_ref::<Failure>().map_or(1, Failure::exit_code);
        std::process::exit(code);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Crawl {
            url,
            depth,
            gateway,
            json,
            allow_network,
            max_pages,
            allowed_hosts,
            include_subdomains,
            job_id,
            spider,
            ignore_robots,
            token,
            warc,
        } => {
            let request = SubmitRequest {
                job_id: job_id.unwrap_or_else(|| format!("cli-{}", uuid::Uuid::new_v4().simple())),
                url,
                depth,
                max_pages,
                allowed_hosts,
                include_subdomains,
                spider,
                respect_robots: !ignore_robots,
                warc: warc.is_some(),
            };
            match gateway {
                Some(ws_url) => {
                    let gateway = client::Gateway { url: ws_url, token };
                    crawl_and_print(&gateway, &request, json).await
                }
                None => {
                    let records = match &warc {
                        Some(_) => Some(tempfile::tempdir().context("a folder for WARC records")?),
                        None => None,
                    };
                    let cluster = EmbeddedCluster::start(EmbeddedOptions {
                        allow_network,
                        warc_dir: records.as_ref().map(|dir| dir.path().to_path_buf()),
                        ..Default::default()
                    })
                    .await
                    .context("starting the embedded cluster")?;
                    let outcome = crawl_and_print(&cluster.gateway(), &request, json).await;
                    cluster.stop().await;
                    outcome?;
                    match (warc, records) {
                        (Some(file), Some(dir)) => crawlctl::warc::gather(dir.path(), &file),
                        _ => Ok(()),
                    }
                }
            }
        }
        Command::Token { mut store, command } => {
            store.read_url_file()?;
            token(&store.database_url, command).await
        }
        Command::Spider {
            file_sync,
            tls,
            command,
        } => {
            let remote = file_sync::Remote::new(file_sync, tls.load()?);
            spider(&remote, command).await
        }
        Command::Certs { out, names } => {
            let written = crawlctl::certs::write_cluster_certs(&out, &names)?;
            if written.ca_made {
                eprintln!("made a new cluster CA in {}", out.display());
            } else {
                eprintln!("kept the cluster CA of {}", out.display());
            }
            for file in written.files {
                println!("{}", file.display());
            }
            Ok(())
        }
        Command::Probe { url } => crawlctl::probe::check(&url).await,
        Command::Demo { depth, json } => {
            let site = SampleSite::start()
                .await
                .context("starting the sample site")?;
            eprintln!("sample site at {}", site.start_url());
            let cluster = EmbeddedCluster::start(EmbeddedOptions {
                allow_network: vec!["127.0.0.0/8".parse().expect("literal network")],
                ..Default::default()
            })
            .await
            .context("starting the embedded cluster")?;
            let request = SubmitRequest {
                job_id: "demo".into(),
                url: site.start_url(),
                depth,
                max_pages: None,
                allowed_hosts: Vec::new(),
                include_subdomains: false,
                spider: None,
                respect_robots: true,
                warc: false,
            };
            let outcome = crawl_and_print(&cluster.gateway(), &request, json).await;
            cluster.stop().await;
            outcome
        }
    }
}

async fn token(database_url: &str, command: TokenCommand) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match command {
        TokenCommand::Create { name, tenant } => {
            let made =
                crawlctl::tokens::create(database_url, &name, tenant.as_deref(), &mut stdout)
                    .await?;
            eprintln!(
                "token `{}` of tenant `{}` made; keep it now, it is not shown again",
                made.name, made.tenant
            );
        }
        TokenCommand::List => crawlctl::tokens::list(database_url, &mut stdout).await?,
        TokenCommand::Revoke { name } => {
            crawlctl::tokens::revoke(database_url, &name).await?;
            eprintln!("token `{name}` revoked");
        }
    }
    Ok(())
}

async fn spider(file_sync: &file_sync::Remote, command: SpiderCommand) -> anyhow::Result<()> {
    use file_sync::client;
    match command {
        SpiderCommand::Push { dir, name } => {
            let name = match name {
                Some(name) => name,
                None => dir
                    .canonicalize()
                    .with_context(|| format!("reading {}", dir.display()))?
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_owned)
                    .context("the folder has no usable name; pass --name")?,
            };
            let report = client::push_folder(file_sync, &name, &dir).await?;
            println!(
                "pushed spider `{name}`: {} entries, {} bytes (version {})",
                report.entries, report.bytes, report.scan_id
            );
        }
        SpiderCommand::List => {
            for name in client::list_spiders(file_sync).await? {
                println!("{name}");
            }
        }
        SpiderCommand::Pull { name, dir } => {
            let report = client::mirror(file_sync, &name, &dir, &Default::default()).await?;
            println!(
                "pulled spider `{name}` into {}: {} downloaded, {} unchanged, {} deleted",
                dir.display(),
                report.files_downloaded,
                report.files_skipped,
                report.entries_deleted
            );
        }
    }
    Ok(())
}

async fn crawl_and_print(
    gateway: &client::Gateway,
    request: &SubmitRequest,
    json: bool,
) -> anyhow::Result<()> {
    // Drawn only when stderr is a terminal (indicatif hides it otherwise).
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template(
            "{spinner} {elapsed_precise} depth {msg} · {pos} pages · {per_sec}",
        )
        .expect("a valid template"),
    );
    bar.set_message("0");
    bar.enable_steady_tick(Duration::from_millis(120));
    let crawled = client::crawl(gateway, request, |p| {
        bar.set_position(u64::from(p.pages_done));
        bar.set_message(p.current_depth.to_string());
    })
    .await;
    bar.finish_and_clear();
    let result = crawled?;
    if json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print!("{}", client::summarize(&result));
    }
    Ok(())
}
