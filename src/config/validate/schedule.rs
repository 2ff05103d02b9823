//! `[[rule.schedule]]` -> [`Schedule`]: the pattern, the zone, the window's length and
//! the values it imposes, each problem named with its rule and the schedule's number.

use std::time::Duration;

use super::super::Rule;
use super::super::raw::RawSchedule;
use super::{Problems, duration, fmt_duration};
use crate::engine::Time;
use crate::engine::schedule::{self, Schedule, Window};

/// Every schedule of a rule whose own `min_replica_count` and `max_replica_count` are
/// `rule_min` and `rule_max`.
pub(super) fn validate(
    p: &mut Problems,
    at: &str,
    raw: &[RawSchedule],
    rule_min: i64,
    rule_max: i64,
) -> Box<[Schedule]> {
    raw.iter()
        .enumerate()
        .filter_map(|(i, s)| one(p, &format!("{at}: schedule {}", i + 1), s, rule_min, rule_max))
        .collect()
}

fn one(p: &mut Problems, at: &str, s: &RawSchedule, rule_min: i64, rule_max: i64) -> Option<Schedule> {
    let before = p.0.len();
    let pattern = s.cron.as_deref().map(str::trim).unwrap_or_default();
    let cron = if pattern.is_empty() {
        p.add(
            at,
            "cron is required: five fields (minute hour day-of-month month day-of-week), e.g. cron = \"0 8 * * 1-5\"",
        );
        None
    } else {
        schedule::parse_cron(pattern).map_err(|e| p.add(at, crate::error::chain(&e))).ok()
    };
    let timezone = s.timezone.clone().unwrap_or_else(|| "UTC".to_owned());
    let tz = schedule::time_zone(&timezone).map_err(|e| p.add(at, crate::error::chain(&e))).ok();
    let length = match &s.duration {
        None => {
            p.add(at, "duration is required: how long each window stays open, e.g. duration = \"10h\"");
            None
        }
        Some(raw) => {
            let unparsed = p.0.len();
            let d = duration(p, at, "duration", Some(raw), Duration::ZERO);
            if d.is_zero() && p.0.len() == unparsed {
                p.add(at, "duration must be more than 0s");
            }
            Some(d)
        }
    };
    let min = s.min_replica_count.filter(|v| {
        let ok = (0..=i64::from(u32::MAX)).contains(v);
        if !ok {
            p.add(at, format!("min_replica_count ({v}) must be between 0 and {}", u32::MAX));
        }
        ok
    });
    let max = s.max_replica_count.filter(|v| {
        let ok = (1..=i64::from(u32::MAX)).contains(v);
        if !ok {
            p.add(at, format!("max_replica_count ({v}) must be between 1 and {}", u32::MAX));
        }
        ok
    });
    let paused = s.paused.unwrap_or(false);
    if s.min_replica_count.is_none() && s.max_replica_count.is_none() && !paused {
        p.add(at, "sets nothing: give min_replica_count, max_replica_count or paused = true");
    }
    // While the window is open its values stand in for the rule's; the pair must hold
    // together as a rule's do. (Two windows that overlap are reconciled when they do:
    // the max never goes below the min.)
    match (min, max) {
        (Some(lo), Some(hi)) if lo > hi => {
            p.add(at, format!("min_replica_count ({lo}) is greater than max_replica_count ({hi})"))
        }
        (Some(lo), None) if lo > rule_max => p.add(
            at,
            format!("min_replica_count ({lo}) is greater than the rule's max_replica_count ({rule_max}); raise max_replica_count in this schedule too"),
        ),
        (None, Some(hi)) if hi < rule_min => p.add(
            at,
            format!("max_replica_count ({hi}) is less than the rule's min_replica_count ({rule_min}); lower min_replica_count in this schedule too"),
        ),
        _ => {}
    }
    if let Some(d) = length.filter(|d| *d > Duration::from_secs(366 * 86_400)) {
        p.add(at, format!("duration ({}) must be at most a year (366d)", fmt_duration(d)));
    }
    if p.0.len() > before {
        return None;
    }
    Some(Schedule {
        pattern: pattern.to_owned(),
        cron: cron?,
        timezone,
        tz: tz?,
        duration: length?,
        min: min.map(|v| v as u32),
        max: max.map(|v| v as u32),
        paused,
    })
}

