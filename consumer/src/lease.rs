//! A lease as the KCL stores it in DynamoDB, and its conversion to and from items.
//!
//! ```text
//!   DynamoDB item (KCL 2.x/3.x schema) ──from_item──► Lease ──item──► DynamoDB item
//!     leaseKey S, leaseOwner S?, leaseCounter N, checkpoint S, checkpointSubSequenceNumber N,
//!     pendingCheckpoint S?, pendingCheckpointSubSequenceNumber N?, pendingCheckpointState B|N?,
//!     ownerSwitchesSinceCheckpoint N, parentShardId SS?, childShardIds SS?,
//!     startingHashKey S?, endingHashKey S?, checkpointOwner S?, throughputKBps N?
//! ```
//!
//! Attribute names and types are the KCL's (`DynamoDBLeaseSerializer.java`), so a table written by
//! a Java KCL application can be read and continued, and the reverse. Items of KCL 3.5's
//! single-table format whose `entityType` is not `LEASE` are not leases and are skipped.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use kinesis_core::{Checkpoint, HashKeyRange};

/// Attribute names (the KCL's).
pub(crate) mod attr {
    pub(crate) const LEASE_KEY: &str = "leaseKey";
    pub(crate) const LEASE_OWNER: &str = "leaseOwner";
    pub(crate) const LEASE_COUNTER: &str = "leaseCounter";
    pub(crate) const CHECKPOINT: &str = "checkpoint";
    pub(crate) const CHECKPOINT_SUB: &str = "checkpointSubSequenceNumber";
    pub(crate) const PENDING_CHECKPOINT: &str = "pendingCheckpoint";
    pub(crate) const PENDING_CHECKPOINT_SUB: &str = "pendingCheckpointSubSequenceNumber";
    pub(crate) const PENDING_CHECKPOINT_STATE: &str = "pendingCheckpointState";
    pub(crate) const OWNER_SWITCHES: &str = "ownerSwitchesSinceCheckpoint";
    pub(crate) const PARENT_SHARD_ID: &str = "parentShardId";
    pub(crate) const CHILD_SHARD_IDS: &str = "childShardIds";
    pub(crate) const STARTING_HASH_KEY: &str = "startingHashKey";
    pub(crate) const ENDING_HASH_KEY: &str = "endingHashKey";
    pub(crate) const CHECKPOINT_OWNER: &str = "checkpointOwner";
    pub(crate) const ENTITY_TYPE: &str = "entityType";
}

/// One shard's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The shard id (single-stream tables) — the table's hash key.
    pub lease_key: String,
    /// The worker holding it; `None` when free.
    pub lease_owner: Option<String>,
    /// Bumped by every write; the fence for every conditional update.
    pub lease_counter: u64,
    /// Where processing got to (with the sub-sequence number inside a KPL aggregate).
    pub checkpoint: Checkpoint,
    /// A prepared, not yet committed checkpoint (`prepare_checkpoint`).
    pub pending_checkpoint: Option<Checkpoint>,
    /// Opaque application state stored with the pending checkpoint.
    pub pending_checkpoint_state: Option<Vec<u8>>,
    /// Owner changes since the last checkpoint.
    pub owner_switches_since_checkpoint: u64,
    /// Parent shard ids (none, one after a split, two after a merge).
    pub parent_shard_ids: Vec<String>,
    /// Child shard ids, written when the shard ended.
    pub child_shard_ids: Vec<String>,
    /// The shard's hash-key range, when known.
    pub hash_key_range: Option<HashKeyRange>,
    /// KCL 3.x graceful handoff: the previous owner still allowed to checkpoint.
    pub checkpoint_owner: Option<String>,
}

/// Why an item is not a readable lease.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lease item {key:?}: attribute {attribute} {reason}")]
pub struct LeaseItemError {
    /// The item's `leaseKey`, if it had one.
    pub key: Option<String>,
    /// The attribute at fault.
    pub attribute: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn s<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

fn n(
    item: &HashMap<String, AttributeValue>,
    name: &'static str,
    key: &str,
) -> Result<Option<u64>, LeaseItemError> {
    match item.get(name) {
        None => Ok(None),
        Some(v) => {
            let text = v.as_n().map_err(|_| LeaseItemError {
                key: Some(key.to_string()),
                attribute: name,
                reason: "is not a number".into(),
            })?;
            // The KCL writes longs; tolerate a decimal point from other writers ("3.0").
            let whole = text.split('.').next().unwrap_or(text);
            whole.parse().map(Some).map_err(|_| LeaseItemError {
                key: Some(key.to_string()),
                attribute: name,
                reason: format!("{text:?} is not a non-negative integer"),
            })
        }
    }
}

fn ss(item: &HashMap<String, AttributeValue>, name: &str) -> Vec<String> {
    let mut v = match item.get(name) {
        Some(AttributeValue::Ss(list)) => list.clone(),
        // Tolerate a plain string (hand-edited tables).
        Some(AttributeValue::S(one)) => vec![one.clone()],
        _ => Vec::new(),
    };
    v.sort();
    v
}

impl Lease {
    /// A new, unowned lease at `checkpoint`.
    pub fn new(lease_key: impl Into<String>, checkpoint: Checkpoint) -> Self {
        Self {
            lease_key: lease_key.into(),
            lease_owner: None,
            lease_counter: 0,
            checkpoint,
            pending_checkpoint: None,
            pending_checkpoint_state: None,
            owner_switches_since_checkpoint: 0,
            parent_shard_ids: Vec::new(),
            child_shard_ids: Vec::new(),
            hash_key_range: None,
            checkpoint_owner: None,
        }
    }

