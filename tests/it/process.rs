//! The `sqscale run` binary as systemd runs it: real signals, the sd_notify protocol on a
//! NOTIFY_SOCKET, the HTTP endpoints, `sqscale status`, Events on the target, and exit
//! codes; `import-keda` against the fake API server. Needs `SQS_ENDPOINT_URL` (scripts/test starts moto).

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::daemon::{cluster, demo_rule, wait_until, write};
use crate::support::fake_kube::Kind;
use crate::support::process::{free_port, http_get, signal, spawn, spawn_without};
use crate::support::sqs;

const NS: &str = "default";

/// Reads sd_notify datagrams until one contains `want` (or the timeout passes).
fn expect_notify(socket: &UnixDatagram, want: &str, seen: &mut Vec<String>) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = msg.lines().any(|l| l == want);
            seen.push(msg);
            if hit {
                return true;
            }
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_protocol_signals_endpoints_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "demo", 0).await;
    let queue = sqs::queue("process").await;
    let port = free_port();
    let rules = |max: u32| {
        format!(
            "[kubernetes]\nkubeconfig = \"{}\"\n[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n[server]\nlisten = \"127.0.0.1:{port}\"\n{}",
            kubeconfig.display(),
            sqs::endpoint(),
            demo_rule("demo", &queue, &format!("max_replica_count = {max}"))
        )
    };
    let config = write(dir.path(), "sqscale.toml", &rules(5));
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let log = dir.path().join("sqscale.log");
    let mut child = spawn(
        &["run", "--config", config.to_str().unwrap()],
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())],
        &log,
    );
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();

    let mut seen = Vec::new();
    assert!(expect_notify(&socket, "READY=1", &mut seen), "no READY=1: {seen:?}\n{}", logs());

    sqs::send(&queue, 30).await;
    let replicas = || kube.replicas(Kind::Deployment, NS, "demo").unwrap();
    assert!(wait_until(Duration::from_secs(15), || replicas() == 5).await, "at {}\n{}", replicas(), logs());

    // The endpoints follow the queue. The worker reports a poll after its last write
    // (the last-active annotation), so the figures may trail the patch by a moment.
    let mut scrape = http_get(port, "/metrics").await;
    for _ in 0..50 {
        if scrape.1.contains("sqscale_current_replicas{rule=\"demo\"} 5") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        scrape = http_get(port, "/metrics").await;
    }
    let (code, metrics) = scrape;
    assert_eq!(code, 200);
    for line in [
        "sqscale_current_replicas{rule=\"demo\"} 5",
        "sqscale_desired_replicas{rule=\"demo\"} 5",
        "sqscale_scale_total{rule=\"demo\",direction=\"up\"} 3",
        "sqscale_rules 1",
        "sqscale_build_info{version=",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    assert!(metrics.contains(&format!("sqscale_queue_backlog{{rule=\"demo\",queue=\"{queue}\"}} 30")), "{metrics}");
    assert!(metrics.contains("process_resident_memory_bytes"), "{metrics}");
    assert!(metrics.contains("sqscale_poll_duration_seconds_bucket"), "{metrics}");
    assert_eq!(http_get(port, "/healthz").await.0, 200);
    assert_eq!(http_get(port, "/readyz").await.0, 200);
    let (_, status) = http_get(port, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let rule = &status["rules"][0];
    assert_eq!((rule["rule"].as_str(), rule["current_replicas"].as_u64()), (Some("demo"), Some(5)));
    assert_eq!(rule["backlog"][&queue].as_u64(), Some(30));
    assert_eq!(rule["last_reason"].as_str(), Some("at_max"));

    // `sqscale status` renders the same figures.
    let out = Command::new(env!("CARGO_BIN_EXE_sqscale"))
        .args(["status", "--server", &format!("http://127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    let row = table.lines().nth(1).expect("a row");
    assert!(row.starts_with("demo") && row.contains("Deployment/default/demo") && row.contains(" 30 "), "{table}");
    assert!(out.stderr.is_empty(), "nothing waits for a restart yet: {}", String::from_utf8_lossy(&out.stderr));

    // `sqscale health` finds the daemon through the rule file's [server] listen.
    let out = Command::new(env!("CARGO_BIN_EXE_sqscale"))
        .args(["health", "--config", config.to_str().unwrap()])
        .env_remove("SQSCALE_SERVER__LISTEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");

    // Events reached the target with the HPA's and KEDA's reasons.
    let reasons: Vec<String> = kube.events().iter().filter_map(|e| e["reason"].as_str().map(str::to_owned)).collect();
    assert!(reasons.contains(&"ScaleTargetActivated".to_owned()), "{reasons:?}");
    assert!(reasons.contains(&"SuccessfulRescale".to_owned()), "{reasons:?}");
    let ev = kube.events().into_iter().find(|e| e["reason"] == "SuccessfulRescale").unwrap();
    assert_eq!(ev["reportingController"].as_str(), Some("sqscale"));
    assert_eq!(ev["regarding"]["name"].as_str(), Some("demo"));
    assert!(ev["note"].as_str().unwrap().starts_with("New size: 4; reason: rate_limited"), "{ev}");

    // SIGHUP: RELOADING=1 (with MONOTONIC_USEC), the new max, READY=1. The lease's new
    // name waits for a restart: the reload says so.
    write(dir.path(), "sqscale.toml", &format!("{}[leader_election]\nlease_name = \"renamed\"\n", rules(10)));
    signal(&child, "-HUP");
    assert!(expect_notify(&socket, "RELOADING=1", &mut seen), "{seen:?}");
    assert!(seen.last().unwrap().contains("MONOTONIC_USEC="), "{seen:?}");
    assert!(expect_notify(&socket, "READY=1", &mut seen), "{seen:?}");
    assert!(wait_until(Duration::from_secs(10), || replicas() == 6).await, "at {}\n{}", replicas(), logs());
    let (_, status) = http_get(port, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["restart_required"], serde_json::json!(["leader_election.lease_name"]), "{status}");
    assert!(http_get(port, "/metrics").await.1.contains("sqscale_config_reloads_total{result=\"partial\"} 1"));
    let out = Command::new(env!("CARGO_BIN_EXE_sqscale"))
        .args(["status", "--server", &format!("http://127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(out.status.success());
    let note = String::from_utf8_lossy(&out.stderr);
    assert_eq!(note, "note: changed in the rule file, applied only on restart: leader_election.lease_name\n");

    // SIGTERM: STOPPING=1 and a clean exit.
    signal(&child, "-TERM");
    assert!(expect_notify(&socket, "STOPPING=1", &mut seen), "{seen:?}");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", logs());
    let logs = logs();
    assert!(logs.contains("rules reloaded"), "{logs}");
    assert!(logs.contains("stopped cleanly"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_logs_what_it_would_do_and_patches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "demo", 0).await;
    let queue = sqs::queue("dry").await;
    sqs::send(&queue, 30).await;
    let text = format!(
        "[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n[server]\nlisten = \"\"\n{}",
        sqs::endpoint(),
        demo_rule("demo", &queue, "")
    );
    let config = write(dir.path(), "sqscale.toml", &text);
    let log = dir.path().join("sqscale.log");
    let mut child = spawn(
        &[
            "run",
            "--dry-run",
            "--log-format",
            "json",
            "--config",
            config.to_str().unwrap(),
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
        ],
        &[],
        &log,
    );
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(15), || logs().contains("dry run: would scale")).await, "{}", logs());
    signal(&child, "-INT");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert_eq!(kube.count("PATCH", "/scale"), 0);
    assert_eq!(kube.count("PATCH", "/deployments/demo"), 0, "no annotation either");
    // JSON lines carry the rule and its target as fields.
    let line = logs().lines().find(|l| l.contains("would scale")).unwrap().to_owned();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["fields"]["to"], 1);
    assert_eq!(v["fields"]["rule"], "demo", "{line}");
    assert_eq!(v["fields"]["target"], "Deployment/default/demo", "{line}");
}

#[test]
fn an_invalid_rule_file_exits_78_and_a_missing_kubeconfig_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(dir.path(), "bad.toml", "[[rule]]\nname = \"x\"\n");
    let log = dir.path().join("log");
    let mut child = spawn(&["run", "--config", bad.to_str().unwrap()], &[], &log);
    assert_eq!(child.wait().unwrap().code(), Some(78));
    let good = write(
        dir.path(),
        "good.toml",
        "[server]\nlisten = \"\"\n[[rule]]\nname = \"x\"\ntarget = { name = \"x\" }\n[[rule.trigger]]\nqueue_url = \"https://sqs.us-east-1.amazonaws.com/1/q\"\n",
    );
    let mut child =
        spawn(&["run", "--config", good.to_str().unwrap(), "--kubeconfig", "/nonexistent/kubeconfig"], &[], &log);
    assert_eq!(child.wait().unwrap().code(), Some(1));
    assert!(std::fs::read_to_string(&log).unwrap().contains("/nonexistent/kubeconfig"));
}

/// Runs `sqscale check --remote` off the async runtime (the fake API server lives on it).
async fn check_remote(config: &Path, kubeconfig: &Path) -> (Option<i32>, String) {
    let args: Vec<String> =
        ["check", "--remote", "--config", config.to_str().unwrap(), "--kubeconfig", kubeconfig.to_str().unwrap()]
            .map(str::to_owned)
            .to_vec();
    let out =
        tokio::task::spawn_blocking(move || Command::new(env!("CARGO_BIN_EXE_sqscale")).args(&args).output().unwrap())
            .await
            .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_remote_reports_queue_target_and_rbac_per_rule() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "demo", 2).await;
    let queue = sqs::queue("remote").await;
    sqs::send(&queue, 7).await;
    let head = format!("[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n", sqs::endpoint());
    let ghost = demo_rule("ghost", "https://sqs.us-east-1.amazonaws.com/123456789012/no-such-queue", "");
    let config = write(dir.path(), "sqscale.toml", &format!("{head}{}{ghost}", demo_rule("demo", &queue, "")));
    let (code, stdout) = check_remote(&config, &kubeconfig).await;
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("ok ") || l.starts_with("FAIL ")).collect();
    assert_eq!(code, Some(1), "{stdout}");
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("ok    demo: queue ") && lines[0].contains("has 7 messages"), "{}", lines[0]);
    assert!(lines[0].contains("has 2 replicas"), "{}", lines[0]);
    // Which identity reads the queue (issue 25: a role's trust policy may refuse one).
    assert!(lines[0].contains("(read as the default credential chain)"), "{}", lines[0]);
    assert!(lines[1].starts_with("FAIL  ghost: ") && lines[1].contains("[not_found]"), "{}", lines[1]);
    // Per rule: get, list and watch the target; get and patch its scale; create events;
    // get, patch and create the state ConfigMap. Nothing on the whole object but reads.
    assert_eq!(kube.count("POST", "/selfsubjectaccessreviews"), 18);
    let reviews: Vec<serde_json::Value> = kube
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/selfsubjectaccessreviews"))
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect();
    let writes_of_workloads = reviews.iter().filter(|r| {
        let a = &r["spec"]["resourceAttributes"];
        a["resource"] == "deployments"
            && a["subresource"].is_null()
            && !matches!(a["verb"].as_str(), Some("get" | "list" | "watch"))
    });
    assert_eq!(writes_of_workloads.count(), 0, "{reviews:#?}");

    // Without patch on deployments/scale the rule fails and says what is missing.
    kube.deny("patch", "deployments", "scale");
    let config = write(dir.path(), "one.toml", &format!("{head}{}", demo_rule("demo", &queue, "")));
    let (code, stdout) = check_remote(&config, &kubeconfig).await;
    assert_eq!(code, Some(1));
    assert!(
        stdout.contains("FAIL  demo: not allowed to patch deployments/scale \"demo\" in namespace default"),
        "{stdout}"
    );
    kube.allow_all();
    assert_eq!(check_remote(&config, &kubeconfig).await.0, Some(0));
}

/// Runs `sqscale ARGS` off the async runtime (the fake API server lives on it):
/// (exit code, stdout, stderr).
async fn sqscale_off_runtime(args: &[&str]) -> (Option<i32>, String, String) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let out =
        tokio::task::spawn_blocking(move || Command::new(env!("CARGO_BIN_EXE_sqscale")).args(&args).output().unwrap())
            .await
            .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

fn keda_object(kind: &str, ns: Option<&str>, name: &str, spec: serde_json::Value) -> serde_json::Value {
    let mut metadata = serde_json::json!({"name": name});
    if let Some(ns) = ns {
        metadata["namespace"] = ns.into();
    }
    serde_json::json!({"apiVersion": "keda.sh/v1alpha1", "kind": kind, "metadata": metadata, "spec": spec})
}

fn scaled_object(ns: &str, name: &str, target: &str, auth: serde_json::Value) -> serde_json::Value {
    let trigger = serde_json::json!({"type": "aws-sqs-queue", "authenticationRef": auth, "metadata": {
        "queueURL": format!("https://sqs.eu-west-1.amazonaws.com/123456789012/{name}"), "queueLength": "8"}});
    keda_object(
        "ScaledObject",
        Some(ns),
        name,
        serde_json::json!({"scaleTargetRef": {"name": target}, "maxReplicaCount": 12, "triggers": [trigger]}),
    )
}

/// The rules of an imported file as `sqscale check` reads them: (name, target namespace,
/// role of the first trigger).
async fn checked_rules(dir: &Path, text: &str) -> Vec<(String, String, Option<String>)> {
    let path = write(dir, "imported.toml", text);
    let (code, stdout, stderr) = sqscale_off_runtime(&["check", "--config", path.to_str().unwrap()]).await;
    assert_eq!(code, Some(0), "{stderr}\n{text}");
    let table: toml::Table = stdout.parse().unwrap();
    table["rule"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["target"]["namespace"].as_str().unwrap().to_owned(),
                r["trigger"][0].get("role_arn").and_then(|a| a.as_str()).map(str::to_owned),
            )
        })
        .collect()
}

