//! Two bastions, one cluster: leader election over a Lease with the real binary. Exactly
//! one instance patches; a standby takes over within lease_duration after the leader is
//! killed with SIGKILL; a leader that loses its lease stops patching at once.
//! Needs `SQS_ENDPOINT_URL` (scripts/test starts moto).

mod support;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use support::daemon::{cluster, demo_rule, wait_until, write};
use support::fake_kube::{FakeKube, Kind};
use support::process::{free_port, http_get, signal, spawn};
use support::sqs;

const NS: &str = "default";
const LEASE: &str = "sqscale-test";

fn config(dir: &Path, kubeconfig: &Path, queue: &str, port: u16, name: &str) -> std::path::PathBuf {
    let text = format!(
        "[kubernetes]\nkubeconfig = \"{}\"\n[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n[server]\nlisten = \"127.0.0.1:{port}\"\n\
         [leader_election]\nenabled = true\nnamespace = \"{NS}\"\nlease_name = \"{LEASE}\"\nlease_duration = 3\nrenew_deadline = \"2s\"\nretry_period = \"500ms\"\n{}",
        kubeconfig.display(),
        sqs::endpoint(),
        demo_rule("demo", queue, "")
    );
    write(dir, name, &text)
}

/// Scale patches the API server accepted: with a watch cache a patch can meet a 409 and
/// be sent again, which is still one write.
fn accepted_scale_patches(kube: &FakeKube) -> usize {
    kube.requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/scale") && r.status == Some(200))
        .count()
}

fn holder(kube: &FakeKube) -> Option<String> {
    kube.lease(NS, LEASE).and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
}

fn identity_of(child: &Child) -> String {
    format!("_{}", child.id())
}

async fn metric(port: u16, name: &str) -> Option<String> {
    let (_, body) = http_get(port, "/metrics").await;
    body.lines().find(|l| l.starts_with(name)).map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_patches_and_a_standby_takes_over_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "demo", 0).await;
    let queue = sqs::queue("leader").await;
    let (port_a, port_b) = (free_port(), free_port());
    let a_cfg = config(dir.path(), &kubeconfig, &queue, port_a, "a.toml");
    let b_cfg = config(dir.path(), &kubeconfig, &queue, port_b, "b.toml");
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let mut a = spawn(&["run", "--config", a_cfg.to_str().unwrap()], &[], &log_a);
    assert!(wait_until(Duration::from_secs(10), || holder(&kube).is_some_and(|h| h.ends_with(&identity_of(&a)))).await);
    let mut b = spawn(&["run", "--config", b_cfg.to_str().unwrap()], &[], &log_b);
    let logs = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(10), || logs(&log_b).contains("leader election on")).await);

    sqs::send(&queue, 30).await;
    let replicas = || kube.replicas(Kind::Deployment, NS, "demo").unwrap();
    assert!(wait_until(Duration::from_secs(15), || replicas() == 5).await, "{}", logs(&log_a));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        accepted_scale_patches(&kube),
        3,
        "exactly one instance patched: {:?}",
        kube.scale_history(Kind::Deployment, NS, "demo")
    );
    assert_eq!(metric(port_a, "sqscale_is_leader").await.as_deref(), Some("sqscale_is_leader 1"));
    assert_eq!(metric(port_b, "sqscale_is_leader").await.as_deref(), Some("sqscale_is_leader 0"));

    // SIGKILL: no release. The standby must wait out the lease, then lead.
    signal(&a, "-KILL");
    a.wait().unwrap();
    let killed = Instant::now();
    assert!(wait_until(Duration::from_secs(10), || holder(&kube).is_some_and(|h| h.ends_with(&identity_of(&b)))).await);
    let takeover = killed.elapsed();
    assert!(takeover <= Duration::from_secs(3) + Duration::from_millis(1500), "took over after {takeover:?}");
    assert_eq!(kube.lease(NS, LEASE).unwrap()["spec"]["leaseTransitions"].as_i64(), Some(1));

    // The new leader scales: the queue is purged, and it goes to 0 after the cooldown.
    sqs::purge(&queue).await;
    assert!(wait_until(Duration::from_secs(15), || replicas() == 0).await, "{}", logs(&log_b));
    assert_eq!(metric(port_b, "sqscale_is_leader").await.as_deref(), Some("sqscale_is_leader 1"));

    // A clean stop hands the lease back.
    signal(&b, "-TERM");
    assert_eq!(b.wait().unwrap().code(), Some(0));
    assert_eq!(holder(&kube), None, "released on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_loses_its_lease_stops_patching_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "demo", 0).await;
    let queue = sqs::queue("usurped").await;
    let port = free_port();
    let cfg = config(dir.path(), &kubeconfig, &queue, port, "a.toml");
    let log = dir.path().join("a.log");
    let mut a = spawn(&["run", "--config", cfg.to_str().unwrap()], &[], &log);
    assert!(wait_until(Duration::from_secs(10), || holder(&kube).is_some()).await);
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(&log).unwrap().contains("became the leader"))
            .await
    );

    // Another instance takes the lease (say, after a network partition).
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    kube.put_lease(NS, LEASE, serde_json::json!({"holderIdentity": "intruder", "leaseDurationSeconds": 3600, "renewTime": now, "acquireTime": now}));
    assert!(
        wait_until(Duration::from_secs(3), || std::fs::read_to_string(&log).unwrap().contains("lost the lease")).await
    );
    sqs::send(&queue, 30).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(kube.count("PATCH", "/scale"), 0, "no writes without the lease");
    assert_eq!(metric(port, "sqscale_is_leader").await.as_deref(), Some("sqscale_is_leader 0"));
    signal(&a, "-TERM");
    assert_eq!(a.wait().unwrap().code(), Some(0));
    assert_eq!(holder(&kube).as_deref(), Some("intruder"), "a standby releases nothing");
}

