//! `batch/v1` Jobs and core `v1` Pods in the fake API server: what the real server does on
//! create, update and delete (defaulting, the generated selector and labels, validation,
//! `propagationPolicy` with the garbage collector's finalizers), the Job history tests
//! check, and [`Store`], the in-process handle the test Job controller
//! (`tests/it/support/jobs.rs`) reads and writes through.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use super::{Failure, FakeKube, Params, Res, Selector, Shared, State, details, json_response, meta_str, now_rfc3339};

/// How long the garbage collector waits after a change before it acts: the pods of a Job
/// deleted in the background outlive it briefly, as in a real cluster.
pub(super) const GC_DELAY: Duration = Duration::from_millis(100);

/// The labels the API server puts on a Job's pod template (and selects on).
pub const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
pub const LEGACY_CONTROLLER_UID: &str = "controller-uid";
pub const JOB_NAME: &str = "batch.kubernetes.io/job-name";
pub const LEGACY_JOB_NAME: &str = "job-name";

const ORPHAN: &str = "orphan";
const FOREGROUND: &str = "foregroundDeletion";

/// The warning the real server sends with a Job DELETE without a `propagationPolicy`.
const ORPHAN_WARNING: &str = "299 - \"child pods are preserved by default when jobs are deleted; set \
    propagationPolicy=Background to remove them or set propagationPolicy=Orphan to suppress this warning\"";

/// `DeleteOptions.propagationPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    Background,
    Foreground,
    Orphan,
}

impl Propagation {
    fn parse(s: &str) -> Option<Propagation> {
        match s {
            "Background" => Some(Propagation::Background),
            "Foreground" => Some(Propagation::Foreground),
            "Orphan" => Some(Propagation::Orphan),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Job history
// ---------------------------------------------------------------------------------------------

/// What happened to a Job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobEvent {
    Created,
    /// A `Complete` (or, `failed`, a `Failed`) condition became True.
    Finished {
        failed: bool,
    },
    /// Removed from the store (after its finalizers, if any).
    Deleted,
}

/// One entry of [`FakeKube::job_history`].
#[derive(Clone, Debug)]
pub struct JobRecord {
    pub event: JobEvent,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The Job's labels at that moment.
    pub labels: BTreeMap<String, String>,
    pub at: Instant,
}

fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
        .unwrap_or_default()
}

/// `Some(failed?)` once the Job has a `Complete` or `Failed` condition that is True.
pub fn finished(job: &Value) -> Option<bool> {
    let conditions = job.pointer("/status/conditions").and_then(Value::as_array)?;
    let is = |t: &str| conditions.iter().any(|c| c["type"] == t && c["status"] == "True");
    if is("Failed") {
        Some(true)
    } else if is("Complete") {
        Some(false)
    } else {
        None
    }
}

fn record(st: &mut State, event: JobEvent, ns: &str, obj: &Value) {
    st.job_log.push(JobRecord {
        event,
        namespace: ns.to_owned(),
        name: meta_str(obj, "name").to_owned(),
        uid: meta_str(obj, "uid").to_owned(),
        labels: labels_of(obj),
        at: Instant::now(),
    });
}

pub(super) fn record_job_write(st: &mut State, ns: &str, prev: Option<&Value>, obj: &Value) {
    match prev {
        None => record(st, JobEvent::Created, ns, obj),
        Some(prev) => {
            if let (None, Some(failed)) = (finished(prev), finished(obj)) {
                record(st, JobEvent::Finished { failed }, ns, obj);
            }
        }
    }
}

pub(super) fn record_job_deleted(st: &mut State, ns: &str, obj: &Value) {
    record(st, JobEvent::Deleted, ns, obj);
}

// ---------------------------------------------------------------------------------------------
// Field selectors
// ---------------------------------------------------------------------------------------------

/// The field selectors the real server accepts for a kind beyond `metadata.name` and
/// `metadata.namespace`.
pub(super) fn field_labels(res: Res) -> &'static [&'static str] {
    match res {
        Res::Job => &["status.successful"],
        Res::Pod => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        _ => &[],
    }
}

