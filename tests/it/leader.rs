//! Two bastions, one cluster: leader election over a Lease with the real binary. Exactly
//! one instance patches; a standby takes over within lease_duration after the leader is
//! killed with SIGKILL; a leader that loses its lease stops patching at once; two
//! look-alike instances (one host name, both PID 1) elect one leader; a leader whose
//! renewals go unanswered stops writing before its lease could expire; a reload that adds
//! a context campaigns there; a forced stop keeps the lease, a clean one hands it back.
//! Needs `SQS_ENDPOINT_URL` (scripts/test starts moto).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::daemon::{cluster, demo_rule, wait_until, write};
use crate::support::fake_kube::{FakeKube, Kind, write_multi_kubeconfig};
use crate::support::process::{free_port, http_get, signal, spawn, spawn_as_pid1};
use crate::support::proxy::Proxy;
use crate::support::sqs;

const NS: &str = "default";
const LEASE: &str = "sqscale-test";

fn config(dir: &Path, kubeconfig: &Path, queue: &str, port: u16, name: &str) -> std::path::PathBuf {
    config_with(dir, kubeconfig, port, name, &demo_rule("demo", queue, ""))
}

/// Leader election at test speed (lease 3 s, renew deadline 2 s, retry 500 ms) with `rules`.
fn config_with(dir: &Path, kubeconfig: &Path, port: u16, name: &str, rules: &str) -> std::path::PathBuf {
    let text = format!(
        "[kubernetes]\nkubeconfig = \"{}\"\n[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n[server]\nlisten = \"127.0.0.1:{port}\"\n\
         [leader_election]\nenabled = true\nnamespace = \"{NS}\"\nlease_name = \"{LEASE}\"\nlease_duration = 3\nrenew_deadline = \"2s\"\nretry_period = \"500ms\"\n{rules}",
        kubeconfig.display(),
        sqs::endpoint(),
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

/// The identity a daemon logged at start (its JSON log in `log`).
fn identity_in(log: &Path) -> Option<String> {
    std::fs::read_to_string(log).unwrap_or_default().lines().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        let fields = &v["fields"];
        let started = fields["message"].as_str()?.starts_with("leader election on");
        started.then(|| fields["identity"].as_str().map(str::to_owned)).flatten()
    })
}

