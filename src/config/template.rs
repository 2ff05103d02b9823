//! A job rule's template: the batch/v1 Job manifest in a file beside the rule file, read
//! at start and at every reload (through [`super::file`]'s bounded reader), checked the
//! way the API server would refuse it, and normalised into a [`JobTemplate`] whose hash
//! is the `sqscale.io/template-hash` label (`../shared/spec/scaledjob.md` §6, §12.6).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use sha2::Digest;

use super::JobTemplate;
use super::file;

/// Hex digits of the template hash: 40 bits, a valid label value, and no two templates
/// of one rule will meet on it.
const HASH_LEN: usize = 10;

/// Labels the Job controller puts on a Job's pod template (and its selector): a manifest
/// saved with `kubectl get job -o yaml` carries them, and creating a Job with them fails.
const CONTROLLER_LABELS: [&str; 4] =
    ["controller-uid", "batch.kubernetes.io/controller-uid", "job-name", "batch.kubernetes.io/job-name"];

/// Why a template cannot be used: its file (as resolved), the line where one is known,
/// and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateError {
    pub path: PathBuf,
    pub line: Option<u64>,
    pub message: String,
}

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "{} line {line}: {}", self.path.display(), self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for TemplateError {}

/// `given` (the `template` key) resolved against `base` (the rule file's folder): an
/// absolute path stays as it is.
pub fn resolve(given: &Path, base: &Path) -> PathBuf {
    if given.is_absolute() { given.to_owned() } else { base.join(given) }
}

/// Reads and checks the template `given`, relative to `base`. The [`JobTemplate`]'s
/// `path` is `given`, as written in the rule file (what `check` prints back).
pub fn load(given: &Path, base: &Path) -> Result<JobTemplate, TemplateError> {
    let resolved = resolve(given, base);
    let fail = |message: String| TemplateError { path: resolved.clone(), line: None, message };
    let text = file::read(&resolved, file::READ_DEADLINE).map_err(|e| match e {
        file::ReadError::TooLarge => fail(format!("larger than {} MiB: not a Job manifest", file::MAX_BYTES >> 20)),
        other => fail(crate::error::chain(&other)),
    })?;
    parse(&text, given).map_err(|mut e| {
        e.path = resolved.clone();
        e
    })
}

/// Checks and normalises the manifest `text`; errors name `path`.
pub fn parse(text: &str, path: &Path) -> Result<JobTemplate, TemplateError> {
    let at = |line: Option<u64>, message: String| TemplateError { path: path.to_owned(), line, message };
    let docs: Vec<Value> = serde_saphyr::from_multiple::<Value>(text).map_err(|e| {
        let line = e.location().map(|l| l.line()).filter(|l| *l > 0);
        at(line, yaml_message(&e.to_string()))
    })?;
    let mut docs: Vec<Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
    if docs.len() != 1 {
        return Err(at(None, format!("holds {} YAML documents; a template is one batch/v1 Job", docs.len())));
    }
    let mut job = docs.remove(0);
    let Some(top) = job.as_object() else {
        return Err(at(None, "is not a mapping: a template is a batch/v1 Job manifest".to_owned()));
    };
    let line_of = |key: &str| line_of(text, key);
    let api_version = top.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = top.get("kind").and_then(Value::as_str).unwrap_or_default();
    if api_version != "batch/v1" {
        return Err(at(line_of("apiVersion"), format!("apiVersion is {api_version:?}: a template is a batch/v1 Job")));
    }
    if kind != "Job" {
        return Err(at(line_of("kind"), format!("kind is {kind:?}: a template is a batch/v1 Job")));
    }
    let containers = job.pointer("/spec/template/spec/containers").and_then(Value::as_array);
    if containers.is_none_or(|c| c.is_empty()) {
        return Err(at(None, "spec.template.spec.containers is missing or empty: a Job needs a container".to_owned()));
    }
    match job.pointer("/spec/template/spec/restartPolicy") {
        None | Some(Value::Null) => {}
        Some(Value::String(p)) if p.is_empty() || p == "OnFailure" || p == "Never" => {}
        Some(other) => {
            let shown = other.as_str().map_or_else(|| other.to_string(), |s| format!("{s:?}"));
            return Err(at(
                line_of("restartPolicy"),
                format!(
                    "spec.template.spec.restartPolicy is {shown}: a Job's pods take only OnFailure or Never (the Job API rejects Always)"
                ),
            ));
        }
    }
    if let Err(e) = serde_json::from_value::<k8s_openapi::api::batch::v1::Job>(job.clone()) {
        return Err(at(None, format!("not a valid batch/v1 Job: {e}")));
    }
    normalise(&mut job);
    let hash = hash(&job);
    Ok(JobTemplate { path: path.to_owned(), job, hash })
}

