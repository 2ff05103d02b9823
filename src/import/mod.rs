//! `sqscale import-keda`: KEDA ScaledObjects, and the TriggerAuthentications they name,
//! turned into a rule file that `sqscale check` accepts.
//!
//! The core is pure: parsed objects in ([`parse_documents`] turns text into them), an
//! [`Import`] out, holding the rules as [`RawConfig`] and, for each one, what did not
//! carry over. Reading files and the cluster is [`command`]'s; comparing with an existing
//! rule file is [`diff`]'s. Field names and semantics follow KEDA's
//! `scaledobject_types.go`, `triggerauthentication_types.go` and the `aws-sqs-queue`
//! scaler's metadata parsing (`../shared/spec/keda.md` §1-2).

pub mod command;
pub mod diff;
mod job;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

pub use job::ImportedJob;

use crate::config::raw::{
    RawBehavior, RawConfig, RawDuration, RawFallback, RawPolicy, RawRule, RawScalingModifiers, RawScalingRules,
    RawTarget, RawTrigger,
};

/// KEDA's API group; objects of any other group are not KEDA's and are passed over.
const KEDA_GROUP: &str = "keda.sh";
const SQS_TRIGGER: &str = "aws-sqs-queue";
const ANNOTATION_PREFIX: &str = "autoscaling.keda.sh/";

/// A document that does not parse, with where the parser says (1-based).
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub line: Option<u64>,
    pub column: Option<u64>,
    pub message: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, "line {line}, column {column}: {}", self.message),
            (Some(line), None) => write!(f, "line {line}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

/// Parses the text of one input: JSON (one value or several in a row), or YAML with any
/// number of documents. Lists (`kind: List`, `ScaledObjectList`, a JSON array) are
/// opened, so the result holds single objects only; empty documents are dropped.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, ParseError> {
    let docs: Vec<Value> = if text.trim_start().starts_with(['{', '[']) {
        // JSON is YAML too, but serde_json's errors name the line of a JSON mistake,
        // and kubectl's `-o json` output is parsed exactly as it was written.
        serde_json::Deserializer::from_str(text).into_iter::<Value>().collect::<Result<_, _>>().map_err(|e| {
            ParseError { line: Some(e.line() as u64), column: Some(e.column() as u64), message: json_message(&e) }
        })?
    } else {
        serde_saphyr::from_multiple_with_options::<Value>(text, yaml_options()).map_err(|e| {
            let at = e.location().filter(|l| l.line() > 0);
            ParseError {
                line: at.map(|l| l.line()),
                column: at.map(|l| l.column()).filter(|c| *c > 0),
                message: yaml_message(&e.to_string()),
            }
        })?
    };
    let mut out = Vec::new();
    for doc in docs {
        open_lists(doc, None, &mut out);
    }
    Ok(out)
}

/// The YAML parser's limits, raised for what kubectl prints: the defaults (1,024
/// documents, 250,000 nodes) stop at a few thousand ScaledObjects with their
/// `managedFields`. The limits on aliases, which guard against documents that expand
/// exponentially, stay.
fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_documents = 1 << 20;
    budget.max_nodes = 1 << 26;
    budget.max_events = 1 << 28;
    budget.max_total_scalar_bytes = 1 << 30;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// serde_json's message without its ` at line L column C` tail (the caller says where).
fn json_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// The YAML parser's message: its first line (a source snippet may follow), without its
/// `error: line L column C: ` head (the caller says where).
fn yaml_message(s: &str) -> String {
    let first = s.lines().next().unwrap_or_default().trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    match first.split_once(": ") {
        Some((head, rest)) if head.starts_with("line ") && head.contains(" column ") => rest.to_owned(),
        _ => first.to_owned(),
    }
}

/// Appends `doc`, or the items of a list, to `out`. A typed list's items may lack
/// `kind` and `apiVersion` (the API server leaves them out for built-in types): they
/// are the list's.
fn open_lists(doc: Value, inherited: Option<(&str, &str)>, out: &mut Vec<Value>) {
    match doc {
        Value::Null => {}
        Value::Array(items) => items.into_iter().for_each(|d| open_lists(d, None, out)),
        Value::Object(mut map) => {
            if let Some((kind, api_version)) = inherited {
                map.entry("kind").or_insert_with(|| kind.into());
                map.entry("apiVersion").or_insert_with(|| api_version.into());
            }
            let kind = map.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
            if let (Some(item_kind), Some(Value::Array(_))) = (kind.strip_suffix("List"), map.get("items")) {
                let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_owned();
                let Some(Value::Array(items)) = map.remove("items") else { return };
                // `kind: List` (kubectl's) names no item kind: each item carries its own.
                let inherit = (!item_kind.is_empty()).then_some((item_kind, api_version.as_str()));
                items.into_iter().for_each(|d| open_lists(d, inherit, out));
            } else {
                out.push(Value::Object(map));
            }
        }
        // A scalar document is nothing kubectl would print; there is nothing to import.
        _ => {}
    }
}

/// Where objects without `metadata.namespace` live (kubectl's `--namespace`, else
/// `default`).
#[derive(Clone, Debug)]
pub struct Options {
    pub default_namespace: String,
}

impl Default for Options {
    fn default() -> Self {
        Options { default_namespace: "default".to_owned() }
    }
}

/// What an import made of its input.
#[derive(Clone, Debug, Default)]
pub struct Import {
    /// One entry per ScaledObject that gives a valid rule, in input order.
    pub rules: Vec<Imported>,
    /// ScaledObjects that give no rule, each with why; with the rule that could be built,
    /// if any, so the output can show it commented out.
    pub rejected: Vec<Rejected>,
    /// About the input as a whole (objects passed over, duplicates).
    pub warnings: Vec<String>,
    /// One entry per ScaledJob that gives a valid job rule, in input order.
    pub jobs: Vec<ImportedJob>,
}

