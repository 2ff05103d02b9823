//! The rule file: loading (figment: TOML plus `SQSCALE_` environment), validation into
//! domain types, and the resolved form `sqscale check` prints.
//!
//! Two stages, as ripgrep does with its flags: [`raw`] mirrors the file with every key
//! optional, and [`validate`] turns it into a [`Config`] or a list of *every* problem,
//! each naming its rule and key. Unknown keys are problems too (a typo must not fall
//! back to a default silently). [`insecure_settings`] names the settings that expose
//! something (it reads the kubeconfig). Nothing here touches the network.

pub mod file;
mod insecure;
pub mod raw;
pub mod template;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};

use crate::engine::Policy;
pub use insecure::insecure_settings;
pub use validate::{QueueUrlError, job_warnings, jobs_report, queue_name_from_url, windows_report};

/// The default rule file, after `--config` and `$SQSCALE_CONFIG`.
pub const DEFAULT_PATH: &str = "/etc/sqscale/sqscale.toml";

/// Top-level tables that `SQSCALE_` environment variables may override. Other
/// `SQSCALE_*` variables (`SQSCALE_CONFIG`, `SQSCALE_LOG`) are the CLI's.
const ENV_SECTIONS: [&str; 5] = ["kubernetes", "aws", "server", "leader_election", "defaults"];

/// A validated rule file.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub kubernetes: KubernetesSettings,
    pub aws: AwsSettings,
    pub server: ServerSettings,
    pub leader_election: LeaderElection,
    /// `[[group]]`: shared capacities, in file order.
    pub groups: Vec<Group>,
    pub rules: Vec<Rule>,
    /// `[[job]]`: job rules (KEDA's ScaledJob), in file order.
    pub jobs: Vec<JobRule>,
}

/// A capacity shared by the rules (and, later, job rules) that name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    /// The sum of the members' replicas sqscale scales up to.
    pub max_replicas: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct KubernetesSettings {
    /// Explicit kubeconfig path; `None` means `$KUBECONFIG`, then `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// Context to use; `None` means the kubeconfig's current-context.
    pub context: Option<String>,
    /// Mint EKS tokens in-process for this cluster name.
    pub eks_cluster: Option<String>,
    /// Writes per second to each cluster (`/scale` patches and state writes), on
    /// average; `burst` more may go at once. KEDA's operator defaults (its
    /// `--kube-api-qps` and `--kube-api-burst`).
    pub qps: f64,
    pub burst: u32,
}

/// `[kubernetes] qps` and `burst` when not set: KEDA's operator defaults.
pub const DEFAULT_QPS: f64 = 20.0;
pub const DEFAULT_BURST: u32 = 30;
/// The `qps` and `burst` the write budget can keep: one write per 1000 s to a million a
/// second, and bursts of up to a million. Past them its arithmetic (nanoseconds in a
/// u64: the period, and the period times the burst) fails: `qps = 1e10` made a period of
/// zero and the daemon panicked at start.
pub const QPS_RANGE: std::ops::RangeInclusive<f64> = 0.001..=1_000_000.0;
pub const MAX_BURST: u32 = 1_000_000;

