//! What an operator sees without reading logs: each rule's record and status
//! (`/status`), readiness and health. Workers report each poll here; the HTTP server and
//! the systemd watchdog read from here.
//!
//! [`metrics`] renders the records and the daemon's counters for Prometheus;
//! [`leadership`] keeps, per kube context, whether this instance may write (the electors
//! report, the workers ask); [`client`] is `sqscale status` and `sqscale health`.

mod client;
mod jobs;
mod leadership;
mod metrics;

pub use client::{AskError, Status, check_health, election_lines, fetch, group_lines, table};
pub use jobs::{DeletedJobs, JobPollReport, JobRecordHandle, JobRuleStatus, OrphanedJob, TimedError, job_lines};
use leadership::Campaign;
pub use leadership::{ContextLead, ElectionStatus};
use metrics::{Metrics, ProcessCollector, ResultLabels, RuleMetrics};

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
    /// The schedule windows open at the last poll and what they impose; `null` when
    /// none is (absent from older daemons).
    #[serde(default)]
    pub schedule: Option<ScheduleStatus>,
}

/// The `[[rule.schedule]]` windows in force at a rule's last poll.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct ScheduleStatus {
    /// The open schedules' numbers (1-based, in the rule's order).
    pub open: Vec<usize>,
    pub min_replica_count: Option<u32>,
    pub max_replica_count: Option<u32>,
    pub paused: bool,
    /// When the last open window closes, as the schedules stood at the poll.
    pub until: String,
}

/// One poll, as the worker reports it.
#[derive(Debug, Default)]
pub struct PollReport<'a> {
    pub at: Time,
    pub duration: Duration,
    pub next_poll: Time,
    /// The target could not be read: nothing else happened.
    pub target_error: Option<String>,
    /// Per trigger, in the rule's order: its backlog (`None`: the read failed). Empty
    /// when the queues were not read.
    pub queues: Vec<Option<u64>>,
    /// What the failed reads said, in the rule's order.
    pub queue_errors: Vec<String>,
    pub decision: Option<&'a Decision>,
    /// A write the target confirmed: (from, to).
    pub scaled: Option<(u32, u32)>,
    pub scale_error: Option<String>,
    pub last_active: Option<Time>,
}

/// Why `/readyz` or `/healthz` answers 503 (and systemd hears no READY=1 or keep-alive).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("no rules loaded yet")]
    NoRules,
    #[error("waiting for the first poll of: {}", .0.join(", "))]
    FirstPoll(Vec<String>),
    #[error("standby: another instance holds the lease")]
    Standby,
    /// Rules, and for how many seconds each has not finished a poll.
    #[error("rules not polling: {}", stuck(.0))]
    Stuck(Vec<(String, u64)>),
}

