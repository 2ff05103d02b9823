//! Raw rule file -> [`Config`]: KEDA's defaults and KEDA's validation, every problem
//! collected with the rule and key it belongs to.

mod job;
mod schedule;

pub(super) use job::{Templates, job_label};
pub use job::{job_warnings, jobs_report};

pub use schedule::windows_report;

use std::collections::HashMap;
use std::time::Duration;

use super::raw::{RawConfig, RawDuration, RawRule, RawScalingRules, RawTrigger};
use super::*;
use crate::engine::hpa::{Behavior, PolicyKind, ScalingPolicy, ScalingRules, SelectPolicy, Tolerances};
use crate::engine::{Fallback, FallbackBehavior, MetricType, TriggerPolicy};

/// KEDA's defaults (`../shared/spec/keda.md` §2.6).
pub(super) mod defaults {
    use std::time::Duration;
    pub const POLLING_INTERVAL: Duration = Duration::from_secs(30);
    pub const COOLDOWN_PERIOD: Duration = Duration::from_secs(300);
    pub const INITIAL_COOLDOWN_PERIOD: Duration = Duration::ZERO;
    pub const MIN_REPLICA_COUNT: i64 = 0;
    pub const MAX_REPLICA_COUNT: i64 = 100;
    pub const QUEUE_LENGTH: i64 = 5;
    pub const ACTIVATION_QUEUE_LENGTH: i64 = 0;
    /// The HPA controller's `--horizontal-pod-autoscaler-downscale-stabilization`.
    pub const DOWNSCALE_STABILIZATION: Duration = Duration::from_secs(300);
    pub const LEASE_DURATION: Duration = Duration::from_secs(15);
    pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
    pub const RETRY_PERIOD: Duration = Duration::from_secs(2);
}

/// `rule "orders"`, or `rule #3` when the rule has no usable name.
pub(super) fn rule_label(raw: &RawConfig, index: usize) -> String {
    match raw.rule.get(index).and_then(|r| r.name.as_deref()) {
        Some(name) if !name.is_empty() => format!("rule {name:?}"),
        _ => format!("rule #{}", index + 1),
    }
}

struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, at: &str, msg: impl fmt::Display) {
        self.0.push(format!("{at}: {msg}"));
    }
}

