//! Spiders: a folder synced from file-sync whose `spider.toml` tells the
//! worker how to crawl for one job.
//!
//! ```toml
//! allowed_domains = ["example.com"]          # links to other hosts are dropped
//! include = ['^https?://example\.com/blog/']  # regexes a followed link must match (any)
//! exclude = ['\.pdf$']                        # regexes that drop a link
//! max_pages = 100                             # lowers the job's page cap
//! delay_ms = 250                              # pause between two fetches of one batch
//! user_agent = "ExampleBot/1.0"
//! [fields]                                    # CSS selectors whose text is extracted
//! headline = "h1"
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use file_sync::Remote;

use regex::Regex;
use serde::Deserialize;
use url::Url;

/// The file every spider folder holds.
pub const SPIDER_FILE: &str = "spider.toml";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpiderFile {
    #[serde(default)]
    allowed_domains: Vec<String>,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    max_pages: Option<u32>,
    #[serde(default)]
    delay_ms: u64,
    user_agent: Option<String>,
    #[serde(default)]
    fields: BTreeMap<String, String>,
}

/// A spider's rules, checked and compiled.
#[derive(Debug, Clone)]
pub struct SpiderRules {
    pub name: String,
    allowed_domains: Vec<String>,
    include: Vec<Regex>,
    exclude: Vec<Regex>,
    pub max_pages: Option<u32>,
    pub delay: Duration,
    pub user_agent: Option<String>,
    /// Field name -> CSS selector, both checked.
    pub fields: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpiderError {
    #[error("spider `{name}` could not be synced from file-sync: {reason}")]
    Sync { name: String, reason: String },
    #[error("spider `{name}` has no {SPIDER_FILE}")]
    MissingFile { name: String },
    #[error("spider `{name}`: {SPIDER_FILE} is invalid: {reason}")]
    Invalid { name: String, reason: String },
}

impl SpiderRules {
    pub fn parse(name: &str, text: &str) -> Result<Self, SpiderError> {
        let invalid = |reason: String| SpiderError::Invalid {
            name: name.to_string(),
            reason,
        };
        let file: SpiderFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let compile = |patterns: &[String]| {
            patterns
                .iter()
                .map(|p| Regex::new(p).map_err(|e| invalid(format!("pattern `{p}`: {e}"))))
                .collect::<Result<Vec<_>, _>>()
        };
        for (field, selector) in &file.fields {
            lol_html::Selector::from_str(selector)
                .map_err(|e| invalid(format!("field `{field}`: selector `{selector}`: {e}")))?;
        }
        if file.max_pages == Some(0) {
            return Err(invalid("max_pages must be at least 1".into()));
        }
        Ok(Self {
            name: name.to_string(),
            allowed_domains: file
                .allowed_domains
                .iter()
                .map(|d| d.trim_start_matches('.').to_ascii_lowercase())
                .collect(),
            include: compile(&file.include)?,
            exclude: compile(&file.exclude)?,
            max_pages: file.max_pages,
            delay: Duration::from_millis(file.delay_ms.min(60_000)),
            user_agent: file.user_agent,
            fields: file.fields,
        })
    }

    /// Whether a link found on a page may be followed under this spider.
    pub fn follows(&self, link: &str) -> bool {
        let domain_ok = self.allowed_domains.is_empty()
            || Url::parse(link)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .is_some_and(|host| {
                    self.allowed_domains
                        .iter()
                        .any(|d| host == *d || host.ends_with(&format!(".{d}")))
                });
        domain_ok
            && (self.include.is_empty() || self.include.iter().any(|r| r.is_match(link)))
            && !self.exclude.iter().any(|r| r.is_match(link))
    }
}

/// Syncs spiders into a local folder, one sync at a time per spider (two
/// jobs of one spider must not mirror into one folder at once), and keeps
/// each job's rules so later batches of the job do not sync again.
pub struct SpiderCache {
    file_sync: Remote,
    dir: PathBuf,
    per_spider: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    per_job: Mutex<HashMap<String, Arc<SpiderRules>>>,
}

/// Jobs remembered at most; older entries are dropped (a later batch syncs again).
const JOBS_REMEMBERED: usize = 1024;

impl SpiderCache {
    pub fn new(file_sync: Remote, dir: PathBuf) -> Self {
        Self {
            file_sync,
            dir,
            per_spider: Mutex::default(),
            per_job: Mutex::default(),
        }
    }

    /// The rules of `spider` for `job_id`, syncing the spider first if this
    /// worker has not done so for the job. An error means the job must not run.
    pub async fn rules_for(
        &self,
        job_id: &str,
        spider: &str,
    ) -> Result<Arc<SpiderRules>, SpiderError> {
        if let Some(rules) = self.per_job.lock().expect("spider cache").get(job_id) {
            return Ok(rules.clone());
        }
        let gate = self
            .per_spider
            .lock()
            .expect("spider cache")
            .entry(spider.to_string())
            .or_default()
            .clone();
        let _one_sync_at_a_time = gate.lock().await;
        if let Some(rules) = self.per_job.lock().expect("spider cache").get(job_id) {
            return Ok(rules.clone());
        }
        let target = self.dir.join(spider);
        let report =
            file_sync::client::mirror(&self.file_sync, spider, &target, &Default::default())
                .await
                .map_err(|e| SpiderError::Sync {
                    name: spider.to_string(),
                    reason: e.to_string(),
                })?;
        tracing::info!(
            spider,
            job_id,
            downloaded = report.files_downloaded,
            skipped = report.files_skipped,
            "spider synced"
        );
        let rules = Arc::new(load(spider, &target).await?);
        let mut jobs = self.per_job.lock().expect("spider cache");
        if jobs.len() >= JOBS_REMEMBERED {
            jobs.clear();
        }
        jobs.insert(job_id.to_string(), rules.clone());
        Ok(rules)
    }
}

async fn load(name: &str, folder: &Path) -> Result<SpiderRules, SpiderError> {
    let text = tokio::fs::read_to_string(folder.join(SPIDER_FILE))
        .await
        .map_err(|_| SpiderError::MissingFile {
            name: name.to_string(),
        })?;
    SpiderRules::parse(name, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_filter_links_by_domain_include_and_exclude() {
        let rules = SpiderRules::parse(
            "s",
            r#"
            allowed_domains = ["example.com"]
            include = ['/blog/', '/news/']
            exclude = ['\.pdf$']
            max_pages = 10
            delay_ms = 5
            user_agent = "Bot/1"
            [fields]
            headline = "h1"
            "#,
        )
        .unwrap();
        assert!(rules.follows("http://example.com/blog/a"));
        assert!(rules.follows("http://www.example.com/news/b"));
        assert!(!rules.follows("http://example.com/about"));
        assert!(!rules.follows("http://example.com/blog/a.pdf"));
        assert!(!rules.follows("http://other.org/blog/a"));
        assert_eq!(rules.max_pages, Some(10));
        assert_eq!(rules.delay, Duration::from_millis(5));
        assert_eq!(rules.fields["headline"], "h1");
    }

    #[test]
    fn invalid_spider_files_are_explained() {
        for (text, needle) in [
            ("include = ['(']", "pattern `(`"),
            ("[fields]\nx = '<<'", "selector `<<`"),
            ("max_pages = 0", "max_pages"),
            ("surprise = 1", "surprise"),
        ] {
            let err = SpiderRules::parse("s", text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
