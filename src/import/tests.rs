use serde_json::json;

use super::*;
use crate::config;

const QUEUE: &str = "https://sqs.eu-west-1.amazonaws.com/123456789012/orders";

fn so(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn sqs_trigger(metadata: Value) -> Value {
    json!({"type": "aws-sqs-queue", "metadata": metadata})
}

/// A ScaledObject with one aws-sqs-queue trigger on [`QUEUE`], plus `extra` spec fields.
fn simple(ns: &str, name: &str, extra: Value) -> Value {
    let mut spec = json!({"scaleTargetRef": {"name": format!("{name}-worker")},
                          "triggers": [sqs_trigger(json!({"queueURL": QUEUE}))]});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    so(ns, name, spec)
}

fn run(objects: &[Value]) -> Import {
    import(objects, &Options::default())
}

/// The import as `sqscale check` reads it back (which must accept it).
fn checked(import: &Import) -> config::Config {
    config::from_str(&import.to_toml()).unwrap_or_else(|e| panic!("{e}\n{}", import.to_toml()))
}

fn only_rule(import: &Import) -> &Imported {
    assert_eq!(import.rules.len(), 1, "{:?}", import.messages());
    &import.rules[0]
}

#[test]
fn the_demo_story_imports_to_config_demo_toml() {
    let objects = parse_documents(include_str!("../../config/demo-keda.yaml")).unwrap();
    let import = run(&objects);
    assert!(import.messages().is_empty(), "{:?}", import.messages());
    let mut imported = checked(&import);
    let demo = config::from_str(include_str!("../../config/demo.toml")).unwrap();
    // The ScaledObject has a name of its own; everything else is the same rule.
    assert_eq!(imported.rules[0].name, "aws-sqs-queue-scaledobject");
    imported.rules[0].name = demo.rules[0].name.clone();
    assert_eq!(imported, demo);
}

#[test]
fn every_field_of_the_mapping_table() {
    let spec = json!({
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "orders-db"},
        "pollingInterval": 15,
        "cooldownPeriod": 120,
        "initialCooldownPeriod": 60,
        "minReplicaCount": 2,
        "maxReplicaCount": 40,
        "idleReplicaCount": 1,
        "fallback": {"failureThreshold": 4, "replicas": 6, "behavior": "currentReplicasIfHigher"},
        "advanced": {"horizontalPodAutoscalerConfig": {"name": "custom-hpa", "behavior": {
            "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "tolerance": "50m",
                        "policies": [{"type": "Pods", "value": 4, "periodSeconds": 15},
                                     {"type": "Percent", "value": 100, "periodSeconds": 15}]},
            "scaleDown": {"stabilizationWindowSeconds": 600, "selectPolicy": "Min", "tolerance": 0.2,
                          "policies": [{"type": "Percent", "value": 10, "periodSeconds": 60}]}}}},
        "triggers": [{"type": "aws-sqs-queue", "name": "orders", "metadata": {
            "queueURL": "https://sqs.eu-west-1.amazonaws.com/123456789012/orders",
            "queueLength": "10", "activationQueueLength": "3", "scaleOnInFlight": "false",
            "scaleOnDelayed": "true", "awsRegion": "eu-west-1", "awsEndpoint": "https://sqs.internal:4566"}}]
    });
    let import = run(&[so("shop", "orders", spec)]);
    let r = &only_rule(&import).rule;
    assert!(import.messages().is_empty(), "{:?}", import.messages());
    assert_eq!(r.name.as_deref(), Some("orders"));
    let t = r.target.as_ref().unwrap();
    assert_eq!(
        (t.kind.as_deref(), t.name.as_deref(), t.namespace.as_deref()),
        (Some("StatefulSet"), Some("orders-db"), Some("shop"))
    );
    assert_eq!(r.polling_interval, Some(RawDuration::Seconds(15)));
    assert_eq!(r.cooldown_period, Some(RawDuration::Seconds(120)));
    assert_eq!(r.initial_cooldown_period, Some(RawDuration::Seconds(60)));
    assert_eq!((r.min_replica_count, r.max_replica_count, r.idle_replica_count), (Some(2), Some(40), Some(1)));
    let f = r.fallback.as_ref().unwrap();
    assert_eq!(
        (f.failure_threshold, f.replicas, f.behavior.as_deref()),
        (Some(4), Some(6), Some("currentReplicasIfHigher"))
    );
    let b = r.behavior.as_ref().unwrap();
    let (up, down) = (b.scale_up.as_ref().unwrap(), b.scale_down.as_ref().unwrap());
    assert_eq!(up.stabilization_window, Some(RawDuration::Seconds(0)));
    assert_eq!((up.select_policy.as_deref(), up.tolerance), (Some("Max"), Some(0.05)));
    let policies: Vec<_> = up
        .policies
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| (p.kind.clone().unwrap(), p.value.unwrap(), p.period.clone().unwrap()))
        .collect();
    assert_eq!(
        policies,
        [("Pods".to_owned(), 4, RawDuration::Seconds(15)), ("Percent".to_owned(), 100, RawDuration::Seconds(15))]
    );
    assert_eq!(down.stabilization_window, Some(RawDuration::Seconds(600)));
    assert_eq!((down.select_policy.as_deref(), down.tolerance), (Some("Min"), Some(0.2)));
    let tr = &r.trigger.as_ref().unwrap()[0];
    assert_eq!(tr.kind.as_deref(), Some("aws-sqs-queue"));
    assert_eq!(tr.queue_url.as_deref(), Some("https://sqs.eu-west-1.amazonaws.com/123456789012/orders"));
    // Typed: KEDA's strings become numbers and booleans.
    assert_eq!((tr.queue_length, tr.activation_queue_length), (Some(10), Some(3)));
    assert_eq!((tr.scale_on_in_flight, tr.scale_on_delayed), (Some(false), Some(true)));
    assert_eq!(tr.aws_region.as_deref(), Some("eu-west-1"));
    assert_eq!(tr.aws_endpoint.as_deref(), Some("https://sqs.internal:4566"));
    assert_eq!(tr.role_arn, None);

    // And `sqscale check` reads the same numbers back.
    let c = checked(&import);
    let rule = &c.rules[0];
    assert_eq!(rule.polling_interval, std::time::Duration::from_secs(15));
    assert_eq!((rule.policy.min, rule.policy.max, rule.policy.idle), (2, 40, Some(1)));
    assert_eq!((rule.policy.tolerances.up, rule.policy.tolerances.down), (0.05, 0.2));
    let behavior = rule.policy.behavior.as_ref().unwrap();
    assert_eq!(behavior.scale_down.stabilization_window_ms, 600_000);
    assert_eq!(behavior.scale_up.policies.len(), 2);
    assert_eq!(rule.policy.triggers[0].queue_length, 10);
    assert_eq!(rule.triggers[0].endpoint.as_deref(), Some("https://sqs.internal:4566"));
}

