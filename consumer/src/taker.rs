//! Which leases a worker should take or steal: a pure function of what it observed.
//!
//! ```text
//!   observed leases (owner, expired?, finished?) + me ─► plan_take ─► { take: [...], steal: [...] }
//! ```
//!
//! The KCL 2.x taker takes expired and unowned leases up to `ceil(leases / workers)` and, only when
//! none are free, steals **one** lease per 20 s cycle from the most loaded worker — a new worker
//! in a fleet of 100 leases needs many minutes to reach its share. Here a worker takes what is
//! free and steals the rest of its deficit in the same round, from every worker above the
//! target, so it reaches its fair share in one round (two taker intervals at most, counting the
//! round in which it first sees the others). Workers at or below the target are never stolen
//! from, so the fleet does not oscillate.

use std::collections::HashMap;

/// What a worker knows about one lease at planning time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    /// The lease key (shard id).
    pub key: String,
    /// Current owner, if any.
    pub owner: Option<String>,
    /// Its counter has not changed for `failover_time`, judged by this worker's clock.
    pub expired: bool,
    /// Checkpointed at SHARD_END: nothing left to process.
    pub finished: bool,
}

/// Leases to acquire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TakePlan {
    /// Free leases: unowned or expired.
    pub take: Vec<String>,
    /// Leases held (and renewed) by workers above their share.
    pub steal: Vec<String>,
}

/// Plans this worker's acquisitions. `max_leases` caps what one worker holds.
pub fn plan_take(leases: &[LeaseView], me: &str, max_leases: usize) -> TakePlan {
    let active: Vec<&LeaseView> = leases.iter().filter(|l| !l.finished).collect();
    if active.is_empty() {
        return TakePlan::default();
    }
    // Live workers: owners of leases they still renew, and me.
    let mut load: HashMap<&str, Vec<&LeaseView>> = HashMap::new();
    load.insert(me, Vec::new());
    for l in &active {
        if let (Some(o), false) = (l.owner.as_deref(), l.expired) {
            load.entry(o).or_default().push(l);
        }
    }
    let target = active.len().div_ceil(load.len()).min(max_leases);
    let mine = load.get(me).map_or(0, Vec::len);
    if mine >= target {
        return TakePlan::default();
    }
    let mut need = target - mine;

    // Free leases first: unowned before expired; spread workers over different leases by
    // ordering on a per-worker hash so they do not all race for the same ones.
    let mut free: Vec<&LeaseView> = active
        .iter()
        .copied()
        .filter(|l| l.owner.is_none() || (l.expired && l.owner.as_deref() != Some(me)))
        .collect();
    free.sort_by_key(|l| (l.owner.is_some(), spread(me, &l.key)));
    let take: Vec<String> = free.iter().take(need).map(|l| l.key.clone()).collect();
    need -= take.len();

    // Then steal the rest from workers above the target, most loaded first.
    let mut steal = Vec::new();
    if need > 0 {
        let mut donors: Vec<(&str, Vec<&LeaseView>)> = load
            .into_iter()
            .filter(|(w, held)| *w != me && held.len() > target)
            .collect();
        donors.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
        for (_, mut held) in donors {
            if need == 0 {
                break;
            }
            let excess = held.len() - target;
            held.sort_by_key(|l| spread(me, &l.key));
            for l in held.into_iter().take(excess.min(need)) {
                steal.push(l.key.clone());
                need -= 1;
            }
        }
    }
    TakePlan { take, steal }
}

