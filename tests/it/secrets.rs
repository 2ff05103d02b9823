//! No secret ever leaves the process in what an operator sees: the logs (even at
//! `SQSCALE_LOG=trace`, as JSON), `/status`, `/metrics` and `sqscale check --remote`.
//! The real binary runs with distinctive AWS credentials and a distinctive bearer token,
//! and is made to fail (a rejected token, an unreachable queue endpoint) so the error
//! paths log too. A second run mints EKS tokens (presigned STS URLs) instead.
//! Needs `SQS_ENDPOINT_URL` (scripts/test starts moto).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::daemon::{demo_rule, wait_until, write};
use crate::support::fake_kube::{FakeKube, Kind};
use crate::support::process::{free_port, signal, spawn};
use crate::support::sqs;

const NS: &str = "default";

/// Secrets unique to this run, so any hit is a leak and not a coincidence.
struct Secrets {
    secret_key: String,
    session_token: String,
    bearer: String,
}

impl Secrets {
    fn new() -> Secrets {
        let nonce = format!("{}x{}", std::process::id(), std::time::UNIX_EPOCH.elapsed().unwrap().subsec_nanos());
        Secrets {
            secret_key: format!("SecretKeyMarker{nonce}"),
            session_token: format!("SessionTokenMarker{nonce}"),
            bearer: format!("BearerMarker{nonce}"),
        }
    }

    /// Every string that must never appear, with what it is.
    fn needles(&self) -> Vec<(&str, &str)> {
        vec![
            (self.secret_key.as_str(), "AWS_SECRET_ACCESS_KEY"),
            (self.session_token.as_str(), "AWS_SESSION_TOKEN"),
            (self.bearer.as_str(), "the kubeconfig's bearer token"),
            ("k8s-aws-v1.", "an EKS token"),
            ("X-Amz-Signature", "a presigned URL's signature"),
            ("X-Amz-Credential", "a presigned URL's credential"),
            ("Bearer ", "an Authorization header"),
        ]
    }

    /// The child's environment: these credentials and nothing from the host's AWS files.
    fn env<'a>(&'a self, dir: &'a Path) -> Vec<(&'a str, String)> {
        vec![
            ("SQSCALE_LOG", "trace".to_owned()),
            ("AWS_ACCESS_KEY_ID", "AKIDSQSCALETEST".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_SESSION_TOKEN", self.session_token.clone()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_CONFIG_FILE", dir.join("no-aws-config").display().to_string()),
            ("AWS_SHARED_CREDENTIALS_FILE", dir.join("no-aws-credentials").display().to_string()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ]
    }
}

/// Every leak in `text` (`what` it is), with the log target of the line when it is a
/// JSON log line, so the offending crate can be named and filtered.
fn leaks(secrets: &Secrets, what: &str, text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (needle, name) in secrets.needles() {
        for line in text.lines().filter(|l| l.contains(needle)) {
            let target = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["target"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "-".to_owned());
            let at = line.find(needle).unwrap();
            let context: String = line[at.saturating_sub(120)..].chars().take(240).collect();
            found.push(format!("{name} in {what} (target {target}): ...{context}..."));
        }
    }
    found
}

/// The whole HTTP answer to `GET path`; empty while nothing listens.
async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return String::new() };
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    if s.write_all(request.as_bytes()).await.is_ok() {
        let _ = s.read_to_string(&mut out).await;
    }
    out
}