pub(super) fn validate(raw: &RawConfig, templates: Templates<'_>) -> Result<Config, Vec<String>> {
    let mut p = Problems(Vec::new());

    let kubernetes = raw.kubernetes.clone().unwrap_or_default();
    let kubernetes = KubernetesSettings {
        kubeconfig: kubernetes.kubeconfig.map(PathBuf::from),
        context: non_empty(&mut p, "[kubernetes]", "context", kubernetes.context),
        eks_cluster: non_empty(&mut p, "[kubernetes]", "eks_cluster", kubernetes.eks_cluster),
        qps: match kubernetes.qps {
            None => super::DEFAULT_QPS,
            Some(q) if super::QPS_RANGE.contains(&q) => q,
            Some(q) => {
                let (low, high) = (super::QPS_RANGE.start(), super::QPS_RANGE.end());
                p.add("[kubernetes]", format!("qps ({q}) must be a number of writes per second from {low} to {high}"));
                super::DEFAULT_QPS
            }
        },
        burst: match kubernetes.burst {
            None => super::DEFAULT_BURST,
            Some(b) if (1..=i64::from(super::MAX_BURST)).contains(&b) => b as u32,
            Some(b) => {
                let high = super::MAX_BURST;
                p.add("[kubernetes]", format!("burst ({b}) must be a whole number of writes from 1 to {high}"));
                super::DEFAULT_BURST
            }
        },
    };

    let aws = raw.aws.clone().unwrap_or_default();
    if let Some(e) = &aws.endpoint_url {
        check_endpoint(&mut p, "[aws]", "endpoint_url", e);
    }
    if let Some(arn) = &aws.role_arn {
        check_role_arn(&mut p, "[aws]", "role_arn", arn);
    }
    if let Some(id) = &aws.external_id {
        check_external_id(&mut p, "[aws]", id);
        if aws.role_arn.is_none() {
            p.add("[aws]", "external_id is set without role_arn: an ExternalId is only sent with AssumeRole of role_arn; set role_arn or remove external_id");
        }
    }
    let aws = AwsSettings {
        region: non_empty(&mut p, "[aws]", "region", aws.region),
        endpoint_url: aws.endpoint_url,
        profile: non_empty(&mut p, "[aws]", "profile", aws.profile),
        role_arn: aws.role_arn,
        external_id: aws.external_id,
        direct_path: aws.direct_path.unwrap_or(true),
    };

    let listen = raw.server.as_ref().and_then(|s| s.listen.clone()).unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let server = ServerSettings {
        listen: if listen.is_empty() {
            None
        } else {
            match listen.parse() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    p.add(
                        "[server]",
                        format!(
                            "listen ({listen:?}) is not an address like \"127.0.0.1:9464\" (\"\" disables the listener)"
                        ),
                    );
                    None
                }
            }
        },
    };

    let leader_election = validate_leader_election(&mut p, raw);

    let defaults = raw.defaults.clone().unwrap_or_default();
    for (key, set) in [
        ("name", defaults.name.is_some()),
        ("target", defaults.target.is_some()),
        ("trigger", defaults.trigger.is_some()),
    ] {
        if set {
            p.add("[defaults]", format!("{key} cannot have a default; set it in each [[rule]]"));
        }
    }

    if raw.rule.is_empty() && raw.job.is_empty() {
        p.0.push("no [[rule]] or [[job]] defined: the file must define at least one".to_owned());
    }
    let mut rules = Vec::new();
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut targets: HashMap<(Option<String>, TargetRef), String> = HashMap::new();
    for (i, rule) in raw.rule.iter().enumerate() {
        let label = rule_label(raw, i);
        if let Some(name) = rule.name.as_deref() {
            match names.entry(name) {
                std::collections::hash_map::Entry::Occupied(first) => {
                    p.add(
                        &label,
                        format!("name is already used by rule #{}; rule names must be unique", first.get() + 1),
                    );
                }
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(i);
                }
            }
        }
        if let Some(rule) = validate_rule(&mut p, &label, rule, &defaults, &aws) {
            let key = (rule.context.clone().or_else(|| kubernetes.context.clone()), rule.target.clone());
            if let Some(other) = targets.insert(key, rule.name.clone()) {
                p.add(
                    &label,
                    format!(
                        "target {} is already scaled by rule {other:?}; two rules would fight over it",
                        rule.target
                    ),
                );
            }
            rules.push(rule);
        }
    }

    let jobs = job::validate(&mut p, raw, &aws, templates);
    let groups = validate_groups(&mut p, raw, &rules, &jobs);

    if p.0.is_empty() { Ok(Config { kubernetes, aws, server, leader_election, groups, rules, jobs }) } else { Err(p.0) }
}

/// `[[group]]`s: named, unique, with a cap of at least 1 that their members' minimums
/// fit in (the allocation grants every member its min: `engine::group`); every rule's
/// and job rule's `group` names one of them.
fn validate_groups(p: &mut Problems, raw: &RawConfig, rules: &[Rule], jobs: &[JobRule]) -> Vec<super::Group> {
    let mut groups: Vec<super::Group> = Vec::new();
    for (i, g) in raw.group.iter().enumerate() {
        let at = match &g.name {
            Some(name) => format!("group {name:?}"),
            None => format!("group #{}", i + 1),
        };
        let name = match g.name.as_deref() {
            None => {
                p.add(&at, "name is required");
                None
            }
            Some(n) if !is_dns_label(n) => {
                p.add(&at, "name must be a DNS label: lowercase letters, digits and '-'");
                None
            }
            Some(n) if groups.iter().any(|g| g.name == n) => {
                p.add(&at, "name is already used by another group; group names must be unique");
                None
            }
            Some(n) => Some(n.to_owned()),
        };
        let max = match g.max_replicas {
            None => {
                p.add(&at, "max_replicas is required");
                None
            }
            Some(m) if m < 1 || m > i64::from(u32::MAX) => {
                p.add(&at, format!("max_replicas ({m}) must be between 1 and {}", u32::MAX));
                None
            }
            Some(m) => Some(m as u32),
        };
        if let (Some(name), Some(max_replicas)) = (name, max) {
            groups.push(super::Group { name, max_replicas });
        }
    }
    for rule in rules {
        if let Some(g) = &rule.group
            && !raw.group.iter().any(|raw| raw.name.as_deref() == Some(g))
        {
            p.add(&format!("rule {:?}", rule.name), format!("group ({g:?}) is not a [[group]] of this file"));
        }
    }
    // Of every job rule, valid or not: one problem more is said at once.
    for (i, job) in raw.job.iter().enumerate() {
        if let Some(g) = &job.group
            && !raw.group.iter().any(|raw| raw.name.as_deref() == Some(g))
        {
            p.add(&job_label(raw, i), format!("group ({g:?}) is not a [[group]] of this file"));
        }
    }
    for g in &groups {
        // A job rule's standby Jobs (its min) run whatever the queue says: they hold
        // group capacity as a rule's minimum replicas do.
        let members: Vec<(&str, u32)> = rules
            .iter()
            .filter(|r| r.group.as_deref() == Some(&g.name))
            .map(|r| (r.name.as_str(), r.policy.min))
            .chain(
                jobs.iter()
                    .filter(|j| j.group.as_deref() == Some(&g.name))
                    .map(|j| (j.name.as_str(), j.policy.effective_min())),
            )
            .collect();
        let mins: u64 = members.iter().map(|(_, min)| u64::from(*min)).sum();
        if mins > u64::from(g.max_replicas) {
            let each: Vec<String> = members.iter().map(|(name, min)| format!("{name} {min}")).collect();
            p.add(
                &format!("group {:?}", g.name),
                format!(
                    "its members' min_replica_count add up to {mins} ({}), above max_replicas ({})",
                    each.join(", "),
                    g.max_replicas
                ),
            );
        }
    }
    groups
}

