//! ScaledJobs (`keda.sh/v1alpha1`, kind ScaledJob) -> `[[job]]` rules, each with its
//! `jobTargetRef` as a batch/v1 Job manifest for the template file. Fields map as
//! `../shared/spec/scaledjob.md` §2.1 lists them; what KEDA accepts and sqscale does not
//! is converted as §12 decides (min > max, an unparsable percentage) and said.

use serde_json::{Map, Value, json};

use super::{Auths, EnvSource, SQS_TRIGGER, convert_triggers, str_at, truthy};
use crate::config::raw::{RawDuration, RawJob, RawJobRollout, RawJobScalingStrategy};

/// KEDA's annotation naming the ScaledJob labels its Jobs do not get.
const EXCLUDED_LABELS: &str = "scaledjob.keda.sh/job-excluded-labels";
/// kubectl's copy of the applied object: not something a Job should carry.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// One ScaledJob that gives a job rule.
#[derive(Clone, Debug)]
pub struct ImportedJob {
    /// `ScaledJob media/encode`
    pub source: String,
    /// The job rule; its `template` key names [`ImportedJob::file`] (in the template
    /// folder, once [`super::Import::place_templates`] has said where that is).
    pub job: RawJob,
    /// The template's file name, `<job name>.yaml`.
    pub file: String,
    /// The template: a batch/v1 Job manifest, as YAML.
    pub template: String,
    /// What did not carry over, each once.
    pub notes: Vec<String>,
}

/// One ScaledJob, converted: the job rule (without its name or template key), its Job
/// manifest, what did not carry over, and what makes it unusable.
pub(super) struct Converted {
    pub job: Option<RawJob>,
    pub template: Option<Value>,
    pub notes: Vec<String>,
    pub problems: Vec<String>,
}

pub(super) fn convert(sj: &Value, namespace: &str, auths: &Auths) -> Converted {
    let mut notes = Vec::new();
    let mut problems = Vec::new();
    let spec = sj.get("spec").cloned().unwrap_or(Value::Null);
    let name = str_at(sj, "/metadata/name").unwrap_or_default();

    let target = spec.get("jobTargetRef").filter(|t| t.is_object());
    if target.is_none() {
        problems.push("spec.jobTargetRef is missing: there is no Job to create".to_owned());
    }
    let env = target.and_then(|t| env_source(t, &spec, namespace, name));
    let (triggers, other_types) = convert_triggers(&spec, namespace, auths, env, &mut notes, &mut problems);
    for (i, t) in spec.get("triggers").and_then(Value::as_array).into_iter().flatten().enumerate() {
        if str_at(t, "/type") == Some(SQS_TRIGGER) && str_at(t, "/metricType").is_some_and(|m| !m.is_empty()) {
            // KEDA's controller refuses the ScaledJob: it never ran.
            problems.push(format!(
                "trigger {}: metricType is set, and KEDA rejects metricType in ScaledJob triggers",
                i + 1
            ));
        }
    }
    if triggers.is_empty() && problems.is_empty() {
        problems.push(if other_types.is_empty() {
            format!("it has no {SQS_TRIGGER} trigger")
        } else {
            format!("it has no {SQS_TRIGGER} trigger (only {})", other_types.join(", "))
        });
    }
    if !other_types.is_empty() && !triggers.is_empty() {
        notes.push(format!(
            "triggers of type {} are left out: sqscale reads SQS queues only, so the job rule creates Jobs on its {SQS_TRIGGER} triggers alone",
            other_types.join(", ")
        ));
    }
    let triggers: Vec<_> =
        triggers.into_iter().map(|t| crate::config::raw::RawTrigger { metric_type: None, ..t }).collect();

    let mut int = |field: &str| -> Option<i64> {
        match spec.get(field) {
            None | Some(Value::Null) => None,
            Some(v) => v.as_i64().or_else(|| {
                problems.push(format!("spec.{field} ({v}) is not a whole number"));
                None
            }),
        }
    };
    let polling_interval = int("pollingInterval").map(RawDuration::Seconds);
    let successful = int("successfulJobsHistoryLimit");
    let failed = int("failedJobsHistoryLimit");
    let mut min = int("minReplicaCount");
    let max = int("maxReplicaCount");
    if let (Some(lo), Some(hi)) = (min, max)
        && lo > hi
    {
        // KEDA allows 2 x max Jobs then (spec §2.2); sqscale refuses min > max (§12.3).
        notes.push(format!(
            "minReplicaCount ({lo}) is greater than maxReplicaCount ({hi}): KEDA then keeps {hi} standby Jobs and allows up to {} in all; min_replica_count is set to {hi}",
            2 * hi
        ));
        min = Some(hi);
    }
    let scaling_strategy = strategy(&spec, &mut notes, &mut problems);
    let rollout = rollout(&spec, &mut notes);

    let annotations = sj.pointer("/metadata/annotations").and_then(Value::as_object);
    let paused =
        annotations.and_then(|a| a.get("autoscaling.keda.sh/paused")).and_then(Value::as_str).is_some_and(truthy);
    for key in annotations.into_iter().flat_map(|a| a.keys()) {
        if key.starts_with(super::ANNOTATION_PREFIX) && key != "autoscaling.keda.sh/paused" {
            notes.push(format!("annotation {key}: ScaledJobs have no such setting; left out"));
        }
    }

    let template = target.map(|t| manifest(sj, t));
    let job = RawJob {
        name: None,
        namespace: Some(namespace.to_owned()),
        template: None,
        context: None,
        polling_interval,
        min_replica_count: min,
        max_replica_count: max,
        successful_jobs_history_limit: successful,
        failed_jobs_history_limit: failed,
        finished_job_grace: None,
        paused: paused.then_some(true),
        group: None,
        priority: None,
        scaling_strategy,
        rollout,
        trigger: Some(triggers),
        schedule: None,
    };
    Converted { job: Some(job), template, notes, problems }
}

