//! What the job cache keeps of Jobs and pods, how it counts pending Jobs, and the Jobs
//! created and not seen yet: no API server needed (the HTTP side is in `jobs_tests.rs`).

use serde_json::{Value, json};

use super::*;

fn job(name: &str, status: Value) -> (String, CachedJob) {
    let full = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name, "namespace": "media", "uid": format!("uid-{name}"),
            "creationTimestamp": "2026-12-07T01:00:00Z",
            "labels": {
                "app.kubernetes.io/managed-by": "sqscale", "sqscale.io/job": "encode",
                "sqscale.io/template-hash": "h1", "team": "media"
            },
            "annotations": {"note": "kept by the API, not by the cache"}
        },
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}], "restartPolicy": "Never"}}},
        "status": status
    });
    CachedJob::of(serde_json::from_value(full).unwrap())
}

fn t(s: &str) -> Option<Time> {
    parse_time(s)
}

fn condition(type_: &str, status: &str, at: &str) -> Value {
    json!({"type": type_, "status": status, "lastTransitionTime": at})
}

/// Each case of KEDA's `isJobFinished` (spec §4 step 3, §12.9) and the times cleanup
/// and the grace read.
#[test]
fn a_job_reads_as_its_first_finished_condition() {
    const AT: &str = "2026-12-07T01:05:00Z";
    const DONE: &str = "2026-12-07T01:04:59Z";
    let cases: Vec<(&str, Value, Finish, Option<Time>)> = vec![
        ("no status yet", Value::Null, Finish::Unfinished, None),
        ("running", json!({"active": 1, "startTime": AT}), Finish::Unfinished, None),
        (
            "SuccessCriteriaMet alone",
            json!({"conditions": [condition("SuccessCriteriaMet", "True", AT)]}),
            Finish::Unfinished,
            None,
        ),
        (
            "FailureTarget alone",
            json!({"conditions": [condition("FailureTarget", "True", AT)]}),
            Finish::Unfinished,
            None,
        ),
        ("Complete False", json!({"conditions": [condition("Complete", "False", AT)]}), Finish::Unfinished, None),
        (
            "Complete, with its completion time",
            json!({"conditions": [condition("SuccessCriteriaMet", "True", "2026-12-07T01:04:00Z"), condition("Complete", "True", AT)],
                   "completionTime": DONE}),
            Finish::Complete,
            t(DONE),
        ),
        (
            "Complete without a completion time: the condition's time",
            json!({"conditions": [condition("Complete", "True", AT)]}),
            Finish::Complete,
            t(AT),
        ),
        (
            "Failed: the condition's time (Kubernetes sets no completion time)",
            json!({"conditions": [condition("FailureTarget", "True", "2026-12-07T01:04:00Z"), condition("Failed", "True", AT)]}),
            Finish::Failed,
            t(AT),
        ),
        (
            "the first finished condition wins",
            json!({"conditions": [condition("Failed", "True", AT), condition("Complete", "True", DONE)], "completionTime": DONE}),
            Finish::Failed,
            t(AT),
        ),
        (
            "a False one is skipped",
            json!({"conditions": [condition("Failed", "False", DONE), condition("Complete", "True", AT)], "completionTime": AT}),
            Finish::Complete,
            t(AT),
        ),
    ];
    for (case, status, finish, finished_at) in cases {
        let (name, cached) = job("encode-a", status);
        assert_eq!(name, "encode-a");
        assert_eq!((cached.finish, cached.finished_at), (finish, finished_at), "{case}");
        assert_eq!(cached.rule, "encode");
        assert_eq!(cached.template_hash.as_deref(), Some("h1"));
        assert_eq!(cached.uid.as_deref(), Some("uid-encode-a"));
        assert_eq!(cached.created_at, t("2026-12-07T01:00:00Z"));
    }
    // Without sqscale's labels: no rule, no hash.
    let bare = json!({"metadata": {"name": "x"}, "status": null});
    let (_, cached) = CachedJob::of(serde_json::from_value(bare).unwrap());
    assert_eq!((cached.rule.as_str(), cached.template_hash, cached.created_at), ("", None, None));
    // The engine's view: pending only matters while unfinished.
    let (_, done) = job("encode-a", json!({"conditions": [condition("Complete", "True", AT)]}));
    assert_eq!(done.seen("encode-a", true).status, JobStatus::Complete);
    let (_, running) = job("encode-a", Value::Null);
    assert_eq!(running.seen("encode-a", false).status, JobStatus::Unfinished { pending: false });
}