fn non_empty(p: &mut Problems, at: &str, key: &str, v: Option<String>) -> Option<String> {
    if v.as_deref() == Some("") {
        p.add(at, format!("{key} is empty; remove it or give a value"));
    }
    v.filter(|s| !s.is_empty())
}

fn validate_leader_election(p: &mut Problems, raw: &RawConfig) -> LeaderElection {
    let le = raw.leader_election.clone().unwrap_or_default();
    let at = "[leader_election]";
    let lease_duration = duration(p, at, "lease_duration", le.lease_duration.as_ref(), defaults::LEASE_DURATION);
    let renew_deadline = duration(p, at, "renew_deadline", le.renew_deadline.as_ref(), defaults::RENEW_DEADLINE);
    let retry_period = duration(p, at, "retry_period", le.retry_period.as_ref(), defaults::RETRY_PERIOD);
    if lease_duration <= renew_deadline {
        p.add(
            at,
            format!(
                "lease_duration ({}) must be greater than renew_deadline ({})",
                fmt_duration(lease_duration),
                fmt_duration(renew_deadline)
            ),
        );
    }
    if renew_deadline <= retry_period {
        p.add(
            at,
            format!(
                "renew_deadline ({}) must be greater than retry_period ({})",
                fmt_duration(renew_deadline),
                fmt_duration(retry_period)
            ),
        );
    }
    if retry_period.is_zero() {
        p.add(at, "retry_period must be greater than 0");
    }
    let standby = match le.standby.as_deref() {
        None | Some("cold") => super::Standby::Cold,
        Some("warm") => super::Standby::Warm,
        Some(other) => {
            p.add(at, format!("standby must be \"cold\" or \"warm\", not {other:?}"));
            super::Standby::Cold
        }
    };
    LeaderElection {
        enabled: le.enabled.unwrap_or(false),
        // config/rbac.yaml grants the Lease and the state ConfigMap in this namespace.
        namespace: le.namespace.unwrap_or_else(|| super::DEFAULT_NAMESPACE.to_owned()),
        lease_name: le.lease_name.unwrap_or_else(|| "sqscale".to_owned()),
        lease_duration,
        renew_deadline,
        retry_period,
        standby,
    }
}

/// Formats a duration the way the rule file accepts it back (`"30s"`, `"5m"`).
pub(crate) fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}

fn duration(p: &mut Problems, at: &str, key: &str, raw: Option<&RawDuration>, default: Duration) -> Duration {
    match raw {
        None => default,
        Some(RawDuration::Seconds(s)) if *s > i64::from(i32::MAX) => {
            p.add(at, format!("{key} ({s}) must be at most {} seconds", i32::MAX));
            default
        }
        Some(RawDuration::Seconds(s)) if *s >= 0 => Duration::from_secs(*s as u64),
        Some(RawDuration::Seconds(s)) => {
            p.add(at, format!("{key} ({s}) must not be negative"));
            default
        }
        Some(RawDuration::Text(t)) => {
            let parsed = match t.trim().parse::<u64>() {
                Ok(secs) => Ok(Duration::from_secs(secs)),
                Err(_) => humantime::parse_duration(t.trim()),
            };
            let parsed = parsed.map_err(|e| e.to_string()).and_then(|d| {
                if d.as_secs() > i32::MAX as u64 { Err(format!("more than {} seconds", i32::MAX)) } else { Ok(d) }
            });
            parsed.unwrap_or_else(|e| {
                p.add(
                    at,
                    format!(
                        "{key} ({t:?}) is not a duration: {e}; use whole seconds or a string like \"30s\" or \"5m\""
                    ),
                );
                default
            })
        }
    }
}