/// Waits for the identity `log` announces.
async fn identity_of(log: &Path) -> String {
    assert!(
        wait_until(Duration::from_secs(10), || identity_in(log).is_some()).await,
        "no identity logged in {}",
        log.display()
    );
    identity_in(log).unwrap()
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
    let id_a = identity_of(&log_a).await;
    assert!(wait_until(Duration::from_secs(10), || holder(&kube) == Some(id_a.clone())).await);
    let mut b = spawn(&["run", "--config", b_cfg.to_str().unwrap()], &[], &log_b);
    let logs = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let id_b = identity_of(&log_b).await;

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
    assert!(wait_until(Duration::from_secs(10), || holder(&kube) == Some(id_b.clone())).await);
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
    crate::support::fake_kube::write_kubeconfig_with_users(&kubeconfig, &[("fake", kube)], &[user], "fake");
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

/// Polls `/metrics` until `sqscale_is_leader` reads `want` (at most 5 s).
async fn leader_metric_becomes(port: u16, want: &str) -> bool {
    for _ in 0..50 {
        if metric(port, "sqscale_is_leader").await.as_deref() == Some(want) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Requests that wrote to the Deployment `demo` (its /scale or the object) and that the
/// API server acted on.
fn deployment_writes(kube: &FakeKube) -> Vec<crate::support::fake_kube::Captured> {
    kube.requests()
        .into_iter()
        .filter(|r| r.method != "GET" && r.path.contains("/deployments/demo"))
        .filter(|r| r.status.is_some_and(|s| s < 300))
        .collect()
}

/// Issue 12: two instances from one image under one host name, each PID 1 of its own PID
/// namespace (as two containers are). An identity of host name and PID made them both
/// lead, and leadership flapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_look_alike_instances_as_pid_1_elect_exactly_one_leader() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "demo", 0).await;
    let queue = sqs::queue("lookalike").await;
    let (port_a, port_b) = (free_port(), free_port());
    let a_cfg = config(dir.path(), &kubeconfig, &queue, port_a, "a.toml");
    let b_cfg = config(dir.path(), &kubeconfig, &queue, port_b, "b.toml");
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let mut a = spawn_as_pid1(&["run", "--config", a_cfg.to_str().unwrap()], &log_a);
    let mut b = spawn_as_pid1(&["run", "--config", b_cfg.to_str().unwrap()], &log_b);
    let (id_a, id_b) = (identity_of(&log_a).await, identity_of(&log_b).await);
    assert_ne!(id_a, id_b);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert!(id_a.starts_with(&format!("{}_", host.trim())), "{id_a}");

    let leader_metric = |port| async move { metric(port, "sqscale_is_leader").await };
    assert!(wait_until(Duration::from_secs(10), || holder(&kube).is_some()).await);
    let first = holder(&kube).unwrap();
    assert!(first == id_a || first == id_b, "{first}");
    // Give the winner a few renewals to report itself.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Four lease periods: exactly one leads at every look, and it stays the same one.
    let until = Instant::now() + Duration::from_secs(12);
    let mut looks = 0;
    while Instant::now() < until {
        let (la, lb) = (leader_metric(port_a).await, leader_metric(port_b).await);
        let leaders = [la.as_deref(), lb.as_deref()].iter().filter(|m| **m == Some("sqscale_is_leader 1")).count();
        assert_eq!(leaders, 1, "a: {la:?}, b: {lb:?} after {looks} looks");
        let (leader_port, holder_now) =
            if la.as_deref() == Some("sqscale_is_leader 1") { (port_a, &id_a) } else { (port_b, &id_b) };
        assert_eq!(holder(&kube).as_ref(), Some(holder_now), "the instance on port {leader_port} reports leading");
        assert_eq!(holder(&kube), Some(first.clone()), "leadership moved");
        looks += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(kube.lease(NS, LEASE).unwrap()["spec"]["leaseTransitions"].as_i64(), Some(0));
    // `unshare` ignores SIGTERM while it waits; killing it sends SIGTERM to the daemon
    // (--kill-child).
    for child in [&mut a, &mut b] {
        signal(child, "-KILL");
        child.wait().unwrap();
    }
}

/// Issue 12: a leader whose renewals go unanswered must have ended every write before its
/// lease could expire: lease_duration after the start of its last successful renewal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_renewals_go_unanswered_stops_writing_before_its_lease_expires() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "demo", 0).await;
    let queue = sqs::queue("unrenewed").await;
    let port = free_port();
    let cfg = config(dir.path(), &kubeconfig, &queue, port, "a.toml");
    let log = dir.path().join("a.log");
    let mut a = spawn(&["run", "--config", cfg.to_str().unwrap()], &[], &log);
    assert!(wait_until(Duration::from_secs(10), || holder(&kube).is_some()).await);
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(&log).unwrap().contains("became the leader"))
            .await
    );
    tokio::time::sleep(Duration::from_secs(2)).await; // a few polls at 0: nothing to write

    // Renewals get no answer from now on, and writes take 5 s to be acted on; then work
    // arrives. The next poll (within a second) wants to scale, while the leader still
    // holds a lease that has at most 3 s to run.
    kube.set_latency_on("/leases/", Duration::from_secs(60));
    kube.set_latency_on("/deployments/demo", Duration::from_secs(5));
    sqs::send(&queue, 30).await;
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(&log).unwrap().contains("lost the lease")).await,
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    tokio::time::sleep(Duration::from_secs(6)).await; // any write started has been answered by now
    let renewed = kube
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.path.ends_with(&format!("/leases/{LEASE}")) && r.status == Some(200))
        .map(|r| r.received)
        .max()
        .expect("renewed at least once");
    for w in deployment_writes(&kube) {
        let acted = w.answered.unwrap();
        assert!(
            acted <= renewed + Duration::from_secs(3),
            "{} {} acted on {:?} after the last renewal arrived, past the lease's 3 s",
            w.method,
            w.path,
            acted - renewed
        );
    }
    assert_eq!(kube.replicas(Kind::Deployment, NS, "demo"), Some(0), "no scale without a valid lease");
    assert!(
        kube.requests().iter().any(|r| r.path.ends_with("/demo/scale") && r.method == "PATCH"),
        "the write was tried (and abandoned), so the test saw the case it is about: {}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert_eq!(metric(port, "sqscale_is_leader").await.as_deref(), Some("sqscale_is_leader 0"));
    kube.clear_faults();
    signal(&a, "-TERM");
    assert_eq!(a.wait().unwrap().code(), Some(0));
}

/// Issue 12: a reload that adds a rule in another kube context campaigns for that
/// cluster's lease; a reload that drops it hands that lease back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_adds_a_context_campaigns_there_and_one_that_drops_it_releases() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (FakeKube::start().await, FakeKube::start().await);
    one.add_deployment(NS, "demo", 0);
    two.add_deployment(NS, "other", 0);
    let kubeconfig = dir.path().join("kubeconfig");
    write_multi_kubeconfig(&kubeconfig, &[("one", &one), ("two", &two)], "one");
    let queue = sqs::queue("contexts").await;
    let port = free_port();
    let first = demo_rule("demo", &queue, "");
    let cfg = config_with(dir.path(), &kubeconfig, port, "a.toml", &first);
    let log = dir.path().join("a.log");
    let mut a = spawn(&["run", "--config", cfg.to_str().unwrap()], &[], &log);
    let id = identity_of(&log).await;
    assert!(wait_until(Duration::from_secs(10), || holder(&one) == Some(id.clone())).await);
    assert!(two.lease(NS, LEASE).is_none(), "no rule uses context two yet");

    let other = demo_rule("other", &queue, "context = \"two\"");
    config_with(dir.path(), &kubeconfig, port, "a.toml", &format!("{first}\n{other}"));
    signal(&a, "-HUP");
    assert!(
        wait_until(Duration::from_secs(10), || holder(&two) == Some(id.clone())).await,
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(leader_metric_becomes(port, "sqscale_is_leader 1").await, "leads in both contexts");

    config_with(dir.path(), &kubeconfig, port, "a.toml", &first);
    signal(&a, "-HUP");
    assert!(wait_until(Duration::from_secs(10), || holder(&two).is_none()).await, "released once unused");
    assert_eq!(holder(&one), Some(id.clone()), "context one keeps its lease");
    signal(&a, "-TERM");
    assert_eq!(a.wait().unwrap().code(), Some(0));
    assert_eq!(holder(&one), None, "released on SIGTERM");
}

