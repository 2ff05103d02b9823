//! Bad input never panics: arbitrary strings and mutated rule files fed to the rule-file
//! parser, arbitrary CSV-like bytes fed to the trace parser, and every trace that parses
//! replayed through the simulator; mutated KEDA objects and arbitrary text fed to
//! `import-keda`, whose output is always a file `check` accepts. Errors always say what
//! is wrong and where.
//!
//! The seeds are fixed (every run, and CI, sees the same cases) and no regression files
//! are written. `PROPTEST_CASES` overrides the number of cases of every property.

use std::sync::OnceLock;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};
use sqscale::engine::Time;
use sqscale::simulate::{self, Options, Trace};
use toml::{Table, Value};

fn config(cases: u32, seed: u64) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    }
}

// === rule files ===

/// Values a person might write for some key: valid for some keys and not for others.
const WORDS: &str = "|demo|demo-worker|Demo|-x|a.b|default|kube-system|Deployment|StatefulSet|Job|aws-sqs-queue|\
kafka|30s|5m|1h|0s|soon|-5s|10|1.5s|Max|Min|Disabled|Pods|Percent|static|currentReplicas|currentReplicasIfHigher|\
currentReplicasIfLower|us-east-1|ap-northeast-2|127.0.0.1:9464|0.0.0.0:0|[::1]:80|localhost:80|ftp://x|\
http://127.0.0.1:4566|https://sqs.ap-northeast-2.amazonaws.com/123456789012/keda-demo-queue|\
https://sqs.us-east-1.amazonaws.com/1/q.fifo|http://127.0.0.1:4566/000000000000/q|/000000000000/q|\
https://example.com/|keda-demo-queue|q.fifo|arn:aws:iam::123456789012:role/sqscale|arn:nope|/etc/kubeconfig|\
\u{0}|\u{e9}|\u{202e}|true|null|100000000000y";

#[rustfmt::skip]
const INTS: &[i64] = &[
    0, 1, 2, 5, 10, 30, 60, 300, 1800, 3600, 3601, -1, -300,
    4_294_967_295, 4_294_967_296, 2_147_483_648, i64::MAX, i64::MIN,
];

fn words() -> Vec<&'static str> {
    WORDS.split('|').collect()
}

/// Every key of the rule file, from the base file below (which uses them all).
fn keys() -> &'static [String] {
    static KEYS: OnceLock<Vec<String>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut all = Vec::new();
        paths(&Value::Table(base().clone()), &mut Vec::new(), &mut all);
        let mut keys: Vec<String> = all
            .into_iter()
            .filter_map(|p| match p.last() {
                Some(Step::Key(k)) => Some(k.clone()),
                _ => None,
            })
            .collect();
        keys.sort();
        keys.dedup();
        keys
    })
}

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(words()).prop_map(str::to_owned),
        1 => any::<String>(),
        1 => "[a-z0-9-]{1,70}",
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => word().prop_map(Value::String),
        2 => prop::sample::select(INTS).prop_map(Value::Integer),
        1 => any::<i64>().prop_map(Value::Integer),
        1 => prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(-0.5), Just(0.1), Just(1e300), any::<f64>()]
            .prop_map(Value::Float),
        1 => any::<bool>().prop_map(Value::Boolean),
        1 => Just(Value::Datetime("2026-11-27T21:00:10Z".parse().unwrap())),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![4 => prop::sample::select(keys()), 1 => "[a-zA-Z_][a-zA-Z0-9_-]{0,12}"]
}

/// Any value: leaves, and arrays and tables of them a few levels deep.
fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..4).prop_map(|kv| Value::Table(kv.into_iter().collect())),
        ]
    })
}

/// A value nested `depth` levels deep in arrays, or in tables under `key`.
fn nested(depth: usize, tables: bool, key: &str) -> Value {
    let mut v = Value::Integer(1);
    for _ in 0..depth {
        v = if tables { Value::Table(Table::from_iter([(key.to_owned(), v)])) } else { Value::Array(vec![v]) };
    }
    v
}