#[derive(Clone, Debug)]
pub struct Imported {
    /// `ScaledObject shop/orders`
    pub source: String,
    pub rule: RawRule,
    /// What did not carry over, each once.
    pub notes: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Rejected {
    pub source: String,
    pub rule: Option<RawRule>,
    pub reasons: Vec<String>,
}

impl Import {
    /// The rules as a rule file's raw form.
    pub fn config(&self) -> RawConfig {
        RawConfig {
            rule: self.rules.iter().map(|r| r.rule.clone()).collect(),
            job: self.jobs.iter().map(|j| j.job.clone()).collect(),
            ..Default::default()
        }
    }

    /// Points each job rule's `template` key at its file in `dir`, as the rule file will
    /// name it (relative to the rule file's folder, or absolute).
    pub fn place_templates(&mut self, dir: &std::path::Path) {
        for j in &mut self.jobs {
            let path = dir.join(&j.file);
            let path = path.strip_prefix(".").unwrap_or(&path);
            j.job.template = Some(path.display().to_string());
        }
    }

    /// The rule file [`Import::to_toml`] prints, validated as `sqscale check` would once
    /// the templates are written: each job rule's template taken from memory.
    pub fn check(&self) -> Result<crate::config::Config, crate::config::ConfigErrors> {
        let templates = |given: &std::path::Path| {
            let found = self.jobs.iter().find(|j| j.job.template.as_deref().map(std::path::Path::new) == Some(given));
            match found {
                Some(j) => crate::config::template::parse(&j.template, given),
                None => Err(crate::config::template::TemplateError {
                    path: given.to_owned(),
                    line: None,
                    message: "not a template import-keda wrote".to_owned(),
                }),
            }
        };
        crate::config::from_str_with_templates(&self.to_toml(), &templates)
    }

    /// Everything to say on standard error, each once.
    pub fn messages(&self) -> Vec<String> {
        let mut out = self.warnings.clone();
        for r in &self.rules {
            let name = r.rule.name.as_deref().unwrap_or_default();
            out.extend(r.notes.iter().map(|n| format!("rule {name:?} ({}): {n}", r.source)));
        }
        for j in &self.jobs {
            let name = j.job.name.as_deref().unwrap_or_default();
            out.extend(j.notes.iter().map(|n| format!("job rule {name:?} ({}): {n}", j.source)));
        }
        for r in &self.rejected {
            out.push(format!("{}: no rule: {}", r.source, r.reasons.join("; ")));
        }
        out
    }

    /// The rule file: each rule with what did not carry over as comments above it; the
    /// ScaledObjects that give no rule as comments, with the rule commented out where
    /// one could be built.
    pub fn to_toml(&self) -> String {
        let n = self.rules.len();
        let jobs = match self.jobs.len() {
            0 => String::new(),
            1 => " and 1 job rule".to_owned(),
            j => format!(" and {j} job rules"),
        };
        let mut out = format!(
            "# Imported from KEDA by `sqscale import-keda`: {n} rule{}{jobs}.\n\
             # Next: `sqscale check --remote`, then `sqscale run --dry-run` next to KEDA (README,\n\
             # \"Migrating from KEDA\"). Comments above a rule say what did not carry over.\n",
            if n == 1 { "" } else { "s" }
        );
        for r in &self.rules {
            out.push('\n');
            out.push_str(&comment(&r.source));
            for note in &r.notes {
                out.push_str(&comment(&format!("not carried over: {note}")));
            }
            out.push_str(&rule_toml(&r.rule));
        }
        for j in &self.jobs {
            out.push('\n');
            out.push_str(&comment(&j.source));
            for note in &j.notes {
                out.push_str(&comment(&format!("not carried over: {note}")));
            }
            let one = RawConfig { job: vec![j.job.clone()], ..Default::default() };
            out.push_str(&toml::to_string(&one).unwrap_or_else(|e| format!("# cannot render the job rule: {e}\n")));
        }
        for r in &self.rejected {
            out.push('\n');
            out.push_str(&comment(&format!("{}: no rule: {}", r.source, r.reasons.join("; "))));
            if let Some(rule) = &r.rule {
                out.push_str(&comment(&rule_toml(rule)));
            }
        }
        out
    }
}

/// `text` as TOML comment lines. Names and values from the input may hold anything:
/// control characters, which a TOML comment must not, are escaped.
fn comment(text: &str) -> String {
    let line = |l: &str| -> String {
        let shown: String = l
            .chars()
            .map(|c| if c.is_control() && c != '\t' { c.escape_default().to_string() } else { c.to_string() })
            .collect();
        if shown.is_empty() { "#\n".to_owned() } else { format!("# {shown}\n") }
    };
    text.lines().map(line).collect()
}

/// One `[[rule]]` with its sub-tables, as the rule file takes it.
fn rule_toml(rule: &RawRule) -> String {
    let one = RawConfig { rule: vec![rule.clone()], ..Default::default() };
    // Plain structs of strings, numbers and tables always serialize.
    toml::to_string(&one).unwrap_or_else(|e| format!("# cannot render the rule: {e}\n"))
}

/// KEDA's truthiness of an annotation (`getBoolAnnotation`): a value that is not a Go
/// bool counts as true.
fn truthy(v: &str) -> bool {
    parse_go_bool(v).unwrap_or(true)
}

/// Go's `strconv.ParseBool`, which KEDA's metadata parser uses.
fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// The group of an `apiVersion` (`keda.sh/v1alpha1` -> `keda.sh`; core `v1` -> "").
fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

/// The authentication objects of the input, by where a trigger's `authenticationRef`
/// finds them.
#[derive(Default)]
struct Auths<'a> {
    namespaced: HashMap<(String, String), &'a Value>,
    cluster: HashMap<String, &'a Value>,
    /// The Deployments and StatefulSets of the input, by (kind, namespace, name): where a
    /// `queueURLFromEnv` may be read.
    workloads: HashMap<(String, String, String), &'a Value>,
}

