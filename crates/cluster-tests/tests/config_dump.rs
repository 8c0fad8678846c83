//! `--dump-config` on every service binary: it prints the configuration the
//! service would run with, as JSON, with every password hidden, whether the
//! password came from a flag or from the environment, and exits without
//! touching an engine.

use std::process::Command;

use cluster_tests::processes::binary;

/// Runs `service --dump-config` with `args` and `env`, and returns the dump.
fn dump(service: &str, args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let output = Command::new(binary(service))
        .arg("--dump-config")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run the service");
    assert!(
        output.status.success(),
        "{service}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("UTF-8");
    for secret in ["flag-secret", "env-secret"] {
        assert!(
            !stdout.contains(secret),
            "{service} printed a password:\n{stdout}"
        );
    }
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{service}: {e}:\n{stdout}"))
}

#[test]
fn every_service_dumps_its_configuration_with_passwords_hidden() {
    let gateway = dump(
        "ws-gateway",
        &["--amqp-url", "amqp://crawler:flag-secret@mq:5672/%2f"],
        &[
            ("CRAWLER__REDIS_URL", "redis://:env-secret@cache:6379/"),
            (
                "CRAWLER__DATABASE_URL",
                "postgres://crawler:env-secret@db/crawler",
            ),
        ],
    );
    assert_eq!(
        gateway["messaging"]["amqp_url"],
        "amqp://crawler:***@mq:5672/%2f"
    );
    assert_eq!(
        gateway["messaging"]["redis_url"],
        "redis://:***@cache:6379/"
    );
    assert_eq!(
        gateway["store"]["database_url"],
        "postgres://crawler:***@db/crawler"
    );

    let master = dump(
        "master",
        &[
            "--lock-server",
            "http://op:flag-secret@lock-1:50051,http://lock-2:50051",
        ],
        &[("CRAWLER__AMQP_URL", "amqp://crawler:env-secret@mq/%2f")],
    );
    assert_eq!(
        master["lock_server"],
        serde_json::json!(["http://op:***@lock-1:50051/", "http://lock-2:50051/"])
    );
    assert_eq!(master["engines"]["amqp_url"], "amqp://crawler:***@mq/%2f");

    let lock = dump(
        "lock-server",
        &[
            "--database-url",
            "postgres://crawler:flag-secret@db/crawler",
        ],
        &[],
    );
    assert_eq!(
        lock["store"]["database_url"],
        "postgres://crawler:***@db/crawler"
    );

    let worker = dump(
        "worker",
        &["--master", "http://op:flag-secret@master:50052"],
        &[("WORKER__FILE_SYNC", "http://op:env-secret@file-sync:50053")],
    );
    assert_eq!(
        worker["masters"],
        serde_json::json!(["http://op:***@master:50052/"])
    );
    assert_eq!(worker["file_sync"], "http://op:***@file-sync:50053/");

    let file_sync = dump("file-sync", &["--root", "/srv/spiders"], &[]);
    assert_eq!(file_sync["root"], "/srv/spiders");
}

#[test]
fn a_refused_setting_is_reported_before_any_engine_is_awaited() {
    // Engines nobody listens on: a service that waited for them would hang.
    let unreachable = [
        ("CRAWLER__AMQP_URL", "amqp://guest:guest@127.0.0.1:9/%2f"),
        ("CRAWLER__REDIS_URL", "redis://127.0.0.1:9/"),
        (
            "CRAWLER__DATABASE_URL",
            "postgres://postgres@127.0.0.1:9/crawler",
        ),
    ];
    for (service, args, complaint) in [
        (
            "ws-gateway",
            ["--max-frame-bytes", "10"],
            "--max-frame-bytes",
        ),
        ("lock-server", ["--leader-ttl-ms", "1"], "--leader-ttl-ms"),
        ("master", ["--batch-size", "0"], "--batch-size"),
    ] {
        let mut child = Command::new(binary(service))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .envs(unreachable)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run the service");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{service} waited for its engines instead of refusing {complaint}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(
            !status.success(),
            "{service} started with a refused setting"
        );
        assert!(stderr.contains(complaint), "{service}: {stderr}");
    }
}
