//! `[[rule.schedule]]` -> [`Schedule`]: the pattern, the zone, the window's length and
//! the values it imposes, each problem named with its rule and the schedule's number.

use std::time::Duration;

use super::super::raw::RawSchedule;
use super::{Problems, duration, fmt_duration};
use crate::engine::schedule::{self, Schedule};

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
