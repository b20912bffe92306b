//! How much the producer keeps in flight: a window on PutRecords calls and one on their bytes,
//! cut when the endpoint shows it cannot keep up and grown back while it answers promptly, as
//! TCP's congestion window (RFC 5681) is.
//!
//! ```text
//!   call sent after the last cut (id ≥ since):
//!     no answer within request_timeout ─► windows to the floor (1 call, min_bytes); thresholds
//!                                          = half of what was in flight when it was sent
//!     throttled as a whole ─────────────► windows and thresholds = half of that
//!     answered within request_timeout/2 ─► below its threshold a window grows by the call's
//!                                          share (1 call, its bytes: doubling per round trip),
//!                                          above it by a quarter of that
//!     answered later ───────────────────► unchanged
//!   call sent before the last cut ──────► unchanged (it went out under the old windows)
//! ```
//!
//! Why: an endpoint that answers slowly serves the calls in flight together (kinesis-mock is one
//! thread; a service near its limit queues), so the time a call takes grows with everything in
//! flight beside it; and a call that timed out may still be running there after the client gave
//! up (kinesis-mock stores it), so right after a timeout the endpoint is busier than the
//! producer can see. Sent again as they were, with as much beside them, the same records time
//! out again until their TTL is gone (`producer/tests/delivery.rs` against kinesis-mock: five
//! attempts of the same 5 MB call, each cut off at the 6 s timeout). After a timeout the
//! records go again in a small call, and in larger ones as the endpoint answers promptly.
//!
//! The windows start at the configured limits: nothing changes until an endpoint falls behind.
//! At the least, one call of `min_bytes` (or of one Kinesis record) goes at a time.
//!
//! Pure and clock-free: the caller says whether a call was answered promptly.

/// Growth per promptly answered call above the threshold, as a fraction of the call's share.
const GROWTH: f64 = 0.25;

/// The two windows, their slow-start thresholds, and when they were last cut.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    /// Calls allowed in flight, `1..=max_calls`.
    calls: f64,
    calls_threshold: f64,
    /// Bytes allowed in flight, `min_bytes..=max_bytes`; also the largest call.
    bytes: f64,
    bytes_threshold: f64,
    max_calls: f64,
    max_bytes: f64,
    min_bytes: f64,
    /// Calls with an id from this one on were sent after the last cut.
    since: u64,
}

/// What was in flight when a call was sent, itself included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sent {
    /// The call's own bytes.
    pub(crate) bytes: usize,
    /// Calls in flight.
    pub(crate) calls_in_flight: usize,
    /// Bytes in flight.
    pub(crate) bytes_in_flight: usize,
}

impl Window {
    /// Windows open to `max_calls` calls and `max_bytes` bytes, cut no lower than one call and
    /// `min_bytes` bytes.
    pub(crate) fn new(max_calls: usize, max_bytes: usize, min_bytes: usize) -> Self {
        let max_calls = max_calls.max(1) as f64;
        let max_bytes = max_bytes.max(1) as f64;
        Self {
            calls: max_calls,
            calls_threshold: max_calls,
            bytes: max_bytes,
            bytes_threshold: max_bytes,
            max_calls,
            max_bytes,
            min_bytes: (min_bytes.max(1) as f64).min(max_bytes),
            since: 0,
        }
    }

    /// Calls allowed in flight now (at least one).
    pub(crate) fn calls(&self) -> usize {
        // In 1..=max_calls, which came from a usize: nothing to truncate or lose.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let n = self.calls.floor() as usize;
        n.max(1)
    }

    /// Bytes allowed in flight now, and so the largest call (a call of one record may be
    /// larger: it goes alone).
    pub(crate) fn bytes(&self) -> usize {
        // In 1..=max_bytes, which came from a usize.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let n = self.bytes.floor() as usize;
        n.max(1)
    }

    /// Call `id`, sent with `sent` in flight, got no answer within the request timeout: the
    /// endpoint could not take that much, and may still be busy with it. Both windows drop to
    /// the floor and grow back quickly up to half of what was in flight, unless the call went
    /// out before the last cut. `next_call` is the id the next call will get. Returns whether
    /// it cut.
    pub(crate) fn timed_out(&mut self, id: u64, sent: Sent, next_call: u64) -> bool {
        if !self.cut_thresholds(id, sent, next_call) {
            return false;
        }
        self.calls = 1.0;
        self.bytes = self.min_bytes;
        true
    }

    /// Call `id` was throttled as a whole: the endpoint says it got too much, and is not busy
    /// with it. Both windows drop to half of what was in flight when it was sent, unless it went
    /// out before the last cut. Returns whether it cut.
    pub(crate) fn throttled(&mut self, id: u64, sent: Sent, next_call: u64) -> bool {
        if !self.cut_thresholds(id, sent, next_call) {
            return false;
        }
        self.calls = self.calls.min(self.calls_threshold);
        self.bytes = self.bytes.min(self.bytes_threshold);
        true
    }

