//! `[[job]]` -> [`JobRule`]: KEDA's ScaledJob defaults and validation
//! (`../shared/spec/scaledjob.md` §2.1), sqscale's decisions (§12), and the template read
//! and checked; every problem named with its job rule and key. Also what `check` says of
//! job rules beside the resolved file: each one's cap, and the strategy pairings §5.5
//! warns about.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::super::raw::{RawConfig, RawJob};
use super::super::template::TemplateError;
use super::super::{AwsSettings, JobRule, JobTemplate, Propagation, Rollout, RolloutStrategy};
use super::{Problems, defaults, duration, fmt_duration, is_dns_label, validate_trigger};
use crate::engine::job::{JobPolicy, JobTrigger, MultipleScalersCalculation, ScalingStrategy};

/// How a `template` key becomes a [`JobTemplate`]: read from a file beside the rule file
/// (`load`), or given in memory (`import-keda`, before it writes the files).
pub(in crate::config) type Templates<'a> = &'a dyn Fn(&Path) -> Result<JobTemplate, TemplateError>;

/// KEDA's ScaledJob defaults (spec §2.1).
mod job_defaults {
    pub const HISTORY_LIMIT: i64 = 100;
}

/// `job "encode"`, or `job #3` when the job rule has no usable name.
pub(in crate::config) fn job_label(raw: &RawConfig, index: usize) -> String {
    match raw.job.get(index).and_then(|j| j.name.as_deref()) {
        Some(name) if !name.is_empty() => format!("job {name:?}"),
        _ => format!("job #{}", index + 1),
    }
}

/// Every `[[job]]` of `raw`, in file order; names unique among job rules.
pub(super) fn validate(p: &mut Problems, raw: &RawConfig, aws: &AwsSettings, templates: Templates<'_>) -> Vec<JobRule> {
    let mut jobs = Vec::new();
    let mut names: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, job) in raw.job.iter().enumerate() {
        let at = job_label(raw, i);
        if let Some(name) = job.name.as_deref() {
            if let Some(first) = names.get(name) {
                p.add(&at, format!("name is already used by job #{}; job names must be unique", first + 1));
            } else {
                names.insert(name, i);
            }
        }
        if let Some(rule) = one(p, &at, job, aws, templates) {
            jobs.push(rule);
        }
    }
    jobs
}