impl Default for KubernetesSettings {
    fn default() -> Self {
        KubernetesSettings {
            kubeconfig: None,
            context: None,
            eks_cluster: None,
            qps: DEFAULT_QPS,
            burst: DEFAULT_BURST,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct AwsSettings {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub profile: Option<String>,
    pub role_arn: Option<String>,
    /// The ExternalId sent with AssumeRole of `role_arn` (its trust policy may ask for one).
    pub external_id: Option<String>,
    /// Poll with the direct `GetQueueAttributes` path (`true`, the default) or only
    /// through the SDK.
    pub direct_path: bool,
}

impl Default for AwsSettings {
    fn default() -> Self {
        AwsSettings {
            region: None,
            endpoint_url: None,
            profile: None,
            role_arn: None,
            external_id: None,
            direct_path: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServerSettings {
    /// `None` disables the HTTP listener (`listen = ""`).
    pub listen: Option<std::net::SocketAddr>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";
/// `[leader_election] namespace` when not set: sqscale's own namespace in each cluster,
/// where its Lease and its state ConfigMap live; the one config/rbac.yaml creates and
/// grants them in.
pub const DEFAULT_NAMESPACE: &str = "sqscale";

#[derive(Clone, Debug, PartialEq)]
pub struct LeaderElection {
    pub enabled: bool,
    pub namespace: String,
    pub lease_name: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    /// What an instance does while another one leads.
    pub standby: Standby,
}

/// `[leader_election] standby`: what a standby does while another instance leads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Standby {
    /// Polls no queue and reads no target; on taking over, each rule starts its HPA
    /// phase afresh (as kube-controller-manager's HPAs do after a failover) and takes
    /// last-active from the stored state. KEDA's standby operator replica does not poll
    /// either. Half the SQS requests of two instances.
    #[default]
    Cold,
    /// Polls and decides at the full rate (its windows stay warm), never writes.
    Warm,
}

impl Standby {
    pub fn as_str(self) -> &'static str {
        match self {
            Standby::Cold => "cold",
            Standby::Warm => "warm",
        }
    }
}

/// One validated `[[rule]]`: which target to size, from which queues, and the numbers
/// the engine decides with.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub name: String,
    pub target: TargetRef,
    /// Kube context for this rule's target; `None` uses `[kubernetes] context`.
    pub context: Option<String>,
    pub polling_interval: Duration,
    /// `paused = true`: the rule polls and reports but never patches.
    pub paused: bool,
    /// The `[[group]]` whose capacity this rule shares, if any.
    pub group: Option<String>,
    /// Within its group, free capacity goes to higher priority first.
    pub priority: i32,
    /// `paused_scale_in`, `paused_scale_out`, `force_activation`.
    pub overrides: crate::engine::Overrides,
    /// When the rule is removed (a reload), put the target back to the replicas it had
    /// when the rule first took it (KEDA's `restoreToOriginalReplicaCount`).
    pub restore_to_original_replica_count: bool,
    pub policy: Policy,
    /// Where each trigger reads; `policy.triggers` holds the numbers, in the same order.
    pub triggers: Vec<QueueSource>,
}

/// One validated `[[job]]`: KEDA's ScaledJob. Each poll reads its queues and creates
/// batch/v1 Jobs from its template (`../shared/spec/scaledjob.md`).
#[derive(Clone, Debug, PartialEq)]
pub struct JobRule {
    pub name: String,
    /// Where its Jobs are created (and counted).
    pub namespace: String,
    /// Kube context; `None` uses `[kubernetes] context`.
    pub context: Option<String>,
    pub polling_interval: Duration,
    /// The Job manifest its Jobs are made from, as read at start or at the last reload.
    pub template: std::sync::Arc<JobTemplate>,
    /// `[job.rollout]`: what a changed template does to the Jobs of the old one.
    pub rollout: Rollout,
    /// The `[[group]]` whose capacity this job rule shares (running Jobs count), if any.
    pub group: Option<String>,
    /// Within its group, free capacity goes to higher priority first.
    pub priority: i32,
    /// `pending_pod_conditions`: a Job is pending until one of its pods has every one of
    /// these condition types True; empty: until a pod is Running or Succeeded (spec §4).
    pub pending_pod_conditions: Vec<String>,
    /// The numbers the engine decides with (paused, limits, strategy, triggers).
    pub policy: crate::engine::job::JobPolicy,
    /// Per trigger, in the order of `policy.triggers`: the backlog's parts it counts
    /// (`scale_on_in_flight`, `scale_on_delayed`) and its name; `queue_length` and
    /// `activation_queue_length` are the engine's copies in `policy.triggers`.
    pub trigger_policies: Vec<crate::engine::TriggerPolicy>,
    /// Where each trigger reads, in the same order.
    pub triggers: Vec<QueueSource>,
    /// `[[job.schedule]]`: windows that change min/max/paused while open.
    pub schedules: Vec<crate::engine::schedule::Schedule>,
}

/// A job rule's template: a batch/v1 Job manifest read from a file.
#[derive(Clone, Debug, PartialEq)]
pub struct JobTemplate {
    /// The file it was read from (absolute, or as given relative to the rule file).
    pub path: PathBuf,
    /// The Job to create, as JSON: the manifest with `metadata` cut down to its labels
    /// and annotations, `spec.template.spec.restartPolicy` defaulted to `OnFailure`.
    /// sqscale's labels, `generateName` and namespace are added at create time.
    pub job: serde_json::Value,
    /// The hash of the normalised Job (spec and the kept metadata; not the file's bytes):
    /// the value of the `sqscale.io/template-hash` label. A change of it is a rollout.
    pub hash: String,
}

/// `[job.rollout]` (spec §7).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rollout {
    pub strategy: RolloutStrategy,
    pub propagation_policy: Propagation,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RolloutStrategy {
    /// Delete the Jobs of the old template (running, pending and finished) at start or
    /// reload, before the first poll of the new one. KEDA's unset / `immediate`.
    #[default]
    Default,
    /// Let the old template's Jobs finish; they still count.
    Gradual,
}

/// A delete's `propagationPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Propagation {
    #[default]
    Background,
    Foreground,
}

impl Propagation {
    /// As the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Propagation::Background => "Background",
            Propagation::Foreground => "Foreground",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TargetRef {
    pub kind: TargetKind,
    pub name: String,
    pub namespace: String,
}

impl fmt::Display for TargetRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TargetKind {
    Deployment,
    StatefulSet,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Deployment => "Deployment",
            TargetKind::StatefulSet => "StatefulSet",
        }
    }

    /// The API resource name (`deployments`, `statefulsets`).
    pub fn plural(self) -> &'static str {
        match self {
            TargetKind::Deployment => "deployments",
            TargetKind::StatefulSet => "statefulsets",
        }
    }
}

/// Where one trigger reads its counts, and with which AWS settings.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QueueSource {
    /// The queue URL as written, or `None` when only a name was given (resolved once
    /// with GetQueueUrl).
    pub url: Option<String>,
    /// The queue name: the URL's last path segment, or the name as written.
    pub name: String,
    pub region: String,
    pub endpoint: Option<String>,
    pub profile: Option<String>,
    pub role_arn: Option<String>,
    /// The ExternalId AssumeRole of `role_arn` sends; never set without `role_arn`.
    pub external_id: Option<String>,
    /// `[aws] direct_path`.
    pub direct: bool,
}