#[test]
fn keda_defaults_stay_defaults() {
    let import = run(&[simple("default", "orders", json!({}))]);
    let r = &only_rule(&import).rule;
    assert_eq!((r.polling_interval.clone(), r.cooldown_period.clone(), r.min_replica_count), (None, None, None));
    assert!(r.fallback.is_none() && r.behavior.is_none() && r.paused.is_none());
    let c = checked(&import);
    assert_eq!(c.rules[0].target.kind, config::TargetKind::Deployment);
    assert_eq!(c.rules[0].polling_interval, std::time::Duration::from_secs(30));
}

fn with_auth(auth_ref: Value, auths: Vec<Value>) -> Import {
    let mut t = sqs_trigger(json!({"queueURL": QUEUE}));
    t["authenticationRef"] = auth_ref;
    let mut objects = vec![so("shop", "orders", json!({"scaleTargetRef": {"name": "w"}, "triggers": [t]}))];
    objects.extend(auths);
    run(&objects)
}

fn auth(kind: &str, ns: Option<&str>, name: &str, spec: Value) -> Value {
    let mut metadata = json!({"name": name});
    if let Some(ns) = ns {
        metadata["namespace"] = json!(ns);
    }
    json!({"apiVersion": "keda.sh/v1alpha1", "kind": kind, "metadata": metadata, "spec": spec})
}

fn role_of(import: &Import) -> Option<String> {
    only_rule(import).rule.trigger.as_ref().unwrap()[0].role_arn.clone()
}

#[test]
fn a_trigger_authentication_with_a_role() {
    let role = "arn:aws:iam::123456789012:role/orders-reader";
    let spec = json!({"podIdentity": {"provider": "aws", "roleArn": role}});
    let import = with_auth(
        json!({"name": "aws-role"}),
        vec![auth("TriggerAuthentication", Some("shop"), "aws-role", spec.clone())],
    );
    assert_eq!(role_of(&import).as_deref(), Some(role));
    assert!(import.messages().is_empty(), "{:?}", import.messages());
    assert_eq!(checked(&import).rules[0].triggers[0].role_arn.as_deref(), Some(role));

    // A TriggerAuthentication of another namespace is not the one named.
    let import = with_auth(
        json!({"name": "aws-role"}),
        vec![auth("TriggerAuthentication", Some("other"), "aws-role", spec.clone())],
    );
    assert_eq!(role_of(&import), None);
    assert!(import.messages()[0].contains("TriggerAuthentication shop/aws-role, which is not in the input"));

    // A ClusterTriggerAuthentication is found by name alone.
    let import = with_auth(
        json!({"name": "aws-role", "kind": "ClusterTriggerAuthentication"}),
        vec![auth("ClusterTriggerAuthentication", None, "aws-role", spec)],
    );
    assert_eq!(role_of(&import).as_deref(), Some(role));

    // awsRoleArn as a parameter lives in a Secret, which is never read: the rule says
    // where it is instead of guessing.
    let spec = json!({"secretTargetRef": [
        {"parameter": "awsRoleArn", "name": "aws-secrets", "key": "AWS_ROLE_ARN"}]});
    let import =
        with_auth(json!({"name": "by-secret"}), vec![auth("TriggerAuthentication", Some("shop"), "by-secret", spec)]);
    assert_eq!(role_of(&import), None);
    let messages = import.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(
        messages[0].contains(
            "takes awsRoleArn from the Secret aws-secrets in namespace shop, as awsRoleArn (key AWS_ROLE_ARN)"
        ) && messages[0].contains("set role_arn"),
        "{messages:?}"
    );
}

#[test]
fn credentials_are_never_copied_and_the_secret_is_named() {
    let spec = json!({
        "secretTargetRef": [
            {"parameter": "awsAccessKeyID", "name": "aws-keys", "key": "AWS_ACCESS_KEY_ID"},
            {"parameter": "awsSecretAccessKey", "name": "aws-keys", "key": "AWS_SECRET_ACCESS_KEY"}],
        "env": [{"parameter": "awsSessionToken", "name": "AWS_SESSION_TOKEN"}]});
    let mut t = sqs_trigger(json!({"queueURL": QUEUE, "awsSecretAccessKeyFromEnv": "SECRET"}));
    t["authenticationRef"] = json!({"name": "keys"});
    let objects = vec![
        so("shop", "orders", json!({"scaleTargetRef": {"name": "w"}, "triggers": [t]})),
        auth("TriggerAuthentication", Some("shop"), "keys", spec),
    ];
    let import = run(&objects);
    let text = import.to_toml();
    let messages = import.messages();
    assert_eq!(messages.len(), 3, "{messages:?}");
    for needle in [
        "reads awsAccessKeyID (key AWS_ACCESS_KEY_ID), awsSecretAccessKey (key AWS_SECRET_ACCESS_KEY) from the Secret aws-keys in namespace shop",
        "reads awsSessionToken from the environment variable AWS_SESSION_TOKEN",
        "awsSecretAccessKeyFromEnv: credentials are never copied",
    ] {
        assert!(messages.iter().any(|m| m.contains(needle)), "{needle:?} in {messages:?}");
        assert!(text.contains(needle), "{needle:?} in\n{text}");
    }
    assert!(messages.iter().all(|m| m.contains("give sqscale's own AWS identity sqs:GetQueueAttributes")));
    let trigger = &only_rule(&import).rule.trigger.as_ref().unwrap()[0];
    assert_eq!(trigger.role_arn, None);
}

