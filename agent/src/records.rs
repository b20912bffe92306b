//! Lines to records: processors, partition key, size limit (truncate or split), and batches
//! sized for the producer's buffer.
//!
//! ```text
//!   line ─► dataProcessingOptions ─► partition key (RANDOM: one per ~aggregate-sized run)
//!        ─► over the limit? cut (TRUNCATE) or parts (SPLIT) ─► Batcher: batches of ≤ 1/8 of
//!           the producer's buffer, each with the offset after its last complete line
//! ```

use bytes::Bytes;
use kinesis_core::{PartitionKey, UserRecord};
use kinesis_producer::ProducerConfig;

use crate::config::{Flow, Oversized, PartitionKeyRule};

fn partition_key(rule: &PartitionKeyRule, data: &[u8]) -> PartitionKey {
    let key = match rule {
        PartitionKeyRule::Random => format!("{:016x}", fastrand::u64(..)),
        PartitionKeyRule::Deterministic => {
            use md5::Digest as _;
            format!("{:x}", md5::Md5::digest(data))
        }
        PartitionKeyRule::JsonField(f) => serde_json::from_slice::<serde_json::Value>(data)
            .ok()
            .and_then(|v| match v.get(f) {
                Some(serde_json::Value::String(s)) if !s.is_empty() => {
                    Some(s.chars().take(256).collect())
                }
                Some(serde_json::Value::Null) | None => None,
                Some(other) => Some(other.to_string().chars().take(256).collect()),
            })
            .unwrap_or_else(|| format!("{:016x}", fastrand::u64(..))),
    };
    // Proven invariant: every branch above yields 1 to 256 characters.
    #[allow(clippy::expect_used)]
    PartitionKey::new(key).expect("partition keys built above are 1..=256 characters")
}

/// Most data bytes a record with `key` may carry (the limit counts data + key).
fn data_limit(key: &PartitionKey, flow: &Flow) -> usize {
    flow.max_record_bytes.saturating_sub(key.len_bytes())
}

/// Cuts a record to the size limit (data + key), ending it with the terminator.
fn fit(data: Bytes, key: &PartitionKey, flow: &Flow) -> Bytes {
    let limit = data_limit(key, flow);
    if data.len() <= limit {
        return data;
    }
    let term = flow.truncated_record_terminator.as_bytes();
    let keep = limit.saturating_sub(term.len());
    let mut cut = Vec::with_capacity(keep + term.len());
    cut.extend_from_slice(&data[..keep]);
    cut.extend_from_slice(term);
    metrics::counter!("agent_records_truncated_total").increment(1);
    Bytes::from(cut)
}

/// Cuts a chunk's records into batches of at most an eighth of the producer's buffer each, so
/// that several are in flight and none is too large to be taken; each with the offset after
/// its last complete line (`None` if it holds only leading parts of a split line).
struct Batcher {
    budget: usize,
    out: Vec<(Vec<UserRecord>, Option<u64>)>,
    batch: Vec<UserRecord>,
    cost: usize,
    end: Option<u64>,
}

impl Batcher {
    fn new(cfg: &ProducerConfig, expected: usize) -> Self {
        Self {
            budget: cfg.max_buffered_bytes / 8,
            out: Vec::new(),
            batch: Vec::with_capacity(expected),
            cost: 0,
            end: None,
        }
    }

    fn push(&mut self, record: UserRecord, end: Option<u64>) {
        let c = kinesis_producer::batch_buffer_cost(&record);
        if !self.batch.is_empty() && self.cost + c > self.budget {
            let next = Vec::with_capacity(self.batch.capacity().saturating_sub(self.batch.len()));
            self.out
                .push((std::mem::replace(&mut self.batch, next), self.end.take()));
            self.cost = 0;
        }
        self.cost += c;
        self.batch.push(record);
        self.end = end.or(self.end);
    }

    fn finish(mut self) -> Vec<(Vec<UserRecord>, Option<u64>)> {
        if !self.batch.is_empty() {
            self.out.push((self.batch, self.end));
        }
        self.out
    }
}

#[cfg(test)]
fn batches(
    records: impl Iterator<Item = (UserRecord, Option<u64>)>,
    cfg: &ProducerConfig,
) -> Vec<(Vec<UserRecord>, Option<u64>)> {
    let mut b = Batcher::new(cfg, records.size_hint().0);
    for (r, end) in records {
        b.push(r, end);
    }
    b.finish()
}

/// The records one line becomes: one, or the parts of a split line.
enum Parts {
    One(Option<(UserRecord, Option<u64>)>),
    Split(std::vec::IntoIter<(UserRecord, Option<u64>)>),
}

impl Iterator for Parts {
    type Item = (UserRecord, Option<u64>);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::One(r) => r.take(),
            Self::Split(it) => it.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Self::One(r) => (usize::from(r.is_some()), Some(usize::from(r.is_some()))),
            Self::Split(it) => it.size_hint(),
        }
    }
}

