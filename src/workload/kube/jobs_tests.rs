//! The Jobs the adapter creates, and its requests, answered one by one by the test over
//! a mock service (no server, no TLS): what each carries, what each answer becomes, and
//! what is never sent (a lost lease, an exhausted write budget, a read once synced).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::json;
use tower_test::mock::{Handle, SendResponse};

use super::*;
use crate::config::{JobTemplate, Rollout};
use crate::engine::job::{JobPolicy, JobStatus};
use crate::workload::kube::job_cache::{CachedJob, Finish};

type Mock = Handle<Request<Body>, Response<Body>>;

fn template() -> Value {
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "labels": {
                "team": "media",
                "sqscale.io/job": "not-this-rule",
                "app.kubernetes.io/managed-by": "helm",
                "sqscale.io/template-hash": "forged"
            },
            "annotations": {"owner": "media-team"}
        },
        "spec": {
            "backoffLimit": 2,
            "template": {
                "metadata": {"labels": {"app": "encode"}},
                "spec": {"restartPolicy": "OnFailure", "containers": [{"name": "encode", "image": "encoder:1"}]}
            }
        }
    })
}

/// A job rule `name` in namespace `media` with [`template`] (hash `h1`), as the config
/// would make it.
pub(crate) fn rule(name: &str) -> JobRule {
    JobRule {
        name: name.to_owned(),
        namespace: "media".to_owned(),
        context: None,
        polling_interval: Duration::from_secs(30),
        template: Arc::new(JobTemplate { path: "jobs/encode.yaml".into(), job: template(), hash: "h1".to_owned() }),
        rollout: Rollout::default(),
        group: None,
        priority: 0,
        pending_pod_conditions: Vec::new(),
        policy: JobPolicy {
            min_replica_count: 0,
            max_replica_count: Some(10),
            strategy: Default::default(),
            multiple_scalers_calculation: Default::default(),
            finished_job_grace: Duration::ZERO,
            successful_jobs_history_limit: 100,
            failed_jobs_history_limit: 100,
            paused: false,
            triggers: Vec::new(),
        },
        trigger_policies: Vec::new(),
        triggers: Vec::new(),
        schedules: Vec::new(),
    }
}

/// sqscale's labels win over the template's, the pod template gains the rule's label,
/// `generateName` and the namespace are sqscale's, the template's annotations are kept,
/// and nothing else is added or changed.
#[test]
fn the_created_job_is_the_template_with_sqscales_metadata() {
    let want = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "generateName": "encode-",
            "namespace": "media",
            "labels": {
                "team": "media",
                "sqscale.io/job": "encode",
                "app.kubernetes.io/managed-by": "sqscale",
                "sqscale.io/template-hash": "h1"
            },
            "annotations": {"owner": "media-team"}
        },
        "spec": {
            "backoffLimit": 2,
            "template": {
                "metadata": {"labels": {"app": "encode", "sqscale.io/job": "encode"}},
                "spec": {"restartPolicy": "OnFailure", "containers": [{"name": "encode", "image": "encoder:1"}]}
            }
        }
    });
    assert_eq!(manifest(&rule("encode")), want);
    // A bare template: no metadata of its own, none on the pod template, and an empty
    // annotation map is left out rather than sent empty.
    let mut bare = rule("resize");
    let job = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"annotations": {}},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": []}}}
    });
    bare.template = Arc::new(JobTemplate { job, ..(*bare.template).clone() });
    let made = manifest(&bare);
    assert_eq!(
        made["metadata"],
        json!({
            "generateName": "resize-", "namespace": "media",
            "labels": {"app.kubernetes.io/managed-by": "sqscale", "sqscale.io/job": "resize", "sqscale.io/template-hash": "h1"}
        })
    );
    assert_eq!(made["spec"]["template"]["metadata"], json!({"labels": {"sqscale.io/job": "resize"}}));
    assert_eq!(made["spec"]["template"]["spec"], json!({"restartPolicy": "Never", "containers": []}));
}

fn adapter() -> (Kube, Mock) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Kube::with_client(Client::new(service, "default"), Duration::from_secs(5)), handle)
}