/// How the kubeconfig's user carries its token in [`rotation_under_leader_election`].
#[derive(Clone, Copy, Debug)]
enum Credential {
    /// `token:` in the kubeconfig, replaced by rewriting the file.
    Inline,
    /// `tokenFile:`, the file replaced (a projected ServiceAccount token).
    File,
    /// An exec plugin that prints the token of a file (like `aws eks get-token`).
    Exec,
}

/// Writes the kubeconfig for `credential` with `token`.
fn write_credential(dir: &Path, kube: &FakeKube, credential: Credential, token: &str) -> std::path::PathBuf {
    use serde_json::json;
    let kubeconfig = dir.join("kubeconfig");
    let token_file = dir.join("token");
    std::fs::write(&token_file, token).unwrap();
    let user = match credential {
        Credential::Inline => json!({"token": token}),
        Credential::File => json!({"tokenFile": token_file}),
        Credential::Exec => {
            let script = dir.join("get-token.sh");
            std::fs::write(
                &script,
                format!(
                    "#!/bin/sh\nprintf '{{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":{{\"token\":\"%s\"}}}}' \"$(cat {})\"\n",
                    token_file.display()
                ),
            )
            .unwrap();
            json!({"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "sh", "args": [script], "interactiveMode": "Never"}})
        }
    };
    support::fake_kube::write_kubeconfig_with_users(&kubeconfig, &[("fake", kube)], &[user], "fake");
    kubeconfig
}

/// The token is rotated while an instance leads: the kubeconfig (or its token file) gets
/// the new token, then the API server rejects the old one and ends every open watch. The
/// instance keeps its lease without a gap, its watch comes back with the new token (it
/// sees a manual scale made after the switch), and it keeps scaling.
async fn rotation_under_leader_election(credential: Credential) {
    let dir = tempfile::tempdir().unwrap();
    let kube = FakeKube::start().await;
    kube.add_deployment(NS, "demo", 0);
    kube.set_token("token-one");
    let kubeconfig = write_credential(dir.path(), &kube, credential, "token-one");
    let queue = sqs::queue(&format!("rotated-{credential:?}").to_lowercase()).await;
    let port = free_port();
    let cfg = config(dir.path(), &kubeconfig, &queue, port, "a.toml");
    let log = dir.path().join("a.log");
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut a = spawn(&["run", "--config", cfg.to_str().unwrap()], &[], &log);
    assert!(wait_until(Duration::from_secs(10), || holder(&kube).is_some()).await, "{}", logs());
    let leader = holder(&kube).unwrap();
    sqs::send(&queue, 30).await;
    let replicas = || kube.replicas(Kind::Deployment, NS, "demo").unwrap();
    assert!(wait_until(Duration::from_secs(15), || replicas() == 5).await, "{}", logs());

    // Rotate: the file first (as `aws eks update-kubeconfig` or the kubelet would), then
    // the server.
    write_credential(dir.path(), &kube, credential, "token-two");
    kube.rotate_token("token-two");
    let rotated = kube.requests().len();

    // Leadership holds through the rotation, sampled for two lease durations.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        assert_eq!(holder(&kube).as_deref(), Some(leader.as_str()), "the lease changed hands: {}", logs());
        assert_eq!(metric(port, "sqscale_is_leader").await.as_deref(), Some("sqscale_is_leader 1"), "{}", logs());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let after: Vec<_> = kube.requests()[rotated..].to_vec();
    let renewals_ok =
        after.iter().filter(|r| r.path.contains("/leases/") && r.method == "PUT" && r.status == Some(200));
    assert!(renewals_ok.count() >= 5, "the lease is renewed with the new token");
    let watches_ok =
        after.iter().filter(|r| r.query.as_deref().is_some_and(|q| q.contains("watch=true")) && r.authorized);
    assert!(watches_ok.count() >= 1, "the watch came back with the new token");

    // A manual scale made after the switch is seen through the watch, and the daemon
    // answers it: the backlog still asks for 5, reached through the HPA's scale-up limit
    // of max(2 * 2, 4) = 4 per poll.
    let written = kube.scale_history(Kind::Deployment, NS, "demo").len();
    kube.set_replicas(Kind::Deployment, NS, "demo", 2);
    assert!(wait_until(Duration::from_secs(5), || replicas() == 5).await, "{}", logs());
    let history = kube.scale_history(Kind::Deployment, NS, "demo");
    assert_eq!(history[written..], [4, 5], "{history:?}");
    let unauthorized_writes = kube.requests().iter().filter(|r| r.method == "PATCH" && !r.authorized).count();
    assert!(unauthorized_writes <= 1, "a write with the dead token is tried at most once: {unauthorized_writes}");

    signal(&a, "-TERM");
    assert_eq!(a.wait().unwrap().code(), Some(0), "{}", logs());
    assert_eq!(holder(&kube), None, "released with the new token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inline_token_rotated_under_leader_election_keeps_the_lease_and_the_scaling() {
    rotation_under_leader_election(Credential::Inline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_rotated_under_leader_election_keeps_the_lease_and_the_scaling() {
    rotation_under_leader_election(Credential::File).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_plugin_token_rotated_under_leader_election_keeps_the_lease_and_the_scaling() {
    rotation_under_leader_election(Credential::Exec).await;
}
