//! Every way a path could leave its root is refused: by the server for
//! requests and uploads, and by the client for a server's answers.

mod common;

use crawler_core::ErrorCode;
use std::pin::Pin;

use common::{InProcess, write_file, write_spider_v1};
use file_sync::Remote;
use file_sync::client::{self, MirrorOptions, SyncError};
use file_sync::paths::EscapeReason;
use file_sync::proto::file_sync_client::FileSyncClient;
use file_sync::proto::file_sync_server::{FileSync, FileSyncServer};
use file_sync::proto::{
    DownloadChunk, DownloadRequest, FileEntry, ListSpidersRequest, ListSpidersResponse, ScanChunk,
    ScanRequest, ScanSummary, StatsRequest, StatsResponse, UploadBegin, UploadCommit, UploadFile,
    UploadRequest, UploadResponse, upload_request,
};
use futures::Stream;
use tonic::{Code, Request, Response, Status, Streaming};

async fn raw_client(server: &InProcess) -> FileSyncClient<tonic::transport::Channel> {
    FileSyncClient::connect(server.url()).await.unwrap()
}

async fn download_status(
    client: &mut FileSyncClient<tonic::transport::Channel>,
    spider: &str,
    path: &str,
) -> Status {
    let request = DownloadRequest {
        spider: spider.into(),
        path: path.into(),
        ..Default::default()
    };
    match client.stream_file_download(request).await {
        Ok(mut stream) => match stream.get_mut().message().await {
            Err(status) => status,
            Ok(m) => panic!("{spider}/{path:?} was served: {m:?}"),
        },
        Err(status) => status,
    }
}

#[tokio::test]
async fn the_server_refuses_paths_that_escape() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    write_spider_v1(&root.join("quotes"));
    write_file(tmp.path(), "secret.txt", b"do not serve", 0o644);
    let server = InProcess::start(&root).await;
    let mut c = raw_client(&server).await;

    for path in [
        "../secret.txt",
        "../../secret.txt",
        "crawlab_project/../../secret.txt",
        "/etc/passwd",
        "",
        "a\0b",
        "./spider.toml",
        "bin//run.sh",
    ] {
        let status = download_status(&mut c, "quotes", path).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{path:?}: {status:?}");
        assert_eq!(
            ErrorCode::of(&status),
            Some(ErrorCode::PathEscapesRoot),
            "{path:?}: {status:?}"
        );
    }
    for spider in ["..", "../root", "/etc", "a/b", "", "quotes\0"] {
        let status = download_status(&mut c, spider, "spider.toml").await;
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{spider:?}: {status:?}"
        );
        let scan = c
            .stream_file_scan(ScanRequest {
                spider: spider.into(),
                path: String::new(),
            })
            .await;
        assert_eq!(
            scan.unwrap_err().code(),
            Code::InvalidArgument,
            "{spider:?}"
        );
    }
    let scan = c
        .stream_file_scan(ScanRequest {
            spider: "quotes".into(),
            path: "../".into(),
        })
        .await;
    assert_eq!(
        ErrorCode::of(&scan.unwrap_err()),
        Some(ErrorCode::PathEscapesRoot)
    );
}

