//! What an operator sees without reading logs: the Prometheus metrics, each rule's
//! status (`/status`), readiness and health. Workers report each poll here; the HTTP
//! server and the systemd watchdog read from here.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::time::Instant;

use crate::config::Config;
use crate::engine::{Decision, Time};
use crate::source::lock;
use crate::target::format_time;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    rule: String,
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScaleLabels {
    rule: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    rule: String,
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    rule: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The metric families, named as the contract fixes them.
struct Metrics {
    backlog: Family<QueueLabels, Gauge>,
    desired: Family<RuleLabels, Gauge>,
    current: Family<RuleLabels, Gauge>,
    scales: Family<ScaleLabels, Counter>,
    poll_errors: Family<ErrorLabels, Counter>,
    decisions: Family<DecisionLabels, Counter>,
    poll_duration: Histogram,
    reloads: Family<ResultLabels, Counter>,
    rules: Gauge,
    is_leader: Gauge,
}

/// Everything `/status` shows of one rule.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct RuleStatus {
    pub rule: String,
    pub target: String,
    pub context: Option<String>,
    pub current_replicas: Option<u32>,
    /// What sqscale wants the target at after the last poll.
    pub desired_replicas: Option<u32>,
    /// Backlog per queue as the trigger counts it; `null` when the last read failed.
    pub backlog: BTreeMap<String, Option<u64>>,
    pub active: bool,
    pub last_active: Option<String>,
    pub last_reason: Option<String>,
    pub last_poll: Option<String>,
    pub next_poll: Option<String>,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub polls: u64,
}

/// Liveness bookkeeping of one rule (not shown in `/status`).
struct Liveness {
    interval: Duration,
    since: Instant,
    polled: bool,
}

/// One poll, as the worker reports it.
#[derive(Debug, Default)]
pub struct PollReport<'a> {
    pub at: Time,
    pub duration: Duration,
    pub next_poll: Time,
    /// The target could not be read: nothing else happened.
    pub target_error: Option<String>,
    /// Per trigger: queue, its backlog, or the error.
    pub queues: Vec<(String, Result<u64, String>)>,
    pub decision: Option<&'a Decision>,
    /// A write the target confirmed: (from, to).
    pub scaled: Option<(u32, u32)>,
    pub scale_error: Option<String>,
    pub last_active: Option<Time>,
}

/// The daemon's shared view of itself.
pub struct Observer {
    registry: Registry,
    metrics: Metrics,
    rules: Mutex<BTreeMap<String, (RuleStatus, Liveness)>>,
    /// With leader election: whether this instance leads, per kube context (`None` is
    /// the default context). Without: `None`, and this instance always leads.
    leadership: Mutex<Option<BTreeMap<Option<String>, bool>>>,
}

impl Default for Observer {
    fn default() -> Self {
        Observer::new()
    }
}

