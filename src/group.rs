//! The groups' ledger: what each member of a `[[group]]` runs and wants, shared by the
//! rules' workers (and `simulate`'s loop), so that a member's scale-up is granted only
//! from the group's free capacity ([`crate::engine::group::allocate`] decides how much;
//! [`crate::engine::group::share_of`] is its answer for one member, in one scan).
//!
//! Members poll on their own schedules; the ledger keeps what each one reported last,
//! so a member that polls now is weighed against the others' latest wants: a member of
//! higher priority keeps its claim on free capacity until it polls and takes it. No
//! member scales up until every member has reported once, since one not yet seen may
//! already run replicas that count against the cap. No I/O and no clock: one lock,
//! held for the arithmetic only.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::config::{Group, JobRule, Rule};
use crate::engine::group::{Member, share_of};
use crate::engine::{Decision, Phase, Reason};
use crate::sync::lock;

/// What a member reported at its last poll.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    /// The member's kube context (`None`: the default one).
    context: Option<String>,
    priority: i32,
    min: u32,
    /// Its replicas after its last poll (what it wrote, or what it read); `None` until
    /// it has polled.
    current: Option<u32>,
    want: u32,
    /// What its last ask was denied.
    denied: u32,
}

#[derive(Debug)]
struct Ledger {
    max_replicas: u32,
    /// By rule name: the allocation's order, and its last tie-break.
    members: BTreeMap<String, Seen>,
}

/// What a member may scale to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub replicas: u32,
    /// What it asked for and did not get.
    pub denied: u32,
}

/// A group as `/status` and the metrics show it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GroupStatus {
    pub group: String,
    pub max_replicas: u32,
    /// The members' replicas as last reported.
    pub replicas: u64,
    pub members: Vec<MemberStatus>,
    /// Members that have not polled yet: until they have, nobody scales up.
    pub waiting_for: Vec<String>,
    /// The kube contexts of its members (`null`: the default one).
    pub contexts: Vec<Option<String>>,
    /// What keeps the group from working as configured (a group across contexts led by
    /// different instances), if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberStatus {
    pub rule: String,
    pub priority: i32,
    pub replicas: Option<u32>,
    pub wants: u32,
    pub denied: u32,
}

/// A job rule's name in its group's ledger.
fn job_member(name: &str) -> String {
    format!("job {name}")
}

/// Every group of the running rule file.
#[derive(Debug, Default)]
pub struct Groups {
    ledgers: Mutex<BTreeMap<String, Ledger>>,
}