/// Imports every ScaledObject of `objects`.
pub fn import(objects: &[Value], options: &Options) -> Import {
    let mut result = Import::default();
    let mut auths = Auths::default();
    // By (namespace, name): the same object given twice (two files, or a file and a
    // list) is one ScaledObject; the later one wins.
    let mut scaled: Vec<((String, String), &Value)> = Vec::new();
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    let mut scaled_jobs: Vec<((String, String), &Value)> = Vec::new();
    for obj in objects {
        let api_version = str_at(obj, "/apiVersion").unwrap_or_default();
        let kind = str_at(obj, "/kind").unwrap_or_default();
        if group_of(api_version) == "apps" && matches!(kind, "Deployment" | "StatefulSet") {
            let name = str_at(obj, "/metadata/name").unwrap_or_default().to_owned();
            let namespace =
                str_at(obj, "/metadata/namespace").filter(|n| !n.is_empty()).unwrap_or(&options.default_namespace);
            auths.workloads.insert((kind.to_owned(), namespace.to_owned(), name), obj);
            continue;
        }
        if group_of(api_version) != KEDA_GROUP {
            continue;
        }
        let name = str_at(obj, "/metadata/name").unwrap_or_default().to_owned();
        let namespace =
            str_at(obj, "/metadata/namespace").filter(|n| !n.is_empty()).unwrap_or(&options.default_namespace);
        match kind {
            "ScaledObject" => {
                let key = (namespace.to_owned(), name);
                match index.get(&key) {
                    Some(&i) => {
                        result.warnings.push(format!(
                            "ScaledObject {}/{} appears more than once in the input; the last one is used",
                            key.0, key.1
                        ));
                        scaled[i].1 = obj;
                    }
                    None => {
                        index.insert(key.clone(), scaled.len());
                        scaled.push((key, obj));
                    }
                }
            }
            "TriggerAuthentication" => {
                auths.namespaced.insert((namespace.to_owned(), name), obj);
            }
            "ClusterTriggerAuthentication" => {
                auths.cluster.insert(name, obj);
            }
            "ScaledJob" => {
                let key = (namespace.to_owned(), name);
                match scaled_jobs.iter_mut().find(|(k, _)| *k == key) {
                    Some(slot) => {
                        result.warnings.push(format!(
                            "ScaledJob {}/{} appears more than once in the input; the last one is used",
                            key.0, key.1
                        ));
                        slot.1 = obj;
                    }
                    None => scaled_jobs.push((key, obj)),
                }
            }
            _ => {}
        }
    }

    // KEDA's names are unique per namespace only: a name found in two namespaces is
    // prefixed with its namespace everywhere it occurs.
    let mut namespaces_of: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for ((ns, name), _) in &scaled {
        namespaces_of.entry(name.as_str()).or_default().insert(ns.as_str());
    }
    let mut taken: BTreeSet<String> = BTreeSet::new();
    let mut targets: HashMap<(String, String, String), String> = HashMap::new();
    for ((ns, name), obj) in &scaled {
        let source = format!("ScaledObject {ns}/{name}");
        let wanted = if namespaces_of[name.as_str()].len() > 1 { format!("{ns}-{name}") } else { name.clone() };
        let mut converted = convert(obj, ns, &auths);
        let Some(mut rule) = converted.rule else {
            result.rejected.push(Rejected { source, rule: None, reasons: converted.problems });
            continue;
        };
        let rule_name = unique_name(&wanted, &mut taken, &mut converted.notes);
        rule.name = Some(rule_name.clone());
        if converted.problems.is_empty() {
            converted.problems = validate_alone(&rule);
        }
        if converted.problems.is_empty()
            && let Some(t) = &rule.target
        {
            let key = (
                t.kind.clone().unwrap_or_default(),
                t.namespace.clone().unwrap_or_default(),
                t.name.clone().unwrap_or_default(),
            );
            if let Some(other) = targets.get(&key) {
                converted.problems.push(format!(
                    "its target {}/{}/{} is already scaled by rule {other:?}; two rules would fight over it",
                    key.0, key.1, key.2
                ));
            } else {
                targets.insert(key, rule_name.clone());
            }
        }
        if converted.problems.is_empty() {
            result.rules.push(Imported { source, rule, notes: dedup(converted.notes) });
        } else {
            taken.remove(&rule_name);
            let mut reasons = dedup(converted.problems);
            reasons.extend(dedup(converted.notes));
            result.rejected.push(Rejected { source, rule: Some(rule), reasons });
        }
    }
    import_jobs(&scaled_jobs, &auths, &mut result);
    result
}