#[tokio::test]
async fn links_out_of_the_root_are_refused_by_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    write_file(tmp.path(), "outside/secret.txt", b"do not serve", 0o644);
    // A spider whose folder is a link to outside the root.
    std::fs::create_dir_all(&root).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("outside"), root.join("linked")).unwrap();
    // A spider holding a link to a file outside the root.
    write_spider_v1(&root.join("leaky"));
    std::os::unix::fs::symlink(
        tmp.path().join("outside/secret.txt"),
        root.join("leaky/crawlab_project/secret.txt"),
    )
    .unwrap();
    let server = InProcess::start(&root).await;
    let mut c = raw_client(&server).await;

    for (spider, path) in [
        ("linked", "secret.txt"),
        ("leaky", "crawlab_project/secret.txt"),
    ] {
        let status = download_status(&mut c, spider, path).await;
        assert_eq!(
            ErrorCode::of(&status),
            Some(ErrorCode::PathEscapesRoot),
            "{spider}/{path}: {status:?}"
        );
    }
    let target = tmp.path().join("worker/leaky");
    match client::mirror(
        &server.endpoint(),
        "leaky",
        &target,
        &MirrorOptions::default(),
    )
    .await
    {
        Err(SyncError::Server { code, message }) => {
            assert_eq!(code, Code::InvalidArgument);
            assert!(message.contains("symbolic link"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn upload_of(spider: &str, files: &[(&str, &[u8])]) -> Vec<UploadRequest> {
    let msg = |kind| UploadRequest { kind: Some(kind) };
    let mut out = vec![msg(upload_request::Kind::Begin(UploadBegin {
        spider: spider.into(),
    }))];
    for (path, data) in files {
        out.push(msg(upload_request::Kind::File(UploadFile {
            path: (*path).into(),
            is_dir: false,
            mode: 0o644,
            size: data.len() as u64,
            hash: blake3::hash(data).to_hex().to_string(),
        })));
        out.push(msg(upload_request::Kind::Data(data.to_vec())));
    }
    out.push(msg(upload_request::Kind::Commit(UploadCommit {
        entries: files.len() as u64,
    })));
    out
}

#[tokio::test]
async fn an_upload_that_escapes_is_refused_and_publishes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    write_spider_v1(&root.join("quotes"));
    let before = common::snapshot(&root.join("quotes"));
    let server = InProcess::start(&root).await;
    let mut c = raw_client(&server).await;

    for bad in ["../evil.py", "/tmp/evil.py", "a/../../evil.py", "a\0b"] {
        let upload = upload_of("quotes", &[("ok.py", b"ok"), (bad, b"evil")]);
        let status = c
            .upload(futures::stream::iter(upload))
            .await
            .expect_err(bad);
        assert_eq!(
            ErrorCode::of(&status),
            Some(ErrorCode::PathEscapesRoot),
            "{bad:?}: {status:?}"
        );
    }
    for bad_spider in ["..", "a/b", ""] {
        let upload = upload_of(bad_spider, &[("ok.py", b"ok")]);
        let status = c.upload(futures::stream::iter(upload)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
    }
    // A hash that does not match the data is refused too.
    let mut upload = upload_of("quotes", &[("ok.py", b"ok")]);
    if let Some(upload_request::Kind::File(f)) = &mut upload[1].kind {
        f.hash = blake3::hash(b"other").to_hex().to_string();
    }
    assert!(c.upload(futures::stream::iter(upload)).await.is_err());
    // An upload cut short before its commit publishes nothing.
    let mut upload = upload_of("quotes", &[("ok.py", b"ok")]);
    upload.pop();
    assert_eq!(
        c.upload(futures::stream::iter(upload))
            .await
            .unwrap_err()
            .code(),
        Code::Aborted
    );

    assert_eq!(common::snapshot(&root.join("quotes")), before);
    assert!(!tmp.path().join("evil.py").exists());
    assert!(!root.join("evil.py").exists());
    assert!(
        !root.join(".staging").exists()
            || std::fs::read_dir(root.join(".staging"))
                .unwrap()
                .next()
                .is_none()
    );
}

/// A server that answers a scan with whatever listing the test gives it.
struct Malicious {
    entries: Vec<FileEntry>,
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl FileSync for Malicious {
    type StreamFileScanStream = Boxed<ScanChunk>;
    type StreamFileDownloadStream = Boxed<DownloadChunk>;

    async fn stream_file_scan(
        &self,
        _: Request<ScanRequest>,
    ) -> Result<Response<Self::StreamFileScanStream>, Status> {
        let chunks = vec![
            Ok(ScanChunk {
                entries: self.entries.clone(),
                summary: None,
            }),
            Ok(ScanChunk {
                entries: vec![],
                summary: Some(ScanSummary {
                    total_entries: self.entries.len() as u64,
                    total_bytes: 0,
                    scan_id: "evil".into(),
                }),
            }),
        ];
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }
    async fn stream_file_download(
        &self,
        _: Request<DownloadRequest>,
    ) -> Result<Response<Self::StreamFileDownloadStream>, Status> {
        panic!("a client must not download anything from a listing it refused")
    }
    async fn upload(
        &self,
        _: Request<Streaming<UploadRequest>>,
    ) -> Result<Response<UploadResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn list_spiders(
        &self,
        _: Request<ListSpidersRequest>,
    ) -> Result<Response<ListSpidersResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn stats(&self, _: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        Err(Status::unimplemented(""))
    }
}

fn evil_file(path: &str) -> FileEntry {
    FileEntry {
        path: path.into(),
        is_dir: false,
        size: 4,
        mtime_ms: 0,
        mode: 0o755,
        hash: blake3::hash(b"evil").to_hex().to_string(),
    }
}

#[tokio::test]
async fn the_client_refuses_a_malicious_listing_before_writing_anything() {
    for (bad, reason) in [
        ("../x", EscapeReason::ParentDir),
        ("ok/../../x", EscapeReason::ParentDir),
        ("/tmp/x", EscapeReason::Absolute),
        ("", EscapeReason::Empty),
        ("a\0b", EscapeReason::Nul),
        ("..\\x", EscapeReason::Backslash),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let service = FileSyncServer::new(Malicious {
            entries: vec![evil_file("ok.txt"), evil_file(bad)],
        });
        let serving = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    stop.clone().cancelled_owned(),
                ),
        );
        let target = tmp.path().join("deep/target");

        let result = client::mirror(
            &Remote::plaintext(format!("http://{addr}")),
            "quotes",
            &target,
            &MirrorOptions::default(),
        )
        .await;

        match result {
            Err(SyncError::PathEscapesRoot(e)) => assert_eq!(e.reason, reason, "{bad:?}"),
            other => panic!("{bad:?}: expected PathEscapesRoot, got {other:?}"),
        }
        assert!(!tmp.path().join("deep/x").exists() && !tmp.path().join("x").exists());
        assert!(
            std::fs::read_dir(&target).unwrap().next().is_none(),
            "{bad:?}: nothing written, not even the valid entries"
        );
        stop.cancel();
        serving.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn the_client_refuses_a_listing_with_a_file_under_an_unlisted_folder() {
    // `a/b` without `a`: a server bug or an attempt to write through a
    // local link named `a`. Refused as malformed.
    let tmp = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(FileSyncServer::new(Malicious {
                entries: vec![evil_file("a/b")],
            }))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            ),
    );
    let result = client::mirror(
        &Remote::plaintext(format!("http://{addr}")),
        "quotes",
        &tmp.path().join("t"),
        &MirrorOptions::default(),
    )
    .await;
    assert!(matches!(result, Err(SyncError::Protocol(_))), "{result:?}");
    stop.cancel();
}

#[tokio::test]
async fn invalid_spider_names_are_refused_by_the_client() {
    let tmp = tempfile::tempdir().unwrap();
    for bad in ["..", "a/b", "", "a b"] {
        let r = client::mirror(
            &Remote::plaintext("http://127.0.0.1:1"),
            bad,
            tmp.path(),
            &MirrorOptions::default(),
        )
        .await;
        assert!(matches!(r, Err(SyncError::InvalidSpiderName(_))), "{bad:?}");
    }
}
