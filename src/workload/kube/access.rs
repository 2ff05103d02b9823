//! The permissions the daemon needs, and asking the API server whether it has them
//! (`sqscale check --remote`).

use kube::Api;

use super::Kube;
use crate::config::{JobRule, TargetRef};
use crate::workload::TargetError;

pub struct Access {
    pub verb: &'static str,
    /// The API group (`""` for core).
    pub group: &'static str,
    pub resource: String,
    pub subresource: Option<&'static str>,
    pub namespace: String,
    /// `None`: any object (list, watch and create cannot name one).
    pub name: Option<String>,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        if let Some(sub) = self.subresource {
            write!(f, "/{sub}")?;
        }
        if let Some(name) = &self.name {
            write!(f, " {name:?}")?;
        }
        write!(f, " in namespace {}", self.namespace)
    }
}

impl Kube {
    /// Everything the daemon does about `t`, as permissions: read and watch it, get and
    /// patch its `scale`, record events next to it, read and write its state in
    /// sqscale's namespace. No write of the whole object.
    pub fn needs(&self, t: &TargetRef) -> Vec<Access> {
        let on_target = |verb, resource: &str, subresource, name: bool| Access {
            verb,
            group: "apps",
            resource: resource.to_owned(),
            subresource,
            namespace: t.namespace.clone(),
            name: name.then(|| t.name.clone()),
        };
        let plural = t.kind.plural();
        let state = |verb, name: bool| Access {
            verb,
            group: "",
            resource: "configmaps".to_owned(),
            subresource: None,
            namespace: self.state_namespace.clone(),
            name: name.then(|| crate::workload::state::STATE_CONFIGMAP.to_owned()),
        };
        vec![
            on_target("get", plural, None, true),
            on_target("list", plural, None, false),
            on_target("watch", plural, None, false),
            on_target("get", plural, Some("scale"), true),
            on_target("patch", plural, Some("scale"), true),
            Access {
                verb: "create",
                group: "events.k8s.io",
                resource: "events".to_owned(),
                subresource: None,
                namespace: t.namespace.clone(),
                name: None,
            },
            state("get", true),
            state("patch", true),
            state("create", false),
        ]
    }

    /// Everything the daemon does about a job rule, as permissions, in its namespace:
    /// create and delete its Jobs, read and watch them (the watch-backed counts), and
    /// read and watch their pods (pending). Nothing else: no update or patch of a Job,
    /// no write of a pod.
    pub fn job_needs(&self, rule: &JobRule) -> Vec<Access> {
        let access = |verb, group, resource: &str| Access {
            verb,
            group,
            resource: resource.to_owned(),
            subresource: None,
            namespace: rule.namespace.clone(),
            name: None,
        };
        let jobs = ["create", "delete", "get", "list", "watch"].map(|verb| access(verb, "batch", "jobs"));
        let pods = ["get", "list", "watch"].map(|verb| access(verb, "", "pods"));
        jobs.into_iter().chain(pods).collect()
    }

    /// Whether this identity is allowed `access`: a SelfSubjectAccessReview, which every
    /// authenticated user may make.
    pub async fn may(&self, context: Option<&str>, t: &TargetRef, access: &Access) -> Result<bool, TargetError> {
        self.review(context, t, access).await
    }

    /// [`Kube::may`] for a job rule's `access` (an error names its Jobs).
    pub async fn may_for_jobs(&self, rule: &JobRule, access: &Access) -> Result<bool, TargetError> {
        let jobs = format!("Job/{}/{}-*", rule.namespace, rule.name);
        self.review(rule.context.as_deref(), &jobs, access).await
    }

    async fn review(
        &self,
        context: Option<&str>,
        t: &(impl std::fmt::Display + ?Sized),
        access: &Access,
    ) -> Result<bool, TargetError> {
        use k8s_openapi::api::authorization::v1::{
            ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
        };
        let client = self.client(context).await.map_err(|e| e.at(t))?;
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(access.group.to_owned()),
                    resource: Some(access.resource.clone()),
                    subresource: access.subresource.map(str::to_owned),
                    verb: Some(access.verb.to_owned()),
                    namespace: Some(access.namespace.clone()),
                    name: access.name.clone(),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let api: Api<SelfSubjectAccessReview> = Api::all(client);
        let answer = self.call(t, "asking for access", api.create(&kube::api::PostParams::default(), &review)).await?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }
}