/// Each ScaledJob as a job rule with its template, named uniquely among job rules (a
/// name found in two namespaces prefixed with its namespace); one that does not validate
/// is rejected with why.
fn import_jobs(scaled_jobs: &[((String, String), &Value)], auths: &Auths, result: &mut Import) {
    let mut namespaces_of: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for ((ns, name), _) in scaled_jobs {
        namespaces_of.entry(name.as_str()).or_default().insert(ns.as_str());
    }
    let mut taken: BTreeSet<String> = BTreeSet::new();
    for ((ns, name), obj) in scaled_jobs {
        let source = format!("ScaledJob {ns}/{name}");
        let wanted = if namespaces_of[name.as_str()].len() > 1 { format!("{ns}-{name}") } else { name.clone() };
        let mut converted = job::convert(obj, ns, auths);
        let (Some(mut raw), Some(manifest)) = (converted.job.take(), converted.template.take()) else {
            result.rejected.push(Rejected { source, rule: None, reasons: dedup(converted.problems) });
            continue;
        };
        let job_name = unique_name(&wanted, &mut taken, &mut converted.notes);
        raw.name = Some(job_name.clone());
        let file = format!("{job_name}.yaml");
        raw.template = Some(file.clone());
        let template = match job::template_text(&source, &manifest) {
            Ok(text) => text,
            Err(e) => {
                converted.problems.push(format!("its jobTargetRef cannot be written as YAML: {e}"));
                String::new()
            }
        };
        let imported = ImportedJob { source, job: raw, file, template, notes: Vec::new() };
        if converted.problems.is_empty() {
            converted.problems = validate_job_alone(&imported);
        }
        if converted.problems.is_empty() {
            result.jobs.push(ImportedJob { notes: dedup(converted.notes), ..imported });
        } else {
            taken.remove(&job_name);
            let mut reasons = dedup(converted.problems);
            reasons.extend(dedup(converted.notes));
            result.rejected.push(Rejected { source: imported.source, rule: None, reasons });
        }
    }
}

/// The problems `sqscale check` finds in the job rule and its template alone, without
/// the `job "x": ` prefix.
fn validate_job_alone(j: &ImportedJob) -> Vec<String> {
    let alone = Import { jobs: vec![j.clone()], ..Default::default() };
    match alone.check() {
        Ok(_) => Vec::new(),
        Err(e) => e
            .problems
            .into_iter()
            .map(|p| match p.split_once(": ") {
                Some((head, rest)) if head.starts_with("job ") => rest.to_owned(),
                _ => p,
            })
            .collect(),
    }
}

fn dedup(items: Vec<String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    items.into_iter().filter(|i| seen.insert(i.clone())).collect()
}

/// A rule name for `wanted` that the rule file takes (a DNS label) and no other rule
/// has; a changed name is noted.
fn unique_name(wanted: &str, taken: &mut BTreeSet<String>, notes: &mut Vec<String>) -> String {
    let base = dns_label(wanted, 63);
    let mut name = base.clone();
    let mut n = 2;
    while taken.contains(&name) {
        let suffix = format!("-{n}");
        name = format!("{}{suffix}", dns_label(&base, 63 - suffix.len()));
        n += 1;
    }
    if name != wanted {
        let why = if base == wanted {
            "is another rule's name".to_owned()
        } else if name == base {
            "is not a rule name (lowercase letters, digits and '-', at most 63 characters)".to_owned()
        } else {
            format!("is not a rule name, and {base:?} is another rule's")
        };
        notes.push(format!("the rule is named {name:?}: {wanted:?} {why}"));
    }
    taken.insert(name.clone());
    name
}

/// `s` made a DNS label of at most `max` characters: lowercase letters, digits and
/// '-', starting and ending with a letter or digit.
fn dns_label(s: &str, max: usize) -> String {
    let mapped: String =
        s.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    let trimmed: String = mapped.trim_matches('-').chars().take(max).collect();
    let label = trimmed.trim_end_matches('-').to_owned();
    if label.is_empty() { "rule".to_owned() } else { label }
}

/// The problems `sqscale check` finds in `rule` alone, without the `rule "x": ` prefix.
fn validate_alone(rule: &RawRule) -> Vec<String> {
    match crate::config::from_str(&rule_toml(rule)) {
        Ok(_) => Vec::new(),
        Err(e) => e
            .problems
            .into_iter()
            .map(|p| match p.split_once(": ") {
                Some((head, rest)) if head.starts_with("rule ") => rest.to_owned(),
                _ => p,
            })
            .collect(),
    }
}

/// One ScaledObject, converted: the rule (without its name), what did not carry over,
/// and what makes it unusable. `rule` is `None` when there is nothing to show.
struct Converted {
    rule: Option<RawRule>,
    notes: Vec<String>,
    problems: Vec<String>,
}