/// A valid rule file using every key, as a TOML tree (parsed once).
fn base() -> &'static Table {
    static BASE: OnceLock<Table> = OnceLock::new();
    BASE.get_or_init(parse_base)
}

fn parse_base() -> Table {
    let text = r#"
[kubernetes]
kubeconfig = "/etc/sqscale/kubeconfig"
context = "demo-cluster"
eks_cluster = "demo-cluster"
[aws]
region = "ap-northeast-2"
endpoint_url = "http://127.0.0.1:4566"
profile = "prod"
role_arn = "arn:aws:iam::123456789012:role/sqscale"
[server]
listen = "127.0.0.1:9464"
[leader_election]
enabled = false
namespace = "default"
lease_name = "sqscale"
lease_duration = 15
renew_deadline = "10s"
retry_period = 2
[defaults]
polling_interval = 30
cooldown_period = "5m"
[[rule]]
name = "demo-worker"
target = { kind = "Deployment", name = "demo-worker", namespace = "default" }
context = "other-cluster"
polling_interval = 10
cooldown_period = 30
initial_cooldown_period = 0
min_replica_count = 1
max_replica_count = 5
idle_replica_count = 0
paused = false
fallback = { failure_threshold = 3, replicas = 2, behavior = "static" }
[rule.behavior.scale_up]
stabilization_window = 0
select_policy = "Max"
tolerance = 0.1
policies = [ { type = "Pods", value = 4, period = 15 }, { type = "Percent", value = 100, period = "15s" } ]
[rule.behavior.scale_down]
stabilization_window = 300
select_policy = "Min"
policies = [ { type = "Percent", value = 100, period = 15 } ]
[[rule.trigger]]
type = "aws-sqs-queue"
queue_url = "https://sqs.ap-northeast-2.amazonaws.com/123456789012/keda-demo-queue"
queue_length = 5
activation_queue_length = 0
scale_on_in_flight = true
scale_on_delayed = false
aws_region = "ap-northeast-2"
aws_endpoint = "http://127.0.0.1:4566"
role_arn = "arn:aws:iam::123456789012:role/sqscale"
[[rule.trigger]]
queue_url = "orders"
[[rule]]
name = "second"
target = { kind = "StatefulSet", name = "db" }
[[rule.trigger]]
queue_url = "https://sqs.us-east-1.amazonaws.com/1/q.fifo"
"#;
    let table: Table = toml::from_str(text).expect("the base rule file is TOML");
    sqscale::config::from_str(text).expect("the base rule file is valid");
    table
}

/// One change to a rule file.
#[derive(Clone, Debug)]
enum Edit {
    /// Remove the key at this (wrapping) index of the walk.
    Remove(usize),
    /// Give the key a new value (of any type).
    Set(usize, Value),
    /// Add `key = value` to the table at this index.
    Add(usize, String, Value),
    /// Replace a value by one nested this deep in arrays or in tables.
    Nest(usize, usize, bool),
    /// Repeat an array element (a second rule or trigger) or turn a table into an array of it.
    Duplicate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let at = any::<usize>();
    prop_oneof![
        3 => at.prop_map(Edit::Remove),
        3 => (at, leaf()).prop_map(|(i, v)| Edit::Set(i, v)),
        1 => (at, value()).prop_map(|(i, v)| Edit::Set(i, v)),
        2 => (at, key(), value()).prop_map(|(i, k, v)| Edit::Add(i, k, v)),
        1 => (at, prop_oneof![1usize..8, 8usize..200], any::<bool>()).prop_map(|(i, d, t)| Edit::Nest(i, d, t)),
        1 => at.prop_map(Edit::Duplicate),
    ]
}

