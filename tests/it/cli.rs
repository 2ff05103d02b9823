//! The `sqscale` binary as a user runs it: `check`, `simulate`, `health` and `import-keda` (from files), their
//! output and their exit codes (0, 1, 64, 65, 78); the unit's and the image's settings.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::process::sqscale;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn check_prints_the_resolved_rules() {
    let out = sqscale(&["check", "--config", "config/demo.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("name = \"demo-worker\""));
    assert!(stdout.contains("initial_cooldown_period = \"0s\""), "defaults filled in:\n{stdout}");
    assert!(stdout.contains("scale_on_in_flight = true"));
}

#[test]
fn check_reports_every_problem_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "bad.toml",
        r#"
[[rule]]
name = "orders"
target = { name = "w" }
min_replica_count = 5
max_replica_count = 3
cooldown = 10
[[rule.trigger]]
queue_url = "https://sqs.eu-west-1.amazonaws.com/123/orders"
queue_length = 0
scale_on_delayed = true
[[rule]]
name = "Bad_Name"
target = { name = "w2" }
[[rule.trigger]]
queue_url = "https://sqs.eu-west-1.amazonaws.com/123"
"#,
    );
    let out = sqscale(&["check", "--config", &path]);
    assert_eq!(out.status.code(), Some(78));
    let err = stderr(&out);
    assert!(err.contains(&format!("{path}: 5 problems")), "{err}");
    for needle in [
        "rule \"orders\": unknown key cooldown",
        "rule \"orders\": min_replica_count (5) is greater than max_replica_count (3)",
        "rule \"orders\": trigger 1: queue_length (0) must be greater than 0",
        "rule \"Bad_Name\": name must be a DNS label",
        "rule \"Bad_Name\": trigger 1: queue_url",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert!(out.stdout.is_empty());
}

