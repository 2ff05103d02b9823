//! The port of job rules: the Jobs (and their Pods) of a job rule as the watch caches
//! show them, and the creates and deletes a poll makes. [`JobTarget`] is what the job
//! workers use; the Kubernetes adapter implements it beside the `/scale` port and shares
//! its one client per context.

use std::future::Future;

use crate::config::{JobRule, Propagation};
use crate::engine::Time;
use crate::engine::job::{JobStatus, JobView, Snapshot};
use crate::leader::Leadership;
use crate::workload::{TargetError, TargetErrorKind};

/// `app.kubernetes.io/managed-by` on every Job sqscale creates.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The job rule a Job belongs to (also on its pods, through the pod template).
pub const JOB_LABEL: &str = "sqscale.io/job";
/// The hash of the template a Job was made from ([`crate::config::JobTemplate::hash`]).
pub const TEMPLATE_HASH: &str = "sqscale.io/template-hash";

/// One of a job rule's Jobs, owned: what counting, cleanup and rollout need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenJob {
    pub name: String,
    /// Its `sqscale.io/template-hash` label (`None` if missing).
    pub template_hash: Option<String>,
    pub status: JobStatus,
    /// See [`JobView::finished_at`].
    pub finished_at: Option<Time>,
    pub created_at: Option<Time>,
}

/// A job rule's Jobs at one moment, from synced caches: one serves the whole poll.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobsSnapshot {
    pub jobs: Vec<SeenJob>,
    /// Jobs created by this process that the cache has not shown yet.
    pub created_unseen: u32,
}

impl JobsSnapshot {
    /// The engine's view of it.
    pub fn view(&self) -> Snapshot<'_> {
        Snapshot {
            jobs: self
                .jobs
                .iter()
                .map(|j| JobView {
                    name: &j.name,
                    status: j.status,
                    finished_at: j.finished_at,
                    created_at: j.created_at,
                })
                .collect(),
            created_unseen: self.created_unseen,
        }
    }
}

/// The port: a job rule's Jobs, addressed by its context, namespace and name.
pub trait JobTarget: Send + Sync + 'static {
    /// The rule's Jobs (label `sqscale.io/job=<name>` in its namespace), with their
    /// pending state read from their pods and the rule's `pending_pod_conditions`.
    /// `Ok(None)` while the counts cannot be trusted: the caches have not synced yet, or
    /// a watch broke and has not listed again (spec §10.5a). No API call once synced.
    /// (The Kubernetes adapter gives the watch's error instead, as an `Err`, while a
    /// watch is failing: a 403, an unreachable API server.)
    fn jobs(&self, rule: &JobRule) -> impl Future<Output = Result<Option<JobsSnapshot>, TargetError>> + Send {
        let _ = rule;
        async { Err(TargetError::new("jobs", TargetErrorKind::Other, "this adapter has no Jobs")) }
    }

    /// Creates one Job from the rule's template (`generateName: <name>-`, sqscale's
    /// labels), if `lead` still allows writing when the request is sent; within the
    /// context's write budget. Returns the created Job's name; it counts as created but
    /// unseen until the cache shows it.
    fn create_job(
        &self,
        rule: &JobRule,
        lead: &Leadership,
    ) -> impl Future<Output = Result<String, TargetError>> + Send {
        let _ = (rule, lead);
        async { Err(TargetError::new("jobs", TargetErrorKind::Other, "this adapter has no Jobs")) }
    }

    /// Deletes one of the rule's Jobs with `propagation`, fenced and budgeted like a
    /// create. A Job already gone (404) is deleted.
    fn delete_job(
        &self,
        rule: &JobRule,
        name: &str,
        propagation: Propagation,
        lead: &Leadership,
    ) -> impl Future<Output = Result<(), TargetError>> + Send {
        let _ = (rule, name, propagation, lead);
        async { Err(TargetError::new("jobs", TargetErrorKind::Other, "this adapter has no Jobs")) }
    }

    /// Called at start and after each reload with every job rule now running: the
    /// caches of their (context, namespace) start (or stay); others can go.
    fn watch_jobs(&self, rules: &[&JobRule]) {
        let _ = rules;
    }

    /// Jobs labelled `app.kubernetes.io/managed-by=sqscale` in the watched namespaces
    /// whose `sqscale.io/job` names none of `running` (a removed or renamed job rule):
    /// `(namespace, job rule, Job name, finished)`, for `status`.
    fn orphaned_jobs(&self, running: &[&JobRule]) -> Vec<(String, String, String, bool)> {
        let _ = running;
        Vec::new()
    }
}
