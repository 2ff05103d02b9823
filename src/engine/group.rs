//! Shared capacity (`[[group]]`): how a group's `max_replicas` is shared among the
//! rules that name it, as a pure function of what each member has and wants.
//!
//! No KEDA installation can do this (kedacore/keda#6682, #5889, #6796, #1500): each
//! ScaledObject decides alone. sqscale sees every member, so a scale-up is granted only
//! from the group's free capacity. The rules, in order:
//!
//! 1. A member keeps what it runs: the cap never forces a scale-in, and a member that
//!    scales in (or holds) needs nothing from the group.
//! 2. A member always gets its own `min_replica_count` (`check` rejects a group whose
//!    members' minimums exceed its cap, so the minimums always fit).
//! 3. What is free (the cap less what every member keeps) goes to higher `priority`
//!    first; within one priority, if they want more than is left, in proportion to what
//!    each asked for, by the largest-remainder method, ties by name.

use std::cmp::Reverse;

/// One member of a group as the allocation sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member<'a> {
    /// The rule's name: the last tie-break, so the result never depends on order.
    pub name: &'a str,
    pub priority: i32,
    /// The replicas it runs now (a job rule: its running Jobs).
    pub current: u32,
    /// Its `min_replica_count`.
    pub min: u32,
    /// What its own decision asks for.
    pub want: u32,
}

impl Member<'_> {
    /// What the member has without asking the group: what it keeps of what it runs (all
    /// of it, or what it scales in to), and at least its min if it asks for that much.
    pub fn keeps(&self) -> u32 {
        self.want.min(self.current.max(self.min))
    }

    /// What it asks the group for beyond what it keeps.
    pub fn asks(&self) -> u32 {
        self.want - self.keeps()
    }
}