/// The value a field selector compares, as the real server renders it.
pub(super) fn field_value(obj: &Value, field: &str) -> String {
    if field == "status.successful" {
        return obj.pointer("/status/succeeded").and_then(Value::as_i64).unwrap_or(0).to_string();
    }
    let pointer = format!("/{}", field.replace('.', "/"));
    match obj.pointer(&pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => String::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Validation helpers (the real messages)
// ---------------------------------------------------------------------------------------------

const SUBDOMAIN_MESSAGE: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_VALUE_MESSAGE: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const NAME_PART_MESSAGE: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

fn is_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn is_label_word(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

type Cause = (String, &'static str, String);

fn invalid(field: &str, value: &str, message: &str) -> Cause {
    (field.to_owned(), "FieldValueInvalid", format!("Invalid value: {value:?}: {message}"))
}

fn required(field: &str) -> Cause {
    (field.to_owned(), "FieldValueRequired", "Required value".to_owned())
}

fn name_causes(name: &str) -> Vec<Cause> {
    if name.is_empty() || is_subdomain(name) {
        Vec::new()
    } else {
        let message = if name.len() > 253 { "must be no more than 253 characters" } else { SUBDOMAIN_MESSAGE };
        vec![invalid("metadata.name", name, message)]
    }
}

/// `ValidateLabels`: every key a qualified name, every value a label value.
fn label_causes(labels: Option<&Value>, field: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Some(map) = labels.and_then(Value::as_object) else { return causes };
    for (key, value) in map {
        let (prefix, name) = match key.split_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, key.as_str()),
        };
        if let Some(p) = prefix
            && !is_subdomain(p)
        {
            causes.push(invalid(field, key, &format!("prefix part {SUBDOMAIN_MESSAGE}")));
        }
        if name.is_empty() {
            causes.push(invalid(field, key, "name part must be non-empty"));
        } else if name.len() > 63 {
            causes.push(invalid(field, key, "name part must be no more than 63 characters"));
        } else if !is_label_word(name) {
            causes.push(invalid(field, key, NAME_PART_MESSAGE));
        }
        let value = value.as_str().unwrap_or_default();
        if value.len() > 63 {
            causes.push(invalid(field, value, "must be no more than 63 characters"));
        }
        if !value.is_empty() && !is_label_word(value) {
            causes.push(invalid(field, value, LABEL_VALUE_MESSAGE));
        }
    }
    causes
}

fn failure(res: Res, name: &str, causes: Vec<Cause>) -> Result<(), Failure> {
    if causes.is_empty() {
        return Ok(());
    }
    let causes = causes.iter().map(|(f, r, m)| (f.as_str(), *r, m.clone())).collect();
    Err(Failure::invalid(res, name, causes))
}

/// How Go prints a `map[string]string` in a validation message.
fn go_map(map: Option<&Value>) -> String {
    let inner: Vec<String> = map
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| format!("{k:?}:{:?}", v.as_str().unwrap_or_default())).collect())
        .unwrap_or_default();
    format!("map[string]string{{{}}}", inner.join(", "))
}

// ---------------------------------------------------------------------------------------------
// Pod specs
// ---------------------------------------------------------------------------------------------

fn object_at<'a>(parent: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !parent.get(key).is_some_and(Value::is_object) {
        parent[key] = json!({});
    }
    parent[key].as_object_mut().expect("made an object above")
}

/// `SetDefaults_PodSpec` and `SetDefaults_Container`, the fields a pod prints with.
fn default_pod_spec(spec: &mut Map<String, Value>) {
    let mut set = |key: &str, value: Value| {
        spec.entry(key.to_owned()).or_insert(value);
    };
    set("restartPolicy", json!("Always"));
    set("terminationGracePeriodSeconds", json!(30));
    set("dnsPolicy", json!("ClusterFirst"));
    set("securityContext", json!({}));
    set("schedulerName", json!("default-scheduler"));
    if let Some(containers) = spec.get_mut("containers").and_then(Value::as_array_mut) {
        for c in containers.iter_mut().filter_map(Value::as_object_mut) {
            let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
            // `:latest` or no tag pulls always.
            let tag = image.rsplit_once('/').map_or(image, |(_, last)| last).split_once(':').map(|(_, t)| t);
            let pull = if matches!(tag, None | Some("latest")) { "Always" } else { "IfNotPresent" };
            c.entry("imagePullPolicy").or_insert(json!(pull));
            c.entry("resources").or_insert(json!({}));
            c.entry("terminationMessagePath").or_insert(json!("/dev/termination-log"));
            c.entry("terminationMessagePolicy").or_insert(json!("File"));
        }
    }
}

/// What `ValidatePodSpec` rejects that matters here: no containers, a container without a
/// name or an image.
fn pod_spec_causes(spec: &Value, at: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    match spec.get("containers").and_then(Value::as_array) {
        Some(cs) if !cs.is_empty() => {
            for (i, c) in cs.iter().enumerate() {
                for field in ["name", "image"] {
                    if c.get(field).and_then(Value::as_str).is_none_or(str::is_empty) {
                        causes.push(required(&format!("{at}.containers[{i}].{field}")));
                    }
                }
            }
        }
        _ => causes.push(required(&format!("{at}.containers"))),
    }
    causes
}

/// `qos.GetPodQOS`, simplified to what tests write: no resources at all is BestEffort;
/// limits equal to requests for cpu and memory in every container is Guaranteed.
fn qos_class(spec: &Value) -> &'static str {
    let containers = spec.get("containers").and_then(Value::as_array).cloned().unwrap_or_default();
    let resources: Vec<&Value> = containers.iter().filter_map(|c| c.get("resources")).collect();
    let any = resources.iter().any(|r| {
        ["requests", "limits"].iter().any(|k| r.get(k).and_then(Value::as_object).is_some_and(|m| !m.is_empty()))
    });
    if !any {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        ["cpu", "memory"].iter().all(|r| {
            let limit = c.pointer(&format!("/resources/limits/{r}"));
            let request = c.pointer(&format!("/resources/requests/{r}")).or(limit);
            limit.is_some() && limit == request
        })
    });
    if guaranteed { "Guaranteed" } else { "Burstable" }
}