/// A Kubernetes DNS label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A DNS subdomain: dot-separated labels, at most 253 characters (object names).
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// The `name` of a rule or a job rule: required, a DNS label (it names metrics, state
/// keys and, for a job rule, its Jobs). `""` when missing.
fn rule_name(p: &mut Problems, at: &str, name: Option<&str>) -> String {
    match name {
        None => {
            p.add(at, "name is required");
            String::new()
        }
        Some(n) if !is_dns_label(n) => {
            p.add(at, "name must be a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters");
            n.to_owned()
        }
        Some(n) => n.to_owned(),
    }
}

fn validate_rule(p: &mut Problems, at: &str, rule: &RawRule, d: &RawRule, aws: &AwsSettings) -> Option<Rule> {
    let before = p.0.len();

    let name = rule_name(p, at, rule.name.as_deref());

    let target = match &rule.target {
        None => {
            p.add(at, "target is required, e.g. target = { kind = \"Deployment\", name = \"worker\", namespace = \"default\" }");
            None
        }
        Some(t) => {
            let kind = match t.kind.as_deref().unwrap_or("Deployment") {
                "Deployment" => Some(TargetKind::Deployment),
                "StatefulSet" => Some(TargetKind::StatefulSet),
                other => {
                    p.add(at, format!("target.kind ({other:?}) must be \"Deployment\" or \"StatefulSet\""));
                    None
                }
            };
            let tname = match t.name.as_deref() {
                None => {
                    p.add(at, "target.name is required");
                    None
                }
                Some(n) if !is_dns_subdomain(n) => {
                    p.add(at, format!("target.name ({n:?}) is not a valid Kubernetes object name"));
                    None
                }
                Some(n) => Some(n.to_owned()),
            };
            let namespace = t.namespace.clone().unwrap_or_else(|| "default".to_owned());
            if !is_dns_label(&namespace) {
                p.add(at, format!("target.namespace ({namespace:?}) is not a valid namespace name"));
            }
            match (kind, tname) {
                (Some(kind), Some(name)) => Some(TargetRef { kind, name, namespace }),
                _ => None,
            }
        }
    };

    let context = rule.context.clone().or_else(|| d.context.clone());
    if context.as_deref() == Some("") {
        p.add(at, "context is empty; remove it to use the kubeconfig's current context");
    }
    let pick = |f: fn(&RawRule) -> Option<RawDuration>| f(rule).or_else(|| f(d));
    let polling_interval =
        duration(p, at, "polling_interval", pick(|r| r.polling_interval.clone()).as_ref(), defaults::POLLING_INTERVAL);
    if polling_interval < Duration::from_secs(1) {
        p.add(at, format!("polling_interval ({}) must be at least 1s", fmt_duration(polling_interval)));
    }
    let cooldown =
        duration(p, at, "cooldown_period", pick(|r| r.cooldown_period.clone()).as_ref(), defaults::COOLDOWN_PERIOD);
    let initial_cooldown = duration(
        p,
        at,
        "initial_cooldown_period",
        pick(|r| r.initial_cooldown_period.clone()).as_ref(),
        defaults::INITIAL_COOLDOWN_PERIOD,
    );

    let min = rule.min_replica_count.or(d.min_replica_count).unwrap_or(defaults::MIN_REPLICA_COUNT);
    let max = rule.max_replica_count.or(d.max_replica_count).unwrap_or(defaults::MAX_REPLICA_COUNT);
    let idle = rule.idle_replica_count.or(d.idle_replica_count);
    let count = |p: &mut Problems, key: &str, v: i64| -> u32 {
        u32::try_from(v).unwrap_or_else(|_| {
            p.add(at, format!("{key} ({v}) must be between 0 and {}", u32::MAX));
            0
        })
    };
    let (min_u, max_u) = (count(p, "min_replica_count", min), count(p, "max_replica_count", max));
    if min > max {
        p.add(at, format!("min_replica_count ({min}) is greater than max_replica_count ({max})"));
    }
    if max < 1 {
        p.add(at, format!("max_replica_count ({max}) must be at least 1"));
    }
    let idle_u = idle.map(|i| {
        let v = count(p, "idle_replica_count", i);
        if i >= min {
            p.add(at, format!("idle_replica_count ({i}) must be less than min_replica_count ({min})"));
        }
        v
    });

    let fallback = rule.fallback.as_ref().or(d.fallback.as_ref()).and_then(|f| {
        let threshold = f.failure_threshold.or_else(|| {
            p.add(at, "fallback.failure_threshold is required when fallback is set");
            None
        });
        let replicas = f.replicas.or_else(|| {
            p.add(at, "fallback.replicas is required when fallback is set");
            None
        });
        if let Some(t) = threshold.filter(|t| *t < 0 || *t > i64::from(u32::MAX)) {
            p.add(at, format!("fallback.failure_threshold ({t}) must be between 0 and {}", u32::MAX));
        }
        if let Some(r) = replicas.filter(|r| *r > i64::from(u32::MAX)) {
            p.add(at, format!("fallback.replicas ({r}) must be at most {}", u32::MAX));
        }
        if let Some(r) = replicas.filter(|r| *r < 1) {
            p.add(at, format!("fallback.replicas ({r}) must be at least 1: a failed poll never scales to zero (remove fallback to hold the replicas instead)"));
        }
        let name = f.behavior.as_deref().unwrap_or("static");
        if name != "lastKnown" && f.max_age.is_some() {
            p.add(at, format!("fallback.max_age applies only to behavior = \"lastKnown\" (behavior is {name:?})"));
        }
        let behavior = match name {
            "static" => Some(FallbackBehavior::Static),
            "currentReplicas" => Some(FallbackBehavior::CurrentReplicas),
            "currentReplicasIfHigher" => Some(FallbackBehavior::CurrentReplicasIfHigher),
            "currentReplicasIfLower" => Some(FallbackBehavior::CurrentReplicasIfLower),
            "lastKnown" => match &f.max_age {
                None => {
                    p.add(at, "fallback.max_age is required with behavior = \"lastKnown\": how old a reading may still decide, e.g. max_age = \"5m\"");
                    None
                }
                Some(raw) => {
                    let max_age = duration(p, at, "fallback.max_age", Some(raw), Duration::ZERO);
                    if max_age.is_zero() {
                        p.add(at, "fallback.max_age must be more than 0s");
                        None
                    } else {
                        Some(FallbackBehavior::LastKnown { max_age })
                    }
                }
            },
            other => {
                p.add(at, format!("fallback.behavior ({other:?}) must be one of static, currentReplicas, currentReplicasIfHigher, currentReplicasIfLower, lastKnown"));
                None
            }
        };
        Some(Fallback {
            failure_threshold: u32::try_from(threshold?).ok()?,
            replicas: u32::try_from(replicas?).ok().filter(|r| *r >= 1)?,
            behavior: behavior?,
        })
    });

    let group = rule.group.clone().or_else(|| d.group.clone());
    let priority = match rule.priority.or(d.priority).unwrap_or(0) {
        n if i32::try_from(n).is_ok() => n as i32,
        n => {
            p.add(at, format!("priority ({n}) must be between {} and {}", i32::MIN, i32::MAX));
            0
        }
    };
    if group.is_none() && rule.priority.is_some() {
        p.add(at, "priority applies only to a rule with a group");
    }

    let activation_polls = match rule.activation_polls.or(d.activation_polls).unwrap_or(1) {
        n @ 1..=1000 => n as u32,
        n => {
            p.add(
                at,
                format!(
                    "activation_polls ({n}) must be between 1 and 1000 (1 activates on the first active poll, as KEDA)"
                ),
            );
            1
        }
    };

    let raw_behavior = rule.behavior.as_ref().or(d.behavior.as_ref());
    let mut tolerances = Tolerances::default();
    let behavior = raw_behavior.map(|b| {
        let up = scaling_rules(
            p,
            at,
            "behavior.scale_up",
            b.scale_up.as_ref(),
            ScalingRules::default_scale_up(),
            &mut tolerances.up,
        );
        let down_default = ScalingRules::default_scale_down(defaults::DOWNSCALE_STABILIZATION.as_millis() as i64);
        let down =
            scaling_rules(p, at, "behavior.scale_down", b.scale_down.as_ref(), down_default, &mut tolerances.down);
        Box::new(Behavior { scale_up: up, scale_down: down })
    });

    let raw_triggers = rule.trigger.as_deref().unwrap_or_default();
    if raw_triggers.is_empty() {
        p.add(at, "at least one [[rule.trigger]] is required");
    }
    let mut triggers = Vec::new();
    let mut sources = Vec::new();
    for (i, t) in raw_triggers.iter().enumerate() {
        let tat = format!("{at}: trigger {}", i + 1);
        if let Some((policy, source)) = validate_trigger(p, &tat, t, aws) {
            triggers.push(policy);
            sources.push(source);
        }
    }

    let raw_schedules = rule.schedule.as_deref().or(d.schedule.as_deref()).unwrap_or_default();
    let schedules = schedule::validate(p, at, raw_schedules, min, max);
    let mut seen_names = std::collections::HashSet::new();
    for n in triggers.iter().filter_map(|t| t.name.as_deref()) {
        if !seen_names.insert(n) {
            p.add(at, format!("trigger name {n:?} is used twice; trigger names must be unique within a rule"));
        }
    }
    let modifiers = rule.scaling_modifiers.as_ref().or(d.scaling_modifiers.as_ref()).and_then(|m| {
        let formula = m.formula.as_deref().filter(|f| !f.trim().is_empty());
        if formula.is_none() {
            p.add(at, "scaling_modifiers.formula is required when scaling_modifiers is set");
        }
        let target = match m.target {
            None => {
                p.add(at, "scaling_modifiers.target is required when scaling_modifiers is set");
                None
            }
            Some(t) if !(t.is_finite() && t > 0.0) => {
                p.add(at, format!("scaling_modifiers.target ({t}) must be a number greater than 0"));
                None
            }
            Some(t) => Some(t),
        };
        let activation_target = m.activation_target.unwrap_or(0.0);
        if !activation_target.is_finite() {
            p.add(at, format!("scaling_modifiers.activation_target ({activation_target}) must be a number"));
        }
        let metric_type = metric_type(p, at, "scaling_modifiers.metric_type", m.metric_type.as_deref());
        // The trigger names are the formula's variables; it runs once at load, as
        // KEDA's validation does, so an unknown name or a syntax error is found here.
        let formula = formula.and_then(|f| {
            let names = triggers.iter().filter_map(|t| t.name.as_deref());
            crate::engine::formula::Formula::compile(f, names)
                .map_err(|e| {
                    p.add(at, format!("scaling_modifiers.formula ({f:?}): {}", crate::error::chain(&e)));
                })
                .ok()
        });
        Some(Box::new(crate::engine::Modifiers { formula: formula?, target: target?, activation_target, metric_type }))
    });

    if p.0.len() > before {
        return None;
    }
    Some(Rule {
        name,
        target: target?,
        context: context.filter(|c| !c.is_empty()),
        polling_interval,
        paused: rule.paused.or(d.paused).unwrap_or(false),
        group,
        priority,
        overrides: crate::engine::Overrides {
            paused_scale_in: rule.paused_scale_in.or(d.paused_scale_in).unwrap_or(false),
            paused_scale_out: rule.paused_scale_out.or(d.paused_scale_out).unwrap_or(false),
            force_activation: rule.force_activation.or(d.force_activation).unwrap_or(false),
        },
        restore_to_original_replica_count: rule
            .restore_to_original_replica_count
            .or(d.restore_to_original_replica_count)
            .unwrap_or(false),
        policy: Policy {
            min: min_u,
            max: max_u,
            idle: idle_u,
            cooldown,
            initial_cooldown,
            fallback,
            behavior,
            legacy_downscale_window: defaults::DOWNSCALE_STABILIZATION,
            tolerances,
            activation_polls,
            triggers,
            schedules,
            modifiers,
        },
        triggers: sources,
    })
}