/// The replicas granted to each member, in the order of `members`: each between what it
/// keeps and what it wants. Their sum stays within `cap` whenever what the members keep
/// does (grants only ever come out of `cap - sum(keeps)`).
pub fn allocate(cap: u32, members: &[Member<'_>]) -> Vec<u32> {
    let mut granted: Vec<u32> = members.iter().map(Member::keeps).collect();
    let kept: u64 = granted.iter().map(|&g| u64::from(g)).sum();
    let mut free = u64::from(cap).saturating_sub(kept);

    // Askers, by priority (highest first), then name: each priority level in turn.
    let mut askers: Vec<usize> = (0..members.len()).filter(|&i| members[i].asks() > 0).collect();
    askers.sort_by_key(|&i| (Reverse(members[i].priority), members[i].name));
    for level in askers.chunk_by(|&a, &b| members[a].priority == members[b].priority) {
        if free == 0 {
            break;
        }
        let asked: u64 = level.iter().map(|&i| u64::from(members[i].asks())).sum();
        if asked <= free {
            for &i in level {
                granted[i] += members[i].asks();
            }
            free -= asked;
            continue;
        }
        // Not enough for this level: shares in proportion to what each asked, the
        // units left by rounding down going to the largest remainders (ties by name,
        // which is the level's order). Each share is below what its member asked, since
        // `free < asked`.
        let mut shares: Vec<(usize, u64, u64)> = level
            .iter()
            .map(|&i| {
                let scaled = free * u64::from(members[i].asks());
                (i, scaled / asked, scaled % asked)
            })
            .collect();
        let rounded: u64 = shares.iter().map(|s| s.1).sum();
        let mut left = free - rounded;
        let mut by_remainder: Vec<usize> = (0..shares.len()).collect();
        by_remainder.sort_by_key(|&k| Reverse(shares[k].2));
        for k in by_remainder {
            if left == 0 {
                break;
            }
            shares[k].1 += 1;
            left -= 1;
        }
        for (i, share, _) in shares {
            granted[i] += share as u32;
        }
        free = 0;
    }
    granted
}

/// What [`allocate`] grants `me` (one of `members`, by name), without allocating for
/// everyone: two passes over the members, no sort and no allocation, so that a poll of
/// one member of a thousand-member group costs a scan, not a sort of the group. The
/// same arithmetic as `allocate` (a property test holds them equal).
pub fn share_of<'a>(cap: u32, members: impl Iterator<Item = Member<'a>> + Clone, me: &Member<'_>) -> u32 {
    let keeps = me.keeps();
    let asks = u64::from(me.asks());
    if asks == 0 {
        return keeps;
    }
    let (mut kept, mut higher, mut level) = (0u64, 0u64, 0u64);
    for m in members.clone() {
        kept += u64::from(m.keeps());
        let a = u64::from(m.asks());
        if a > 0 && m.priority > me.priority {
            higher += a;
        } else if a > 0 && m.priority == me.priority {
            level += a;
        }
    }
    let free = u64::from(cap).saturating_sub(kept);
    // Higher priorities take what they ask, as far as it goes.
    let left_for_level = free - higher.min(free);
    if level <= left_for_level {
        return keeps + me.asks();
    }
    // Shares in proportion; the units rounding leaves go to the largest remainders,
    // ties by name: `me` gets one if fewer than that many members rank before it.
    let scaled = left_for_level * asks;
    let (share, remainder) = (scaled / level, scaled % level);
    let (mut rounded, mut before) = (0u64, 0u64);
    for m in members.filter(|m| m.priority == me.priority && m.asks() > 0) {
        let s = left_for_level * u64::from(m.asks());
        rounded += s / level;
        let r = s % level;
        if r > remainder || (r == remainder && m.name < me.name) {
            before += 1;
        }
    }
    let extra = u64::from(before < left_for_level - rounded);
    keeps + (share + extra) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(name: &str, priority: i32, current: u32, min: u32, want: u32) -> Member<'_> {
        Member { name, priority, current, min, want }
    }

    #[test]
    fn room_for_everyone_grants_everything() {
        let members = [m("a", 0, 2, 0, 5), m("b", 0, 1, 0, 3)];
        assert_eq!(allocate(20, &members), [5, 3]);
    }

    #[test]
    fn a_scale_up_comes_only_from_free_capacity() {
        // 8 run, cap 10: a asks for 6 more and gets the 2 that are free.
        let members = [m("a", 0, 4, 0, 10), m("b", 0, 4, 0, 4)];
        assert_eq!(allocate(10, &members), [6, 4]);
    }

    #[test]
    fn higher_priority_first() {
        let members = [m("low", 0, 0, 0, 8), m("high", 10, 0, 0, 8)];
        assert_eq!(allocate(10, &members), [2, 8]);
    }

    #[test]
    fn one_priority_shares_in_proportion_with_the_largest_remainder() {
        // Free 10, asked 6 + 3 + 3 = 12: 5, 2.5, 2.5 -> 5, 3, 2 (the half goes to the
        // first by name).
        let members = [m("c", 0, 0, 0, 3), m("a", 0, 0, 0, 6), m("b", 0, 0, 0, 3)];
        assert_eq!(allocate(10, &members), [2, 5, 3]);
        // Free 7, asked 3 + 3 + 3: 2.33 each -> 3, 2, 2 by name.
        let members = [m("z", 0, 0, 0, 3), m("y", 0, 0, 0, 3), m("x", 0, 0, 0, 3)];
        assert_eq!(allocate(7, &members), [2, 2, 3]);
    }

    #[test]
    fn the_cap_never_scales_in_and_scale_in_is_never_held() {
        // Over the cap (an operator scaled by hand): nothing is taken back, nothing granted.
        let members = [m("a", 0, 15, 0, 20), m("b", 0, 5, 0, 2)];
        assert_eq!(allocate(10, &members), [15, 2]);
    }

    #[test]
    fn a_member_always_gets_its_min() {
        // a runs the whole cap; b's min of 2 is granted all the same.
        let members = [m("a", 0, 10, 0, 10), m("b", 0, 0, 2, 2)];
        assert_eq!(allocate(10, &members), [10, 2]);
        // From zero, b wants 5 with min 2: its min, then nothing free.
        let members = [m("a", 0, 8, 0, 8), m("b", 0, 0, 2, 5)];
        assert_eq!(allocate(10, &members), [8, 2]);
    }

    #[test]
    fn a_member_alone_is_capped_at_the_cap() {
        assert_eq!(allocate(20, &[m("a", 0, 4, 0, 100)]), [20]);
    }

    fn arb_members() -> impl Strategy<Value = Vec<(i32, u32, u32, u32)>> {
        prop::collection::vec((-2i32..3, 0u32..30, 0u32..4, 0u32..40), 1..12)
    }

    /// `r00`, `r01`, ...: one name per member, in order.
    fn names(raw: &[(i32, u32, u32, u32)]) -> Vec<String> {
        (0..raw.len()).map(|i| format!("r{i:02}")).collect()
    }

    /// Members of (priority, current, min, want), each wanting at least its min (as the
    /// engine's decisions do).
    fn members<'a>(raw: &[(i32, u32, u32, u32)], names: &'a [String]) -> Vec<Member<'a>> {
        raw.iter()
            .zip(names)
            .map(|(&(priority, current, min, want), name)| m(name, priority, current, min, want.max(min)))
            .collect()
    }

    proptest! {
        /// Whatever they ask, a scale-up never takes the group over its cap: the total
        /// granted is at most the cap, or what the members keep if that is more.
        #[test]
        fn a_group_never_exceeds_its_cap_through_a_scale_up(cap in 1u32..60, raw in arb_members()) {
            let names = names(&raw);
            let members = members(&raw, &names);
            let granted = allocate(cap, &members);
            let kept: u64 = members.iter().map(|x| u64::from(x.keeps())).sum();
            let total: u64 = granted.iter().map(|&g| u64::from(g)).sum();
            prop_assert!(total <= u64::from(cap).max(kept), "total {total}, cap {cap}, kept {kept}");
            for (g, x) in granted.iter().zip(&members) {
                prop_assert!(*g >= x.keeps() && *g <= x.want, "{x:?} granted {g}");
                prop_assert!(*g >= x.min.min(x.want), "{x:?} granted {g}, below its min");
            }
            // All of the free capacity is used when the askers want it.
            let asked: u64 = members.iter().map(|x| u64::from(x.asks())).sum();
            let free = u64::from(cap).saturating_sub(kept);
            prop_assert_eq!(total - kept, asked.min(free));
        }

        /// One member's share, computed alone, is what the whole allocation gives it.
        #[test]
        fn share_of_is_allocate(cap in 1u32..60, raw in arb_members()) {
            let names = names(&raw);
            let members = members(&raw, &names);
            let granted = allocate(cap, &members);
            for (me, g) in members.iter().zip(&granted) {
                prop_assert_eq!(share_of(cap, members.iter().copied(), me), *g, "{:?} in {:?}", me, members);
            }
        }

        /// A member of higher priority is never denied while a lower one gets more than
        /// it keeps.
        #[test]
        fn priority_is_served_first(cap in 1u32..60, raw in arb_members()) {
            let names = names(&raw);
            let members = members(&raw, &names);
            let granted = allocate(cap, &members);
            for (a, ga) in members.iter().zip(&granted) {
                for (b, gb) in members.iter().zip(&granted) {
                    if a.priority > b.priority && *ga < a.want {
                        prop_assert_eq!(*gb, b.keeps(), "{:?} denied while {:?} got {}", a, b, gb);
                    }
                }
            }
        }
    }
}
