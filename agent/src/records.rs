//! Lines to records: processors, partition key, size limit (truncate or split), and batches
//! sized for the producer's buffer and the Kinesis Agent's batch limits.
//!
//! ```text
//!   line ─► footer? (fileFooterPattern: not shipped, its offset still passed)
//!        ─► dataProcessingOptions ─► partition key (streams; RANDOM: one per ~aggregate-sized run)
//!        ─► over the limit? cut (TRUNCATE) or parts (SPLIT) ─► Batcher: batches of ≤ 1/8 of
//!           the producer's buffer, ≤ maxBufferSizeRecords records and ≤ maxBufferSizeBytes
//!           data bytes, each with the offset after its last complete line
//! ```
//!
//! A stream's records are [`UserRecord`]s (key + data); a delivery stream's are their data
//! alone ([`Bytes`]): [`OutRecord`] is what the two have in common here.

use bytes::Bytes;
use kinesis_core::{PartitionKey, UserRecord};

use crate::config::{DestinationKind, Flow, Oversized, PartitionKeyRule};

/// The batches a flow hands its producer.
#[derive(Debug)]
pub(crate) enum Batch {
    /// For a Kinesis stream.
    Kinesis(Vec<UserRecord>),
    /// For a Firehose delivery stream.
    Firehose(Vec<Bytes>),
}

impl Batch {
    /// Records in it.
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Kinesis(r) => r.len(),
            Self::Firehose(r) => r.len(),
        }
    }

    /// Data bytes in it (partition keys not counted, as the Kinesis Agent's `BytesSent`).
    pub(crate) fn data_bytes(&self) -> u64 {
        match self {
            Self::Kinesis(r) => r.iter().map(|r| r.data.len() as u64).sum(),
            Self::Firehose(r) => r.iter().map(|r| r.len() as u64).sum(),
        }
    }

    /// Buffer space it takes in its producer.
    pub(crate) fn cost(&self) -> usize {
        match self {
            Self::Kinesis(r) => r.iter().map(OutRecord::cost).sum(),
            Self::Firehose(r) => r.iter().map(OutRecord::cost).sum(),
        }
    }
}

/// A record for one kind of destination.
pub(crate) trait OutRecord: Sized {
    /// Whether records carry a partition key.
    const KEYED: bool;
    /// The record of `data` (with `key` when keyed).
    fn make(key: Option<PartitionKey>, data: Bytes) -> Self;
    /// Buffer space it takes in its producer.
    fn cost(&self) -> usize;
    /// Its data bytes.
    fn data_len(&self) -> usize;
}

impl OutRecord for UserRecord {
    const KEYED: bool = true;

    fn make(key: Option<PartitionKey>, data: Bytes) -> Self {
        let key = key.unwrap_or_else(|| partition_key(&PartitionKeyRule::Random, &[]));
        UserRecord::new(key, None, data)
    }

    fn cost(&self) -> usize {
        kinesis_producer::batch_buffer_cost(self)
    }

    fn data_len(&self) -> usize {
        self.data.len()
    }
}

impl OutRecord for Bytes {
    const KEYED: bool = false;

    fn make(_: Option<PartitionKey>, data: Bytes) -> Self {
        data
    }

    fn cost(&self) -> usize {
        kinesis_producer::firehose::firehose_buffer_cost(self.len())
    }

    fn data_len(&self) -> usize {
        self.len()
    }
}

/// How large the batches handed to a producer may be.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchLimits {
    /// Buffer cost of a batch: an eighth of the producer's buffer, so that several are in
    /// flight and none is too large to be taken.
    pub(crate) cost: usize,
    /// Records (`maxBufferSizeRecords`).
    pub(crate) records: usize,
    /// Data bytes (`maxBufferSizeBytes`).
    pub(crate) bytes: usize,
}

impl BatchLimits {
    /// The limits of `flow`'s batches into a producer buffering `max_buffered_bytes`.
    pub(crate) fn of(flow: &Flow, max_buffered_bytes: usize) -> Self {
        Self {
            cost: max_buffered_bytes / 8,
            records: flow.tuning.max_buffer_size_records.max(1),
            bytes: flow.max_batch_bytes().max(1),
        }
    }
}

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
fn data_limit(key: Option<&PartitionKey>, flow: &Flow) -> usize {
    flow.max_record_bytes
        .saturating_sub(key.map_or(0, PartitionKey::len_bytes))
}

