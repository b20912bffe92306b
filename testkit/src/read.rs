//! Reading a whole stream back, de-aggregated: the ground truth for producer tests.

use aws_sdk_kinesis::types::ShardIteratorType;
use bytes::Bytes;
use kinesis_core::shard_map::list_shards;
use kinesis_core::{SequenceNumber, ShardId, StreamRef};

/// One user record as read back from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRecord {
    /// Shard it was stored in.
    pub shard_id: ShardId,
    /// Kinesis sequence number.
    pub sequence_number: SequenceNumber,
    /// Position inside its aggregate.
    pub sub_sequence_number: u64,
    /// User partition key.
    pub partition_key: String,
    /// User data.
    pub data: Bytes,
    /// Whether it came out of an aggregate.
    pub aggregated: bool,
}

/// A stream's contents as a KCL consumer sees them.
#[derive(Debug, Clone, Default)]
pub struct StreamContents {
    /// User records, shard by shard in sequence order.
    pub records: Vec<ReadRecord>,
    /// User records inside aggregates that the KCL drops because one of their keys is outside
    /// the shard's range (written while the stream resharded; a producer must re-send them).
    pub dropped: Vec<ReadRecord>,
}

/// Reads every shard (open and closed) from TRIM_HORIZON to its current end and de-aggregates
/// with the KCL hash-range rule.
pub async fn read_stream(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
) -> Result<StreamContents, String> {
    let sref = StreamRef::parse(stream).map_err(|e| e.to_string())?;
    let shards = list_shards(client, &sref)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = StreamContents::default();
    for shard in shards {
        let mut iterator = client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard.shard_id.as_str())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .map_err(|e| format!("GetShardIterator: {e:?}"))?
            .shard_iterator
            .ok_or("no iterator")?;
        loop {
            let resp = client
                .get_records()
                .shard_iterator(&iterator)
                .limit(10_000)
                .send()
                .await
                .map_err(|e| format!("GetRecords: {e:?}"))?;
            for r in resp.records() {
                let seq = SequenceNumber::parse(r.sequence_number()).map_err(|e| e.to_string())?;
                let data = Bytes::from(r.data().clone().into_inner());
                let pk = r.partition_key().unwrap_or_default();
                let (users, target) = match kinesis_core::agg::deaggregate_for_shard(
                    pk,
                    data,
                    shard.hash_key_range,
                ) {
                    Ok(users) => (users, &mut out.records),
                    Err(outside) => (outside.records, &mut out.dropped),
                };
                for u in users {
                    target.push(ReadRecord {
                        shard_id: shard.shard_id.clone(),
                        sequence_number: seq.clone(),
                        sub_sequence_number: u.sub_sequence_number,
                        partition_key: u.partition_key.to_string(),
                        data: u.data,
                        aggregated: u.aggregated,
                    });
                }
            }
            match resp.next_shard_iterator() {
                Some(next) if !resp.records().is_empty() => iterator = next.to_string(),
                _ => break,
            }
        }
    }
    Ok(out)
}