/// Carries the fields only the server (and the garbage collector) sets from the stored
/// object to an update: `status` (written through `/status` only) and the deletion marks.
fn keep_server_fields(obj: &mut Value, old: &Value) {
    match old.get("status") {
        Some(status) => obj["status"] = status.clone(),
        None => {
            if let Some(o) = obj.as_object_mut() {
                o.remove("status");
            }
        }
    }
    let meta = obj["metadata"].as_object_mut().expect("check_type made metadata");
    for field in ["deletionTimestamp", "deletionGracePeriodSeconds"] {
        match old["metadata"].get(field) {
            Some(v) => meta.insert(field.into(), v.clone()),
            None => meta.remove(field),
        };
    }
}

/// Pod create and update: defaults, the `Pending` status of a new pod, validation, and
/// the real server's refusal to change a pod's spec (beyond images).
pub(super) fn finish_pod(obj: &mut Value, old: Option<&Value>) -> Result<(), Failure> {
    let name = meta_str(obj, "name").to_owned();
    default_pod_spec(object_at(obj, "spec"));
    let mut causes = label_causes(obj.pointer("/metadata/labels"), "metadata.labels");
    match old {
        None => {
            causes.extend(name_causes(&name));
            let qos = qos_class(&obj["spec"]);
            obj["status"] = json!({"phase": "Pending", "qosClass": qos});
        }
        Some(old) => {
            keep_server_fields(obj, old);
            let images = |spec: &Value| {
                let mut spec = spec.clone();
                if let Some(cs) = spec.get_mut("containers").and_then(Value::as_array_mut) {
                    cs.iter_mut().filter_map(Value::as_object_mut).for_each(|c| {
                        c.remove("image");
                    });
                }
                spec
            };
            if images(&obj["spec"]) != images(&old["spec"]) {
                let message = "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";
                causes.push(("spec".to_owned(), "FieldValueForbidden", message.to_owned()));
            }
        }
    }
    causes.extend(pod_spec_causes(&obj["spec"], "spec"));
    match obj.pointer("/spec/restartPolicy").and_then(Value::as_str).unwrap_or_default() {
        "Always" | "OnFailure" | "Never" => {}
        other => causes.push((
            "spec.restartPolicy".to_owned(),
            "FieldValueNotSupported",
            format!("Unsupported value: {other:?}: supported values: \"Always\", \"OnFailure\", \"Never\""),
        )),
    }
    failure(Res::Pod, &name, causes)
}

// ---------------------------------------------------------------------------------------------
// Jobs
// ---------------------------------------------------------------------------------------------