impl QueueSource {
    /// The queue as people name it: its URL if known, else its name.
    pub fn display(&self) -> &str {
        self.url.as_deref().unwrap_or(&self.name)
    }

    /// Whose credentials read the queue, as `check --remote` says it: the role assumed
    /// (and whether an ExternalId goes with it; the value itself is not shown), from
    /// which credentials.
    pub fn identity(&self) -> String {
        let base = match &self.profile {
            Some(p) => format!("profile {p:?}"),
            None => "the default credential chain".to_owned(),
        };
        match (&self.role_arn, &self.external_id) {
            (Some(role), Some(_)) => format!("role {role} with an ExternalId, assumed from {base}"),
            (Some(role), None) => format!("role {role}, assumed from {base}"),
            (None, _) => base,
        }
    }
}

/// Every problem found in a rule file, and where the file came from.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigErrors {
    /// The file path, or a description of the source (`"<string>"`).
    pub origin: String,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(f, "{}: {} problem{}", self.origin, n, if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads, merges with the `SQSCALE_` environment and validates the rule file at `path`.
///
/// A missing or unreadable file is an error, never an empty configuration; so is one
/// that is not read within [`file::READ_DEADLINE`] or is larger than [`file::MAX_BYTES`]
/// (see [`file`]).
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let origin = path.display().to_string();
    let text = file::read(path, file::READ_DEADLINE)
        .map_err(|e| ConfigErrors { origin: origin.clone(), problems: vec![crate::error::chain(&e)] })?;
    let figment = Figment::new().merge(Toml::string(&text)).merge(env_overrides());
    // A job rule's template is taken from the rule file's folder, and read afresh at
    // every load: a reload with a broken template fails, and the old rules stay.
    let base = path.parent().unwrap_or(Path::new("")).to_owned();
    extract(figment, origin, &read_once(|given: &Path| template::load(given, &base)))
}

/// `read`, once per template path in one load: a thousand job rules that share a
/// template read and parse it once, not a thousand times (each read runs on a thread of
/// its own, [`file::read`]: the reload of 1,000 job rules took 340 ms against 51 ms for
/// 1,000 rules, PERFORMANCE.md). A new load reads afresh.
fn read_once(
    read: impl Fn(&Path) -> Result<JobTemplate, template::TemplateError>,
) -> impl Fn(&Path) -> Result<JobTemplate, template::TemplateError> {
    let seen = std::cell::RefCell::new(std::collections::HashMap::new());
    move |given: &Path| {
        if let Some(known) = seen.borrow().get(given) {
            return Clone::clone(known);
        }
        let result = read(given);
        seen.borrow_mut().insert(given.to_owned(), result.clone());
        result
    }
}