/// Issue 18: after a forced stop (a second SIGTERM while a write is in flight) the lease
/// is kept, so that no standby takes over before it expires; it is not handed back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_stop_keeps_the_lease_until_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "demo", 0).await;
    let queue = sqs::queue("forced").await;
    let port = free_port();
    let cfg = config(dir.path(), &kubeconfig, &queue, port, "a.toml");
    let log = dir.path().join("a.log");
    let mut a = spawn(&["run", "--config", cfg.to_str().unwrap()], &[], &log);
    let id = identity_of(&log).await;
    assert!(wait_until(Duration::from_secs(10), || holder(&kube) == Some(id.clone())).await);
    // Writes to the target hang (renewals go on): every poll has a write in flight.
    kube.set_latency_on("/deployments/demo", Duration::from_secs(60));
    sqs::send(&queue, 30).await;
    let pending = || {
        kube.requests()
            .iter()
            .any(|r| r.path.contains("/deployments/demo") && r.method == "PATCH" && r.status.is_none())
    };
    assert!(wait_until(Duration::from_secs(5), pending).await);
    signal(&a, "-TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(&a, "-TERM");
    assert_eq!(a.wait().unwrap().code(), Some(1), "{}", std::fs::read_to_string(&log).unwrap());
    assert_eq!(holder(&kube), Some(id), "a forced stop does not hand the lease back");
}

/// A rule that names the default context explicitly and a rule that names none are in one
/// cluster: one elector campaigns for the Lease, not two (two electors of one process on
/// one Lease fight over its resourceVersion, and each reports leadership on its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_naming_the_default_context_shares_its_elector() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "demo", 0).await;
    kube.add_deployment(NS, "named", 0);
    let queue = sqs::queue("named-context").await;
    let rules = format!("{}{}", demo_rule("demo", &queue, ""), demo_rule("named", &queue, "context = \"fake\""));
    let port = free_port();
    let cfg = config_with(dir.path(), &kubeconfig, port, "a.toml", &rules);
    let log = dir.path().join("a.log");
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut a = spawn(&["run", "--config", cfg.to_str().unwrap()], &[], &log);
    assert!(wait_until(Duration::from_secs(10), || holder(&kube).is_some()).await, "{}", logs());
    sqs::send(&queue, 30).await;
    let replicas = |name| kube.replicas(Kind::Deployment, NS, name).unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || replicas("demo") == 5 && replicas("named") == 5).await,
        "{}",
        logs()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lease_writes: Vec<_> = kube
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/leases") && r.method != "GET")
        .map(|r| r.status)
        .collect();
    assert!(!lease_writes.contains(&Some(409)), "two electors fought over the lease: {lease_writes:?}");
    assert_eq!(logs().matches("became the leader").count(), 1, "{}", logs());
    signal(&a, "-TERM");
    assert_eq!(a.wait().unwrap().code(), Some(0), "{}", logs());
}

/// The stored last-active of the `demo` Deployment in the state ConfigMap (Unix ms).
fn stored_last_active(kube: &FakeKube) -> Option<i64> {
    let map = kube.config_map(NS, "sqscale-state")?;
    let text = map["data"]["deployment.default.demo"].as_str()?.to_owned();
    Some(text.parse::<jiff::Timestamp>().ok()?.as_millisecond())
}