/// The paths (key or array index, from the root) of every value in `v`.
fn paths(v: &Value, here: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    match v {
        Value::Table(t) => {
            for (k, child) in t {
                here.push(Step::Key(k.clone()));
                out.push(here.clone());
                paths(child, here, out);
                here.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                here.push(Step::Index(i));
                out.push(here.clone());
                paths(child, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

#[derive(Clone, Debug)]
enum Step {
    Key(String),
    Index(usize),
}

fn get_mut<'a>(mut v: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    for step in path {
        v = match (step, v) {
            (Step::Key(k), Value::Table(t)) => t.get_mut(k)?,
            (Step::Index(i), Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(v)
}

/// Applies `edit` to the document; edits that no longer fit (a path gone) do nothing.
fn apply(doc: &mut Value, edit: &Edit) {
    let mut all = Vec::new();
    paths(doc, &mut Vec::new(), &mut all);
    let pick = |i: usize| all.get(i % all.len().max(1)).cloned().unwrap_or_default();
    match edit {
        Edit::Remove(i) => {
            let path = pick(*i);
            if let Some((last, parent)) = path.split_last()
                && let Some(p) = get_mut(doc, parent)
            {
                match (last, p) {
                    (Step::Key(k), Value::Table(t)) => drop(t.remove(k)),
                    (Step::Index(i), Value::Array(a)) if *i < a.len() => drop(a.remove(*i)),
                    _ => {}
                }
            }
        }
        Edit::Set(i, v) => {
            if let Some(slot) = get_mut(doc, &pick(*i)) {
                *slot = v.clone();
            }
        }
        Edit::Add(i, k, v) => {
            // Into the table at the pick, or the root if the pick is not a table.
            let path = pick(*i);
            match get_mut(doc, &path) {
                Some(Value::Table(t)) => drop(t.insert(k.clone(), v.clone())),
                _ => {
                    if let Value::Table(t) = doc {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        Edit::Nest(i, depth, tables) => {
            let path = pick(*i);
            let k = match path.last() {
                Some(Step::Key(k)) => k.clone(),
                _ => "rule".to_owned(),
            };
            if let Some(slot) = get_mut(doc, &path) {
                *slot = nested(*depth, *tables, &k);
            }
        }
        Edit::Duplicate(i) => {
            if let Some(slot) = get_mut(doc, &pick(*i)) {
                match slot {
                    Value::Array(a) if !a.is_empty() => {
                        let first = a[0].clone();
                        a.push(first);
                    }
                    Value::Table(_) => *slot = Value::Array(vec![slot.clone()]),
                    _ => {}
                }
            }
        }
    }
}

/// How the edited tree becomes text: as the serializer writes it, or damaged.
#[derive(Clone, Debug)]
enum Damage {
    None,
    /// Cut at this (wrapping) byte, as a half-written file.
    Truncate(usize),
    /// Insert a character.
    Insert(usize, char),
    /// Drop one line.
    DropLine(usize),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        6 => Just(Damage::None),
        1 => any::<usize>().prop_map(Damage::Truncate),
        1 => (any::<usize>(), prop_oneof![Just('"'), Just('['), Just(']'), Just('='), Just('\n'), Just('{'), any::<char>()])
            .prop_map(|(i, c)| Damage::Insert(i, c)),
        1 => any::<usize>().prop_map(Damage::DropLine),
    ]
}

fn render(doc: &Value, damage: &Damage) -> Option<String> {
    let text = toml::to_string(doc).ok()?;
    let boundary = |i: usize| {
        let mut i = i % (text.len() + 1);
        while !text.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    Some(match damage {
        Damage::None => text,
        Damage::Truncate(i) => text[..boundary(*i)].to_owned(),
        Damage::Insert(i, c) => {
            let mut t = text.clone();
            t.insert(boundary(*i), *c);
            t
        }
        Damage::DropLine(i) => {
            let lines: Vec<&str> = text.lines().collect();
            let skip = i % lines.len().max(1);
            lines.iter().enumerate().filter(|(n, _)| *n != skip).map(|(_, l)| *l).collect::<Vec<_>>().join("\n")
        }
    })
}

/// A rule-file problem names what it is about: a key of the file or a rule.
fn names_a_key_or_rule(problem: &str) -> bool {
    problem.contains("rule") || problem.contains("key") || keys().iter().any(|k| problem.contains(k.as_str()))
}

/// A rule file is either rejected with problems that say where, or accepted with nothing
/// dropped on the way (the resolved form `sqscale check` prints reads back the same).
fn check_rule_file(text: &str) -> Result<(), TestCaseError> {
    match sqscale::config::from_str(text) {
        Ok(config) => {
            let resolved = config.resolved_toml();
            let again = sqscale::config::from_str(&resolved);
            prop_assert!(again.as_ref() == Ok(&config), "resolved form differs:\n{resolved}\n{again:#?}");
            // A fallback that is written applies (explicitly or from [defaults]).
            let doc: Table = toml::from_str(text).unwrap();
            let default_fallback = doc.get("defaults").and_then(|d| d.get("fallback")).is_some();
            let rules = doc.get("rule").and_then(Value::as_array).cloned().unwrap_or_default();
            for (rule, raw) in config.rules.iter().zip(&rules) {
                let written = raw.get("fallback").is_some() || default_fallback;
                prop_assert_eq!(rule.policy.fallback.is_some(), written, "fallback of {} in:\n{}", rule.name, text);
            }
        }
        Err(e) => {
            prop_assert!(!e.problems.is_empty(), "an error without problems: {e:?}");
            prop_assert!(!e.to_string().trim().is_empty());
            for p in &e.problems {
                prop_assert!(!p.trim().is_empty(), "an empty problem in {e:?}");
                // A syntax error points at a line of the text; any other problem names its key.
                if p.starts_with("TOML parse error") {
                    prop_assert!(p.contains(" line "), "{p:?} names no line, for:\n{text}");
                } else {
                    prop_assert!(names_a_key_or_rule(p), "{p:?} names no key or rule, for:\n{text}");
                }
            }
        }
    }
    Ok(())
}

/// Bits of TOML syntax, to glue key names and values into almost-TOML.
const PUNCTUATION: &[&str] = &["[", "]", "[[", "]]", " = ", "\"", "'", "{", "}", ",", ".", "\n", " ", "#", "\"\"\""];

proptest! {
    #![proptest_config(config(2000, 0x5c5ca1e))]

    #[test]
    fn arbitrary_strings_are_rejected_with_a_message(text in prop_oneof![
        any::<String>(),
        prop::collection::vec(prop_oneof![
            prop::sample::select(keys()),
            prop::sample::select(PUNCTUATION).prop_map(str::to_owned),
            word(),
        ], 0..40).prop_map(|parts| parts.concat()),
    ]) {
        check_rule_file(&text)?;
    }

    #[test]
    fn mutated_rule_files_are_rejected_with_a_key_or_accepted_whole(
        edits in prop::collection::vec(edit(), 1..4),
        damage in damage(),
    ) {
        let mut doc = Value::Table(base().clone());
        for e in &edits {
            apply(&mut doc, e);
        }
        if let Some(text) = render(&doc, &damage) {
            check_rule_file(&text)?;
        }
    }
}

/// `fallback` numbers beyond u32 (KEDA's are int32) pass validation and the fallback
/// silently disappears: the rule then holds its replicas on failures instead.
#[test]
fn an_out_of_range_fallback_is_rejected_not_dropped() {
    for fallback in ["failure_threshold = 5000000000, replicas = 2", "failure_threshold = 3, replicas = 5000000000"] {
        let text = format!(
            "[[rule]]\nname = \"w\"\ntarget = {{ name = \"w\" }}\nfallback = {{ {fallback} }}\n\
             [[rule.trigger]]\nqueue_url = \"https://sqs.us-east-1.amazonaws.com/1/q\"\n"
        );
        match sqscale::config::from_str(&text) {
            Ok(c) => assert!(c.rules[0].policy.fallback.is_some(), "{fallback}: accepted, and the fallback dropped"),
            Err(e) => assert!(e.problems.iter().any(|p| p.contains("fallback")), "{e}"),
        }
    }
}

// === traces ===

const HEADER: &str = "time,queue,visible,in_flight,delayed";
const DEMO_QUEUE: &str = "keda-demo-queue";

/// Plausible and implausible values for each column of a trace.
fn trace_field(column: usize) -> BoxedStrategy<String> {
    let words = match column {
        0 => "0|1|10|2.5|0.001|-1|1e3|nan|inf|-0|1e300|1e309|18446744073709551616|x|| 7 ",
        1 => {
            "keda-demo-queue|keda-demo-queue|https://sqs.ap-northeast-2.amazonaws.com/123456789012/keda-demo-queue|\
              other||\"a,b\"|/|keda-demo-queue/"
        }
        _ => "0|5|30|1000||error|ERROR|-1|1.5|18446744073709551615|18446744073709551616| 3|x",
    };
    let words: Vec<String> = words.split('|').map(str::to_owned).collect();
    prop_oneof![
        8 => prop::sample::select(words),
        1 => "\\PC{0,8}",
        1 => (0u64..100_000).prop_map(|n| n.to_string()),
    ]
    .boxed()
}

fn trace_row() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (trace_field(0), trace_field(1), trace_field(2), trace_field(3), trace_field(4))
            .prop_map(|(a, b, c, d, e)| format!("{a},{b},{c},{d},{e}")),
        1 => prop::collection::vec(trace_field(2), 0..8).prop_map(|f| f.join(",")),
        1 => "\\PC{0,30}",
    ]
}

/// A trace: a header (mostly right), rows, line ends of one kind, maybe cut short.
fn trace_text() -> impl Strategy<Value = Vec<u8>> {
    let header = prop_oneof![
        8 => Just(HEADER.to_owned()),
        1 => Just(format!("\u{feff}{HEADER}")),
        1 => Just(" time , queue ,visible, in_flight ,delayed".to_owned()),
        1 => Just("time,queue,visible".to_owned()),
        1 => Just("queue,time,visible,in_flight,delayed".to_owned()),
        1 => "\\PC{0,40}",
    ];
    let eol = prop_oneof![Just("\n"), Just("\r\n"), Just("\r")];
    (header, prop::collection::vec(trace_row(), 0..25), eol, prop::option::weighted(0.2, any::<usize>())).prop_map(
        |(header, rows, eol, cut)| {
            let mut text = header.into_bytes();
            for row in rows {
                text.extend_from_slice(eol.as_bytes());
                text.extend_from_slice(row.as_bytes());
            }
            if let Some(cut) = cut {
                text.truncate(cut % (text.len() + 1));
            }
            text
        },
    )
}

/// Parses `bytes`: a rejection names a line (>= 1) and says what is wrong.
fn check_trace(bytes: &[u8]) -> Result<Option<Trace>, TestCaseError> {
    match Trace::parse(bytes) {
        Ok(t) => Ok(Some(t)),
        Err(e) => {
            let text = String::from_utf8_lossy(bytes);
            prop_assert!(e.line >= 1, "line {} in {e} for {text:?}", e.line);
            prop_assert!(!e.message.trim().is_empty(), "empty message for {text:?}");
            Ok(None)
        }
    }
}

fn demo_rule() -> &'static sqscale::config::Rule {
    static RULE: OnceLock<sqscale::config::Rule> = OnceLock::new();
    RULE.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml");
        sqscale::config::load(std::path::Path::new(path)).unwrap().rules.remove(0)
    })
}

proptest! {
    #![proptest_config(config(2000, 0x7ace))]

    #[test]
    fn arbitrary_bytes_are_rejected_with_a_line(bytes in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        trace_text(),
        (trace_text(), any::<usize>(), any::<u8>()).prop_map(|(mut t, i, b)| {
            if !t.is_empty() {
                let n = t.len();
                t[i % n] = b;
            }
            t
        }),
    ]) {
        check_trace(&bytes)?;
    }
}

proptest! {
    #![proptest_config(config(600, 0x5112))]

    #[test]
    fn every_trace_that_parses_replays_within_zero_and_max(
        bytes in trace_text(),
        until in 0i64..7_200_000,
        initial in prop::option::of(0u32..=5),
    ) {
        let Some(trace) = check_trace(&bytes)? else { return Ok(()) };
        let rule = demo_rule();
        let options = Options { until: Some(Time(until)), initial_replicas: initial, groups: Vec::new() };
        match simulate::run(&[rule], &trace, &options) {
            Ok(rows) => {
                let step = rule.polling_interval.as_millis() as i64;
                prop_assert_eq!(rows.len() as i64, until / step + 1, "one row per poll");
                for (n, r) in rows.iter().enumerate() {
                    prop_assert_eq!(r.time.0, n as i64 * step);
                    prop_assert!(r.replicas <= rule.policy.max, "{:?} above max {}", r, rule.policy.max);
                }
            }
            Err(e) => prop_assert!(
                matches!(&e, simulate::RunError::UnknownQueue(_, q) if q == DEMO_QUEUE),
                "{e}"
            ),
        }
    }
}

/// Runs `sqscale simulate ARGS`; `None` if it was still replaying after `deadline` (then
/// it is killed: a run-away replay grows its timeline by about 50 MB/s).
fn simulate_cli(args: &[&str], deadline: Duration) -> Option<(Option<i32>, String)> {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_sqscale"))
        .arg("simulate")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let until = std::time::Instant::now() + deadline;
    while std::time::Instant::now() < until {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            return Some((status.code(), stderr));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Numbers that parse but are absurd: a trace row far in the future (the default `--until`
/// is the trace's end plus time to settle), a polling interval of 2^63 s, cooldowns of
/// 10^11 and 68 years. `sqscale simulate` must reject them (65 trace, 78 rule file) or
/// replay them (0), promptly: never overflow, never loop for ever.
#[test]
fn absurd_times_are_rejected_or_replayed_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let demo_path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml");
    let demo = std::fs::read_to_string(demo_path).unwrap();
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let trace = |name: &str, end: &str| write(name, format!("{HEADER}\n0,{DEMO_QUEUE},30,,\n{end},{DEMO_QUEUE},0,,\n"));
    let short = trace("short.csv", "40");
    let poll = write("poll.toml", demo.replace("polling_interval = 10", "polling_interval = 9223372036854775807"));
    let cool =
        |name, value: &str| write(name, demo.replace("cooldown_period = 30", &format!("cooldown_period = {value}")));
    let cases = [
        ("a trace row at 1e300 s", vec![demo_path.to_owned(), trace("a.csv", "1e300")], None),
        ("a trace row at 1e12 s", vec![demo_path.to_owned(), trace("b.csv", "1e12")], None),
        ("polling_interval = 2^63-1 s, --until 100", vec![poll, short.clone()], Some("100")),
        ("cooldown_period = 10^11 years", vec![cool("c.toml", "\"100000000000y\""), short.clone()], None),
        ("cooldown_period = 2^31-1 s (KEDA's int32)", vec![cool("d.toml", "2147483647"), short], None),
    ];
    let mut failures = Vec::new();
    for (what, files, until) in cases {
        let mut args = vec!["--config", &files[0], "--trace", &files[1]];
        if let Some(u) = until {
            args.extend(["--until", u]);
        }
        match simulate_cli(&args, Duration::from_millis(1500)) {
            Some((Some(0 | 65 | 78), _)) => {}
            Some((code, stderr)) => {
                let said: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).take(2).collect();
                failures.push(format!("{what}: exit {code:?}: {}", said.join(" ")));
            }
            None => failures.push(format!("{what}: still replaying after 1.5 s")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// === import-keda ===

/// KEDA objects whose every field import-keda reads is set: a ScaledObject naming a
/// TriggerAuthentication and a ClusterTriggerAuthentication, and both of those.
fn keda_base() -> serde_json::Value {
    serde_json::json!([
        {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
         "metadata": {"name": "orders", "namespace": "shop", "annotations": {
             "autoscaling.keda.sh/paused": "false", "autoscaling.keda.sh/paused-replicas": "2",
             "autoscaling.keda.sh/paused-scale-in": "true", "autoscaling.keda.sh/force-activation": "t"}},
         "spec": {
             "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "orders-worker"},
             "pollingInterval": 10, "cooldownPeriod": 30, "initialCooldownPeriod": 0,
             "minReplicaCount": 1, "maxReplicaCount": 5, "idleReplicaCount": 0,
             "fallback": {"failureThreshold": 3, "replicas": 2, "behavior": "static"},
             "advanced": {"restoreToOriginalReplicaCount": false, "scalingModifiers": {"formula": "a", "target": "2"},
                 "horizontalPodAutoscalerConfig": {"behavior": {
                     "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "tolerance": "50m",
                                 "policies": [{"type": "Pods", "value": 4, "periodSeconds": 15}]},
                     "scaleDown": {"stabilizationWindowSeconds": 300, "selectPolicy": "Min", "tolerance": 0.1,
                                   "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]}}}},
             "triggers": [
                 {"type": "aws-sqs-queue", "name": "a", "metricType": "AverageValue",
                  "authenticationRef": {"name": "role"},
                  "metadata": {"queueURL": "https://sqs.ap-northeast-2.amazonaws.com/123456789012/keda-demo-queue",
                               "queueLength": "5", "activationQueueLength": "0", "scaleOnInFlight": "true",
                               "scaleOnDelayed": "false", "awsRegion": "ap-northeast-2",
                               "awsEndpoint": "http://127.0.0.1:4566", "queueURLFromEnv": "Q"}},
                 {"type": "aws-sqs-queue", "authenticationRef": {"name": "shared", "kind": "ClusterTriggerAuthentication"},
                  "metadata": {"queueURL": "keda-demo-queue", "awsRegion": "us-east-1"}},
                 {"type": "cron", "metadata": {"start": "0 8 * * *"}}]}},
        {"apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication",
         "metadata": {"name": "role", "namespace": "shop"},
         "spec": {"podIdentity": {"provider": "aws", "roleArn": "arn:aws:iam::123456789012:role/sqscale"},
                  "secretTargetRef": [{"parameter": "awsAccessKeyID", "name": "s", "key": "k"}],
                  "env": [{"parameter": "awsRegion", "name": "REGION"}]}},
        {"apiVersion": "keda.sh/v1alpha1", "kind": "ClusterTriggerAuthentication", "metadata": {"name": "shared"},
         "spec": {"podIdentity": {"provider": "aws", "identityOwner": "workload"},
                  "configMapTargetRef": [{"parameter": "awsRoleArn", "name": "c", "key": "k"}]}}
    ])
}

/// A value as KEDA users write them, or not: numbers as strings, strings as numbers,
/// Go booleans, quantities, kinds, and structure where a scalar belongs.
fn keda_leaf() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    prop_oneof![
        3 => word().prop_map(serde_json::Value::String),
        2 => prop::sample::select(vec![
            "5", "05", "-1", "+5", "2.5", "1e3", " 7 ", "", "0", "true", "T", "yes", "50m", "1k", "Value",
            "ClusterTriggerAuthentication", "TriggerAuthentication", "aws", "aws-eks", "workload", "Rollout",
            "argoproj.io/v1alpha1", "apps/v1", "keda.sh/v1alpha1", "ScaledObject", "List", "ScaledObjectList",
            "orders", "Orders.Shop", "a_b", "x".repeat(70).leak(), "a\n[[rule]]\nb", "q\" = 1 #",
        ]).prop_map(|s: &str| json!(s)),
        2 => prop::sample::select(INTS).prop_map(|i| json!(i)),
        1 => prop_oneof![Just(0.5), Just(-0.5), Just(1e300), Just(0.0)].prop_map(|f| json!(f)),
        1 => any::<bool>().prop_map(|b| json!(b)),
        1 => Just(serde_json::Value::Null),
        1 => prop_oneof![Just(json!({})), Just(json!([])), Just(json!([{}])), Just(json!({"name": "x"}))],
    ]
}

#[derive(Clone, Debug)]
enum JsonStep {
    Key(String),
    Index(usize),
}

fn json_paths(v: &serde_json::Value, here: &mut Vec<JsonStep>, out: &mut Vec<Vec<JsonStep>>) {
    out.push(here.clone());
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map {
                here.push(JsonStep::Key(k.clone()));
                json_paths(child, here, out);
                here.pop();
            }
        }
        serde_json::Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                here.push(JsonStep::Index(i));
                json_paths(child, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

/// Replaces (or with `None`, removes) the value at a path picked by `at`.
fn json_edit(doc: &mut serde_json::Value, at: prop::sample::Index, new: Option<serde_json::Value>) {
    let mut paths = Vec::new();
    json_paths(doc, &mut Vec::new(), &mut paths);
    let path = at.get(&paths[1..]).clone();
    let (last, parent) = path.split_last().expect("not the root");
    let mut v = &mut *doc;
    for step in parent {
        v = match step {
            JsonStep::Key(k) => &mut v[k.as_str()],
            JsonStep::Index(i) => &mut v[*i],
        };
    }
    match (last, new, v) {
        (JsonStep::Key(k), None, serde_json::Value::Object(map)) => {
            map.remove(k);
        }
        (JsonStep::Index(i), None, serde_json::Value::Array(items)) => {
            items.remove(*i);
        }
        (JsonStep::Key(k), Some(new), v) => v[k.as_str()] = new,
        (JsonStep::Index(i), Some(new), v) => v[*i] = new,
        _ => {}
    }
}

/// Whatever the objects, the import ends: every ScaledObject gives a rule or a reason,
/// and the rules (with their comments) are a file `sqscale check` accepts.
fn check_import(objects: &[serde_json::Value]) -> Result<(), TestCaseError> {
    use sqscale::import;
    let result = import::import(objects, &import::Options::default());
    let scaled = objects
        .iter()
        .filter(|o| {
            o["kind"] == "ScaledObject"
                && o["apiVersion"].as_str().and_then(|a| a.rsplit_once('/')).is_some_and(|(g, _)| g == "keda.sh")
        })
        .count();
    prop_assert_eq!(result.rules.len() + result.rejected.len(), scaled);
    for r in &result.rejected {
        prop_assert!(!r.reasons.is_empty(), "{} rejected without a reason", r.source);
    }
    if !result.rules.is_empty() {
        let text = result.to_toml();
        if let Err(e) = sqscale::config::from_str(&text) {
            return Err(TestCaseError::fail(format!("{e}\n{text}")));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(1000, 0x6b6564))]

    #[test]
    fn mutated_keda_objects_import_to_a_valid_file_or_say_why(
        edits in prop::collection::vec((any::<prop::sample::Index>(), prop::option::weighted(0.8, keda_leaf())), 1..6),
    ) {
        let mut doc = keda_base();
        for (at, new) in edits {
            json_edit(&mut doc, at, new);
        }
        let objects = match doc {
            serde_json::Value::Array(items) => items,
            other => vec![other],
        };
        check_import(&objects)?;
    }

    #[test]
    fn arbitrary_text_parses_or_fails_with_a_message(text in prop_oneof![
        any::<String>(),
        prop::collection::vec(prop_oneof![
            prop::sample::select(vec!["apiVersion: keda.sh/v1alpha1\n", "kind: ScaledObject\n", "kind: List\n",
                "items:\n", "- ", "  ", "metadata: {name: x}\n", "---\n", "{", "}", "[", "]", ",", ":", "\"", "\n",
                "&a ", "*a", "!!str ", "spec:\n", "  triggers: [{type: aws-sqs-queue, metadata: {queueURL: q}}]\n"])
                .prop_map(str::to_owned),
            word(),
        ], 0..30).prop_map(|parts| parts.concat()),
    ]) {
        match sqscale::import::parse_documents(&text) {
            Ok(objects) => check_import(&objects)?,
            Err(e) => prop_assert!(!e.message.is_empty(), "an error without a message for {:?}", text),
        }
    }
}
