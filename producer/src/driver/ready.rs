//! A ready Kinesis record and the user records in it: what the per-shard ready queues, the
//! collector and a call's batch hold.
//!
//! ```text
//!   finished aggregate ─► Ready (Body::Open: bytes written, MD5 not yet; members' data taken)
//!                          │  size known, count known; nothing else readable
//!                          ▼  (into a PutRecords call)
//!   seal_call: MD5 of all of the call's aggregates side by side
//!        └─► into_flying: KinesisRecord + Flying (members, their data still only in it)
//!              ├─ stored ─► into_delivered: settled without their data (none read)
//!              └─ any other answer, or none ─► into_members: each member's data back
//!   any other way out (expiry, reshard, shutdown) ─► into_members: sealed alone, data back
//! ```
//!
//! The MD5 trailer is the largest single cost of aggregating; computed eight messages at a time
//! (`md5-many`'s SIMD lanes) it costs about a third. An aggregate waits for its call with its
//! bytes written and its members' own buffers already freed (memory as when it was sealed at
//! once); only the 16 trailing bytes are missing. The members are private to this file: nothing
//! can read a member's data (empty while open) without sealing first. In a call, they stay
//! without it ([`Flying`]): a stored aggregate's members are settled without their data ever
//! being sliced back (a reference count up and down per record saved); every other outcome
//! gives it back before anything else touches them.

use bytes::Bytes;
use kinesis_core::agg::{Slices, Unsealed, digest_all};
use kinesis_core::{KinesisRecord, UserRecord};
use tokio::time::Instant;

use super::buffers::ShardKey;
use super::messages::{Pending, data_bytes};

enum Body {
    Sealed(KinesisRecord),
    /// Its members' data is in it (their own slots empty) until sealed.
    Open(Unsealed),
}

/// A finished Kinesis record and the user records in it, in order.
pub(super) struct Ready {
    pub(super) key: ShardKey,
    body: Body,
    members: Vec<Pending>,
    pub(super) deadline: Instant,
    /// The earliest arrival among the members: the first to reach the TTL.
    pub(super) oldest: Instant,
}

impl Ready {
    /// A written Kinesis record (plain, or an aggregate already sealed) and its members.
    pub(super) fn new(
        key: ShardKey,
        kr: KinesisRecord,
        members: Vec<Pending>,
        deadline: Instant,
    ) -> Self {
        Self::with_body(key, Body::Sealed(kr), members, deadline)
    }

    /// A plain Kinesis record of one user record.
    pub(super) fn plain(key: ShardKey, p: Pending, deadline: Instant) -> Self {
        let kr = plain(&p.record);
        Self::new(key, kr, vec![p], deadline)
    }

    /// An aggregate waiting for its MD5, and the members whose data it took: as many as it
    /// holds (or `None`, and the members are handed back, their data restored).
    pub(super) fn open(
        key: ShardKey,
        agg: Unsealed,
        mut members: Vec<Pending>,
        deadline: Instant,
    ) -> Result<Self, Vec<Pending>> {
        if agg.user_records() != members.len() {
            // Not the aggregate of these members (a bug): give back what it holds.
            let _ = agg.seal(members.iter_mut().map(|m| &mut m.record.data));
            return Err(members);
        }
        for m in &mut members {
            m.in_aggregate = true;
        }
        Ok(Self::with_body(key, Body::Open(agg), members, deadline))
    }

    fn with_body(key: ShardKey, body: Body, members: Vec<Pending>, deadline: Instant) -> Self {
        let oldest = members.iter().map(|m| m.arrived).min().unwrap_or(deadline);
        Self {
            key,
            body,
            members,
            deadline,
            oldest,
        }
    }

    /// Size as Kinesis counts it (data + partition key), sealed or not.
    pub(super) fn size_bytes(&self) -> usize {
        match &self.body {
            Body::Sealed(kr) => kr.size_bytes(),
            Body::Open(u) => u.size_bytes(),
        }
    }

    /// How many user records it carries.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.members.len()
    }

    /// The Kinesis record and its members, sealed (alone, unless [`seal_call`] did it). `Err`
    /// hands back the members, their data restored, should the aggregate not be theirs (`open`
    /// checked their count, and nothing changes it: unreachable, but not a loss if reached).
    pub(super) fn into_parts(self) -> Result<(KinesisRecord, Vec<Pending>), Vec<Pending>> {
        let Self {
            body, mut members, ..
        } = self;
        match body {
            Body::Sealed(kr) => Ok((kr, members)),
            Body::Open(u) => match u.seal(members.iter_mut().map(|m| &mut m.record.data)) {
                Ok(kr) => Ok((kr, members)),
                Err(e) => {
                    tracing::error!(message = "Aggregate and members differ; sending them one by one.", error = %e);
                    Err(members)
                }
            },
        }
    }

    /// The members, their data back (sealed alone if still open): for any way out but a call.
    pub(super) fn into_members(self) -> Vec<Pending> {
        match self.into_parts() {
            Ok((_, members)) | Err(members) => members,
        }
    }

    /// The Kinesis record and its members for a call, sealed (alone, unless [`seal_call`] did
    /// it); an aggregate's members stay without their data until [`Flying::into_members`].
    pub(super) fn into_flying(self) -> (KinesisRecord, Flying) {
        let Self { body, members, .. } = self;
        match body {
            Body::Sealed(kr) => (
                kr,
                Flying {
                    members,
                    held: None,
                },
            ),
            Body::Open(u) => {
                let (kr, slices) = u.seal_apart();
                let held = Some((kr.data.clone(), slices));
                (kr, Flying { members, held })
            }
        }
    }
}

