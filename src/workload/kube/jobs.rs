//! The job-rule port for Kubernetes ([`JobTarget`]): counts from the watch caches of
//! [`super::job_cache`], one per (context, namespace) and shared by every job rule
//! there; Jobs created from the rule's template and deleted, each write within the
//! context's write budget (`[kubernetes] qps` and `burst`) and fenced by the lease right
//! before it is sent, like a state write.
//!
//! A removed or renamed job rule's Jobs are left to finish (spec §12.5). Its namespace's
//! cache is kept while any of them is unfinished, so `status` can name them
//! ([`JobTarget::orphaned_jobs`]); once they have all finished (and no running job rule
//! uses the namespace) the cache goes, at the next reload or `status`, and its finished
//! Jobs are no longer listed.

use std::collections::HashSet;
use std::sync::Arc;

use kube::Resource as _;
use kube::api::{Api, DeleteParams, PostParams, PropagationPolicy};
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::job_cache::{JobCache, WatchedJob};
use super::{Connection, Kube};
use crate::config::{JobRule, Propagation};
use crate::leader::Leadership;
use crate::sync::lock;
use crate::workload::jobs::{JOB_LABEL, JobTarget, JobsSnapshot, MANAGED_BY, TEMPLATE_HASH};
use crate::workload::{FIELD_MANAGER, TargetError, TargetErrorKind};

/// The Job to create for `rule`: its template's Job with `metadata` made anew:
/// `generateName: <rule>-`, the namespace, the template's labels plus sqscale's three
/// (sqscale's win on a clash, spec §10.5c), the template's annotations and nothing else
/// (§10.5d); the pod template's labels gain `sqscale.io/job`, so one pod watch per
/// namespace finds every Job's pods.
pub(super) fn manifest(rule: &JobRule) -> Value {
    let mut job = rule.template.job.clone();
    let Some(fields) = job.as_object_mut() else {
        // The config only accepts a mapping; an empty Job fails at the API server,
        // which names what is missing.
        return Value::Object(Map::new());
    };
    let kept = fields.remove("metadata").unwrap_or_default();
    let mut labels = kept.get("labels").and_then(Value::as_object).cloned().unwrap_or_default();
    labels.insert(MANAGED_BY.to_owned(), "sqscale".into());
    labels.insert(JOB_LABEL.to_owned(), rule.name.clone().into());
    labels.insert(TEMPLATE_HASH.to_owned(), rule.template.hash.clone().into());
    let mut metadata = Map::new();
    metadata.insert("generateName".to_owned(), format!("{}-", rule.name).into());
    metadata.insert("namespace".to_owned(), rule.namespace.clone().into());
    metadata.insert("labels".to_owned(), labels.into());
    if let Some(annotations) = kept.get("annotations").filter(|a| a.as_object().is_some_and(|a| !a.is_empty())) {
        metadata.insert("annotations".to_owned(), annotations.clone());
    }
    fields.insert("apiVersion".to_owned(), "batch/v1".into());
    fields.insert("kind".to_owned(), "Job".into());
    fields.insert("metadata".to_owned(), metadata.into());
    let pod_labels = object_at(fields, &["spec", "template", "metadata", "labels"]);
    pod_labels.insert(JOB_LABEL.to_owned(), rule.name.clone().into());
    job
}

/// The object at `path` under `fields`, made (or made an object) where missing.
fn object_at<'a>(fields: &'a mut Map<String, Value>, path: &[&str]) -> &'a mut Map<String, Value> {
    let mut here = fields;
    for key in path {
        let next = here.entry(*key).or_insert_with(|| Value::Object(Map::new()));
        if !next.is_object() {
            *next = Value::Object(Map::new());
        }
        here = next.as_object_mut().expect("made an object above");
    }
    here
}

/// How a failed create or delete names its object: `Job/<namespace>/<name>`, or
/// `Job/<namespace>/<rule>-*` for a Job not named yet.
fn job_ref(namespace: &str, name: &str) -> String {
    format!("Job/{namespace}/{name}")
}