#[test]
fn an_unsupported_trigger() {
    let cron = json!({"type": "cron", "metadata": {"timezone": "UTC", "start": "0 8 * * *", "end": "0 18 * * *",
                                                    "desiredReplicas": "3"}});
    let cpu = json!({"type": "cpu", "metadata": {"value": "60"}});
    let mixed = so(
        "shop",
        "orders",
        json!({"scaleTargetRef": {"name": "w"},
               "triggers": [cron.clone(), sqs_trigger(json!({"queueURL": QUEUE})), cpu.clone()]}),
    );
    let only_cron = so("shop", "reports", json!({"scaleTargetRef": {"name": "r"}, "triggers": [cron, cpu]}));
    let import = run(&[mixed, only_cron]);
    let rule = only_rule(&import);
    assert_eq!(rule.rule.trigger.as_ref().unwrap().len(), 1);
    assert_eq!(rule.notes.len(), 1);
    assert!(rule.notes[0].starts_with("triggers of type cron, cpu are left out"), "{:?}", rule.notes);
    assert_eq!(import.rejected.len(), 1);
    let messages = import.messages();
    assert!(
        messages.contains(
            &"ScaledObject shop/reports: no rule: it has no aws-sqs-queue trigger (only cron, cpu)".to_owned()
        ),
        "{messages:?}"
    );
    // Each said once, on standard error and above the rule.
    assert_eq!(messages.iter().filter(|m| m.contains("left out")).count(), 1);
    let text = import.to_toml();
    assert!(text.contains("# not carried over: triggers of type cron, cpu are left out"), "{text}");
    assert_eq!(text.matches("cron, cpu are left out").count(), 1);
}

#[test]
fn what_cannot_carry_over_is_said_once_each() {
    let mut spec = json!({
        "scaleTargetRef": {"name": "w"},
        "advanced": {"restoreToOriginalReplicaCount": true,
                     "scalingModifiers": {"formula": "a + b", "target": "5"}},
        "triggers": [
            {"type": "aws-sqs-queue", "name": "a", "metricType": "Value", "metadata": {"queueURL": QUEUE},
             "authenticationRef": {"name": "missing"}},
            {"type": "aws-sqs-queue", "name": "b", "metadata": {"queueURL": QUEUE},
             "authenticationRef": {"name": "missing"}}]});
    spec["fallback"] = json!({"failureThreshold": 3, "replicas": 0});
    let mut obj = so("shop", "orders", spec);
    obj["metadata"]["annotations"] = json!({
        "autoscaling.keda.sh/paused-scale-in": "true",
        "autoscaling.keda.sh/paused-scale-out": "yes",
        "autoscaling.keda.sh/force-activation": "false"});
    let import = run(&[obj]);
    let notes = &only_rule(&import).notes;
    for needle in [
        "trigger 1 (a): authenticationRef names TriggerAuthentication shop/missing, which is not in the input",
        "trigger 2 (b): authenticationRef names TriggerAuthentication shop/missing",
        "fallback with replicas 0",
    ] {
        assert_eq!(notes.iter().filter(|n| n.contains(needle)).count(), 1, "{needle:?} in {notes:?}");
    }
    assert!(!notes.iter().any(|n| n.contains("annotation")), "the one-way pauses are keys now: {notes:?}");
    assert_eq!(notes.len(), 3, "{notes:?}");
    let text = import.to_toml();
    let comments = text.lines().filter(|l| l.starts_with("# not carried over: ")).count();
    assert_eq!(comments, notes.len(), "{text}");
    let rule = &only_rule(&import).rule;
    assert!(rule.fallback.is_none());
    // An annotation that is not a Go bool counts as true, as in KEDA; "false" is false.
    assert_eq!((rule.paused_scale_in, rule.paused_scale_out, rule.force_activation), (Some(true), Some(true), None));
    let types: Vec<_> = rule.trigger.as_ref().unwrap().iter().map(|t| t.metric_type.as_deref()).collect();
    assert_eq!(types, [Some("Value"), None], "metricType Value is a key now");
    assert_eq!(rule.restore_to_original_replica_count, Some(true), "so is restoreToOriginalReplicaCount");
    assert_eq!(
        rule.scaling_modifiers.as_ref().and_then(|m| m.formula.as_deref()),
        Some("a + b"),
        "and scalingModifiers"
    );
    checked(&import);
}

/// Issue 25, items 2 and 3: KEDA's `paused-scale-in`, `paused-scale-out` and
/// `force-activation` annotations on the ScaledObject become the rule keys of the same
/// meaning (before, they were notes, and the rule scaled both ways).
#[test]
fn one_way_pauses_and_forced_activation_become_keys() {
    let mut obj = simple("shop", "orders", json!({}));
    obj["metadata"]["annotations"] = json!({
        "autoscaling.keda.sh/paused-scale-in": "true",
        "autoscaling.keda.sh/force-activation": "1"});
    let import = run(&[obj]);
    let rule = &only_rule(&import).rule;
    assert_eq!((rule.paused_scale_in, rule.paused_scale_out, rule.force_activation), (Some(true), None, Some(true)));
    assert!(import.messages().is_empty(), "{:?}", import.messages());
    let c = checked(&import);
    let o = c.rules[0].overrides;
    assert_eq!((o.paused_scale_in, o.paused_scale_out, o.force_activation), (true, false, true));
    assert!(import.to_toml().contains("paused_scale_in = true"), "{}", import.to_toml());
}

#[test]
fn paused_annotations() {
    let mut paused = simple("shop", "a", json!({}));
    paused["metadata"]["annotations"] = json!({"autoscaling.keda.sh/paused": "true"});
    let mut pinned = simple("shop", "b", json!({}));
    pinned["metadata"]["annotations"] = json!({"autoscaling.keda.sh/paused-replicas": "2"});
    let mut unpaused = simple("shop", "c", json!({}));
    unpaused["metadata"]["annotations"] = json!({"autoscaling.keda.sh/paused": "false"});
    let import = run(&[paused, pinned, unpaused]);
    let p: Vec<_> = import.rules.iter().map(|r| r.rule.paused).collect();
    assert_eq!(p, [Some(true), Some(true), None]);
    assert!(
        import.rules[1].notes[0].contains("kubectl annotate -n shop deployment/b-worker sqscale.io/paused-replicas=2")
    );
    assert!(import.rules[0].notes.is_empty());
}

