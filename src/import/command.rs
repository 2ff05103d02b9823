//! The `import-keda` command: reads KEDA objects from files, standard input or the
//! cluster, imports them, and writes the rule file (or, with `--diff`, what it would
//! change in an existing one).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use serde_json::Value;

use super::{Import, Options};
use crate::cli::{EX_CONFIG, EX_DATAERR};
use crate::workload::kube::Kube;

/// Bound on each request to the API server (a list of every ScaledObject of a large
/// cluster is one request).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Files of KEDA objects, YAML (any number of documents, `kind: List`) or JSON; `-`
    /// reads standard input. Without files, the ScaledObjects, ScaledJobs,
    /// TriggerAuthentications and ClusterTriggerAuthentications are listed from the cluster.
    #[arg(value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Kubeconfig (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, value_name = "PATH", conflicts_with = "files")]
    kubeconfig: Option<PathBuf>,
    /// Kube context (default: the kubeconfig's current-context).
    #[arg(long, value_name = "CTX", conflicts_with = "files")]
    context: Option<String>,
    /// The namespace to list (default: the context's namespace, as kubectl); with files,
    /// the namespace of objects that name none (default: default).
    #[arg(long, short = 'n', value_name = "NS")]
    namespace: Option<String>,
    /// List every namespace.
    #[arg(long, short = 'A', conflicts_with_all = ["namespace", "files"])]
    all_namespaces: bool,
    /// Write the rule file here instead of standard output.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
    /// Show what would change against this rule file (by rule name), instead of printing
    /// the rules.
    #[arg(long, value_name = "CONFIG", conflicts_with = "output")]
    diff: Option<PathBuf>,
    /// Where each ScaledJob's Job template is written, as `<job rule>.yaml` (default: the
    /// folder of --output, else the current directory). The rule file names each one
    /// relative to its own folder: with output on standard output, save the rule file in
    /// the current directory.
    #[arg(long, value_name = "DIR", conflicts_with = "diff")]
    template_dir: Option<PathBuf>,
}

