//! What an operator sees without reading logs: the Prometheus metrics, each rule's
//! status (`/status`), readiness and health. Workers report each poll here; the HTTP
//! server and the systemd watchdog read from here.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::time::Instant;

use crate::config::{Rule, Standby};
use crate::engine::{Decision, Reason, Time};
use crate::sync::lock;
use crate::workload::format_time;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The metric families that are not per rule (those are rendered from the rules'
/// records when scraped: see [`RuleMetrics`]).
struct Metrics {
    poll_duration: Histogram,
    reloads: Family<ResultLabels, Counter>,
    rules: Gauge,
    is_leader: Gauge,
    sqs_fallbacks: crate::source::sqs::Fallbacks,
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

/// One poll, as the worker reports it.
#[derive(Debug, Default)]
pub struct PollReport<'a> {
    pub at: Time,
    pub duration: Duration,
    pub next_poll: Time,
    /// The target could not be read: nothing else happened.
    pub target_error: Option<String>,
    /// Per trigger, in the rule's order: its backlog, or the error. Empty when the
    /// queues were not read.
    pub queues: Vec<Result<u64, String>>,
    pub decision: Option<&'a Decision>,
    /// A write the target confirmed: (from, to).
    pub scaled: Option<(u32, u32)>,
    pub scale_error: Option<String>,
    pub last_active: Option<Time>,
}

/// Everything known of one rule, kept as numbers: `/status` and `/metrics` render it
/// when asked, so a poll formats nothing and no label set is kept per series.
struct Record {
    rule: Arc<Rule>,
    /// Liveness: since when the rule has been waiting for a poll to finish, and
    /// whether one ever has (since it last started).
    since: Instant,
    polled: bool,
    polls: u64,
    last_poll: Option<Time>,
    next_poll: Option<Time>,
    last_active: Option<Time>,
    current: Option<u32>,
    desired: Option<u32>,
    active: bool,
    reason: Option<Reason>,
    /// Per trigger (the rule's order).
    backlog: Box<[Backlog]>,
    consecutive_failures: u32,
    last_error: Option<String>,
    /// Counters: polls by decision reason; confirmed changes up and down; failed reads
    /// from SQS and from Kubernetes.
    decisions: Vec<(Reason, u64)>,
    scales: [u64; 2],
    errors: [u64; 2],
}

/// One trigger's backlog: as `/status` shows it (`None`: never read; `Some(None)`: the
/// last read failed) and as the gauge keeps it (the last good value).
#[derive(Clone, Copy, Debug, Default)]
struct Backlog {
    shown: Option<Option<u64>>,
    gauge: Option<u64>,
}

const UP: usize = 0;
const DOWN: usize = 1;
const SQS: usize = 0;
const KUBERNETES: usize = 1;

impl Record {
    fn new(rule: Arc<Rule>) -> Record {
        Record {
            backlog: vec![Backlog::default(); rule.triggers.len()].into(),
            rule,
            since: Instant::now(),
            polled: false,
            polls: 0,
            last_poll: None,
            next_poll: None,
            last_active: None,
            current: None,
            desired: None,
            active: false,
            reason: None,
            consecutive_failures: 0,
            last_error: None,
            decisions: Vec::new(),
            scales: [0; 2],
            errors: [0; 2],
        }
    }

    fn status(&self) -> RuleStatus {
        let r = &self.rule;
        let backlog =
            r.triggers.iter().zip(&self.backlog).filter_map(|(q, b)| Some((q.display().to_owned(), b.shown?)));
        RuleStatus {
            rule: r.name.clone(),
            target: r.target.to_string(),
            context: r.context.clone(),
            current_replicas: self.current,
            desired_replicas: self.desired,
            backlog: backlog.collect(),
            active: self.active,
            last_active: self.last_active.map(format_time),
            last_reason: self.reason.map(|r| r.as_str().to_owned()),
            last_poll: self.last_poll.map(format_time),
            next_poll: self.next_poll.map(format_time),
            consecutive_failures: self.consecutive_failures,
            last_error: self.last_error.clone(),
            polls: self.polls,
        }
    }

    /// The triggers' queues with their gauge values, one per distinct queue (the last
    /// trigger wins, as a label set can only have one value).
    fn backlog_series(&self) -> impl Iterator<Item = (&str, u64)> {
        let queues = &self.rule.triggers;
        queues.iter().zip(&self.backlog).enumerate().filter_map(move |(i, (q, b))| {
            let later = queues[i + 1..].iter().any(|o| o.display() == q.display());
            if later { None } else { Some((q.display(), b.gauge?)) }
        })
    }
}

/// Every rule's record, sorted by rule name. Workers hold their own record's handle
/// ([`Observer::record`]), so a poll reports without looking anything up.
type Records = Arc<Mutex<Vec<RecordHandle>>>;

/// One rule's record, shared by its worker and the observer.
#[derive(Clone, Debug)]
pub struct RecordHandle(Arc<Mutex<Record>>);

impl RecordHandle {
    fn name(&self) -> String {
        lock(&self.0).rule.name.clone()
    }
}

fn position(records: &[RecordHandle], name: &str) -> Option<usize> {
    records.binary_search_by(|r| lock(&r.0).rule.name.as_str().cmp(name)).ok()
}

/// The daemon's shared view of itself.
pub struct Observer {
    registry: Registry,
    metrics: Metrics,
    rules: Records,
    /// With leader election: per kube context (`None` is the default context), the
    /// campaign that reports for it and until when it may write. Without: `None`, and
    /// this instance always leads.
    leadership: Mutex<Option<BTreeMap<Option<String>, Campaign>>>,
    /// With leader election: this instance's identity in the leases, and what it does
    /// while it stands by.
    election: Option<(String, Standby)>,
    /// Keys of the rule file changed by a reload that only a restart applies.
    restart_required: Mutex<Vec<String>>,
}

/// One context's election as the observer keeps it.
#[derive(Clone, Debug)]
struct Campaign {
    /// Which elector reports: a context dropped and added again by reloads gets a new
    /// elector, and the old one's last words must not count.
    generation: u64,
    /// `Some`: leading, and writes must end before this instant.
    until: Option<Instant>,
    /// The lease's holder as last read (`holderIdentity`): who leads.
    holder: Option<String>,
}

/// `/status` of an instance with leader election: who it is, whether it stands by,
/// and who leads each cluster.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct ElectionStatus {
    /// This instance's identity in the leases.
    pub identity: String,
    /// `cold` or `warm`: what this instance does while it stands by.
    pub standby_mode: String,
    /// True unless this instance leads in every cluster.
    pub standby: bool,
    pub contexts: Vec<ContextLead>,
}