/// What `check` prints after the resolved file: each rule's schedules, the window open
/// at `now` if any, and the next `n` openings with their closes, on the schedule's wall
/// clock and in UTC. TOML comments, so standard output stays a rule file.
pub fn windows_report(rules: &[Rule], now: Time, n: usize) -> String {
    let utc = |t: Time| jiff::Timestamp::from_millisecond(t.0).map_or_else(|_| t.0.to_string(), |t| t.to_string());
    let mut out = String::new();
    for rule in rules {
        for (i, s) in rule.policy.schedules.iter().enumerate() {
            let mut values = Vec::new();
            if let Some(v) = s.min {
                values.push(format!("min_replica_count = {v}"));
            }
            if let Some(v) = s.max {
                values.push(format!("max_replica_count = {v}"));
            }
            if s.paused {
                values.push("paused".to_owned());
            }
            out.push_str(&format!(
                "# rule {:?}, schedule {}: {:?} in {}, open {}: {}\n",
                rule.name,
                i + 1,
                s.pattern,
                s.timezone,
                fmt_duration(s.duration),
                values.join(", ")
            ));
            let line = |label: &str, w: Window| {
                format!(
                    "#   {label:<9} {} -> {}  (UTC {} -> {})\n",
                    s.local(w.opens),
                    s.local(w.closes),
                    utc(w.opens),
                    utc(w.closes)
                )
            };
            if let Some(w) = s.window_at(now) {
                out.push_str(&line("open now", w));
            }
            for w in s.next_windows(now).take(n) {
                out.push_str(&line("next", w));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::config::from_str;

    fn rule(extra: &str, schedules: &str) -> String {
        format!(
            "[[rule]]\nname = \"orders\"\ntarget = {{ name = \"w\" }}\n{extra}\n[[rule.trigger]]\nqueue_url = \"https://sqs.eu-west-1.amazonaws.com/123/orders\"\n{schedules}"
        )
    }

    /// A valid schedule resolves with its defaults (UTC), and `check`'s resolved file
    /// reads back as the same rules.
    #[test]
    fn schedules_resolve_and_read_back() {
        let toml = rule(
            "max_replica_count = 10",
            "[[rule.schedule]]\ncron = \"0 8 * * 1-5\"\ntimezone = \"Asia/Seoul\"\nduration = \"10h\"\nmin_replica_count = 3\n\
             [[rule.schedule]]\ncron = \"0 2 * * *\"\nduration = 3600\npaused = true\n",
        );
        let c = from_str(&toml).unwrap();
        let s = &c.rules[0].policy.schedules;
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[0].pattern.as_str(), s[0].timezone.as_str(), s[0].min, s[0].max),
            ("0 8 * * 1-5", "Asia/Seoul", Some(3), None)
        );
        assert_eq!((s[1].timezone.as_str(), s[1].duration.as_secs(), s[1].paused), ("UTC", 3600, true));
        let resolved = c.resolved_toml();
        assert!(resolved.contains("[[rule.schedule]]") && resolved.contains("timezone = \"UTC\""), "{resolved}");
        assert_eq!(from_str(&resolved).unwrap(), c);
    }

    /// Every problem of every schedule at once, each naming the rule and the schedule's
    /// number.
    #[test]
    fn every_schedule_problem_is_named() {
        let toml = rule(
            "max_replica_count = 5\nmin_replica_count = 2",
            "[[rule.schedule]]\ncron = \"0 8 * *\"\ntimezone = \"Asia/Sooul\"\nduration = \"10h\"\nmin_replica_count = 3\n\
             [[rule.schedule]]\ncron = \"0 8 * * *\"\n\
             [[rule.schedule]]\ncron = \"0 8 * * *\"\nduration = \"1h\"\nmin_replica_count = 8\n\
             [[rule.schedule]]\ncron = \"0 8 * * *\"\nduration = \"1h\"\nmax_replica_count = 1\n\
             [[rule.schedule]]\ncron = \"0 8 * * *\"\nduration = \"1h\"\nmin_replica_count = 8\nmax_replica_count = 9\n\
             [[rule.schedule]]\ncron = \"0 0 30 2 *\"\nduration = \"0s\"\npaused = true\nsize = 3\n",
        );
        let problems = from_str(&toml).unwrap_err().problems;
        let expect = [
            "rule \"orders\": unknown key schedule[5].size",
            "rule \"orders\": schedule 1: cron (\"0 8 * *\") is not a cron pattern of five fields",
            "rule \"orders\": schedule 1: timezone (\"Asia/Sooul\") is not an IANA time zone name",
            "rule \"orders\": schedule 2: duration is required",
            "rule \"orders\": schedule 2: sets nothing: give min_replica_count, max_replica_count or paused = true",
            "rule \"orders\": schedule 3: min_replica_count (8) is greater than the rule's max_replica_count (5); raise max_replica_count in this schedule too",
            "rule \"orders\": schedule 4: max_replica_count (1) is less than the rule's min_replica_count (2)",
            "rule \"orders\": schedule 6: cron (\"0 0 30 2 *\") never matches a date",
            "rule \"orders\": schedule 6: duration must be more than 0s",
        ];
        assert_eq!(problems.len(), expect.len(), "{problems:#?}");
        for (p, e) in problems.iter().zip(expect) {
            assert!(p.starts_with(e), "{p:?} does not start with {e:?}\n{problems:#?}");
        }
    }
}

#[cfg(test)]
mod report {
    use crate::config::from_str;
    use crate::engine::Time;

    /// `check`'s windows for the example, at Monday 2026-12-07 09:00 in Seoul:
    /// today's window is open, and the next three weekdays' follow.
    #[test]
    fn check_shows_the_window_open_now_and_the_next_three() {
        let toml = "[[rule]]\nname = \"orders\"\ntarget = { name = \"w\" }\n\
                    [[rule.trigger]]\nqueue_url = \"https://sqs.eu-west-1.amazonaws.com/123/orders\"\n\
                    [[rule.schedule]]\ncron = \"0 8 * * 1-5\"\ntimezone = \"Asia/Seoul\"\nduration = \"10h\"\nmin_replica_count = 3\n";
        let config = from_str(toml).unwrap();
        let now = Time("2026-12-07T00:00:00Z".parse::<jiff::Timestamp>().unwrap().as_millisecond());
        let report = super::windows_report(&config.rules, now, 3);
        let expect = "\
# rule \"orders\", schedule 1: \"0 8 * * 1-5\" in Asia/Seoul, open 10h: min_replica_count = 3
#   open now  2026-12-07T08:00:00+09:00 -> 2026-12-07T18:00:00+09:00  (UTC 2026-12-06T23:00:00Z -> 2026-12-07T09:00:00Z)
#   next      2026-12-08T08:00:00+09:00 -> 2026-12-08T18:00:00+09:00  (UTC 2026-12-07T23:00:00Z -> 2026-12-08T09:00:00Z)
#   next      2026-12-09T08:00:00+09:00 -> 2026-12-09T18:00:00+09:00  (UTC 2026-12-08T23:00:00Z -> 2026-12-09T09:00:00Z)
#   next      2026-12-10T08:00:00+09:00 -> 2026-12-10T18:00:00+09:00  (UTC 2026-12-09T23:00:00Z -> 2026-12-10T09:00:00Z)
";
        assert_eq!(report, expect);
        let with_report = format!("{}{report}", config.resolved_toml());
        assert_eq!(from_str(&with_report).unwrap(), config, "still a rule file");
    }
}
