//! Cutting the queue into PutMetricData calls within the API's limits.
//!
//! PutMetricData API reference: "Each PutMetricData request is limited to 1 MB in size for HTTP
//! POST requests. You can send a payload compressed by gzip. Each request is also limited to no
//! more than 1000 different metrics." We count the body uncompressed (so the limit holds
//! whichever size it applies to) against 1,000,000 bytes (so it holds whichever megabyte it
//! means), by an upper bound of its RPC v2 CBOR encoding, the protocol aws-sdk-cloudwatch 1.140
//! speaks. Statistic sets carry no `Values` array, so the limit of 150 values per metric does
//! not apply.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use crate::recorder::Datum;

/// Datums per PutMetricData call: "no more than 1000 different metrics" (API reference).
pub const MAX_DATUMS_PER_CALL: usize = 1000;
/// Request body bytes per call, uncompressed: the API's 1 MB, read as 1,000,000.
pub const MAX_REQUEST_BYTES: usize = 1_000_000;
/// Dimensions per metric: "You can use up to 30 dimensions per metric" (API reference).
pub const MAX_DIMENSIONS: usize = 30;
/// The oldest timestamp CloudWatch takes: "specify time stamps within the past two weeks"
/// (CloudWatch User Guide, *Publishing custom metrics*). Older sets are dropped, not sent.
pub const MAX_AGE: Duration = Duration::from_secs(14 * 24 * 3600);

/// The request's fixed part: `{"Namespace": ns, "MetricData": [...]}` and CBOR headers.
const ENVELOPE_BYTES: usize = 64;
/// One datum's fixed part, over-counted: the map and its keys (`MetricName`, `Dimensions`,
/// `Timestamp` with its tag and double, `StatisticValues` with four keys and doubles, `Unit`
/// and the longest unit name): about 150 bytes in CBOR.
const DATUM_BYTES: usize = 200;
/// One dimension's fixed part: a map of `Name` and `Value` with two string headers (≤ 3 bytes
/// each for strings up to 1,024 bytes): 16 bytes; over-counted.
const DIMENSION_BYTES: usize = 24;
/// A string's CBOR header, at most (lengths up to 2^32).
const STRING_HEADER: usize = 5;

/// An upper bound of a datum's size in the request body.
pub(crate) fn datum_bytes(d: &Datum) -> usize {
    DATUM_BYTES
        + STRING_HEADER
        + d.key.name.len()
        + d.key
            .dimensions
            .iter()
            .map(|(n, v)| DIMENSION_BYTES + n.len() + v.len())
            .sum::<usize>()
}

/// An upper bound of the request's size with no datum.
pub(crate) fn envelope_bytes(namespace: &str) -> usize {
    ENVELOPE_BYTES + STRING_HEADER + namespace.len()
}

/// Takes the next call's datums from the front of `queue` (the oldest first): as many as fit
/// in `max_datums` and `max_bytes` (with the envelope), at least one. Sets older than
/// [`MAX_AGE`] at `now` are removed and counted in the second value, never sent.
pub(crate) fn take_batch(
    queue: &mut VecDeque<Datum>,
    namespace: &str,
    max_datums: usize,
    max_bytes: usize,
    now: SystemTime,
) -> (Vec<Datum>, u64) {
    let mut batch = Vec::new();
    let mut bytes = envelope_bytes(namespace);
    let mut expired = 0;
    while let Some(d) = queue.front() {
        if now
            .duration_since(d.timestamp)
            .is_ok_and(|age| age > MAX_AGE)
        {
            queue.pop_front();
            expired += 1;
            continue;
        }
        let size = datum_bytes(d);
        if batch.len() == max_datums || (!batch.is_empty() && bytes + size > max_bytes) {
            break;
        }
        bytes += size;
        batch.extend(queue.pop_front());
    }
    (batch, expired)
}

/// Adds `datums` at the back of `queue` and drops from the front (the oldest) past `cap`;
/// returns how many were dropped.
pub(crate) fn push_capped(
    queue: &mut VecDeque<Datum>,
    datums: impl IntoIterator<Item = Datum>,
    cap: usize,
) -> u64 {
    queue.extend(datums);
    let over = queue.len().saturating_sub(cap);
    queue.drain(..over);
    over as u64
}