/// Cuts a record to the size limit (data + key), ending it with the terminator.
fn fit(data: Bytes, key: Option<&PartitionKey>, flow: &Flow) -> Bytes {
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

/// Cuts a chunk's records into batches within [`BatchLimits`]; each with the offset after its
/// last complete line (`None` if it holds only leading parts of a split line).
struct Batcher<R> {
    limits: BatchLimits,
    out: Vec<(Vec<R>, Option<u64>)>,
    batch: Vec<R>,
    cost: usize,
    bytes: usize,
    end: Option<u64>,
}

impl<R: OutRecord> Batcher<R> {
    fn new(limits: BatchLimits, expected: usize) -> Self {
        Self {
            limits,
            out: Vec::new(),
            batch: Vec::with_capacity(expected.min(limits.records)),
            cost: 0,
            bytes: 0,
            end: None,
        }
    }

    fn push(&mut self, record: R, end: Option<u64>) {
        let c = record.cost();
        let b = record.data_len();
        let full = self.cost + c > self.limits.cost
            || self.bytes + b > self.limits.bytes
            || self.batch.len() >= self.limits.records;
        if !self.batch.is_empty() && full {
            let next = Vec::with_capacity(self.batch.capacity());
            self.out
                .push((std::mem::replace(&mut self.batch, next), self.end.take()));
            self.cost = 0;
            self.bytes = 0;
        }
        self.cost += c;
        self.bytes += b;
        self.batch.push(record);
        self.end = end.or(self.end);
    }

    /// A line that is not shipped (a footer): the checkpoint may pass it with the batch.
    fn skip(&mut self, end: u64) {
        self.end = Some(end);
    }

    /// The batches; the last may be empty, carrying only the offset of lines not shipped.
    fn finish(mut self) -> Vec<(Vec<R>, Option<u64>)> {
        if !self.batch.is_empty() || self.end.is_some() {
            self.out.push((self.batch, self.end));
        }
        self.out
    }
}

#[cfg(test)]
fn batches<R: OutRecord>(
    records: impl Iterator<Item = (R, Option<u64>)>,
    limits: BatchLimits,
) -> Vec<(Vec<R>, Option<u64>)> {
    let mut b = Batcher::new(limits, records.size_hint().0);
    for (r, end) in records {
        b.push(r, end);
    }
    b.finish()
}

/// The records one line becomes: none (a footer), one, or the parts of a split line.
enum Parts<R> {
    Skip(u64),
    One(Option<(R, Option<u64>)>),
    Split(std::vec::IntoIter<(R, Option<u64>)>),
}

impl<R> Iterator for Parts<R> {
    type Item = (R, Option<u64>);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::Skip(_) => None,
            Self::One(r) => r.take(),
            Self::Split(it) => it.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Self::Skip(_) => (0, Some(0)),
            Self::One(r) => (usize::from(r.is_some()), Some(usize::from(r.is_some()))),
            Self::Split(it) => it.size_hint(),
        }
    }
}

/// A record over the limit as consecutive parts of at most the limit (zero-copy slices); only
/// the last carries the line's end, so the checkpoint passes the line once every part is in.
fn split<R: OutRecord>(
    data: &Bytes,
    key: Option<&PartitionKey>,
    end: u64,
    flow: &Flow,
) -> Parts<R> {
    let limit = data_limit(key, flow).max(1);
    let n = data.len().div_ceil(limit);
    let parts: Vec<_> = (0..n)
        .map(|i| {
            let part = data.slice(i * limit..((i + 1) * limit).min(data.len()));
            let last = i + 1 == n;
            (R::make(key.cloned(), part), last.then_some(end))
        })
        .collect();
    metrics::counter!("agent_records_split_total").increment(1);
    Parts::Split(parts.into_iter())
}

/// Lines of data that share one RANDOM partition key: about one aggregate's worth (the KPL's
/// 50 KiB aggregation limit), so each aggregate goes to a random shard.
const RANDOM_KEY_RUN_BYTES: usize = 50 * 1024;

/// Turns lines into records, each with the offset the checkpoint may take once it is
/// delivered: footer, processors, partition key (streams only), size limit (truncate or
/// split). With RANDOM keys, runs of lines of about one aggregate share a random key:
/// aggregates spread over the shards as evenly as with a key per line, but each carries one
/// key, not one per line, and the key is hashed once per run.
struct LineRecords<'a, R> {
    flow: &'a Flow,
    random: bool,
    run: Option<(PartitionKey, usize)>,
    _out: std::marker::PhantomData<R>,
}

