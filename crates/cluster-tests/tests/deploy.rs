//! The deployment files are valid: the Kubernetes manifests render with
//! kustomize and every object validates, offline, against the Kubernetes
//! API's schema; the compose files parse, alone and with the local-images
//! override. (`scripts/compose-test` runs the compose cluster for real.)

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn venv_tool(name: &str) -> PathBuf {
    let path = repo().join("target/py/bin").join(name);
    assert!(
        path.exists(),
        "{name} is missing: run scripts/test, which installs it into target/py"
    );
    path
}

fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_kubernetes_manifests_render_and_validate() {
    let rendered = run(Command::new("kubectl")
        .args(["kustomize"])
        .arg(repo().join("deploy/overlays/dev")));
    for (kind, name) in [
        ("Deployment", "gateway"),
        ("Deployment", "master"),
        ("Deployment", "worker"),
        ("Deployment", "lock-server"),
        ("Deployment", "file-sync"),
        ("HorizontalPodAutoscaler", "gateway"),
        ("HorizontalPodAutoscaler", "worker"),
        ("PodDisruptionBudget", "master"),
        ("StatefulSet", "postgres"),
        ("StatefulSet", "rabbitmq"),
        ("StatefulSet", "redis"),
    ] {
        let found = rendered.split("\n---\n").any(|object| {
            object.contains(&format!("kind: {kind}\n"))
                && object.contains(&format!("\n  name: {name}\n"))
        });
        assert!(found, "no {kind} {name} in the dev overlay");
    }
    let file = tempfile::NamedTempFile::new().expect("a temp file");
    std::fs::write(file.path(), &rendered).expect("write the manifests");
    let report = run(Command::new(venv_tool("kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", "1.31.0"])
        .arg(file.path()));
    assert!(!report.contains("ERROR"), "{report}");
}

#[test]
fn the_compose_files_validate_alone_and_with_the_local_override() {
    let compose = venv_tool("podman-compose");
    let alone = run(Command::new(&compose).current_dir(repo()).args([
        "-f",
        "docker-compose.yml",
        "config",
    ]));
    for service in [
        "haproxy:",
        "gateway-1:",
        "gateway-2:",
        "master-1:",
        "master-2:",
        "worker-1:",
        "worker-2:",
        "worker-3:",
        "lock-1:",
        "lock-2:",
        "file-sync:",
        "postgres:",
        "redis:",
        "rabbitmq:",
    ] {
        assert!(
            alone.contains(&format!("  {service}\n")),
            "no {service} service"
        );
    }
    let local = run(Command::new(&compose).current_dir(repo()).args([
        "-f",
        "docker-compose.yml",
        "-f",
        "deploy/compose/local-images.yml",
        "config",
    ]));
    assert!(local.contains("localhost/crawler:local"), "{local}");
    assert!(local.contains("WORKER__ALLOW_NETWORK"), "{local}");
}

#[test]
fn the_dashboard_queries_only_metrics_the_services_declare() {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/crawler.json"))
            .expect("the dashboard"),
    )
    .expect("the dashboard is JSON");
    let declared: String = [
        "core",
        "ws-gateway",
        "master",
        "worker",
        "lock-server",
        "file-sync",
    ]
    .iter()
    .map(|krate| {
        std::fs::read_to_string(repo().join(format!("crates/{krate}/src/metrics.rs")))
            .unwrap_or_default()
    })
    .collect();
    let queries: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| target["expr"].as_str().expect("a query").to_string())
        .collect();
    assert!(queries.len() >= 10, "{queries:?}");
    for query in &queries {
        for word in query.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            let Some(name) = word.strip_prefix("crawler_") else {
                continue;
            };
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            assert!(
                declared.contains(&format!("crawler_{base}\"")),
                "the dashboard queries crawler_{base}, which no service declares"
            );
        }
    }
}