/// Runs the command; returns its exit code.
pub fn main(args: Args) -> ExitCode {
    let (objects, options, origin) = if args.files.is_empty() {
        match from_cluster(&args) {
            Ok(read) => read,
            Err(e) => {
                eprintln!("error: {}", crate::error::chain(&e));
                return ExitCode::FAILURE;
            }
        }
    } else {
        let options = Options { default_namespace: args.namespace.clone().unwrap_or_else(|| "default".to_owned()) };
        match from_files(&args.files) {
            Ok(objects) => {
                let names: Vec<String> = args.files.iter().map(|f| display(f)).collect();
                (objects, options, names.join(", "))
            }
            Err(e) => {
                eprintln!("error: {}", crate::error::chain(&e));
                return ExitCode::from(EX_DATAERR);
            }
        }
    };
    let mut import = super::import(&objects, &options);
    for message in import.messages() {
        eprintln!("warning: {message}");
    }
    if import.rules.is_empty() && import.jobs.is_empty() {
        eprintln!(
            "error: {origin}: no rule imported: no ScaledObject or ScaledJob with a usable {} trigger",
            super::SQS_TRIGGER
        );
        return ExitCode::from(EX_DATAERR);
    }
    let templates = template_dir(&args);
    import.place_templates(&templates.named_as);
    let text = import.to_toml();
    // What is printed must be what `sqscale check` takes: a failure here is a bug.
    if let Err(e) = import.check() {
        eprintln!("error: the imported rules do not validate (a bug in import-keda): {e}");
        return ExitCode::FAILURE;
    }
    summary(&import, &origin);
    if let Some(path) = &args.diff {
        let existing = match crate::config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EX_CONFIG);
            }
        };
        // In that file, the imported rules would take its [aws] settings (a region, an
        // endpoint, a role): compare them as they would run there.
        let aws = &existing.aws;
        let placed = crate::config::raw::RawConfig {
            aws: Some(crate::config::raw::RawAws {
                region: aws.region.clone(),
                endpoint_url: aws.endpoint_url.clone(),
                profile: aws.profile.clone(),
                role_arn: aws.role_arn.clone(),
                external_id: aws.external_id.clone(),
                direct_path: Some(aws.direct_path),
            }),
            ..import.config()
        };
        let failed = |e: &dyn std::fmt::Display| {
            eprintln!("error: the imported rules with the [aws] settings of {}: {e}", path.display());
            ExitCode::FAILURE
        };
        // Rules only: the imported job rules' templates are not written with --diff.
        let placed = crate::config::raw::RawConfig { job: Vec::new(), ..placed };
        if placed.rule.is_empty() {
            eprintln!("error: --diff compares rules, and the input gives job rules only");
            return ExitCode::from(EX_DATAERR);
        }
        let placed = match toml::to_string(&placed) {
            Ok(text) => match crate::config::from_str(&text) {
                Ok(c) => c,
                Err(e) => return failed(&e),
            },
            Err(e) => return failed(&e),
        };
        let mut out = std::io::stdout().lock();
        for line in super::diff::diff(&existing, &placed) {
            let _ = writeln!(out, "{line}");
        }
        return ExitCode::SUCCESS;
    }
    if let Err(e) = write_templates(&import, &templates.dir) {
        eprintln!("error: {}", crate::error::chain(&e));
        return ExitCode::FAILURE;
    }
    let (written, to) = match &args.output {
        Some(path) => (std::fs::write(path, &text), path.display().to_string()),
        None => (std::io::stdout().lock().write_all(text.as_bytes()), "standard output".to_owned()),
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {to}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where the templates go, and how the rule file names that folder.
struct TemplateDir {
    /// The folder the files are written to.
    dir: PathBuf,
    /// The same folder as the rule file's `template` keys give it: relative to the
    /// output's folder when inside it, else as given (relative to the current directory,
    /// where a rule file on standard output is saved).
    named_as: PathBuf,
}

fn template_dir(args: &Args) -> TemplateDir {
    let output_dir = args.output.as_deref().map(|o| match o.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    });
    match (&args.template_dir, output_dir) {
        (None, Some(out)) => TemplateDir { dir: out, named_as: PathBuf::new() },
        (None, None) => TemplateDir { dir: PathBuf::from("."), named_as: PathBuf::new() },
        (Some(dir), None) => TemplateDir { dir: dir.clone(), named_as: dir.clone() },
        (Some(dir), Some(out)) => {
            let named_as = relative_to(dir, &out).unwrap_or_else(|| std::path::absolute(dir).unwrap_or(dir.clone()));
            TemplateDir { dir: dir.clone(), named_as }
        }
    }
}

/// `dir` as a path from `base`, when `dir` lies inside it.
fn relative_to(dir: &std::path::Path, base: &std::path::Path) -> Option<PathBuf> {
    let dir = std::path::absolute(dir).ok()?;
    let base = std::path::absolute(base).ok()?;
    dir.strip_prefix(&base).ok().map(std::path::Path::to_owned)
}

/// Writes each job rule's template into `dir` (created if missing).
fn write_templates(import: &Import, dir: &std::path::Path) -> Result<(), ReadError> {
    if import.jobs.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| ReadError::File(dir.display().to_string(), e))?;
    for j in &import.jobs {
        let path = dir.join(&j.file);
        std::fs::write(&path, &j.template).map_err(|e| ReadError::File(path.display().to_string(), e))?;
        eprintln!("{}: the Job template of {}", path.display(), j.source);
    }
    Ok(())
}

fn summary(import: &Import, origin: &str) {
    let n = import.rules.len();
    let rejected = import.rejected.len();
    let mut line = format!("{origin}: {n} rule{} imported", if n == 1 { "" } else { "s" });
    match import.jobs.len() {
        0 => {}
        1 => line.push_str(", 1 job rule"),
        j => line.push_str(&format!(", {j} job rules")),
    }
    if rejected > 0 {
        line.push_str(&format!(", {rejected} ScaledObject{} not", if rejected == 1 { "" } else { "s" }));
    }
    eprintln!("{line}");
}