fn convert(so: &Value, namespace: &str, auths: &Auths) -> Converted {
    let mut notes = Vec::new();
    let mut problems = Vec::new();
    let spec = so.get("spec").cloned().unwrap_or(Value::Null);

    let env = env_source(&spec, namespace, auths);
    let (triggers, other_types) = convert_triggers(&spec, namespace, auths, env, &mut notes, &mut problems);
    if triggers.is_empty() {
        let why = if other_types.is_empty() {
            format!("it has no {SQS_TRIGGER} trigger")
        } else {
            format!("it has no {SQS_TRIGGER} trigger (only {})", other_types.join(", "))
        };
        // A trigger that failed to convert said why already.
        if problems.is_empty() {
            problems.push(why);
        }
        return Converted { rule: None, notes, problems };
    }
    if !other_types.is_empty() {
        notes.push(format!(
            "triggers of type {} are left out: sqscale reads SQS queues only, so the rule scales on its {SQS_TRIGGER} triggers alone",
            other_types.join(", ")
        ));
    }

    let mut int = |field: &str| -> Option<i64> {
        match spec.get(field) {
            None | Some(Value::Null) => None,
            Some(v) => v.as_i64().or_else(|| {
                problems.push(format!("spec.{field} ({v}) is not a whole number"));
                None
            }),
        }
    };
    let seconds = |v: Option<i64>| v.map(RawDuration::Seconds);
    let polling_interval = seconds(int("pollingInterval"));
    let cooldown_period = seconds(int("cooldownPeriod"));
    let initial_cooldown_period = seconds(int("initialCooldownPeriod"));
    let min = int("minReplicaCount");
    let max = int("maxReplicaCount");
    let mut idle = int("idleReplicaCount");
    if idle == Some(0) && min.unwrap_or(0) == 0 {
        // KEDA accepts this (its check compares with max(min, 1)) and it changes nothing;
        // sqscale insists on idle < min.
        notes.push("idleReplicaCount 0 with minReplicaCount 0 is the same as no idle count: left out".to_owned());
        idle = None;
    }

    let target = convert_target(&spec, namespace, &mut problems);
    let fallback = convert_fallback(&spec, &mut notes, &mut problems);
    let behavior = spec
        .pointer("/advanced/horizontalPodAutoscalerConfig/behavior")
        .filter(|b| !b.is_null())
        .map(|b| convert_behavior(b, &mut problems));
    let restore = spec.pointer("/advanced/restoreToOriginalReplicaCount").and_then(Value::as_bool) == Some(true);
    let scaling_modifiers = spec
        .pointer("/advanced/scalingModifiers")
        .filter(|m| !m.is_null())
        .map(|m| convert_modifiers(m, &mut problems));
    let annotated = convert_annotations(so, &target, &mut notes);
    let key = |on: bool| on.then_some(true);

    let rule = RawRule {
        name: None,
        target,
        context: None,
        polling_interval,
        cooldown_period,
        initial_cooldown_period,
        min_replica_count: min,
        max_replica_count: max,
        idle_replica_count: idle,
        paused: key(annotated.paused),
        paused_scale_in: key(annotated.overrides.paused_scale_in),
        paused_scale_out: key(annotated.overrides.paused_scale_out),
        force_activation: key(annotated.overrides.force_activation),
        restore_to_original_replica_count: key(restore),
        scaling_modifiers,
        activation_polls: None,
        group: None,
        priority: None,
        fallback,
        behavior,
        trigger: Some(triggers),
        schedule: None,
    };
    Converted { rule: Some(rule), notes, problems }
}

/// `advanced.scalingModifiers`: KEDA's strings (`target: "10"`) as numbers.
fn convert_modifiers(m: &Value, problems: &mut Vec<String>) -> RawScalingModifiers {
    let mut number = |field: &str| match m.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(v) => v.as_str().and_then(|s| s.trim().parse::<f64>().ok()).or_else(|| {
            problems.push(format!("advanced.scalingModifiers.{field} ({v}) is not a number"));
            None
        }),
    };
    RawScalingModifiers {
        target: number("target"),
        activation_target: number("activationTarget"),
        formula: str_at(m, "/formula").map(str::to_owned),
        metric_type: str_at(m, "/metricType").filter(|t| !t.is_empty()).map(str::to_owned),
    }
}

fn convert_target(spec: &Value, namespace: &str, problems: &mut Vec<String>) -> Option<RawTarget> {
    let Some(r) = spec.get("scaleTargetRef").filter(|r| r.is_object()) else {
        problems.push("spec.scaleTargetRef is missing".to_owned());
        return None;
    };
    let kind = str_at(r, "/kind").filter(|k| !k.is_empty()).unwrap_or("Deployment");
    let api_version = str_at(r, "/apiVersion").filter(|a| !a.is_empty()).unwrap_or("apps/v1");
    if !matches!(kind, "Deployment" | "StatefulSet") || group_of(api_version) != "apps" {
        problems.push(format!(
            "its target is a {kind} ({api_version}): sqscale scales Deployments and StatefulSets (apps/v1) only"
        ));
    }
    let name = str_at(r, "/name").filter(|n| !n.is_empty());
    if name.is_none() {
        problems.push("spec.scaleTargetRef.name is missing".to_owned());
    }
    Some(RawTarget {
        kind: Some(kind.to_owned()),
        name: Some(name.unwrap_or_default().to_owned()),
        namespace: Some(namespace.to_owned()),
    })
}

fn convert_fallback(spec: &Value, notes: &mut Vec<String>, problems: &mut Vec<String>) -> Option<RawFallback> {
    let f = spec.get("fallback").filter(|f| !f.is_null())?;
    let mut int = |field: &str| match f.get(field) {
        None | Some(Value::Null) => None,
        Some(v) => v.as_i64().or_else(|| {
            problems.push(format!("spec.fallback.{field} ({v}) is not a whole number"));
            None
        }),
    };
    let failure_threshold = int("failureThreshold");
    let replicas = int("replicas");
    if replicas == Some(0) {
        notes.push(
            "fallback with replicas 0: sqscale never scales to zero on failed polls (it holds the replicas), so the fallback is left out"
                .to_owned(),
        );
        return None;
    }
    let behavior = match str_at(f, "/behavior").filter(|b| !b.is_empty()) {
        Some("scalingModifiers") => {
            notes.push(
                "fallback.behavior scalingModifiers (failed triggers passed to the formula as nil) is not supported; the fallback replicas apply as with static"
                    .to_owned(),
            );
            None
        }
        other => other.map(str::to_owned),
    };
    Some(RawFallback { failure_threshold, replicas, behavior, max_age: None })
}

