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
    let name = super::rule_name(p, at, job.name.as_deref());
    let namespace = job.namespace.clone().unwrap_or_else(|| "default".to_owned());
    if !is_dns_label(&namespace) {
        p.add(at, format!("namespace ({namespace:?}) is not a valid namespace name"));
    }
    if job.context.as_deref() == Some("") {
        p.add(at, "context is empty; remove it to use the kubeconfig's current context");
    }
    let template = match job.template.as_deref() {
        None | Some("") => {
            p.add(
                at,
                "template is required: the file of a batch/v1 Job manifest, e.g. template = \"jobs/encode.yaml\"",
            );
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
                p.add(
                    at,
                    format!("scaling_strategy.custom_scaling_running_job_percentage ({pct}) must be a finite number"),
                );
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
        let unset =
            if p.max_replica_count.is_none() { "; max_replica_count unset: M is 100 whatever the min" } else { "" };
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use crate::config::{Propagation, RolloutStrategy, from_str};
    use crate::engine::job::{MultipleScalersCalculation, ScalingStrategy};

    const TEMPLATE: &str = "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: encode\n  labels:\n    app: encode\nspec:\n  template:\n    spec:\n      containers:\n        - name: encode\n          image: example/encode:1\n";
    const QUEUE: &str = "https://sqs.eu-west-1.amazonaws.com/123/encode";

    /// A folder holding a valid template, `encode.yaml`; its absolute path.
    fn template_dir() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("encode.yaml");
        std::fs::write(&path, TEMPLATE).unwrap();
        (dir, path)
    }

    /// One `[[job]]` named encode with `extra` keys, its template at `template`, and one
    /// trigger with `trigger_extra`.
    fn job(template: &std::path::Path, extra: &str, trigger_extra: &str) -> String {
        format!(
            "[[job]]\nname = \"encode\"\ntemplate = {:?}\n{extra}\n[[job.trigger]]\nqueue_url = \"{QUEUE}\"\n{trigger_extra}\n",
            template.display().to_string()
        )
    }

    fn problems(toml: &str) -> Vec<String> {
        from_str(toml).expect_err("config should be invalid").problems
    }

    /// A file of job rules alone is valid, and every key takes KEDA's default (spec §2.1):
    /// polling 30 s, min 0, max unset, history limits 100, grace 0, the default strategy
    /// with max over triggers, rollout default/background, namespace default.
    #[test]
    fn every_key_has_its_default() {
        let (_dir, path) = template_dir();
        let c = from_str(&job(&path, "", "")).unwrap();
        assert!(c.rules.is_empty());
        let j = &c.jobs[0];
        assert_eq!((j.name.as_str(), j.namespace.as_str(), j.context.as_deref()), ("encode", "default", None));
        assert_eq!(j.polling_interval, Duration::from_secs(30));
        let p = &j.policy;
        assert_eq!((p.min_replica_count, p.max_replica_count), (0, None));
        assert_eq!((p.successful_jobs_history_limit, p.failed_jobs_history_limit), (100, 100));
        assert_eq!(p.finished_job_grace, Duration::ZERO);
        assert!(!p.paused);
        assert_eq!(p.strategy, ScalingStrategy::Default);
        assert_eq!(p.multiple_scalers_calculation, MultipleScalersCalculation::Max);
        assert_eq!(
            (j.rollout.strategy, j.rollout.propagation_policy),
            (RolloutStrategy::Default, Propagation::Background)
        );
        assert!(j.pending_pod_conditions.is_empty());
        assert_eq!((j.group.as_deref(), j.priority), (None, 0));
        assert!(j.schedules.is_empty());
        assert_eq!(p.triggers.len(), 1);
        assert_eq!((p.triggers[0].queue_length, p.triggers[0].activation_queue_length), (5, 0));
        let t = &j.trigger_policies[0];
        assert_eq!((t.scale_on_in_flight, t.scale_on_delayed), (true, false));
        assert_eq!((j.triggers[0].name.as_str(), j.triggers[0].region.as_str()), ("encode", "eu-west-1"));
        assert_eq!(j.template.path, path);
        assert_eq!(j.template.job["metadata"]["labels"]["app"], "encode");
    }

    /// Every key of the contract's example is read into the job rule.
    #[test]
    fn every_key_is_read() {
        let (_dir, path) = template_dir();
        let toml = format!(
            "[[group]]\nname = \"gpu\"\nmax_replicas = 20\n{}",
            job(
                &path,
                "namespace = \"media\"\ncontext = \"other\"\npolling_interval = \"10s\"\nmin_replica_count = 2\nmax_replica_count = 8\n\
                 successful_jobs_history_limit = 3\nfailed_jobs_history_limit = 0\nfinished_job_grace = 60\npaused = true\ngroup = \"gpu\"\npriority = 7\n\
                 [job.scaling_strategy]\nstrategy = \"custom\"\ncustom_scaling_queue_length_deduction = -2\ncustom_scaling_running_job_percentage = 0.5\n\
                 pending_pod_conditions = [\"Ready\", \"PodScheduled\"]\nmultiple_scalers_calculation = \"sum\"\n\
                 [job.rollout]\nstrategy = \"gradual\"\npropagation_policy = \"foreground\"\n\
                 [[job.schedule]]\ncron = \"0 8 * * *\"\nduration = \"1h\"\nmin_replica_count = 4\n",
                "queue_length = 1\nactivation_queue_length = 2\nscale_on_in_flight = false\nscale_on_delayed = true\nname = \"q\"",
            )
        );
        let c = from_str(&toml).unwrap();
        let j = &c.jobs[0];
        assert_eq!((j.namespace.as_str(), j.context.as_deref()), ("media", Some("other")));
        assert_eq!(j.polling_interval, Duration::from_secs(10));
        let p = &j.policy;
        assert_eq!((p.min_replica_count, p.max_replica_count), (2, Some(8)));
        assert_eq!((p.successful_jobs_history_limit, p.failed_jobs_history_limit), (3, 0));
        assert_eq!(p.finished_job_grace, Duration::from_secs(60));
        assert!(p.paused);
        assert_eq!(p.strategy, ScalingStrategy::Custom { queue_length_deduction: -2, running_job_percentage: 0.5 });
        assert_eq!(p.multiple_scalers_calculation, MultipleScalersCalculation::Sum);
        assert_eq!(j.pending_pod_conditions, ["Ready", "PodScheduled"]);
        assert_eq!(
            (j.rollout.strategy, j.rollout.propagation_policy),
            (RolloutStrategy::Gradual, Propagation::Foreground)
        );
        assert_eq!((j.group.as_deref(), j.priority), (Some("gpu"), 7));
        assert_eq!((j.schedules.len(), j.schedules[0].min), (1, Some(4)));
        assert_eq!((p.triggers[0].queue_length, p.triggers[0].activation_queue_length), (1, 2));
        let t = &j.trigger_policies[0];
        assert_eq!((t.scale_on_in_flight, t.scale_on_delayed, t.name.as_deref()), (false, true, Some("q")));
        // The resolved form reads back to the same rules, the template path as given.
        let resolved = c.resolved_toml();
        assert!(resolved.contains(&format!("template = {:?}", path.display().to_string())), "{resolved}");
        assert_eq!(from_str(&resolved).unwrap(), c, "{resolved}");
    }

    /// The defaults written out read back to the same job rule; a custom strategy
    /// without a percentage is the default strategy (KEDA's rule, spec §12.7).
    #[test]
    fn the_resolved_form_of_a_job_reads_back() {
        let (_dir, path) = template_dir();
        let c = from_str(&job(
            &path,
            "[job.scaling_strategy]\nstrategy = \"custom\"\ncustom_scaling_queue_length_deduction = 3",
            "",
        ))
        .unwrap();
        assert_eq!(c.jobs[0].policy.strategy, ScalingStrategy::Default);
        let resolved = c.resolved_toml();
        for line in [
            "[[job]]",
            "polling_interval = \"30s\"",
            "successful_jobs_history_limit = 100",
            "strategy = \"default\"",
            "multiple_scalers_calculation = \"max\"",
            "propagation_policy = \"background\"",
            "pending_pod_conditions = []",
            "finished_job_grace = \"0s\"",
        ] {
            assert!(resolved.contains(line), "{line} in\n{resolved}");
        }
        assert!(!resolved.contains("max_replica_count"), "unset stays unset: {resolved}");
        assert_eq!(from_str(&resolved).unwrap(), c);
    }

    /// Every problem of every job rule at once, each naming the job rule and its key.
    #[test]
    fn every_problem_is_named() {
        let (dir, path) = template_dir();
        let missing = dir.path().join("missing.yaml");
        let toml = format!(
            "{}{}{}[[job]]\ntemplate = {:?}\n",
            job(
                &path,
                "namespace = \"Media\"\ncontext = \"\"\npolling_interval = 0\nmin_replica_count = 5\nmax_replica_count = 3\n\
                 successful_jobs_history_limit = -1\nfailed_jobs_history_limit = -2\nfinished_job_grace = \"soon\"\ngroup = \"none\"\n\
                 [job.scaling_strategy]\nstrategy = \"Eager\"\ncustom_scaling_running_job_percentage = 0.5\nmultiple_scalers_calculation = \"mean\"\npending_pod_conditions = [\"\"]\n\
                 [job.rollout]\nstrategy = \"immediate\"\npropagation_policy = \"Orphan\"",
                "queue_length = 0\nmetric_type = \"Value\"",
            ),
            job(&missing, "priority = 3\nmax_replica_count = 0", ""),
            job(
                &path,
                "[job.scaling_strategy]\nstrategy = \"custom\"\ncustom_scaling_running_job_percentage = nan",
                ""
            ),
            path.display().to_string(),
        );
        let p = problems(&toml);
        let expect = [
            "job \"encode\": namespace (\"Media\") is not a valid namespace name".to_owned(),
            "job \"encode\": context is empty".to_owned(),
            "job \"encode\": polling_interval (0s) must be at least 1s".to_owned(),
            "job \"encode\": finished_job_grace (\"soon\") is not a duration".to_owned(),
            "job \"encode\": min_replica_count (5) is greater than max_replica_count (3)".to_owned(),
            "job \"encode\": successful_jobs_history_limit (-1) must be between 0 and".to_owned(),
            "job \"encode\": failed_jobs_history_limit (-2) must be between 0 and".to_owned(),
            "job \"encode\": scaling_strategy.strategy (\"Eager\") must be \"default\", \"custom\", \"accurate\" or \"eager\"".to_owned(),
            "job \"encode\": scaling_strategy.custom_scaling_running_job_percentage applies only to strategy = \"custom\"".to_owned(),
            "job \"encode\": scaling_strategy.pending_pod_conditions holds an empty condition type".to_owned(),
            "job \"encode\": scaling_strategy.multiple_scalers_calculation (\"mean\") must be".to_owned(),
            "job \"encode\": rollout.strategy (\"immediate\") must be \"default\" or \"gradual\"".to_owned(),
            "job \"encode\": rollout.propagation_policy (\"Orphan\") must be".to_owned(),
            "job \"encode\": trigger 1: metric_type (\"Value\") cannot be set on a job rule's trigger".to_owned(),
            "job \"encode\": trigger 1: queue_length (0) must be greater than 0".to_owned(),
            "job \"encode\": name is already used by job #1; job names must be unique".to_owned(),
            format!("job \"encode\": template {}: No such file", missing.display()),
            "job \"encode\": max_replica_count (0) must be between 1 and".to_owned(),
            "job \"encode\": priority applies only to a job rule with a group".to_owned(),
            "job \"encode\": name is already used by job #1".to_owned(),
            "job \"encode\": scaling_strategy.custom_scaling_running_job_percentage (NaN) must be a finite number".to_owned(),
            "job #4: name is required".to_owned(),
            "job #4: at least one [[job.trigger]] is required".to_owned(),
            "job \"encode\": group (\"none\") is not a [[group]] of this file".to_owned(),
        ];
        assert_eq!(p.len(), expect.len(), "{p:#?}");
        for (got, want) in p.iter().zip(&expect) {
            assert!(got.starts_with(want.as_str()), "{got:?} does not start with {want:?}\n{p:#?}");
        }
    }

    /// Unknown keys anywhere in a job rule, and a value of the wrong type, are named
    /// under the job rule's name.
    #[test]
    fn unknown_keys_and_type_errors_name_the_job() {
        let (_dir, path) = template_dir();
        let toml = job(
            &path,
            "max_replicas = 3\n[job.scaling_strategy]\nstrategy = \"eager\"\nqueue_deduction = 1\n[job.rollout]\npolicy = \"x\"",
            "queueLength = 2",
        );
        assert_eq!(
            problems(&toml),
            [
                "job \"encode\": unknown key max_replicas",
                "job \"encode\": unknown key rollout.policy",
                "job \"encode\": unknown key scaling_strategy.queue_deduction",
                "job \"encode\": unknown key trigger[0].queueLength",
            ]
        );
        let p = problems(&job(&path, "min_replica_count = \"two\"", ""));
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(p[0].starts_with("job \"encode\": min_replica_count: invalid type"), "{p:#?}");
    }

    /// A job rule's `group` must be a [[group]], and its minimum counts in the group's
    /// check with the rules' minimums.
    #[test]
    fn job_minimums_count_in_their_group() {
        let (_dir, path) = template_dir();
        let rule = "[[rule]]\nname = \"web\"\ntarget = { name = \"w\" }\nmin_replica_count = 3\ngroup = \"gpu\"\n[[rule.trigger]]\nqueue_url = \"https://sqs.eu-west-1.amazonaws.com/123/web\"\n";
        let toml = format!(
            "[[group]]\nname = \"gpu\"\nmax_replicas = 4\n{rule}{}",
            job(&path, "group = \"gpu\"\nmin_replica_count = 2", "")
        );
        assert_eq!(
            problems(&toml),
            ["group \"gpu\": its members' min_replica_count add up to 5 (web 3, encode 2), above max_replicas (4)"]
        );
        let fits = toml.replace("max_replicas = 4", "max_replicas = 5");
        assert_eq!(from_str(&fits).unwrap().jobs[0].group.as_deref(), Some("gpu"));
    }

    /// The pairings spec §5.5 flags, one warning per trigger, none for the others.
    #[test]
    fn strategy_pairings_are_warned_about() {
        let (_dir, path) = template_dir();
        let with = |strategy: &str, in_flight: bool| {
            let c = from_str(&job(
                &path,
                &format!(
                    "[job.scaling_strategy]\nstrategy = \"{strategy}\"\ncustom_scaling_running_job_percentage = 1.0"
                )
                .replace(
                    "\ncustom_scaling_running_job_percentage = 1.0",
                    if strategy == "custom" { "\ncustom_scaling_running_job_percentage = 1.0" } else { "" },
                ),
                &format!("scale_on_in_flight = {in_flight}"),
            ))
            .unwrap();
            super::job_warnings(&c.jobs)
        };
        let accurate = with("accurate", true);
        assert_eq!(accurate.len(), 1);
        assert!(
            accurate[0].starts_with(
                "job \"encode\": trigger 1: strategy \"accurate\" with scale_on_in_flight = true over-creates"
            ),
            "{accurate:?}"
        );
        assert!(with("eager", true)[0].contains("strategy \"eager\" with scale_on_in_flight = true over-creates"));
        assert!(
            with("default", false)[0].contains("strategy \"default\" with scale_on_in_flight = false under-creates")
        );
        for (s, f) in [("default", true), ("accurate", false), ("eager", false), ("custom", true), ("custom", false)] {
            assert!(with(s, f).is_empty(), "{s} {f}");
        }
    }

    /// `check` prints each job rule's cap: max when min <= max, 100 + min when max is
    /// unset (spec §2.2, V11), and no total for custom.
    #[test]
    fn the_report_gives_each_job_rules_cap() {
        let (_dir, path) = template_dir();
        let toml = format!(
            "{}{}{}",
            job(&path, "max_replica_count = 10\nmin_replica_count = 1", ""),
            job(&path, "min_replica_count = 5", "").replace("\"encode\"\n", "\"standby\"\n"),
            job(&path, "max_replica_count = 20\n[job.scaling_strategy]\nstrategy = \"custom\"\ncustom_scaling_running_job_percentage = 0.5", "")
                .replace("\"encode\"\n", "\"custom\"\n"),
        );
        let c = from_str(&toml).unwrap();
        assert_eq!(
            super::jobs_report(&c.jobs),
            "# job \"encode\": at most 10 unfinished Jobs (M = 9, min = 1)\n\
             # job \"standby\": at most 105 unfinished Jobs (M = 100, min = 5; max_replica_count unset: M is 100 whatever the min)\n\
             # job \"custom\": strategy custom: each poll creates at most M = 20 Jobs, the total is not capped (min = 0)\n"
        );
        let with_report = format!("{}{}", c.resolved_toml(), super::jobs_report(&c.jobs));
        assert_eq!(from_str(&with_report).unwrap(), c, "still a rule file");
    }
}