#[test]
fn a_name_clash_across_namespaces() {
    let objects = [
        simple("shop", "orders", json!({})),
        simple("billing", "orders", json!({})),
        simple("shop", "payments", json!({})),
    ];
    let import = run(&objects);
    let names: Vec<_> = import.rules.iter().map(|r| r.rule.name.clone().unwrap()).collect();
    assert_eq!(names, ["shop-orders", "billing-orders", "payments"]);
    // The rename is what the issue asks for: no note.
    assert!(import.messages().is_empty(), "{:?}", import.messages());
    let c = checked(&import);
    assert_eq!(c.rules[1].target.namespace, "billing");
}

#[test]
fn names_become_rule_names() {
    let long = format!("Orders.{}", "x".repeat(80));
    let mut objects = vec![
        simple("shop", &long, json!({})),
        simple("shop", "orders-xxx", json!({})),
        simple("shop", "orders_", json!({})),
        // Its name is what the one before became.
        simple("shop", "orders", json!({})),
    ];
    for (i, o) in objects.iter_mut().enumerate() {
        o["spec"]["scaleTargetRef"]["name"] = json!(format!("w{i}"));
    }
    let import = run(&objects);
    let names: Vec<_> = import.rules.iter().map(|r| r.rule.name.clone().unwrap()).collect();
    assert_eq!(names[0], format!("orders-{}", "x".repeat(56)));
    assert_eq!(names[0].len(), 63);
    assert_eq!(names[1], "orders-xxx");
    assert_eq!(names[2], "orders");
    assert_eq!(names[3], "orders-2");
    assert!(import.rules[0].notes[0].contains("is not a rule name"), "{:?}", import.rules[0].notes);
    assert!(import.rules[3].notes[0].contains("\"orders\" is another rule's"), "{:?}", import.rules[3].notes);
    checked(&import);
}

#[test]
fn values_are_typed_as_keda_parses_them() {
    let bad = |metadata: Value| {
        let mut m = json!({"queueURL": QUEUE});
        for (k, v) in metadata.as_object().unwrap() {
            m[k] = v.clone();
        }
        let obj = so("shop", "orders", json!({"scaleTargetRef": {"name": "w"}, "triggers": [sqs_trigger(m)]}));
        let import = run(&[obj]);
        assert!(import.rules.is_empty());
        import.rejected[0].reasons.join("; ")
    };
    // encoding/json's integers: no leading zero, no sign, no fraction.
    assert_eq!(bad(json!({"queueLength": "05"})), "trigger 1: queueLength (\"05\") is not a whole number");
    assert!(bad(json!({"queueLength": "2.5"})).contains("queueLength (\"2.5\")"));
    assert!(bad(json!({"scaleOnInFlight": "yes"})).contains("scaleOnInFlight (\"yes\") is not true or false"));
    // KEDA itself rejects a queue length of 0 (the HPA would): so does check.
    assert!(bad(json!({"queueLength": "0"})).contains("queue_length (0) must be greater than 0"));
    // Go's ParseBool spellings, and KEDA's trimming.
    let obj = so(
        "shop",
        "orders",
        json!({"scaleTargetRef": {"name": "w"}, "triggers": [sqs_trigger(json!({
            "queueURL": format!(" {QUEUE} "), "queueLength": " 7", "scaleOnDelayed": "T", "scaleOnInFlight": "0",
            "awsRegion": ""}))]}),
    );
    let import = run(&[obj]);
    let t = &only_rule(&import).rule.trigger.as_ref().unwrap()[0];
    assert_eq!(t.queue_url.as_deref(), Some(QUEUE));
    assert_eq!((t.queue_length, t.scale_on_delayed, t.scale_on_in_flight), (Some(7), Some(true), Some(false)));
    assert_eq!(t.aws_region, None, "empty is missing");
}