fn convert_behavior(b: &Value, problems: &mut Vec<String>) -> RawBehavior {
    let rules = |key: &str, problems: &mut Vec<String>| {
        let r = b.get(key).filter(|r| !r.is_null())?;
        let at = format!("advanced.horizontalPodAutoscalerConfig.behavior.{key}");
        let mut int = |v: &Value, field: &str| -> Option<i64> {
            match v.get(field) {
                None | Some(Value::Null) => None,
                Some(x) => x.as_i64().or_else(|| {
                    problems.push(format!("{at}.{field} ({x}) is not a whole number"));
                    None
                }),
            }
        };
        let stabilization_window = int(r, "stabilizationWindowSeconds").map(RawDuration::Seconds);
        let policies = r.get("policies").and_then(Value::as_array).map(|list| {
            list.iter()
                .map(|p| RawPolicy {
                    kind: str_at(p, "/type").map(str::to_owned),
                    value: int(p, "value"),
                    period: int(p, "periodSeconds").map(RawDuration::Seconds),
                })
                .collect()
        });
        let tolerance = match r.get("tolerance") {
            None | Some(Value::Null) => None,
            Some(q) => quantity(q).or_else(|| {
                problems.push(format!("{at}.tolerance ({q}) is not a quantity such as 0.05 or \"50m\""));
                None
            }),
        };
        Some(RawScalingRules {
            stabilization_window,
            select_policy: str_at(r, "/selectPolicy").map(str::to_owned),
            tolerance,
            policies,
        })
    };
    RawBehavior { scale_up: rules("scaleUp", problems), scale_down: rules("scaleDown", problems) }
}

/// A Kubernetes quantity as a number, for the HPA's tolerance: a plain decimal or milli
/// units (`"50m"`); other suffixes make no sense for a ratio.
fn quantity(q: &Value) -> Option<f64> {
    match q {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => {
            let s = s.trim();
            match s.strip_suffix('m') {
                Some(milli) => milli.parse::<f64>().ok().map(|m| m / 1000.0),
                None => s.parse::<f64>().ok(),
            }
            .filter(|v| v.is_finite())
        }
        _ => None,
    }
}

/// What the ScaledObject's annotations ask for, as rule keys.
#[derive(Default)]
struct Annotated {
    paused: bool,
    overrides: crate::engine::Overrides,
}

/// The annotations of the ScaledObject: whether the rule starts paused, paused in one
/// direction or forced active (KEDA's truthiness); `paused-replicas` is a note.
fn convert_annotations(so: &Value, target: &Option<RawTarget>, notes: &mut Vec<String>) -> Annotated {
    let Some(annotations) = so.pointer("/metadata/annotations").and_then(Value::as_object) else {
        return Annotated::default();
    };
    let get = |k: &str| annotations.get(&format!("{ANNOTATION_PREFIX}{k}")).and_then(Value::as_str);
    // As kubectl takes it: `-n shop deployment/orders-worker`.
    let target = target.as_ref().map_or_else(String::new, |t| {
        format!(
            "-n {} {}/{}",
            t.namespace.as_deref().unwrap_or_default(),
            t.kind.as_deref().unwrap_or_default().to_lowercase(),
            t.name.as_deref().unwrap_or_default()
        )
    });
    let mut paused = get("paused").is_some_and(truthy);
    // Its presence pauses, whatever the value (KEDA's `paused-replicas`).
    if let Some(n) = get("paused-replicas") {
        paused = true;
        notes.push(format!(
            "annotation paused-replicas ({n}): the rule starts paused; to pin the target instead, remove `paused` and run `kubectl annotate {target} sqscale.io/paused-replicas={n}`"
        ));
    }
    let overrides = crate::engine::Overrides::from_annotations(
        get("paused-scale-in"),
        get("paused-scale-out"),
        get("force-activation"),
    );
    Annotated { paused, overrides }
}

/// The `aws-sqs-queue` triggers as rule triggers, and the types of the others.
/// `env` is the container `...FromEnv` parameters are read in, if the input holds it.
fn convert_triggers(
    spec: &Value,
    namespace: &str,
    auths: &Auths,
    env: Option<EnvSource>,
    notes: &mut Vec<String>,
    problems: &mut Vec<String>,
) -> (Vec<RawTrigger>, Vec<String>) {
    let mut triggers = Vec::new();
    let mut others = Vec::new();
    let list = spec.get("triggers").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for (i, t) in list.iter().enumerate() {
        let kind = str_at(t, "/type").unwrap_or_default();
        if kind != SQS_TRIGGER {
            let kind = if kind.is_empty() { "(none)" } else { kind };
            if !others.iter().any(|o| o == kind) {
                others.push(kind.to_owned());
            }
            continue;
        }
        let at = match str_at(t, "/name").filter(|n| !n.is_empty()) {
            Some(name) => format!("trigger {} ({name})", i + 1),
            None => format!("trigger {}", i + 1),
        };
        if let Some(trigger) = convert_trigger(t, &at, namespace, auths, env.as_ref(), notes, problems) {
            triggers.push(trigger);
        }
    }
    (triggers, others)
}

/// The container whose environment KEDA resolves `...FromEnv` in (`envSourceContainerName`,
/// else the first), as found in the input: its literal values, and where they come from.
struct EnvSource {
    /// `container worker of Deployment shop/orders-worker`
    place: String,
    /// Literal `env` values; the last of a name wins, as in the pod. `None` for a
    /// variable set by `valueFrom`, which import-keda cannot read.
    values: HashMap<String, Option<String>>,
}