impl<'a, R: OutRecord> LineRecords<'a, R> {
    fn new(flow: &'a Flow) -> Self {
        Self {
            flow,
            random: matches!(flow.partition_key, PartitionKeyRule::Random),
            run: None,
            _out: std::marker::PhantomData,
        }
    }

    fn key(&mut self, data: &[u8]) -> PartitionKey {
        let flow = self.flow;
        if !self.random {
            return partition_key(&flow.partition_key, data);
        }
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
    }

    fn convert(&mut self, line: Bytes, end: u64) -> Parts<R> {
        let flow = self.flow;
        if let Some(footer) = &flow.tuning.file_footer_pattern {
            let body = line.strip_suffix(b"\n").unwrap_or(&line);
            if footer.is_match(body.strip_suffix(b"\r").unwrap_or(body)) {
                metrics::counter!("agent_footer_lines_total").increment(1);
                return Parts::Skip(end);
            }
        }
        let data = if flow.processors.is_empty() {
            line
        } else {
            Bytes::from(
                flow.processors
                    .iter()
                    .fold(Vec::from(line), |d, p| p.apply(d)),
            )
        };
        let key = R::KEYED.then(|| self.key(&data));
        if data.len() > data_limit(key.as_ref(), flow) && flow.oversized == Oversized::Split {
            return split(&data, key.as_ref(), end, flow);
        }
        let data = fit(data, key.as_ref(), flow);
        Parts::One(Some((R::make(key, data), Some(end))))
    }
}

fn batch_lines_of<R: OutRecord>(
    lines: Vec<Bytes>,
    ends: &[u64],
    flow: &Flow,
    limits: BatchLimits,
) -> Vec<(Vec<R>, Option<u64>)> {
    let mut conv = LineRecords::<R>::new(flow);
    let mut b = Batcher::new(limits, lines.len());
    for (line, &end) in lines.into_iter().zip(ends) {
        match conv.convert(line, end) {
            Parts::One(Some((r, e))) => b.push(r, e),
            Parts::Skip(end) => b.skip(end),
            parts => {
                for (r, e) in parts {
                    b.push(r, e);
                }
            }
        }
    }
    b.finish()
}

/// A chunk's lines as producer batches for the flow's destination, in one pass.
pub(crate) fn batch_lines(
    lines: Vec<Bytes>,
    ends: &[u64],
    flow: &Flow,
    limits: BatchLimits,
) -> Vec<(Batch, Option<u64>)> {
    match flow.kind {
        DestinationKind::KinesisStream => batch_lines_of::<UserRecord>(lines, ends, flow, limits)
            .into_iter()
            .map(|(b, e)| (Batch::Kinesis(b), e))
            .collect(),
        DestinationKind::DeliveryStream => batch_lines_of::<Bytes>(lines, ends, flow, limits)
            .into_iter()
            .map(|(b, e)| (Batch::Firehose(b), e))
            .collect(),
    }
}