/// The members of a Kinesis record in a PutRecords call, in order. An aggregate's members are
/// without their data (it is in the aggregate's bytes, held here) until they leave: delivered
/// without it, or given it back for anything else.
pub(super) struct Flying {
    members: Vec<Pending>,
    /// The aggregate's bytes and where each member's data is in them (`None`: the members
    /// have their data).
    held: Option<(Bytes, Slices)>,
}

impl Flying {
    pub(super) fn len(&self) -> usize {
        self.members.len()
    }

    /// One more attempt for each.
    pub(super) fn attempted(&mut self) {
        for m in &mut self.members {
            m.attempts += 1;
        }
    }

    /// Each may be stored already (an answer that could not be read, or none).
    pub(super) fn possibly_stored(&mut self) {
        for m in &mut self.members {
            m.possible_duplicate = true;
        }
    }

    /// The members, each with its data: for every way out but delivery.
    pub(super) fn into_members(self) -> Vec<Pending> {
        let Self { mut members, held } = self;
        if let Some((data, slices)) = held
            && let Err(e) = slices.give(&data, members.iter_mut().map(|m| &mut m.record.data))
        {
            // Unreachable: `Ready::open` checked the count, and nothing changes it.
            tracing::error!(message = "Aggregate and members differ while giving their data back.", error = %e);
        }
        members
    }

    /// The members of a stored Kinesis record, to settle as delivered, and their data's bytes.
    /// An aggregate's members are left without their data: delivery reads none, and nothing
    /// else may have them.
    pub(super) fn into_delivered(self) -> (Vec<Pending>, u64) {
        let bytes = match &self.held {
            Some((_, slices)) => slices.data_bytes() as u64,
            None => data_bytes(&self.members),
        };
        (self.members, bytes)
    }
}

/// Computes the MD5 of every open aggregate in `call` at once (side by side).
pub(super) fn seal_call(call: &mut [Ready]) {
    digest_all(call.iter_mut().filter_map(|r| match &mut r.body {
        Body::Open(u) => Some(u),
        Body::Sealed(_) => None,
    }));
}

/// A user record as a plain (not aggregated) Kinesis record.
fn plain(r: &UserRecord) -> KinesisRecord {
    KinesisRecord {
        partition_key: r.partition_key.clone(),
        explicit_hash_key: r.explicit_hash_key,
        data: r.data.clone(),
        user_records: 1,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

    use super::*;
    use crate::driver::messages::Reply;
    use kinesis_core::agg::{AggregateLayout, Finished};
    use kinesis_core::{PartitionKey, ShardId};

    fn members(n: u32) -> Vec<Pending> {
        (0..n)
            .map(|i| {
                let key = PartitionKey::new(format!("k{i}")).unwrap();
                let r = UserRecord::new(key, None, bytes::Bytes::from(format!("data {i}")));
                Pending::new(r, Reply::Batch { id: 0, index: i })
            })
            .collect()
    }

    fn unsealed(ms: &mut [Pending]) -> Unsealed {
        let mut l = AggregateLayout::new(1024 * 1024).unwrap();
        for m in ms.iter() {
            assert!(l.try_add(&m.record).unwrap());
        }
        match l.finish_unsealed(ms.iter_mut().map(|m| &mut m.record.data)) {
            Ok(Some(Finished::Unsealed(u))) => u,
            _ => panic!("an aggregate"),
        }
    }

    /// An aggregate given other than its members (fewer, more) is refused and every member comes
    /// back with its data; its own are sealed into it, side by side or alone.
    #[test]
    fn an_open_aggregate_takes_only_its_own_members_and_gives_their_data_back() {
        let key: ShardKey = Some(ShardId::new("shardId-000000000000").unwrap());
        let now = Instant::now();
        // Its members, one lost or one more (a bug): refused, each data back where it was.
        for (made, given) in [(3usize, 2usize), (3, 4), (2, 1)] {
            let mut ms = members(made as u32);
            let agg = unsealed(&mut ms);
            assert!(ms.iter().all(|m| m.record.data.is_empty()), "taken");
            ms.truncate(given);
            ms.extend(members(given as u32).into_iter().skip(made));
            let back = Ready::open(key.clone(), agg, ms, now).err().unwrap();
            assert_eq!(back.len(), given);
            for (i, m) in back.iter().enumerate() {
                assert_eq!(m.record.data, format!("data {i}").as_bytes());
            }
        }
        for side_by_side in [false, true] {
            let mut ms = members(5);
            let agg = unsealed(&mut ms);
            let r = Ready::open(key.clone(), agg, ms, now).ok().unwrap();
            let size = r.size_bytes();
            let mut call = [r];
            if side_by_side {
                seal_call(&mut call);
            }
            let [r] = call;
            let (kr, ms) = r.into_parts().ok().unwrap();
            assert_eq!(kr.size_bytes(), size);
            let back = kinesis_core::agg::deaggregate(kr.partition_key.as_str(), kr.data);
            for (i, (m, b)) in ms.iter().zip(&back).enumerate() {
                assert_eq!(m.record.data, format!("data {i}").as_bytes());
                assert_eq!(b.data, m.record.data);
                assert!(m.in_aggregate);
            }
        }
    }
}