fn env_source(spec: &Value, namespace: &str, auths: &Auths) -> Option<EnvSource> {
    let r = spec.get("scaleTargetRef")?;
    let kind = str_at(r, "/kind").filter(|k| !k.is_empty()).unwrap_or("Deployment");
    let name = str_at(r, "/name")?;
    let workload = auths.workloads.get(&(kind.to_owned(), namespace.to_owned(), name.to_owned()))?;
    let pod = workload.pointer("/spec/template/spec")?;
    EnvSource::of(pod, str_at(r, "/envSourceContainerName"), &format!("{kind} {namespace}/{name}"))
}

impl EnvSource {
    /// The literal `env` of the pod spec's container KEDA resolves `...FromEnv` in:
    /// `envSourceContainerName` (`wanted`) if given, else the first; `owner` says whose
    /// pod spec it is, for messages.
    fn of(pod: &Value, wanted: Option<&str>, owner: &str) -> Option<EnvSource> {
        let containers = pod.get("containers")?.as_array()?;
        let container = match wanted.filter(|c| !c.is_empty()) {
            Some(wanted) => containers.iter().find(|c| str_at(c, "/name") == Some(wanted))?,
            None => containers.first()?,
        };
        let values = container
            .get("env")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|e| Some((str_at(e, "/name")?.to_owned(), str_at(e, "/value").map(str::to_owned))))
            .collect();
        let place = format!("container {} of {owner}", str_at(container, "/name").unwrap_or_default());
        Some(EnvSource { place, values })
    }
}