/// The manifest as sqscale creates it: `metadata` cut to labels and annotations (the
/// name, namespace, uid and the rest are the API server's or sqscale's), no `status`, an
/// empty `restartPolicy` made `OnFailure` (KEDA's rule), and the Job controller's own
/// labels and selector, which a saved Job carries, left out.
fn normalise(job: &mut Value) {
    let Some(top) = job.as_object_mut() else { return };
    top.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "spec"));
    let mut kept = Map::new();
    if let Some(Value::Object(metadata)) = top.get("metadata") {
        for key in ["labels", "annotations"] {
            if let Some(v @ Value::Object(m)) = metadata.get(key)
                && !m.is_empty()
            {
                kept.insert(key.to_owned(), v.clone());
            }
        }
    }
    top.insert("metadata".to_owned(), Value::Object(kept));
    let Some(Value::Object(spec)) = top.get_mut("spec") else { return };
    if spec.get("manualSelector").and_then(Value::as_bool) != Some(true) {
        spec.remove("selector");
    }
    let Some(Value::Object(template)) = spec.get_mut("template") else { return };
    if let Some(Value::Object(labels)) = template.get_mut("metadata").and_then(|m| m.get_mut("labels")) {
        labels.retain(|k, _| !CONTROLLER_LABELS.contains(&k.as_str()));
    }
    if let Some(Value::Object(pod)) = template.get_mut("spec") {
        let empty = pod.get("restartPolicy").is_none_or(|p| p.is_null() || p.as_str() == Some(""));
        if empty {
            pod.insert("restartPolicy".to_owned(), Value::String("OnFailure".to_owned()));
        }
    }
}

/// The first [`HASH_LEN`] hex digits of the SHA-256 of `job` as JSON with its keys
/// sorted: the same for any layout of the same manifest (§12.6: reformatting the file
/// is no rollout).
fn hash(job: &Value) -> String {
    let mut text = String::new();
    canonical(job, &mut text);
    let digest = sha2::Sha256::digest(text.as_bytes());
    hex::encode(digest)[..HASH_LEN].to_owned()
}

/// JSON with every object's keys in order, whatever order the map keeps them in.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The line of the only line of `text` that sets `key` (`key:` at the start of the line,
/// after indentation or a list dash); `None` if none or several do.
fn line_of(text: &str, key: &str) -> Option<u64> {
    let prefix = format!("{key}:");
    let mut found = text.lines().enumerate().filter(|(_, l)| {
        let l = l.trim_start().trim_start_matches("- ").trim_start();
        l.starts_with(&prefix) || l.starts_with(&format!("\"{key}\":"))
    });
    let first = found.next()?;
    if found.next().is_some() { None } else { Some(first.0 as u64 + 1) }
}