/// `scalingStrategy`, as KEDA selects the strategy (`NewScalingStrategy`): custom only
/// with a percentage that parses; the string percentage as a number.
fn strategy(spec: &Value, notes: &mut Vec<String>, problems: &mut Vec<String>) -> Option<RawJobScalingStrategy> {
    let s = spec.get("scalingStrategy").filter(|s| s.is_object())?;
    let at = "spec.scalingStrategy";
    let mut name = str_at(s, "/strategy").filter(|n| !n.is_empty()).map(str::to_owned);
    if let Some(n) = name.as_deref()
        && !matches!(n, "default" | "custom" | "accurate" | "eager")
    {
        notes.push(format!("{at}.strategy {n:?}: KEDA takes an unknown strategy as default; so does the job rule"));
        name = Some("default".to_owned());
    }
    let deduction = match s.get("customScalingQueueLengthDeduction") {
        None | Some(Value::Null) => None,
        Some(v) => v.as_i64().or_else(|| {
            problems.push(format!("{at}.customScalingQueueLengthDeduction ({v}) is not a whole number"));
            None
        }),
    };
    let percentage = match s.get("customScalingRunningJobPercentage") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            let parsed = text.trim().parse::<f64>().ok().filter(|p| p.is_finite());
            if parsed.is_none() && name.as_deref() == Some("custom") {
                notes.push(format!(
                    "{at}.customScalingRunningJobPercentage {text:?} is not a finite number: KEDA then uses the default strategy (and ignores the deduction); so does the job rule"
                ));
            }
            parsed
        }
    };
    let (deduction, percentage) = if name.as_deref() == Some("custom") {
        match percentage {
            Some(p) => (deduction, Some(p)),
            None => {
                if s.get("customScalingRunningJobPercentage").is_none() {
                    notes.push(format!(
                        "{at}: strategy custom without customScalingRunningJobPercentage is KEDA's default strategy; so is the job rule's"
                    ));
                }
                name = Some("default".to_owned());
                (None, None)
            }
        }
    } else {
        if deduction.is_some() || percentage.is_some() {
            notes.push(format!(
                "{at}: the custom parameters apply only to strategy custom, and KEDA ignores them here; left out"
            ));
        }
        (None, None)
    };
    let pending_pod_conditions = s
        .get("pendingPodConditions")
        .and_then(Value::as_array)
        .map(|list| list.iter().filter_map(|c| c.as_str()).map(str::to_owned).collect::<Vec<_>>());
    Some(RawJobScalingStrategy {
        strategy: name,
        custom_scaling_queue_length_deduction: deduction,
        custom_scaling_running_job_percentage: percentage,
        pending_pod_conditions: pending_pod_conditions.filter(|c| !c.is_empty()),
        multiple_scalers_calculation: str_at(s, "/multipleScalersCalculation")
            .filter(|m| !m.is_empty())
            .map(str::to_owned),
    })
}