impl Kube {
    /// The cache of `namespace` in `context`, made on first use (its watches start at
    /// the first read, or when a reload finds the context connected).
    fn job_cache(&self, context: Option<&str>, namespace: &str) -> Arc<JobCache> {
        let key = self.context_key(context);
        let mut caches = lock(&self.job_caches);
        let here = caches.entry(namespace.to_owned()).or_default();
        if let Some(c) = here.iter().find(|c| c.context == key) {
            return c.clone();
        }
        let cache = Arc::new(JobCache::new(key.to_owned(), namespace.to_owned()));
        here.push(cache.clone());
        cache
    }

    /// The connection of `context` if it is made already.
    fn connected(&self, context: Option<&str>) -> Option<Arc<Connection>> {
        let cell = lock(&self.contexts).get(self.context_key(context)).cloned();
        cell.and_then(|c| c.get().cloned())
    }

    /// Starts `cache`'s watches (connecting first if need be) and waits, at most the
    /// call timeout, for their first lists.
    async fn start_job_cache(
        &self,
        context: Option<&str>,
        cache: &JobCache,
        rule: &JobRule,
    ) -> Result<(), TargetError> {
        let target = job_ref(&rule.namespace, &format!("{}-*", rule.name));
        let connection = self.connection(context).await.map_err(|e| e.at(&target))?;
        cache.start(&connection.client);
        cache.settle(self.timeout).await;
        Ok(())
    }

    /// Runs one Job write (`what`, about `target`): waits for a token of the context's
    /// write budget, then checks the lease right before sending and bounds the call by
    /// what it allows, all within the call timeout from `started`.
    async fn fenced<T>(
        &self,
        connection: &Connection,
        lead: &Leadership,
        target: &str,
        what: &str,
        started: Instant,
        send: impl Future<Output = kube::Result<T>>,
    ) -> Result<T, TargetError> {
        let deadline = started + self.timeout;
        if tokio::time::timeout_at(deadline, connection.limit.wait()).await.is_err() {
            let message = format!(
                "{what}: no write allowed within {}s by [kubernetes] qps and burst",
                self.timeout.as_secs_f64()
            );
            return Err(TargetError::new(target, TargetErrorKind::Throttled, message));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(budget) = lead.budget(left) else {
            let message = format!("{what}: not sent, this instance does not hold the lease (or it is about to expire)");
            return Err(TargetError::new(target, TargetErrorKind::NotLeading, message));
        };
        self.call_within(budget, target, what, send).await
    }

    /// Drops the caches of namespaces no job rule in `running` uses, except while they
    /// hold an unfinished Job (of a removed job rule: `status` still names it).
    fn prune_job_caches(&self, running: &[&JobRule]) {
        let used: HashSet<(&str, &str)> =
            running.iter().map(|r| (self.context_key(r.context.as_deref()), r.namespace.as_str())).collect();
        lock(&self.job_caches).retain(|namespace, caches| {
            caches.retain(|c| {
                used.contains(&(c.context.as_str(), namespace.as_str()))
                    || (c.started() && c.managed_jobs().iter().any(|(_, _, finished)| !finished))
            });
            !caches.is_empty()
        });
    }
}

impl JobTarget for Kube {
    async fn jobs(&self, rule: &JobRule) -> Result<Option<JobsSnapshot>, TargetError> {
        let context = rule.context.as_deref();
        let cache = self.job_cache(context, &rule.namespace);
        if !cache.started() || !cache.settled() {
            // Boxed: taken once per namespace, and a poll's future is allocated whole.
            Box::pin(self.start_job_cache(context, &cache, rule)).await?;
        }
        match cache.snapshot(rule, Instant::now()) {
            Some(snapshot) => Ok(Some(snapshot)),
            None => match cache.failure() {
                Some((kind, message)) => {
                    Err(TargetError::new(job_ref(&rule.namespace, &format!("{}-*", rule.name)), kind, message))
                }
                None => Ok(None),
            },
        }
    }

