//! Rule-file tests: KEDA's defaults and validation (vectors TV-33, TV-34), error
//! messages that name their rule and key, and the resolved form.

use super::*;

const MINIMAL: &str = r#"
[[rule]]
name = "orders"
target = { name = "orders-worker" }
[[rule.trigger]]
queue_url = "https://sqs.eu-west-1.amazonaws.com/123456789012/orders"
"#;

fn problems(toml: &str) -> Vec<String> {
    from_str(toml).expect_err("config should be invalid").problems
}

fn one_rule(extra: &str, trigger_extra: &str) -> String {
    format!(
        "[[rule]]\nname = \"orders\"\ntarget = {{ name = \"w\" }}\n{extra}\n[[rule.trigger]]\nqueue_url = \"https://sqs.eu-west-1.amazonaws.com/123/orders\"\n{trigger_extra}\n"
    )
}

#[test]
fn keda_defaults_fill_a_minimal_rule() {
    let c = from_str(MINIMAL).unwrap();
    let r = &c.rules[0];
    assert_eq!(r.polling_interval, Duration::from_secs(30));
    assert_eq!(r.policy.cooldown, Duration::from_secs(300));
    assert_eq!(r.policy.initial_cooldown, Duration::ZERO);
    assert_eq!((r.policy.min, r.policy.max, r.policy.idle), (0, 100, None));
    assert_eq!(
        r.target,
        TargetRef { kind: TargetKind::Deployment, name: "orders-worker".into(), namespace: "default".into() }
    );
    let t = &r.policy.triggers[0];
    assert_eq!(
        (t.queue_length, t.activation_queue_length, t.scale_on_in_flight, t.scale_on_delayed),
        (5, 0, true, false)
    );
    assert_eq!(r.triggers[0].region, "eu-west-1", "region from the URL host");
    assert_eq!(r.triggers[0].name, "orders");
    assert_eq!(c.server.listen, Some("127.0.0.1:9464".parse().unwrap()));
    assert!(r.policy.behavior.is_none(), "no behavior: the HPA legacy path");
}