fn unix_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// A cold standby (the default) makes no SQS call and reads no target while another
/// instance leads, says so on /status and in `sqscale status`; a warm one polls at the
/// full rate. On taking over, the cold one keeps the cooldown the last leader stored
/// (it does not scale to zero early) and then scales as a leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_standby_polls_nothing_until_it_leads_and_keeps_the_stored_cooldown() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "demo", 0).await;
    let queue = sqs::queue("cold").await;
    let (proxy_b, proxy_c) = (Proxy::start(&sqs::endpoint()).await, Proxy::start(&sqs::endpoint()).await);
    let ports = (free_port(), free_port(), free_port());
    // Cooldown 8 s: long enough that a takeover (lease 3 s) lands inside it.
    let rule = format!(
        "[[rule]]\nname = \"demo\"\ntarget = {{ name = \"demo\" }}\npolling_interval = 1\ncooldown_period = 8\n\
         max_replica_count = 5\n[[rule.trigger]]\nqueue_url = \"{queue}\"\nqueue_length = 5\n"
    );
    let with_endpoint = |port: u16, name: &str, endpoint: &str, standby: &str| {
        let text = format!(
            "[kubernetes]\nkubeconfig = \"{}\"\n[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n\
             [server]\nlisten = \"127.0.0.1:{port}\"\n[leader_election]\nenabled = true\nnamespace = \"{NS}\"\n\
             lease_name = \"{LEASE}\"\nlease_duration = 3\nrenew_deadline = \"2s\"\nretry_period = \"500ms\"\n\
             standby = \"{standby}\"\n{rule}",
            kubeconfig.display()
        );
        write(dir.path(), name, &text)
    };
    let a_cfg = with_endpoint(ports.0, "a.toml", &sqs::endpoint(), "cold");
    let b_cfg = with_endpoint(ports.1, "b.toml", &proxy_b.url(), "cold");
    let c_cfg = with_endpoint(ports.2, "c.toml", &proxy_c.url(), "warm");
    let logs = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let (log_a, log_b, log_c) = (dir.path().join("a.log"), dir.path().join("b.log"), dir.path().join("c.log"));
    let mut a = spawn(&["run", "--config", a_cfg.to_str().unwrap()], &[], &log_a);
    let id_a = identity_of(&log_a).await;
    assert!(wait_until(Duration::from_secs(10), || holder(&kube) == Some(id_a.clone())).await);
    sqs::send(&queue, 30).await;
    let replicas = || kube.replicas(Kind::Deployment, NS, "demo").unwrap();
    assert!(wait_until(Duration::from_secs(15), || replicas() == 5).await, "{}", logs(&log_a));

    let mut b = spawn(&["run", "--config", b_cfg.to_str().unwrap()], &[], &log_b);
    let mut c = spawn(&["run", "--config", c_cfg.to_str().unwrap()], &[], &log_c);
    identity_of(&log_b).await;
    identity_of(&log_c).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(proxy_b.count("GetQueueAttributes") + proxy_b.count("GetQueueUrl"), 0, "{}", logs(&log_b));
    assert!(proxy_c.count("GetQueueAttributes") >= 2, "a warm standby polls: {}", logs(&log_c));
    let (_, body) = http_get(ports.1, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let election = &status["leader_election"];
    assert_eq!(election["standby"], true, "{body}");
    assert_eq!(election["standby_mode"], "cold", "{body}");
    assert_eq!(election["contexts"][0]["leader"].as_str(), Some(id_a.as_str()), "{body}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sqscale"))
        .args(["status", "--server", &format!("http://127.0.0.1:{}", ports.1)])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("a cold standby") && printed.contains(&format!("led by {id_a}")), "{printed}");
    signal(&c, "-TERM");
    assert_eq!(c.wait().unwrap().code(), Some(0));

    // The queue empties; the leader stores last-active on the edge to inactive, then
    // dies without handing the lease over.
    let before = stored_last_active(&kube);
    sqs::purge(&queue).await;
    assert!(
        wait_until(Duration::from_secs(5), || stored_last_active(&kube) != before).await,
        "no last-active stored on the edge: {}",
        logs(&log_a)
    );
    let last_active = stored_last_active(&kube).unwrap();
    signal(&a, "-KILL");
    a.wait().unwrap();
    assert_eq!(proxy_b.count("GetQueueAttributes") + proxy_b.count("GetQueueUrl"), 0, "{}", logs(&log_b));

    // The standby takes over inside the cooldown and waits it out: zero replicas no
    // earlier than the stored last-active plus 8 s.
    assert!(wait_until(Duration::from_secs(10), || holder(&kube).is_some_and(|h| h != id_a)).await);
    let took_over = unix_ms();
    assert!(took_over < last_active + 7_000, "took over too late to tell: {}", took_over - last_active);
    assert!(wait_until(Duration::from_secs(20), || replicas() == 0).await, "{}", logs(&log_b));
    let zero = unix_ms();
    assert!(
        zero >= last_active + 8_000,
        "scaled to zero {} ms after last-active: {}",
        zero - last_active,
        logs(&log_b)
    );
    assert!(proxy_b.count("GetQueueAttributes") > 0, "the new leader polls");

    // And it scales as a leader.
    sqs::send(&queue, 30).await;
    assert!(wait_until(Duration::from_secs(15), || replicas() == 5).await, "{}", logs(&log_b));
    signal(&b, "-TERM");
    assert_eq!(b.wait().unwrap().code(), Some(0));
}