#[test]
fn a_scaled_object_that_fails_check_is_shown_commented_out() {
    let no_region = so(
        "shop",
        "local",
        json!({"scaleTargetRef": {"name": "w"},
               "triggers": [sqs_trigger(json!({"queueURL": "http://localhost:4566/000000000000/q"}))]}),
    );
    let from_env = so(
        "shop",
        "env",
        json!({"scaleTargetRef": {"name": "w2"}, "triggers": [sqs_trigger(json!({"queueURLFromEnv": "QUEUE_URL"}))]}),
    );
    let rollout = so(
        "shop",
        "rollout",
        json!({"scaleTargetRef": {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": "r"},
               "triggers": [sqs_trigger(json!({"queueURL": QUEUE}))]}),
    );
    let import = run(&[no_region, from_env, rollout, simple("shop", "ok", json!({}))]);
    assert_eq!(only_rule(&import).rule.name.as_deref(), Some("ok"));
    let reasons: Vec<String> = import.rejected.iter().map(|r| r.reasons.join("; ")).collect();
    assert!(reasons[0].contains("no AWS region"), "{reasons:?}");
    assert!(reasons[1].contains("environment variable QUEUE_URL"), "{reasons:?}");
    assert!(reasons[2].contains("its target is a Rollout (argoproj.io/v1alpha1)"), "{reasons:?}");
    let text = import.to_toml();
    assert!(text.contains("# [[rule]]\n# name = \"local\""), "{text}");
    // Commented out, the file is still what check takes.
    assert_eq!(checked(&import).rules.len(), 1);
}

#[test]
fn two_scaled_objects_on_one_target_give_one_rule() {
    let mut second = simple("shop", "b", json!({}));
    second["spec"]["scaleTargetRef"]["name"] = json!("a-worker");
    let import = run(&[simple("shop", "a", json!({})), second]);
    assert_eq!(only_rule(&import).rule.name.as_deref(), Some("a"));
    assert!(import.rejected[0].reasons[0].contains("already scaled by rule \"a\""));
    checked(&import);
}

#[test]
fn kind_list_and_typed_lists_are_opened() {
    let yaml = format!(
        "apiVersion: v1\nkind: List\nitems:\n\
         - apiVersion: apps/v1\n  kind: Deployment\n  metadata: {{name: w, namespace: shop}}\n\
         - apiVersion: keda.sh/v1alpha1\n  kind: ScaledObject\n  metadata: {{name: a, namespace: shop}}\n  \
           spec:\n    scaleTargetRef: {{name: w}}\n    triggers:\n    - type: aws-sqs-queue\n      \
           metadata: {{queueURL: \"{QUEUE}\", queueLength: \"5\"}}\n\
         metadata:\n  resourceVersion: \"\"\n---\n\
         apiVersion: keda.sh/v1alpha1\nkind: ScaledObjectList\nmetadata: {{resourceVersion: \"7\"}}\nitems:\n\
         - metadata: {{name: b, namespace: shop}}\n  spec:\n    scaleTargetRef: {{name: v}}\n    triggers:\n    \
           - type: aws-sqs-queue\n      metadata: {{queueURL: \"{QUEUE}\"}}\n"
    );
    let objects = parse_documents(&yaml).unwrap();
    assert_eq!(objects.len(), 3);
    assert_eq!(objects[2]["kind"], "ScaledObject", "a typed list's items take its kind");
    let import = run(&objects);
    let names: Vec<_> = import.rules.iter().map(|r| r.rule.name.clone().unwrap()).collect();
    assert_eq!(names, ["a", "b"]);
    // The Deployment is not KEDA's: passed over silently.
    assert!(import.messages().is_empty(), "{:?}", import.messages());

    // The same as JSON, as `kubectl get -o json` prints it.
    let json = serde_json::to_string_pretty(&json!({"apiVersion": "v1", "kind": "List", "items": objects})).unwrap();
    assert_eq!(parse_documents(&json).unwrap(), objects);
}

#[test]
fn broken_input_names_the_line() {
    let yaml = "apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata:\n  name: x\n spec: [\n";
    let e = parse_documents(yaml).unwrap_err();
    assert_eq!(e.line, Some(5), "{e}");
    assert!(e.to_string().starts_with("line 5, column "), "{e}");
    assert!(!e.message.contains("line 5"), "said once: {e}");
    let e = parse_documents("{\n  \"kind\": \"List\",\n  \"items\": [1,]\n}\n").unwrap_err();
    assert_eq!(e.line, Some(3), "{e}");
    // A document after a good one still names its own line.
    let e = parse_documents("kind: A\n---\nkind: B\nx: [1, 2\n").unwrap_err();
    assert!(e.line.is_some_and(|l| l >= 4), "{e}");
}

#[test]
fn the_same_object_twice_is_one_rule() {
    let import = run(&[simple("shop", "a", json!({})), simple("shop", "a", json!({"maxReplicaCount": 9}))]);
    assert_eq!(only_rule(&import).rule.max_replica_count, Some(9));
    assert_eq!(import.warnings.len(), 1);
}

#[test]
fn objects_without_a_namespace_take_the_default() {
    let mut obj = simple("x", "a", json!({}));
    obj["metadata"].as_object_mut().unwrap().remove("namespace");
    let import = import(&[obj], &Options { default_namespace: "shop".to_owned() });
    assert_eq!(only_rule(&import).rule.target.as_ref().unwrap().namespace.as_deref(), Some("shop"));
}

#[test]
fn diff_by_rule_name() {
    let old = config::from_str(&format!(
        "[aws]\nregion = \"eu-west-1\"\n\
         [[rule]]\nname = \"a\"\ntarget = {{ name = \"a-worker\", namespace = \"shop\" }}\ncooldown_period = \"5m\"\n\
         [[rule.trigger]]\nqueue_url = \"{QUEUE}\"\n\
         [[rule]]\nname = \"gone\"\ntarget = {{ name = \"g\" }}\n[[rule.trigger]]\nqueue_url = \"{QUEUE}\"\n\
         [[rule]]\nname = \"b\"\ntarget = {{ name = \"b-worker\", namespace = \"shop\" }}\n\
         [[rule.trigger]]\nqueue_url = \"{QUEUE}\"\nqueue_length = 5\n"
    ))
    .unwrap();
    let import = run(&[
        simple("shop", "a", json!({"cooldownPeriod": 30})),
        simple("shop", "b", json!({})),
        simple("shop", "new", json!({})),
    ]);
    let new = checked(&import);
    let lines = diff::diff(&old, &new);
    assert_eq!(
        lines,
        [
            "~ a: cooldown_period \"5m\" -> \"30s\"",
            "+ new: added (Deployment/shop/new-worker)",
            "- gone: removed (Deployment/default/g)",
            "1 rule unchanged",
        ]
    );
}

#[test]
fn an_empty_behavior_is_the_hpa_v2_defaults_and_idle_zero_with_min_zero_is_none() {
    let import = run(&[simple(
        "shop",
        "a",
        json!({"advanced": {"horizontalPodAutoscalerConfig": {"behavior": {}}},
               "minReplicaCount": 0, "idleReplicaCount": 0}),
    )]);
    let imported = only_rule(&import);
    assert!(imported.rule.behavior.is_some());
    assert_eq!(imported.rule.idle_replica_count, None);
    assert_eq!(imported.notes.len(), 1, "{:?}", imported.notes);
    let c = checked(&import);
    let behavior = c.rules[0].policy.behavior.as_ref().expect("behavior given, though empty");
    assert_eq!(behavior.scale_down.stabilization_window_ms, 300_000);
    assert_eq!(c.rules[0].policy.idle, None);
}

#[test]
fn large_inputs_parse() {
    // More documents and nodes than the YAML parser takes by default (1,024 documents,
    // 250,000 nodes), as `kubectl get -A -o yaml` prints for a large cluster (where
    // managedFields alone are dozens of nodes per object).
    let many: String = (0..1_100).map(|i| format!("---\nkind: ConfigMap\nmetadata: {{name: c{i}}}\n")).collect();
    assert_eq!(parse_documents(&many).unwrap().len(), 1_100);
    let nodes = format!("kind: ConfigMap\ndata: [{}]\n", vec!["0"; 260_000].join(","));
    assert_eq!(parse_documents(&nodes).unwrap().len(), 1);
}

#[test]
fn names_from_files_cannot_break_the_file() {
    let mut obj = simple("shop", "a\n[[rule]]\nname = \"b\u{0}\r", json!({}));
    obj["spec"]["scaleTargetRef"]["name"] = json!("w");
    let import = run(&[obj]);
    assert_eq!(checked(&import).rules.len(), 1, "{}", import.to_toml());
}

/// Issue 25, item 1: `podIdentity.externalID` comes along with `podIdentity.roleArn`
/// (before, it was dropped without a word, and every AssumeRole was then refused);
/// `awsExternalID` kept in a Secret is named, not read.
#[test]
fn the_external_id_comes_with_the_role() {
    let role = "arn:aws:iam::210987654321:role/cross-account-reader";
    let spec = json!({"podIdentity": {"provider": "aws", "roleArn": role, "externalID": "keda-7f3a"}});
    let import = with_auth(json!({"name": "cross"}), vec![auth("TriggerAuthentication", Some("shop"), "cross", spec)]);
    let trigger = &only_rule(&import).rule.trigger.as_ref().unwrap()[0];
    assert_eq!((trigger.role_arn.as_deref(), trigger.external_id.as_deref()), (Some(role), Some("keda-7f3a")));
    assert!(import.messages().is_empty(), "{:?}", import.messages());
    let c = checked(&import);
    assert_eq!(c.rules[0].triggers[0].external_id.as_deref(), Some("keda-7f3a"));

    // Without a role KEDA sends it nowhere: left out, and said.
    let spec = json!({"podIdentity": {"provider": "aws", "externalID": "keda-7f3a"}});
    let import = with_auth(json!({"name": "bare"}), vec![auth("TriggerAuthentication", Some("shop"), "bare", spec)]);
    assert_eq!(only_rule(&import).rule.trigger.as_ref().unwrap()[0].external_id, None);
    assert!(
        import.messages()[0].contains("podIdentity.externalID without podIdentity.roleArn"),
        "{:?}",
        import.messages()
    );

    let spec = json!({"secretTargetRef": [
        {"parameter": "awsRoleArn", "name": "aws", "key": "ROLE"},
        {"parameter": "awsExternalID", "name": "aws", "key": "EXTERNAL_ID"}]});
    let import = with_auth(json!({"name": "sec"}), vec![auth("TriggerAuthentication", Some("shop"), "sec", spec)]);
    let messages = import.messages();
    assert!(
        messages.iter().any(|m| m
            .contains("takes awsExternalID from the Secret aws in namespace shop, as awsExternalID (key EXTERNAL_ID)")
            && m.contains("set external_id")),
        "{messages:?}"
    );
}

/// Issue 25, item 8: `queueURLFromEnv` is read from the target in the input, with a
/// literal `env` value in `envSourceContainerName`'s container (or the first), and the
/// rule says where it came from. Without one (not in the input, `valueFrom`, empty), the
/// rule is refused as before.
#[test]
fn queue_url_from_the_targets_environment() {
    let from_env = |container: Option<&str>| {
        let mut r = json!({"name": "orders-worker"});
        if let Some(c) = container {
            r["envSourceContainerName"] = json!(c);
        }
        so(
            "shop",
            "orders",
            json!({"scaleTargetRef": r, "triggers": [sqs_trigger(json!({"queueURLFromEnv": "QUEUE_URL"}))]}),
        )
    };
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "orders-worker", "namespace": "shop"},
        "spec": {"template": {"spec": {"containers": [
            {"name": "sidecar", "env": [{"name": "QUEUE_URL", "value": "https://sqs.eu-west-1.amazonaws.com/1/side"}]},
            {"name": "worker", "env": [
                {"name": "QUEUE_URL", "value": "https://sqs.eu-west-1.amazonaws.com/1/old"},
                {"name": "QUEUE_URL", "value": " https://sqs.eu-west-1.amazonaws.com/1/orders "},
                {"name": "OTHER", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}]}}}});
    let url = |import: &Import| only_rule(import).rule.trigger.as_ref().unwrap()[0].queue_url.clone();

    let import = run(&[from_env(Some("worker")), deployment.clone()]);
    assert_eq!(url(&import).as_deref(), Some("https://sqs.eu-west-1.amazonaws.com/1/orders"));
    let notes = &only_rule(&import).notes;
    assert!(
        notes.iter().any(|n| n
            .contains("queue_url is the value of QUEUE_URL in the container worker of Deployment shop/orders-worker")),
        "{notes:?}"
    );
    checked(&import);
    // No container named: the first.
    let import = run(&[from_env(None), deployment.clone()]);
    assert_eq!(url(&import).as_deref(), Some("https://sqs.eu-west-1.amazonaws.com/1/side"));

    // Not in the input, or set by valueFrom: refused, as before.
    let import = run(&[from_env(Some("worker"))]);
    assert!(import.rules.is_empty() && import.rejected[0].reasons[0].contains("set queue_url by hand"));
    let mut secret = deployment;
    secret["spec"]["template"]["spec"]["containers"][1]["env"] =
        json!([{"name": "QUEUE_URL", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]);
    let import = run(&[from_env(Some("worker")), secret]);
    assert!(import.rules.is_empty(), "{:?}", import.messages());
}

/// Issue 25, item 9: with `identityOwner: operator` (and no `podIdentity.provider: aws`)
/// KEDA ignores awsRoleArn and reads as the operator: the advice says that instead of
/// telling the user to set role_arn to a role KEDA never used.
#[test]
fn identity_owner_operator_ignores_the_role() {
    let spec = json!({"secretTargetRef": [{"parameter": "awsRoleArn", "name": "aws", "key": "ROLE"}]});
    let mut t = sqs_trigger(json!({"queueURL": QUEUE, "identityOwner": "operator"}));
    t["authenticationRef"] = json!({"name": "op"});
    let objects = vec![
        so("shop", "orders", json!({"scaleTargetRef": {"name": "w"}, "triggers": [t]})),
        auth("TriggerAuthentication", Some("shop"), "op", spec),
    ];
    let import = run(&objects);
    let messages = import.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(messages[0].contains("with identityOwner: operator KEDA does not assume it"), "{messages:?}");
    assert!(!messages[0].contains("set role_arn"), "{messages:?}");
    assert_eq!(role_of(&import), None);
}

/// Issue 25, item 4: `advanced.scalingModifiers` and the trigger names come along
/// (KEDA's string target as a number); a formula over a trigger that is left out (cron)
/// does not check, so the rule is shown commented out with why.
#[test]
fn scaling_modifiers_come_along() {
    let spec = |formula: &str| {
        json!({"scaleTargetRef": {"name": "w"},
               "advanced": {"scalingModifiers": {"formula": formula, "target": "10", "activationTarget": "5"}},
               "triggers": [
                   {"type": "aws-sqs-queue", "name": "a", "metadata": {"queueURL": QUEUE}},
                   {"type": "aws-sqs-queue", "name": "b", "metadata": {"queueURL": QUEUE}},
                   {"type": "cron", "name": "c", "metadata": {"start": "0 8 * * *"}}]})
    };
    let import = run(&[so("shop", "orders", spec("a + b"))]);
    let rule = &only_rule(&import).rule;
    let m = rule.scaling_modifiers.as_ref().unwrap();
    assert_eq!((m.formula.as_deref(), m.target, m.activation_target), (Some("a + b"), Some(10.0), Some(5.0)));
    assert!(!import.messages().iter().any(|n| n.contains("scalingModifiers")), "{:?}", import.messages());
    let c = checked(&import);
    assert_eq!(c.rules[0].policy.triggers[0].name.as_deref(), Some("a"));

    let import = run(&[so("shop", "orders", spec("a + c"))]);
    assert!(import.rules.is_empty());
    assert!(
        import.rejected[0].reasons.iter().any(|r| r.contains("scaling_modifiers.formula")),
        "{:?}",
        import.rejected
    );
}

// === ScaledJobs ===

fn sj(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledJob",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// A ScaledJob's `jobTargetRef`: one container, `encode`, with `env`.
fn job_target(env: Value) -> Value {
    json!({"backoffLimit": 2, "template": {"spec": {"containers": [
        {"name": "sidecar", "image": "example/sidecar:1"},
        {"name": "encode", "image": "example/encode:1", "env": env}]}}})
}

fn only_job(import: &Import) -> &ImportedJob {
    assert_eq!(import.jobs.len(), 1, "{:?}", import.messages());
    &import.jobs[0]
}

/// Every field of the ScaledJob table (spec §2.1) carried over; the rule file and its
/// template, written to a folder, load as `sqscale run` would load them.
#[test]
fn a_full_scaled_job_round_trips_through_load() {
    let mut scaled = sj(
        "media",
        "encode",
        json!({
            "jobTargetRef": job_target(json!([{"name": "QUEUE", "value": "https://sqs.eu-west-1.amazonaws.com/123456789012/encode"}])),
            "envSourceContainerName": "encode",
            "pollingInterval": 10,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 1,
            "minReplicaCount": 1,
            "maxReplicaCount": 8,
            "rollout": {"strategy": "gradual", "propagationPolicy": "foreground"},
            "scalingStrategy": {"strategy": "custom", "customScalingQueueLengthDeduction": 1,
                                "customScalingRunningJobPercentage": "0.5",
                                "pendingPodConditions": ["Ready", "PodScheduled"],
                                "multipleScalersCalculation": "sum"},
            "triggers": [{"type": "aws-sqs-queue", "name": "q", "metadata": {
                "queueURLFromEnv": "QUEUE", "queueLength": "2", "activationQueueLength": "1",
                "scaleOnInFlight": "true"}}]
        }),
    );
    scaled["metadata"]["labels"] = json!({"team": "media", "internal": "x"});
    scaled["metadata"]["annotations"] = json!({
        "kubectl.kubernetes.io/last-applied-configuration": "{}",
        "scaledjob.keda.sh/job-excluded-labels": "internal",
        "autoscaling.keda.sh/paused": "true",
        "owner": "video-team"});
    let mut import = run(&[scaled]);
    let j = only_job(&import);
    assert_eq!((j.source.as_str(), j.file.as_str()), ("ScaledJob media/encode", "encode.yaml"));
    assert_eq!(
        j.notes,
        [
            "trigger 1 (q): queueURLFromEnv: queue_url is the value of QUEUE in the container encode of the job template of ScaledJob media/encode of the input; if it changes there, change it here"
        ]
    );

    let dir = tempfile::tempdir().unwrap();
    import.place_templates(std::path::Path::new("jobs"));
    std::fs::create_dir(dir.path().join("jobs")).unwrap();
    std::fs::write(dir.path().join("jobs/encode.yaml"), &import.jobs[0].template).unwrap();
    std::fs::write(dir.path().join("sqscale.toml"), import.to_toml()).unwrap();
    let c = config::load(&dir.path().join("sqscale.toml")).unwrap_or_else(|e| panic!("{e}\n{}", import.to_toml()));
    assert_eq!(c, import.check().unwrap(), "what check saw is what loads");
    let r = &c.jobs[0];
    assert_eq!((r.name.as_str(), r.namespace.as_str()), ("encode", "media"));
    assert_eq!(r.template.path, std::path::Path::new("jobs/encode.yaml"));
    assert_eq!(r.polling_interval, std::time::Duration::from_secs(10));
    let p = &r.policy;
    assert_eq!((p.min_replica_count, p.max_replica_count), (1, Some(8)));
    assert_eq!((p.successful_jobs_history_limit, p.failed_jobs_history_limit), (3, 1));
    assert!(p.paused);
    assert_eq!(
        p.strategy,
        crate::engine::job::ScalingStrategy::Custom { queue_length_deduction: 1, running_job_percentage: 0.5 }
    );
    assert_eq!(p.multiple_scalers_calculation, crate::engine::job::MultipleScalersCalculation::Sum);
    assert_eq!(r.pending_pod_conditions, ["Ready", "PodScheduled"]);
    assert_eq!(r.rollout.strategy, config::RolloutStrategy::Gradual);
    assert_eq!(r.rollout.propagation_policy, config::Propagation::Foreground);
    assert_eq!((p.triggers[0].queue_length, p.triggers[0].activation_queue_length), (2, 1));
    assert_eq!(r.triggers[0].url.as_deref(), Some("https://sqs.eu-west-1.amazonaws.com/123456789012/encode"));
    assert_eq!(r.trigger_policies[0].name.as_deref(), Some("q"));
    // The template: jobTargetRef as its spec; the ScaledJob's labels less the excluded
    // one, its annotations less kubectl's and KEDA's.
    let job = &r.template.job;
    assert_eq!(job["metadata"], json!({"labels": {"team": "media"}, "annotations": {"owner": "video-team"}}));
    assert_eq!(job["spec"]["backoffLimit"], 2);
    assert_eq!(job["spec"]["template"]["spec"]["containers"][1]["name"], "encode");
    assert_eq!(job["spec"]["template"]["spec"]["restartPolicy"], "OnFailure");
}

/// What KEDA accepts and the rule file does not is converted as spec §12 decides, and
/// said: min > max becomes min = max (§12.3); a percentage that does not parse is the
/// default strategy (§12.7); `rolloutStrategy` wins over `rollout.strategy`, and
/// `immediate` is `default`.
#[test]
fn scaled_job_values_keda_takes_are_converted_and_said() {
    let spec = |extra: Value| {
        let mut spec = json!({"jobTargetRef": job_target(json!([])),
                              "triggers": [sqs_trigger(json!({"queueURL": QUEUE}))]});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        sj("shop", "orders", spec)
    };
    let import = run(&[spec(json!({"minReplicaCount": 5, "maxReplicaCount": 2,
        "scalingStrategy": {"strategy": "custom", "customScalingQueueLengthDeduction": 3,
                            "customScalingRunningJobPercentage": "half"},
        "rolloutStrategy": "immediate", "rollout": {"strategy": "gradual"}}))]);
    let j = only_job(&import);
    assert_eq!(j.job.min_replica_count, Some(2));
    let notes = j.notes.join("\n");
    assert!(notes.contains("minReplicaCount (5) is greater than maxReplicaCount (2): KEDA then keeps 2 standby Jobs and allows up to 4 in all; min_replica_count is set to 2"), "{notes}");
    assert!(
        notes.contains(
            "customScalingRunningJobPercentage \"half\" is not a finite number: KEDA then uses the default strategy"
        ),
        "{notes}"
    );
    assert!(notes.contains("rolloutStrategy \"immediate\" wins over rollout.strategy \"gradual\""), "{notes}");
    let c = import.check().unwrap();
    assert_eq!(c.jobs[0].policy.strategy, crate::engine::job::ScalingStrategy::Default);
    assert_eq!(c.jobs[0].rollout.strategy, config::RolloutStrategy::Default);
    assert_eq!(c.jobs[0].policy.min_replica_count, 2);
    assert!(
        import.messages().iter().any(|m| m.starts_with("job rule \"orders\" (ScaledJob shop/orders): minReplicaCount"))
    );
    assert!(import.to_toml().contains("# not carried over: minReplicaCount (5)"), "{}", import.to_toml());
}

/// A ScaledJob KEDA never ran (metricType on a trigger), one without a Job, and one
/// whose Job the API would refuse give no job rule, each with why; a ScaledObject beside
/// them still imports.
#[test]
fn unusable_scaled_jobs_are_rejected_with_why() {
    let mut with_metric = sqs_trigger(json!({"queueURL": QUEUE}));
    with_metric["metricType"] = json!("Value");
    let mut always = job_target(json!([]));
    always["template"]["spec"]["restartPolicy"] = json!("Always");
    let import = run(&[
        sj("a", "metric", json!({"jobTargetRef": job_target(json!([])), "triggers": [with_metric]})),
        sj("a", "nojob", json!({"triggers": [sqs_trigger(json!({"queueURL": QUEUE}))]})),
        sj("a", "always", json!({"jobTargetRef": always, "triggers": [sqs_trigger(json!({"queueURL": QUEUE}))]})),
        sj(
            "a",
            "zero",
            json!({"jobTargetRef": job_target(json!([])), "triggers": [sqs_trigger(json!({"queueURL": QUEUE, "queueLength": "0"}))]}),
        ),
        simple("a", "orders", json!({})),
    ]);
    assert!(import.jobs.is_empty());
    assert_eq!(import.rules.len(), 1);
    let why: Vec<String> = import.rejected.iter().map(|r| format!("{}: {}", r.source, r.reasons.join("; "))).collect();
    assert_eq!(why.len(), 4, "{why:#?}");
    assert!(
        why[0].starts_with("ScaledJob a/metric: trigger 1: metricType is set, and KEDA rejects metricType"),
        "{why:#?}"
    );
    assert!(why[1].starts_with("ScaledJob a/nojob: spec.jobTargetRef is missing"), "{why:#?}");
    assert!(why[2].starts_with("ScaledJob a/always: template always.yaml line "), "{why:#?}");
    assert!(why[2].contains("restartPolicy is \"Always\""), "{why:#?}");
    assert!(why[3].starts_with("ScaledJob a/zero: trigger 1: queue_length (0) must be greater than 0"), "{why:#?}");
    assert!(checked(&import).jobs.is_empty());
}

/// Only a ScaledJob in the input is enough for a rule file of job rules alone; the
/// defaults stay unset, so `check` fills in KEDA's.
#[test]
fn a_minimal_scaled_job_takes_the_defaults() {
    let import = run(&[sj(
        "default",
        "work",
        json!({"jobTargetRef": job_target(json!([])),
        "triggers": [sqs_trigger(json!({"queueURL": QUEUE}))]}),
    )]);
    let j = only_job(&import);
    assert!(j.notes.is_empty(), "{:?}", j.notes);
    assert!(j.job.scaling_strategy.is_none() && j.job.rollout.is_none() && j.job.max_replica_count.is_none());
    let c = import.check().unwrap();
    assert!(c.rules.is_empty());
    assert_eq!(c.jobs[0].policy.max_replica_count, None);
    assert_eq!(c.jobs[0].template.job["metadata"], json!({}));
}