/// A stable per-(worker, lease) order (FNV-1a), so workers prefer different leases.
fn spread(me: &str, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in me.bytes().chain([0]).chain(key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leases(spec: &[(&str, Option<&str>, bool)]) -> Vec<LeaseView> {
        spec.iter()
            .map(|(k, o, expired)| LeaseView {
                key: (*k).into(),
                owner: o.map(Into::into),
                expired: *expired,
                finished: false,
            })
            .collect()
    }

    /// Runs rounds of every worker planning and acquiring until nothing changes.
    fn converge(mut ls: Vec<LeaseView>, workers: &[&str]) -> (Vec<LeaseView>, usize) {
        for round in 1..=10 {
            let mut changed = false;
            for w in workers {
                let plan = plan_take(&ls, w, usize::MAX);
                for k in plan.take.iter().chain(&plan.steal) {
                    let l = ls.iter_mut().find(|l| &l.key == k).unwrap();
                    l.owner = Some((*w).into());
                    l.expired = false;
                    changed = true;
                }
            }
            if !changed {
                return (ls, round);
            }
        }
        panic!("no convergence");
    }

    fn counts(ls: &[LeaseView], workers: &[&str]) -> Vec<usize> {
        workers
            .iter()
            .map(|w| ls.iter().filter(|l| l.owner.as_deref() == Some(*w)).count())
            .collect()
    }

    #[test]
    fn table_of_single_decisions() {
        // (leases, me, expected take count, expected steal count)
        let cases: Vec<(Vec<LeaseView>, &str, usize, usize)> = vec![
            // Empty table: nothing.
            (vec![], "a", 0, 0),
            // 4 unowned, alone: take all.
            (
                leases(&[
                    ("s0", None, false),
                    ("s1", None, false),
                    ("s2", None, false),
                    ("s3", None, false),
                ]),
                "a",
                4,
                0,
            ),
            // b holds 4, I am new: target 2, nothing free → steal 2 at once (the KCL steals 1).
            (
                leases(&[
                    ("s0", Some("b"), false),
                    ("s1", Some("b"), false),
                    ("s2", Some("b"), false),
                    ("s3", Some("b"), false),
                ]),
                "a",
                0,
                2,
            ),
            // b's leases expired (b crashed): take them all, no stealing.
            (
                leases(&[("s0", Some("b"), true), ("s1", Some("b"), true)]),
                "a",
                2,
                0,
            ),
            // Balanced 2/2: nothing.
            (
                leases(&[
                    ("s0", Some("a"), false),
                    ("s1", Some("a"), false),
                    ("s2", Some("b"), false),
                    ("s3", Some("b"), false),
                ]),
                "a",
                0,
                0,
            ),
            // 3 leases, 2 workers, b has 2, I have 1: target 2, b is not above target → nothing.
            (
                leases(&[
                    ("s0", Some("a"), false),
                    ("s1", Some("b"), false),
                    ("s2", Some("b"), false),
                ]),
                "a",
                0,
                0,
            ),
            // One free, and b above target: take 1 and steal 1.
            (
                leases(&[
                    ("s0", None, false),
                    ("s1", Some("b"), false),
                    ("s2", Some("b"), false),
                    ("s3", Some("b"), false),
                ]),
                "a",
                1,
                1,
            ),
        ];
        for (i, (ls, me, take, steal)) in cases.into_iter().enumerate() {
            let p = plan_take(&ls, me, usize::MAX);
            assert_eq!(
                (p.take.len(), p.steal.len()),
                (take, steal),
                "case {i}: {p:?}"
            );
        }
    }

    #[test]
    fn finished_leases_are_ignored_and_max_leases_caps() {
        let mut ls = leases(&[
            ("s0", None, false),
            ("s1", None, false),
            ("s2", None, false),
        ]);
        ls[0].finished = true;
        assert_eq!(plan_take(&ls, "a", usize::MAX).take.len(), 2);
        assert_eq!(plan_take(&ls, "a", 1).take.len(), 1);
    }

    #[test]
    fn a_new_worker_reaches_its_share_in_one_round() {
        let workers = ["w1", "w2", "w3"];
        let ls: Vec<LeaseView> = (0..8)
            .map(|i| LeaseView {
                key: format!("s{i}"),
                owner: None,
                expired: false,
                finished: false,
            })
            .collect();
        let (ls, _) = converge(ls, &workers[..2]);
        assert_eq!(counts(&ls, &workers[..2]), vec![4, 4]);
        // w3 joins: one round of planning gives it its share.
        let p = plan_take(&ls, "w3", usize::MAX);
        assert_eq!(p.steal.len(), 2, "{p:?}");
        let (ls, rounds) = converge(ls, &workers);
        assert!(rounds <= 2, "{rounds}");
        let mut c = counts(&ls, &workers);
        c.sort_unstable();
        assert_eq!(c, vec![2, 3, 3]);
    }

    #[test]
    fn a_crashed_workers_leases_are_spread_over_the_rest() {
        let workers = ["w1", "w2", "w3"];
        let ls: Vec<LeaseView> = (0..9)
            .map(|i| LeaseView {
                key: format!("s{i}"),
                owner: Some(workers[i % 3].into()),
                expired: false,
                finished: false,
            })
            .collect();
        let mut ls = ls;
        for l in ls.iter_mut().filter(|l| l.owner.as_deref() == Some("w3")) {
            l.expired = true;
        }
        let (ls, _) = converge(ls, &workers[..2]);
        assert_eq!(counts(&ls, &workers[..2]).iter().sum::<usize>(), 9);
        let mut c = counts(&ls, &workers[..2]);
        c.sort_unstable();
        assert_eq!(c, vec![4, 5]);
    }
}