/// Job create and update, as the real server does them:
///
/// * defaults (`SetDefaults_Job`): `completions` and `parallelism` 1, `backoffLimit` 6,
///   `completionMode: NonIndexed`, `suspend: false`, `podReplacementPolicy:
///   TerminatingOrFailed`, and the pod template's pod defaults (so a missing
///   `restartPolicy` is `Always`, which is then refused);
/// * the generated selector (unless `manualSelector`): `spec.selector.matchLabels`
///   `batch.kubernetes.io/controller-uid: <uid>`, and the labels `controller-uid`,
///   `batch.kubernetes.io/controller-uid`, `job-name`, `batch.kubernetes.io/job-name` on the
///   template; a Job without labels gets the template's;
/// * `status: {}` on create; an update keeps the stored status (it is written through
///   `/status`), and `generation` counts spec changes;
/// * validation: name, labels, the template's containers, `restartPolicy` (`OnFailure` or
///   `Never`), counts >= 0, a selector that is not the generated one, and on update an
///   immutable `spec.selector`, `spec.template` or `spec.completions`.
pub(super) fn finish_job(obj: &mut Value, old: Option<&Value>) -> Result<(), Failure> {
    let name = meta_str(obj, "name").to_owned();
    let uid = meta_str(obj, "uid").to_owned();
    let mut causes = Vec::new();
    {
        let spec = object_at(obj, "spec");
        let unset = |spec: &Map<String, Value>, key: &str| spec.get(key).is_none_or(Value::is_null);
        if unset(spec, "completions") && unset(spec, "parallelism") {
            spec.insert("completions".into(), json!(1));
        }
        for (key, value) in [
            ("parallelism", json!(1)),
            ("backoffLimit", json!(6)),
            ("completionMode", json!("NonIndexed")),
            ("suspend", json!(false)),
            ("podReplacementPolicy", json!("TerminatingOrFailed")),
        ] {
            if unset(spec, key) {
                spec.insert(key.into(), value);
            }
        }
    }
    if !obj["spec"].get("template").is_some_and(Value::is_object) {
        obj["spec"]["template"] = json!({});
    }
    object_at(&mut obj["spec"]["template"], "metadata");
    default_pod_spec(object_at(&mut obj["spec"]["template"], "spec"));
    let manual = obj.pointer("/spec/manualSelector").and_then(Value::as_bool) == Some(true);
    if !manual {
        let selector = object_at(&mut obj["spec"], "selector");
        let match_labels = selector.entry("matchLabels").or_insert_with(|| json!({}));
        if let Some(m) = match_labels.as_object_mut() {
            m.entry(CONTROLLER_UID).or_insert(json!(uid));
        }
        let labels = object_at(&mut obj["spec"]["template"]["metadata"], "labels");
        for (key, value) in
            [(CONTROLLER_UID, &uid), (LEGACY_CONTROLLER_UID, &uid), (JOB_NAME, &name), (LEGACY_JOB_NAME, &name)]
        {
            labels.entry(key).or_insert(json!(value));
        }
    }
    let template_labels = obj.pointer("/spec/template/metadata/labels").cloned();
    let meta = obj["metadata"].as_object_mut().expect("check_type made metadata");
    if meta.get("labels").and_then(Value::as_object).is_none_or(Map::is_empty)
        && let Some(labels) = template_labels.filter(|l| l.as_object().is_some_and(|m| !m.is_empty()))
    {
        meta.insert("labels".into(), labels);
    }

    match old {
        None => {
            causes.extend(name_causes(&name));
            obj["status"] = json!({});
            obj["metadata"]["generation"] = json!(1);
        }
        Some(old) => {
            keep_server_fields(obj, old);
            for field in ["selector", "template", "completions"] {
                let (new, was) = (&obj["spec"][field], &old["spec"][field]);
                if new != was {
                    let shown = if field == "selector" { go_map(new.get("matchLabels")) } else { new.to_string() };
                    causes.push(invalid(&format!("spec.{field}"), &shown, "field is immutable"));
                }
            }
            let g = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
            let g = if old.get("spec") == obj.get("spec") { g } else { g + 1 };
            obj["metadata"]["generation"] = json!(g);
        }
    }
    causes.extend(label_causes(obj.pointer("/metadata/labels"), "metadata.labels"));
    causes.extend(label_causes(obj.pointer("/spec/template/metadata/labels"), "spec.template.metadata.labels"));
    for field in ["parallelism", "completions", "backoffLimit"] {
        if let Some(n) = obj["spec"][field].as_i64()
            && n < 0
        {
            causes.push((
                format!("spec.{field}"),
                "FieldValueInvalid",
                format!("Invalid value: {n}: must be greater than or equal to 0"),
            ));
        }
    }
    if !manual {
        // `validateGeneratedSelector`: the template carries this Job's labels, and the
        // selector selects them and nothing else.
        let labels = obj.pointer("/spec/template/metadata/labels").cloned().unwrap_or_default();
        let mut expected = Map::new();
        for (key, want) in [(LEGACY_CONTROLLER_UID, &uid), (LEGACY_JOB_NAME, &name), (CONTROLLER_UID, &uid)] {
            let got = labels.get(key).and_then(Value::as_str).unwrap_or_default();
            if got != want.as_str() {
                let field = format!("spec.template.metadata.labels[{key}]");
                causes.push(invalid(&field, got, &format!("must be '{want}'")));
            }
            expected.insert(key.to_owned(), json!(want));
        }
        expected.insert(JOB_NAME.to_owned(), json!(name));
        let selector = &obj["spec"]["selector"];
        let selects =
            selector["matchLabels"].as_object().is_none_or(|m| m.iter().all(|(k, v)| expected.get(k) == Some(v)))
                && selector.get("matchExpressions").and_then(Value::as_array).is_none_or(Vec::is_empty);
        if !selects {
            let shown = go_map(selector.get("matchLabels"));
            causes.push(invalid("spec.selector", &shown, "`selector` not auto-generated"));
        }
    }
    causes.extend(pod_spec_causes(&obj["spec"]["template"]["spec"], "spec.template.spec"));
    let restart = obj.pointer("/spec/template/spec/restartPolicy").and_then(Value::as_str).unwrap_or_default();
    if !matches!(restart, "OnFailure" | "Never") {
        causes.push((
            "spec.template.spec.restartPolicy".to_owned(),
            "FieldValueNotSupported",
            format!("Unsupported value: {restart:?}: supported values: \"OnFailure\", \"Never\""),
        ));
    }
    failure(Res::Job, &name, causes)
}

// ---------------------------------------------------------------------------------------------
// Delete and the garbage collector
// ---------------------------------------------------------------------------------------------

/// An object marked for deletion whose last finalizer is gone: it is removed now.
pub(super) fn deletion_done(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null())
        && obj.pointer("/metadata/finalizers").and_then(Value::as_array).is_none_or(Vec::is_empty)
}