/// Issue 26 item 5: `[kubernetes] qps = 1e10` passed `check`, and `run` panicked at start
/// (exit 101, so systemd restarted it forever). Both now refuse it with 78, naming the key,
/// from the one validation they share.
#[test]
fn a_qps_past_the_limiters_range_exits_78_in_check_and_run() {
    let dir = tempfile::tempdir().unwrap();
    // A cluster that refuses connections on 127.0.0.1: building its client (and its write
    // budget) needs no answer.
    let kubeconfig = write(
        dir.path(),
        "kubeconfig",
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: \"https://127.0.0.1:1\"}\n\
         users:\n- name: u\n  user: {token: t}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\n",
    );
    let path = write(
        dir.path(),
        "qps.toml",
        &format!(
            "[kubernetes]\nkubeconfig = \"{kubeconfig}\"\nqps = 1e10\n[aws]\nregion = \"eu-west-1\"\nendpoint_url = \"http://127.0.0.1:1\"\n[server]\nlisten = \"\"\n[[rule]]\nname = \"orders\"\ntarget = {{ name = \"w\" }}\n\
         [[rule.trigger]]\nqueue_url = \"https://sqs.eu-west-1.amazonaws.com/123456789012/orders\"\n"
        ),
    );
    for command in ["check", "run"] {
        // `run` that got past its config would go on; give it 15 s.
        let log = dir.path().join(format!("{command}.err"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_sqscale"))
            .args([command, "--config", &path])
            .env_remove("SQSCALE_CONFIG")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("run sqscale");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        let status = loop {
            match child.try_wait().unwrap() {
                Some(status) => break Some(status),
                None if std::time::Instant::now() > deadline => {
                    child.kill().unwrap();
                    child.wait().unwrap();
                    break None;
                }
                None => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        };
        let err = std::fs::read_to_string(&log).unwrap();
        let status = status.unwrap_or_else(|| panic!("{command} still running after 15 s: {err}"));
        assert_eq!(status.code(), Some(78), "{command}: {err}");
        assert!(err.contains("[kubernetes]: qps (10000000000) must be"), "{command}: {err}");
        assert!(!err.contains("panicked"), "{command}: {err}");
    }
}

/// The example job rule checks: its resolved form (the template path as written), its
/// cap as a comment, the count of job rules, and no warning; standard output checks
/// again as the same file.
#[test]
fn check_accepts_the_example_job_rule_and_prints_its_cap() {
    let out = sqscale(&["check", "--config", "config/jobs.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    for needle in [
        "[[job]]",
        "name = \"video-encode\"",
        "template = \"jobs/encode.yaml\"",
        "successful_jobs_history_limit = 5",
        "multiple_scalers_calculation = \"max\"",
        "# job \"video-encode\": at most 4 unfinished Jobs (M = 4, min = 0)",
    ] {
        assert!(stdout.contains(needle), "{needle} in\n{stdout}");
    }
    let err = stderr(&out);
    assert!(err.contains("config/jobs.toml: ok, 0 rules, 1 job rule"), "{err}");
    assert!(!err.contains("warning"), "{err}");
}

/// A job rule's template that the Job API would refuse makes `check` exit 78, naming the
/// template's file and line; a strategy paired badly with its trigger is a warning on
/// standard error.
#[test]
fn check_of_a_bad_template_exits_78_and_a_bad_pairing_warns() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("jobs")).unwrap();
    let template = "apiVersion: batch/v1\nkind: Job\nspec:\n  template:\n    spec:\n      restartPolicy: Always\n      containers:\n        - name: a\n          image: busybox\n";
    write(&dir.path().join("jobs"), "a.yaml", template);
    let rules = "[[job]]\nname = \"a\"\ntemplate = \"jobs/a.yaml\"\n[job.scaling_strategy]\nstrategy = \"accurate\"\n[[job.trigger]]\nqueue_url = \"https://sqs.eu-west-1.amazonaws.com/123/a\"\n";
    let path = write(dir.path(), "sqscale.toml", rules);
    let out = sqscale(&["check", "--config", &path]);
    assert_eq!(out.status.code(), Some(78));
    let err = stderr(&out);
    let file = dir.path().join("jobs/a.yaml");
    assert!(
        err.contains(&format!(
            "job \"a\": template {} line 6: spec.template.spec.restartPolicy is \"Always\"",
            file.display()
        )),
        "{err}"
    );

    write(&dir.path().join("jobs"), "a.yaml", &template.replace("Always", "Never"));
    let out = sqscale(&["check", "--config", &path]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(
            "warning: job \"a\": trigger 1: strategy \"accurate\" with scale_on_in_flight = true over-creates"
        ),
        "{err}"
    );
    assert!(!String::from_utf8(out.stdout).unwrap().contains("warning"), "warnings stay off standard output");
}

#[test]
fn check_of_a_missing_file_exits_78() {
    let out = sqscale(&["check", "--config", "/nonexistent/sqscale.toml"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains("/nonexistent/sqscale.toml"), "{}", stderr(&out));
}

#[test]
fn simulate_the_demo() {
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("demo.svg");
    let out = sqscale(&[
        "simulate",
        "--config",
        "config/demo.toml",
        "--trace",
        "config/traces/demo.csv",
        "--chart",
        chart.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let replicas: Vec<&str> = stdout.lines().skip(1).map(|l| l.split(',').nth(5).unwrap()).collect();
    assert_eq!(replicas, ["1", "4", "5", "5", "5", "5", "0", "0", "0", "0"], "{stdout}");
    assert!(std::fs::read_to_string(chart).unwrap().contains("<svg"));
}

#[test]
fn simulate_bad_trace_exits_65_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let trace = write(
        dir.path(),
        "t.csv",
        "time,queue,visible,in_flight,delayed\n0,keda-demo-queue,30,0,0\n10,keda-demo-queue,-3,0,0\n",
    );
    let out = sqscale(&["simulate", "--config", "config/demo.toml", "--trace", &trace]);
    assert_eq!(out.status.code(), Some(65));
    assert!(stderr(&out).contains("line 3: visible (\"-3\") is not a message count"), "{}", stderr(&out));
}

#[test]
fn simulate_with_an_invalid_config_exits_78_and_unknown_rule_64() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(dir.path(), "bad.toml", "[[rule]]\nname = \"x\"\n");
    let out = sqscale(&["simulate", "--config", &bad, "--trace", "config/traces/demo.csv"]);
    assert_eq!(out.status.code(), Some(78));
    let out =
        sqscale(&["simulate", "--config", "config/demo.toml", "--trace", "config/traces/demo.csv", "--rule", "nope"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("rules: demo-worker"), "{}", stderr(&out));
}

/// `--job-duration` is a number of seconds from 0 to 1e10 (exit 64 otherwise), and a
/// rule file without job rules replays as before with it.
#[test]
fn simulate_takes_a_job_duration() {
    let args = ["simulate", "--config", "config/demo.toml", "--trace", "config/traces/demo.csv"];
    for bad in ["-1", "NaN", "1e11", "soon"] {
        let out = sqscale(&[&args[..], &[&format!("--job-duration={bad}")]].concat());
        let code = out.status.code();
        // clap refuses what is not a number (2); sqscale what is out of range (64).
        assert!(code == Some(64) || (bad == "soon" && code == Some(2)), "{bad}: {code:?} {}", stderr(&out));
        assert!(stderr(&out).contains("--job-duration"), "{bad}: {}", stderr(&out));
    }
    let out = sqscale(&[&args[..], &["--job-duration", "20"]].concat());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let replicas: Vec<&str> = stdout.lines().skip(1).map(|l| l.split(',').nth(5).unwrap()).collect();
    assert_eq!(replicas, ["1", "4", "5", "5", "5", "5", "0", "0", "0", "0"], "{stdout}");
}

fn sqscale_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sqscale"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("SQSCALE_CONFIG")
        .envs(env.iter().copied())
        .output()
        .expect("run sqscale")
}

#[test]
fn check_prints_the_region_of_the_queue_url_and_rejects_a_contradiction() {
    let dir = tempfile::tempdir().unwrap();
    let rule = |trigger_extra: &str| {
        format!(
            "[aws]\nregion = \"ap-northeast-2\"\n[[rule]]\nname = \"orders\"\ntarget = {{ name = \"w\" }}\n[[rule.trigger]]\nqueue_url = \"https://sqs.us-east-1.amazonaws.com/123456789012/orders\"\n{trigger_extra}\n"
        )
    };
    let path = write(dir.path(), "url.toml", &rule(""));
    let out = sqscale(&["check", "--config", &path]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("aws_region = \"us-east-1\""), "the URL's region, not [aws] region:\n{stdout}");
    assert!(stdout.contains("[aws]\nregion = \"ap-northeast-2\""), "{stdout}");

    let path = write(dir.path(), "contradiction.toml", &rule("aws_region = \"eu-west-1\""));
    let out = sqscale(&["check", "--config", &path]);
    assert_eq!(out.status.code(), Some(78));
    let err = stderr(&out);
    assert!(
        err.contains("rule \"orders\": trigger 1: aws_region (\"eu-west-1\") contradicts the queue URL's host, which names region \"us-east-1\""),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

const INSECURE_KUBECONFIG: &str = r#"apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster:
    server: https://10.0.0.1:6443
    insecure-skip-tls-verify: true
- name: plain
  cluster:
    server: http://10.0.0.2:8080
- name: unused
  cluster:
    server: http://10.0.0.3:8080
    insecure-skip-tls-verify: true
contexts:
- name: lab
  context: { cluster: lab, user: u }
- name: plain
  context: { cluster: plain, user: u }
- name: unused
  context: { cluster: unused, user: u }
current-context: lab
users:
- name: u
  user: { token: t }
"#;

#[test]
fn check_warns_about_insecure_settings_on_stderr_only() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = write(dir.path(), "kubeconfig", INSECURE_KUBECONFIG);
    let rule = |name: &str, extra: &str, trigger_extra: &str| {
        format!(
            "[[rule]]\nname = \"{name}\"\ntarget = {{ name = \"{name}\" }}\n{extra}\n[[rule.trigger]]\nqueue_url = \"{name}\"\n{trigger_extra}\n"
        )
    };
    let text = format!(
        "[kubernetes]\nkubeconfig = \"{kubeconfig}\"\n[aws]\nregion = \"us-east-1\"\nendpoint_url = \"http://10.1.2.3:4566\"\n[server]\nlisten = \"0.0.0.0:9464\"\n{}{}{}",
        rule("a", "", ""),
        rule("b", "context = \"plain\"", "aws_endpoint = \"http://sqs.internal.example:9324\""),
        rule("c", "", "aws_endpoint = \"http://127.0.0.1:4566\""),
    );
    let path = write(dir.path(), "insecure.toml", &text);
    let out = sqscale(&["check", "--config", &path]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning: ")).collect();
    for needle in [
        "warning: [server] listen = \"0.0.0.0:9464\" is not a loopback address",
        "warning: [aws] endpoint_url \"http://10.1.2.3:4566\" is plain http:// to a host that is not loopback",
        "warning: rule \"b\": trigger 1: aws_endpoint \"http://sqs.internal.example:9324\" is plain http://",
        &format!(
            "warning: kubeconfig {kubeconfig}: cluster \"lab\" (context \"lab\") sets insecure-skip-tls-verify: true"
        ),
        &format!(
            "warning: kubeconfig {kubeconfig}: cluster \"plain\" (context \"plain\") has server \"http://10.0.0.2:8080\""
        ),
    ] {
        assert!(warnings.iter().any(|w| w.starts_with(needle)), "missing {needle:?} in:\n{err}");
    }
    assert_eq!(warnings.len(), 5, "the loopback endpoint and the unused context say nothing:\n{err}");

    // Standard output is still exactly the resolved file: checked again, it prints itself.
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(!stdout.contains("warning"), "{stdout}");
    let resolved = write(dir.path(), "resolved.toml", &stdout);
    let again = sqscale(&["check", "--config", &resolved]);
    assert_eq!(String::from_utf8(again.stdout).unwrap(), stdout);
}

#[test]
fn check_of_a_loopback_setup_warns_about_nothing() {
    let out = sqscale_with(&["check", "--config", "config/demo.toml"], &[("KUBECONFIG", "/nonexistent/kubeconfig")]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
}

/// A one-shot HTTP server on loopback: answers the first request with `status` and
/// returns the request line it got.
fn answer_once(status: &'static str) -> (u16, std::thread::JoinHandle<String>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).unwrap();
        let body = "rules not polling: demo (no poll for 95s)\n";
        let answer = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        stream.write_all(answer.as_bytes()).unwrap();
        String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_owned()
    });
    (port, server)
}

#[test]
fn health_exits_0_only_when_healthz_answers_200() {
    // Nothing listening: 1.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = sqscale(&["health", "--server", &format!("http://127.0.0.1:{port}")]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).starts_with("unhealthy: "), "{}", stderr(&out));

    // 503: 1, with the daemon's reason.
    let (port, server) = answer_once("503 Service Unavailable");
    let out = sqscale(&["health", "--server", &format!("http://127.0.0.1:{port}")]);
    assert_eq!(server.join().unwrap(), "GET /healthz HTTP/1.1");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("503 Service Unavailable: rules not polling: demo"), "{}", stderr(&out));

    // 200 at the rule file's [server] listen (the image's 0.0.0.0 is reached on loopback): 0.
    let dir = tempfile::tempdir().unwrap();
    let (port, server) = answer_once("200 OK");
    let config = write(dir.path(), "sqscale.toml", &format!("[server]\nlisten = \"0.0.0.0:{port}\"\n"));
    let out = sqscale(&["health", "--config", &config]);
    assert_eq!(server.join().unwrap(), "GET /healthz HTTP/1.1");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn the_unit_and_the_image_set_limits_pins_and_a_health_check() {
    let read = |p: &str| std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(p)).unwrap();
    let unit = read("systemd/sqscale.service");
    let nofile: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("LimitNOFILE="))
        .expect("the unit sets LimitNOFILE=")
        .parse()
        .expect("one number: soft and hard limit alike");
    assert!(nofile >= 65536, "room for the watches of 10,000 rules in namespaces of their own: {nofile}");

    let dockerfile = read("docker/Dockerfile");
    let images: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(images.len(), 2, "{images:?}");
    for image in images {
        let (tag, digest) = image.split_once("@sha256:").unwrap_or_else(|| panic!("{image} is not pinned by digest"));
        assert!(tag.contains(':'), "{image}: keep the tag next to the digest, for the reader and the refresh");
        assert!(digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()), "{image}");
    }
    assert!(dockerfile.contains("COPY --from=build /out/sqscale /usr/local/bin/sqscale"), "{dockerfile}");
    let healthcheck = dockerfile.lines().find(|l| l.starts_with("HEALTHCHECK ")).expect("a HEALTHCHECK");
    assert!(healthcheck.ends_with(r#"CMD ["/usr/local/bin/sqscale", "health"]"#), "{healthcheck}");
}

// ---------------------------------------------------------------------------------------------
// config/rbac*.yaml: least privilege
// ---------------------------------------------------------------------------------------------

/// One request the daemon makes, as RBAC sees it: verb, API group, resource (with
/// `/subresource`), and the object's name (`None` for a list, watch or create).
type Request = (&'static str, &'static str, &'static str, Option<&'static str>);

/// Every request on a target's namespace: the watch-backed cache, the scale writes and
/// the events (kube's recorder uses events.k8s.io/v1 only: create, then patch the series).
const TARGET_REQUESTS: &[Request] = &[
    ("list", "apps", "deployments", None),
    ("watch", "apps", "deployments", None),
    ("get", "apps", "deployments", Some("orders-worker")),
    ("list", "apps", "statefulsets", None),
    ("watch", "apps", "statefulsets", None),
    ("get", "apps", "statefulsets", Some("ledger")),
    ("get", "apps", "deployments/scale", Some("orders-worker")),
    ("patch", "apps", "deployments/scale", Some("orders-worker")),
    ("get", "apps", "statefulsets/scale", Some("ledger")),
    ("patch", "apps", "statefulsets/scale", Some("ledger")),
    ("create", "events.k8s.io", "events", None),
    ("patch", "events.k8s.io", "events", Some("orders-worker.187d5a7c2e1b9f00")),
];

/// Every request on a job rule's namespace: create a Job from the template, delete the
/// finished and old-template ones, the watch-backed counts of the Jobs and their pods.
const JOB_REQUESTS: &[Request] = &[
    ("create", "batch", "jobs", None),
    ("delete", "batch", "jobs", Some("encode-x7k2p")),
    ("get", "batch", "jobs", Some("encode-x7k2p")),
    ("list", "batch", "jobs", None),
    ("watch", "batch", "jobs", None),
    ("get", "", "pods", Some("encode-x7k2p-9fz4q")),
    ("list", "", "pods", None),
    ("watch", "", "pods", None),
];

/// Every request on sqscale's own namespace: the state ConfigMap (get, create when
/// missing, merge patch) and the Lease (get, create, update to renew, patch).
const OWN_REQUESTS: &[Request] = &[
    ("get", "", "configmaps", Some("sqscale-state")),
    ("create", "", "configmaps", None),
    ("patch", "", "configmaps", Some("sqscale-state")),
    ("get", "coordination.k8s.io", "leases", Some("sqscale")),
    ("create", "coordination.k8s.io", "leases", None),
    ("update", "coordination.k8s.io", "leases", Some("sqscale")),
];

const OWN_NAMESPACE: &str = "sqscale";
const WRITE_VERBS: [&str; 6] = ["create", "update", "patch", "delete", "deletecollection", "*"];

/// A rule that reaches the ServiceAccount `sqscale/sqscale` through a binding.
struct Grant {
    /// `None`: every namespace (a ClusterRole through a ClusterRoleBinding).
    namespace: Option<String>,
    rule: k8s_openapi::api::rbac::v1::PolicyRule,
    /// For messages: `ClusterRole sqscale`.
    from: String,
}

/// `doc` as the k8s-openapi type of its kind: a missing required field fails here. The
/// types ignore unknown fields, so a rule's keys are checked by hand: a misspelled
/// `resourceNames` would otherwise widen the rule unnoticed (kubectl's strict validation
/// would refuse the file, but only when it is applied).
fn typed<T: serde::de::DeserializeOwned>(doc: &serde_json::Value) -> T {
    const RULE_KEYS: [&str; 5] = ["apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"];
    for rule in doc["rules"].as_array().into_iter().flatten() {
        let keys = rule.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
        assert!(keys.iter().all(|k| RULE_KEYS.contains(&k.as_str())), "unknown key among {keys:?} in {doc}");
    }
    serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{e} in {doc}"))
}

/// The rules of `yaml` (all of its documents) that reach the ServiceAccount `sqscale` of
/// namespace `sqscale`.
fn grants(yaml: &str) -> Vec<Grant> {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding, RoleRef, Subject};
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(yaml).expect("valid YAML");
    let (mut cluster_roles, mut roles, mut bindings) = (Vec::new(), Vec::new(), Vec::new());
    for doc in &docs {
        match doc["kind"].as_str() {
            Some("ClusterRole") => cluster_roles.push(typed::<ClusterRole>(doc)),
            Some("Role") => roles.push(typed::<Role>(doc)),
            Some("ClusterRoleBinding") => {
                let b = typed::<ClusterRoleBinding>(doc);
                bindings.push((None, b.role_ref, b.subjects.unwrap_or_default()));
            }
            Some("RoleBinding") => {
                let b = typed::<RoleBinding>(doc);
                bindings.push((
                    Some(b.metadata.namespace.expect("a RoleBinding's namespace")),
                    b.role_ref,
                    b.subjects.unwrap_or_default(),
                ));
            }
            Some("Namespace" | "ServiceAccount" | "Secret") => {}
            other => panic!("unexpected kind {other:?} in an RBAC manifest"),
        }
    }
    let is_sqscale = |s: &Subject| {
        s.kind == "ServiceAccount" && s.name == "sqscale" && s.namespace.as_deref() == Some(OWN_NAMESPACE)
    };
    let mut out = Vec::new();
    for (namespace, role_ref, subjects) in bindings {
        if !subjects.iter().any(is_sqscale) {
            continue;
        }
        let RoleRef { kind, name, .. } = role_ref;
        let rules = match kind.as_str() {
            "ClusterRole" => {
                cluster_roles.iter().find(|r| r.metadata.name.as_deref() == Some(&name)).and_then(|r| r.rules.clone())
            }
            // A RoleBinding can only refer to a Role of its own namespace.
            "Role" => roles
                .iter()
                .find(|r| r.metadata.name.as_deref() == Some(&name) && r.metadata.namespace == namespace)
                .and_then(|r| r.rules.clone()),
            other => panic!("roleRef kind {other}"),
        };
        let rules =
            rules.unwrap_or_else(|| panic!("a binding refers to the missing {kind} {name} (namespace {namespace:?})"));
        out.extend(rules.into_iter().map(|rule| Grant {
            namespace: namespace.clone(),
            rule,
            from: format!("{kind} {name}"),
        }));
    }
    out
}

/// Whether RBAC would allow `request` in `namespace`: a rule matches verb, group and
/// resource, and its resourceNames (if any) list the object (never a nameless request).
fn allows(grants: &[Grant], namespace: &str, (verb, group, resource, name): Request) -> bool {
    let has = |list: &Option<Vec<String>>, v: &str| list.as_ref().is_some_and(|l| l.iter().any(|x| x == v || x == "*"));
    grants.iter().any(|g| {
        let r = &g.rule;
        g.namespace.as_deref().is_none_or(|n| n == namespace)
            && r.verbs.iter().any(|v| v == verb || v == "*")
            && has(&r.api_groups, group)
            && has(&r.resources, resource)
            && match &r.resource_names {
                None => true,
                Some(names) if names.is_empty() => true,
                Some(names) => name.is_some_and(|n| names.iter().any(|x| x == n)),
            }
    })
}

/// What is wrong with the grants of `yaml`: wildcards, a write verb on whole workloads,
/// configmaps or leases cluster-wide or without resourceNames, Jobs or pods
/// cluster-wide (creating a Job runs any pod), and anything the daemon does not use.
fn excess(yaml: &str) -> Vec<String> {
    let used: Vec<(&str, &str, &str)> = TARGET_REQUESTS
        .iter()
        .chain(JOB_REQUESTS)
        .chain(OWN_REQUESTS)
        .map(|(verb, group, resource, _)| (*verb, *group, *resource))
        .collect();
    let mut problems = Vec::new();
    for g in grants(yaml) {
        let r = &g.rule;
        let (groups, resources) = (r.api_groups.clone().unwrap_or_default(), r.resources.clone().unwrap_or_default());
        let named = r.resource_names.as_ref().is_some_and(|n| !n.is_empty());
        for field in groups.iter().chain(&resources).chain(&r.verbs) {
            if field.contains('*') {
                problems.push(format!("{}: wildcard {field:?}", g.from));
            }
        }
        for resource in &resources {
            for verb in &r.verbs {
                if matches!(resource.as_str(), "deployments" | "statefulsets") && WRITE_VERBS.contains(&verb.as_str()) {
                    problems.push(format!("{}: {verb} on whole {resource}", g.from));
                }
                if matches!(resource.as_str(), "jobs" | "pods") && g.namespace.is_none() {
                    problems.push(format!("{}: {verb} on {resource} in every namespace", g.from));
                }
                if matches!(resource.as_str(), "configmaps" | "leases") {
                    if g.namespace.is_none() {
                        problems.push(format!("{}: {verb} on {resource} in every namespace", g.from));
                    }
                    if !named && verb != "create" {
                        problems.push(format!("{}: {verb} on every one of the {resource}", g.from));
                    }
                }
                for group in &groups {
                    if !used.contains(&(verb.as_str(), group.as_str(), resource.as_str())) {
                        problems
                            .push(format!("{}: {verb} on {resource} ({group:?}), which sqscale never does", g.from));
                    }
                }
            }
        }
    }
    problems
}

fn read_repo_file(p: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

#[test]
fn rbac_yaml_grants_what_sqscale_uses_and_no_more() {
    let yaml = read_repo_file("config/rbac.yaml");
    assert_eq!(excess(&yaml), Vec::<String>::new());
    let grants = grants(&yaml);
    for namespace in ["shop", "kube-system"] {
        for request in TARGET_REQUESTS {
            assert!(allows(&grants, namespace, *request), "config/rbac.yaml does not allow {request:?} in {namespace}");
        }
    }
    // Job rules' rights in the job rules' namespace (`media` in the file) only.
    for request in JOB_REQUESTS {
        assert!(allows(&grants, "media", *request), "config/rbac.yaml does not allow {request:?} in media");
        for namespace in ["shop", "kube-system", OWN_NAMESPACE] {
            assert!(!allows(&grants, namespace, *request), "config/rbac.yaml allows {request:?} in {namespace}");
        }
    }
    for request in OWN_REQUESTS {
        assert!(
            allows(&grants, OWN_NAMESPACE, *request),
            "config/rbac.yaml does not allow {request:?} in {OWN_NAMESPACE}"
        );
        assert!(!allows(&grants, "shop", *request), "config/rbac.yaml allows {request:?} outside {OWN_NAMESPACE}");
    }
    // The never-expiring token is not created by default.
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&yaml).unwrap();
    assert!(docs.iter().all(|d| d["kind"] != "Secret"), "no ServiceAccount token Secret by default");
    assert!(yaml.contains("kubectl -n sqscale create token sqscale --duration="), "documents TokenRequest");
}

#[test]
fn rbac_namespace_yaml_grants_one_namespace_only() {
    let yaml = read_repo_file("config/rbac-namespace.yaml");
    assert_eq!(excess(&yaml), Vec::<String>::new());
    let grants = grants(&yaml);
    assert!(grants.iter().all(|g| g.namespace.is_some()), "no cluster-wide grant at all");
    for request in TARGET_REQUESTS.iter().chain(JOB_REQUESTS) {
        assert!(allows(&grants, "shop", *request), "config/rbac-namespace.yaml does not allow {request:?} in shop");
        assert!(!allows(&grants, "billing", *request), "config/rbac-namespace.yaml allows {request:?} in billing");
    }
    for request in OWN_REQUESTS {
        assert!(allows(&grants, OWN_NAMESPACE, *request), "config/rbac-namespace.yaml does not allow {request:?}");
    }
}

#[test]
fn the_rbac_check_catches_excess() {
    // What config/rbac.yaml granted before issue 13, and other mistakes, each caught.
    let yaml = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: sqscale}
rules:
  - apiGroups: ["apps"]
    resources: ["deployments", "statefulsets"]
    verbs: ["get", "list", "watch", "patch"]
  - apiGroups: [""]
    resources: ["configmaps"]
    verbs: ["get"]
  - apiGroups: ["apps"]
    resources: ["*"]
    verbs: ["get"]
  - apiGroups: ["batch"]
    resources: ["jobs"]
    verbs: ["create", "update"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: sqscale}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: sqscale}
subjects: [{kind: ServiceAccount, name: sqscale, namespace: sqscale}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: sqscale, namespace: sqscale}
rules:
  - apiGroups: ["coordination.k8s.io"]
    resources: ["leases"]
    verbs: ["update"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: sqscale, namespace: sqscale}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: sqscale}
