//! Trace parsing and the replay itself.

use super::*;

fn demo_rule() -> crate::config::Config {
    crate::config::from_str(include_str!("../../config/demo.toml")).unwrap()
}

#[test]
fn demo_trace_goes_0_1_4_5_then_0() {
    let config = demo_rule();
    let trace = Trace::parse(include_str!("../../config/traces/demo.csv").as_bytes()).unwrap();
    let rows = run(&[&config.rules[0]], &trace, &Options::default()).unwrap();
    let replicas: Vec<_> = rows.iter().map(|r| (format_time(r.time), r.replicas)).collect();
    let expect: Vec<_> = [(0, 1), (10, 4), (20, 5), (30, 5), (40, 5), (50, 5), (60, 0), (70, 0), (80, 0), (90, 0)]
        .iter()
        .map(|&(t, r)| (t.to_string(), r))
        .collect();
    assert_eq!(replicas, expect);
    let mut csv = Vec::new();
    write_csv(&rows, &mut csv).unwrap();
    let csv = String::from_utf8(csv).unwrap();
    let lines: Vec<_> = csv.lines().collect();
    assert_eq!(lines[0], "time,rule,backlog,active,desired,replicas,reason");
    assert_eq!(lines[1], "0,demo-worker,30,true,6,1,activated");
    assert_eq!(lines[2], "10,demo-worker,30,true,6,4,rate_limited");
    assert_eq!(lines[3], "20,demo-worker,30,true,6,5,at_max");
    assert_eq!(lines[5], "40,demo-worker,0,false,0,5,cooldown");
    assert_eq!(lines[7], "60,demo-worker,0,false,0,0,scaled_to_zero");
}

#[test]
fn step_function_rows_in_any_order_and_errors() {
    let trace = Trace::parse(
        "time,queue,visible,in_flight,delayed\n20.5,q,error,,\n10,https://sqs.us-east-1.amazonaws.com/1/q,7,2,\n30,q,1,,3\n".as_bytes(),
    )
    .unwrap();
    assert_eq!(trace.at("q", Time(0)), Some(Counts::default()), "before the first row");
    assert_eq!(trace.at("q", Time(10_000)), Some(Counts { visible: 7, in_flight: 2, delayed: 0 }));
    assert_eq!(trace.at("q", Time(20_499)), Some(Counts { visible: 7, in_flight: 2, delayed: 0 }));
    assert_eq!(trace.at("q", Time(20_500)), None);
    assert_eq!(trace.at("q", Time(99_000)), Some(Counts { visible: 1, in_flight: 0, delayed: 3 }));
    assert_eq!(trace.end(), Time(30_000));
}

#[test]
fn bad_rows_name_their_line() {
    let cases = [
        (
            "time,queue,visible,in_flight,delayed\n0,q,1,0,0\n5,q,lots,0,0\n",
            3,
            "visible (\"lots\") is not a message count",
        ),
        ("time,queue,visible,in_flight,delayed\n-1,q,1,0,0\n", 2, "time (-1) must be"),
        ("time,queue,visible,in_flight,delayed\n0,q,1\n", 2, "expected 5 fields"),
        ("time,queue,visible\n0,q,1\n", 1, "the header must be"),
        ("time,queue,visible,in_flight,delayed\n0,,1,0,0\n", 2, "queue is empty"),
    ];
    for (input, line, message) in cases {
        let err = Trace::parse(input.as_bytes()).unwrap_err();
        assert_eq!(err.line, line, "{input:?}: {err}");
        assert!(err.message.contains(message), "{input:?}: {err}");
    }
}

#[test]
fn a_rule_reading_a_queue_missing_from_the_trace_is_an_error() {
    let config = demo_rule();
    let trace = Trace::parse("time,queue,visible,in_flight,delayed\n0,other,1,0,0\n".as_bytes()).unwrap();
    let err = run(&[&config.rules[0]], &trace, &Options::default()).unwrap_err();
    assert_eq!(err, RunError::UnknownQueue(config.rules[0].name.clone(), "keda-demo-queue".into()));
    assert!(err.to_string().contains("has no row in the trace"), "{err}");
}