/// DELETE of a Job or a Pod, with `DeleteOptions` from the query or the body.
///
/// * `Background`: removed at once (Status `Success` for a Job; a Pod answers with the
///   deleted Pod, as the real pod registry does); the garbage collector removes the Job's
///   pods shortly after.
/// * `Foreground`: `deletionTimestamp` and the `foregroundDeletion` finalizer are set and the
///   object is answered (200); the collector deletes the pods, then the Job.
/// * `Orphan`: likewise with the `orphan` finalizer; the collector takes the Job out of its
///   pods' `ownerReferences`, then deletes the Job.
/// * None given: `Orphan` for a batch/v1 Job (the real server's backward-compatible
///   default, with its `Warning` header), `Background` for a Pod.
pub(super) fn delete(
    shared: &Arc<Shared>,
    res: Res,
    ns: &str,
    name: &str,
    params: &Params,
    body: &[u8],
) -> Result<Response, Failure> {
    let options: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| Failure::bad_request(format!("error decoding DeleteOptions: {e}")))?
    };
    let given = params
        .get("propagationPolicy")
        .map(str::to_owned)
        .or_else(|| options.get("propagationPolicy").and_then(Value::as_str).map(str::to_owned))
        .or_else(|| {
            let orphan =
                params.get("orphanDependents").map(|v| v == "true").or(options["orphanDependents"].as_bool())?;
            Some(if orphan { "Orphan" } else { "Background" }.to_owned())
        });
    let propagation = match given.as_deref() {
        Some(p) => Propagation::parse(p).ok_or_else(|| {
            let message = format!(
                "Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
            );
            Failure::invalid_kind(
                "DeleteOptions.meta.k8s.io",
                "meta.k8s.io",
                "DeleteOptions",
                "",
                vec![("propagationPolicy", "FieldValueNotSupported", message)],
            )
        })?,
        None if res == Res::Job => Propagation::Orphan,
        None => Propagation::Background,
    };
    let dry = params.dry_run() || options["dryRun"].as_array().is_some_and(|a| a.iter().any(|v| v == "All"));
    let mut st = shared.lock();
    let cur = st.get(res, ns, name).cloned().ok_or_else(|| Failure::not_found(res, name))?;
    for (field, what) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
        if let Some(want) = options.pointer(&format!("/preconditions/{field}")).and_then(Value::as_str) {
            let have = meta_str(&cur, field);
            if want != have {
                let message = format!(
                    "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: {what} in precondition: {want}, {what} in object meta: {have}",
                    res.qualified()
                );
                return Err(Failure::new(409, "Conflict", message, details(res, name)));
            }
        }
    }
    let finalizer = match propagation {
        Propagation::Background => None,
        Propagation::Foreground => Some(FOREGROUND),
        Propagation::Orphan => Some(ORPHAN),
    };
    let has_finalizers = cur.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
    let answer = if finalizer.is_none() && !has_finalizers {
        if !dry {
            st.remove(res, ns, name);
        }
        if res == Res::Pod {
            cur
        } else {
            let mut d = details(res, name).unwrap_or_default();
            d["uid"] = json!(meta_str(&cur, "uid"));
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d})
        }
    } else {
        // Marked for deletion; the finalizers' owners finish it.
        let mut obj = cur.clone();
        if obj.pointer("/metadata/deletionTimestamp").is_none_or(Value::is_null) {
            obj["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        }
        if let Some(f) = finalizer {
            let list = obj["metadata"].as_object_mut().expect("metadata").entry("finalizers").or_insert(json!([]));
            if let Some(list) = list.as_array_mut()
                && !list.iter().any(|x| x == f)
            {
                list.push(json!(f));
            }
        }
        if dry || obj == cur { obj } else { st.commit(res, ns, name, obj) }
    };
    let mut response = json_response(StatusCode::OK, &answer);
    if res == Res::Job && given.is_none() {
        response.headers_mut().insert("warning", HeaderValue::from_static(ORPHAN_WARNING));
    }
    Ok(response)
}

/// The garbage collector's loop: after each change (and [`GC_DELAY`]), one pass.
pub(super) async fn garbage_collector(shared: Arc<Shared>) {
    let mut changes = shared.lock().notify.subscribe();
    loop {
        if changes.changed().await.is_err() {
            return;
        }
        let delay = shared.lock().gc_delay;
        tokio::time::sleep(delay).await;
        changes.borrow_and_update();
        collect_garbage(&mut shared.lock());
    }
}

fn owner_uids(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter(|r| r["kind"] == "Job" && r["apiVersion"] == "batch/v1")
                .filter_map(|r| r["uid"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// One pass of the garbage collector over Jobs and their pods:
///
/// 1. a Job marked for deletion with `orphan`: its pods lose their owner reference to it;
///    with `foregroundDeletion`: its pods are deleted; then the finalizer goes, and with the
///    last one the Job;
/// 2. a pod whose every Job owner is gone (a Job deleted in the background) is deleted.
pub(super) fn collect_garbage(st: &mut State) {
    let jobs: Vec<(String, String, Value)> =
        st.of(Res::Job).map(|((_, ns, name), s)| (ns.clone(), name.clone(), s.obj.clone())).collect();
    let pods_of = |st: &State, ns: &str, uid: &str| -> Vec<(String, Value)> {
        st.of(Res::Pod)
            .filter(|((_, n, _), s)| n == ns && owner_uids(&s.obj).iter().any(|u| u == uid))
            .map(|((_, _, name), s)| (name.clone(), s.obj.clone()))
            .collect()
    };
    for (ns, name, job) in &jobs {
        if job.pointer("/metadata/deletionTimestamp").is_none_or(Value::is_null) {
            continue;
        }
        let finalizers: Vec<String> = job
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .map(|f| f.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default();
        let uid = meta_str(job, "uid");
        let mut done = Vec::new();
        if finalizers.iter().any(|f| f == ORPHAN) {
            for (pod_name, mut pod) in pods_of(st, ns, uid) {
                if let Some(refs) = pod.pointer_mut("/metadata/ownerReferences").and_then(Value::as_array_mut) {
                    refs.retain(|r| r["uid"] != uid);
                    if refs.is_empty()
                        && let Some(meta) = pod["metadata"].as_object_mut()
                    {
                        meta.remove("ownerReferences");
                    }
                }
                st.commit(Res::Pod, ns, &pod_name, pod);
            }
            done.push(ORPHAN);
        }
        if finalizers.iter().any(|f| f == FOREGROUND) {
            for (pod_name, _) in pods_of(st, ns, uid) {
                st.remove(Res::Pod, ns, &pod_name);
            }
            done.push(FOREGROUND);
        }
        if done.is_empty() {
            continue;
        }
        let mut job = job.clone();
        let left: Vec<&String> = finalizers.iter().filter(|f| !done.contains(&f.as_str())).collect();
        if left.is_empty() {
            st.remove(Res::Job, ns, name);
        } else {
            job["metadata"]["finalizers"] = json!(left);
            st.commit(Res::Job, ns, name, job);
        }
    }
    let live: HashSet<String> = st.of(Res::Job).map(|(_, s)| meta_str(&s.obj, "uid").to_owned()).collect();
    let dangling: Vec<(String, String)> = st
        .of(Res::Pod)
        .filter(|(_, s)| {
            let owners = owner_uids(&s.obj);
            !owners.is_empty() && owners.iter().all(|u| !live.contains(u))
        })
        .map(|((_, ns, name), _)| (ns.clone(), name.clone()))
        .collect();
    for (ns, name) in dangling {
        st.remove(Res::Pod, &ns, &name);
    }
}

// ---------------------------------------------------------------------------------------------
// Status writes
// ---------------------------------------------------------------------------------------------

impl State {
    /// PUT/PATCH of `/status`: only `status` is taken from `new` (a `resourceVersion` in it
    /// is a precondition); a write that changes nothing is not stored.
    pub(super) fn write_status(
        &mut self,
        res: Res,
        ns: &str,
        name: &str,
        new: &Value,
        dry_run: bool,
    ) -> Result<Value, Failure> {
        let cur = self.get(res, ns, name).cloned().ok_or_else(|| Failure::not_found(res, name))?;
        match new.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
            Some(rv) if !rv.is_empty() && rv != meta_str(&cur, "resourceVersion") => {
                return Err(Failure::conflict(res, name));
            }
            _ => {}
        }
        let mut obj = cur.clone();
        obj["status"] = new.get("status").cloned().unwrap_or_else(|| json!({}));
        if obj == cur || dry_run {
            return Ok(obj);
        }
        Ok(self.commit(res, ns, name, obj))
    }
}

// ---------------------------------------------------------------------------------------------
// Public API: what tests read and plant, and the store handle for the Job controller
// ---------------------------------------------------------------------------------------------

/// Jobs of a namespace by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JobCounts {
    /// Not finished (no `Complete` or `Failed` condition True), pending ones included.
    pub running: usize,
    /// Unfinished Jobs none of whose pods is Running or Succeeded (KEDA's default
    /// "pending").
    pub pending: usize,
    pub complete: usize,
    pub failed: usize,
}

/// An in-process handle on the fake's store, for controllers that run beside it (the test
/// Job controller in `tests/it/support/jobs.rs`). Reads and writes go through the same store
/// as the API (new resourceVersions, watch events, history) but are not requests: not
/// captured, not counted, not subject to faults or authorization.
#[derive(Clone)]
pub struct Store(Arc<Shared>);

impl Store {
    /// Changes whenever an object is written or deleted.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.0.lock().notify.subscribe()
    }

    /// Every Job (`ns` `None`: of every namespace), in creation order.
    pub fn jobs(&self, ns: Option<&str>) -> Vec<Value> {
        self.0.lock().all(Res::Job, ns)
    }

    /// Every Pod, in creation order.
    pub fn pods(&self, ns: Option<&str>) -> Vec<Value> {
        self.0.lock().all(Res::Pod, ns)
    }

    /// Creates a Pod as the Job controller does (defaults and validation of a POST).
    pub fn create_pod(&self, ns: &str, pod: Value) -> Result<Value, String> {
        self.0.lock().create(Res::Pod, ns, pod, false).map_err(|f| f.message)
    }

    /// Rewrites Pod `ns/name` (if it still exists with `uid`) as the scheduler and the
    /// kubelet do: `change` may set anything (`spec.nodeName`, `status`). `None` if it is gone.
    pub fn write_pod(&self, ns: &str, name: &str, uid: &str, change: impl FnOnce(&mut Value)) -> Option<Value> {
        self.0.lock().rewrite(Res::Pod, ns, name, uid, change)
    }

    /// Rewrites the status of Job `ns/name` (if it still exists with `uid`), as the Job
    /// controller does through `/status`. `None` if it is gone.
    pub fn write_job_status(&self, ns: &str, name: &str, uid: &str, change: impl FnOnce(&mut Value)) -> Option<Value> {
        self.0.lock().rewrite(Res::Job, ns, name, uid, |job| {
            let mut status = job.get("status").cloned().unwrap_or_else(|| json!({}));
            change(&mut status);
            job["status"] = status;
        })
    }

    /// Deletes Pod `ns/name` at once (if it still exists with `uid`).
    pub fn delete_pod(&self, ns: &str, name: &str, uid: &str) -> bool {
        let mut st = self.0.lock();
        if st.get(Res::Pod, ns, name).is_some_and(|p| meta_str(p, "uid") == uid) {
            st.remove(Res::Pod, ns, name);
            true
        } else {
            false
        }
    }

    /// Deletes Job `ns/name` with `propagation` as a client would (the TTL controller).
    pub fn delete_job(&self, ns: &str, name: &str, propagation: Propagation) -> bool {
        delete_job(&self.0, ns, name, propagation)
    }
}

fn delete_job(shared: &Arc<Shared>, ns: &str, name: &str, propagation: Propagation) -> bool {
    let policy = match propagation {
        Propagation::Background => "Background",
        Propagation::Foreground => "Foreground",
        Propagation::Orphan => "Orphan",
    };
    let params = Params(vec![("propagationPolicy".into(), policy.into())]);
    delete(shared, Res::Job, ns, name, &params, b"").is_ok()
}

impl State {
    /// The stored objects of one resource (a range of the map, not a scan of it: the
    /// collector runs after every write, also in the benchmark's store of thousands).
    fn of(&self, res: Res) -> impl Iterator<Item = (&super::Key, &super::Stored)> {
        self.objects.range((res, String::new(), String::new())..).take_while(move |((r, _, _), _)| *r == res)
    }

    fn all(&self, res: Res, ns: Option<&str>) -> Vec<Value> {
        let mut found: Vec<&super::Stored> =
            self.of(res).filter(|((_, n, _), _)| ns.is_none_or(|ns| ns == n)).map(|(_, s)| s).collect();
        found.sort_by_key(|s| s.seq);
        found.into_iter().map(|s| s.obj.clone()).collect()
    }

    fn rewrite(&mut self, res: Res, ns: &str, name: &str, uid: &str, change: impl FnOnce(&mut Value)) -> Option<Value> {
        let cur = self.get(res, ns, name).filter(|o| meta_str(o, "uid") == uid)?.clone();
        let mut obj = cur.clone();
        change(&mut obj);
        if obj == cur {
            return Some(cur);
        }
        if deletion_done(&obj) {
            self.remove(res, ns, name);
            return Some(obj);
        }
        Some(self.commit(res, ns, name, obj))
    }
}

impl FakeKube {
    /// The in-process store handle (for the test Job controller).
    pub fn store(&self) -> Store {
        Store(self.shared.clone())
    }

    /// How long the garbage collector waits after a change before removing the pods of a
    /// deleted Job (default 100 ms).
    pub fn set_gc_delay(&self, delay: Duration) {
        self.shared.lock().gc_delay = delay;
    }

    /// The Jobs of `ns`, in creation order, as the API server would return them.
    pub fn jobs(&self, ns: &str) -> Vec<Value> {
        self.shared.lock().all(Res::Job, Some(ns))
    }

    /// The Pods of `ns`, in creation order.
    pub fn pods(&self, ns: &str) -> Vec<Value> {
        self.shared.lock().all(Res::Pod, Some(ns))
    }

    pub fn job(&self, ns: &str, name: &str) -> Option<Value> {
        self.shared.lock().get(Res::Job, ns, name).cloned()
    }

    pub fn pod(&self, ns: &str, name: &str) -> Option<Value> {
        self.shared.lock().get(Res::Pod, ns, name).cloned()
    }

    /// The pods of Job `ns/name` (by its `batch.kubernetes.io/controller-uid`), in creation order.
    pub fn pods_of(&self, ns: &str, job: &str) -> Vec<Value> {
        let st = self.shared.lock();
        let Some(uid) = st.get(Res::Job, ns, job).map(|j| meta_str(j, "uid").to_owned()) else { return Vec::new() };
        st.all(Res::Pod, Some(ns))
            .into_iter()
            .filter(|p| {
                p.pointer(&format!("/metadata/labels/{}", CONTROLLER_UID.replace('/', "~1"))) == Some(&json!(uid))
            })
            .collect()
    }

    /// The Jobs of `ns` counted by state (see [`JobCounts`]).
    pub fn job_counts(&self, ns: &str) -> JobCounts {
        let st = self.shared.lock();
        let pods = st.all(Res::Pod, Some(ns));
        let mut counts = JobCounts::default();
        for job in st.all(Res::Job, Some(ns)) {
            match finished(&job) {
                Some(true) => counts.failed += 1,
                Some(false) => counts.complete += 1,
                None => {
                    counts.running += 1;
                    let uid = meta_str(&job, "uid");
                    let started = pods.iter().any(|p| {
                        owner_uids(p).iter().any(|u| u == uid)
                            && matches!(
                                p.pointer("/status/phase").and_then(Value::as_str),
                                Some("Running" | "Succeeded")
                            )
                    });
                    if !started {
                        counts.pending += 1;
                    }
                }
            }
        }
        counts
    }

    /// Unfinished Jobs in `ns` (pending included).
    pub fn running_jobs(&self, ns: &str) -> usize {
        self.job_counts(ns).running
    }

    pub fn complete_jobs(&self, ns: &str) -> usize {
        self.job_counts(ns).complete
    }

    pub fn failed_jobs(&self, ns: &str) -> usize {
        self.job_counts(ns).failed
    }

    /// Creates a Job in `ns` as `kubectl create` would (defaults, generated selector,
    /// validation; `generateName` works), e.g. to plant a Job of an old template. Returns
    /// its name. Panics if the server would refuse it.
    pub fn create_job(&self, ns: &str, manifest: Value) -> String {
        let created = self
            .shared
            .lock()
            .create(Res::Job, ns, manifest, false)
            .unwrap_or_else(|f| panic!("create Job in {ns}: {}", f.message));
        meta_str(&created, "name").to_owned()
    }

    /// Deletes Job `ns/name` as `kubectl delete --cascade=...` would. False if there was none.
    pub fn delete_job(&self, ns: &str, name: &str, propagation: Propagation) -> bool {
        delete_job(&self.shared, ns, name, propagation)
    }

    /// Sets condition `type_` of Job `ns/name` to `status` (`"True"`/`"False"`), as the Job
    /// controller would, with `lastTransitionTime` `at` (default now). A `Complete` True
    /// also sets `completionTime` (and `succeeded` 1 if it had none); a `Failed` True sets
    /// `failed` 1 if it had none. Both clear `active`. Panics if the Job is missing.
    pub fn set_job_condition(&self, ns: &str, name: &str, type_: &str, status: &str, at: Option<jiff::Timestamp>) {
        let at = at.unwrap_or_else(jiff::Timestamp::now).strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let (reason, message) = match type_ {
            "Complete" | "SuccessCriteriaMet" => ("CompletionsReached", "Reached expected number of succeeded pods"),
            "Failed" | "FailureTarget" => ("BackoffLimitExceeded", "Job has reached the specified backoff limit"),
            "Suspended" => ("JobSuspended", "Job suspended"),
            _ => ("SetByTest", "set by FakeKube::set_job_condition"),
        };
        let condition = json!({
            "type": type_, "status": status, "reason": reason, "message": message,
            "lastProbeTime": at, "lastTransitionTime": at,
        });
        let mut st = self.shared.lock();
        let uid = st.get(Res::Job, ns, name).map(|j| meta_str(j, "uid").to_owned());
        let uid = uid.unwrap_or_else(|| panic!("set_job_condition: no Job {ns}/{name}"));
        st.rewrite(Res::Job, ns, name, &uid, |job| {
            let job_status = object_at(job, "status");
            let conditions = job_status.entry("conditions").or_insert(json!([]));
            if let Some(list) = conditions.as_array_mut() {
                list.retain(|c| c["type"] != type_);
                list.push(condition);
            }
            if status == "True" && matches!(type_, "Complete" | "Failed") {
                job_status.remove("active");
                let count = if type_ == "Complete" { "succeeded" } else { "failed" };
                job_status.entry(count).or_insert(json!(1));
                if type_ == "Complete" {
                    job_status.insert("completionTime".into(), json!(at));
                }
            }
        });
    }

    /// Every Job created, finished and deleted (in any namespace), in order.
    pub fn job_history(&self) -> Vec<JobRecord> {
        self.shared.lock().job_log.clone()
    }

    /// The Jobs created in `ns`: names and when, in order (names are unique by construction;
    /// compare the count with the Jobs wanted to find duplicates).
    pub fn job_creations(&self, ns: &str) -> Vec<(String, Instant)> {
        let st = self.shared.lock();
        st.job_log
            .iter()
            .filter(|r| r.event == JobEvent::Created && r.namespace == ns)
            .map(|r| (r.name.clone(), r.at))
            .collect()
    }

    /// The most Jobs of `ns` matching `label_selector` (`""`: all) that were unfinished at
    /// the same time, over the whole history: a Job counts from its creation until it
    /// finished or was deleted.
    pub fn max_jobs_at_once(&self, ns: &str, label_selector: &str) -> usize {
        let params = Params(vec![("labelSelector".into(), label_selector.into())]);
        let selector = Selector::from_params(Res::Job, &params).unwrap_or_else(|f| panic!("{}", f.message));
        let st = self.shared.lock();
        let mut open: HashSet<&str> = HashSet::new();
        let mut most = 0;
        for r in st.job_log.iter().filter(|r| r.namespace == ns) {
            if !selector.matches(&json!({"metadata": {"labels": r.labels}})) {
                continue;
            }
            match r.event {
                JobEvent::Created => {
                    open.insert(&r.uid);
                }
                JobEvent::Finished { .. } | JobEvent::Deleted => {
                    open.remove(r.uid.as_str());
                }
            }
            most = most.max(open.len());
        }
        most
    }
}
