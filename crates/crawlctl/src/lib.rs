//! crawlctl: the crawler's command-line client, the one-process embedded
//! cluster, and a small sample site to crawl without any network.

pub mod certs;
pub mod client;
pub mod embedded;
pub mod probe;
pub mod sample_site;
pub mod tokens;
pub mod warc;