/// An adapter whose context's write budget is `qps` and `burst`, and whose calls time
/// out after `timeout`.
fn adapter_with_budget(qps: f64, burst: u32, timeout: Duration) -> (Kube, Mock) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let mut kube = Kube::new(None, Some("test".to_owned()), timeout);
    (kube.qps, kube.burst) = (qps, burst);
    let connection = Arc::new(kube.connection_of("test", Client::new(service, "default"), None));
    lock(&kube.contexts).insert("test".to_owned(), Arc::new(tokio::sync::OnceCell::new_with(Some(connection))));
    (kube, handle)
}

/// The next request: method, path, query and JSON body.
async fn next(handle: &mut Mock) -> (String, String, String, Value, SendResponse<Response<Body>>) {
    let (request, send) =
        tokio::time::timeout(Duration::from_secs(5), handle.next_request()).await.expect("in time").expect("a request");
    let (parts, body) = request.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let json = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap() };
    let query = parts.uri.query().unwrap_or_default().to_owned();
    (parts.method.to_string(), parts.uri.path().to_owned(), query, json, send)
}

fn answer(code: u16, body: Value) -> Response<Body> {
    answer_text(code, serde_json::to_string(&body).unwrap())
}

fn answer_text(code: u16, body: String) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(body.into_bytes()))
        .unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason, "code": code})
}

fn no_request(handle: &mut Mock) -> bool {
    futures::FutureExt::now_or_never(handle.next_request()).flatten().is_none()
}

/// Reads `r`'s Jobs for the first time: answers the two lists (empty) and holds the two
/// watches that follow (returned by kind, `Job` and `Pod`, unanswered), then checks the
/// read's answer: no Jobs.
async fn sync(kube: &Arc<Kube>, r: &JobRule, handle: &mut Mock) -> HashMap<&'static str, SendResponse<Response<Body>>> {
    let read = {
        let (kube, r) = (kube.clone(), r.clone());
        tokio::spawn(async move { kube.jobs(&r).await })
    };
    let mut watches = HashMap::new();
    while watches.len() < 2 {
        let (method, path, query, _, send) = next(handle).await;
        assert_eq!(method, "GET");
        let (kind, selector) = match path.as_str() {
            "/apis/batch/v1/namespaces/media/jobs" => ("Job", "labelSelector=app.kubernetes.io%2Fmanaged-by%3Dsqscale"),
            "/api/v1/namespaces/media/pods" => ("Pod", "labelSelector=sqscale.io%2Fjob"),
            other => panic!("unexpected request {other}?{query}"),
        };
        assert!(query.contains(selector), "{path}?{query}");
        if query.contains("watch=true") {
            // Held open, silent: nothing changes.
            watches.insert(kind, send);
        } else {
            send.send_response(list(kind));
        }
    }
    let snapshot = read.await.unwrap().unwrap().expect("both watches have listed");
    assert_eq!(snapshot, JobsSnapshot::default());
    watches
}

/// An empty list of `kind`.
fn list(kind: &str) -> Response<Body> {
    answer(200, json!({"kind": format!("{kind}List"), "metadata": {"resourceVersion": "1"}, "items": []}))
}