fn scaling_rules(
    p: &mut Problems,
    at: &str,
    key: &str,
    raw: Option<&RawScalingRules>,
    default: ScalingRules,
    tolerance: &mut f64,
) -> ScalingRules {
    let Some(raw) = raw else { return default };
    let window = duration(
        p,
        at,
        &format!("{key}.stabilization_window"),
        raw.stabilization_window.as_ref(),
        Duration::from_millis(default.stabilization_window_ms as u64),
    );
    if window > Duration::from_secs(3600) {
        p.add(at, format!("{key}.stabilization_window ({}) must be at most 1h", fmt_duration(window)));
    }
    let select_policy = match raw.select_policy.as_deref() {
        None => default.select_policy,
        Some("Max") => SelectPolicy::Max,
        Some("Min") => SelectPolicy::Min,
        Some("Disabled") => SelectPolicy::Disabled,
        Some(other) => {
            p.add(at, format!("{key}.select_policy ({other:?}) must be \"Max\", \"Min\" or \"Disabled\""));
            default.select_policy
        }
    };
    if let Some(t) = raw.tolerance {
        if !(t >= 0.0 && t.is_finite()) {
            p.add(at, format!("{key}.tolerance ({t}) must be a number >= 0"));
        } else {
            *tolerance = t;
        }
    }
    let policies = match &raw.policies {
        None => default.policies,
        Some(list) if list.is_empty() => {
            p.add(at, format!("{key}.policies is empty; give at least one policy or remove the key for the defaults"));
            default.policies
        }
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, pol)| {
                let pat = format!("{key}.policies[{i}]");
                let kind = match pol.kind.as_deref() {
                    Some("Pods") => Some(PolicyKind::Pods),
                    Some("Percent") => Some(PolicyKind::Percent),
                    Some(other) => {
                        p.add(at, format!("{pat}.type ({other:?}) must be \"Pods\" or \"Percent\""));
                        None
                    }
                    None => {
                        p.add(at, format!("{pat}.type is required (\"Pods\" or \"Percent\")"));
                        None
                    }
                };
                let value = match pol.value {
                    Some(v) if v > 0 && v <= i64::from(i32::MAX) => Some(v as u32),
                    Some(v) => {
                        p.add(at, format!("{pat}.value ({v}) must be greater than 0"));
                        None
                    }
                    None => {
                        p.add(at, format!("{pat}.value is required"));
                        None
                    }
                };
                let period = match &pol.period {
                    None => {
                        p.add(at, format!("{pat}.period is required"));
                        None
                    }
                    Some(raw) => {
                        let d = duration(p, at, &format!("{pat}.period"), Some(raw), Duration::from_secs(15));
                        if d < Duration::from_secs(1) || d > Duration::from_secs(1800) {
                            p.add(at, format!("{pat}.period ({}) must be between 1s and 30m", fmt_duration(d)));
                        }
                        Some(d)
                    }
                };
                Some(ScalingPolicy { kind: kind?, value: value?, period_ms: period?.as_millis() as i64 })
            })
            .collect(),
    };
    ScalingRules { stabilization_window_ms: window.as_millis() as i64, select_policy, policies }
}