#[test]
fn five_problems_are_all_reported() {
    let toml = r#"
[[rule]]
name = "orders"
target = { name = "w" }
min_replica_count = 5
max_replica_count = 3
polling_interval = "soon"
[[rule.trigger]]
queue_url = "https://sqs.eu-west-1.amazonaws.com/123/orders"
queue_length = 0

[[rule]]
name = "orders"
target = { name = "other" }
[[rule.trigger]]
queue_url = "http://127.0.0.1:4566/000000000000/q"
"#;
    let p = problems(toml);
    assert_eq!(p.len(), 5, "{p:#?}");
    assert!(
        p.contains(&r#"rule "orders": min_replica_count (5) is greater than max_replica_count (3)"#.to_owned()),
        "{p:#?}"
    );
    assert!(p.iter().any(|m| m.starts_with(r#"rule "orders": polling_interval ("soon") is not a duration"#)), "{p:#?}");
    assert!(p.contains(&r#"rule "orders": trigger 1: queue_length (0) must be greater than 0"#.to_owned()), "{p:#?}");
    assert!(p.iter().any(|m| m.contains("name is already used by rule #1")), "{p:#?}");
    assert!(p.iter().any(|m| m.contains("trigger 1: no AWS region")), "{p:#?}");
}

#[test]
fn every_unknown_key_is_reported_with_its_rule() {
    let toml = one_rule("min_replica = 1\ncooldown = 10", "queueURL = \"x\"");
    let p = problems(&toml);
    assert!(p.contains(&r#"rule "orders": unknown key min_replica"#.to_owned()), "{p:#?}");
    assert!(p.contains(&r#"rule "orders": unknown key cooldown"#.to_owned()), "{p:#?}");
    assert!(p.contains(&r#"rule "orders": unknown key trigger[0].queueURL"#.to_owned()), "{p:#?}");
    let p = problems(&format!("[server]\nlisten = \"\"\nport = 1\n{MINIMAL}"));
    assert_eq!(p, ["unknown key server.port"]);
}

#[test]
fn syntax_errors_carry_line_and_column() {
    let p = problems("[[rule]]\nname = \"x\"\nmin_replica_count = = 3\n");
    assert_eq!(p.len(), 1);
    assert!(p[0].contains("line 3, column"), "{p:?}");
}

#[test]
fn type_errors_name_the_key() {
    let p = problems(&one_rule("min_replica_count = \"three\"", ""));
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("rule \"orders\": min_replica_count: "), "{p:?}");
    let p = problems(&one_rule("cooldown_period = true", ""));
    assert!(p[0].contains("whole seconds or a duration string"), "{p:?}");
    let p = problems("[[rule]]\nname = \"orders\"\ntarget = 3\n");
    assert!(p[0].contains("a table such as { kind = \"Deployment\""), "{p:?}");
}

#[test]
fn a_missing_file_is_an_error_not_an_empty_config() {
    let err = load(Path::new("/nonexistent/sqscale.toml")).unwrap_err();
    assert_eq!(err.origin, "/nonexistent/sqscale.toml");
    assert!(err.problems[0].contains("No such file"), "{err}");
}

#[test]
fn an_empty_file_has_no_rules() {
    assert_eq!(problems(""), ["no [[rule]] or [[job]] defined: the file must define at least one"]);
}

/// A job rule's template is taken from the rule file's folder and read at each load: a
/// template broken after start fails the next load (a reload), naming the file and the
/// line, so the running rules stay; fixed, it loads again with its new hash.
#[test]
fn load_reads_the_template_beside_the_rule_file_each_time() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("jobs")).unwrap();
    let template = dir.path().join("jobs/encode.yaml");
    let good = "apiVersion: batch/v1\nkind: Job\nspec:\n  template:\n    spec:\n      containers:\n        - name: encode\n          image: example/encode:1\n";
    std::fs::write(&template, good).unwrap();
    let rules = dir.path().join("sqscale.toml");
    std::fs::write(
        &rules,
        "[[job]]\nname = \"encode\"\ntemplate = \"jobs/encode.yaml\"\n[[job.trigger]]\nqueue_url = \"https://sqs.eu-west-1.amazonaws.com/123/encode\"\n",
    )
    .unwrap();
    let first = load(&rules).unwrap();
    assert_eq!(first.jobs[0].template.path, Path::new("jobs/encode.yaml"), "as given");
    assert_eq!(first.jobs[0].template.job["spec"]["template"]["spec"]["restartPolicy"], "OnFailure");

    std::fs::write(&template, good.replace("      containers:", "      restartPolicy: Always\n      containers:"))
        .unwrap();
    let e = load(&rules).unwrap_err();
    assert_eq!(e.origin, rules.display().to_string());
    assert_eq!(e.problems.len(), 1, "{e}");
    let expect = format!(
        "job \"encode\": template {} line 6: spec.template.spec.restartPolicy is \"Always\"",
        template.display()
    );
    assert!(e.problems[0].starts_with(&expect), "{e}");

    std::fs::write(&template, good.replace("encode:1", "encode:2")).unwrap();
    let again = load(&rules).unwrap();
    assert_ne!(again.jobs[0].template.hash, first.jobs[0].template.hash, "a new image is a new template");

    std::fs::remove_file(&template).unwrap();
    let e = load(&rules).unwrap_err();
    assert!(
        e.problems[0].starts_with(&format!("job \"encode\": template {}: No such file", template.display())),
        "{e}"
    );
}

#[test]
fn defaults_apply_to_every_rule_and_rules_override_them() {
    let toml = format!(
        "[defaults]\npolling_interval = 10\ncooldown_period = \"1m\"\nmax_replica_count = 7\n{MINIMAL}\n[[rule]]\nname = \"b\"\ntarget = {{ name = \"b\", kind = \"StatefulSet\" }}\nmax_replica_count = 9\n[[rule.trigger]]\nqueue_url = \"https://sqs.us-east-1.amazonaws.com/1/b\"\n"
    );
    let c = from_str(&toml).unwrap();
    assert_eq!(c.rules[0].polling_interval, Duration::from_secs(10));
    assert_eq!(c.rules[0].policy.cooldown, Duration::from_secs(60));
    assert_eq!((c.rules[0].policy.max, c.rules[1].policy.max), (7, 9));
    assert_eq!(c.rules[1].target.kind, TargetKind::StatefulSet);
    let p = problems(&format!("[defaults]\nname = \"x\"\n{MINIMAL}"));
    assert_eq!(p, ["[defaults]: name cannot have a default; set it in each [[rule]]"]);
}

#[test]
fn tv33_validation_vectors() {
    let bad = |extra: &str, trig: &str| problems(&one_rule(extra, trig));
    let ok = |extra: &str, trig: &str| from_str(&one_rule(extra, trig)).unwrap();
    assert_eq!(
        bad("min_replica_count = 5\nmax_replica_count = 3", ""),
        [r#"rule "orders": min_replica_count (5) is greater than max_replica_count (3)"#]
    );
    assert_eq!(ok("min_replica_count = 3\nmax_replica_count = 3", "").rules[0].policy.max, 3);
    assert_eq!(ok("", "").rules[0].policy.max, 100);
    assert_eq!(
        bad("idle_replica_count = 0", ""),
        [r#"rule "orders": idle_replica_count (0) must be less than min_replica_count (0)"#]
    );
    assert_eq!(
        bad("min_replica_count = 2\nidle_replica_count = 2", ""),
        [r#"rule "orders": idle_replica_count (2) must be less than min_replica_count (2)"#]
    );
    assert_eq!(ok("min_replica_count = 2\nidle_replica_count = 0", "").rules[0].policy.idle, Some(0));
    assert_eq!(
        bad("min_replica_count = 0\nmax_replica_count = 0", ""),
        [r#"rule "orders": max_replica_count (0) must be at least 1"#]
    );
    assert_eq!(bad("", "queue_length = -1"), [r#"rule "orders": trigger 1: queue_length (-1) must be greater than 0"#]);
    assert_eq!(ok("", "activation_queue_length = -1").rules[0].policy.triggers[0].activation_queue_length, -1);
    // queue_length "abc" / 2.5: a type error naming the key.
    assert!(bad("", "queue_length = 2.5")[0].starts_with("rule \"orders\": trigger[0].queue_length: "));
    assert!(bad("", "scale_on_in_flight = \"yes\"")[0].starts_with("rule \"orders\": trigger[0].scale_on_in_flight: "));
    assert!(bad("", "type = \"kafka\"")[0].contains("type (\"kafka\") is not supported"));
}

#[test]
fn fallback_replicas_zero_is_rejected() {
    let p = problems(&one_rule("fallback = { failure_threshold = 3, replicas = 0 }", ""));
    assert_eq!(p.len(), 1);
    assert!(p[0].contains("fallback.replicas (0) must be at least 1"), "{p:?}");
    let p = problems(&one_rule("fallback = { replicas = 2, behavior = \"sometimes\" }", ""));
    assert_eq!(p.len(), 2, "{p:?}");
    let c = from_str(&one_rule(
        "fallback = { failure_threshold = 3, replicas = 6, behavior = \"currentReplicasIfHigher\" }",
        "",
    ))
    .unwrap();
    assert_eq!(
        c.rules[0].policy.fallback,
        Some(crate::engine::Fallback {
            failure_threshold: 3,
            replicas: 6,
            behavior: crate::engine::FallbackBehavior::CurrentReplicasIfHigher
        })
    );
}

#[test]
fn activation_polls_defaults_to_keda_and_is_checked() {
    assert_eq!(from_str(MINIMAL).unwrap().rules[0].policy.activation_polls, 1);
    let c = from_str(&format!("[defaults]\nactivation_polls = 3\n{MINIMAL}")).unwrap();
    assert_eq!(c.rules[0].policy.activation_polls, 3);
    assert!(c.resolved_toml().contains("activation_polls = 3"), "{}", c.resolved_toml());
    for bad in ["0", "-1", "1001"] {
        let p = problems(&one_rule(&format!("activation_polls = {bad}"), ""));
        assert_eq!(
            p,
            [format!(
                "rule \"orders\": activation_polls ({bad}) must be between 1 and 1000 (1 activates on the first active poll, as KEDA)"
            )]
        );
    }
}

#[test]
fn last_known_fallback_needs_a_max_age_and_only_it_takes_one() {
    let c = from_str(&one_rule(
        "fallback = { failure_threshold = 3, replicas = 2, behavior = \"lastKnown\", max_age = \"5m\" }",
        "",
    ))
    .unwrap();
    assert_eq!(
        c.rules[0].policy.fallback.unwrap().behavior,
        crate::engine::FallbackBehavior::LastKnown { max_age: Duration::from_secs(300) }
    );
    let rendered = c.resolved_toml();
    assert!(rendered.contains("behavior = \"lastKnown\"") && rendered.contains("max_age = \"5m\""), "{rendered}");
    // The rendered file reads back the same.
    assert_eq!(from_str(&rendered).unwrap().rules[0].policy, c.rules[0].policy);

    let p = problems(&one_rule("fallback = { failure_threshold = 3, replicas = 2, behavior = \"lastKnown\" }", ""));
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("rule \"orders\": fallback.max_age is required with behavior = \"lastKnown\""), "{p:?}");
    let p = problems(&one_rule(
        "fallback = { failure_threshold = 3, replicas = 2, behavior = \"lastKnown\", max_age = 0 }",
        "",
    ));
    assert_eq!(p, ["rule \"orders\": fallback.max_age must be more than 0s"]);
    let p = problems(&one_rule("fallback = { failure_threshold = 3, replicas = 2, max_age = \"1m\" }", ""));
    assert_eq!(
        p,
        ["rule \"orders\": fallback.max_age applies only to behavior = \"lastKnown\" (behavior is \"static\")"]
    );
}

#[test]
fn groups_are_named_capped_and_fit_their_members_minimums() {
    let rule = |name: &str, extra: &str| {
        format!(
            "[[rule]]\nname = \"{name}\"\ntarget = {{ name = \"{name}\" }}\n{extra}\n[[rule.trigger]]\nqueue_url = \"https://sqs.us-east-1.amazonaws.com/1/{name}\"\n"
        )
    };
    let ok = format!(
        "[[group]]\nname = \"gpu\"\nmax_replicas = 20\n{}{}",
        rule("a", "group = \"gpu\"\npriority = 5\nmin_replica_count = 2"),
        rule("b", "group = \"gpu\"")
    );
    let c = from_str(&ok).unwrap();
    assert_eq!(c.groups, [Group { name: "gpu".into(), max_replicas: 20 }]);
    assert_eq!((c.rules[0].group.as_deref(), c.rules[0].priority), (Some("gpu"), 5));
    assert_eq!((c.rules[1].group.as_deref(), c.rules[1].priority), (Some("gpu"), 0));
    let rendered = c.resolved_toml();
    assert!(rendered.contains("[[group]]") && rendered.contains("group = \"gpu\""), "{rendered}");
    assert_eq!(from_str(&rendered).unwrap(), c, "the resolved file reads back the same");

    let bad = format!(
        "[[group]]\nname = \"gpu\"\nmax_replicas = 3\n[[group]]\nname = \"gpu\"\nmax_replicas = 0\n[[group]]\nmax_replicas = 2\n{}{}{}",
        rule("a", "group = \"gpu\"\nmin_replica_count = 2"),
        rule("b", "group = \"gpu\"\nmin_replica_count = 2"),
        rule("c", "group = \"cpu\"\npriority = 1")
    );
    let p = problems(&bad);
    for want in [
        "group \"gpu\": name is already used by another group; group names must be unique",
        "group \"gpu\": max_replicas (0) must be between 1",
        "group #3: name is required",
        "rule \"c\": group (\"cpu\") is not a [[group]] of this file",
        "group \"gpu\": its members' min_replica_count add up to 4 (a 2, b 2), above max_replicas (3)",
    ] {
        assert!(p.iter().any(|x| x.starts_with(want)), "missing {want:?} in {p:#?}");
    }
    assert_eq!(p.len(), 5, "{p:#?}");
    let p = problems(&rule("d", "priority = 3"));
    assert_eq!(p, ["rule \"d\": priority applies only to a rule with a group"]);
}

#[test]
fn tv34_queue_url_parsing() {
    assert_eq!(
        queue_name_from_url("https://sqs.eu-west-1.amazonaws.com/123456789012/orders.fifo").unwrap(),
        "orders.fifo"
    );
    assert_eq!(queue_name_from_url("http://localhost:4566/000000000000/q").unwrap(), "q");
    assert_eq!(queue_name_from_url("/123/q").unwrap(), "q");
    for bad in [
        "https://sqs.eu-west-1.amazonaws.com/123456789012",
        "https://sqs.eu-west-1.amazonaws.com",
        "https://sqs.eu-west-1.amazonaws.com/123/q/",
    ] {
        assert!(queue_name_from_url(bad).is_err(), "{bad}");
    }
    // A bare name is accepted (resolved with GetQueueUrl at run time) once a region is known.
    let c = from_str("[aws]\nregion = \"us-east-2\"\n[[rule]]\nname = \"a\"\ntarget = { name = \"a\" }\n[[rule.trigger]]\nqueue_url = \"orders\"\n").unwrap();
    assert_eq!((c.rules[0].triggers[0].url.as_deref(), c.rules[0].triggers[0].name.as_str()), (None, "orders"));
    assert_eq!(c.rules[0].triggers[0].region, "us-east-2");
}

/// A trigger reading a queue given by `queue`, with `[aws] region = "ap-northeast-2"`
/// and `trigger_extra` in the trigger.
fn regional(queue: &str, trigger_extra: &str) -> String {
    format!(
        "[aws]\nregion = \"ap-northeast-2\"\n[[rule]]\nname = \"orders\"\ntarget = {{ name = \"w\" }}\n[[rule.trigger]]\nqueue_url = \"{queue}\"\n{trigger_extra}\n"
    )
}

#[test]
fn region_precedence_trigger_then_url_then_aws() {
    let region = |toml: &str| from_str(toml).unwrap().rules[0].triggers[0].region.clone();
    // The URL's host names the queue's region: [aws] region does not override it.
    assert_eq!(region(&regional("https://sqs.us-east-1.amazonaws.com/1/q", "")), "us-east-1");
    assert_eq!(region(&regional("https://us-east-1.queue.amazonaws.com/1/q", "")), "us-east-1", "the legacy host");
    assert_eq!(region(&regional("https://sqs.cn-north-1.amazonaws.com.cn/1/q", "")), "cn-north-1");
    // The trigger's own aws_region, when it agrees with the URL or the URL names none.
    let agreeing = regional("https://sqs.us-east-1.amazonaws.com/1/q", "aws_region = \"us-east-1\"");
    assert_eq!(region(&agreeing), "us-east-1");
    assert_eq!(region(&regional("http://127.0.0.1:4566/1/q", "aws_region = \"us-west-2\"")), "us-west-2");
    assert_eq!(region(&regional("q", "aws_region = \"us-west-2\"")), "us-west-2");
    // [aws] region for queue names and URLs of custom endpoints.
    assert_eq!(region(&regional("q", "")), "ap-northeast-2");
    assert_eq!(region(&regional("http://127.0.0.1:4566/1/q", "")), "ap-northeast-2");
    // Without [aws]: the URL.
    assert_eq!(region(&one_rule("", "")), "eu-west-1");
}

#[test]
fn an_aws_region_contradicting_the_url_is_an_error() {
    let p = problems(&regional("https://sqs.us-east-1.amazonaws.com/1/q", "aws_region = \"us-west-2\""));
    assert_eq!(
        p,
        [
            r#"rule "orders": trigger 1: aws_region ("us-west-2") contradicts the queue URL's host, which names region "us-east-1"; a queue URL carries its own region: remove aws_region or fix the URL"#
        ]
    );
}

#[test]
fn the_resolved_form_prints_the_region_of_the_url() {
    let printed = from_str(&regional("https://sqs.us-east-1.amazonaws.com/1/q", "")).unwrap().resolved_toml();
    assert!(printed.contains("aws_region = \"us-east-1\""), "{printed}");
    assert!(!printed.contains("aws_region = \"ap-northeast-2\""), "{printed}");
}

#[test]
fn two_rules_on_one_target_are_rejected() {
    let toml = format!(
        "{MINIMAL}\n[[rule]]\nname = \"b\"\ntarget = {{ name = \"orders-worker\" }}\n[[rule.trigger]]\nqueue_url = \"https://sqs.eu-west-1.amazonaws.com/1/b\"\n"
    );
    let p = problems(&toml);
    assert_eq!(
        p,
        [
            r#"rule "b": target Deployment/default/orders-worker is already scaled by rule "orders"; two rules would fight over it"#
        ]
    );
}

#[test]
fn behavior_defaults_are_filled_like_the_api_server() {
    let c = from_str(&one_rule("[rule.behavior.scale_down]\nstabilization_window = 60\npolicies = [ { type = \"Pods\", value = 2, period = \"30s\" } ]", "")).unwrap();
    let b = c.rules[0].policy.behavior.as_ref().unwrap();
    assert_eq!(b.scale_up, crate::engine::hpa::ScalingRules::default_scale_up());
    assert_eq!(b.scale_down.stabilization_window_ms, 60_000);
    assert_eq!(b.scale_down.policies.len(), 1);
    let p = problems(&one_rule("[rule.behavior.scale_up]\nselect_policy = \"Sometimes\"\npolicies = []", ""));
    assert_eq!(p.len(), 2, "{p:?}");
}

#[test]
fn leader_election_defaults_and_checks() {
    let c = from_str(MINIMAL).unwrap();
    assert!(!c.leader_election.enabled);
    assert_eq!(c.leader_election.lease_duration, Duration::from_secs(15));
    let p = problems(&format!("[leader_election]\nlease_duration = 5\n{MINIMAL}"));
    assert_eq!(p, ["[leader_election]: lease_duration (5s) must be greater than renew_deadline (10s)"]);
    // A standby is cold unless asked to keep its windows warm (and poll twice as often).
    assert_eq!(c.leader_election.standby, crate::config::Standby::Cold);
    let c = from_str(&format!("[leader_election]\nstandby = \"warm\"\n{MINIMAL}")).unwrap();
    assert_eq!(c.leader_election.standby, crate::config::Standby::Warm);
    assert!(c.resolved_toml().contains("standby = \"warm\""), "{}", c.resolved_toml());
    let p = problems(&format!("[leader_election]\nstandby = \"hot\"\n{MINIMAL}"));
    assert_eq!(p, [r#"[leader_election]: standby must be "cold" or "warm", not "hot""#]);
}

#[test]
fn resolved_form_reads_back_to_the_same_config() {
    let toml = format!(
        "[defaults]\npolling_interval = 10\n{}\n[[rule]]\nname = \"b\"\ntarget = {{ name = \"b\" }}\nfallback = {{ failure_threshold = 2, replicas = 3 }}\n[rule.behavior.scale_up]\ntolerance = 0.05\n[[rule.trigger]]\nqueue_url = \"https://sqs.us-east-1.amazonaws.com/1/b\"\n[[rule.trigger]]\nqueue_url = \"https://sqs.us-east-1.amazonaws.com/1/c\"\nqueue_length = 20\n",
        MINIMAL
    );
    let c = from_str(&toml).unwrap();
    let printed = c.resolved_toml();
    assert!(printed.contains("cooldown_period = \"5m\""), "{printed}");
    assert_eq!(from_str(&printed).unwrap(), c, "{printed}");
}

#[test]
#[allow(clippy::result_large_err)] // figment's Jail API returns figment::Error
fn environment_overrides_scalars_and_ignores_cli_variables() {
    figment::Jail::expect_with(|jail| {
        jail.create_file("rules.toml", MINIMAL)?;
        jail.set_env("SQSCALE_AWS__ENDPOINT_URL", "http://127.0.0.1:4566");
        jail.set_env("SQSCALE_SERVER__LISTEN", "");
        jail.set_env("SQSCALE_LOG", "debug");
        jail.set_env("SQSCALE_CONFIG", "rules.toml");
        let c = load(Path::new("rules.toml")).map_err(|e| e.to_string())?;
        assert_eq!(c.aws.endpoint_url.as_deref(), Some("http://127.0.0.1:4566"));
        assert_eq!(c.rules[0].triggers[0].endpoint.as_deref(), Some("http://127.0.0.1:4566"));
        assert_eq!(c.server.listen, None);
        Ok(())
    });
}

#[test]
fn the_direct_path_is_on_unless_turned_off() {
    let c = from_str(MINIMAL).unwrap();
    assert!(c.aws.direct_path && c.rules[0].triggers[0].direct);
    assert!(c.resolved_toml().contains("direct_path = true"), "{}", c.resolved_toml());
    let c = from_str(&format!("[aws]\ndirect_path = false\n{MINIMAL}")).unwrap();
    assert!(!c.aws.direct_path && !c.rules[0].triggers[0].direct);
    assert_eq!(from_str(&c.resolved_toml()).unwrap(), c);
    let p = problems(&format!("[aws]\ndirect_path = \"no\"\n{MINIMAL}"));
    assert!(p.len() == 1 && p[0].contains("direct_path"), "{p:?}");
}

/// `[kubernetes] qps` and `burst`: KEDA's operator defaults, a positive rate and a whole
/// burst of at least one, shown by `check`.
#[test]
fn the_write_budget_defaults_to_kedas_and_rejects_nonsense() {
    let c = from_str(&one_rule("", "")).unwrap();
    assert_eq!((c.kubernetes.qps, c.kubernetes.burst), (20.0, 30));
    let c = from_str(&format!("[kubernetes]\nqps = 2.5\nburst = 1\n{}", one_rule("", ""))).unwrap();
    assert_eq!((c.kubernetes.qps, c.kubernetes.burst), (2.5, 1));
    assert!(c.resolved_toml().contains("qps = 2.5") && c.resolved_toml().contains("burst = 1"));
    let p = problems(&format!("[kubernetes]\nqps = 0\nburst = 0\n{}", one_rule("", "")));
    assert!(p.iter().any(|p| p.starts_with("[kubernetes]: qps (0)")), "{p:?}");
    assert!(p.iter().any(|p| p.starts_with("[kubernetes]: burst (0)")), "{p:?}");
    assert!(problems(&format!("[kubernetes]\nqps = -1.0\n{}", one_rule("", ""))).len() == 1);
}

/// Issue 26 item 5: `qps = 1e10` passed `check` and panicked `run` at start (a limiter
/// period of zero). The range the write budget can keep is checked, naming the key; the
/// ends of it are kept.
#[test]
fn a_write_budget_past_what_the_limiter_keeps_is_a_problem() {
    for (set, key) in [
        ("qps = 1e10", "qps (10000000000)"),
        ("qps = 0.0005", "qps (0.0005)"),
        ("qps = inf", "qps (inf)"),
        ("qps = nan", "qps (NaN)"),
        ("burst = 4294967295", "burst (4294967295)"),
    ] {
        let p = problems(&format!("[kubernetes]\n{set}\n{}", one_rule("", "")));
        assert!(p.len() == 1 && p[0].starts_with(&format!("[kubernetes]: {key} must be")), "{set}: {p:?}");
    }
    let c = from_str(&format!("[kubernetes]\nqps = 1e6\nburst = 1000000\n{}", one_rule("", ""))).unwrap();
    assert_eq!((c.kubernetes.qps, c.kubernetes.burst), (1e6, 1_000_000));
    // What `run` builds from them must not panic, at either end.
    crate::workload::kube::WriteLimit::new(c.kubernetes.qps, c.kubernetes.burst);
    let c = from_str(&format!("[kubernetes]\nqps = 0.001\nburst = 1000000\n{}", one_rule("", ""))).unwrap();
    crate::workload::kube::WriteLimit::new(c.kubernetes.qps, c.kubernetes.burst);
}

/// Issue 25, item 1: `external_id` beside `role_arn`, in `[aws]` and on a trigger. A
/// trigger with a role of its own does not take `[aws]`'s ExternalId (it belongs to
/// `[aws]`'s role); without any role it is an error naming the key. Before, the key was
/// unknown.
#[test]
fn external_id_goes_with_its_role() {
    let aws = "[aws]\nrole_arn = \"arn:aws:iam::123456789012:role/shared\"\nexternal_id = \"shared-id\"\n";
    let toml = format!(
        "{aws}{}[[rule.trigger]]\nqueue_url = \"https://sqs.eu-west-1.amazonaws.com/123/b\"\nrole_arn = \"arn:aws:iam::123456789012:role/own\"\n\
         [[rule.trigger]]\nqueue_url = \"https://sqs.eu-west-1.amazonaws.com/123/c\"\nrole_arn = \"arn:aws:iam::123456789012:role/own\"\nexternal_id = \"own-id\"\n",
        one_rule("", "")
    );
    let c = from_str(&toml).unwrap();
    let ids: Vec<_> = c.rules[0].triggers.iter().map(|q| (q.role_arn.as_deref(), q.external_id.as_deref())).collect();
    assert_eq!(
        ids,
        [
            (Some("arn:aws:iam::123456789012:role/shared"), Some("shared-id")),
            (Some("arn:aws:iam::123456789012:role/own"), None),
            (Some("arn:aws:iam::123456789012:role/own"), Some("own-id")),
        ]
    );
    assert_eq!(
        c.rules[0].triggers[2].identity(),
        "role arn:aws:iam::123456789012:role/own with an ExternalId, assumed from the default credential chain"
    );
    // `check` prints them resolved, and the printed file reads back the same.
    let resolved = c.resolved_toml();
    assert!(resolved.contains("external_id = \"own-id\""), "{resolved}");
    assert_eq!(from_str(&resolved).unwrap(), c);

    let p = problems(&format!("[aws]\nexternal_id = \"x1\"\n{}", one_rule("", "external_id = \"x\"")));
    assert_eq!(p.len(), 3, "{p:#?}");
    assert!(p.iter().any(|m| m.starts_with("[aws]: external_id is set without role_arn")), "{p:#?}");
    assert!(
        p.iter().any(|m| m.starts_with("rule \"orders\": trigger 1: external_id is set without role_arn")),
        "{p:#?}"
    );
    assert!(p.iter().any(|m| m.contains("external_id (\"x\") must be 2 to 1224 characters")), "{p:#?}");
}

/// Issue 25, items 2, 3 and 6: the one-way pauses and forced activation as rule keys
/// (from `[defaults]` too), and `metric_type` on a trigger; `check` prints them resolved.
/// Before, each was an unknown key.
#[test]
fn one_way_pauses_force_activation_and_metric_type() {
    let toml = format!(
        "[defaults]\npaused_scale_in = true\n{}",
        one_rule("force_activation = true", "metric_type = \"Value\"")
    );
    let c = from_str(&toml).unwrap();
    let r = &c.rules[0];
    assert_eq!(
        r.overrides,
        crate::engine::Overrides { paused_scale_in: true, paused_scale_out: false, force_activation: true }
    );
    assert_eq!(r.policy.triggers[0].metric_type, crate::engine::MetricType::Value);
    let resolved = c.resolved_toml();
    for line in
        ["paused_scale_in = true", "paused_scale_out = false", "force_activation = true", "metric_type = \"Value\""]
    {
        assert!(resolved.contains(line), "{line} in\n{resolved}");
    }
    assert_eq!(from_str(&resolved).unwrap(), c);

    let p = problems(&one_rule("", "metric_type = \"Utilization\""));
    assert_eq!(
        p,
        [
            r#"rule "orders": trigger 1: metric_type ("Utilization") must be "AverageValue" or "Value" (an external metric has no Utilization)"#
        ]
    );
}

/// Issue 25, item 4: `scaling_modifiers` over named triggers, the formula compiled and
/// run once at load (KEDA's validation): a syntax error, an unknown trigger name, a
/// missing target are `check` errors naming the rule, all at once. Before, unknown keys.
#[test]
fn scaling_modifiers_are_validated_at_load() {
    let rule = |modifiers: &str| {
        format!(
            "[[rule]]\nname = \"orders\"\ntarget = {{ name = \"w\" }}\n{modifiers}\n\
             [[rule.trigger]]\nname = \"q1\"\nqueue_url = \"https://sqs.eu-west-1.amazonaws.com/123/a\"\n\
             [[rule.trigger]]\nname = \"q2\"\nqueue_url = \"https://sqs.eu-west-1.amazonaws.com/123/b\"\n"
        )
    };
    let c = from_str(&rule("scaling_modifiers = { formula = \"q1 > 2 ? q1 + q2 : 0\", target = 10 }")).unwrap();
    let m = c.rules[0].policy.modifiers.as_ref().unwrap();
    assert_eq!((m.formula.source(), m.target, m.activation_target), ("q1 > 2 ? q1 + q2 : 0", 10.0, 0.0));
    assert_eq!(c.rules[0].policy.triggers[1].name.as_deref(), Some("q2"));
    let resolved = c.resolved_toml();
    assert!(resolved.contains("formula = \"q1 > 2 ? q1 + q2 : 0\""), "{resolved}");
    assert_eq!(from_str(&resolved).unwrap(), c);

    let p = problems(&rule("scaling_modifiers = { formula = \"q1 + q3\", metric_type = \"Utilization\" }"));
    assert_eq!(p.len(), 3, "{p:#?}");
    assert!(
        p.iter()
            .any(|m| m.starts_with("rule \"orders\": scaling_modifiers.formula (\"q1 + q3\"):") && m.contains("q3")),
        "{p:#?}"
    );
    assert!(
        p.contains(&"rule \"orders\": scaling_modifiers.target is required when scaling_modifiers is set".to_owned()),
        "{p:#?}"
    );
    assert!(p.iter().any(|m| m.contains("scaling_modifiers.metric_type (\"Utilization\")")), "{p:#?}");
    let p = problems(&rule("scaling_modifiers = { formula = \"q1 +\", target = 0 }"));
    assert_eq!(p.len(), 2, "{p:#?}");
    assert!(p.iter().any(|m| m.contains("scaling_modifiers.formula (\"q1 +\")")), "{p:#?}");
    assert!(p.iter().any(|m| m.contains("scaling_modifiers.target (0) must be a number greater than 0")), "{p:#?}");
}

/// One load reads a template shared by many job rules once (and a failing one once,
/// with the same error for each rule); a new load reads it again.
#[test]
fn a_template_shared_by_job_rules_is_read_once_per_load() {
    use std::cell::Cell;
    use std::path::Path;
    let reads = Cell::new(0);
    let read = |given: &Path| {
        reads.set(reads.get() + 1);
        super::template::parse(
            "apiVersion: batch/v1\nkind: Job\nspec:\n  template:\n    spec:\n      containers: [{name: a, image: b}]\n",
            given,
        )
    };
    let once = super::read_once(read);
    let first = once(Path::new("a.yaml")).unwrap();
    for _ in 0..999 {
        assert_eq!(once(Path::new("a.yaml")).unwrap(), first);
    }
    assert!(once(Path::new("b.yaml")).is_ok());
    assert_eq!(reads.get(), 2, "one read per path");
    let again = super::read_once(|given: &Path| {
        reads.set(reads.get() + 1);
        super::template::parse("kind: CronJob\n", given)
    });
    assert!(again(Path::new("a.yaml")).is_err() && again(Path::new("a.yaml")).is_err());
    assert_eq!(reads.get(), 3, "a new load reads afresh, a failure once");
}
