//! WARC 1.1 records of the responses a job asked to keep (`"warc": true`):
//! a `response` record per fetched page, appended to `DIR/JOB.WORKER.warc`
//! in the worker's `--warc-dir`, after a `warcinfo` record that starts each
//! file. A batch's records are written together, when the batch ends and
//! before its result is sent, so a job's files are complete once the job is.
//!
//! The block of a response record is the HTTP response as this worker read
//! it: status line and headers as received, and the body after any
//! Content-Encoding was decoded. That header and Transfer-Encoding are left
//! out and Content-Length states the decoded body's length, so a replay tool
//! reads the body as it stands. A page reached through redirects is recorded
//! under the URL of its final response.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use warc::{RecordBuilder, RecordType, WarcHeader, WarcWriter};

/// A response as it was read, to be recorded.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// The URL of the final response (after redirects).
    pub url: String,
    pub version: &'static str,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum WarcWriteError {
    #[error("cannot make a WARC record: {0}")]
    Record(#[from] warc::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Headers that described the body as it travelled, not as it is kept.
const TRANSFER_HEADERS: [&str; 3] = ["content-encoding", "transfer-encoding", "content-length"];

pub struct WarcArchive {
    dir: PathBuf,
    worker_id: String,
    /// Files this worker started (and wrote a `warcinfo` to); held while
    /// appending, so appends to one file are made one at a time.
    started: Mutex<HashSet<PathBuf>>,
}

impl WarcArchive {
    pub fn new(dir: &Path, worker_id: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            worker_id: worker_id.to_string(),
            started: Mutex::default(),
        })
    }

    /// Where this worker keeps the records of `job_id`.
    pub fn file_of(&self, job_id: &str) -> PathBuf {
        self.dir.join(format!("{job_id}.{}.warc", self.worker_id))
    }

    /// Appends a response record for each of `responses`, in one write.
    pub fn append(&self, job_id: &str, responses: &[RawResponse]) -> Result<(), WarcWriteError> {
        if responses.is_empty() {
            return Ok(());
        }
        let path = self.file_of(job_id);
        // The records are made before the lock is taken: only the write,
        // and a file's first `warcinfo`, wait for other batches.
        let mut records = Vec::new();
        let mut writer = WarcWriter::new(&mut records);
        for response in responses {
            writer.write(&response_record(response)?)?;
        }
        let mut started = self.started.lock().expect("warc files");
        let mut bytes = Vec::new();
        if !started.contains(&path) {
            WarcWriter::new(&mut bytes).write(&warcinfo(&self.worker_id, job_id)?)?;
        }
        bytes.extend_from_slice(&records);
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        file.write_all(&bytes)?;
        started.insert(path);
        Ok(())
    }
}

fn warcinfo(
    worker_id: &str,
    job_id: &str,
) -> Result<warc::Record<warc::BufferedBody>, warc::Error> {
    let fields = format!(
        "software: crawler/{}\r\nformat: WARC File Format 1.1\r\nconformsTo: http://iipc.github.io/warc-specifications/specifications/warc-format/warc-1.1/\r\nisPartOf: {job_id}\r\nhostname: {worker_id}\r\n",
        env!("CARGO_PKG_VERSION")
    );
    RecordBuilder::default()
        .version("1.1".to_string())
        .warc_type(RecordType::WarcInfo)
        .header(WarcHeader::ContentType, "application/warc-fields")
        .body(fields.into_bytes())
        .build()
}

fn response_record(
    response: &RawResponse,
) -> Result<warc::Record<warc::BufferedBody>, warc::Error> {
    RecordBuilder::default()
        .version("1.1".to_string())
        .warc_type(RecordType::Response)
        .header(WarcHeader::TargetURI, response.url.as_bytes())
        .header(WarcHeader::ContentType, "application/http;msgtype=response")
        .body(http_block(response))
        .build()
}

/// The HTTP response as kept: status line, headers, the decoded body.
fn http_block(response: &RawResponse) -> Vec<u8> {
    let mut block = Vec::with_capacity(response.body.len() + 512);
    block.extend_from_slice(
        format!(
            "{} {} {}\r\n",
            response.version, response.status, response.reason
        )
        .as_bytes(),
    );
    for (name, value) in &response.headers {
        if TRANSFER_HEADERS.contains(&name.as_str()) {
            continue;
        }
        block.extend_from_slice(name.as_bytes());
        block.extend_from_slice(b": ");
        block.extend_from_slice(value);
        block.extend_from_slice(b"\r\n");
    }
    block.extend_from_slice(format!("content-length: {}\r\n\r\n", response.body.len()).as_bytes());
    block.extend_from_slice(&response.body);
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(url: &str, body: &str) -> RawResponse {
        RawResponse {
            url: url.into(),
            version: "HTTP/1.1",
            status: 200,
            reason: "OK".into(),
            headers: vec![
                ("content-type".into(), b"text/html".to_vec()),
                ("content-encoding".into(), b"gzip".to_vec()),
                ("content-length".into(), b"17".to_vec()),
            ],
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn records_read_back_with_their_urls_and_decoded_bodies() {
        let dir = tempfile::tempdir().unwrap();
        let archive = WarcArchive::new(dir.path(), "w1").unwrap();
        archive
            .append("job", &[response("http://a.test/", "<p>one</p>")])
            .unwrap();
        archive
            .append("job", &[response("http://a.test/two", "<p>two</p>")])
            .unwrap();
        let file = archive.file_of("job");
        // (The crate's `from_path` opens for writing: read through a reader.)
        let reader = std::io::BufReader::new(std::fs::File::open(&file).unwrap());
        let records: Vec<_> = warc::WarcReader::new(reader)
            .iter_records()
            .map(|r| r.unwrap())
            .collect();
        let types: Vec<String> = records.iter().map(|r| r.warc_type().to_string()).collect();
        assert_eq!(types, ["warcinfo", "response", "response"]);
        assert!(records.iter().all(|r| r.warc_version() == "1.1"));
        let second = &records[2];
        assert_eq!(
            second.header(WarcHeader::TargetURI).unwrap(),
            "http://a.test/two"
        );
        let block = String::from_utf8(second.body().to_vec()).unwrap();
        assert!(block.starts_with("HTTP/1.1 200 OK\r\n"), "{block}");
        assert!(block.contains("content-type: text/html\r\n"));
        assert!(!block.contains("gzip"), "the body is kept decoded: {block}");
        assert!(
            block.ends_with("content-length: 10\r\n\r\n<p>two</p>"),
            "{block}"
        );
    }
}