subjects: [{kind: ServiceAccount, name: sqscale, namespace: sqscale}]
"#;
    let problems = excess(yaml);
    for expected in [
        "ClusterRole sqscale: patch on whole deployments",
        "ClusterRole sqscale: patch on whole statefulsets",
        "ClusterRole sqscale: get on configmaps in every namespace",
        "ClusterRole sqscale: get on every one of the configmaps",
        "ClusterRole sqscale: wildcard \"*\"",
        "Role sqscale: update on every one of the leases",
        "ClusterRole sqscale: create on jobs in every namespace",
        "ClusterRole sqscale: update on jobs (\"batch\"), which sqscale never does",
    ] {
        assert!(problems.iter().any(|p| p == expected), "missing {expected:?} in {problems:#?}");
    }
    let grants = grants(yaml);
    assert!(!allows(&grants, OWN_NAMESPACE, ("patch", "", "configmaps", Some("sqscale-state"))));
    assert!(allows(&grants, OWN_NAMESPACE, ("update", "coordination.k8s.io", "leases", Some("sqscale"))));
}

// === import-keda ===

/// `sqscale ARGS` with `stdin` on standard input.
fn sqscale_stdin(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_sqscale"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("SQSCALE_CONFIG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run sqscale");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// What `sqscale check` prints for `path`, as TOML; fails the test unless it exits 0.
fn resolved(path: &str) -> toml::Table {
    let out = sqscale(&["check", "--config", path]);
    assert_eq!(out.status.code(), Some(0), "check {path}: {}", stderr(&out));
    String::from_utf8(out.stdout).unwrap().parse().unwrap()
}

fn rule_names(table: &toml::Table) -> Vec<String> {
    table["rule"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn import_keda_of_the_demo_story_checks_as_config_demo_toml() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("imported.toml").display().to_string();
    let out = sqscale(&["import-keda", "config/demo-keda.yaml", "--output", &out_path]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "--output: nothing on standard output");
    assert_eq!(stderr(&out), "config/demo-keda.yaml: 1 rule imported\n", "nothing left behind");

    let mut imported = resolved(&out_path);
    let demo = resolved("config/demo.toml");
    // Apart from the names, `check` prints the same file.
    assert_eq!(rule_names(&imported), ["aws-sqs-queue-scaledobject"]);
    imported["rule"].as_array_mut().unwrap()[0].as_table_mut().unwrap()["name"] = "demo-worker".into();
    assert_eq!(imported, demo);
}

const SCALED_JOB: &str = r#"
apiVersion: keda.sh/v1alpha1
kind: ScaledJob
metadata: {name: encode, namespace: media, labels: {team: media}}
spec:
  maxReplicaCount: 4
  jobTargetRef:
    backoffLimit: 1
    template:
      spec:
        restartPolicy: Never
        containers:
        - {name: encode, image: "example/encode:1"}
  triggers:
  - type: aws-sqs-queue
    metadata: {queueURL: "https://sqs.eu-west-1.amazonaws.com/123456789012/encode", queueLength: "1"}
"#;

/// A ScaledJob becomes a job rule whose template is written under --template-dir and
/// named from the output's folder; `check` of the output accepts both. Without
/// --template-dir the template goes beside the output.
#[test]
fn import_keda_writes_a_scaled_jobs_template_that_check_takes() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "keda.yaml", SCALED_JOB);
    let out_path = dir.path().join("sqscale.toml").display().to_string();
    let templates = dir.path().join("jobs").display().to_string();
    let out = sqscale(&["import-keda", &input, "--output", &out_path, "--template-dir", &templates]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&format!("{templates}/encode.yaml: the Job template of ScaledJob media/encode")), "{err}");
    assert!(err.contains("0 rules imported, 1 job rule"), "{err}");
    let written = std::fs::read_to_string(dir.path().join("jobs/encode.yaml")).unwrap();
    assert!(written.starts_with("# The Job template of ScaledJob media/encode"), "{written}");
    let checked = resolved(&out_path);
    let job = &checked["job"][0];
    assert_eq!(job["template"].as_str(), Some("jobs/encode.yaml"), "relative to the rule file");
    assert_eq!(job["namespace"].as_str(), Some("media"));
    assert_eq!(job["max_replica_count"].as_integer(), Some(4));

    let beside = tempfile::tempdir().unwrap();
    let out_path = beside.path().join("rules.toml").display().to_string();
    let out = sqscale(&["import-keda", &input, "--output", &out_path]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(beside.path().join("encode.yaml").is_file());
    assert_eq!(resolved(&out_path)["job"][0]["template"].as_str(), Some("encode.yaml"));
}