fn display(path: &std::path::Path) -> String {
    if path.as_os_str() == "-" { "<stdin>".to_owned() } else { path.display().to_string() }
}

/// Why the KEDA objects could not be read: from a file, or from the cluster.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("{0}")]
    File(String, #[source] std::io::Error),
    #[error("{0}: {1}")]
    Parse(String, super::ParseError),
    #[error("starting the runtime")]
    Runtime(#[source] std::io::Error),
    #[error("no Kubernetes client")]
    Client(#[source] crate::workload::kube::KubeError),
    /// What was being done, and the timeout in seconds.
    #[error("{0}: no answer within {1}s")]
    Timeout(String, u64),
    /// What was being done; the Status message.
    #[error("{0}: the API server does not serve it; is KEDA installed? ({1})")]
    NotServed(String, String),
    #[error("{0}: forbidden: import-keda needs get and list on keda.sh ({1})")]
    Forbidden(String, String),
    #[error("{0}")]
    Api(String, #[source] crate::workload::error::KubeFailure),
}

/// Every object of every file, in order. A file that cannot be read or parsed is an
/// error naming it (and the line, where the parser gives one).
fn from_files(files: &[PathBuf]) -> Result<Vec<Value>, ReadError> {
    let mut objects = Vec::new();
    for path in files {
        let name = display(path);
        let text = if path.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).map(|_| s)
        } else {
            std::fs::read_to_string(path)
        }
        .map_err(|e| ReadError::File(name.clone(), e))?;
        objects.extend(super::parse_documents(&text).map_err(|e| ReadError::Parse(name, e))?);
    }
    Ok(objects)
}

fn keda(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: super::KEDA_GROUP.to_owned(),
        version: "v1alpha1".to_owned(),
        api_version: format!("{}/v1alpha1", super::KEDA_GROUP),
        kind: kind.to_owned(),
        plural: plural.to_owned(),
    }
}