/// Reads `r`'s Jobs until `done` holds of an answer (at most five seconds).
async fn read_until(kube: &Kube, r: &JobRule, done: impl Fn(&Option<JobsSnapshot>) -> bool) -> Option<JobsSnapshot> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        // An error (a watch still failing) is not done either.
        let s = kube.jobs(r).await;
        match s {
            Ok(s) if done(&s) => return s,
            _ => assert!(tokio::time::Instant::now() < deadline, "still {s:?}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The first read starts the two watches (one list each, with sqscale's label
/// selectors) and waits for them; a create POSTs the manifest with sqscale's field
/// manager and returns the generated name; the Job counts as created-unseen until the
/// watch shows it, then as itself; once synced, reads make no request.
#[tokio::test]
async fn a_created_job_counts_until_the_watch_shows_it_and_reads_cost_no_request() {
    let (kube, mut handle) = adapter();
    let kube = Arc::new(kube);
    let r = rule("encode");
    let mut watches = sync(&kube, &r, &mut handle).await;

    let create = {
        let (kube, r) = (kube.clone(), r.clone());
        tokio::spawn(async move { kube.create_job(&r, &Leadership::unelected()).await })
    };
    let (method, path, query, body, send) = next(&mut handle).await;
    assert_eq!((method.as_str(), path.as_str()), ("POST", "/apis/batch/v1/namespaces/media/jobs"));
    assert!(query.contains("fieldManager=sqscale"), "{query}");
    assert_eq!(body, manifest(&r));
    let mut created = body;
    created["metadata"]["name"] = "encode-x7k2p".into();
    created["metadata"]["uid"] = "u-1".into();
    created["metadata"]["resourceVersion"] = "2".into();
    send.send_response(answer(201, created.clone()));
    assert_eq!(create.await.unwrap().unwrap(), "encode-x7k2p");
    for _ in 0..3 {
        assert_eq!(kube.jobs(&r).await.unwrap().unwrap(), JobsSnapshot { jobs: Vec::new(), created_unseen: 1 });
    }
    assert!(no_request(&mut handle), "a synced read made a request");

    // The watch shows the Job: one Job (pending: no pod yet), no longer created-unseen.
    let event = json!({"type": "ADDED", "object": created});
    watches.remove("Job").unwrap().send_response(answer_text(200, format!("{event}\n")));
    let seen = read_until(&kube, &r, |s| s.as_ref().is_some_and(|s| !s.jobs.is_empty())).await.unwrap();
    assert_eq!(seen.created_unseen, 0);
    let got: Vec<(&str, JobStatus, Option<&str>)> =
        seen.jobs.iter().map(|j| (j.name.as_str(), j.status, j.template_hash.as_deref())).collect();
    assert_eq!(got, [("encode-x7k2p", JobStatus::Unfinished { pending: true }, Some("h1"))]);
    drop(watches);
}

/// A broken watch makes the counts untrusted until it has listed again, from scratch
/// (spec §10.5a): reads in between give its error, never counts. An expired watch (410)
/// is no error: it lists again at once, and reads meanwhile find no counts.
#[tokio::test]
async fn a_broken_watch_gives_no_counts_until_it_has_listed_again() {
    let (kube, mut handle) = adapter();
    let kube = Arc::new(kube);
    let r = rule("encode");
    let mut watches = sync(&kube, &r, &mut handle).await;
    let pods = watches.remove("Pod").unwrap();
    pods.send_response(answer(500, status(500, "InternalError", "etcdserver: leader changed")));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let e = loop {
        match kube.jobs(&r).await {
            Err(e) => break e,
            Ok(s) => assert!(tokio::time::Instant::now() < deadline, "still {s:?}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(e.kind(), "server_error");
    assert!(e.to_string().starts_with("Job/media/encode-*: watching pods of Jobs in kube context \"test\"/media failed (no Job is created or deleted there until it has listed again): etcdserver: leader changed (InternalError, 500)"), "{e}");
    // After a backoff, the pods are listed again (not watched from where they were).
    let (method, path, query, _, send) = next(&mut handle).await;
    assert_eq!((method.as_str(), path.as_str()), ("GET", "/api/v1/namespaces/media/pods"));
    assert!(!query.contains("watch=true"), "{query}");
    assert!(kube.jobs(&r).await.is_err(), "counts while listing");
    send.send_response(list("Pod"));
    assert_eq!(read_until(&kube, &r, |s| s.is_some()).await, Some(JobsSnapshot::default()));

    // The Jobs' watch expires: listed again at once, no counts (and no error) meanwhile.
    let (method, path, query, _, pods) = next(&mut handle).await;
    assert_eq!((method.as_str(), path.as_str()), ("GET", "/api/v1/namespaces/media/pods"));
    assert!(query.contains("watch=true"), "{query}");
    let expired = json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version: 1 (7)")});
    watches.remove("Job").unwrap().send_response(answer_text(200, format!("{expired}\n")));
    let (method, path, query, _, send) = next(&mut handle).await;
    assert_eq!((method.as_str(), path.as_str()), ("GET", "/apis/batch/v1/namespaces/media/jobs"));
    assert!(!query.contains("watch=true"), "{query}");
    assert_eq!(kube.jobs(&r).await.unwrap(), None, "counts while listing");
    send.send_response(list("Job"));
    assert_eq!(read_until(&kube, &r, |s| s.is_some()).await, Some(JobsSnapshot::default()));
    drop((watches, pods));
}

/// An API error on create comes back in the API's words, naming the template, and the
/// Job is not counted.
#[tokio::test]
async fn a_refused_create_says_why() {
    let invalid = "Job.batch \"\" is invalid: spec.template.spec.restartPolicy: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\"";
    for (code, reason, message, kind) in
        [(422, "Invalid", invalid, "other"), (403, "Forbidden", "jobs.batch is forbidden", "forbidden")]
    {
        let (kube, mut handle) = adapter();
        let kube = Arc::new(kube);
        let r = rule("encode");
        let create = {
            let (kube, r) = (kube.clone(), r.clone());
            tokio::spawn(async move { kube.create_job(&r, &Leadership::unelected()).await })
        };
        let (method, _, _, _, send) = next(&mut handle).await;
        assert_eq!(method, "POST");
        send.send_response(answer(code, status(code, reason, message)));
        let e = create.await.unwrap().unwrap_err();
        assert_eq!(e.kind(), kind);
        assert_eq!(
            e.to_string(),
            format!("Job/media/encode-*: creating a Job from jobs/encode.yaml: {message} ({reason}, {code})")
        );
        assert_eq!(lock(&kube.job_cache(None, "media").unseen).count("encode", "media", Instant::now()), 0);
        assert!(no_request(&mut handle), "retried");
    }
}

/// A delete carries the propagation asked for; a Job already gone is deleted; another
/// error is told.
#[tokio::test]
async fn a_delete_carries_its_propagation_and_a_404_is_done() {
    let gone = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "encode-a", "deletionTimestamp": "2026-12-07T01:00:00Z"}});
    let cases = [
        (Propagation::Foreground, answer(200, gone), None),
        (Propagation::Background, answer(404, status(404, "NotFound", "jobs.batch \"encode-a\" not found")), None),
        (Propagation::Background, answer(403, status(403, "Forbidden", "no")), Some("forbidden")),
    ];
    for (propagation, response, error) in cases {
        let (kube, mut handle) = adapter();
        let kube = Arc::new(kube);
        let r = rule("encode");
        let delete = {
            let (kube, r) = (kube.clone(), r.clone());
            tokio::spawn(async move { kube.delete_job(&r, "encode-a", propagation, &Leadership::unelected()).await })
        };
        let (method, path, _, body, send) = next(&mut handle).await;
        assert_eq!((method.as_str(), path.as_str()), ("DELETE", "/apis/batch/v1/namespaces/media/jobs/encode-a"));
        assert_eq!(body["propagationPolicy"], propagation.as_str());
        send.send_response(response);
        let outcome = delete.await.unwrap();
        assert_eq!(outcome.as_ref().err().map(TargetError::kind), error, "{outcome:?}");
        if let Err(e) = outcome {
            assert!(
                e.to_string().starts_with("Job/media/encode-a: deleting the Job (Background propagation): no"),
                "{e}"
            );
        }
    }
}

/// Without the lease, neither a create nor a delete is sent.
#[tokio::test]
async fn a_lost_lease_sends_nothing() {
    let (kube, mut handle) = adapter();
    let r = rule("encode");
    let lost = Leadership::lost();
    let e = kube.create_job(&r, &lost).await.unwrap_err();
    assert_eq!(e.kind(), "not_leading");
    assert!(e.to_string().contains("creating a Job from jobs/encode.yaml: not sent"), "{e}");
    let e = kube.delete_job(&r, "encode-a", Propagation::Background, &lost).await.unwrap_err();
    assert_eq!(e.kind(), "not_leading");
    assert!(no_request(&mut handle));
    assert_eq!(lock(&kube.job_cache(None, "media").unseen).count("encode", "media", Instant::now()), 0);
}

/// Creates and deletes share the context's write budget: with a burst of one at 0.5 a
/// second, a delete right after a create waits, and gives up (unsent) when the call
/// timeout comes first.
#[tokio::test]
async fn creates_and_deletes_take_the_write_budget() {
    let (kube, mut handle) = adapter_with_budget(0.5, 1, Duration::from_millis(300));
    let kube = Arc::new(kube);
    let r = rule("encode");
    let create = {
        let (kube, r) = (kube.clone(), r.clone());
        tokio::spawn(async move { kube.create_job(&r, &Leadership::unelected()).await })
    };
    let (_, _, _, mut created, send) = next(&mut handle).await;
    created["metadata"]["name"] = "encode-a".into();
    send.send_response(answer(201, created));
    create.await.unwrap().unwrap();
    let e = kube.delete_job(&r, "encode-a", Propagation::Background, &Leadership::unelected()).await.unwrap_err();
    assert_eq!(e.kind(), "throttled");
    assert!(e.to_string().contains("deleting the Job (Background propagation): no write allowed"), "{e}");
    let e = kube.create_job(&r, &Leadership::unelected()).await.unwrap_err();
    assert_eq!(e.kind(), "throttled");
    assert!(no_request(&mut handle));
}

/// A removed job rule's Jobs are orphans, listed for `status`; a namespace no running
/// job rule uses is kept while an orphan there is unfinished, then dropped.
#[tokio::test]
async fn orphans_are_listed_and_their_namespace_kept_while_one_runs() {
    let (kube, _handle) = adapter();
    let client = kube.connected(None).unwrap().client.clone();
    let entry = |name: &str, rule: &str, finish| {
        let job = CachedJob {
            rule: rule.to_owned(),
            template_hash: None,
            uid: None,
            finish,
            finished_at: None,
            created_at: None,
        };
        (name.to_owned(), job)
    };
    let media = kube.job_cache(None, "media");
    let old = kube.job_cache(None, "old");
    for cache in [&media, &old] {
        // Started (its lists are never answered), so its map is the test's alone.
        cache.start(&client);
    }
    lock(&media.jobs.map).extend([
        entry("encode-a", "encode", Finish::Unfinished),
        entry("resize-a", "resize", Finish::Complete),
        entry("resize-b", "resize", Finish::Unfinished),
    ]);
    lock(&old.jobs.map).extend([entry("thumb-a", "thumb", Finish::Unfinished)]);
    let running = rule("encode");
    let orphan =
        |ns: &str, rule: &str, name: &str, finished| (ns.to_owned(), rule.to_owned(), name.to_owned(), finished);
    assert_eq!(
        kube.orphaned_jobs(&[&running]),
        [
            orphan("media", "resize", "resize-a", true),
            orphan("media", "resize", "resize-b", false),
            orphan("old", "thumb", "thumb-a", false),
        ]
    );
    // The last orphan in `old` finishes: that namespace is no longer watched.
    lock(&old.jobs.map).get_mut("thumb-a").unwrap().finish = Finish::Complete;
    assert_eq!(
        kube.orphaned_jobs(&[&running]),
        [orphan("media", "resize", "resize-a", true), orphan("media", "resize", "resize-b", false)]
    );
    assert!(!lock(&kube.job_caches).contains_key("old"));
    // With no job rule left, `media` stays while resize-b (or encode-a) runs.
    kube.watch_jobs(&[]);
    assert!(lock(&kube.job_caches).contains_key("media"));
    for job in lock(&media.jobs.map).values_mut() {
        job.finish = Finish::Failed;
    }
    kube.watch_jobs(&[]);
    assert!(lock(&kube.job_caches).is_empty());
}

/// `check --remote` asks, for a job rule, exactly what its Jobs and pods need, in its
/// namespace.
#[test]
fn a_job_rule_needs_jobs_and_pods_in_its_namespace() {
    let kube = Kube::new(None, Some("test".to_owned()), Duration::from_secs(1));
    let needs: Vec<(String, &str)> = kube.job_needs(&rule("encode")).iter().map(|a| (a.to_string(), a.group)).collect();
    let want = [
        ("create jobs in namespace media", "batch"),
        ("delete jobs in namespace media", "batch"),
        ("get jobs in namespace media", "batch"),
        ("list jobs in namespace media", "batch"),
        ("watch jobs in namespace media", "batch"),
        ("get pods in namespace media", ""),
        ("list pods in namespace media", ""),
        ("watch pods in namespace media", ""),
    ];
    assert_eq!(needs, want.map(|(a, g)| (a.to_owned(), g)));
}

/// A job poll awaits a read, a create or a delete inside its own future, which is
/// allocated whole when the poll starts: each is small, its rare paths boxed.
#[tokio::test]
async fn the_ports_futures_are_small() {
    let kube = Kube::new(None, Some("test".to_owned()), Duration::from_secs(1));
    let (r, lead) = (rule("encode"), Leadership::unelected());
    let read = std::mem::size_of_val(&kube.jobs(&r));
    let create = std::mem::size_of_val(&kube.create_job(&r, &lead));
    let delete = std::mem::size_of_val(&kube.delete_job(&r, "encode-a", Propagation::Background, &lead));
    println!("jobs: {read} bytes, create_job: {create} bytes, delete_job: {delete} bytes");
    assert!(read <= 128, "a read's future is {read} bytes");
    assert!(create <= 640 && delete <= 640, "a write's future is {create} / {delete} bytes");
}