impl Observer {
    pub fn new() -> Observer {
        let metrics = Metrics {
            backlog: Family::default(),
            desired: Family::default(),
            current: Family::default(),
            scales: Family::default(),
            poll_errors: Family::default(),
            decisions: Family::default(),
            poll_duration: Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            reloads: Family::default(),
            rules: Gauge::default(),
            is_leader: Gauge::default(),
        };
        let mut r = Registry::default();
        let m = &metrics;
        r.register("sqscale_queue_backlog", "Queue backlog as the trigger counts it (messages)", m.backlog.clone());
        r.register(
            "sqscale_desired_replicas",
            "Replicas sqscale wants for the target after the last poll",
            m.desired.clone(),
        );
        r.register("sqscale_current_replicas", "The target's spec.replicas at the last poll", m.current.clone());
        r.register("sqscale_scale", "Replica changes the target confirmed, by direction", m.scales.clone());
        r.register("sqscale_poll_errors", "Failed reads, by source (sqs or kubernetes)", m.poll_errors.clone());
        r.register("sqscale_decisions", "Poll outcomes, by decision reason", m.decisions.clone());
        r.register("sqscale_poll_duration_seconds", "Time one poll of one rule takes", m.poll_duration.clone());
        r.register("sqscale_config_reloads", "Rule file reloads, by result", m.reloads.clone());
        r.register("sqscale_rules", "Rules running", m.rules.clone());
        r.register(
            "sqscale_build",
            "Build information",
            Info::new(vec![("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned())]),
        );
        let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        r.register_collector(Box::new(ProcessCollector { started: started.as_secs_f64() }));
        Observer { registry: r, metrics, rules: Mutex::default(), leadership: Mutex::default() }
    }

    /// Registers `sqscale_is_leader` and starts as a standby in every `context`; until
    /// called, the daemon is not electing and always leads.
    pub fn enable_leader_election(&mut self, contexts: impl IntoIterator<Item = Option<String>>) {
        self.registry.register(
            "sqscale_is_leader",
            "1 while this instance holds the lease of every cluster it scales",
            self.metrics.is_leader.clone(),
        );
        *lock(&self.leadership) = Some(contexts.into_iter().map(|c| (c, false)).collect());
    }

    pub fn set_leading(&self, context: Option<&str>, leading: bool) {
        let mut guard = lock(&self.leadership);
        if let Some(map) = guard.as_mut() {
            map.insert(context.map(str::to_owned), leading);
            self.metrics.is_leader.set(i64::from(map.values().all(|l| *l)));
        }
    }

    /// Whether this instance may write to targets in `context`.
    pub fn leads(&self, context: Option<&str>) -> bool {
        match lock(&self.leadership).as_ref() {
            None => true,
            Some(map) => map.get(&context.map(str::to_owned)).copied().unwrap_or(false),
        }
    }

    fn leads_everywhere(&self) -> bool {
        lock(&self.leadership).as_ref().is_none_or(|m| m.values().all(|l| *l))
    }

    /// The rules of a (re)loaded configuration; drops the series of removed rules.
    pub fn rules_loaded(&self, config: &Config) {
        let mut rules = lock(&self.rules);
        let keep: Vec<&str> = config.rules.iter().map(|r| r.name.as_str()).collect();
        let removed: Vec<String> = rules.keys().filter(|k| !keep.contains(&k.as_str())).cloned().collect();
        for name in removed {
            if let Some((status, _)) = rules.remove(&name) {
                let l = RuleLabels { rule: name.clone() };
                self.metrics.desired.remove(&l);
                self.metrics.current.remove(&l);
                for queue in status.backlog.keys() {
                    self.metrics.backlog.remove(&QueueLabels { rule: name.clone(), queue: queue.clone() });
                }
            }
        }
        for r in &config.rules {
            let entry = rules.entry(r.name.clone()).or_insert_with(|| {
                (RuleStatus::default(), Liveness { interval: r.polling_interval, since: Instant::now(), polled: false })
            });
            entry.0.rule = r.name.clone();
            entry.0.target = r.target.to_string();
            entry.0.context = r.context.clone();
            entry.1.interval = r.polling_interval;
        }
        self.metrics.rules.set(config.rules.len() as i64);
    }

    /// A rule restarted (changed by a reload): it is not ready until it polls again.
    pub fn rule_restarted(&self, name: &str) {
        if let Some((_, live)) = lock(&self.rules).get_mut(name) {
            live.polled = false;
            live.since = Instant::now();
        }
    }

    pub fn reloaded(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.metrics.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    /// Records one poll of `rule`.
    pub fn polled(&self, rule: &str, report: &PollReport<'_>) {
        let labels = RuleLabels { rule: rule.to_owned() };
        self.metrics.poll_duration.observe(report.duration.as_secs_f64());
        let mut rules = lock(&self.rules);
        let Some((status, live)) = rules.get_mut(rule) else {
            return;
        };
        live.polled = true;
        live.since = Instant::now();
        status.polls += 1;
        status.last_poll = Some(format_time(report.at));
        status.next_poll = Some(format_time(report.next_poll));
        status.last_active = report.last_active.map(format_time);

        let mut errors = Vec::new();
        if let Some(e) = &report.target_error {
            self.metrics.poll_errors.get_or_create(&ErrorLabels { rule: rule.to_owned(), source: "kubernetes" }).inc();
            errors.push(e.clone());
        }
        for (queue, result) in &report.queues {
            let value = match result {
                Ok(b) => {
                    self.metrics
                        .backlog
                        .get_or_create(&QueueLabels { rule: rule.to_owned(), queue: queue.clone() })
                        .set(*b as i64);
                    Some(*b)
                }
                Err(e) => {
                    self.metrics.poll_errors.get_or_create(&ErrorLabels { rule: rule.to_owned(), source: "sqs" }).inc();
                    errors.push(e.clone());
                    None
                }
            };
            match status.backlog.get_mut(queue) {
                Some(v) => *v = value,
                None => {
                    status.backlog.insert(queue.clone(), value);
                }
            }
        }
        if let Some(e) = &report.scale_error {
            self.metrics.poll_errors.get_or_create(&ErrorLabels { rule: rule.to_owned(), source: "kubernetes" }).inc();
            errors.push(e.clone());
        }
        if let Some(d) = report.decision {
            let after = report.scaled.map_or(d.current, |(_, to)| to);
            status.current_replicas = Some(after);
            status.desired_replicas = Some(d.replicas());
            status.active = d.active;
            if status.last_reason.as_deref() != Some(d.reason.as_str()) {
                status.last_reason = Some(d.reason.as_str().to_owned());
            }
            self.metrics.current.get_or_create(&labels).set(i64::from(after));
            self.metrics.desired.get_or_create(&labels).set(i64::from(d.replicas()));
            self.metrics
                .decisions
                .get_or_create(&DecisionLabels { rule: rule.to_owned(), reason: d.reason.as_str() })
                .inc();
        }
        if let Some((from, to)) = report.scaled {
            let direction = if to > from { "up" } else { "down" };
            self.metrics.scales.get_or_create(&ScaleLabels { rule: rule.to_owned(), direction }).inc();
        }
        if errors.is_empty() {
            status.consecutive_failures = 0;
            status.last_error = None;
        } else {
            status.consecutive_failures += 1;
            status.last_error = Some(errors.join("; "));
        }
    }

    /// `/status`: every rule, in name order.
    pub fn statuses(&self) -> Vec<RuleStatus> {
        lock(&self.rules).values().map(|(s, _)| s.clone()).collect()
    }

    /// Whether every rule has finished at least one poll.
    pub fn first_round(&self) -> Result<(), String> {
        let rules = lock(&self.rules);
        if rules.is_empty() {
            return Err("no rules loaded yet".to_owned());
        }
        let waiting: Vec<String> = rules.iter().filter(|(_, (_, l))| !l.polled).map(|(n, _)| n.clone()).collect();
        if waiting.is_empty() { Ok(()) } else { Err(format!("waiting for the first poll of: {}", waiting.join(", "))) }
    }

    /// Ready when every rule has finished at least one poll (and, with leader election,
    /// this instance leads).
    pub fn readiness(&self) -> Result<(), String> {
        self.first_round()?;
        if !self.leads_everywhere() {
            return Err("standby: another instance holds the lease".to_owned());
        }
        Ok(())
    }

    /// Healthy while every rule keeps polling: none has gone two intervals plus `slack`
    /// without finishing a poll.
    pub fn health(&self, slack: Duration) -> Result<(), String> {
        let now = Instant::now();
        let stuck: Vec<String> = lock(&self.rules)
            .iter()
            .filter(|(_, (_, l))| now.duration_since(l.since) > 2 * l.interval + slack)
            .map(|(n, (_, l))| format!("{n} (no poll for {}s)", now.duration_since(l.since).as_secs()))
            .collect();
        if stuck.is_empty() { Ok(()) } else { Err(format!("rules not polling: {}", stuck.join(", "))) }
    }

    /// The metrics in the Prometheus (OpenMetrics) text format.
    pub fn encode_metrics(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            out = format!("# encoding failed: {e}\n");
        }
        out
    }
}

/// The standard `process_*` metrics, read from /proc/self when scraped.
#[derive(Debug)]
struct ProcessCollector {
    /// Unix time the observer was made, i.e. start-up: /proc/stat (for the boot time)
    /// is hidden under systemd's ProcSubset=pid, so it is recorded rather than derived.
    started: f64,
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(me) = procfs::process::Process::myself() else {
            return Ok(());
        };
        if let Ok(stat) = me.stat() {
            let ticks = procfs::ticks_per_second() as f64;
            let cpu = ConstCounter::new((stat.utime + stat.stime) as f64 / ticks);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time",
                None,
                cpu.metric_type(),
            )?)?;
            let rss = ConstGauge::new((stat.rss * procfs::page_size()) as i64);
            rss.encode(encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory",
                None,
                rss.metric_type(),
            )?)?;
        }
        let start = ConstGauge::new(self.started);
        start.encode(encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time since the Unix epoch",
            None,
            start.metric_type(),
        )?)?;
        if let Ok(fds) = me.fd_count() {
            let g = ConstGauge::new(fds as i64);
            g.encode(encoder.encode_descriptor("process_open_fds", "Open file descriptors", None, g.metric_type())?)?;
        }
        Ok(())
    }
}