/// A local user floods the listener with idle and half-sent connections (the leader's
/// `[server] listen`): the connections over the cap are closed at once, the rest when
/// the header timeout passes, and meanwhile the leader keeps renewing its lease and
/// scaling; afterwards the listener answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_leaves_polls_and_lease_rounds_alone() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "demo", 0).await;
    let queue = sqs::queue("flood").await;
    let port = free_port();
    let cfg = config(dir.path(), &kubeconfig, &queue, port, "a.toml");
    let log = dir.path().join("a.log");
    let mut daemon = spawn(&["run", "--config", cfg.to_str().unwrap()], &[], &log);
    let id = identity_of(&log).await;
    assert!(wait_until(Duration::from_secs(10), || holder(&kube) == Some(id.clone())).await);

    // Four times the cap (sqscale::server::MAX_CONNECTIONS), each with half a head.
    let cap = sqscale::server::MAX_CONNECTIONS;
    let mut flood = Vec::new();
    for _ in 0..4 * cap {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let _ = conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await;
        flood.push(conn);
    }
    let at_once = closed(&mut flood, Duration::from_secs(2)).await;
    assert!((3 * cap..4 * cap).contains(&at_once), "{at_once} of {} closed at once", 4 * cap);

    // Under the flood the leader renews its lease and scales.
    let renewed = || kube.lease(NS, LEASE).and_then(|l| l["spec"]["renewTime"].as_str().map(str::to_owned));
    let before = renewed();
    sqs::send(&queue, 30).await;
    let replicas = || kube.replicas(Kind::Deployment, NS, "demo").unwrap();
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(15), || replicas() == 5).await, "{}", logs());
    assert_ne!(renewed(), before, "the lease was renewed");
    assert_eq!(holder(&kube), Some(id));

    // The held ones are closed once the header timeout (10 s) passes.
    let late = closed(&mut flood, sqscale::server::HEADER_READ_TIMEOUT).await;
    assert_eq!(late, 4 * cap, "every connection is closed by now");
    drop(flood);
    assert_eq!(http_get(port, "/healthz").await.0, 200);
    signal(&daemon, "-TERM");
    assert_eq!(daemon.wait().unwrap().code(), Some(0));
}