/// A record over the limit as consecutive parts of at most the limit (zero-copy slices); only
/// the last carries the line's end, so the checkpoint passes the line once every part is in.
fn split(data: &Bytes, key: &PartitionKey, end: u64, flow: &Flow) -> Parts {
    let limit = data_limit(key, flow).max(1);
    let n = data.len().div_ceil(limit);
    let parts: Vec<_> = (0..n)
        .map(|i| {
            let part = data.slice(i * limit..((i + 1) * limit).min(data.len()));
            let last = i + 1 == n;
            (
                UserRecord::new(key.clone(), None, part),
                last.then_some(end),
            )
        })
        .collect();
    metrics::counter!("agent_records_split_total").increment(1);
    Parts::Split(parts.into_iter())
}

/// Lines of data that share one RANDOM partition key: about one aggregate's worth (the KPL's
/// 50 KiB aggregation limit), so each aggregate goes to a random shard.
const RANDOM_KEY_RUN_BYTES: usize = 50 * 1024;

/// Turns lines into records, each with the offset the checkpoint may take once it is
/// delivered: processors, partition key, size limit (truncate or split). With RANDOM keys, runs
/// of lines of about one aggregate share a random key: aggregates spread over the shards as
/// evenly as with a key per line, but each carries one key, not one per line, and the key is
/// hashed once per run.
struct LineRecords<'a> {
    flow: &'a Flow,
    random: bool,
    run: Option<(PartitionKey, usize)>,
}

impl<'a> LineRecords<'a> {
    fn new(flow: &'a Flow) -> Self {
        Self {
            flow,
            random: matches!(flow.partition_key, PartitionKeyRule::Random),
            run: None,
        }
    }

    fn convert(&mut self, line: Bytes, end: u64) -> Parts {
        let flow = self.flow;
        let data = if flow.processors.is_empty() {
            line
        } else {
            Bytes::from(
                flow.processors
                    .iter()
                    .fold(Vec::from(line), |d, p| p.apply(d)),
            )
        };
        let key = if self.random {
            match &mut self.run {
                Some((k, bytes)) if *bytes < RANDOM_KEY_RUN_BYTES => {
                    *bytes += data.len();
                    k.clone()
                }
                _ => {
                    let k = partition_key(&flow.partition_key, &[]);
                    self.run = Some((k.clone(), data.len()));
                    k
                }
            }
        } else {
            partition_key(&flow.partition_key, &data)
        };
        if data.len() > data_limit(&key, flow) && flow.oversized == Oversized::Split {
            return split(&data, &key, end, flow);
        }
        let data = fit(data, &key, flow);
        Parts::One(Some((UserRecord::new(key, None, data), Some(end))))
    }
}

/// A chunk's lines as producer batches, in one pass.
pub(crate) fn batch_lines(
    lines: Vec<Bytes>,
    ends: &[u64],
    flow: &Flow,
    cfg: &ProducerConfig,
) -> Vec<(Vec<UserRecord>, Option<u64>)> {
    let mut conv = LineRecords::new(flow);
    let mut b = Batcher::new(cfg, lines.len());
    for (line, &end) in lines.into_iter().zip(ends) {
        match conv.convert(line, end) {
            Parts::One(Some((r, e))) => b.push(r, e),
            parts => {
                for (r, e) in parts {
                    b.push(r, e);
                }
            }
        }
    }
    b.finish()
}