fn one(p: &mut Problems, at: &str, job: &RawJob, aws: &AwsSettings, templates: Templates<'_>) -> Option<JobRule> {
    let before = p.0.len();
    let name = match job.name.as_deref() {
        None => {
            p.add(at, "name is required");
            String::new()
        }
        Some(n) if !is_dns_label(n) => {
            p.add(at, "name must be a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters");
            n.to_owned()
        }
        Some(n) => n.to_owned(),
    };
    let namespace = job.namespace.clone().unwrap_or_else(|| "default".to_owned());
    if !is_dns_label(&namespace) {
        p.add(at, format!("namespace ({namespace:?}) is not a valid namespace name"));
    }
    if job.context.as_deref() == Some("") {
        p.add(at, "context is empty; remove it to use the kubeconfig's current context");
    }
    let template = match job.template.as_deref() {
        None | Some("") => {
            p.add(at, "template is required: the file of a batch/v1 Job manifest, e.g. template = \"jobs/encode.yaml\"");
            None
        }
        Some(t) => templates(Path::new(t)).map_err(|e| p.add(at, format!("template {e}"))).ok(),
    };

    let polling_interval =
        duration(p, at, "polling_interval", job.polling_interval.as_ref(), defaults::POLLING_INTERVAL);
    if polling_interval < Duration::from_secs(1) {
        p.add(at, format!("polling_interval ({}) must be at least 1s", fmt_duration(polling_interval)));
    }
    let finished_job_grace = duration(p, at, "finished_job_grace", job.finished_job_grace.as_ref(), Duration::ZERO);

    let count = |p: &mut Problems, key: &str, v: i64, low: i64| -> u32 {
        if v < low || v > i64::from(i32::MAX) {
            p.add(at, format!("{key} ({v}) must be between {low} and {}", i32::MAX));
            return 0;
        }
        v as u32
    };
    let min = count(p, "min_replica_count", job.min_replica_count.unwrap_or(0), 0);
    let max = job.max_replica_count.map(|m| count(p, "max_replica_count", m, 1));
    if let (Some(lo), Some(hi)) = (job.min_replica_count, job.max_replica_count)
        && lo > hi
    {
        // KEDA takes it and allows 2 x max Jobs (spec §2.2, §12.3): a mistake, said here.
        p.add(at, format!("min_replica_count ({lo}) is greater than max_replica_count ({hi})"));
    }
    let successful = count(
        p,
        "successful_jobs_history_limit",
        job.successful_jobs_history_limit.unwrap_or(job_defaults::HISTORY_LIMIT),
        0,
    );
    let failed =
        count(p, "failed_jobs_history_limit", job.failed_jobs_history_limit.unwrap_or(job_defaults::HISTORY_LIMIT), 0);

    let s = job.scaling_strategy.clone().unwrap_or_default();
    let strategy = match s.strategy.as_deref() {
        None | Some("default") => Some(ScalingStrategy::Default),
        Some("accurate") => Some(ScalingStrategy::Accurate),
        Some("eager") => Some(ScalingStrategy::Eager),
        Some("custom") => {
            if let Some(pct) = s.custom_scaling_running_job_percentage.filter(|p| !p.is_finite()) {
                p.add(at, format!("scaling_strategy.custom_scaling_running_job_percentage ({pct}) must be a finite number"));
            }
            // KEDA's rule: without a percentage, custom is the default strategy (§12.7).
            Some(ScalingStrategy::custom(
                s.custom_scaling_queue_length_deduction,
                s.custom_scaling_running_job_percentage,
            ))
        }
        Some(other) => {
            p.add(
                at,
                format!(
                    "scaling_strategy.strategy ({other:?}) must be \"default\", \"custom\", \"accurate\" or \"eager\""
                ),
            );
            None
        }
    };
    if s.strategy.as_deref() != Some("custom") {
        for (key, set) in [
            ("custom_scaling_queue_length_deduction", s.custom_scaling_queue_length_deduction.is_some()),
            ("custom_scaling_running_job_percentage", s.custom_scaling_running_job_percentage.is_some()),
        ] {
            if set {
                p.add(at, format!("scaling_strategy.{key} applies only to strategy = \"custom\""));
            }
        }
    }
    let pending_pod_conditions = s.pending_pod_conditions.clone().unwrap_or_default();
    if pending_pod_conditions.iter().any(|c| c.trim().is_empty()) {
        p.add(at, "scaling_strategy.pending_pod_conditions holds an empty condition type");
    }
    let calculation = match s.multiple_scalers_calculation.as_deref() {
        None | Some("max") => MultipleScalersCalculation::Max,
        Some("min") => MultipleScalersCalculation::Min,
        Some("avg") => MultipleScalersCalculation::Avg,
        Some("sum") => MultipleScalersCalculation::Sum,
        Some(other) => {
            p.add(
                at,
                format!(
                    "scaling_strategy.multiple_scalers_calculation ({other:?}) must be \"max\", \"min\", \"avg\" or \"sum\""
                ),
            );
            MultipleScalersCalculation::Max
        }
    };

    let r = job.rollout.clone().unwrap_or_default();
    let rollout_strategy = match r.strategy.as_deref() {
        None | Some("default") => RolloutStrategy::Default,
        Some("gradual") => RolloutStrategy::Gradual,
        Some(other) => {
            p.add(at, format!("rollout.strategy ({other:?}) must be \"default\" or \"gradual\""));
            RolloutStrategy::Default
        }
    };
    let propagation = match r.propagation_policy.as_deref() {
        None | Some("background") => Propagation::Background,
        Some("foreground") => Propagation::Foreground,
        Some(other) => {
            p.add(at, format!("rollout.propagation_policy ({other:?}) must be \"background\" or \"foreground\""));
            Propagation::Background
        }
    };

    let priority = match job.priority {
        None => 0,
        Some(v) if i64::from(i32::MIN) <= v && v <= i64::from(i32::MAX) => v as i32,
        Some(v) => {
            p.add(at, format!("priority ({v}) must be between {} and {}", i32::MIN, i32::MAX));
            0
        }
    };
    if job.priority.is_some() && job.group.is_none() {
        p.add(at, "priority applies only to a job rule with a group");
    }

    let raw_triggers = job.trigger.as_deref().unwrap_or_default();
    if raw_triggers.is_empty() {
        p.add(at, "at least one [[job.trigger]] is required");
    }
    let mut trigger_policies = Vec::new();
    let mut sources = Vec::new();
    for (i, t) in raw_triggers.iter().enumerate() {
        let tat = format!("{at}: trigger {}", i + 1);
        if let Some(m) = &t.metric_type {
            p.add(&tat, format!("metric_type ({m:?}) cannot be set on a job rule's trigger (KEDA rejects metricType in ScaledJob triggers)"));
        }
        if let Some((policy, source)) = validate_trigger(p, &tat, t, aws) {
            trigger_policies.push(policy);
            sources.push(source);
        }
    }
    let mut seen = std::collections::HashSet::new();
    for n in trigger_policies.iter().filter_map(|t| t.name.as_deref()) {
        if !seen.insert(n) {
            p.add(at, format!("trigger name {n:?} is used twice; trigger names must be unique within a job rule"));
        }
    }

    let raw_schedules = job.schedule.as_deref().unwrap_or_default();
    let schedule_max = max.map_or(i64::from(u32::MAX), i64::from);
    let schedules = super::schedule::validate(p, at, raw_schedules, i64::from(min), schedule_max).into_vec();

    if p.0.len() > before {
        return None;
    }
    let policy = JobPolicy {
        min_replica_count: min,
        max_replica_count: max,
        strategy: strategy?,
        multiple_scalers_calculation: calculation,
        finished_job_grace,
        successful_jobs_history_limit: successful,
        failed_jobs_history_limit: failed,
        paused: job.paused.unwrap_or(false),
        triggers: trigger_policies
            .iter()
            .map(|t| JobTrigger { queue_length: t.queue_length, activation_queue_length: t.activation_queue_length })
            .collect(),
    };
    Some(JobRule {
        name,
        namespace,
        context: job.context.clone(),
        polling_interval,
        template: Arc::new(template?),
        rollout: Rollout { strategy: rollout_strategy, propagation_policy: propagation },
        group: job.group.clone(),
        priority,
        pending_pod_conditions,
        policy,
        trigger_policies,
        triggers: sources,
        schedules,
    })
}