/// How many of `conns` the server has closed (EOF or reset) within `within`, all read
/// at once (so the wait is `within` in all).
async fn closed(conns: &mut [tokio::net::TcpStream], within: Duration) -> usize {
    use tokio::io::AsyncReadExt;
    let reads = conns.iter_mut().map(|conn| async move {
        let mut buf = [0u8; 256];
        matches!(tokio::time::timeout(within, conn.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
    });
    futures::future::join_all(reads).await.into_iter().filter(|c| *c).count()
}

/// Issue 26 item 1: every Lease request takes 1.1 s to be answered (default timings, 15 s
/// lease, 10 s renew deadline, 2 s retry). A round of one read and one write then takes
/// 2.2 s, longer than the 2 s a round was given: no instance ever led. Each attempt now
/// has until the renew deadline, and a leader renews with one write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_endpoint_answering_in_1_1_s_still_gets_a_leader_that_scales() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "demo", 0).await;
    // `/leases` and not `/leases/`: the create is a POST to the collection.
    kube.set_latency_on("/leases", Duration::from_millis(1100));
    let queue = sqs::queue("slow-lease").await;
    let port = free_port();
    let text = format!(
        "[kubernetes]\nkubeconfig = \"{}\"\n[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n[server]\nlisten = \"127.0.0.1:{port}\"\n\
         [leader_election]\nenabled = true\nnamespace = \"{NS}\"\nlease_name = \"{LEASE}\"\n{}",
        kubeconfig.display(),
        sqs::endpoint(),
        demo_rule("demo", &queue, ""),
    );
    let cfg = write(dir.path(), "a.toml", &text);
    let log = dir.path().join("a.log");
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut a = spawn(&["run", "--config", cfg.to_str().unwrap()], &[], &log);
    let id = identity_of(&log).await;
    assert!(wait_until(Duration::from_secs(15), || logs().contains("became the leader")).await, "{}", logs());
    assert_eq!(holder(&kube), Some(id));
    sqs::send(&queue, 30).await;
    let replicas = || kube.replicas(Kind::Deployment, NS, "demo").unwrap();
    assert!(wait_until(Duration::from_secs(20), || replicas() == 5).await, "{}", logs());

    // It keeps the lease: renewals of 1.1 s every 2 s, never a step-down.
    let since = kube.requests().len();
    let until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < until {
        assert_eq!(metric(port, "sqscale_is_leader").await.as_deref(), Some("sqscale_is_leader 1"), "{}", logs());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let renewals = kube.requests()[since..]
        .iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/leases/") && r.status == Some(200))
        .count();
    assert!(renewals >= 2, "{renewals} renewals in 7 s");
    assert!(!logs().contains("lost the lease"), "{}", logs());
    signal(&a, "-TERM");
    assert_eq!(a.wait().unwrap().code(), Some(0), "{}", logs());
}

/// Issue 26 item 1: a reload adds a context whose user's exec plugin takes 2.5 s, longer
/// than a round (lease 3 s, renew deadline 2 s). The client was built inside the round's
/// deadline: the plugin was killed and started again every round, and the context was
/// never led. It is now built outside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_added_by_reload_with_a_slow_exec_plugin_is_led() {
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (FakeKube::start().await, FakeKube::start().await);
    one.add_deployment(NS, "demo", 0);
    two.add_deployment(NS, "other", 0);
    let script = dir.path().join("get-token.sh");
    let runs = dir.path().join("runs");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho started >> {runs}\nsleep 2.5\necho finished >> {runs}\nprintf '{{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":{{\"token\":\"{}\"}}}}'\n",
            two.token(),
            runs = runs.display(),
        ),
    )
    .unwrap();
    let exec = json!({"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "sh", "args": [script], "interactiveMode": "Never"}});
    let kubeconfig = dir.path().join("kubeconfig");
    crate::support::fake_kube::write_kubeconfig_with_users(
        &kubeconfig,
        &[("one", &one), ("two", &two)],
        &[json!({"token": one.token()}), exec],
        "one",
    );
    let queue = sqs::queue("slow-exec").await;
    let port = free_port();
    let first = demo_rule("demo", &queue, "");
    let cfg = config_with(dir.path(), &kubeconfig, port, "a.toml", &first);
    let log = dir.path().join("a.log");
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut a = spawn(&["run", "--config", cfg.to_str().unwrap()], &[], &log);
    let id = identity_of(&log).await;
    assert!(wait_until(Duration::from_secs(10), || holder(&one) == Some(id.clone())).await, "{}", logs());

    let other = demo_rule("other", &queue, "context = \"two\"");
    config_with(dir.path(), &kubeconfig, port, "a.toml", &format!("{first}\n{other}"));
    signal(&a, "-HUP");
    let led = wait_until(Duration::from_secs(12), || holder(&two) == Some(id.clone())).await;
    let plugin = std::fs::read_to_string(&runs).unwrap_or_default();
    assert!(led, "context two never led; the plugin's runs: {plugin:?}\n{}", logs());
    assert_eq!(plugin.matches("started").count(), 1, "the plugin ran once: {plugin:?}");
    assert!(leader_metric_becomes(port, "sqscale_is_leader 1").await, "leads in both contexts: {}", logs());
    signal(&a, "-TERM");
    assert_eq!(a.wait().unwrap().code(), Some(0), "{}", logs());
}

/// Issue 26 item 1: a renewal that meets 409 Conflict (the Lease was edited just before
/// it, say annotated by hand) reads the lease again and renews; it does not step down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_on_renewal_reads_the_lease_again_and_keeps_leading() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "demo", 0).await;
    let queue = sqs::queue("renew-conflict").await;
    let port = free_port();
    let cfg = config(dir.path(), &kubeconfig, &queue, port, "a.toml");
    let log = dir.path().join("a.log");
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut a = spawn(&["run", "--config", cfg.to_str().unwrap()], &[], &log);
    let id = identity_of(&log).await;
    assert!(wait_until(Duration::from_secs(10), || logs().contains("became the leader")).await, "{}", logs());
    let since = kube.requests().len();
    kube.edit_lease_before_next_put(1);
    let lease_puts = || {
        kube.requests()[since..]
            .iter()
            .filter(|r| r.method == "PUT" && r.path.contains("/leases/"))
            .filter_map(|r| r.status)
            .collect::<Vec<_>>()
    };
    assert!(wait_until(Duration::from_secs(3), || lease_puts().contains(&409)).await, "{:?}", lease_puts());
    assert!(wait_until(Duration::from_secs(3), || lease_puts().ends_with(&[200])).await, "{:?}", lease_puts());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!logs().contains("lost the lease"), "stepped down for a conflict: {}", logs());
    assert_eq!(logs().matches("became the leader").count(), 1, "{}", logs());
    assert_eq!(holder(&kube), Some(id));
    assert_eq!(metric(port, "sqscale_is_leader").await.as_deref(), Some("sqscale_is_leader 1"));
    signal(&a, "-TERM");
    assert_eq!(a.wait().unwrap().code(), Some(0), "{}", logs());
}

/// How a hand edit changes the Lease under a leader in [`a_hand_edited_lease_never_gives_two_writers`].
#[derive(Clone, Copy, Debug)]
enum HandEdit {
    /// `kubectl delete lease`.
    Delete,
    /// `holderIdentity` removed, the rest left as it was (not a clean release, which also
    /// cuts the lease to 1 s).
    Empty,
    /// `leaseDurationSeconds` lowered to 1, after the leader has not renewed for 1.5 s.
    Shorten,
}