/// Puts a failed call's datums back at the front (they are the oldest), then drops from the
/// front past `cap`; returns how many were dropped.
pub(crate) fn requeue_capped(queue: &mut VecDeque<Datum>, batch: Vec<Datum>, cap: usize) -> u64 {
    for d in batch.into_iter().rev() {
        queue.push_front(d);
    }
    let over = queue.len().saturating_sub(cap);
    queue.drain(..over);
    over as u64
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::rules::DatumKey;
    use crate::stats::StatisticSet;

    fn datum(name: &str, dims: usize, value_len: usize, at: SystemTime) -> Datum {
        Datum {
            key: Arc::new(DatumKey {
                name: Arc::from(name),
                dimensions: (0..dims)
                    .map(|i| {
                        (
                            Arc::from(format!("d{i:02}")),
                            Arc::from("v".repeat(value_len)),
                        )
                    })
                    .collect(),
            }),
            stats: StatisticSet::of(1.0, 1),
            timestamp: at,
            unit: None,
        }
    }

    const NOW: SystemTime = UNIX_EPOCH;

    fn now() -> SystemTime {
        NOW + Duration::from_secs(30 * 24 * 3600)
    }

    fn batches(queue: &mut VecDeque<Datum>) -> Vec<usize> {
        let mut sizes = Vec::new();
        while !queue.is_empty() {
            let (b, _) = take_batch(queue, "ns", MAX_DATUMS_PER_CALL, MAX_REQUEST_BYTES, now());
            assert!(!b.is_empty());
            let bytes = envelope_bytes("ns") + b.iter().map(datum_bytes).sum::<usize>();
            assert!(bytes <= MAX_REQUEST_BYTES, "{bytes}");
            sizes.push(b.len());
        }
        sizes
    }

    #[test]
    fn calls_are_cut_by_count_and_by_size() {
        // (datums, dimensions, value length) -> datums per call
        let table: [(usize, usize, usize, Vec<usize>); 5] = [
            (0, 0, 0, vec![]),
            (1, 0, 0, vec![1]),
            (1000, 2, 20, vec![1000]),
            (2500, 2, 20, vec![1000, 1000, 500]),
            // 30 dimensions of 1,024-character values: ~31 KB each, 31 per call.
            (100, 30, 1024, vec![31, 31, 31, 7]),
        ];
        for (n, dims, len, want) in table {
            let mut q: VecDeque<Datum> = (0..n).map(|_| datum("M", dims, len, now())).collect();
            assert_eq!(batches(&mut q), want, "{n} × {dims} × {len}");
        }
    }

    #[test]
    fn the_estimate_bounds_every_datum_cloudwatch_takes() {
        // The largest datum CloudWatch takes still fits a call many times over.
        let biggest = datum(&"m".repeat(255), MAX_DIMENSIONS, 1024, now());
        assert!(datum_bytes(&biggest) < MAX_REQUEST_BYTES / 25);
    }

    #[test]
    fn sets_older_than_two_weeks_are_dropped_not_sent() {
        let old = now() - MAX_AGE - Duration::from_secs(1);
        let mut q: VecDeque<Datum> = [
            datum("A", 0, 0, old),
            datum("B", 0, 0, now()),
            datum("C", 0, 0, old),
        ]
        .into_iter()
        .collect();
        let (b, expired) = take_batch(&mut q, "ns", 10, MAX_REQUEST_BYTES, now());
        assert_eq!(b.iter().map(|d| &*d.key.name).collect::<Vec<_>>(), ["B"]);
        assert_eq!(expired, 2);
        assert!(q.is_empty());
        assert_eq!(
            take_batch(&mut q, "ns", 10, MAX_REQUEST_BYTES, now()),
            (vec![], 0)
        );
    }

    #[test]
    fn the_queue_drops_its_oldest_past_the_cap() {
        let names =
            |q: &VecDeque<Datum>| q.iter().map(|d| d.key.name.to_string()).collect::<Vec<_>>();
        let mut q = VecDeque::new();
        let mk = |n: &str| datum(n, 0, 0, now());
        assert_eq!(push_capped(&mut q, [mk("a"), mk("b")], 3), 0);
        assert_eq!(push_capped(&mut q, [mk("c"), mk("d")], 3), 1);
        assert_eq!(names(&q), ["b", "c", "d"]);
        // A failed call's datums go back in front, and the oldest go first.
        let (batch, _) = take_batch(&mut q, "ns", 2, MAX_REQUEST_BYTES, now());
        push_capped(&mut q, [mk("e"), mk("f")], 3);
        assert_eq!(names(&q), ["d", "e", "f"]);
        assert_eq!(requeue_capped(&mut q, batch, 3), 2);
        assert_eq!(names(&q), ["d", "e", "f"]);
        let (batch, _) = take_batch(&mut q, "ns", 1, MAX_REQUEST_BYTES, now());
        assert_eq!(requeue_capped(&mut q, batch, 3), 0);
        assert_eq!(names(&q), ["d", "e", "f"]);
    }
}