/// `rollout` and the deprecated `rolloutStrategy`, which wins when set (KEDA's
/// `deletePreviousVersionScaleJobs`); `immediate` is sqscale's `default`.
fn rollout(spec: &Value, notes: &mut Vec<String>) -> Option<RawJobRollout> {
    let deprecated = str_at(spec, "/rolloutStrategy").filter(|s| !s.is_empty());
    let current = str_at(spec, "/rollout/strategy").filter(|s| !s.is_empty());
    let propagation = str_at(spec, "/rollout/propagationPolicy").filter(|s| !s.is_empty());
    if deprecated.is_none() && current.is_none() && propagation.is_none() {
        return None;
    }
    if let (Some(d), Some(c)) = (deprecated, current)
        && d != c
    {
        notes.push(format!("rolloutStrategy {d:?} wins over rollout.strategy {c:?}, as in KEDA"));
    }
    let strategy = deprecated.or(current).map(|s| match s {
        "gradual" => "gradual".to_owned(),
        _ => "default".to_owned(),
    });
    Some(RawJobRollout { strategy, propagation_policy: propagation.map(str::to_owned) })
}

/// The Job KEDA creates from the ScaledJob, as a template: `jobTargetRef` as the spec;
/// the ScaledJob's labels (less those `job-excluded-labels` names) and annotations (less
/// kubectl's last-applied copy and KEDA's own) as its metadata (spec §6).
fn manifest(sj: &Value, target: &Value) -> Value {
    let annotations = sj.pointer("/metadata/annotations").and_then(Value::as_object);
    let excluded: Vec<&str> = annotations
        .and_then(|a| a.get(EXCLUDED_LABELS))
        .and_then(Value::as_str)
        .map(|s| s.split(',').collect())
        .unwrap_or_default();
    let labels: Map<String, Value> = sj
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(k, _)| !excluded.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let kept: Map<String, Value> = annotations
        .into_iter()
        .flatten()
        .filter(|(k, _)| {
            k.as_str() != LAST_APPLIED
                && !k.starts_with(super::ANNOTATION_PREFIX)
                && !k.starts_with("scaledjob.keda.sh/")
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut metadata = Map::new();
    if !labels.is_empty() {
        metadata.insert("labels".to_owned(), Value::Object(labels));
    }
    if !kept.is_empty() {
        metadata.insert("annotations".to_owned(), Value::Object(kept));
    }
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": target})
}

/// The container of the job template whose environment KEDA resolves `...FromEnv` in:
/// `envSourceContainerName`, else the first.
fn env_source(target: &Value, spec: &Value, namespace: &str, name: &str) -> Option<EnvSource> {
    let pod = target.pointer("/template/spec")?;
    EnvSource::of(
        pod,
        str_at(spec, "/envSourceContainerName"),
        &format!("the job template of ScaledJob {namespace}/{name}"),
    )
}

/// The template file's text: a line saying where it came from, then the manifest.
pub(super) fn template_text(source: &str, manifest: &Value) -> Result<String, String> {
    let yaml = serde_saphyr::to_string(manifest).map_err(|e| e.to_string())?;
    Ok(format!("# The Job template of {source}, written by `sqscale import-keda`.\n{yaml}"))
}
