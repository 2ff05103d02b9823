//! The Prometheus side: the daemon's counters and gauges, and the per-rule series
//! rendered from the records when scraped (so a poll formats nothing), plus the process
//! metrics.

use super::*;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ResultLabels {
    pub(super) result: &'static str,
}

/// The metric families that are not per rule (those are rendered from the rules'
/// records when scraped: see [`RuleMetrics`]).
pub(super) struct Metrics {
    pub(super) poll_duration: Histogram,
    pub(super) reloads: Family<ResultLabels, Counter>,
    pub(super) rules: Gauge,
    pub(super) job_rules: Gauge,
    pub(super) is_leader: Gauge,
    pub(super) sqs_fallbacks: crate::source::sqs::Fallbacks,
}

/// The per-rule families, rendered from the records when scraped (the job rules'
/// failed reads and writes among them, in `sqscale_poll_errors_total{job,source}`).
#[derive(Debug)]
pub(super) struct RuleMetrics(pub(super) Records, pub(super) super::jobs::JobRecords);

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
        {
            // One family for rules (`rule`) and job rules (`job`): a job rule may share
            // a rule's name, and its own label keeps the two series apart.
            let help = "Failed reads and writes, by source (sqs or kubernetes)";
            let mut family = encoder.encode_descriptor("sqscale_poll_errors", help, None, MetricType::Counter)?;
            for r in rules.iter().map(|r| lock(&r.0)) {
                for (source, n) in [("sqs", r.errors[SQS]), ("kubernetes", r.errors[KUBERNETES])] {
                    if n > 0 {
                        let labels = [("rule", r.rule.name.as_str()), ("source", source)];
                        ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
                    }
                }
            }
            for r in lock(&self.1).iter().map(|r| lock(&r.0)) {
                for (source, n) in [("sqs", r.errors[SQS]), ("kubernetes", r.errors[KUBERNETES])] {
                    if n > 0 {
                        let labels = [("job", r.rule.name.as_str()), ("source", source)];
                        ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
                    }
                }
            }
        }
        counted(&mut encoder, "sqscale_decisions", "Poll outcomes, by decision reason", "reason", &|r| {
            r.decisions.iter().map(|(reason, n)| (reason.as_str(), *n)).collect()
        })
    }
}

/// The `[[group]]` families, rendered from the ledger when scraped.
#[derive(Debug)]
pub(super) struct GroupMetrics(pub(super) Arc<crate::group::Groups>);

impl Collector for GroupMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let groups = self.0.statuses();
        if groups.is_empty() {
            return Ok(());
        }
        let gauge = |v: u64| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
        for (metric, help, value) in [
            (
                "sqscale_group_replicas",
                "The replicas of a group's members as they last reported them",
                (|g: &crate::group::GroupStatus| g.replicas) as fn(&crate::group::GroupStatus) -> u64,
            ),
            ("sqscale_group_max_replicas", "A group's max_replicas", |g| u64::from(g.max_replicas)),
        ] {
            let mut family = encoder.encode_descriptor(metric, help, None, MetricType::Gauge)?;
            for g in &groups {
                gauge(value(g)).encode(family.encode_family(&[("group", g.group.as_str())])?)?;
            }
        }
        let help = "Replicas a member's last poll asked for and its group could not grant";
        let mut family = encoder.encode_descriptor("sqscale_group_denied_replicas", help, None, MetricType::Gauge)?;
        for g in &groups {
            for m in &g.members {
                let labels = [("group", g.group.as_str()), ("rule", m.rule.as_str())];
                gauge(u64::from(m.denied)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The standard `process_*` metrics, read from /proc/self when scraped.
#[derive(Debug)]
pub(super) struct ProcessCollector {
    /// Unix time the observer was made, i.e. start-up: /proc/stat (for the boot time)
    /// is hidden under systemd's ProcSubset=pid, so it is recorded rather than derived.
    pub(super) started: f64,
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