/// The YAML parser's message: its first line, without its `line L column C` head (the
/// error says where).
fn yaml_message(s: &str) -> String {
    let first = s.lines().next().unwrap_or_default().trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    match first.split_once(": ") {
        Some((head, rest)) if head.starts_with("line ") && head.contains(" column ") => rest.to_owned(),
        _ => first.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{TemplateError, load, parse};

    const JOB: &str = "\
apiVersion: batch/v1
kind: Job
metadata:
  name: encode
  namespace: media
  uid: 0b4f
  resourceVersion: \"12\"
  labels:
    app: encode
  annotations:
    team: media
spec:
  backoffLimit: 2
  template:
    spec:
      containers:
        - name: encode
          image: example/encode:1
          args: [\"--fast\"]
status:
  active: 1
";

    fn error(text: &str) -> TemplateError {
        parse(text, Path::new("jobs/encode.yaml")).expect_err("template should be refused")
    }

    /// The metadata is cut to labels and annotations, the status dropped, an unset
    /// restartPolicy made OnFailure; the hash is 10 hex digits, a label value.
    #[test]
    fn a_job_is_normalised() {
        let t = parse(JOB, Path::new("jobs/encode.yaml")).unwrap();
        assert_eq!(t.path, Path::new("jobs/encode.yaml"));
        assert_eq!(
            t.job["metadata"],
            serde_json::json!({"labels": {"app": "encode"}, "annotations": {"team": "media"}})
        );
        assert!(t.job.get("status").is_none());
        assert_eq!(t.job["spec"]["backoffLimit"], 2);
        assert_eq!(t.job["spec"]["template"]["spec"]["restartPolicy"], "OnFailure");
        assert_eq!(t.hash.len(), 10);
        assert!(t.hash.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{}", t.hash);
    }

    /// A Job saved with `kubectl get -o yaml` carries the Job controller's selector and
    /// pod labels; they are left out (creating a Job with them fails), and then it hashes
    /// as the manifest it came from.
    #[test]
    fn a_saved_job_loses_the_controllers_selector_and_labels() {
        let saved = JOB.replace(
            "  template:\n",
            "  selector:\n    matchLabels:\n      batch.kubernetes.io/controller-uid: 0b4f\n  template:\n    metadata:\n      labels:\n        batch.kubernetes.io/controller-uid: 0b4f\n        controller-uid: 0b4f\n        job-name: encode\n        batch.kubernetes.io/job-name: encode\n        app: encode\n",
        );
        let t = parse(&saved, Path::new("x.yaml")).unwrap();
        assert!(t.job["spec"].get("selector").is_none());
        assert_eq!(t.job["spec"]["template"]["metadata"]["labels"], serde_json::json!({"app": "encode"}));
    }

    /// Reformatting is not a rollout (spec §12.6): another key order, flow style,
    /// comments, quotes and the dropped metadata give the same hash; a change of the spec
    /// or of a label gives another.
    #[test]
    fn the_hash_follows_the_job_not_the_file() {
        let hash = |text: &str| parse(text, Path::new("x.yaml")).unwrap().hash;
        let base = hash(JOB);
        let reformatted = "\
# the encoder
kind: 'Job'
apiVersion: \"batch/v1\"
spec:
  template: {spec: {containers: [{image: example/encode:1, name: encode, args: [--fast]}]}}
  backoffLimit: 2   # twice
metadata: {annotations: {team: media}, labels: {app: encode}, name: other-name}
";
        assert_eq!(hash(reformatted), base);
        assert_eq!(hash(&JOB.replace("restartPolicy", "x")), base, "no restartPolicy either way");
        assert_eq!(
            hash(&JOB.replace("      containers:", "      restartPolicy: OnFailure\n      containers:")),
            base,
            "OnFailure written out is the default"
        );
        assert_ne!(hash(&JOB.replace("backoffLimit: 2", "backoffLimit: 3")), base, "spec");
        assert_ne!(hash(&JOB.replace("app: encode", "app: encode2")), base, "label");
        assert_ne!(hash(&JOB.replace("team: media", "team: video")), base, "annotation");
    }

    /// What the Job API would refuse, or what is no Job at all, is refused with the file
    /// and, where known, the line.
    #[test]
    fn unsuitable_templates_are_refused_with_file_and_line() {
        let e = error("apiVersion: batch/v1\nkind: Job\nspec:\n  template: [\n");
        assert_eq!((e.path.as_path(), e.line.is_some()), (Path::new("jobs/encode.yaml"), true), "{e}");
        assert!(e.to_string().starts_with("jobs/encode.yaml line "), "{e}");

        let e = error("apiVersion: batch/v1\nkind: Job\nspec:\n  backoffLimit: 1\n   bad: indent\n");
        assert!(e.line.is_some(), "{e}");

        let e = error(&JOB.replace("kind: Job", "kind: CronJob"));
        assert_eq!(e.to_string(), "jobs/encode.yaml line 2: kind is \"CronJob\": a template is a batch/v1 Job");
        let e = error(&JOB.replace("batch/v1", "apps/v1"));
        assert_eq!(e.to_string(), "jobs/encode.yaml line 1: apiVersion is \"apps/v1\": a template is a batch/v1 Job");
        let e = error(&JOB.replace("      containers:", "      restartPolicy: Always\n      containers:"));
        assert_eq!(
            e.to_string(),
            "jobs/encode.yaml line 16: spec.template.spec.restartPolicy is \"Always\": a Job's pods take only OnFailure or Never (the Job API rejects Always)"
        );
        let e = error("apiVersion: batch/v1\nkind: Job\nspec:\n  template:\n    spec: {}\n");
        assert_eq!(
            e.to_string(),
            "jobs/encode.yaml: spec.template.spec.containers is missing or empty: a Job needs a container"
        );
        let e = error(&JOB.replace("backoffLimit: 2", "backoffLimit: many"));
        assert!(e.to_string().starts_with("jobs/encode.yaml: not a valid batch/v1 Job: invalid type"), "{e}");
        let e = error(&format!("{JOB}---\n{JOB}"));
        assert_eq!(e.to_string(), "jobs/encode.yaml: holds 2 YAML documents; a template is one batch/v1 Job");
        let e = error("- a\n- b\n");
        assert_eq!(e.to_string(), "jobs/encode.yaml: is not a mapping: a template is a batch/v1 Job manifest");
    }

    /// A missing file names the path as resolved against the rule file's folder; an
    /// endless one stops at the reader's cap.
    #[test]
    fn a_missing_or_endless_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = load(Path::new("jobs/none.yaml"), dir.path()).unwrap_err();
        assert_eq!(e.path, dir.path().join("jobs/none.yaml"));
        assert!(e.message.starts_with("No such file"), "{e}");
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.yaml")).unwrap();
        let e = load(Path::new("zero.yaml"), dir.path()).unwrap_err();
        assert_eq!(e.message, "larger than 16 MiB: not a Job manifest");
        let absolute = dir.path().join("abs.yaml");
        std::fs::write(&absolute, JOB).unwrap();
        let t = load(&absolute, Path::new("/elsewhere")).unwrap();
        assert_eq!(t.path, absolute, "an absolute path is taken as it is");
    }
}