const MIXED: &str = r#"
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {name: orders, namespace: shop, annotations: {autoscaling.keda.sh/paused-scale-in: "true"}}
spec:
  scaleTargetRef: {name: orders-worker}
  triggers:
  - type: cron
    metadata: {timezone: UTC, start: "0 8 * * *", end: "0 18 * * *", desiredReplicas: "3"}
  - type: aws-sqs-queue
    authenticationRef: {name: aws-keys}
    metadata: {queueURL: "https://sqs.eu-west-1.amazonaws.com/123456789012/orders", queueLength: "10"}
---
apiVersion: keda.sh/v1alpha1
kind: TriggerAuthentication
metadata: {name: aws-keys, namespace: shop}
spec:
  secretTargetRef:
  - {parameter: awsAccessKeyID, name: aws-credentials, key: AWS_ACCESS_KEY_ID}
  - {parameter: awsSecretAccessKey, name: aws-credentials, key: AWS_SECRET_ACCESS_KEY}
---
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {name: reports, namespace: shop}
spec:
  scaleTargetRef: {name: reports-worker}
  triggers:
  - type: prometheus
    metadata: {serverAddress: "http://prometheus:9090", query: "sum(x)", threshold: "5"}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: orders-worker, namespace: shop}
"#;

#[test]
fn import_keda_says_once_what_does_not_carry_over() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "keda.yaml", MIXED);
    let out = sqscale(&["import-keda", &input]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "triggers of type cron are left out",
        "reads awsAccessKeyID (key AWS_ACCESS_KEY_ID), awsSecretAccessKey (key AWS_SECRET_ACCESS_KEY) from the Secret aws-credentials in namespace shop: credentials are never copied",
    ] {
        assert_eq!(err.matches(needle).count(), 1, "{needle:?} once on stderr:\n{err}");
        assert_eq!(text.matches(needle).count(), 1, "{needle:?} once in the file:\n{text}");
        let line = text.lines().find(|l| l.contains(needle)).unwrap();
        assert!(line.starts_with("# not carried over: "), "{line}");
    }
    assert!(
        err.contains("warning: ScaledObject shop/reports: no rule: it has no aws-sqs-queue trigger (only prometheus)"),
        "{err}"
    );
    assert!(!err.contains("Deployment"), "not KEDA's: passed over silently:\n{err}");
    assert!(err.ends_with(": 1 rule imported, 1 ScaledObject not\n"), "{err}");
    // The comments sit above the rule; the file is what check takes.
    let comment = text.find("# not carried over: triggers of type cron").unwrap();
    assert!(comment < text.find("[[rule]]\nname = \"orders\"").unwrap(), "{text}");
    let path = write(dir.path(), "imported.toml", &text);
    let checked = resolved(&path);
    assert_eq!(rule_names(&checked), ["orders"]);
    let trigger = &checked["rule"][0]["trigger"][0];
    assert_eq!(trigger["queue_length"].as_integer(), Some(10), "typed: {trigger}");
    // KEDA's paused-scale-in annotation is the rule key of the same meaning.
    assert_eq!(checked["rule"][0]["paused_scale_in"].as_bool(), Some(true), "{text}");
    assert!(
        !err.contains("paused-scale-in"),
        "a key, not a note:
{err}"
    );
}