/// [`load`], run on a thread of its own, keeping a copy made by the caller's thread.
///
/// Parsing builds the file's value tree twice (figment's, then its merge): ~50 MiB for
/// ten thousand rules, freed at once. Allocated in between on the same thread, the rules
/// would pin part of those pages for good. Parsed apart and copied back, they leave the
/// loader's pages wholly free, and the allocator returns them (PERFORMANCE.md).
pub fn load_compact(path: &Path) -> Result<Config, ConfigErrors> {
    let loaded = std::thread::scope(|s| s.spawn(|| load(path)).join());
    match loaded {
        // The copy is the point: made on this thread, after the loader's memory is freed.
        Ok(result) => result.clone(),
        Err(_) => Err(ConfigErrors {
            origin: path.display().to_string(),
            problems: vec!["loading the rule file panicked".to_owned()],
        }),
    }
}

/// `[server] listen` of the rule file at `path` (with its `SQSCALE_` override), read
/// without validating the rules: how `sqscale status` and `sqscale health` find the
/// daemon. `None` when neither sets a usable address (the caller takes the default).
pub fn listen_of(path: &Path) -> Option<std::net::SocketAddr> {
    let mut figment = Figment::new();
    // Without the file, `SQSCALE_SERVER__LISTEN` (as the image sets it) still counts.
    if let Ok(text) = file::read(path, file::READ_DEADLINE) {
        figment = figment.merge(Toml::string(&text));
    }
    figment.merge(env_overrides()).find_value("server.listen").ok()?.as_str()?.parse().ok()
}

/// Validates a rule file given as a string (no environment): what tests call. Job
/// rules' templates are taken from the current directory.
pub fn from_str(toml: &str) -> Result<Config, ConfigErrors> {
    from_str_at(toml, Path::new(""))
}

/// [`from_str`], with job rules' templates taken from the folder `base`.
pub fn from_str_at(toml: &str, base: &Path) -> Result<Config, ConfigErrors> {
    extract(
        Figment::new().merge(Toml::string(toml)),
        "<string>".to_owned(),
        &read_once(|given: &Path| template::load(given, base)),
    )
}

/// [`from_str`], with each job rule's template given in memory by its `template` key:
/// what `import-keda` checks its output with before it writes the template files.
pub(crate) fn from_str_with_templates(
    toml: &str,
    templates: &dyn Fn(&Path) -> Result<JobTemplate, template::TemplateError>,
) -> Result<Config, ConfigErrors> {
    extract(Figment::new().merge(Toml::string(toml)), "<string>".to_owned(), templates)
}

fn env_overrides() -> Env {
    Env::prefixed("SQSCALE_").split("__").filter(|key| {
        let section = key.as_str().split('.').next().unwrap_or_default();
        ENV_SECTIONS.iter().any(|s| s.eq_ignore_ascii_case(section))
    })
}

/// Deserializes through serde_ignored so every unknown key is collected, not just the
/// first one `deny_unknown_fields` would stop at.
struct Checked {
    raw: raw::RawConfig,
    unknown: Vec<String>,
}

impl<'de> serde::Deserialize<'de> for Checked {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut unknown = Vec::new();
        let raw = serde_ignored::deserialize(d, |path| unknown.push(path.to_string()))?;
        Ok(Checked { raw, unknown })
    }
}

fn extract(figment: Figment, origin: String, templates: validate::Templates<'_>) -> Result<Config, ConfigErrors> {
    let checked: Checked = figment.extract().map_err(|e| {
        let names = Names { rule: names_of(&figment, "rule"), job: names_of(&figment, "job") };
        ConfigErrors {
            origin: origin.clone(),
            problems: e.into_iter().map(|e| describe_figment_error(e, &names)).collect(),
        }
    })?;
    let mut problems: Vec<String> = checked.unknown.iter().map(|p| describe_unknown_key(&checked.raw, p)).collect();
    match validate::validate(&checked.raw, templates) {
        Ok(config) if problems.is_empty() => Ok(config),
        Ok(_) => Err(ConfigErrors { origin, problems }),
        Err(more) => {
            problems.extend(more);
            Err(ConfigErrors { origin, problems })
        }
    }
}