#[test]
fn failed_polls_show_as_poll_failed_and_hold() {
    let config = demo_rule();
    let trace = Trace::parse(
        "time,queue,visible,in_flight,delayed\n0,keda-demo-queue,30,0,0\n25,keda-demo-queue,error,,\n".as_bytes(),
    )
    .unwrap();
    let rows = run(
        &[&config.rules[0]],
        &trace,
        &Options { until: Some(Time(200_000)), initial_replicas: None, ..Options::default() },
    )
    .unwrap();
    let last = rows.last().unwrap();
    assert_eq!((last.replicas, last.reason, last.backlog), (5, RowReason::Rule(Reason::PollFailed), None));
}

/// The demo rule debounced (`activation_polls = 3`) and with a `lastKnown` fallback:
/// the timeline shows `activation_pending`, then decisions on the last good reading
/// while the queue fails, then the fallback once it is too old.
#[test]
fn debounce_and_last_known_in_the_timeline() {
    let toml = include_str!("../../config/demo.toml").replace(
        "max_replica_count = 5",
        "max_replica_count = 10\nactivation_polls = 3\n\
         fallback = { failure_threshold = 0, replicas = 2, behavior = \"lastKnown\", max_age = 30 }",
    );
    let config = crate::config::from_str(&toml).unwrap();
    let trace = Trace::parse(
        "time,queue,visible,in_flight,delayed\n0,keda-demo-queue,50,0,0\n35,keda-demo-queue,error,,\n".as_bytes(),
    )
    .unwrap();
    let rows = run(
        &[&config.rules[0]],
        &trace,
        &Options { until: Some(Time(90_000)), initial_replicas: None, ..Options::default() },
    )
    .unwrap();
    let got: Vec<_> = rows.iter().map(|r| (r.replicas, r.reason.as_str())).collect();
    assert_eq!(
        got,
        [
            (0, "activation_pending"),
            (0, "activation_pending"),
            (1, "activated"),
            (4, "rate_limited"),
            (8, "last_known"),
            (10, "last_known"),
            (10, "last_known"),
            // The fallback asks for 2; the HPA's 300 s scale-down window holds 10.
            (10, "fallback"),
            (10, "fallback"),
            (10, "fallback"),
        ]
    );
}

/// Two rules share a group of 6: the one of higher priority takes what it asks for,
/// the other what is left (`group_capped`), and grows once the first drains.
#[test]
fn a_group_shares_its_capacity_by_priority() {
    let rule = |name: &str, priority: i32| {
        format!(
            "[[rule]]\nname = \"{name}\"\ntarget = {{ name = \"{name}\" }}\npolling_interval = 10\ncooldown_period = 30\n\
             max_replica_count = 10\ngroup = \"g\"\npriority = {priority}\n[rule.behavior.scale_down]\nstabilization_window = 0\n\
             [[rule.trigger]]\nqueue_url = \"https://sqs.us-east-1.amazonaws.com/1/{name}\"\nqueue_length = 1\n"
        )
    };
    let toml = format!("[[group]]\nname = \"g\"\nmax_replicas = 6\n{}{}", rule("hi", 1), rule("lo", 0));
    let config = crate::config::from_str(&toml).unwrap();
    let trace =
        Trace::parse("time,queue,visible,in_flight,delayed\n0,hi,4,0,0\n0,lo,5,0,0\n25,hi,0,0,0\n".as_bytes()).unwrap();
    let options = Options {
        until: Some(Time(40_000)),
        initial_replicas: Some(0),
        groups: config.groups.clone(),
        ..Options::default()
    };
    let rules: Vec<_> = config.rules.iter().collect();
    let rows = run(&rules, &trace, &options).unwrap();
    let got: Vec<_> =
        rows.iter().map(|r| (format_time(r.time), r.rule.as_str(), r.replicas, r.reason.as_str())).collect();
    let want = [
        // Nobody scales up before every member has polled once: lo had not.
        ("0", "hi", 0, "group_capped"),
        ("0", "lo", 1, "activated"),
        // hi's queue asks for 4 (its claim, though it steps to 1), lo's for 5: hi first
        // (priority), lo gets what is left of 6.
        ("10", "hi", 1, "activated"),
        ("10", "lo", 2, "group_capped"),
        ("20", "hi", 4, "scaled_up"),
        ("20", "lo", 2, "group_capped"),
        // hi's queue is empty: it scales in (never held by the group), lo grows.
        ("30", "hi", 1, "at_min"),
        ("30", "lo", 5, "scaled_up"),
        ("40", "hi", 1, "cooldown"),
        ("40", "lo", 5, "unchanged"),
    ];
    let want: Vec<_> = want.iter().map(|&(t, r, n, why)| (t.to_owned(), r, n, why)).collect();
    assert_eq!(got, want);
    for t in (0..=40_000).step_by(10_000) {
        let total: u32 = rows.iter().filter(|r| r.time == Time(t)).map(|r| r.replicas).sum();
        assert!(total <= 6, "at {t} ms the group runs {total}");
    }
}