/// Lists the KEDA objects of the cluster: ScaledObjects and TriggerAuthentications of
/// the namespace (or all), and the ClusterTriggerAuthentications they name (by `get`,
/// so a user without cluster-wide rights can still import). Returns them with the
/// options and a description of where they came from.
fn from_cluster(args: &Args) -> Result<(Vec<Value>, Options, String), ReadError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ReadError::Runtime)?;
    runtime.block_on(async {
        let kube = Kube::new(args.kubeconfig.clone(), args.context.clone(), CALL_TIMEOUT);
        let client = kube.client(None).await.map_err(ReadError::Client)?;
        let context = match kube.context_key(None) {
            "" => "in-cluster".to_owned(),
            c => format!("context {c}"),
        };
        let namespace = match (&args.namespace, args.all_namespaces) {
            (_, true) => None,
            (Some(ns), false) => Some(ns.clone()),
            (None, false) => Some(client.default_namespace().to_owned()),
        };
        let scope = match &namespace {
            Some(ns) => format!("namespace {ns}"),
            None => "all namespaces".to_owned(),
        };
        let origin = format!("{context}, {scope}");
        let list = |kind: &str, plural: &str| {
            let ar = keda(kind, plural);
            let api: Api<DynamicObject> = match &namespace {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
                None => Api::all_with(client.clone(), &ar),
            };
            let what = format!("{plural}.{} in {scope} ({context})", super::KEDA_GROUP);
            async move {
                let listed = tokio::time::timeout(CALL_TIMEOUT, api.list(&ListParams::default()))
                    .await
                    .map_err(|_| ReadError::Timeout(format!("listing {what}"), CALL_TIMEOUT.as_secs()))?
                    .map_err(|e| describe(e, format!("listing {what}")))?;
                Ok::<_, ReadError>(listed.items.into_iter().map(|o| object(o, &ar)).collect::<Vec<_>>())
            }
        };
        let mut objects = list("ScaledObject", "scaledobjects").await?;
        // ScaledJobs too, where this identity may list them: one allowed ScaledObjects
        // only still imports those.
        match list("ScaledJob", "scaledjobs").await {
            Ok(jobs) => objects.extend(jobs),
            Err(e @ (ReadError::Forbidden(..) | ReadError::NotServed(..))) => {
                eprintln!("warning: ScaledJobs not imported: {}", crate::error::chain(&e));
            }
            Err(e) => return Err(e),
        }
        objects.extend(list("TriggerAuthentication", "triggerauthentications").await?);
        let mut wanted: Vec<&str> = objects
            .iter()
            .flat_map(|o| o.pointer("/spec/triggers").and_then(Value::as_array).into_iter().flatten())
            .filter_map(|t| t.get("authenticationRef"))
            .filter(|r| r.get("kind").and_then(Value::as_str) == Some("ClusterTriggerAuthentication"))
            .filter_map(|r| r.get("name").and_then(Value::as_str))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let ar = keda("ClusterTriggerAuthentication", "clustertriggerauthentications");
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let mut cluster = Vec::new();
        for name in wanted {
            let what = format!("clustertriggerauthentications.{}/{name} ({context})", super::KEDA_GROUP);
            match tokio::time::timeout(CALL_TIMEOUT, api.get_opt(name)).await {
                Ok(Ok(Some(o))) => cluster.push(object(o, &ar)),
                // Not there: the ScaledObjects that name it are told so.
                Ok(Ok(None)) => {}
                Ok(Err(e)) => return Err(describe(e, format!("reading {what}"))),
                Err(_) => return Err(ReadError::Timeout(format!("reading {what}"), CALL_TIMEOUT.as_secs())),
            }
        }
        objects.extend(cluster);
        // The targets whose environment holds a trigger's queue URL (`queueURLFromEnv`):
        // read when allowed; without them the rule says to set queue_url by hand.
        let mut targets = Vec::new();
        for so in objects.iter().filter(|o| o.get("kind").and_then(Value::as_str) == Some("ScaledObject")) {
            let from_env =
                so.pointer("/spec/triggers").and_then(Value::as_array).into_iter().flatten().any(|t| {
                    t.pointer("/metadata/queueURLFromEnv").is_some() && t.pointer("/metadata/queueURL").is_none()
                });
            let (Some(ns), Some(name)) = (
                so.pointer("/metadata/namespace").and_then(Value::as_str),
                so.pointer("/spec/scaleTargetRef/name").and_then(Value::as_str),
            ) else {
                continue;
            };
            let kind = so.pointer("/spec/scaleTargetRef/kind").and_then(Value::as_str).unwrap_or("Deployment");
            let plural = match kind {
                "Deployment" => "deployments",
                "StatefulSet" => "statefulsets",
                _ => continue,
            };
            if !from_env {
                continue;
            }
            let ar = ApiResource {
                group: "apps".to_owned(),
                version: "v1".to_owned(),
                api_version: "apps/v1".to_owned(),
                kind: kind.to_owned(),
                plural: plural.to_owned(),
            };
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
            if let Ok(Ok(Some(o))) = tokio::time::timeout(CALL_TIMEOUT, api.get_opt(name)).await {
                targets.push(object(o, &ar));
            }
        }
        objects.extend(targets);
        let options = Options { default_namespace: namespace.unwrap_or_else(|| "default".to_owned()) };
        Ok((objects, options, origin))
    })
}

/// An object as listed, with the `kind` and `apiVersion` the import goes by.
fn object(o: DynamicObject, ar: &ApiResource) -> Value {
    let mut v = serde_json::to_value(o).unwrap_or(Value::Null);
    if let Some(map) = v.as_object_mut() {
        map.insert("kind".into(), ar.kind.clone().into());
        map.insert("apiVersion".into(), ar.api_version.clone().into());
    }
    v
}

fn describe(e: kube::Error, doing: String) -> ReadError {
    match e {
        kube::Error::Api(s) if s.code == 404 => ReadError::NotServed(doing, s.message),
        kube::Error::Api(s) if s.code == 403 => ReadError::Forbidden(doing, s.message),
        other => ReadError::Api(doing, crate::workload::error::KubeFailure(other)),
    }
}