/// One cluster's lease as this instance last saw it.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct ContextLead {
    /// The kube context (`null`: the default one).
    pub context: Option<String>,
    /// Whether this instance holds the lease and may write.
    pub leading: bool,
    /// The lease's `holderIdentity`: the instance that leads (`null`: none yet).
    pub leader: Option<String>,
}

/// Whether, and until when, this instance may write to the targets of one kube context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lead {
    /// No leader election: writes are bounded only by the call timeout.
    Unelected,
    /// Holding the lease: a write must end before this instant, the lease's earliest
    /// possible expiry less the write margin (see [`crate::leader`]).
    Until(Instant),
    /// A standby, or a leader whose lease may be about to expire: no writes.
    Standby,
}

impl Lead {
    /// How long a write that starts now may run: `cap`, or less when the lease's margin
    /// comes first; `None` when no write may start.
    pub fn budget(self, cap: Duration) -> Option<Duration> {
        match self {
            Lead::Unelected => Some(cap),
            Lead::Until(end) => {
                let left = end.saturating_duration_since(Instant::now());
                (!left.is_zero()).then(|| left.min(cap))
            }
            Lead::Standby => None,
        }
    }
}

impl Default for Observer {
    fn default() -> Self {
        Observer::new()
    }
}

impl Observer {
    pub fn new() -> Observer {
        let metrics = Metrics {
            poll_duration: Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            reloads: Family::default(),
            rules: Gauge::default(),
            is_leader: Gauge::default(),
            sqs_fallbacks: crate::source::sqs::fallbacks(),
        };
        let rules = Records::default();
        let mut r = Registry::default();
        let m = &metrics;
        r.register("sqscale_poll_duration_seconds", "Time one poll of one rule takes", m.poll_duration.clone());
        r.register("sqscale_config_reloads", "Rule file reloads, by result", m.reloads.clone());
        r.register("sqscale_rules", "Rules running", m.rules.clone());
        r.register(
            "sqscale_sqs_fallbacks",
            "Direct GetQueueAttributes calls asked again through the AWS SDK, by reason",
            m.sqs_fallbacks.clone(),
        );
        r.register(
            "sqscale_build",
            "Build information",
            Info::new(vec![("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned())]),
        );
        r.register_collector(Box::new(RuleMetrics(rules.clone())));
        let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        r.register_collector(Box::new(ProcessCollector { started: started.as_secs_f64() }));
        Observer {
            registry: r,
            metrics,
            rules,
            leadership: Mutex::default(),
            election: None,
            restart_required: Mutex::default(),
        }
    }

    /// The counter of `sqscale_sqs_fallbacks_total`, for the SQS reader
    /// ([`crate::source::sqs::Sqs::with_fallbacks`]).
    pub fn sqs_fallbacks(&self) -> crate::source::sqs::Fallbacks {
        self.metrics.sqs_fallbacks.clone()
    }

    /// Registers `sqscale_is_leader`; from now on this instance, `identity` in the
    /// leases, writes to a context only while its elector reports a lease held there
    /// (see [`Observer::campaign`]), and while it does not, does what `standby` says.
    pub fn enable_leader_election(&mut self, identity: &str, standby: Standby) {
        self.election = Some((identity.to_owned(), standby));
        self.registry.register(
            "sqscale_is_leader",
            "1 while this instance holds the lease of every cluster it scales",
            self.metrics.is_leader.clone(),
        );
        *lock(&self.leadership) = Some(BTreeMap::new());
    }

    /// A new elector (`generation`) campaigns for `context`: a standby there until it
    /// reports a lease. It replaces any older elector of the context.
    pub fn campaign(&self, context: Option<&str>, generation: u64) {
        self.update_leadership(|map| {
            map.insert(context.map(str::to_owned), Campaign { generation, until: None, holder: None });
        });
    }

    /// Elector `generation` of `context` leads until `until`, or (`None`) not at all;
    /// the lease names `holder`.
    pub fn set_leading(&self, context: Option<&str>, generation: u64, until: Option<Instant>, holder: Option<&str>) {
        self.update_leadership(|map| {
            if let Some(c) = map.get_mut(&context.map(str::to_owned)).filter(|c| c.generation == generation) {
                c.until = until;
                if c.holder.as_deref() != holder {
                    c.holder = holder.map(str::to_owned);
                }
            }
        });
    }

    /// Elector `generation` of `context` has stopped: the context no longer counts.
    pub fn forget(&self, context: Option<&str>, generation: u64) {
        self.update_leadership(|map| {
            let key = context.map(str::to_owned);
            if map.get(&key).is_some_and(|c| c.generation == generation) {
                map.remove(&key);
            }
        });
    }

    fn update_leadership(&self, change: impl FnOnce(&mut BTreeMap<Option<String>, Campaign>)) {
        let mut guard = lock(&self.leadership);
        if let Some(map) = guard.as_mut() {
            change(map);
            let leading = !map.is_empty() && map.values().all(|c| c.until.is_some());
            self.metrics.is_leader.set(i64::from(leading));
        }
    }

    /// Whether, and until when, this instance may write to targets in `context`.
    pub fn lead(&self, context: Option<&str>) -> Lead {
        match lock(&self.leadership).as_ref() {
            None => Lead::Unelected,
            Some(map) => match map.get(&context.map(str::to_owned)).and_then(|c| c.until) {
                Some(until) if until > Instant::now() => Lead::Until(until),
                _ => Lead::Standby,
            },
        }
    }

    /// Whether rules of `context` should skip their polls: this instance is a cold
    /// standby there (see [`Standby::Cold`]).
    pub fn cold_standby(&self, context: Option<&str>) -> bool {
        matches!(self.election, Some((_, Standby::Cold))) && self.lead(context) == Lead::Standby
    }

    /// `/status`'s account of the election; `None` without one.
    pub fn election(&self) -> Option<ElectionStatus> {
        let (identity, mode) = self.election.as_ref()?;
        let now = Instant::now();
        let contexts: Vec<ContextLead> = lock(&self.leadership)
            .as_ref()
            .map(|m| {
                m.iter()
                    .map(|(context, c)| ContextLead {
                        context: context.clone(),
                        leading: c.until.is_some_and(|u| u > now),
                        leader: c.holder.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(ElectionStatus {
            identity: identity.clone(),
            standby_mode: mode.as_str().to_owned(),
            standby: contexts.is_empty() || contexts.iter().any(|c| !c.leading),
            contexts,
        })
    }

    fn leads_everywhere(&self) -> bool {
        let now = Instant::now();
        lock(&self.leadership)
            .as_ref()
            .is_none_or(|m| !m.is_empty() && m.values().all(|c| c.until.is_some_and(|u| u > now)))
    }

    /// The rules now running (after a start or a reload): a new rule gets a record, a
    /// kept one keeps its counters and last poll, a removed one's record (and with it
    /// its series) goes.
    pub fn rules_loaded(&self, running: &[Arc<Rule>]) {
        let mut rules = lock(&self.rules);
        let mut old: std::collections::HashMap<String, RecordHandle> =
            std::mem::take(&mut *rules).into_iter().map(|r| (r.name(), r)).collect();
        rules.extend(running.iter().map(|rule| match old.remove(&rule.name) {
            Some(handle) => {
                let mut r = lock(&handle.0);
                // A changed rule with other queues: their backlogs no longer apply.
                if r.rule.triggers != rule.triggers {
                    r.backlog = vec![Backlog::default(); rule.triggers.len()].into();
                }
                r.rule = rule.clone();
                drop(r);
                handle
            }
            None => RecordHandle(Arc::new(Mutex::new(Record::new(rule.clone())))),
        }));
        rules.sort_unstable_by_key(RecordHandle::name);
        rules.shrink_to_fit();
        self.metrics.rules.set(running.len() as i64);
    }

    /// The record of the running rule `name`, for its worker to report to.
    pub fn record(&self, name: &str) -> Option<RecordHandle> {
        let rules = lock(&self.rules);
        position(&rules, name).map(|i| rules[i].clone())
    }

    /// A rule restarted (changed by a reload): it is not ready until it polls again.
    pub fn rule_restarted(&self, name: &str) {
        if let Some(handle) = self.record(name) {
            let mut r = lock(&handle.0);
            r.polled = false;
            r.since = Instant::now();
        }
    }

    /// A reload rejected the new file: the running rules and settings stay.
    pub fn reload_rejected(&self) {
        self.metrics.reloads.get_or_create(&ResultLabels { result: "failure" }).inc();
    }

    /// A reload applied the new rules. `restart_required` lists the changed keys it
    /// could not apply (compared with the settings at start): the reload counts as
    /// `partial` then, and `/status` lists them until a reload reverts them.
    pub fn reload_applied(&self, restart_required: Vec<String>) {
        let result = if restart_required.is_empty() { "success" } else { "partial" };
        self.metrics.reloads.get_or_create(&ResultLabels { result }).inc();
        *lock(&self.restart_required) = restart_required;
    }

    /// The changed keys that wait for a restart (see [`Observer::reload_applied`]).
    pub fn restart_required(&self) -> Vec<String> {
        lock(&self.restart_required).clone()
    }

    /// Records one poll of the rule of `record`.
    pub fn polled(&self, record: &RecordHandle, report: &PollReport<'_>) {
        self.metrics.poll_duration.observe(report.duration.as_secs_f64());
        let r = &mut *lock(&record.0);
        r.polled = true;
        r.since = Instant::now();
        r.polls += 1;
        r.last_poll = Some(report.at);
        r.next_poll = Some(report.next_poll);
        r.last_active = report.last_active;

        let mut errors: Vec<&str> = Vec::new();
        if let Some(e) = &report.target_error {
            r.errors[KUBERNETES] += 1;
            errors.push(e);
        }
        for (b, result) in r.backlog.iter_mut().zip(&report.queues) {
            match result {
                Ok(v) => *b = Backlog { shown: Some(Some(*v)), gauge: Some(*v) },
                Err(e) => {
                    b.shown = Some(None);
                    r.errors[SQS] += 1;
                    errors.push(e);
                }
            }
        }
        if let Some(e) = &report.scale_error {
            r.errors[KUBERNETES] += 1;
            errors.push(e);
        }
        if let Some(d) = report.decision {
            r.current = Some(report.scaled.map_or(d.current, |(_, to)| to));
            r.desired = Some(d.replicas());
            r.active = d.active;
            r.reason = Some(d.reason);
            match r.decisions.iter_mut().find(|(reason, _)| *reason == d.reason) {
                Some((_, n)) => *n += 1,
                None => r.decisions.push((d.reason, 1)),
            }
        }
        if let Some((from, to)) = report.scaled {
            r.scales[if to > from { UP } else { DOWN }] += 1;
        }
        if errors.is_empty() {
            r.consecutive_failures = 0;
            r.last_error = None;
        } else {
            r.consecutive_failures += 1;
            r.last_error = Some(errors.join("; "));
        }
    }

    /// A cold standby's turn of the rule of `record`: no poll, but the rule is alive
    /// (for `/healthz` and the watchdog) and counts as started (for READY=1).
    pub fn stood_by(&self, record: &RecordHandle, next_poll: Time) {
        let r = &mut *lock(&record.0);
        r.polled = true;
        r.since = Instant::now();
        r.next_poll = Some(next_poll);
    }

    /// `/status`: every rule, in name order.
    pub fn statuses(&self) -> Vec<RuleStatus> {
        lock(&self.rules).iter().map(|r| lock(&r.0).status()).collect()
    }

    /// Whether every rule has finished at least one poll.
    pub fn first_round(&self) -> Result<(), String> {
        let rules = lock(&self.rules);
        if rules.is_empty() {
            return Err("no rules loaded yet".to_owned());
        }
        let waiting: Vec<String> =
            rules.iter().map(|r| lock(&r.0)).filter(|r| !r.polled).map(|r| r.rule.name.clone()).collect();
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
            .map(|r| lock(&r.0))
            .filter(|r| now.duration_since(r.since) > 2 * r.rule.polling_interval + slack)
            .map(|r| format!("{} (no poll for {}s)", r.rule.name, now.duration_since(r.since).as_secs()))
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

/// The per-rule families, rendered from the records when scraped.
#[derive(Debug)]
struct RuleMetrics(Records);

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record").field("rule", &self.rule.name).finish_non_exhaustive()
    }
}

impl Collector for RuleMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rules = lock(&self.0);
        let gauge = |v: u64| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
        {
            let help = "Queue backlog as the trigger counts it (messages)";
            let mut family = encoder.encode_descriptor("sqscale_queue_backlog", help, None, MetricType::Gauge)?;
            for r in rules.iter().map(|r| lock(&r.0)) {
                for (queue, v) in r.backlog_series() {
                    gauge(v).encode(family.encode_family(&[("rule", r.rule.name.as_str()), ("queue", queue)])?)?;
                }
            }
        }
        for (metric, help, value) in [
            (
                "sqscale_desired_replicas",
                "Replicas sqscale wants for the target after the last poll",
                (|r: &Record| r.desired) as fn(&Record) -> Option<u32>,
            ),
            ("sqscale_current_replicas", "The target's spec.replicas at the last poll", |r: &Record| r.current),
        ] {
            let mut family = encoder.encode_descriptor(metric, help, None, MetricType::Gauge)?;
            for r in rules.iter().map(|r| lock(&r.0)) {
                if let Some(v) = value(&r) {
                    gauge(u64::from(v)).encode(family.encode_family(&[("rule", r.rule.name.as_str())])?)?;
                }
            }
        }
        let counted = |encoder: &mut DescriptorEncoder,
                       metric: &str,
                       help: &str,
                       label: &str,
                       series: &dyn Fn(&Record) -> Vec<(&'static str, u64)>|
         -> Result<(), std::fmt::Error> {
            let mut family = encoder.encode_descriptor(metric, help, None, MetricType::Counter)?;
            for r in rules.iter().map(|r| lock(&r.0)) {
                for (value, n) in series(&r) {
                    if n > 0 {
                        let labels = [("rule", r.rule.name.as_str()), (label, value)];
                        ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
                    }
                }
            }
            Ok(())
        };
        counted(
            &mut encoder,
            "sqscale_scale",
            "Replica changes the target confirmed, by direction",
            "direction",
            &|r| vec![("up", r.scales[UP]), ("down", r.scales[DOWN])],
        )?;
        counted(&mut encoder, "sqscale_poll_errors", "Failed reads, by source (sqs or kubernetes)", "source", &|r| {
            vec![("sqs", r.errors[SQS]), ("kubernetes", r.errors[KUBERNETES])]
        })?;
        counted(&mut encoder, "sqscale_decisions", "Poll outcomes, by decision reason", "reason", &|r| {
            r.decisions.iter().map(|(reason, n)| (reason.as_str(), *n)).collect()
        })
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

/// `/status` of a running daemon.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
pub struct Status {
    pub rules: Vec<RuleStatus>,
    /// Keys whose change waits for a restart (absent from older daemons).
    #[serde(default)]
    pub restart_required: Vec<String>,
    /// With leader election: who this instance is and who leads (absent from older
    /// daemons, and without leader election).
    #[serde(default)]
    pub leader_election: Option<ElectionStatus>,
}

/// GETs `path` from a running daemon at `base` (`http://127.0.0.1:9464`), waiting at
/// most `timeout` for the whole answer: its status and body.
async fn get(base: &str, path: &str, timeout: Duration) -> Result<(hyper::StatusCode, hyper::body::Bytes), String> {
    use http_body_util::BodyExt;
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{url}: only http:// is served"));
    }
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<hyper::body::Bytes>>();
    let answer = async {
        let response = client.get(uri).await.map_err(|e| format!("{url}: {e}"))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| format!("{url}: {e}"))?.to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, answer)
        .await
        .map_err(|_| format!("{url}: no answer within {}s", timeout.as_secs()))?
}

/// Fetches `/status` from a running daemon at `base` (`http://127.0.0.1:9464`).
pub async fn fetch(base: &str) -> Result<Status, String> {
    let (status, body) = get(base, "/status", Duration::from_secs(5)).await?;
    let url = format!("{}/status", base.trim_end_matches('/'));
    if !status.is_success() {
        return Err(format!("{url}: {status}"));
    }
    serde_json::from_slice::<Status>(&body).map_err(|e| format!("{url}: not a sqscale /status answer: {e}"))
}

/// Asks a running daemon at `base` for `/healthz` within `timeout`: `Ok` with its
/// answer when that is 200, else why not.
pub async fn check_health(base: &str, timeout: Duration) -> Result<String, String> {
    let (status, body) = get(base, "/healthz", timeout).await?;
    let text = String::from_utf8_lossy(&body).trim().to_owned();
    if status == hyper::StatusCode::OK {
        Ok(text)
    } else {
        Err(format!("{}/healthz: {status}: {text}", base.trim_end_matches('/')))
    }
}

/// Who this instance is in the leader election and who leads, above the table: a
/// standby's table shows the figures of its last turn as a leader (a cold standby
/// polls nothing), so it must say that it is one.
pub fn election_lines(e: &ElectionStatus) -> String {
    let mut out = String::new();
    let role = if e.standby { format!("a {} standby", e.standby_mode) } else { "the leader".to_owned() };
    out.push_str(&format!("instance {}: {role}\n", e.identity));
    for c in &e.contexts {
        let context = c.context.as_deref().unwrap_or("(default context)");
        let leader = match (&c.leader, c.leading) {
            (_, true) => "this instance".to_owned(),
            (Some(l), false) => l.clone(),
            (None, false) => "no instance yet".to_owned(),
        };
        out.push_str(&format!("  {context}: led by {leader}\n"));
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Leadership per context, as electors report it: a write budget only while a lease
    /// is held and unexpired; an elector replaced by a newer one of the same context has
    /// no say any more; `sqscale_is_leader` is 1 only while every context leads.
    #[tokio::test(start_paused = true)]
    async fn leadership_follows_the_current_elector_of_each_context() {
        let cap = Duration::from_secs(10);
        assert_eq!(Observer::new().lead(None).budget(cap), Some(cap), "no election: always");
        let mut o = Observer::new();
        o.enable_leader_election("me", Standby::Cold);
        let leader = |o: &Observer| o.encode_metrics().lines().any(|l| l == "sqscale_is_leader 1");
        assert!(!leader(&o), "no context held yet");
        o.campaign(None, 1);
        o.campaign(Some("b"), 2);
        assert_eq!(o.lead(None), Lead::Standby);
        let until = Instant::now() + Duration::from_secs(3);
        assert!(o.cold_standby(None), "a cold standby skips its polls");
        assert_eq!(o.election().unwrap().contexts[0].leader, None);
        o.set_leading(None, 1, None, Some("other"));
        let e = o.election().unwrap();
        assert!(e.standby && e.standby_mode == "cold", "{e:?}");
        assert_eq!((e.contexts[0].leading, e.contexts[0].leader.as_deref()), (false, Some("other")));
        assert!(election_lines(&e).contains("(default context): led by other"), "{}", election_lines(&e));
        o.set_leading(None, 1, Some(until), Some("me"));
        assert!(!o.cold_standby(None), "the leader polls");
        assert_eq!(o.lead(None).budget(cap), Some(Duration::from_secs(3)), "the lease's time left, not the cap");
        assert!(!leader(&o), "context b is not held");
        o.set_leading(Some("b"), 2, Some(until), Some("me"));
        assert!(!o.election().unwrap().standby, "leads everywhere");
        assert!(leader(&o) && o.readiness().is_err(), "leads everywhere (not ready: no rule has polled)");
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(o.lead(None).budget(cap), None, "the lease's margin has run out");
        // Context b dropped and added again by reloads: a new elector, a standby until
        // it holds the lease; the old one's last words do not count.
        o.campaign(Some("b"), 3);
        o.set_leading(Some("b"), 2, Some(Instant::now() + cap), Some("me"));
        o.forget(Some("b"), 2);
        assert_eq!(o.lead(Some("b")), Lead::Standby);
        o.forget(Some("b"), 3);
        o.set_leading(None, 1, Some(Instant::now() + cap), Some("me"));
        assert!(leader(&o), "a forgotten context no longer counts");
    }

    fn rules(toml: &str) -> Vec<Arc<Rule>> {
        crate::config::from_str(toml).unwrap().rules.into_iter().map(Arc::new).collect()
    }

    fn rule(name: &str, queues: &[&str]) -> String {
        let mut r = format!("[[rule]]\nname = \"{name}\"\ntarget = {{ kind = \"Deployment\", name = \"{name}\" }}\n");
        for q in queues {
            r.push_str(&format!(
                "[[rule.trigger]]\nqueue_url = \"https://sqs.us-east-1.amazonaws.com/1/{q}\"\nqueue_length = 5\n"
            ));
        }
        r
    }

    fn series(metrics: &str, prefix: &str) -> Vec<String> {
        metrics.lines().filter(|l| l.starts_with(prefix)).map(str::to_owned).collect()
    }

    /// `/status` and the per-rule series come from one record per rule: a failed read
    /// shows as null while the gauge keeps the last good value, a queue read by two
    /// triggers is one series, and a removed rule's series go with it.
    #[test]
    fn records_render_as_status_and_series() {
        let o = Observer::new();
        let running = rules(&format!("{}{}", rule("a", &["qa", "qa"]), rule("b", &["qb"])));
        o.rules_loaded(&running);
        let decision = Decision {
            current: 0,
            phase: crate::engine::Phase::Keda,
            write: Some(1),
            reason: Reason::Activated,
            active: true,
            backlog: Some(30),
            proposal: Some(6),
        };
        let a = o.record("a").unwrap();
        let report = |queues: Vec<Result<u64, String>>| PollReport {
            at: Time(1_795_780_800_000),
            next_poll: Time(1_795_780_810_000),
            queues,
            decision: Some(&decision),
            scaled: Some((0, 1)),
            ..PollReport::default()
        };
        o.polled(&a, &report(vec![Ok(30), Ok(30)]));
        o.polled(&a, &report(vec![Err("reading queue qa: throttled".to_owned()), Ok(30)]));

        let status = &o.statuses()[0];
        assert_eq!((status.rule.as_str(), status.polls, status.consecutive_failures), ("a", 2, 1));
        assert_eq!(status.backlog.values().copied().collect::<Vec<_>>(), [Some(30)], "one queue, the last read");
        assert_eq!(status.last_poll.as_deref(), Some("2026-11-27T12:00:00Z"));
        assert_eq!((status.current_replicas, status.last_reason.as_deref()), (Some(1), Some("activated")));
        assert_eq!(o.statuses()[1].polls, 0, "b has not polled");

        let m = o.encode_metrics();
        let qa = "https://sqs.us-east-1.amazonaws.com/1/qa";
        assert_eq!(
            series(&m, "sqscale_queue_backlog{"),
            [format!("sqscale_queue_backlog{{rule=\"a\",queue=\"{qa}\"}} 30")]
        );
        assert_eq!(series(&m, "sqscale_scale_total{"), ["sqscale_scale_total{rule=\"a\",direction=\"up\"} 2"]);
        assert_eq!(
            series(&m, "sqscale_poll_errors_total{"),
            ["sqscale_poll_errors_total{rule=\"a\",source=\"sqs\"} 1"]
        );
        assert_eq!(
            series(&m, "sqscale_decisions_total{"),
            ["sqscale_decisions_total{rule=\"a\",reason=\"activated\"} 2"]
        );
        assert_eq!(series(&m, "sqscale_current_replicas{"), ["sqscale_current_replicas{rule=\"a\"} 1"]);
        assert!(m.contains("# TYPE sqscale_desired_replicas gauge"), "{m}");

        // Reloaded without a: its record and every series of it go; b stays.
        o.rules_loaded(&running[1..]);
        let m = o.encode_metrics();
        assert!(!m.contains("rule=\"a\""), "{m}");
        assert_eq!(o.statuses().len(), 1);
        assert!(m.contains("sqscale_rules 1"), "{m}");
    }
}