fn validate_trigger(
    p: &mut Problems,
    at: &str,
    t: &RawTrigger,
    aws: &AwsSettings,
) -> Option<(TriggerPolicy, QueueSource)> {
    let before = p.0.len();
    if let Some(kind) = t.kind.as_deref().filter(|k| *k != "aws-sqs-queue") {
        p.add(at, format!("type ({kind:?}) is not supported; the only trigger type is \"aws-sqs-queue\""));
    }
    let metric_type = metric_type(p, at, "metric_type", t.metric_type.as_deref());
    if t.name.as_deref() == Some("") {
        p.add(at, "name is empty; remove it or give a value");
    }
    let queue_length = t.queue_length.unwrap_or(defaults::QUEUE_LENGTH);
    if queue_length <= 0 {
        p.add(at, format!("queue_length ({queue_length}) must be greater than 0"));
    }
    let (url, name) = match t.queue_url.as_deref().map(str::trim) {
        None | Some("") => {
            p.add(at, "queue_url is required: a queue URL (https://sqs.<region>.amazonaws.com/<account>/<name>) or a queue name");
            (None, String::new())
        }
        Some(q) if q.contains("://") || q.starts_with('/') => match queue_name_from_url(q) {
            Ok(name) => (Some(q.to_owned()), name),
            Err(e) => {
                p.add(at, format!("queue_url ({q:?}): {}", crate::error::chain(&e)));
                (None, String::new())
            }
        },
        Some(q) => {
            if !is_queue_name(q) {
                p.add(at, format!("queue_url ({q:?}) is neither a URL nor a valid queue name (letters, digits, '-' and '_', at most 80, optional \".fifo\")"));
            }
            (None, q.to_owned())
        }
    };
    let endpoint = t.aws_endpoint.clone().or_else(|| aws.endpoint_url.clone());
    if let Some(e) = &t.aws_endpoint {
        check_endpoint(p, at, "aws_endpoint", e);
    }
    let role_arn = t.role_arn.clone().or_else(|| aws.role_arn.clone());
    if let Some(arn) = &t.role_arn {
        check_role_arn(p, at, "role_arn", arn);
    }
    // The ExternalId belongs to its role: a trigger's own role_arn does not take the one
    // [aws] gives for [aws] role_arn.
    let external_id = match (&t.role_arn, &t.external_id) {
        (_, Some(id)) => {
            check_external_id(p, at, id);
            if role_arn.is_none() {
                p.add(at, "external_id is set without role_arn (here or in [aws]): an ExternalId is only sent with AssumeRole of role_arn; set role_arn or remove external_id");
            }
            Some(id.clone())
        }
        (Some(_), None) => None,
        (None, None) => aws.external_id.clone(),
    };
    // The trigger's own aws_region, then the region an AWS queue URL names in its host
    // (the queue lives there, whatever [aws] says), then [aws] region, which is for
    // queue names and custom endpoints.
    let own = t.aws_region.clone().filter(|r| !r.is_empty());
    let in_url = url.as_deref().and_then(region_from_url);
    if let (Some(own), Some(in_url)) = (&own, &in_url)
        && own != in_url
    {
        p.add(
            at,
            format!(
                "aws_region ({own:?}) contradicts the queue URL's host, which names region {in_url:?}; a queue URL carries its own region: remove aws_region or fix the URL"
            ),
        );
    }
    let region = own.or(in_url).or_else(|| aws.region.clone());
    if region.is_none() && p.0.len() == before {
        p.add(at, "no AWS region: set aws_region here or region in [aws], or use a queue URL like https://sqs.<region>.amazonaws.com/<account>/<name>");
    }
    if p.0.len() > before {
        return None;
    }
    Some((
        TriggerPolicy {
            queue_length: queue_length as u64,
            activation_queue_length: t.activation_queue_length.unwrap_or(defaults::ACTIVATION_QUEUE_LENGTH),
            scale_on_in_flight: t.scale_on_in_flight.unwrap_or(true),
            scale_on_delayed: t.scale_on_delayed.unwrap_or(false),
            metric_type,
            name: t.name.clone().filter(|n| !n.is_empty()),
        },
        QueueSource {
            url,
            name,
            region: region?,
            endpoint,
            profile: aws.profile.clone(),
            role_arn,
            external_id,
            direct: aws.direct_path,
        },
    ))
}