#[cfg(test)]
fn records_of<'a, R: OutRecord + 'a>(
    lines: Vec<Bytes>,
    ends: &'a [u64],
    flow: &'a Flow,
) -> impl Iterator<Item = (R, Option<u64>)> + 'a {
    let mut conv = LineRecords::<R>::new(flow);
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
            kind: crate::config::DestinationKind::KinesisStream,
            tuning: crate::config::FlowTuning::default(),
        }
    }

    /// Only the buffer-cost limit, as before the Kinesis Agent's batch keys.
    fn by_cost(max_buffered_bytes: usize) -> BatchLimits {
        BatchLimits {
            cost: max_buffered_bytes / 8,
            records: usize::MAX,
            bytes: usize::MAX,
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
        let limits = by_cost(8 * 1024 * 1024);
        let budget = limits.cost;
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
            let got = batches(records, limits);
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
        let records: Vec<UserRecord> = records_of::<UserRecord>(lines, &ends, &f)
            .map(|(r, _)| r)
            .collect();
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
        let got: Vec<(UserRecord, Option<u64>)> =
            records_of::<UserRecord>(lines, &[6, 256, 258], &f).collect();
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
        let ends: Vec<Option<u64>> = batches(got.into_iter(), by_cost(part * 8))
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
        let r: Vec<UserRecord> = records_of::<UserRecord>(lines, &[1, 2, 3, 4], &f)
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

    #[test]
    fn max_buffer_size_records_and_bytes_cap_the_batches() {
        // (records, bytes, line sizes, expected batch lengths)
        let cases: Vec<(usize, usize, Vec<usize>, Vec<usize>)> = vec![
            (500, usize::MAX, vec![10; 1200], vec![500, 500, 200]),
            (3, usize::MAX, vec![10; 7], vec![3, 3, 1]),
            (500, 100, vec![40; 5], vec![2, 2, 1]),
            // A line over maxBufferSizeBytes goes alone, never in an empty batch.
            (500, 100, vec![10, 300, 10], vec![1, 1, 1]),
        ];
        for (records, bytes, sizes, want) in cases {
            let limits = BatchLimits {
                cost: usize::MAX,
                records,
                bytes,
            };
            let got = batches(
                sizes
                    .iter()
                    .zip(1u64..)
                    .map(|(&n, i)| (Bytes::from(vec![b'x'; n]), Some(i))),
                limits,
            );
            let lens: Vec<usize> = got.iter().map(|(b, _)| b.len()).collect();
            assert_eq!(lens, want, "records {records}, bytes {bytes}");
        }
        // The flow's keys become the limits; the byte default follows the destination.
        let mut f = flow(PartitionKeyRule::Random, 1024 * 1024);
        assert_eq!(BatchLimits::of(&f, 8 << 20).bytes, 5 << 20);
        f.kind = crate::config::DestinationKind::DeliveryStream;
        assert_eq!(BatchLimits::of(&f, 8 << 20).bytes, 4 << 20);
        f.tuning.max_buffer_size_records = 7;
        f.tuning.max_buffer_size_bytes = Some(1000);
        let l = BatchLimits::of(&f, 8 << 20);
        assert_eq!((l.records, l.bytes, l.cost), (7, 1000, 1 << 20));
    }

    #[test]
    fn footer_lines_are_not_shipped_but_the_checkpoint_passes_them() {
        let mut f = flow(PartitionKeyRule::Random, 1024 * 1024);
        f.kind = crate::config::DestinationKind::DeliveryStream;
        f.tuning.file_footer_pattern = Some(regex::bytes::Regex::new("^END OF LOG$").unwrap());
        let lines = vec![
            Bytes::from_static(b"a\n"),
            Bytes::from_static(b"END OF LOG\n"),
            Bytes::from_static(b"b\n"),
            Bytes::from_static(b"END OF LOG\r\n"),
        ];
        let limits = BatchLimits::of(&f, 8 << 20);
        let got = batch_lines(lines.clone(), &[2, 13, 15, 27], &f, limits);
        assert_eq!(got.len(), 1);
        let (Batch::Firehose(records), end) = &got[0] else {
            panic!("a delivery stream's batch");
        };
        assert_eq!(
            records,
            &[Bytes::from_static(b"a\n"), Bytes::from_static(b"b\n")]
        );
        assert_eq!(*end, Some(27), "the trailing footer is passed too");
        // A chunk of footers only: an empty batch that still moves the checkpoint.
        let got = batch_lines(vec![lines[1].clone()], &[13], &f, limits);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].0.len(), got[0].1), (0, Some(13)));
        // A line that only contains the words is shipped.
        let got = batch_lines(
            vec![Bytes::from_static(b"x END OF LOG\n")],
            &[13],
            &f,
            limits,
        );
        assert_eq!(got[0].0.len(), 1);
    }

    #[test]
    fn delivery_stream_records_are_the_data_alone_within_1000_kib() {
        let mut f = flow(PartitionKeyRule::Deterministic, 100);
        f.kind = crate::config::DestinationKind::DeliveryStream;
        let r: Vec<Bytes> = records_of::<Bytes>(
            vec![Bytes::from_static(b"short\n"), Bytes::from(vec![b'z'; 500])],
            &[6, 506],
            &f,
        )
        .map(|(r, _)| r)
        .collect();
        assert_eq!(r[0], Bytes::from_static(b"short\n"));
        // No key counted: the whole limit is data.
        assert_eq!(r[1].len(), 100);
        assert_eq!(r[1].last(), Some(&b'\n'));
    }
}