// === `sqscale status` ===

/// Fetches `/status` from a running daemon at `base` (`http://127.0.0.1:9464`).
pub async fn fetch(base: &str) -> Result<Vec<RuleStatus>, String> {
    use http_body_util::BodyExt;
    let url = format!("{}/status", base.trim_end_matches('/'));
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{url}: only http:// is served"));
    }
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<hyper::body::Bytes>>();
    let response = tokio::time::timeout(Duration::from_secs(5), client.get(uri))
        .await
        .map_err(|_| format!("{url}: no answer within 5s"))?
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| format!("{url}: {e}"))?.to_bytes();
    if !status.is_success() {
        return Err(format!("{url}: {status}"));
    }
    #[derive(serde::Deserialize)]
    struct Body {
        rules: Vec<RuleStatus>,
    }
    serde_json::from_slice::<Body>(&body)
        .map(|b| b.rules)
        .map_err(|e| format!("{url}: not a sqscale /status answer: {e}"))
}

/// Renders statuses as a table, one line per rule.
pub fn table(rules: &[RuleStatus]) -> String {
    let header = [
        "RULE",
        "TARGET",
        "REPLICAS",
        "DESIRED",
        "BACKLOG",
        "ACTIVE",
        "REASON",
        "FAILURES",
        "LAST ACTIVE",
        "NEXT POLL",
    ];
    let dash = || "-".to_owned();
    let rows: Vec<[String; 10]> = rules
        .iter()
        .map(|r| {
            let backlog = if r.backlog.is_empty() {
                dash()
            } else {
                r.backlog
                    .values()
                    .map(|b| b.map_or("error".to_owned(), |v| v.to_string()))
                    .collect::<Vec<_>>()
                    .join("+")
            };
            [
                r.rule.clone(),
                r.target.clone(),
                r.current_replicas.map_or_else(dash, |v| v.to_string()),
                r.desired_replicas.map_or_else(dash, |v| v.to_string()),
                backlog,
                if r.active { "yes" } else { "no" }.to_owned(),
                r.last_reason.clone().unwrap_or_else(dash),
                r.consecutive_failures.to_string(),
                r.last_active.clone().unwrap_or_else(dash),
                r.next_poll.clone().unwrap_or_else(dash),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let parts: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for row in &rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}