/// The `Host` the request was sent to: `127.0.0.1` from instance A, `localhost` from B.
fn host_of(r: &crate::support::fake_kube::Captured) -> &str {
    let host = r.headers.iter().find(|(k, _)| k == "host").map_or("", |(_, v)| v.as_str());
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// Issue 26 item 2: A leads and its Lease requests stop being answered (a partition of
/// its own); then the Lease is deleted, emptied or shortened by hand. The standby B must
/// wait a lease duration from when it saw that change before it takes the lease: A may
/// still write until its lease (3 s from its last renewal) runs out. Before, B took it on
/// its next round. The fake API server tells the two apart by the host name each
/// reaches it by. Checked: B acquires no earlier than A's last renewal plus the lease
/// (or the edit plus the shortened lease), and no write of B's to the target comes
/// before A's last one was answered.
async fn a_hand_edited_lease_never_gives_two_writers(edit: HandEdit) {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig_a) = cluster(dir.path(), "demo", 0).await;
    let kubeconfig_b = dir.path().join("kubeconfig-b");
    let text = std::fs::read_to_string(&kubeconfig_a).unwrap();
    std::fs::write(&kubeconfig_b, text.replace("https://127.0.0.1:", "https://localhost:")).unwrap();
    let queue = sqs::queue(&format!("hand-{edit:?}").to_lowercase()).await;
    let (port_a, port_b) = (free_port(), free_port());
    let a_cfg = config(dir.path(), &kubeconfig_a, &queue, port_a, "a.toml");
    let b_cfg = config(dir.path(), &kubeconfig_b, &queue, port_b, "b.toml");
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let logs = || {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!("A:\n{}\nB:\n{}", read(&log_a), read(&log_b))
    };
    let mut a = spawn(&["run", "--config", a_cfg.to_str().unwrap()], &[], &log_a);
    let id_a = identity_of(&log_a).await;
    assert!(wait_until(Duration::from_secs(10), || holder(&kube) == Some(id_a.clone())).await, "{}", logs());
    let mut b = spawn(&["run", "--config", b_cfg.to_str().unwrap()], &[], &log_b);
    let id_b = identity_of(&log_b).await;
    sqs::send(&queue, 30).await;
    let replicas = || kube.replicas(Kind::Deployment, NS, "demo").unwrap();
    assert!(wait_until(Duration::from_secs(15), || replicas() == 5).await, "{}", logs());
    let b_reads_lease = |k: &FakeKube| {
        k.requests().iter().any(|r| host_of(r) == "localhost" && r.path.contains("/leases/") && r.status == Some(200))
    };
    assert!(wait_until(Duration::from_secs(5), || b_reads_lease(&kube)).await, "B reads the lease: {}", logs());

    // A's Lease requests go unanswered from now on.
    kube.set_latency_from("127.0.0.1", "/leases", Duration::from_secs(60));
    let cut = std::time::Instant::now();
    if let HandEdit::Shorten = edit {
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let mut spec = kube.lease(NS, LEASE).unwrap()["spec"].clone();
    let edited = std::time::Instant::now();
    match edit {
        HandEdit::Delete => assert!(kube.delete_lease(NS, LEASE), "deleted"),
        HandEdit::Empty => {
            spec.as_object_mut().unwrap().remove("holderIdentity");
            kube.put_lease(NS, LEASE, spec);
        }
        HandEdit::Shorten => {
            spec["leaseDurationSeconds"] = 1.into();
            kube.put_lease(NS, LEASE, spec);
        }
    }
    // Keep work coming: whoever leads scales the Deployment back up after each reset.
    let until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < until && holder(&kube) != Some(id_b.clone()) {
        kube.set_replicas(Kind::Deployment, NS, "demo", 0);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(holder(&kube), Some(id_b.clone()), "B takes over once A's lease has run out: {}", logs());
    for _ in 0..8 {
        kube.set_replicas(Kind::Deployment, NS, "demo", 0);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }

    let requests = kube.requests();
    let renewed_a = requests
        .iter()
        .filter(|r| host_of(r) == "127.0.0.1" && r.path.contains("/leases") && r.method != "GET")
        .filter(|r| r.status.is_some_and(|s| s < 300))
        .map(|r| r.received)
        .max()
        .expect("A renewed");
    assert!(renewed_a <= cut, "A's last renewal came before its lease requests hung");
    let acquired_b = requests
        .iter()
        .filter(|r| host_of(r) == "localhost" && r.path.contains("/leases") && r.method != "GET")
        .filter(|r| r.status.is_some_and(|s| s < 300))
        .map(|r| r.received)
        .min()
        .expect("B acquired");
    let earliest = match edit {
        HandEdit::Shorten => edited + Duration::from_secs(1),
        HandEdit::Delete | HandEdit::Empty => renewed_a + Duration::from_secs(3),
    };
    assert!(
        acquired_b >= earliest,
        "B took the lease {:?} too early ({:?} after the edit): {}",
        earliest - acquired_b,
        acquired_b.saturating_duration_since(edited),
        logs()
    );
    let scale_writes = |host: &str| {
        requests
            .iter()
            .filter(|r| host_of(r) == host && r.method == "PATCH" && r.path.ends_with("/demo/scale"))
            .filter(|r| r.status.is_some_and(|s| s < 300))
            .cloned()
            .collect::<Vec<_>>()
    };
    let last_a = scale_writes("127.0.0.1").iter().filter_map(|r| r.answered).max().expect("A scaled");
    let writes_b = scale_writes("localhost");
    let first_b = writes_b.iter().map(|r| r.received).min().expect("B scaled once it led");
    assert!(first_b > last_a, "B wrote {:?} before A's last write was answered: {}", last_a - first_b, logs());
    for child in [&mut a, &mut b] {
        signal(child, "-KILL");
        child.wait().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_deleted_by_hand_never_gives_two_writers() {
    a_hand_edited_lease_never_gives_two_writers(HandEdit::Delete).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_emptied_by_hand_never_gives_two_writers() {
    a_hand_edited_lease_never_gives_two_writers(HandEdit::Empty).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_shortened_by_hand_counts_from_the_edit() {
    a_hand_edited_lease_never_gives_two_writers(HandEdit::Shorten).await;
}

/// Writes to the state ConfigMap, from the state's writer.
fn state_writes(kube: &FakeKube) -> usize {
    kube.requests()
        .iter()
        .filter(|r| r.method != "GET" && r.path.contains("/configmaps") && !r.path.contains("/leases"))
        .count()
}

/// Issue 26: a state write is fenced by the lease right before it is sent, not only when
/// it was queued. The write budget (qps 0.1, burst 1) holds the last-active write of the
/// first poll behind the scale patch that took the only token; meanwhile another
/// instance takes the lease. No state write is sent after that (before, the writer sent
/// it once its token came, ten seconds later, without the lease and with nobody waiting
/// for it any more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_write_held_back_is_not_sent_once_the_lease_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "demo", 0).await;
    let queue = sqs::queue("fenced").await;
    sqs::send(&queue, 30).await;
    let port = free_port();
    let cfg = config(dir.path(), &kubeconfig, &queue, port, "a.toml");
    // One write at once, the next token ten seconds later.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replacen("[kubernetes]\n", "[kubernetes]\nqps = 0.1\nburst = 1\n", 1)).unwrap();
    let cfg = cfg.to_str().unwrap().to_owned();
    let log = dir.path().join("a.log");
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut a = spawn(&["run", "--config", &cfg], &[], &log);
    assert!(
        wait_until(Duration::from_secs(15), || kube.count("PATCH", "/scale") >= 1).await,
        "no scale patch\n{}",
        logs()
    );
    // The last-active write of that poll now waits for a token; the lease goes.
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    kube.put_lease(NS, LEASE, serde_json::json!({"holderIdentity": "intruder", "leaseDurationSeconds": 3600, "renewTime": now, "acquireTime": now}));
    assert!(wait_until(Duration::from_secs(3), || logs().contains("lost the lease")).await, "{}", logs());
    let lost = state_writes(&kube);
    // The token comes ten seconds after the scale patch's.
    tokio::time::sleep(Duration::from_secs(13)).await;
    assert_eq!(state_writes(&kube), lost, "a state write was sent without the lease\n{}", logs());
    signal(&a, "-TERM");
    assert_eq!(a.wait().unwrap().code(), Some(0), "{}", logs());
}

/// Issue 26: under leader election only the leader removes the keys of targets no rule
/// names: while another instance holds the lease nothing is removed; once this one
/// leads, they go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_removes_unused_state_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "demo", 0).await;
    let queue = sqs::queue("prune").await;
    let state = serde_json::json!({
        "deployment.default.demo": "2026-12-01T10:00:00Z",
        "deployment.default.gone": "2026-12-01T10:00:00Z",
    });
    kube.put_config_map(NS, "sqscale-state", state);
    let keys = || -> Vec<String> {
        let map = kube.config_map(NS, "sqscale-state").unwrap();
        map["data"].as_object().unwrap().keys().cloned().collect()
    };
    let intruder = |kube: &FakeKube| {
        let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        kube.put_lease(NS, LEASE, serde_json::json!({"holderIdentity": "intruder", "leaseDurationSeconds": 3, "renewTime": now, "acquireTime": now}));
    };
    intruder(&kube);
    let cfg = config(dir.path(), &kubeconfig, &queue, free_port(), "a.toml");
    let log = dir.path().join("a.log");
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut a = spawn(&["run", "--config", cfg.to_str().unwrap()], &[], &log);
    // The intruder renews for 4 s: a standby all that time.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        intruder(&kube);
    }
    assert_eq!(keys(), ["deployment.default.demo", "deployment.default.gone"], "a standby removed keys\n{}", logs());
    assert!(!logs().contains("became the leader"), "{}", logs());
    // The intruder stops renewing: this instance leads after 3 s, and removes the key
    // (within the writer's retry of 10 s).
    assert!(
        wait_until(Duration::from_secs(20), || keys() == ["deployment.default.demo"]).await,
        "{:?}\n{}",
        keys(),
        logs()
    );
    assert!(logs().contains("became the leader"), "{}", logs());
    signal(&a, "-TERM");
    assert_eq!(a.wait().unwrap().code(), Some(0), "{}", logs());
}
