//! The rule file as written: every key optional, every value loosely typed, so that
//! validation can see the whole file and report every problem at once.
//!
//! The same structs serialize the *resolved* configuration for `sqscale check`, with
//! every default filled in; that output is itself a valid rule file.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct RawConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<RawKubernetes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws: Option<RawAws>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<RawServer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_election: Option<RawLeaderElection>,
    /// Defaults for every rule. Same shape as a rule; `name`, `target` and `trigger`
    /// are rejected here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub defaults: Option<RawRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group: Vec<RawGroup>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rule: Vec<RawRule>,
    /// `[[job]]`: job rules (KEDA's ScaledJob).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub job: Vec<RawJob>,
}

/// `[[group]]`: a capacity shared by the rules that name it.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(expecting = "a [[group]] table such as { name = \"gpu\", max_replicas = 20 }")]
pub struct RawGroup {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct RawKubernetes {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eks_cluster: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct RawAws {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_path: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct RawServer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct RawLeaderElection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_duration: Option<RawDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renew_deadline: Option<RawDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_period: Option<RawDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standby: Option<String>,
}

/// A duration as KEDA writes it (whole seconds) or as a person does (`"30s"`, `"5m"`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(untagged, expecting = "whole seconds or a duration string such as \"30s\" or \"5m\"")]
pub enum RawDuration {
    Seconds(i64),
    Text(String),
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(expecting = "a [[rule]] table")]
pub struct RawRule {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<RawTarget>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub polling_interval: Option<RawDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cooldown_period: Option<RawDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_cooldown_period: Option<RawDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_replica_count: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_replica_count: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_replica_count: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activation_polls: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_scale_in: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_scale_out: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub force_activation: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore_to_original_replica_count: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scaling_modifiers: Option<RawScalingModifiers>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<RawFallback>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub behavior: Option<RawBehavior>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Vec<RawTrigger>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Vec<RawSchedule>>,
}

/// `[[rule.schedule]]`: a window that opens at each match of `cron` in `timezone` and
/// stays open for `duration`, with the values that apply while it is open.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(expecting = "a [[rule.schedule]] table")]
pub struct RawSchedule {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<RawDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_replica_count: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_replica_count: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(expecting = "a table such as { kind = \"Deployment\", name = \"worker\", namespace = \"default\" }")]
pub struct RawTarget {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(expecting = "a table such as { failure_threshold = 3, replicas = 2, behavior = \"static\" }")]
pub struct RawFallback {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub behavior: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age: Option<RawDuration>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(expecting = "a table with scale_up and/or scale_down")]
pub struct RawBehavior {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale_up: Option<RawScalingRules>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<RawScalingRules>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(expecting = "a table with stabilization_window, select_policy, tolerance and policies")]
pub struct RawScalingRules {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stabilization_window: Option<RawDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub select_policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policies: Option<Vec<RawPolicy>>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(expecting = "a table such as { type = \"Percent\", value = 100, period = 15 }")]
pub struct RawPolicy {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period: Option<RawDuration>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(expecting = "a table with formula, target, activation_target and metric_type")]
pub struct RawScalingModifiers {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub formula: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activation_target: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric_type: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(expecting = "a [[rule.trigger]] table")]
pub struct RawTrigger {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_length: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activation_queue_length: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale_on_in_flight: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale_on_delayed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric_type: Option<String>,
}

/// `[[job]]`: a job rule, KEDA's ScaledJob with its fields in snake_case
/// (`../shared/contract.md`, "Job rules"). `[defaults]` does not apply to it.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(expecting = "a [[job]] table")]
pub struct RawJob {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The Job manifest's file, relative to the rule file's folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub polling_interval: Option<RawDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_replica_count: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_replica_count: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub successful_jobs_history_limit: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_jobs_history_limit: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_job_grace: Option<RawDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scaling_strategy: Option<RawJobScalingStrategy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RawJobRollout>,
    /// As `[[rule.trigger]]`; `metric_type` is rejected (KEDA rejects `metricType` on a
    /// ScaledJob's triggers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Vec<RawTrigger>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Vec<RawSchedule>>,
}

/// `[job.scaling_strategy]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(expecting = "a [job.scaling_strategy] table")]
pub struct RawJobScalingStrategy {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_scaling_queue_length_deduction: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_scaling_running_job_percentage: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_pod_conditions: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multiple_scalers_calculation: Option<String>,
}

/// `[job.rollout]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(expecting = "a [job.rollout] table")]
pub struct RawJobRollout {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub propagation_policy: Option<String>,
}