fn pod_json(labels: Value, owner: Option<(&str, &str)>, phase: Option<&str>, conditions: &[(&str, &str)]) -> CachedPod {
    let mut metadata = json!({"name": "p", "labels": labels});
    if let Some((name, uid)) = owner {
        metadata["ownerReferences"] =
            json!([{"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid, "controller": true}]);
    }
    let conditions: Vec<Value> =
        conditions.iter().map(|(t, s)| json!({"type": t, "status": s, "lastTransitionTime": null})).collect();
    let status = json!({"phase": phase, "conditions": conditions});
    CachedPod::of(serde_json::from_value(json!({"metadata": metadata, "status": status})).unwrap()).1
}

/// A pod names its Job by the controller labels (either generation of them) or, lacking
/// those, its controlling owner; keeps its phase and only the True conditions.
#[test]
fn a_pod_reads_as_its_job_phase_and_true_conditions() {
    let labelled = pod_json(
        json!({"sqscale.io/job": "encode", "batch.kubernetes.io/controller-uid": "u1",
               "batch.kubernetes.io/job-name": "encode-a", "controller-uid": "old", "job-name": "old"}),
        Some(("other", "u9")),
        Some("Running"),
        &[("Ready", "True"), ("PodScheduled", "True"), ("ContainersReady", "False")],
    );
    assert_eq!(
        labelled,
        CachedPod {
            rule: "encode".into(),
            job_uid: Some("u1".into()),
            job_name: Some("encode-a".into()),
            phase: Phase::Running,
            conditions: vec!["Ready".into(), "PodScheduled".into()],
        }
    );
    let older = pod_json(json!({"controller-uid": "u2", "job-name": "encode-b"}), None, Some("Succeeded"), &[]);
    assert_eq!((older.job_uid.as_deref(), older.job_name.as_deref()), (Some("u2"), Some("encode-b")));
    assert_eq!((older.rule.as_str(), older.phase), ("", Phase::Succeeded));
    let owned = pod_json(json!({}), Some(("encode-c", "u3")), None, &[]);
    assert_eq!((owned.job_uid.as_deref(), owned.job_name.as_deref()), (Some("u3"), Some("encode-c")));
    assert_eq!(owned.phase, Phase::Pending, "no phase yet is pending");
    for (phase, want) in [("Pending", Phase::Pending), ("Failed", Phase::Failed), ("Unknown", Phase::Unknown)] {
        assert_eq!(pod_json(json!({}), None, Some(phase), &[]).phase, want);
    }
}

fn pod(job: &str, phase: Phase, conditions: &[&str]) -> CachedPod {
    CachedPod {
        rule: "encode".into(),
        job_uid: Some(format!("uid-{job}")),
        job_name: Some(job.into()),
        phase,
        conditions: conditions.iter().map(|c| (*c).to_owned()).collect(),
    }
}

fn pods(list: Vec<CachedPod>) -> HashMap<String, CachedPod> {
    list.into_iter().enumerate().map(|(i, p)| (format!("pod-{i}"), p)).collect()
}

/// One unfinished Job of rule `encode` with `its` pods: pending?
fn pending_with(conditions: &[&str], its: Vec<CachedPod>) -> bool {
    let jobs: HashMap<String, CachedJob> = [job("encode-a", Value::Null)].into_iter().collect();
    let conditions: Vec<String> = conditions.iter().map(|c| (*c).to_owned()).collect();
    let seen = snapshot_of("encode", &conditions, &jobs, &pods(its));
    assert_eq!(seen.len(), 1);
    match seen[0].status {
        JobStatus::Unfinished { pending } => pending,
        other => panic!("{other:?}"),
    }
}

/// Without `pending_pod_conditions`, a Job is pending until one of its pods is Running
/// or Succeeded (KEDA's `isAnyPodRunningOrCompleted`).
#[test]
fn pending_by_pod_phases() {
    use Phase::*;
    assert!(pending_with(&[], vec![]), "no pod yet");
    assert!(pending_with(&[], vec![pod("encode-a", Pending, &["PodScheduled"])]));
    assert!(pending_with(&[], vec![pod("encode-a", Failed, &[]), pod("encode-a", Unknown, &[])]));
    assert!(!pending_with(&[], vec![pod("encode-a", Failed, &[]), pod("encode-a", Running, &[])]));
    assert!(!pending_with(&[], vec![pod("encode-a", Succeeded, &[])]));
}

/// With `pending_pod_conditions`, a Job is pending until ONE pod has every listed
/// condition True; a condition listed twice is never met (spec §4 step 3, §12.9).
#[test]
fn pending_by_pod_conditions() {
    use Phase::*;
    let both = ["Ready", "PodScheduled"];
    assert!(!pending_with(&both, vec![pod("encode-a", Running, &["PodScheduled", "Initialized", "Ready"])]));
    assert!(pending_with(
        &both,
        vec![pod("encode-a", Running, &["Ready"]), pod("encode-a", Pending, &["PodScheduled"])]
    ));
    assert!(pending_with(&both, vec![pod("encode-a", Running, &["Ready"])]), "a Running pod is not enough");
    assert!(!pending_with(&["Ready"], vec![pod("encode-a", Running, &["Ready"])]));
    assert!(
        pending_with(&["Ready", "Ready"], vec![pod("encode-a", Running, &["Ready", "PodScheduled"])]),
        "listed twice"
    );
    assert!(pending_with(&both, vec![]), "no pod yet");
}

/// Pods count for their own Job only (by uid, or by name when they name no uid), and
/// only for the rule's Jobs; the rule's Jobs come in name order, other rules' never.
#[test]
fn pods_release_their_own_job_only() {
    use Phase::*;
    let jobs: HashMap<String, CachedJob> = [
        job("encode-b", Value::Null),
        job("encode-a", Value::Null),
        job("encode-c", Value::Null),
        job("encode-d", json!({"conditions": [condition("Complete", "True", "2026-12-07T01:05:00Z")]})),
    ]
    .into_iter()
    .chain([{
        let (name, mut other) = job("resize-a", Value::Null);
        other.rule = "resize".into();
        (name, other)
    }])
    .collect();
    let by_name_only = CachedPod { job_uid: None, ..pod("encode-c", Running, &[]) };
    let older_namesake =
        CachedPod { job_uid: Some("uid-of-an-older-encode-b".into()), ..pod("encode-b", Running, &[]) };
    let other_rule = CachedPod { rule: "resize".into(), ..pod("encode-b", Running, &[]) };
    let all = pods(vec![pod("encode-a", Running, &[]), by_name_only, older_namesake, other_rule]);
    let seen = snapshot_of("encode", &[], &jobs, &all);
    let got: Vec<(&str, JobStatus)> = seen.iter().map(|j| (j.name.as_str(), j.status)).collect();
    assert_eq!(
        got,
        [
            ("encode-a", JobStatus::Unfinished { pending: false }),
            ("encode-b", JobStatus::Unfinished { pending: true }),
            ("encode-c", JobStatus::Unfinished { pending: false }),
            ("encode-d", JobStatus::Complete),
        ]
    );
    assert_eq!(seen[3].finished_at, t("2026-12-07T01:05:00Z"));
    assert_eq!(seen[0].template_hash.as_deref(), Some("h1"));
}

/// A created Job counts until the watch shows it, or it is known deleted, or it has gone
/// unseen for [`UNSEEN_LIMIT`]; never one the watch has shown already.
#[test]
fn created_jobs_count_until_the_watch_shows_them() {
    let t0 = Instant::now();
    let mut unseen = Unseen::default();
    unseen.created("encode-a", "encode", t0, false);
    unseen.created("encode-b", "encode", t0, false);
    unseen.created("resize-a", "resize", t0, false);
    assert_eq!(unseen.count("encode", "media", t0), 2);
    assert_eq!(unseen.count("resize", "media", t0), 1);
    unseen.seen("encode-a");
    assert_eq!(unseen.count("encode", "media", t0), 1, "shown by the watch");
    unseen.deleted("encode-b");
    assert_eq!(unseen.count("encode", "media", t0), 0, "deleted");
    // The watch showed it before the create's answer came back.
    unseen.created("encode-c", "encode", t0, true);
    // ...or showed it come and go.
    unseen.created("encode-b", "encode", t0, false);
    assert_eq!(unseen.count("encode", "media", t0), 0);
    // Expiry.
    unseen.created("encode-e", "encode", t0, false);
    assert_eq!(unseen.count("encode", "media", t0 + UNSEEN_LIMIT - Duration::from_secs(1)), 1);
    assert_eq!(unseen.count("encode", "media", t0 + UNSEEN_LIMIT), 0, "expired");
    // A list: Jobs in it are seen; Jobs created before it began and missing from it are
    // gone; Jobs created since it began may not be in it yet.
    let mut unseen = Unseen::default();
    unseen.created("encode-f", "encode", t0, false);
    unseen.created("encode-g", "encode", t0, false);
    unseen.list_started(t0 + Duration::from_secs(1));
    unseen.created("encode-h", "encode", t0 + Duration::from_secs(2), false);
    let listed: HashMap<String, ()> = [("encode-f".to_owned(), ())].into_iter().collect();
    unseen.listed(&listed);
    assert_eq!(unseen.count("encode", "media", t0), 1);
    unseen.seen("encode-h");
    assert_eq!(unseen.count("encode", "media", t0), 0);
}

/// No counts until both watches have listed, nor while either is broken; the created
/// Jobs not seen yet count beside the cached ones, the seen ones do not.
#[test]
fn a_snapshot_needs_both_watches_in_step() {
    let cache = JobCache::new("test".into(), "media".into());
    let rule = crate::workload::kube::jobs::tests::rule("encode");
    let now = Instant::now();
    assert_eq!(cache.snapshot(&rule, now), None);
    cache.jobs.ready.store(true, Ordering::SeqCst);
    assert_eq!(cache.snapshot(&rule, now), None, "the pods have not listed");
    cache.pods.ready.store(true, Ordering::SeqCst);
    assert_eq!(cache.snapshot(&rule, now), Some(JobsSnapshot::default()));
    lock(&cache.jobs.map).extend([job("encode-a", Value::Null)]);
    cache.created("encode-a", "encode", now);
    cache.created("encode-b", "encode", now);
    let snapshot = cache.snapshot(&rule, now).unwrap();
    assert_eq!(snapshot.created_unseen, 1);
    assert_eq!(snapshot.jobs.len(), 1);
    assert_eq!(snapshot.jobs[0].status, JobStatus::Unfinished { pending: true });
    cache.deleted("encode-b");
    assert_eq!(cache.snapshot(&rule, now).unwrap().created_unseen, 0);
    cache.pods.ready.store(false, Ordering::SeqCst);
    assert_eq!(cache.snapshot(&rule, now), None, "a broken watch");
}