/// Issue 25, item 8, from the cluster: a trigger's `queueURLFromEnv` is read from the
/// target's pod template (one GET of the target), and the rule says where it came from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_keda_reads_queue_url_from_env_from_the_clusters_target() {
    use crate::support::fake_kube::Kind;
    let dir = tempfile::tempdir().unwrap();
    let kube = crate::support::fake_kube::FakeKube::start().await;
    let kubeconfig = dir.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig);
    let url = "https://sqs.eu-west-1.amazonaws.com/123456789012/orders";
    kube.add_deployment("default", "orders-worker", 1);
    kube.set_env(Kind::Deployment, "default", "orders-worker", "QUEUE_URL", url);
    let trigger = serde_json::json!({"type": "aws-sqs-queue", "metadata": {"queueURLFromEnv": "QUEUE_URL"}});
    kube.add_keda(keda_object(
        "ScaledObject",
        Some("default"),
        "orders",
        serde_json::json!({"scaleTargetRef": {"name": "orders-worker"}, "triggers": [trigger]}),
    ));
    let args = ["import-keda", "--kubeconfig", kubeconfig.to_str().unwrap()];
    let (code, stdout, stderr) = sqscale_off_runtime(&args).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains(&format!("queue_url = \"{url}\"")), "{stdout}");
    assert!(
        stderr.contains("queue_url is the value of QUEUE_URL in the container app of Deployment default/orders-worker"),
        "{stderr}"
    );
    assert_eq!(kube.count("GET", "/apis/apps/v1/namespaces/default/deployments/orders-worker"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_keda_lists_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let kube = crate::support::fake_kube::FakeKube::start().await;
    let kubeconfig = dir.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig);
    // The context's namespace is where kubectl (and import-keda) looks by default.
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&kubeconfig).unwrap()).unwrap();
    config["contexts"][0]["context"]["namespace"] = "shop".into();
    std::fs::write(&kubeconfig, config.to_string()).unwrap();
    let kubeconfig = kubeconfig.to_str().unwrap();

    let shop_role = "arn:aws:iam::123456789012:role/shop";
    let shared_role = "arn:aws:iam::123456789012:role/shared";
    let cta = serde_json::json!({"name": "shared", "kind": "ClusterTriggerAuthentication"});
    kube.add_keda(scaled_object("shop", "orders", "orders-worker", serde_json::json!({"name": "aws-role"})));
    kube.add_keda(scaled_object("shop", "payments", "payments-worker", cta.clone()));
    kube.add_keda(scaled_object("billing", "orders", "invoices", cta));
    let pod_identity = |role: &str| serde_json::json!({"podIdentity": {"provider": "aws", "roleArn": role}});
    kube.add_keda(keda_object("TriggerAuthentication", Some("shop"), "aws-role", pod_identity(shop_role)));
    kube.add_keda(keda_object("ClusterTriggerAuthentication", None, "shared", pod_identity(shared_role)));
    kube.add_keda(keda_object(
        "ScaledObject",
        Some("shop"),
        "nightly",
        serde_json::json!({"scaleTargetRef": {"name": "batch"}, "triggers": [{"type": "cron", "metadata": {}}]}),
    ));
    kube.add_deployment("shop", "orders-worker", 1);

    let (code, stdout, stderr) = sqscale_off_runtime(&["import-keda", "--kubeconfig", kubeconfig]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: ScaledObject shop/nightly: no rule: it has no aws-sqs-queue trigger (only cron)")
    );
    assert!(stderr.ends_with("context fake, namespace shop: 2 rules imported, 1 ScaledObject not\n"), "{stderr}");
    let rules = checked_rules(dir.path(), &stdout).await;
    let own = |n: &str, ns: &str, r: &str| (n.to_owned(), ns.to_owned(), Some(r.to_owned()));
    assert_eq!(rules, [own("orders", "shop", shop_role), own("payments", "shop", shared_role)]);
    // The fake serves no ScaledJobs (a 404, as a cluster whose KEDA predates them): said,
    // and the ScaledObjects still import.
    assert!(
        stderr.contains("warning: ScaledJobs not imported: listing scaledjobs.keda.sh in namespace shop (context fake): the API server does not serve it"),
        "{stderr}"
    );
    // Only reads, and only of keda.sh: ScaledObjects, ScaledJobs and TriggerAuthentications
    // listed in the namespace, the ClusterTriggerAuthentication named by a trigger read by
    // name.
    let paths: Vec<String> = kube.requests().iter().map(|r| format!("{} {}", r.method, r.path)).collect();
    assert_eq!(
        paths,
        [
            "GET /apis/keda.sh/v1alpha1/namespaces/shop/scaledobjects",
            "GET /apis/keda.sh/v1alpha1/namespaces/shop/scaledjobs",
            "GET /apis/keda.sh/v1alpha1/namespaces/shop/triggerauthentications",
            "GET /apis/keda.sh/v1alpha1/clustertriggerauthentications/shared",
        ]
    );

    // Every namespace: the name found in two is prefixed with its namespace in both.
    let (code, stdout, stderr) = sqscale_off_runtime(&["import-keda", "--kubeconfig", kubeconfig, "-A"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let rules = checked_rules(dir.path(), &stdout).await;
    assert_eq!(
        rules,
        [
            own("billing-orders", "billing", shared_role),
            own("shop-orders", "shop", shop_role),
            own("payments", "shop", shared_role)
        ]
    );

    // --namespace, and --diff against what was imported before.
    let previous = write(dir.path(), "previous.toml", &stdout);
    let (code, stdout, stderr) = sqscale_off_runtime(&[
        "import-keda",
        "--kubeconfig",
        kubeconfig,
        "-n",
        "billing",
        "--diff",
        previous.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stdout,
        "+ orders: added (Deployment/billing/invoices)\n\
         - billing-orders: removed (Deployment/billing/invoices)\n\
         - payments: removed (Deployment/shop/payments-worker)\n\
         - shop-orders: removed (Deployment/shop/orders-worker)\n\
         0 rules unchanged\n"
    );

    // Without list on keda.sh: exit 1, saying what is needed.
    kube.deny("list", "scaledobjects", "");
    let (code, stdout, stderr) = sqscale_off_runtime(&["import-keda", "--kubeconfig", kubeconfig]).await;
    assert_eq!(code, Some(1));
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("listing scaledobjects.keda.sh in namespace shop (context fake): forbidden: import-keda needs get and list on keda.sh"),
        "{stderr}"
    );

    // A cluster without KEDA's CRDs answers 404 to the list.
    kube.allow_all();
    kube.fail_next(1, 404);
    let (code, _, stderr) = sqscale_off_runtime(&["import-keda", "--kubeconfig", kubeconfig]).await;
    assert_eq!(code, Some(1));
    assert!(stderr.contains("the API server does not serve it; is KEDA installed?"), "{stderr}");
}

/// `http://host:port` of moto, as (port, queue path) for a queue URL it gave.
fn moto_port_and_path(queue: &str) -> (u16, String) {
    let rest = queue.strip_prefix("http://").expect("moto queue URLs are http");
    let (authority, path) = rest.split_once('/').unwrap();
    (authority.rsplit_once(':').unwrap().1.parse().unwrap(), format!("/{path}"))
}

/// Proxies from the environment, as a bastion sets them: the API server (`kube.test`, over
/// a CONNECT tunnel) and SQS (`sqs.test`, plain http in absolute form, its endpoint from
/// `AWS_ENDPOINT_URL_SQS`) are reachable only through the proxy, which resolves those
/// names; the daemon scales, and the proxy carried both. Then `NO_PROXY` covering the
/// servers (addressed as 127.0.0.1) bypasses it: nothing more through the proxy, and the
/// daemon still scales (it used to exit at start when `HTTPS_PROXY` was set). The first
/// run names the proxy in lower-case variables, the second in upper case. A third run
/// has no variables but a kubeconfig whose cluster names the proxy (`proxy-url`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_carry_kubernetes_and_sqs_and_no_proxy_bypasses_them() {
    use crate::support::forward_proxy::ForwardProxy;
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "demo", 0).await;
    kube.add_deployment(NS, "direct", 0);
    kube.add_deployment(NS, "configured", 0);
    let proxy = ForwardProxy::start().await;
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    let named = text.replace(&kube.url(), &format!("https://kube.test:{}", kube.addr().port()));
    assert_ne!(named, text);
    let named_kubeconfig = write(dir.path(), "kubeconfig-named", &named);

    // Each run sees only the proxy variables it is given.
    let all =
        ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"];
    let run = |name: &str, queue: &str, kubeconfig: &Path, sqs_url: &str, proxies: &[(&str, &str)]| {
        let config = write(
            dir.path(),
            &format!("{name}.toml"),
            &format!("[aws]\nregion = \"us-east-1\"\n[server]\nlisten = \"\"\n{}", demo_rule(name, queue, "")),
        );
        let args = ["run", "--config", config.to_str().unwrap(), "--kubeconfig", kubeconfig.to_str().unwrap()];
        let mut env = proxies.to_vec();
        env.push(("AWS_ENDPOINT_URL_SQS", sqs_url));
        let log = dir.path().join(format!("{name}.log"));
        (spawn_without(&args, &env, &all, &log), log)
    };
    let replicas = |name: &str| kube.replicas(Kind::Deployment, NS, name).unwrap();

    // Through the proxy, named in lower case.
    let queue = sqs::queue("proxied").await;
    let (port, path) = moto_port_and_path(&queue);
    sqs::send(&queue, 30).await;
    let (mut child, log) = run(
        "demo",
        &format!("http://sqs.test:{port}{path}"),
        &named_kubeconfig,
        &format!("http://sqs.test:{port}"),
        &[("https_proxy", &proxy.url()), ("http_proxy", &proxy.url())],
    );
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(20), || replicas("demo") == 5).await, "at {}\n{}", replicas("demo"), logs());
    signal(&child, "-TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0), "{}", logs());
    assert!(proxy.count("kube.test") > 0, "{:?}", proxy.carried());
    // The polls took the direct path, to the endpoint AWS_ENDPOINT_URL_SQS names.
    let agents = proxy.agents("sqs.test");
    assert!(agents.iter().any(|a| a.starts_with("sqscale/")), "{agents:?}");

    // Upper case, and NO_PROXY covers the servers: nothing goes through the proxy.
    let carried = proxy.carried().len();
    let queue = sqs::queue("bypassed").await;
    sqs::send(&queue, 30).await;
    let upper = [("HTTPS_PROXY", &*proxy.url()), ("HTTP_PROXY", &proxy.url()), ("NO_PROXY", "127.0.0.1")];
    let (mut child, log) = run("direct", &queue, &kubeconfig, &sqs::endpoint(), &upper);
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(20), || replicas("direct") == 5).await,
        "at {}\n{}",
        replicas("direct"),
        logs()
    );
    signal(&child, "-TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0), "{}", logs());
    assert_eq!(proxy.carried().len(), carried, "{:?}", proxy.carried());

    // No variables, but the kubeconfig's proxy-url: the API server through the proxy.
    let mut with_proxy: serde_json::Value = serde_json::from_str(&named).unwrap();
    with_proxy["clusters"][0]["cluster"]["proxy-url"] = proxy.url().into();
    let with_proxy = write(dir.path(), "kubeconfig-proxy-url", &with_proxy.to_string());
    let tunnels = proxy.count("kube.test");
    let queue = sqs::queue("configured").await;
    sqs::send(&queue, 30).await;
    let (mut child, log) = run("configured", &queue, &with_proxy, &sqs::endpoint(), &[]);
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let scaled = wait_until(Duration::from_secs(20), || replicas("configured") == 5).await;
    assert!(scaled, "at {}\n{}", replicas("configured"), logs());
    signal(&child, "-TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0), "{}", logs());
    assert!(proxy.count("kube.test") > tunnels, "{:?}", proxy.carried());
    assert!(proxy.agents("127.0.0.1").is_empty(), "SQS is not proxied: {:?}", proxy.carried());
}

/// A rule file for `demo` (and `two`, when `both`) listening on `port`.
fn state_rules(kubeconfig: &Path, queue: &str, port: u16, both: bool) -> String {
    let mut text = format!(
        "[kubernetes]\nkubeconfig = \"{}\"\n[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n[server]\nlisten = \"127.0.0.1:{port}\"\n{}",
        kubeconfig.display(),
        sqs::endpoint(),
        demo_rule("demo", queue, "")
    );
    if both {
        text.push_str(&demo_rule("two", queue, ""));
    }
    text
}

/// Issue 26: the state ConfigMap shrinks. At start, the keys of targets no rule names
/// (`gone`, and `old` whose value is not even a time) are removed; after a reload that
/// drops the rule of `two`, its key goes too. Keys that are not sqscale's stay. The
/// size shows in /status and, near the API server's 1 MiB limit, is warned about once
/// and noted by `sqscale status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_keeps_only_the_keys_of_running_rules_and_shows_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(dir.path(), "demo", 0).await;
    kube.add_deployment(NS, "two", 0);
    let queue = sqs::queue("state").await;
    let notes = "n".repeat(800 << 10);
    kube.put_config_map(
        "sqscale",
        "sqscale-state",
        serde_json::json!({
            "deployment.default.demo": "2026-12-01T10:00:00Z",
            "deployment.default.two": "2026-12-01T10:00:00Z",
            "deployment.default.gone": "2026-12-01T10:00:00Z",
            "statefulset.default.old": "yesterday",
            "notes": notes,
        }),
    );
    let keys = || -> Vec<String> {
        let map = kube.config_map("sqscale", "sqscale-state").unwrap();
        map["data"].as_object().unwrap().keys().cloned().collect()
    };
    let port = free_port();
    let config = write(dir.path(), "sqscale.toml", &state_rules(&kubeconfig, &queue, port, true));
    let log = dir.path().join("sqscale.log");
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut child = spawn(&["run", "--config", config.to_str().unwrap()], &[], &log);
    let kept = ["deployment.default.demo", "deployment.default.two", "notes"];
    assert!(wait_until(Duration::from_secs(10), || keys() == kept).await, "{:?}\n{}", keys(), logs());

    let (_, body) = http_get(port, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let state = &status["state"][0];
    assert_eq!(state["configmap"], "sqscale/sqscale-state", "{body}");
    let bytes = state["bytes"].as_u64().unwrap();
    assert!((800 << 10..1 << 20).contains(&bytes), "{body}");
    assert_eq!(state["near_limit"], true, "{body}");
    let out = Command::new(env!("CARGO_BIN_EXE_sqscale"))
        .args(["status", "--server", &format!("http://127.0.0.1:{port}")])
        .output()
        .unwrap();
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(
        note.contains("note: ConfigMap sqscale/sqscale-state") && note.contains("of the API server's 1024 KiB limit"),
        "{note}"
    );

    write(dir.path(), "sqscale.toml", &state_rules(&kubeconfig, &queue, port, false));
    signal(&child, "-HUP");
    let kept = ["deployment.default.demo", "notes"];
    assert!(wait_until(Duration::from_secs(10), || keys() == kept).await, "{:?}\n{}", keys(), logs());
    signal(&child, "-TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0), "{}", logs());
    assert_eq!(logs().matches("nears the API server's 1 MiB limit").count(), 1, "{}", logs());
}

/// Issue 26: a reload blocked on the rule file (a FIFO nobody writes to, as a hung mount
/// would block it) does not hold up SIGTERM: the daemon stops cleanly within its grace,
/// long before the read's own deadline. (Before, SIGTERM waited until the FIFO was fed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_daemon_while_a_reload_is_blocked_on_a_fifo() {
    let dir = tempfile::tempdir().unwrap();
    let (_kube, kubeconfig) = cluster(dir.path(), "demo", 0).await;
    let queue = sqs::queue("fifo").await;
    let port = free_port();
    let config = write(dir.path(), "sqscale.toml", &state_rules(&kubeconfig, &queue, port, false));
    let log = dir.path().join("sqscale.log");
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut child = spawn(&["run", "--config", config.to_str().unwrap(), "--shutdown-grace", "3s"], &[], &log);
    assert!(wait_until(Duration::from_secs(10), || logs().contains("started")).await, "{}", logs());
    std::fs::remove_file(&config).unwrap();
    assert!(Command::new("mkfifo").arg(&config).status().unwrap().success());
    signal(&child, "-HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopping = std::time::Instant::now();
    signal(&child, "-TERM");
    while child.try_wait().unwrap().is_none() {
        assert!(stopping.elapsed() < Duration::from_secs(5), "still running 5 s after SIGTERM\n{}", logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(child.wait().unwrap().code(), Some(0), "{}", logs());
    assert!(logs().contains("stopped cleanly"), "{}", logs());
}

/// Issue 26: a rule file that never ends (a symlink to /dev/zero) is read up to a cap,
/// not into all memory: the reload fails naming the file and the cap, and the old rules
/// keep running; `check` says the same and exits 78.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_file_that_never_ends_fails_the_reload_and_the_old_rules_run_on() {
    let dir = tempfile::tempdir().unwrap();
    let (_kube, kubeconfig) = cluster(dir.path(), "demo", 0).await;
    let queue = sqs::queue("zero").await;
    let port = free_port();
    let config = write(dir.path(), "sqscale.toml", &state_rules(&kubeconfig, &queue, port, false));
    let log = dir.path().join("sqscale.log");
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut child = spawn(&["run", "--config", config.to_str().unwrap()], &[], &log);
    assert!(wait_until(Duration::from_secs(10), || logs().contains("started")).await, "{}", logs());
    std::fs::remove_file(&config).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &config).unwrap();
    signal(&child, "-HUP");
    assert!(wait_until(Duration::from_secs(10), || logs().contains("keeping the running rules")).await, "{}", logs());
    let line = logs().lines().find(|l| l.contains("keeping the running rules")).unwrap().to_owned();
    assert!(line.contains(config.to_str().unwrap()) && line.contains("larger than 16 MiB"), "{line}");
    let (_, body) = http_get(port, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["rules"][0]["rule"], "demo", "{body}");
    assert!(http_get(port, "/metrics").await.1.contains("sqscale_config_reloads_total{result=\"failure\"} 1"));
    signal(&child, "-TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0), "{}", logs());

    let out = Command::new(env!("CARGO_BIN_EXE_sqscale"))
        .args(["check", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains(config.to_str().unwrap()) && said.contains("larger than 16 MiB"), "{said}");
}

/// Issue 26: a reload whose rule file is not read within 10 s (a FIFO nobody writes to)
/// fails and says so, and the old rules run on; the read left behind does not hold up
/// the next reload, of a good file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_blocked_on_a_fifo_fails_at_its_deadline_and_the_next_one_works() {
    let dir = tempfile::tempdir().unwrap();
    let (_kube, kubeconfig) = cluster(dir.path(), "demo", 0).await;
    let queue = sqs::queue("fifo-deadline").await;
    let port = free_port();
    let config = write(dir.path(), "sqscale.toml", &state_rules(&kubeconfig, &queue, port, false));
    let log = dir.path().join("sqscale.log");
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut child = spawn(&["run", "--config", config.to_str().unwrap()], &[], &log);
    assert!(wait_until(Duration::from_secs(10), || logs().contains("started")).await, "{}", logs());
    std::fs::remove_file(&config).unwrap();
    assert!(Command::new("mkfifo").arg(&config).status().unwrap().success());
    signal(&child, "-HUP");
    assert!(wait_until(Duration::from_secs(15), || logs().contains("keeping the running rules")).await, "{}", logs());
    assert!(logs().contains("not read within 10s (a FIFO nobody writes to, or a hung mount?)"), "{}", logs());
    let (_, body) = http_get(port, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["rules"].as_array().map(Vec::len), Some(1), "{body}");
    assert!(http_get(port, "/metrics").await.1.contains("sqscale_config_reloads_total{result=\"failure\"} 1"));

    std::fs::remove_file(&config).unwrap();
    write(dir.path(), "sqscale.toml", &state_rules(&kubeconfig, &queue, port, true));
    signal(&child, "-HUP");
    assert!(wait_until(Duration::from_secs(10), || logs().contains("rules reloaded")).await, "{}", logs());
    let (_, body) = http_get(port, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["rules"].as_array().map(Vec::len), Some(2), "{body}");
    signal(&child, "-TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0), "{}", logs());
}