/// `rule.0.min_replica` -> `rule "orders": unknown key min_replica`; the same for
/// `job.0...` -> `job "encode": ...`.
fn describe_unknown_key(raw: &raw::RawConfig, path: &str) -> String {
    let mut parts = path.split('.');
    let table = parts.next();
    if let Some(i) = parts.next().and_then(|i| i.parse::<usize>().ok()) {
        let rest: Vec<_> = parts.collect();
        match table {
            Some("rule") => return format!("{}: unknown key {}", validate::rule_label(raw, i), render_path(&rest)),
            Some("job") => return format!("{}: unknown key {}", validate::job_label(raw, i), render_path(&rest)),
            _ => {}
        }
    }
    format!("unknown key {}", render_path(&path.split('.').collect::<Vec<_>>()))
}

/// Renders key segments with array indices as `trigger[0].queue_url`.
fn render_path(parts: &[&str]) -> String {
    let mut out = String::new();
    // serde_ignored marks an `Option` layer with `?`; it means nothing to a user.
    for p in parts.iter().filter(|p| **p != "?") {
        if p.parse::<usize>().is_ok() {
            out.push_str(&format!("[{p}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(p);
        }
    }
    out
}

/// The `name` of each `[[rule]]` and `[[job]]`, read from the untyped tree: a type error
/// elsewhere in one should still be reported under its name.
struct Names {
    rule: Vec<Option<String>>,
    job: Vec<Option<String>>,
}

fn names_of(figment: &Figment, table: &str) -> Vec<Option<String>> {
    let Ok(figment::value::Value::Array(_, items)) = figment.find_value(table) else { return Vec::new() };
    items.iter().map(|r| r.as_dict().and_then(|d| d.get("name")).and_then(|n| n.as_str()).map(str::to_owned)).collect()
}

fn describe_figment_error(e: figment::Error, names: &Names) -> String {
    let parts: Vec<&str> = e.path.iter().map(String::as_str).collect();
    let source = match &e.metadata {
        Some(md) if md.name.contains("environment") => format!(" (from {})", md.name),
        _ => String::new(),
    };
    // `rule.0.min_replica_count` -> `rule "orders": min_replica_count`.
    if let [table @ ("rule" | "job"), index, rest @ ..] = parts.as_slice() {
        let list = if *table == "rule" { &names.rule } else { &names.job };
        if let Some(Some(name)) = index.parse::<usize>().ok().and_then(|i| list.get(i)) {
            return format!("{table} {name:?}: {}: {}{source}", render_path(rest), e.kind);
        }
    }
    let key = render_path(&parts);
    if key.is_empty() { format!("{}{source}", e.kind) } else { format!("{key}: {}{source}", e.kind) }
}

#[cfg(test)]
mod tests;

// === the resolved form ===

impl Config {
    /// The configuration with every default filled in, as a rule file: what
    /// `sqscale check` prints. Reading it back gives the same `Config`.
    pub fn resolved_toml(&self) -> String {
        use raw::*;
        let secs = |d: Duration| Some(RawDuration::Text(validate::fmt_duration(d)));
        let ms = |m: i64| secs(Duration::from_millis(m as u64));
        let rules_of = |r: &crate::engine::hpa::ScalingRules, tol: f64| RawScalingRules {
            stabilization_window: ms(r.stabilization_window_ms),
            select_policy: Some(format!("{:?}", r.select_policy)),
            tolerance: Some(tol),
            policies: Some(
                r.policies
                    .iter()
                    .map(|p| RawPolicy {
                        kind: Some(format!("{:?}", p.kind)),
                        value: Some(i64::from(p.value)),
                        period: ms(p.period_ms),
                    })
                    .collect(),
            ),
        };
        let raw = RawConfig {
            kubernetes: Some(RawKubernetes {
                kubeconfig: self.kubernetes.kubeconfig.as_ref().map(|p| p.display().to_string()),
                context: self.kubernetes.context.clone(),
                eks_cluster: self.kubernetes.eks_cluster.clone(),
                qps: Some(self.kubernetes.qps),
                burst: Some(i64::from(self.kubernetes.burst)),
            }),
            aws: Some(RawAws {
                region: self.aws.region.clone(),
                endpoint_url: self.aws.endpoint_url.clone(),
                profile: self.aws.profile.clone(),
                role_arn: self.aws.role_arn.clone(),
                external_id: self.aws.external_id.clone(),
                direct_path: Some(self.aws.direct_path),
            }),
            server: Some(RawServer { listen: Some(self.server.listen.map(|a| a.to_string()).unwrap_or_default()) }),
            leader_election: Some(RawLeaderElection {
                enabled: Some(self.leader_election.enabled),
                namespace: Some(self.leader_election.namespace.clone()),
                lease_name: Some(self.leader_election.lease_name.clone()),
                lease_duration: secs(self.leader_election.lease_duration),
                renew_deadline: secs(self.leader_election.renew_deadline),
                retry_period: secs(self.leader_election.retry_period),
                standby: Some(self.leader_election.standby.as_str().to_owned()),
            }),
            defaults: None,
            group: self
                .groups
                .iter()
                .map(|g| RawGroup { name: Some(g.name.clone()), max_replicas: Some(i64::from(g.max_replicas)) })
                .collect(),
            rule: self
                .rules
                .iter()
                .map(|r| RawRule {
                    name: Some(r.name.clone()),
                    target: Some(RawTarget {
                        kind: Some(r.target.kind.as_str().to_owned()),
                        name: Some(r.target.name.clone()),
                        namespace: Some(r.target.namespace.clone()),
                    }),
                    context: r.context.clone(),
                    polling_interval: secs(r.polling_interval),
                    cooldown_period: secs(r.policy.cooldown),
                    initial_cooldown_period: secs(r.policy.initial_cooldown),
                    min_replica_count: Some(i64::from(r.policy.min)),
                    max_replica_count: Some(i64::from(r.policy.max)),
                    idle_replica_count: r.policy.idle.map(i64::from),
                    paused: Some(r.paused),
                    activation_polls: Some(i64::from(r.policy.activation_polls)),
                    group: r.group.clone(),
                    priority: r.group.as_ref().map(|_| i64::from(r.priority)),
                    paused_scale_in: Some(r.overrides.paused_scale_in),
                    paused_scale_out: Some(r.overrides.paused_scale_out),
                    force_activation: Some(r.overrides.force_activation),
                    restore_to_original_replica_count: Some(r.restore_to_original_replica_count),
                    scaling_modifiers: r.policy.modifiers.as_ref().map(|m| RawScalingModifiers {
                        formula: Some(m.formula.source().to_owned()),
                        target: Some(m.target),
                        activation_target: Some(m.activation_target),
                        metric_type: Some(m.metric_type.as_str().to_owned()),
                    }),
                    fallback: r.policy.fallback.map(|f| RawFallback {
                        failure_threshold: Some(i64::from(f.failure_threshold)),
                        replicas: Some(i64::from(f.replicas)),
                        behavior: Some(fallback_behavior_name(f.behavior).to_owned()),
                        max_age: match f.behavior {
                            crate::engine::FallbackBehavior::LastKnown { max_age } => secs(max_age),
                            _ => None,
                        },
                    }),
                    behavior: r.policy.behavior.as_ref().map(|b| RawBehavior {
                        scale_up: Some(rules_of(&b.scale_up, r.policy.tolerances.up)),
                        scale_down: Some(rules_of(&b.scale_down, r.policy.tolerances.down)),
                    }),
                    trigger: Some(
                        r.policy
                            .triggers
                            .iter()
                            .zip(&r.triggers)
                            .map(|(t, q)| resolved_trigger(t, q, Some(t.metric_type.as_str().to_owned())))
                            .collect(),
                    ),
                    schedule: resolved_schedules(&r.policy.schedules),
                })
                .collect(),
            job: self.jobs.iter().map(resolved_job).collect(),
        };
        // Serializing plain structs of strings, numbers and tables cannot fail.
        toml::to_string(&raw).unwrap_or_else(|e| format!("# cannot render the configuration: {e}\n"))
    }
}

/// A trigger of a rule or a job rule as `check` prints it: every default filled in.
/// `metric_type` is the rule's (a job rule's trigger has none: KEDA rejects it there).
fn resolved_trigger(t: &crate::engine::TriggerPolicy, q: &QueueSource, metric_type: Option<String>) -> raw::RawTrigger {
    raw::RawTrigger {
        kind: Some("aws-sqs-queue".to_owned()),
        name: t.name.clone(),
        queue_url: Some(q.display().to_owned()),
        queue_length: Some(t.queue_length as i64),
        activation_queue_length: Some(t.activation_queue_length),
        scale_on_in_flight: Some(t.scale_on_in_flight),
        scale_on_delayed: Some(t.scale_on_delayed),
        aws_region: Some(q.region.clone()),
        aws_endpoint: q.endpoint.clone(),
        role_arn: q.role_arn.clone(),
        external_id: q.external_id.clone(),
        metric_type,
    }
}

/// The `[[rule.schedule]]` or `[[job.schedule]]` tables of `schedules`, none if empty.
fn resolved_schedules(schedules: &[crate::engine::schedule::Schedule]) -> Option<Vec<raw::RawSchedule>> {
    (!schedules.is_empty()).then(|| {
        schedules
            .iter()
            .map(|s| raw::RawSchedule {
                cron: Some(s.pattern.clone()),
                timezone: Some(s.timezone.clone()),
                duration: Some(raw::RawDuration::Text(validate::fmt_duration(s.duration))),
                min_replica_count: s.min.map(i64::from),
                max_replica_count: s.max.map(i64::from),
                paused: s.paused.then_some(true),
            })
            .collect()
    })
}

fn fallback_behavior_name(b: crate::engine::FallbackBehavior) -> &'static str {
    use crate::engine::FallbackBehavior::*;
    match b {
        Static => "static",
        CurrentReplicas => "currentReplicas",
        CurrentReplicasIfHigher => "currentReplicasIfHigher",
        CurrentReplicasIfLower => "currentReplicasIfLower",
        LastKnown { .. } => "lastKnown",
    }
}

/// A job rule with every default written out; the template path as the rule file gave it.
fn resolved_job(j: &JobRule) -> raw::RawJob {
    use crate::engine::job::{MultipleScalersCalculation, ScalingStrategy};
    use raw::*;
    let secs = |d: Duration| Some(RawDuration::Text(validate::fmt_duration(d)));
    let p = &j.policy;
    let (strategy, deduction, percentage) = match p.strategy {
        ScalingStrategy::Default => ("default", None, None),
        ScalingStrategy::Accurate => ("accurate", None, None),
        ScalingStrategy::Eager => ("eager", None, None),
        ScalingStrategy::Custom { queue_length_deduction, running_job_percentage } => {
            ("custom", Some(queue_length_deduction), Some(running_job_percentage))
        }
    };
    let calculation = match p.multiple_scalers_calculation {
        MultipleScalersCalculation::Max => "max",
        MultipleScalersCalculation::Min => "min",
        MultipleScalersCalculation::Avg => "avg",
        MultipleScalersCalculation::Sum => "sum",
    };
    RawJob {
        name: Some(j.name.clone()),
        namespace: Some(j.namespace.clone()),
        template: Some(j.template.path.display().to_string()),
        context: j.context.clone(),
        polling_interval: secs(j.polling_interval),
        min_replica_count: Some(i64::from(p.min_replica_count)),
        max_replica_count: p.max_replica_count.map(i64::from),
        successful_jobs_history_limit: Some(i64::from(p.successful_jobs_history_limit)),
        failed_jobs_history_limit: Some(i64::from(p.failed_jobs_history_limit)),
        finished_job_grace: secs(p.finished_job_grace),
        paused: Some(p.paused),
        group: j.group.clone(),
        priority: j.group.as_ref().map(|_| i64::from(j.priority)),
        scaling_strategy: Some(RawJobScalingStrategy {
            strategy: Some(strategy.to_owned()),
            custom_scaling_queue_length_deduction: deduction,
            custom_scaling_running_job_percentage: percentage,
            pending_pod_conditions: Some(j.pending_pod_conditions.clone()),
            multiple_scalers_calculation: Some(calculation.to_owned()),
        }),
        rollout: Some(RawJobRollout {
            strategy: Some(
                match j.rollout.strategy {
                    RolloutStrategy::Default => "default",
                    RolloutStrategy::Gradual => "gradual",
                }
                .to_owned(),
            ),
            propagation_policy: Some(j.rollout.propagation_policy.as_str().to_lowercase()),
        }),
        trigger: Some(j.trigger_policies.iter().zip(&j.triggers).map(|(t, q)| resolved_trigger(t, q, None)).collect()),
        schedule: resolved_schedules(&j.schedules),
    }
}