#[test]
fn chart_is_an_svg_with_axes_and_legend() {
    let config = demo_rule();
    let trace = Trace::parse(include_str!("../../config/traces/demo.csv").as_bytes()).unwrap();
    let rows = run(&[&config.rules[0]], &trace, &Options::default()).unwrap();
    let svg = chart::render(&rows).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
    for text in ["time (s)", "backlog (messages)", "replicas", "backlog"] {
        assert!(svg.contains(text), "missing {text:?}");
    }
}

/// Issue 14 through `simulate`: KEDA's 0 -> 1 is no HPA scale event, so with 1 pod per
/// 60 s the HPA adds its pod at the next poll; KEDA's 3 -> 0 at 100 and 0 -> 1 at 120
/// do not let the HPA run ahead of the policy at 140 (recorded, they made its
/// periodStart 1 - 1 + 3 = 3: a step to 4).
#[test]
fn behavior_policies_count_only_the_hpa_rescales() {
    let config = crate::config::from_str(
        "[aws]\nregion = \"us-east-1\"\n[[rule]]\nname = \"r\"\ntarget = { name = \"r\" }\npolling_interval = 20\n\
         cooldown_period = 20\nmax_replica_count = 20\n\
         [rule.behavior.scale_up]\nstabilization_window = 0\npolicies = [{ type = \"Pods\", value = 1, period = 60 }]\n\
         [[rule.trigger]]\nqueue_url = \"q\"\nqueue_length = 5\n",
    )
    .unwrap();
    let trace =
        Trace::parse("time,queue,visible,in_flight,delayed\n0,q,50,,\n85,q,0,,\n105,q,50,,\n".as_bytes()).unwrap();
    let rows = run(
        &[&config.rules[0]],
        &trace,
        &Options { until: Some(Time(200_000)), initial_replicas: Some(0), ..Options::default() },
    )
    .unwrap();
    let got: Vec<_> = rows.iter().map(|r| (format_time(r.time), r.replicas, r.reason.as_str())).collect();
    let want = [
        ("0", 1, "activated"),
        ("20", 2, "rate_limited"),
        ("40", 2, "rate_limited"),
        ("60", 2, "rate_limited"),
        ("80", 3, "rate_limited"),
        ("100", 0, "scaled_to_zero"),
        ("120", 1, "activated"),
        ("140", 2, "rate_limited"),
        ("160", 2, "rate_limited"),
        ("180", 2, "rate_limited"),
        ("200", 3, "rate_limited"),
    ];
    let want: Vec<_> = want.iter().map(|&(t, r, why)| (t.to_owned(), r, why)).collect();
    assert_eq!(got, want);
}