    /// Reads an item. `Ok(None)` for items that are not leases (KCL 3.5 `entityType` other than
    /// `LEASE`).
    pub fn from_item(
        item: &HashMap<String, AttributeValue>,
    ) -> Result<Option<Self>, LeaseItemError> {
        if s(item, attr::ENTITY_TYPE).is_some_and(|t| t != "LEASE") {
            return Ok(None);
        }
        let Some(key) = s(item, attr::LEASE_KEY) else {
            return Err(LeaseItemError {
                key: None,
                attribute: attr::LEASE_KEY,
                reason: "is missing".into(),
            });
        };
        let bad = |attribute, reason: String| LeaseItemError {
            key: Some(key.to_string()),
            attribute,
            reason,
        };
        let sub = n(item, attr::CHECKPOINT_SUB, key)?.unwrap_or(0);
        let checkpoint = match s(item, attr::CHECKPOINT) {
            Some(c) => {
                Checkpoint::parse(c, sub).map_err(|e| bad(attr::CHECKPOINT, e.to_string()))?
            }
            // The KCL always writes one; a lease without is treated as new.
            None => Checkpoint::TrimHorizon,
        };
        let pending_checkpoint = match s(item, attr::PENDING_CHECKPOINT) {
            Some(c) => {
                let psub = n(item, attr::PENDING_CHECKPOINT_SUB, key)?.unwrap_or(0);
                Some(
                    Checkpoint::parse(c, psub)
                        .map_err(|e| bad(attr::PENDING_CHECKPOINT, e.to_string()))?,
                )
            }
            None => None,
        };
        // The KCL writes application state as B, but its create path writes a number (N) here.
        let pending_checkpoint_state = match item.get(attr::PENDING_CHECKPOINT_STATE) {
            Some(AttributeValue::B(b)) => Some(b.clone().into_inner()),
            _ => None,
        };
        let hash_key_range = match (
            s(item, attr::STARTING_HASH_KEY),
            s(item, attr::ENDING_HASH_KEY),
        ) {
            (Some(a), Some(b)) => Some(
                HashKeyRange::parse(a, b)
                    .map_err(|e| bad(attr::STARTING_HASH_KEY, e.to_string()))?,
            ),
            _ => None,
        };
        Ok(Some(Self {
            lease_key: key.to_string(),
            lease_owner: s(item, attr::LEASE_OWNER).map(str::to_owned),
            lease_counter: n(item, attr::LEASE_COUNTER, key)?.unwrap_or(0),
            checkpoint,
            pending_checkpoint,
            pending_checkpoint_state,
            owner_switches_since_checkpoint: n(item, attr::OWNER_SWITCHES, key)?.unwrap_or(0),
            parent_shard_ids: ss(item, attr::PARENT_SHARD_ID),
            child_shard_ids: ss(item, attr::CHILD_SHARD_IDS),
            hash_key_range,
            checkpoint_owner: s(item, attr::CHECKPOINT_OWNER).map(str::to_owned),
        }))
    }

    /// The item the KCL would write for this lease (absent attributes are omitted, never NULL).
    pub fn to_item(&self) -> HashMap<String, AttributeValue> {
        let mut m = HashMap::new();
        let put = |m: &mut HashMap<String, AttributeValue>, k: &str, v: AttributeValue| {
            m.insert(k.to_string(), v);
        };
        put(
            &mut m,
            attr::LEASE_KEY,
            AttributeValue::S(self.lease_key.clone()),
        );
        if let Some(o) = &self.lease_owner {
            put(&mut m, attr::LEASE_OWNER, AttributeValue::S(o.clone()));
        }
        put(
            &mut m,
            attr::LEASE_COUNTER,
            AttributeValue::N(self.lease_counter.to_string()),
        );
        put(
            &mut m,
            attr::CHECKPOINT,
            AttributeValue::S(self.checkpoint.as_str().to_string()),
        );
        put(
            &mut m,
            attr::CHECKPOINT_SUB,
            AttributeValue::N(self.checkpoint.sub_sequence_number().to_string()),
        );
        if let Some(p) = &self.pending_checkpoint {
            put(
                &mut m,
                attr::PENDING_CHECKPOINT,
                AttributeValue::S(p.as_str().to_string()),
            );
            put(
                &mut m,
                attr::PENDING_CHECKPOINT_SUB,
                AttributeValue::N(p.sub_sequence_number().to_string()),
            );
        }
        if let Some(state) = &self.pending_checkpoint_state {
            put(
                &mut m,
                attr::PENDING_CHECKPOINT_STATE,
                AttributeValue::B(state.clone().into()),
            );
        }
        put(
            &mut m,
            attr::OWNER_SWITCHES,
            AttributeValue::N(self.owner_switches_since_checkpoint.to_string()),
        );
        if !self.parent_shard_ids.is_empty() {
            put(
                &mut m,
                attr::PARENT_SHARD_ID,
                AttributeValue::Ss(self.parent_shard_ids.clone()),
            );
        }
        if !self.child_shard_ids.is_empty() {
            put(
                &mut m,
                attr::CHILD_SHARD_IDS,
                AttributeValue::Ss(self.child_shard_ids.clone()),
            );
        }
        if let Some(r) = &self.hash_key_range {
            put(
                &mut m,
                attr::STARTING_HASH_KEY,
                AttributeValue::S(r.start().to_string()),
            );
            put(
                &mut m,
                attr::ENDING_HASH_KEY,
                AttributeValue::S(r.end().to_string()),
            );
        }
        if let Some(o) = &self.checkpoint_owner {
            put(&mut m, attr::CHECKPOINT_OWNER, AttributeValue::S(o.clone()));
        }
        m
    }

