//! Bytes read from a file into records: lines (newline kept), header lines skipped, partial
//! last lines held until their newline or a timeout, and multi-line records joined — each with
//! the offset the checkpoint may take once it is delivered. Memory is bounded by the record
//! size limit: a line or a multi-line record never grows past it unnoticed.
//!
//! ```text
//!   read at offset ─► split at '\n' ─► header? skip ─► multi-line? join until a start line,
//!        │                                             the size limit, or the timeout (from the
//!        │                                             record's first line) ─► record + end offset
//!        └─ bytes after the last '\n' ─► partial (sent as is after the timeout, or at the size
//!           limit: SPLIT sends it in parts, TRUNCATE sends the first part and drops the rest of
//!           the line)
//! ```

use std::time::Duration;

use bytes::Bytes;
use regex::bytes::Regex;
use tokio::time::Instant;

/// Records of one file collected by a read.
#[derive(Debug, Default)]
pub struct Out {
    /// The records, in file order.
    pub records: Vec<Bytes>,
    /// For each record, the offset just after it.
    pub ends: Vec<u64>,
}

impl Out {
    fn push(&mut self, record: Bytes, end: u64) {
        self.records.push(record);
        self.ends.push(end);
    }
}

/// How lines become records for one flow.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    /// A record starts at a line matching this (`multiLineStartPattern`).
    pub start: Option<&'a Regex>,
    /// Largest record (data + key; the key is small, the exact cut is made later).
    pub max_record: usize,
    /// Oversized lines are truncated (the rest of the line is dropped) rather than split.
    pub truncate: bool,
    /// A partial last line, or a multi-line record, waits this long from its first byte.
    pub timeout: Duration,
}

/// One file's line state.
#[derive(Debug, Default)]
pub struct Assembler {
    /// Bytes after the last newline, waiting for theirs.
    partial: Vec<u8>,
    partial_since: Option<Instant>,
    /// Multi-line record being assembled, where it ends, and when its first line came.
    multi: Vec<u8>,
    multi_end: u64,
    multi_since: Option<Instant>,
    header_lines_left: usize,
    /// Dropping the rest of a truncated oversized line, up to its newline.
    skipping: bool,
}

impl Assembler {
    /// For a file read from `offset`: header lines are skipped only from the start.
    pub fn new(offset: u64, header_lines: usize) -> Self {
        Self {
            header_lines_left: if offset == 0 { header_lines } else { 0 },
            ..Self::default()
        }
    }

    /// Nothing held back.
    pub fn is_empty(&self) -> bool {
        self.partial.is_empty() && self.multi.is_empty()
    }

    /// Bytes held back (partial line and multi-line record).
    pub fn held(&self) -> usize {
        self.partial.len() + self.multi.len()
    }

    /// Takes the bytes `buf` read at `start`.
    pub fn feed(
        &mut self,
        buf: &Bytes,
        start: u64,
        rules: &Rules<'_>,
        now: Instant,
        out: &mut Out,
    ) {
        let mut pos = 0;
        for nl in memchr::memchr_iter(b'\n', buf) {
            let end_offset = start + nl as u64 + 1;
            if self.skipping {
                // The rest of a truncated line: dropped, its newline included.
                self.skipping = false;
                metrics::counter!("agent_bytes_truncated_total").increment((nl + 1 - pos) as u64);
                pos = nl + 1;
                continue;
            }
            let line = if self.partial.is_empty() {
                buf.slice(pos..=nl)
            } else {
                // The line began in an earlier read: the one copy.
                let mut joined = std::mem::take(&mut self.partial);
                joined.extend_from_slice(&buf[pos..=nl]);
                Bytes::from(joined)
            };
            self.partial_since = None;
            pos = nl + 1;
            self.line(line, end_offset, rules, now, out);
        }
        if pos < buf.len() {
            if self.skipping {
                metrics::counter!("agent_bytes_truncated_total")
                    .increment((buf.len() - pos) as u64);
                return;
            }
            self.partial.extend_from_slice(&buf[pos..]);
            self.partial_since.get_or_insert(now);
            if self.partial.len() >= rules.max_record {
                // A line longer than a record: no need to hold more of it.
                let data = Bytes::from(std::mem::take(&mut self.partial));
                self.partial_since = None;
                self.skipping = rules.truncate;
                self.line(data, start + buf.len() as u64, rules, now, out);
            }
        }
    }

    /// Sends what waited long enough: a partial last line (ending at `offset`, the bytes read
    /// so far), a multi-line record.
    pub fn tick(&mut self, offset: u64, rules: &Rules<'_>, now: Instant, out: &mut Out) {
        if self
            .partial_since
            .is_some_and(|t| now.duration_since(t) >= rules.timeout)
        {
            let data = Bytes::from(std::mem::take(&mut self.partial));
            self.partial_since = None;
            self.line(data, offset, rules, now, out);
        }
        if self
            .multi_since
            .is_some_and(|t| now.duration_since(t) >= rules.timeout)
        {
            self.flush_multi(out);
        }
    }