/// `metric_type` of a trigger or of `scaling_modifiers`.
fn metric_type(p: &mut Problems, at: &str, key: &str, raw: Option<&str>) -> MetricType {
    match raw {
        None | Some("AverageValue") => MetricType::AverageValue,
        Some("Value") => MetricType::Value,
        Some(other) => {
            p.add(
                at,
                format!(
                    "{key} ({other:?}) must be \"AverageValue\" or \"Value\" (an external metric has no Utilization)"
                ),
            );
            MetricType::AverageValue
        }
    }
}

/// Why a `queue_url` names no queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueUrlError {
    #[error("not a valid URL")]
    NotAUrl(#[source] url::ParseError),
    #[error("cannot get the queue name: the path must be /<account>/<name>")]
    NotAQueuePath,
}

/// KEDA's rule: the URL path must be exactly `/<account>/<name>`.
pub fn queue_name_from_url(q: &str) -> Result<String, QueueUrlError> {
    let path = if q.starts_with('/') {
        q.to_owned()
    } else {
        url::Url::parse(q).map_err(QueueUrlError::NotAUrl)?.path().to_owned()
    };
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["", account, name] if !account.is_empty() && !name.is_empty() => Ok((*name).to_owned()),
        _ => Err(QueueUrlError::NotAQueuePath),
    }
}