    /// Whether the shard was processed to its end.
    pub fn is_finished(&self) -> bool {
        self.checkpoint == Checkpoint::ShardEnd
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kinesis_core::{HashKey, SequenceNumber};

    fn item(pairs: &[(&str, AttributeValue)]) -> HashMap<String, AttributeValue> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn reads_an_item_written_by_the_java_kcl() {
        // As DynamoDBLeaseSerializer writes it after a checkpoint inside a KPL aggregate.
        let it = item(&[
            ("leaseKey", AttributeValue::S("shardId-000000000003".into())),
            ("leaseOwner", AttributeValue::S("worker-a".into())),
            ("leaseCounter", AttributeValue::N("42".into())),
            (
                "checkpoint",
                AttributeValue::S(
                    "49590338271490256608559692538361571095921575989136588898".into(),
                ),
            ),
            ("checkpointSubSequenceNumber", AttributeValue::N("7".into())),
            (
                "ownerSwitchesSinceCheckpoint",
                AttributeValue::N("0".into()),
            ),
            (
                "parentShardId",
                AttributeValue::Ss(vec![
                    "shardId-000000000001".into(),
                    "shardId-000000000000".into(),
                ]),
            ),
            ("startingHashKey", AttributeValue::S("0".into())),
            (
                "endingHashKey",
                AttributeValue::S("340282366920938463463374607431768211455".into()),
            ),
            ("pendingCheckpointState", AttributeValue::N("0".into())),
            ("throughputKBps", AttributeValue::N("12.5".into())),
        ]);
        let l = Lease::from_item(&it).unwrap().unwrap();
        assert_eq!(l.lease_owner.as_deref(), Some("worker-a"));
        assert_eq!(l.lease_counter, 42);
        assert_eq!(
            l.checkpoint,
            Checkpoint::Sequence {
                sequence_number: SequenceNumber::parse(
                    "49590338271490256608559692538361571095921575989136588898"
                )
                .unwrap(),
                sub_sequence_number: 7
            }
        );
        assert_eq!(
            l.parent_shard_ids,
            vec!["shardId-000000000000", "shardId-000000000001"]
        );
        assert_eq!(l.hash_key_range.unwrap().end(), HashKey::MAX);
        assert_eq!(l.pending_checkpoint_state, None, "N form tolerated");
    }

    #[test]
    fn sentinels_round_trip_and_absent_attributes_stay_absent() {
        for c in [
            Checkpoint::TrimHorizon,
            Checkpoint::Latest,
            Checkpoint::AtTimestamp,
            Checkpoint::ShardEnd,
        ] {
            let l = Lease::new("shardId-000000000000", c.clone());
            let it = l.to_item();
            assert_eq!(it["checkpoint"], AttributeValue::S(c.as_str().into()));
            assert!(!it.contains_key("leaseOwner") && !it.contains_key("parentShardId"));
            assert_eq!(Lease::from_item(&it).unwrap().unwrap(), l);
        }
    }

    #[test]
    fn non_lease_entities_are_skipped_and_broken_items_are_errors() {
        let other = item(&[
            ("leaseKey", AttributeValue::S("Leader".into())),
            ("entityType", AttributeValue::S("LEADER".into())),
        ]);
        assert_eq!(Lease::from_item(&other).unwrap(), None);
        let bad = item(&[
            ("leaseKey", AttributeValue::S("shardId-1".into())),
            ("leaseCounter", AttributeValue::S("x".into())),
        ]);
        assert_eq!(
            Lease::from_item(&bad).unwrap_err().attribute,
            "leaseCounter"
        );
        let bad = item(&[
            ("leaseKey", AttributeValue::S("shardId-1".into())),
            ("checkpoint", AttributeValue::S("NOT_A_SENTINEL".into())),
        ]);
        assert_eq!(Lease::from_item(&bad).unwrap_err().attribute, "checkpoint");
        assert!(Lease::from_item(&HashMap::new()).is_err());
    }
}