    /// Thresholds to half of what was in flight when call `id` was sent (never above the
    /// windows now), if it was sent after the last cut.
    fn cut_thresholds(&mut self, id: u64, sent: Sent, next_call: u64) -> bool {
        if id < self.since {
            return false;
        }
        let half_calls = sent.calls_in_flight as f64 / 2.0;
        let half_bytes = sent.bytes_in_flight as f64 / 2.0;
        self.calls_threshold = self.calls.min(half_calls).max(1.0);
        self.bytes_threshold = self.bytes.min(half_bytes).max(self.min_bytes);
        self.since = next_call;
        true
    }

    /// Call `id` was answered, `promptly` (within half the request timeout) or not. A prompt
    /// answer to a call sent since the last cut grows each window by the call's share (one
    /// call, its bytes) up to its threshold, by a quarter of that above it.
    pub(crate) fn answered(&mut self, id: u64, sent: Sent, promptly: bool) {
        if !promptly || id < self.since {
            return;
        }
        self.calls = grow(self.calls, 1.0, self.calls_threshold, self.max_calls);
        self.bytes = grow(
            self.bytes,
            sent.bytes as f64,
            self.bytes_threshold,
            self.max_bytes,
        );
    }
}

/// `window` grown by `share` up to `threshold` (slow start), by a quarter of it beyond.
fn grow(window: f64, share: f64, threshold: f64, max: f64) -> f64 {
    let grown = if window < threshold {
        (window + share).min(threshold)
    } else {
        window + GROWTH * share
    };
    grown.min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: usize = 1 << 20;
    const FLOOR: usize = 50_000;

    fn sent(bytes: usize, calls_in_flight: usize, bytes_in_flight: usize) -> Sent {
        Sent {
            bytes,
            calls_in_flight,
            bytes_in_flight,
        }
    }

    fn window() -> Window {
        Window::new(24, 120 * MB, FLOOR)
    }

    #[test]
    fn opens_at_the_limits() {
        let w = window();
        assert_eq!((w.calls(), w.bytes()), (24, 120 * MB));
    }

    #[test]
    fn a_timeout_drops_to_the_floor_once_per_round() {
        let mut w = window();
        // Call 3 was sent with 10 calls and 8 MB in flight; calls up to 9 are out.
        assert!(w.timed_out(3, sent(5 * MB, 10, 8 * MB), 10));
        assert_eq!((w.calls(), w.bytes()), (1, FLOOR));
        // Calls sent before that cut time out too: nothing more.
        assert!(!w.timed_out(9, sent(MB, 12, 12 * MB), 12));
        assert!(!w.throttled(9, sent(MB, 12, 12 * MB), 12));
        // Slow start: each prompt answer adds its share, up to half of what was in flight.
        w.answered(10, sent(FLOOR, 1, FLOOR), true);
        assert_eq!((w.calls(), w.bytes()), (2, 2 * FLOOR));
        w.answered(11, sent(2 * FLOOR, 2, 2 * FLOOR), true);
        w.answered(12, sent(2 * FLOOR, 2, 4 * FLOOR), true);
        assert_eq!((w.calls(), w.bytes()), (4, 6 * FLOOR));
        for id in 13..40 {
            w.answered(id, sent(MB, 4, 4 * MB), true);
        }
        // Up to the thresholds (5 calls, 4 MB: one and four answers), then a quarter of each
        // share: 26 and 23 answers.
        assert_eq!((w.calls(), w.bytes()), (5 + 26 / 4, 4 * MB + 23 * MB / 4));
        // One sent after the cut times out: to the floor again.
        assert!(w.timed_out(13, sent(MB, 3, 3 * MB), 41));
        assert_eq!((w.calls(), w.bytes()), (1, FLOOR));
    }

    #[test]
    fn a_throttle_halves_what_was_in_flight() {
        let mut w = window();
        assert!(w.throttled(0, sent(4 * MB, 8, 16 * MB), 1));
        assert_eq!((w.calls(), w.bytes()), (4, 8 * MB));
        // A cut never raises a window: half of a larger flight is more than it is now.
        assert!(w.throttled(1, sent(MB, 24, 100 * MB), 2));
        assert_eq!((w.calls(), w.bytes()), (4, 8 * MB));
        // Nor goes below the floor.
        for id in 2..40 {
            w.throttled(id, sent(100, 1, 100), id + 1);
        }
        assert_eq!((w.calls(), w.bytes()), (1, FLOOR));
    }

    #[test]
    fn only_prompt_answers_to_calls_sent_since_the_cut_grow_it() {
        let mut w = window();
        w.throttled(0, sent(4 * MB, 8, 16 * MB), 1);
        w.answered(0, sent(4 * MB, 8, 16 * MB), true);
        w.answered(1, sent(2 * MB, 1, 2 * MB), false);
        assert_eq!((w.calls(), w.bytes()), (4, 8 * MB));
        // A window's worth of prompt answers: four calls of 2 MB, a quarter more.
        for id in 1..5 {
            w.answered(id, sent(2 * MB, 4, 8 * MB), true);
        }
        assert_eq!((w.calls(), w.bytes()), (5, 10 * MB));
        // Up to the limits, never past them.
        for id in 5..1000 {
            w.answered(id, sent(5 * MB, 24, 100 * MB), true);
        }
        assert_eq!((w.calls(), w.bytes()), (24, 120 * MB));
    }
}
