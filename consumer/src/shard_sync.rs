//! Which leases to create for a stream's shards: a pure function, tested from tables.
//!
//! ```text
//!   ListShards + existing lease keys + initial position ─► leases_to_create ─► [Lease]
//! ```
//!
//! Rules (after the KCL's `HierarchicalShardSyncer`, simplified to what it guarantees):
//! - a shard that already has a lease, or whose descendant has one (it was processed and its
//!   lease cleaned up), gets none;
//! - a shard whose parent has (or gets) a lease starts at TRIM_HORIZON, so nothing between the
//!   parent's end and the child's start is skipped; the child waits for its parents at run time;
//! - any other open shard starts at the initial position;
//! - any other closed shard gets a lease only when the initial position reaches into the past
//!   (TRIM_HORIZON, AT_TIMESTAMP): with LATEST its data is older than "now".

use std::collections::{HashMap, HashSet};

use kinesis_core::Checkpoint;
use kinesis_core::shard_map::Shard;

use crate::config::InitialPosition;
use crate::lease::Lease;

/// Leases to create, parents before children.
pub fn leases_to_create(
    shards: &[Shard],
    existing: &HashSet<String>,
    initial: InitialPosition,
) -> Vec<Lease> {
    let mut ordered: Vec<&Shard> = shards.iter().collect();
    // Parents are older: earlier starting sequence numbers (then lower shard numbers).
    ordered.sort_by(|a, b| {
        a.starting_sequence_number
            .cmp(&b.starting_sequence_number)
            .then(a.shard_id.index().cmp(&b.shard_id.index()))
    });
    let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
    for s in shards {
        for p in s.parents() {
            children
                .entry(p.as_str())
                .or_default()
                .push(s.shard_id.as_str());
        }
    }
    let has_leased_descendant = |id: &str| {
        let mut stack: Vec<&str> = children.get(id).cloned().unwrap_or_default();
        let mut seen = HashSet::new();
        while let Some(c) = stack.pop() {
            if !seen.insert(c) {
                continue;
            }
            if existing.contains(c) {
                return true;
            }
            stack.extend(children.get(c).into_iter().flatten().copied());
        }
        false
    };
    let initial_checkpoint = match initial {
        InitialPosition::TrimHorizon => Checkpoint::TrimHorizon,
        InitialPosition::Latest => Checkpoint::Latest,
        InitialPosition::AtTimestamp(_) => Checkpoint::AtTimestamp,
    };
    let reaches_past = !matches!(initial, InitialPosition::Latest);
    let mut created: HashSet<String> = HashSet::new();
    let mut out = Vec::new();
    for s in ordered {
        let id = s.shard_id.as_str();
        if existing.contains(id) || has_leased_descendant(id) {
            continue;
        }
        let parent_leased = s
            .parents()
            .any(|p| existing.contains(p.as_str()) || created.contains(p.as_str()));
        let checkpoint = if parent_leased {
            Checkpoint::TrimHorizon
        } else if s.is_open() || reaches_past {
            initial_checkpoint.clone()
        } else {
            continue;
        };
        let mut lease = Lease::new(id, checkpoint);
        lease.parent_shard_ids = s.parents().map(|p| p.as_str().to_string()).collect();
        lease.parent_shard_ids.sort();
        lease.hash_key_range = Some(s.hash_key_range);
        created.insert(id.to_string());
        out.push(lease);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kinesis_core::{HashKeyRange, SequenceNumber, ShardId};

    /// shard n, parents, open?, starting sequence
    fn shard(n: u64, parents: &[u64], open: bool, start: u64) -> Shard {
        let id = |n: u64| ShardId::new(format!("shardId-{n:012}")).unwrap();
        Shard {
            shard_id: id(n),
            parent_shard_id: parents.first().map(|p| id(*p)),
            adjacent_parent_shard_id: parents.get(1).map(|p| id(*p)),
            hash_key_range: HashKeyRange::FULL,
            starting_sequence_number: SequenceNumber::parse(&start.to_string()).unwrap(),
            ending_sequence_number: (!open).then(|| SequenceNumber::parse("999999").unwrap()),
        }
    }

    fn keys(leases: &[Lease]) -> Vec<(String, Checkpoint)> {
        leases
            .iter()
            .map(|l| {
                (
                    l.lease_key
                        .trim_start_matches("shardId-0000000000")
                        .to_string(),
                    l.checkpoint.clone(),
                )
            })
            .collect()
    }

    fn existing(ns: &[u64]) -> HashSet<String> {
        ns.iter().map(|n| format!("shardId-{n:012}")).collect()
    }

    /// (name, shards, existing lease shard numbers, initial position, expected (key, checkpoint)).
    type Case = (
        &'static str,
        Vec<Shard>,
        Vec<u64>,
        InitialPosition,
        Vec<(&'static str, Checkpoint)>,
    );

    #[test]
    fn table() {
        use Checkpoint::{Latest, TrimHorizon};
        // Stream: 0 split into 1 and 2; 1 and 2 merged into 3. Open: 3 only.
        let lineage = vec![
            shard(0, &[], false, 1),
            shard(1, &[0], false, 10),
            shard(2, &[0], false, 10),
            shard(3, &[1, 2], true, 20),
        ];
        let cases: Vec<Case> = vec![
            (
                "empty table, LATEST: only the open shard",
                lineage.clone(),
                vec![],
                InitialPosition::Latest,
                vec![("03", Latest)],
            ),
            (
                "empty table, TRIM_HORIZON: everything, parents first, children at TRIM_HORIZON",
                lineage.clone(),
                vec![],
                InitialPosition::TrimHorizon,
                vec![
                    ("00", TrimHorizon),
                    ("01", TrimHorizon),
                    ("02", TrimHorizon),
                    ("03", TrimHorizon),
                ],
            ),
            (
                "0 leased: its descendants at TRIM_HORIZON",
                lineage.clone(),
                vec![0],
                InitialPosition::Latest,
                vec![
                    ("01", TrimHorizon),
                    ("02", TrimHorizon),
                    ("03", TrimHorizon),
                ],
            ),
            (
                "3 leased (parents cleaned up): nothing",
                lineage.clone(),
                vec![3],
                InitialPosition::TrimHorizon,
                vec![],
            ),
            (
                "1 and 2 leased: 3 at TRIM_HORIZON; 0 not recreated",
                lineage,
                vec![1, 2],
                InitialPosition::TrimHorizon,
                vec![("03", TrimHorizon)],
            ),
            (
                "stable 2-shard stream, LATEST",
                vec![shard(0, &[], true, 1), shard(1, &[], true, 1)],
                vec![],
                InitialPosition::Latest,
                vec![("00", Latest), ("01", Latest)],
            ),
        ];
        for (name, shards, ex, initial, want) in cases {
            let got = leases_to_create(&shards, &existing(&ex), initial);
            let want: Vec<(String, Checkpoint)> =
                want.into_iter().map(|(k, c)| (k.to_string(), c)).collect();
            assert_eq!(keys(&got), want, "{name}");
        }
    }

    #[test]
    fn child_leases_carry_parents_and_range() {
        let shards = vec![shard(0, &[], false, 1), shard(1, &[0], true, 10)];
        let got = leases_to_create(&shards, &existing(&[0]), InitialPosition::Latest);
        assert_eq!(got[0].parent_shard_ids, vec!["shardId-000000000000"]);
        assert_eq!(got[0].hash_key_range, Some(HashKeyRange::FULL));
    }
}