fn stuck(rules: &[(String, u64)]) -> String {
    rules.iter().map(|(name, s)| format!("{name} (no poll for {s}s)")).collect::<Vec<_>>().join(", ")
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
    /// The open schedule windows' override at the last poll.
    schedule: Option<crate::engine::schedule::Override>,
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
            schedule: None,
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
            schedule: self.schedule.as_ref().map(|o| ScheduleStatus {
                open: o.open_schedules().collect(),
                min_replica_count: o.min,
                max_replica_count: o.max,
                paused: o.paused,
                until: format_time(o.until),
            }),
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

/// A reload that kept the running rules: when, which file, and every problem found.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RejectedReload {
    pub at: String,
    pub file: String,
    pub problems: Vec<String>,
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
    /// The last reload, if it was rejected (cleared by one that applies).
    reload_rejected: Mutex<Option<RejectedReload>>,
    /// Each context's state ConfigMap size, reported by the Kubernetes adapter.
    state_sizes: Arc<crate::workload::state::Sizes>,
    /// The `[[group]]` ledgers the workers ask for capacity; shown here.
    groups: Arc<crate::group::Groups>,
    /// Every job rule's record, sorted by name.
    jobs: jobs::JobRecords,
    /// Where the orphaned Jobs are asked for (see [`Observer::set_orphans`]).
    orphans: Mutex<Option<jobs::Orphans>>,
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
            job_rules: Gauge::default(),
            is_leader: Gauge::default(),
            sqs_fallbacks: crate::source::sqs::fallbacks(),
        };
        let rules = Records::default();
        let mut r = Registry::default();
        let m = &metrics;
        r.register("sqscale_poll_duration_seconds", "Time one poll of one rule takes", m.poll_duration.clone());
        r.register("sqscale_config_reloads", "Rule file reloads, by result", m.reloads.clone());
        // `[[rule]]`s only, as before job rules existed; job rules have their own gauge.
        r.register("sqscale_rules", "Rules running", m.rules.clone());
        r.register("sqscale_job_rules", "Job rules running", m.job_rules.clone());
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
        let jobs = jobs::JobRecords::default();
        r.register_collector(Box::new(RuleMetrics(rules.clone(), jobs.clone())));
        r.register_collector(Box::new(jobs::JobMetrics(jobs.clone())));
        let groups = Arc::new(crate::group::Groups::default());
        r.register_collector(Box::new(metrics::GroupMetrics(groups.clone())));
        let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        r.register_collector(Box::new(ProcessCollector { started: started.as_secs_f64() }));
        Observer {
            registry: r,
            metrics,
            rules,
            leadership: Mutex::default(),
            election: None,
            restart_required: Mutex::default(),
            reload_rejected: Mutex::default(),
            state_sizes: Arc::default(),
            groups,
            jobs,
            orphans: Mutex::default(),
        }
    }

    /// Where the Kubernetes adapter reports the state ConfigMaps' sizes
    /// ([`crate::workload::kube::Kube::with_state_sizes`]).
    pub fn state_sizes(&self) -> Arc<crate::workload::state::Sizes> {
        self.state_sizes.clone()
    }

    /// Each context's state ConfigMap and its size, as `/status` shows them.
    pub fn state(&self) -> Vec<crate::workload::state::StateSize> {
        self.state_sizes.list()
    }

    /// The groups' ledger: the supervisor configures it, the workers ask it for
    /// capacity, `/status` and the metrics show it.
    pub fn groups(&self) -> &Arc<crate::group::Groups> {
        &self.groups
    }

    /// The counter of `sqscale_sqs_fallbacks_total`, for the SQS reader
    /// ([`crate::source::sqs::Sqs::with_fallbacks`]).
    pub fn sqs_fallbacks(&self) -> crate::source::sqs::Fallbacks {
        self.metrics.sqs_fallbacks.clone()
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
    /// A reload found the rule file (or a job rule's template) invalid at `at` and kept
    /// the running rules: `/status` and `sqscale status` say so, with every problem,
    /// until a reload applies.
    pub fn reload_rejected(&self, errors: &crate::config::ConfigErrors, at: Time) {
        self.metrics.reloads.get_or_create(&ResultLabels { result: "failure" }).inc();
        *lock(&self.reload_rejected) = Some(RejectedReload {
            at: format_time(at),
            file: errors.origin.clone(),
            problems: errors.problems.clone(),
        });
    }

    /// The last reload, if it was rejected.
    pub fn rejected_reload(&self) -> Option<RejectedReload> {
        lock(&self.reload_rejected).clone()
    }

    /// A reload applied the new rules. `restart_required` lists the changed keys it
    /// could not apply (compared with the settings at start): the reload counts as
    /// `partial` then, and `/status` lists them until a reload reverts them.
    pub fn reload_applied(&self, restart_required: Vec<String>) {
        let result = if restart_required.is_empty() { "success" } else { "partial" };
        self.metrics.reloads.get_or_create(&ResultLabels { result }).inc();
        *lock(&self.restart_required) = restart_required;
        *lock(&self.reload_rejected) = None;
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
        for (b, backlog) in r.backlog.iter_mut().zip(&report.queues) {
            match backlog {
                Some(v) => *b = Backlog { shown: Some(Some(*v)), gauge: Some(*v) },
                None => {
                    b.shown = Some(None);
                    r.errors[SQS] += 1;
                }
            }
        }
        errors.extend(report.queue_errors.iter().map(String::as_str));
        if let Some(e) = &report.scale_error {
            r.errors[KUBERNETES] += 1;
            errors.push(e);
        }
        if let Some(d) = report.decision {
            r.current = Some(report.scaled.map_or(d.current, |(_, to)| to));
            r.desired = Some(d.replicas());
            r.active = d.active;
            r.reason = Some(d.reason);
            r.schedule = d.schedule;
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
    pub fn first_round(&self) -> Result<(), NotReady> {
        let (rules, jobs) = (lock(&self.rules), lock(&self.jobs));
        if rules.is_empty() && jobs.is_empty() {
            return Err(NotReady::NoRules);
        }
        let mut waiting: Vec<String> =
            rules.iter().map(|r| lock(&r.0)).filter(|r| !r.polled).map(|r| r.rule.name.clone()).collect();
        waiting.extend(jobs.iter().map(|r| lock(&r.0)).filter(|r| !r.polled).map(|r| format!("job {}", r.rule.name)));
        if waiting.is_empty() { Ok(()) } else { Err(NotReady::FirstPoll(waiting)) }
    }

    /// Ready when every rule has finished at least one poll (and, with leader election,
    /// this instance leads).
    pub fn readiness(&self) -> Result<(), NotReady> {
        self.first_round()?;
        if !self.leads_everywhere() {
            return Err(NotReady::Standby);
        }
        Ok(())
    }

    /// Healthy while every rule keeps polling: none has gone two intervals plus `slack`
    /// without finishing a poll.
    pub fn health(&self, slack: Duration) -> Result<(), NotReady> {
        let now = Instant::now();
        let mut stuck: Vec<(String, u64)> = lock(&self.rules)
            .iter()
            .map(|r| lock(&r.0))
            .filter(|r| now.duration_since(r.since) > 2 * r.rule.polling_interval + slack)
            .map(|r| (r.rule.name.clone(), now.duration_since(r.since).as_secs()))
            .collect();
        stuck.extend(
            lock(&self.jobs)
                .iter()
                .map(|r| lock(&r.0))
                .filter(|r| now.duration_since(r.since) > 2 * r.rule.polling_interval + slack)
                .map(|r| (format!("job {}", r.rule.name), now.duration_since(r.since).as_secs())),
        );
        if stuck.is_empty() { Ok(()) } else { Err(NotReady::Stuck(stuck)) }
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

// === `sqscale status` ===

#[cfg(test)]
mod tests {
    use super::*;

    /// Leadership per context, as electors report it: an elector replaced by a newer
    /// one of the same context has no say any more; `sqscale_is_leader` is 1 only while
    /// every context leads.
    #[tokio::test(start_paused = true)]
    async fn leadership_follows_the_current_elector_of_each_context() {
        let cap = Duration::from_secs(10);
        let mut o = Observer::new();
        o.enable_leader_election("me", Standby::Cold);
        let leader = |o: &Observer| o.encode_metrics().lines().any(|l| l == "sqscale_is_leader 1");
        assert!(!leader(&o), "no context held yet");
        o.campaign(None, 1);
        o.campaign(Some("b"), 2);
        let until = Instant::now() + Duration::from_secs(3);
        assert_eq!(o.election().unwrap().contexts[0].leader, None);
        o.set_leading(None, 1, None, Some("other"));
        let e = o.election().unwrap();
        assert!(e.standby && e.standby_mode == "cold", "{e:?}");
        assert_eq!((e.contexts[0].leading, e.contexts[0].leader.as_deref()), (false, Some("other")));
        assert!(election_lines(&e).contains("(default context): led by other"), "{}", election_lines(&e));
        o.set_leading(None, 1, Some(until), Some("me"));
        assert!(o.election().unwrap().contexts[0].leading);
        assert!(!leader(&o), "context b is not held");
        o.set_leading(Some("b"), 2, Some(until), Some("me"));
        assert!(!o.election().unwrap().standby, "leads everywhere");
        assert!(leader(&o) && o.readiness().is_err(), "leads everywhere (not ready: no rule has polled)");
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(!o.election().unwrap().contexts[0].leading, "the lease's margin has run out");
        // Context b dropped and added again by reloads: a new elector, a standby until
        // it holds the lease; the old one's last words do not count.
        o.campaign(Some("b"), 3);
        o.set_leading(Some("b"), 2, Some(Instant::now() + cap), Some("me"));
        o.forget(Some("b"), 2);
        assert!(!o.election().unwrap().contexts[1].leading);
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
            schedule: None,
            overrides: Default::default(),
        };
        let a = o.record("a").unwrap();
        let report = |queues: Vec<Option<u64>>, queue_errors: Vec<String>| PollReport {
            at: Time(1_795_780_800_000),
            next_poll: Time(1_795_780_810_000),
            queues,
            queue_errors,
            decision: Some(&decision),
            scaled: Some((0, 1)),
            ..PollReport::default()
        };
        o.polled(&a, &report(vec![Some(30), Some(30)], vec![]));
        o.polled(&a, &report(vec![None, Some(30)], vec!["reading queue qa: throttled".to_owned()]));

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