#[cfg(test)]
fn records_of<'a>(
    lines: Vec<Bytes>,
    ends: &'a [u64],
    flow: &'a Flow,
) -> impl Iterator<Item = (UserRecord, Option<u64>)> + 'a {
    let mut conv = LineRecords::new(flow);
    lines
        .into_iter()
        .zip(ends)
        .flat_map(move |(line, &end)| conv.convert(line, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileIdentity, InitialPosition};
    use std::time::Duration;

    fn flow(rule: PartitionKeyRule, max_record_bytes: usize) -> Flow {
        Flow {
            file_pattern: "/nonexistent/*.log".into(),
            stream: "s".into(),
            partition_key: rule,
            initial_position: InitialPosition::StartOfFile,
            max_buffer_age: Duration::from_secs(1),
            multi_line_start_pattern: None,
            skip_header_lines: 0,
            truncated_record_terminator: "\n".into(),
            oversized: crate::config::Oversized::Truncate,
            max_record_bytes,
            partial_line_timeout: Duration::from_secs(5),
            processors: Vec::new(),
            identity: FileIdentity::Content,
        }
    }

    fn record(len: usize) -> UserRecord {
        UserRecord::new(
            PartitionKey::new("0123456789abcdef").unwrap(),
            None,
            Bytes::from(vec![b'x'; len]),
        )
    }

    #[test]
    fn batches_respect_the_budget_and_end_where_their_last_record_ends() {
        let cfg = ProducerConfig {
            max_buffered_bytes: 8 * 1024 * 1024,
            ..ProducerConfig::default()
        };
        let budget = cfg.max_buffered_bytes / 8;
        // (record sizes, expected batch lengths)
        let cases: Vec<(Vec<usize>, Vec<usize>)> = vec![
            (vec![], vec![]),
            (vec![100], vec![1]),
            (vec![100; 1000], vec![1000]),
            // 100-byte records cost 704 bytes each: 1 MiB holds 1,489.
            (vec![100; 4000], vec![1489, 1489, 1022]),
            // One record larger than the budget goes alone, never in an empty batch.
            (vec![10, 400_000, 10], vec![1, 1, 1]),
        ];
        for (sizes, want) in cases {
            let records = sizes
                .iter()
                .zip(1u64..)
                .map(|(&n, i)| (record(n), Some(i * 1000)));
            let got = batches(records, &cfg);
            let lens: Vec<usize> = got.iter().map(|(b, _)| b.len()).collect();
            assert_eq!(lens, want, "sizes {:?}...", &sizes[..sizes.len().min(3)]);
            let mut seen = 0;
            for (b, end) in &got {
                seen += b.len();
                assert_eq!(
                    *end,
                    Some(seen as u64 * 1000),
                    "a batch ends after its last record"
                );
                let cost: usize = b.iter().map(kinesis_producer::batch_buffer_cost).sum();
                assert!(b.len() == 1 || cost <= budget);
            }
        }
    }

    #[test]
    fn random_keys_change_once_per_aggregate_sized_run() {
        let f = flow(PartitionKeyRule::Random, 1024 * 1024);
        let lines: Vec<Bytes> = (0..1000).map(|_| Bytes::from(vec![b'a'; 1000])).collect();
        let ends: Vec<u64> = (1..=1000).collect();
        let records: Vec<UserRecord> = records_of(lines, &ends, &f).map(|(r, _)| r).collect();
        let mut runs = Vec::new();
        for r in &records {
            match runs.last_mut() {
                Some((k, n)) if *k == r.partition_key => *n += 1,
                _ => runs.push((r.partition_key.clone(), 1)),
            }
        }
        // 50 KiB of 1,000-byte lines: a new key every 52 lines.
        assert_eq!(runs.len(), 1000usize.div_ceil(52), "{:?}", runs.len());
        assert!(runs.iter().take(runs.len() - 1).all(|(_, n)| *n == 52));
        let distinct: std::collections::HashSet<_> = runs.iter().map(|(k, _)| k).collect();
        assert_eq!(distinct.len(), runs.len(), "each run draws a new key");
    }

    #[test]
    fn split_lines_come_whole_in_parts_and_only_the_last_part_moves_the_checkpoint() {
        let mut f = flow(PartitionKeyRule::Deterministic, 132);
        f.oversized = crate::config::Oversized::Split;
        // A 32-character key leaves 100 bytes of data per record.
        let long = Bytes::from((0..250u8).collect::<Vec<u8>>());
        let lines = vec![
            Bytes::from_static(b"short\n"),
            long.clone(),
            Bytes::from_static(b"x\n"),
        ];
        let got: Vec<(UserRecord, Option<u64>)> = records_of(lines, &[6, 256, 258], &f).collect();
        let sizes: Vec<usize> = got.iter().map(|(r, _)| r.data.len()).collect();
        assert_eq!(sizes, [6, 100, 100, 50, 2]);
        let ends: Vec<Option<u64>> = got.iter().map(|(_, e)| *e).collect();
        assert_eq!(ends, [Some(6), None, None, Some(256), Some(258)]);
        let joined: Vec<u8> = got[1..4]
            .iter()
            .flat_map(|(r, _)| r.data.to_vec())
            .collect();
        assert_eq!(joined, long.to_vec(), "nothing cut, nothing added");
        assert!(
            got[1..4]
                .iter()
                .all(|(r, _)| r.partition_key == got[1].0.partition_key)
        );
        assert!(got.iter().all(|(r, _)| r.size_bytes() <= 132));
        // Batches of one part each: those holding only leading parts move no checkpoint.
        let part = kinesis_producer::batch_buffer_cost(&got[1].0);
        let cfg = ProducerConfig {
            max_buffered_bytes: part * 8,
            ..ProducerConfig::default()
        };
        let ends: Vec<Option<u64>> = batches(got.into_iter(), &cfg)
            .iter()
            .map(|(_, e)| *e)
            .collect();
        assert_eq!(ends, [Some(6), None, None, Some(256), Some(258)]);
    }

    #[test]
    fn deterministic_keys_follow_the_data_and_oversized_lines_are_cut() {
        let f = flow(PartitionKeyRule::Deterministic, 100);
        let lines = vec![
            Bytes::from_static(b"same"),
            Bytes::from_static(b"other"),
            Bytes::from_static(b"same"),
            Bytes::from(vec![b'z'; 500]),
        ];
        let r: Vec<UserRecord> = records_of(lines, &[1, 2, 3, 4], &f)
            .map(|(r, _)| r)
            .collect();
        assert_eq!(r[0].partition_key, r[2].partition_key);
        assert_ne!(r[0].partition_key, r[1].partition_key);
        assert_eq!(
            r[3].size_bytes(),
            100,
            "cut to the record limit, key included"
        );
        assert_eq!(r[3].data.last(), Some(&b'\n'), "ends with the terminator");
    }
}