/// The strategy pairings `../shared/spec/scaledjob.md` §5.5 flags, one sentence per
/// trigger: `check` prints them on standard error, `run` logs them at load. None is an
/// error: a queue whose consumers do not hold their messages in flight changes the
/// arithmetic.
pub fn job_warnings(jobs: &[JobRule]) -> Vec<String> {
    let mut out = Vec::new();
    for job in jobs {
        for (i, t) in job.trigger_policies.iter().enumerate() {
            let at = format!("job {:?}: trigger {}", job.name, i + 1);
            let said = match (job.policy.strategy, t.scale_on_in_flight) {
                (ScalingStrategy::Accurate, true) => Some(
                    "strategy \"accurate\" with scale_on_in_flight = true over-creates: the messages running Jobs hold in flight count as demand again at each poll, up to the cap; accurate is meant for scale_on_in_flight = false",
                ),
                (ScalingStrategy::Eager, true) => Some(
                    "strategy \"eager\" with scale_on_in_flight = true over-creates: each poll adds Jobs for the messages running Jobs hold in flight, until the cap is reached; to fill free slots with messages no Job has taken, use strategy \"accurate\" with scale_on_in_flight = false",
                ),
                (ScalingStrategy::Default, false) => Some(
                    "strategy \"default\" with scale_on_in_flight = false under-creates: running Jobs are deducted from a backlog that no longer holds their messages, so new messages wait until they finish; keep scale_on_in_flight = true (the default), or use strategy \"accurate\"",
                ),
                _ => None,
            };
            if let Some(said) = said {
                out.push(format!("{at}: {said}"));
            }
        }
    }
    out
}

/// What `check` prints after the resolved file for each job rule: the most unfinished
/// Jobs a poll creates up to (`JobPolicy::cap`), with `M` and `min_e`. TOML comments, so
/// standard output stays a rule file.
pub fn jobs_report(jobs: &[JobRule]) -> String {
    let mut out = String::new();
    for job in jobs {
        let p = &job.policy;
        let (m, min) = (p.effective_max(), p.effective_min());
        let unset = if p.max_replica_count.is_none() { "; max_replica_count unset: M is 100 whatever the min" } else { "" };
        let line = match p.strategy {
            ScalingStrategy::Custom { .. } => format!(
                "# job {:?}: strategy custom: each poll creates at most M = {m} Jobs, the total is not capped (min = {min}{unset})\n",
                job.name
            ),
            _ => format!("# job {:?}: at most {} unfinished Jobs (M = {m}, min = {min}{unset})\n", job.name, p.cap()),
        };
        out.push_str(&line);
    }
    out
}