impl Groups {
    /// The groups and members of the rule file now running (at start and on each
    /// reload). A member that stays in its group keeps what it reported; a new one
    /// must report before anyone in its group scales up again.
    pub fn configure<'a>(&self, groups: &[Group], rules: impl IntoIterator<Item = &'a Rule>) {
        self.configure_with_jobs(groups, rules, []);
    }

    /// [`Groups::configure`], with job rules among the members: a job rule's replicas
    /// are its unfinished Jobs, and it is listed as `job <name>` (a job rule may share
    /// a rule's name).
    pub fn configure_with_jobs<'a>(
        &self,
        groups: &[Group],
        rules: impl IntoIterator<Item = &'a Rule>,
        jobs: impl IntoIterator<Item = &'a JobRule>,
    ) {
        let mut ledgers = lock(&self.ledgers);
        let mut old = std::mem::take(&mut *ledgers);
        for g in groups {
            ledgers.insert(g.name.clone(), Ledger { max_replicas: g.max_replicas, members: BTreeMap::new() });
        }
        let members =
            rules.into_iter().map(|r| (r.name.clone(), &r.group, &r.context, r.priority, r.policy.min)).chain(
                jobs.into_iter()
                    .map(|j| (job_member(&j.name), &j.group, &j.context, j.priority, j.policy.effective_min())),
            );
        for (name, group, context, priority, min) in members {
            let Some(group) = group else { continue };
            let Some(ledger) = ledgers.get_mut(group) else { continue };
            let kept = old.get_mut(group).and_then(|l| l.members.remove(&name));
            let (current, want, denied) = kept.map_or((None, 0, 0), |s| (s.current, s.want, s.denied));
            let seen = Seen { context: context.clone(), priority, min, current, want, denied };
            ledger.members.insert(name, seen);
        }
    }

    /// How many of the `create` Jobs job rule `rule` decided on its group lets it
    /// create, with `running` Jobs unfinished now (KEDA's running count) and `min` its
    /// min in force: its creates are its step up, weighed against the other members as
    /// a rule's are. A job rule in no group creates what it decided. Report what it
    /// runs after the creates with [`Groups::ran_jobs`].
    pub fn grant_jobs(&self, rule: &JobRule, running: u32, create: u32, min: u32) -> Grant {
        let Some(group) = &rule.group else { return Grant { replicas: create, denied: 0 } };
        let want = running.saturating_add(create);
        let grant = self.grant_member(group, &job_member(&rule.name), running, want, want, min);
        Grant { replicas: grant.replicas.saturating_sub(running), denied: grant.denied }
    }

    /// Job rule `rule` now runs `running` unfinished Jobs (after its creates).
    pub fn ran_jobs(&self, rule: &JobRule, running: u32) {
        let Some(group) = &rule.group else { return };
        if let Some(me) = lock(&self.ledgers).get_mut(group).and_then(|l| l.members.get_mut(&job_member(&rule.name))) {
            me.current = Some(running);
        }
    }

    /// A member's poll: it runs `current`, its decision steps to `step`, and the queue
    /// asks for `claim` (what it would run without the HPA's rate limits, within its
    /// min and max). The claim is weighed against the others' (so a member of higher
    /// priority that is still stepping up keeps its share); the step is cut to what the
    /// claim is granted, never below `min`, the member's min in force (its rule's, or
    /// an open schedule window's). A rule in no group steps as it decided.
    pub fn grant(&self, rule: &Rule, current: u32, step: u32, claim: u32, min: u32) -> Grant {
        let unlimited = Grant { replicas: step, denied: 0 };
        let Some(group) = &rule.group else { return unlimited };
        self.grant_member(group, &rule.name, current, step, claim, min)
    }

    /// [`Groups::grant`] for the member `name` of `group`.
    fn grant_member(&self, group: &str, name: &str, current: u32, step: u32, claim: u32, min: u32) -> Grant {
        let unlimited = Grant { replicas: step, denied: 0 };
        let mut ledgers = lock(&self.ledgers);
        let Some(ledger) = ledgers.get_mut(group) else { return unlimited };
        let Some(me) = ledger.members.get_mut(name) else { return unlimited };
        let claim = claim.max(step);
        me.current = Some(current);
        me.want = claim;
        me.min = min;
        let member = Member { name, priority: me.priority, current, min: me.min, want: claim };
        if member.asks() == 0 {
            // Holding, scaling in, or rising to its min: nothing to weigh.
            me.denied = 0;
            return unlimited;
        }
        let allocated = if ledger.members.values().any(|m| m.current.is_none()) {
            member.keeps()
        } else {
            let members = ledger.members.iter().map(|(name, m)| Member {
                name,
                priority: m.priority,
                current: m.current.unwrap_or(0),
                min: m.min,
                want: m.want,
            });
            share_of(ledger.max_replicas, members, &member)
        };
        let me = ledger.members.get_mut(name).expect("the member is in its ledger");
        me.denied = claim - allocated;
        // `allocated` is at least what the member keeps, so the step is never cut below it.
        Grant { replicas: step.min(allocated), denied: me.denied }
    }

    /// `d`, a member's decision, as its group allows it: a step up beyond what the group
    /// grants is cut to the grant (reason `group_capped`). A pause is the operator's word
    /// and is never cut; a rule in no group is not asked about. The worker and
    /// `simulate` both decide through here.
    pub fn limit(&self, rule: &Rule, mut d: Decision) -> Decision {
        if rule.group.is_none() || d.phase == Phase::Pause {
            return d;
        }
        let (min, _) = d.bounds(&rule.policy);
        let grant = self.grant(rule, d.current, d.replicas(), d.claim(&rule.policy), min);
        if grant.replicas < d.replicas() {
            d.write = (grant.replicas != d.current).then_some(grant.replicas);
            d.reason = Reason::GroupCapped;
        }
        d
    }

    /// The member now runs `replicas` (its write went through, or it was read so).
    pub fn ran(&self, rule: &Rule, replicas: u32) {
        let Some(group) = &rule.group else { return };
        if let Some(me) = lock(&self.ledgers).get_mut(group).and_then(|l| l.members.get_mut(&rule.name)) {
            me.current = Some(replicas);
        }
    }

    /// Every group, by name.
    pub fn statuses(&self) -> Vec<GroupStatus> {
        let ledgers = lock(&self.ledgers);
        ledgers
            .iter()
            .map(|(name, l)| GroupStatus {
                group: name.clone(),
                max_replicas: l.max_replicas,
                replicas: l.members.values().filter_map(|m| m.current).map(u64::from).sum(),
                members: l
                    .members
                    .iter()
                    .map(|(rule, m)| MemberStatus {
                        rule: rule.clone(),
                        priority: m.priority,
                        replicas: m.current,
                        wants: m.want,
                        denied: m.denied,
                    })
                    .collect(),
                waiting_for: l.members.iter().filter(|(_, m)| m.current.is_none()).map(|(r, _)| r.clone()).collect(),
                contexts: {
                    let mut c: Vec<Option<String>> = l.members.values().map(|m| m.context.clone()).collect();
                    c.sort();
                    c.dedup();
                    c
                },
                note: None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[group]]
name = "gpu"
max_replicas = 10
[[rule]]
name = "fast"
target = { name = "fast" }
group = "gpu"
priority = 10
[[rule.trigger]]
queue_url = "https://sqs.us-east-1.amazonaws.com/1/fast"
[[rule]]
name = "slow"
target = { name = "slow" }
group = "gpu"
min_replica_count = 1
[[rule.trigger]]
queue_url = "https://sqs.us-east-1.amazonaws.com/1/slow"
[[rule]]
name = "alone"
target = { name = "alone" }
[[rule.trigger]]
queue_url = "https://sqs.us-east-1.amazonaws.com/1/alone"
"#;

    fn configured() -> (Groups, crate::config::Config) {
        let config = crate::config::from_str(FILE).unwrap();
        let groups = Groups::default();
        groups.configure(&config.groups, &config.rules);
        (groups, config)
    }

    #[test]
    fn nobody_scales_up_until_every_member_has_reported() {
        let (groups, c) = configured();
        let (fast, slow) = (&c.rules[0], &c.rules[1]);
        // slow has not polled: fast keeps what it runs.
        assert_eq!(groups.grant(fast, 2, 8, 8, fast.policy.min), Grant { replicas: 2, denied: 6 });
        assert_eq!(groups.statuses()[0].waiting_for, ["slow"]);
        // slow reports (holding at 3); now fast gets what is free: 10 - 3.
        assert_eq!(groups.grant(slow, 3, 3, 3, slow.policy.min), Grant { replicas: 3, denied: 0 });
        assert_eq!(groups.grant(fast, 2, 8, 8, fast.policy.min), Grant { replicas: 7, denied: 1 });
    }

    #[test]
    fn a_higher_priority_claim_outlives_the_poll_that_made_it() {
        let (groups, c) = configured();
        let (fast, slow) = (&c.rules[0], &c.rules[1]);
        assert_eq!(groups.grant(slow, 1, 1, 1, slow.policy.min), Grant { replicas: 1, denied: 0 });
        // fast (priority 10) asks for 12 from 0: 9 are free.
        assert_eq!(groups.grant(fast, 0, 12, 12, fast.policy.min), Grant { replicas: 9, denied: 3 });
        // Its write has not gone through yet when slow polls: slow gets nothing, since
        // fast's claim stands.
        assert_eq!(groups.grant(slow, 1, 6, 6, slow.policy.min), Grant { replicas: 1, denied: 5 });
        groups.ran(fast, 9);
        let status = &groups.statuses()[0];
        assert_eq!((status.replicas, status.max_replicas), (10, 10));
        let denied: Vec<(&str, u32)> = status.members.iter().map(|m| (m.rule.as_str(), m.denied)).collect();
        assert_eq!(denied, [("fast", 3), ("slow", 5)]);
        // fast's backlog drains: it scales in (never held), and slow may grow.
        assert_eq!(groups.grant(fast, 9, 2, 2, fast.policy.min), Grant { replicas: 2, denied: 0 });
        groups.ran(fast, 2);
        assert_eq!(groups.grant(slow, 1, 6, 6, slow.policy.min), Grant { replicas: 6, denied: 0 });
    }

    /// A member stepping up by the HPA's limit claims what its queue asks for: a
    /// member of lower priority polling between its steps does not take that share.
    #[test]
    fn a_claim_reserves_beyond_this_poll_s_step() {
        let (groups, c) = configured();
        let (fast, slow) = (&c.rules[0], &c.rules[1]);
        assert_eq!(groups.grant(slow, 1, 1, 1, slow.policy.min), Grant { replicas: 1, denied: 0 });
        // fast activates (0 -> 1) with a queue that asks for 8.
        assert_eq!(groups.grant(fast, 0, 1, 8, fast.policy.min), Grant { replicas: 1, denied: 0 });
        groups.ran(fast, 1);
        // slow asks for 9: fast's claim of 8 comes first, and 1 is left for slow.
        assert_eq!(groups.grant(slow, 1, 2, 9, slow.policy.min), Grant { replicas: 2, denied: 7 });
        assert_eq!(groups.grant(fast, 1, 4, 8, fast.policy.min), Grant { replicas: 4, denied: 0 });
    }

    #[test]
    fn a_rule_in_no_group_is_never_limited() {
        let (groups, c) = configured();
        assert_eq!(groups.grant(&c.rules[2], 0, 500, 500, c.rules[2].policy.min), Grant { replicas: 500, denied: 0 });
    }

    #[test]
    fn a_reload_keeps_what_kept_members_reported() {
        let (groups, c) = configured();
        let _ = groups.grant(&c.rules[0], 4, 4, 4, c.rules[0].policy.min);
        let _ = groups.grant(&c.rules[1], 2, 2, 2, c.rules[1].policy.min);
        // The same file again, with the cap raised: fast and slow keep their reports.
        let raised = crate::config::from_str(&FILE.replace("max_replicas = 10", "max_replicas = 12")).unwrap();
        groups.configure(&raised.groups, &raised.rules);
        let status = &groups.statuses()[0];
        assert_eq!((status.max_replicas, status.replicas), (12, 6));
        assert!(status.waiting_for.is_empty());
        assert_eq!(
            groups.grant(&raised.rules[0], 4, 20, 20, raised.rules[0].policy.min),
            Grant { replicas: 10, denied: 10 }
        );
    }
}