#[test]
fn import_keda_of_broken_yaml_exits_65_naming_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.yaml", MIXED);
    let bad = write(
        dir.path(),
        "bad.yaml",
        "apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata:\n  name: x\n spec: [\n",
    );
    let out = sqscale(&["import-keda", &good, &bad]);
    assert_eq!(out.status.code(), Some(65));
    assert!(stderr(&out).starts_with(&format!("error: {bad}: line 5, column ")), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    let out = sqscale_stdin(&["import-keda", "-"], "{\"kind\": \"List\",\n \"items\": [}\n");
    assert_eq!(out.status.code(), Some(65));
    assert!(stderr(&out).starts_with("error: <stdin>: line 2, column "), "{}", stderr(&out));
}

#[test]
fn import_keda_with_no_rule_exits_65() {
    let dir = tempfile::tempdir().unwrap();
    let only_deployments = write(dir.path(), "d.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: w}\n");
    let out = sqscale(&["import-keda", &only_deployments]);
    assert_eq!(out.status.code(), Some(65));
    assert!(stderr(&out).contains(&format!("error: {only_deployments}: no rule imported")), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
}

#[test]
fn import_keda_reads_a_kind_list_from_stdin() {
    // What `kubectl get scaledobjects,triggerauthentications -A -o yaml` prints.
    let list = r#"apiVersion: v1
items:
- apiVersion: keda.sh/v1alpha1
  kind: ScaledObject
  metadata: {name: orders, namespace: shop, resourceVersion: "4711", uid: 0c5e}
  spec:
    scaleTargetRef: {name: orders-worker}
    minReplicaCount: 1
    maxReplicaCount: 10
    triggers:
    - type: aws-sqs-queue
      authenticationRef: {name: aws-role}
      metadata: {queueURL: "https://sqs.eu-west-1.amazonaws.com/123456789012/orders", awsRegion: eu-west-1}
  status: {lastActiveTime: "2026-11-27T21:40:32Z"}
- apiVersion: keda.sh/v1alpha1
  kind: ScaledObject
  metadata: {name: orders, namespace: billing}
  spec:
    scaleTargetRef: {name: invoices}
    triggers:
    - type: aws-sqs-queue
      metadata: {queueURL: "https://sqs.eu-west-1.amazonaws.com/123456789012/invoices"}
- apiVersion: keda.sh/v1alpha1
  kind: TriggerAuthentication
  metadata: {name: aws-role, namespace: shop}
  spec:
    podIdentity: {provider: aws, roleArn: "arn:aws:iam::123456789012:role/orders"}
kind: List
metadata: {resourceVersion: ""}
"#;
    let out = sqscale_stdin(&["import-keda", "-"], list);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "<stdin>: 2 rules imported\n");
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "imported.toml", &String::from_utf8(out.stdout).unwrap());
    let checked = resolved(&path);
    // A name in two namespaces: both prefixed with their namespace.
    assert_eq!(rule_names(&checked), ["shop-orders", "billing-orders"]);
    let shop = &checked["rule"][0];
    assert_eq!(shop["trigger"][0]["role_arn"].as_str(), Some("arn:aws:iam::123456789012:role/orders"));
    assert_eq!(shop["target"]["namespace"].as_str(), Some("shop"));
    assert_eq!((shop["min_replica_count"].as_integer(), shop["max_replica_count"].as_integer()), (Some(1), Some(10)));
}