    async fn create_job(&self, rule: &JobRule, lead: &Leadership) -> Result<String, TargetError> {
        let started = Instant::now();
        let target = job_ref(&rule.namespace, &format!("{}-*", rule.name));
        let context = rule.context.as_deref();
        let connection = self.connection(context).await.map_err(|e| e.at(&target))?;
        let what = format!("creating a Job from {}", rule.template.path.display());
        let params = PostParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PostParams::default() };
        let body = serde_json::to_vec(&manifest(rule)).unwrap_or_default();
        let request = kube::core::Request::new(WatchedJob::url_path(&(), Some(&rule.namespace)))
            .create(&params, body)
            .map_err(|e| TargetError::new(&*target, TargetErrorKind::Other, format!("{what}: {e}")))?;
        let client = connection.client.clone();
        let send = client.request::<WatchedJob>(request);
        let created = Box::pin(self.fenced(&connection, lead, &target, &what, started, send)).await?;
        let Some(name) = created.metadata.name else {
            let message = format!("{what}: the API server's answer names no Job");
            return Err(TargetError::new(target, TargetErrorKind::Other, message));
        };
        self.job_cache(context, &rule.namespace).created(&name, &rule.name, Instant::now());
        Ok(name)
    }

    async fn delete_job(
        &self,
        rule: &JobRule,
        name: &str,
        propagation: Propagation,
        lead: &Leadership,
    ) -> Result<(), TargetError> {
        let started = Instant::now();
        let target = job_ref(&rule.namespace, name);
        let context = rule.context.as_deref();
        let connection = self.connection(context).await.map_err(|e| e.at(&target))?;
        let api: Api<WatchedJob> = Api::namespaced(connection.client.clone(), &rule.namespace);
        let propagation_policy = Some(match propagation {
            Propagation::Background => PropagationPolicy::Background,
            Propagation::Foreground => PropagationPolicy::Foreground,
        });
        let params = DeleteParams { propagation_policy, ..DeleteParams::default() };
        let what = format!("deleting the Job ({} propagation)", propagation.as_str());
        let send = api.delete(name, &params);
        match Box::pin(self.fenced(&connection, lead, &target, &what, started, send)).await {
            Ok(_) => {}
            // Gone already: what a delete is for.
            Err(e) if e.error_kind() == TargetErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.job_cache(context, &rule.namespace).deleted(name);
        Ok(())
    }

    fn watch_jobs(&self, rules: &[&JobRule]) {
        // Watches of connected contexts start now, so the first poll finds its counts
        // (or nearly); the others at their first read, which connects.
        let runtime = tokio::runtime::Handle::try_current().is_ok();
        for rule in rules {
            let context = rule.context.as_deref();
            let cache = self.job_cache(context, &rule.namespace);
            if runtime
                && !cache.started()
                && let Some(connection) = self.connected(context)
            {
                cache.start(&connection.client);
            }
        }
        self.prune_job_caches(rules);
    }

    fn orphaned_jobs(&self, running: &[&JobRule]) -> Vec<(String, String, String, bool)> {
        self.prune_job_caches(running);
        let running: HashSet<(&str, &str, &str)> = running
            .iter()
            .map(|r| (self.context_key(r.context.as_deref()), r.namespace.as_str(), r.name.as_str()))
            .collect();
        let caches: Vec<Arc<JobCache>> = lock(&self.job_caches).values().flatten().cloned().collect();
        let mut orphans = Vec::new();
        for cache in caches.iter().filter(|c| c.started()) {
            for (rule, name, finished) in cache.managed_jobs() {
                if !running.contains(&(cache.context.as_str(), cache.namespace.as_str(), rule.as_str())) {
                    orphans.push((cache.namespace.clone(), rule, name, finished));
                }
            }
        }
        orphans.sort();
        orphans
    }
}

#[cfg(test)]
#[path = "jobs_tests.rs"]
pub(super) mod tests;