    fn line(
        &mut self,
        line: Bytes,
        end_offset: u64,
        rules: &Rules<'_>,
        now: Instant,
        out: &mut Out,
    ) {
        if self.header_lines_left > 0 {
            self.header_lines_left -= 1;
            return;
        }
        let Some(p) = rules.start else {
            out.push(line, end_offset);
            return;
        };
        let starts = p.find(&line).is_some_and(|m| m.start() == 0);
        if !self.multi.is_empty() && (starts || self.multi.len() + line.len() > rules.max_record) {
            self.flush_multi(out);
        }
        // The lines as they are in the file, newlines included.
        self.multi.extend_from_slice(&line);
        self.multi_end = end_offset;
        // The timeout counts from the record's first line, not its last.
        self.multi_since.get_or_insert(now);
    }

    fn flush_multi(&mut self, out: &mut Out) {
        if self.multi.is_empty() {
            return;
        }
        out.push(Bytes::from(std::mem::take(&mut self.multi)), self.multi_end);
        self.multi_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(start: Option<&Regex>, max_record: usize, truncate: bool) -> Rules<'_> {
        Rules {
            start,
            max_record,
            truncate,
            timeout: Duration::from_secs(5),
        }
    }

    fn feed_all(a: &mut Assembler, parts: &[&[u8]], r: &Rules<'_>, now: Instant) -> Out {
        let mut out = Out::default();
        let mut at = 0;
        for p in parts {
            a.feed(&Bytes::copy_from_slice(p), at, r, now, &mut out);
            at += p.len() as u64;
        }
        out
    }

    #[test]
    fn lines_headers_and_partial_lines() {
        let r = rules(None, 1024, true);
        let now = Instant::now();
        let mut a = Assembler::new(0, 1);
        let out = feed_all(&mut a, &[b"head\nl1\nl", b"2\nl3"], &r, now);
        assert_eq!(out.records, [&b"l1\n"[..], b"l2\n"]);
        assert_eq!(out.ends, [8, 11]);
        assert_eq!(a.held(), 2);
        let mut out = Out::default();
        a.tick(13, &r, now + Duration::from_secs(5), &mut out);
        assert_eq!(out.records, [&b"l3"[..]]);
        assert_eq!(out.ends, [13]);
        assert!(a.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_multi_line_record_is_cut_at_the_size_limit_and_timed_from_its_first_line() {
        let start = Regex::new(r"^\d").unwrap();
        let line = Bytes::from(
            vec![b'x'; 29]
                .into_iter()
                .chain([b'\n'])
                .collect::<Vec<u8>>(),
        );
        // A busy file whose lines never start a record, a line a second.
        let run = |max_record| {
            let r = rules(Some(&start), max_record, true);
            let t0 = Instant::now();
            let mut a = Assembler::new(0, 0);
            let mut out = Out::default();
            let mut held = 0;
            for i in 0..12u64 {
                let now = t0 + Duration::from_secs(i);
                a.feed(&line, i * 30, &r, now, &mut out);
                a.tick((i + 1) * 30, &r, now, &mut out);
                held = held.max(a.held());
            }
            (out, held)
        };
        // The size limit cuts at three lines (90 bytes of at most 100).
        let (out, held) = run(100);
        let sizes: Vec<usize> = out.records.iter().map(Bytes::len).collect();
        assert_eq!(sizes, [90, 90, 90]);
        assert_eq!(out.ends, [90, 180, 270]);
        assert!(held <= 100);
        // The 5 s timeout counts from the record's first line: six lines (t0..t0+5 s) a
        // record, although a line came every second.
        let (out, _) = run(1 << 20);
        let sizes: Vec<usize> = out.records.iter().map(Bytes::len).collect();
        assert_eq!(sizes, [180, 180]);
        assert_eq!(out.ends, [180, 360]);
        // A start line flushes what came before.
        let r = rules(Some(&start), 1 << 20, true);
        let mut a = Assembler::new(0, 0);
        let mut out = Out::default();
        let now = Instant::now();
        a.feed(&line, 0, &r, now, &mut out);
        a.feed(&Bytes::from_static(b"1 new\n"), 30, &r, now, &mut out);
        assert_eq!(out.records, [&line[..]]);
        assert_eq!(out.ends, [30]);
    }

    #[test]
    fn a_line_longer_than_a_record_is_never_held_whole() {
        let now = Instant::now();
        let chunk = vec![b'y'; 300];
        // TRUNCATE: the first part goes (cut later to the limit), the rest of the line is dropped.
        let r = rules(None, 1000, true);
        let mut a = Assembler::new(0, 0);
        let mut parts: Vec<&[u8]> = vec![&chunk; 10];
        parts.push(b"tail\nnext\n");
        let out = feed_all(&mut a, &parts, &r, now);
        let sizes: Vec<usize> = out.records.iter().map(Bytes::len).collect();
        assert_eq!(sizes, [1200, 5]);
        assert_eq!(out.records[1], &b"next\n"[..]);
        assert_eq!(out.ends, [1200, 3010]);
        // SPLIT: every byte goes, in parts.
        let r = rules(None, 1000, false);
        let mut a = Assembler::new(0, 0);
        let out = feed_all(&mut a, &parts, &r, now);
        let total: usize = out.records.iter().map(Bytes::len).sum();
        assert_eq!(total, 3010);
        assert_eq!(*out.ends.last().unwrap(), 3010);
        assert!(a.held() < 1000);
    }
}