/// `sqscale check --remote` with the same environment, off the runtime (the fake API
/// server lives on it): stdout and stderr.
async fn check_remote(config: &Path, kubeconfig: &Path, env: &[(&str, String)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sqscale"));
    cmd.args(["check", "--remote", "--config", config.to_str().unwrap(), "--kubeconfig", kubeconfig.to_str().unwrap()]);
    cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Runs the daemon (with `[kubernetes] eks_cluster` if `eks`) with a rule on a live queue
/// and one on an unreachable queue endpoint, until both fail (a 401, the endpoint), then
/// `sqscale check --remote`; returns every leak found in what they showed.
async fn run_and_collect(eks: bool) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let secrets = Secrets::new();
    let kube = FakeKube::start().await;
    kube.set_token(&secrets.bearer);
    kube.add_deployment(NS, "demo", 0);
    kube.add_deployment(NS, "ghost", 0);
    let kubeconfig = dir.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig);
    let queue = sqs::queue("secrets").await;
    sqs::send(&queue, 30).await;
    let port = free_port();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let ghost = demo_rule("ghost", &format!("{dead}/000000000000/ghost"), "") + &format!("aws_endpoint = \"{dead}\"\n");
    let kubernetes = if eks { "[kubernetes]\neks_cluster = \"demo-cluster\"\n" } else { "" };
    let text = format!(
        "{kubernetes}[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n[server]\nlisten = \"127.0.0.1:{port}\"\n{}{ghost}",
        sqs::endpoint(),
        demo_rule("demo", &queue, ""),
    );
    let config = write(dir.path(), "sqscale.toml", &text);
    let env = secrets.env(dir.path());
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let log = dir.path().join("sqscale.log");
    let args = ["--log-format", "json", "run", "--config", config.to_str().unwrap()];
    let mut child = spawn(&[&args[..], &["--kubeconfig", kubeconfig.to_str().unwrap()]].concat(), &env_refs, &log);
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();

    if !eks {
        let scaled =
            wait_until(Duration::from_secs(15), || kube.replicas(Kind::Deployment, NS, "demo") == Some(5)).await;
        assert!(scaled, "{}", logs().lines().rev().take(20).collect::<Vec<_>>().join("\n"));
        // Now the token is rejected: a write (someone scaled it down) and the watch (cut,
        // as an API server restart does) meet 401s; the client is built again from the file.
        kube.set_token("another-token");
        kube.set_replicas(Kind::Deployment, NS, "demo", 2);
        tokio::time::sleep(Duration::from_millis(500)).await;
        kube.close_watches();
    }
    // Both rules fail: the target with a 401 (the fake only knows its own token, never
    // a minted one), the ghost's queue unreachable.
    let failing = |response: &str| {
        let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let status: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let rules = status["rules"].as_array().cloned().unwrap_or_default();
        let failed = |name: &str, what: &str| {
            rules.iter().any(|r| r["rule"] == name && r["last_error"].as_str().is_some_and(|e| e.contains(what)))
        };
        failed("demo", "Unauthorized") && failed("ghost", "ghost")
    };
    let mut status = String::new();
    for _ in 0..100 {
        status = http_get(port, "/status").await;
        if failing(&status) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(failing(&status), "both errors show: {status}");
    let metrics = http_get(port, "/metrics").await;
    let check = check_remote(&config, &kubeconfig, &env).await;
    assert!(check.contains("FAIL  demo:"), "{check}");

    signal(&child, "-TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let logs = logs();
    assert!(logs.lines().count() > 100 && logs.contains("\"level\":\"TRACE\""), "trace logs were on");
    let mut found = leaks(&secrets, "the logs", &logs);
    found.extend(leaks(&secrets, "/status", &status));
    found.extend(leaks(&secrets, "/metrics", &metrics));
    found.extend(leaks(&secrets, "check --remote", &check));
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_logs_status_metrics_or_check_with_static_credentials() {
    let found = run_and_collect(false).await;
    assert!(found.is_empty(), "{} leaks:\n{}", found.len(), summarize(&found));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_logs_status_metrics_or_check_with_eks_tokens() {
    let found = run_and_collect(true).await;
    assert!(found.is_empty(), "{} leaks:\n{}", found.len(), summarize(&found));
}

/// The distinct (secret, place, target) kinds of leak, each with one example.
fn summarize(found: &[String]) -> String {
    let mut seen = std::collections::BTreeMap::new();
    for f in found {
        let key = f.split(": ...").next().unwrap_or(f).to_owned();
        seen.entry(key).or_insert_with(|| f.clone());
    }
    seen.values().cloned().collect::<Vec<_>>().join("\n")
}