fn is_queue_name(q: &str) -> bool {
    let base = q.strip_suffix(".fifo").unwrap_or(q);
    !base.is_empty() && q.len() <= 80 && base.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

/// `sqs.<region>.amazonaws.com[.cn]` or the legacy `<region>.queue.amazonaws.com`.
fn region_from_url(q: &str) -> Option<String> {
    let host = url::Url::parse(q).ok()?.host_str()?.to_owned();
    let labels: Vec<&str> = host.split('.').collect();
    match labels.as_slice() {
        ["sqs", region, "amazonaws", "com", ..] => Some((*region).to_owned()),
        [region, "queue", "amazonaws", "com", ..] => Some((*region).to_owned()),
        _ => None,
    }
}

fn check_endpoint(p: &mut Problems, at: &str, key: &str, e: &str) {
    match url::Url::parse(e) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
        _ => p.add(at, format!("{key} ({e:?}) must be an http:// or https:// URL")),
    }
}

/// STS's constraints on `ExternalId`: 2 to 1,224 characters of `[\w+=,.@:/-]`.
fn check_external_id(p: &mut Problems, at: &str, id: &str) {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "_+=,.@:/-".contains(c);
    if !(2..=1224).contains(&id.len()) || !id.chars().all(ok_char) {
        p.add(
            at,
            format!(
                "external_id ({id:?}) must be 2 to 1224 characters of letters, digits and _+=,.@:/- (STS's ExternalId)"
            ),
        );
    }
}

fn check_role_arn(p: &mut Problems, at: &str, key: &str, arn: &str) {
    let ok = arn.starts_with("arn:") && arn.contains(":iam::") && arn.contains(":role/");
    if !ok {
        p.add(at, format!("{key} ({arn:?}) is not an IAM role ARN like arn:aws:iam::123456789012:role/NAME"));
    }
}