#[test]
fn import_keda_diff_compares_by_rule_name() {
    let dir = tempfile::tempdir().unwrap();
    let existing = write(
        dir.path(),
        "sqscale.toml",
        "[[rule]]\nname = \"aws-sqs-queue-scaledobject\"\ntarget = { name = \"demo-worker\" }\npolling_interval = \"10s\"\ncooldown_period = 60\nmax_replica_count = 5\n\
         [[rule.trigger]]\nqueue_url = \"https://sqs.ap-northeast-2.amazonaws.com/123456789012/keda-demo-queue\"\n\
         [[rule]]\nname = \"old\"\ntarget = { name = \"old\" }\n[[rule.trigger]]\nqueue_url = \"https://sqs.ap-northeast-2.amazonaws.com/123456789012/old\"\n",
    );
    let out = sqscale(&["import-keda", "config/demo-keda.yaml", "--diff", &existing]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "~ aws-sqs-queue-scaledobject: cooldown_period \"1m\" -> \"30s\"\n\
         - old: removed (Deployment/default/old)\n\
         0 rules unchanged\n"
    );
    let out = sqscale(&["import-keda", "config/demo-keda.yaml", "--diff", "/nonexistent.toml"]);
    assert_eq!(out.status.code(), Some(78));
}

#[test]
fn import_keda_diff_resolves_the_imported_rules_with_the_files_aws_settings() {
    let dir = tempfile::tempdir().unwrap();
    // The file's rule is the demo's, with the queue read through an endpoint and a role
    // set once in [aws]: the imported rule, placed in that file, would take them too.
    let existing = write(
        dir.path(),
        "sqscale.toml",
        "[aws]\nendpoint_url = \"http://127.0.0.1:4566\"\nrole_arn = \"arn:aws:iam::123456789012:role/sqscale\"\n\
         [[rule]]\nname = \"aws-sqs-queue-scaledobject\"\ntarget = { name = \"demo-worker\" }\npolling_interval = 10\ncooldown_period = 30\nmax_replica_count = 5\n\
         [[rule.trigger]]\nqueue_url = \"https://sqs.ap-northeast-2.amazonaws.com/123456789012/keda-demo-queue\"\n",
    );
    let out = sqscale(&["import-keda", "config/demo-keda.yaml", "--diff", &existing]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "1 rule unchanged\n");
}