#[allow(clippy::too_many_arguments)]
fn convert_trigger(
    t: &Value,
    at: &str,
    namespace: &str,
    auths: &Auths,
    env: Option<&EnvSource>,
    notes: &mut Vec<String>,
    problems: &mut Vec<String>,
) -> Option<RawTrigger> {
    let before = problems.len();
    let empty = serde_json::Map::new();
    let metadata = t.get("metadata").and_then(Value::as_object).unwrap_or(&empty);
    // KEDA trims every value and takes an empty one as missing. Values are strings in
    // the API; a number or bool written without quotes in a file is taken as written.
    let get = |key: &str| -> Option<String> {
        match metadata.get(key)? {
            Value::String(s) => Some(s.trim().to_owned()).filter(|s| !s.is_empty()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    };
    let mut int = |key: &str| -> Option<i64> {
        let v = get(key)?;
        // KEDA parses integers with encoding/json: no sign, no leading zeros, no fraction.
        serde_json::from_str::<i64>(&v).ok().or_else(|| {
            problems.push(format!("{at}: {key} ({v:?}) is not a whole number"));
            None
        })
    };
    let queue_length = int("queueLength");
    let activation_queue_length = int("activationQueueLength");
    let mut boolean = |key: &str| -> Option<bool> {
        let v = get(key)?;
        parse_go_bool(&v).or_else(|| {
            problems.push(format!("{at}: {key} ({v:?}) is not true or false"));
            None
        })
    };
    let scale_on_in_flight = boolean("scaleOnInFlight");
    let scale_on_delayed = boolean("scaleOnDelayed");
    let mut queue_url = get("queueURL");
    if queue_url.is_none() {
        match get("queueURLFromEnv") {
            // KEDA trims the value and takes an empty one as missing.
            Some(var) => match env.and_then(|e| Some((e, e.values.get(&var)?.as_deref()?.trim()))) {
                Some((e, value)) if !value.is_empty() => {
                    notes.push(format!(
                        "{at}: queueURLFromEnv: queue_url is the value of {var} in the {} of the input; if it changes there, change it here",
                        e.place
                    ));
                    queue_url = Some(value.to_owned());
                }
                _ => problems.push(format!(
                    "{at}: queueURLFromEnv: the queue URL is in the environment variable {var} of the target's container, which import-keda does not read unless the input holds the target with a literal value for it; set queue_url by hand"
                )),
            },
            None => problems.push(format!("{at}: queueURL is missing")),
        }
    }
    for key in ["awsAccessKeyID", "awsAccessKeyIDFromEnv", "awsSecretAccessKeyFromEnv"] {
        if get(key).is_some() {
            notes.push(format!(
                "{at}: {key}: credentials are never copied; give sqscale's own AWS identity sqs:GetQueueAttributes on the queue instead"
            ));
        }
    }
    let metric_type = match str_at(t, "/metricType").filter(|m| !m.is_empty()) {
        None | Some("AverageValue") => None,
        Some("Value") => Some("Value".to_owned()),
        Some(other) => {
            problems.push(format!(
                "{at}: metricType {other}: KEDA accepts only AverageValue or Value for external metrics"
            ));
            None
        }
    };
    let (role_arn, external_id) = t
        .get("authenticationRef")
        .filter(|r| !r.is_null())
        .map(|r| authentication(r, at, namespace, get("identityOwner").as_deref(), auths, notes))
        .unwrap_or_default();
    if problems.len() > before {
        return None;
    }
    Some(RawTrigger {
        kind: Some(SQS_TRIGGER.to_owned()),
        name: str_at(t, "/name").filter(|n| !n.is_empty()).map(str::to_owned),
        queue_url,
        queue_length,
        activation_queue_length,
        scale_on_in_flight,
        scale_on_delayed,
        aws_region: get("awsRegion"),
        aws_endpoint: get("awsEndpoint"),
        role_arn,
        external_id,
        metric_type,
    })
}

/// The role a trigger's `authenticationRef` gives, and the ExternalId that goes with it,
/// noting everything else it holds: credentials are never copied.
fn authentication(
    r: &Value,
    at: &str,
    namespace: &str,
    identity_owner: Option<&str>,
    auths: &Auths,
    notes: &mut Vec<String>,
) -> (Option<String>, Option<String>) {
    let name = str_at(r, "/name").unwrap_or_default();
    let cluster = str_at(r, "/kind") == Some("ClusterTriggerAuthentication");
    let (found, what, secrets_in) = if cluster {
        (auths.cluster.get(name), format!("ClusterTriggerAuthentication {name}"), "KEDA's namespace".to_owned())
    } else {
        (
            auths.namespaced.get(&(namespace.to_owned(), name.to_owned())),
            format!("TriggerAuthentication {namespace}/{name}"),
            format!("namespace {namespace}"),
        )
    };
    let Some(auth) = found else {
        notes.push(format!(
            "{at}: authenticationRef names {what}, which is not in the input: if it names a role, set role_arn on the trigger (and external_id, if it has one)"
        ));
        return (None, None);
    };
    let spec = auth.get("spec").cloned().unwrap_or(Value::Null);
    let mut role = None;
    let mut external_id = None;
    let provider = str_at(&spec, "/podIdentity/provider").unwrap_or_default();
    // Without `podIdentity.provider: aws`, `identityOwner: operator` makes KEDA read with
    // the operator's own credentials: it assumes no awsRoleArn (`GetAwsAuthorization`).
    let operator = provider != "aws" && identity_owner == Some("operator");
    match provider {
        "aws" => {
            role = str_at(&spec, "/podIdentity/roleArn").filter(|r| !r.is_empty()).map(str::to_owned);
            // KEDA sends podIdentity.externalID with AssumeRole of podIdentity.roleArn
            // only; a trust policy that asks for it refuses AssumeRole without it.
            let id = str_at(&spec, "/podIdentity/externalID").filter(|r| !r.is_empty());
            match (&role, id) {
                (Some(_), Some(id)) => external_id = Some(id.to_owned()),
                (None, Some(_)) => notes.push(format!(
                    "{at}: {what} sets podIdentity.externalID without podIdentity.roleArn, so KEDA sends it with no AssumeRole; it is left out"
                )),
                _ => {}
            }
            if str_at(&spec, "/podIdentity/identityOwner") == Some("workload") {
                notes.push(format!(
                    "{at}: {what} uses the role of the target's ServiceAccount (identityOwner: workload): set role_arn to the role in its eks.amazonaws.com/role-arn annotation"
                ));
            }
        }
        "aws-eks" | "aws-kiam" => notes.push(format!(
            "{at}: {what} uses the role of the target's ServiceAccount (podIdentity {}): set role_arn to the role in its eks.amazonaws.com/role-arn annotation",
            str_at(&spec, "/podIdentity/provider").unwrap_or_default()
        )),
        _ => {}
    }
    // Parameters read from elsewhere: (where, parameter, key there), in order.
    let mut sources: Vec<(String, String, Option<String>)> = Vec::new();
    let entries = |key: &str| spec.get(key).and_then(Value::as_array).cloned().unwrap_or_default();
    let field = |e: &Value, f: &str| str_at(e, &format!("/{f}")).unwrap_or_default().to_owned();
    for (key, kind) in [("secretTargetRef", "Secret"), ("configMapTargetRef", "ConfigMap")] {
        for e in entries(key) {
            let place = format!("{kind} {} in {secrets_in}", field(&e, "name"));
            sources.push((place, field(&e, "parameter"), Some(field(&e, "key"))));
        }
    }
    for e in entries("env") {
        let place = format!("environment variable {} of the target's container", field(&e, "name"));
        sources.push((place, field(&e, "parameter"), None));
    }
    for (key, store) in [
        ("hashiCorpVault", "HashiCorp Vault"),
        ("azureKeyVault", "Azure Key Vault"),
        ("gcpSecretManager", "GCP Secret Manager"),
        ("awsSecretManager", "AWS Secrets Manager"),
    ] {
        for e in spec.pointer(&format!("/{key}/secrets")).and_then(Value::as_array).into_iter().flatten() {
            sources.push((store.to_owned(), field(e, "parameter"), None));
        }
    }
    let mut by_place: Vec<(String, Vec<String>)> = Vec::new();
    for (place, parameter, key) in sources {
        let shown = match &key {
            Some(k) => format!("{parameter} (key {k})"),
            None => parameter.clone(),
        };
        match parameter.as_str() {
            "awsRoleArn" if operator => notes.push(format!(
                "{at}: {what} takes awsRoleArn from the {place}, but with identityOwner: operator KEDA does not assume it: it reads the queue as the KEDA operator's own identity. sqscale reads as its own: give that identity sqs:GetQueueAttributes on the queue, as the operator's has (no role_arn)"
            )),
            "awsRoleArn" if role.is_none() => notes.push(format!(
                "{at}: {what} takes awsRoleArn from the {place}, as {shown}, which import-keda does not read: set role_arn on the trigger to that role's ARN"
            )),
            "awsRoleArn" => {}
            "awsExternalID" => notes.push(format!(
                "{at}: {what} takes awsExternalID from the {place}, as {shown}, which import-keda does not read: set external_id on the trigger to that value (it goes with role_arn)"
            )),
            "awsRegion" => notes.push(format!(
                "{at}: {what} takes awsRegion from the {place}, which import-keda does not read: set aws_region on the trigger if the queue URL does not name the region"
            )),
            _ => match by_place.iter_mut().find(|(p, _)| *p == place) {
                Some((_, params)) => params.push(shown),
                None => by_place.push((place, vec![shown])),
            },
        }
    }
    for (place, params) in by_place {
        notes.push(format!(
            "{at}: {what} reads {} from the {place}: credentials are never copied; give sqscale's own AWS identity sqs:GetQueueAttributes on the queue instead (or a role to assume: role_arn)",
            params.join(", ")
        ));
    }
    (role, external_id)
}
