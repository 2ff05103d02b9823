//! The `sqscale` binary as a user runs it: `check` and `simulate`, their output and
//! their exit codes (0, 64, 65, 78).

use std::path::Path;
use std::process::{Command, Output};

fn sqscale(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sqscale"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("SQSCALE_CONFIG")
        .output()
        .expect("run sqscale")
}

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
