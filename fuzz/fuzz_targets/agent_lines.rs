//! Fuzzes line assembly on hostile log bytes: fed in arbitrary pieces, with SPLIT every byte
//! comes out exactly once (records, then what is still held), ends only grow, and nothing held
//! grows past a record plus one read.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run agent_lines -- -max_total_time=60`.
#![no_main]

use bytes::Bytes;
use kinesis_agent::lines::{Assembler, Out, Rules};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, rest)) = data.split_first() else {
        return;
    };
    let start = regex::bytes::Regex::new(r"^\d").ok();
    let max_record = 16 + usize::from(cfg & 0x3f);
    let rules = Rules {
        start: if cfg & 0x80 != 0 { start.as_ref() } else { None },
        max_record,
        truncate: cfg & 0x40 != 0,
        timeout: std::time::Duration::from_secs(3600),
    };
    let now = tokio::time::Instant::now();
    let mut a = Assembler::new(0, 0);
    let mut out = Out::default();
    let mut at = 0u64;
    let mut piece = 1 + usize::from(cfg % 7);
    let mut left = rest;
    while !left.is_empty() {
        let n = piece.min(left.len());
        a.feed(&Bytes::copy_from_slice(&left[..n]), at, &rules, now, &mut out);
        at += n as u64;
        left = &left[n..];
        piece = piece * 3 % 97 + 1;
        assert!(a.held() <= 3 * max_record + 200, "held {}", a.held());
    }
    assert!(out.ends.windows(2).all(|w| w[0] <= w[1]));
    assert!(out.ends.iter().all(|&e| e <= at));
    if !rules.truncate {
        let total: usize = out.records.iter().map(Bytes::len).sum::<usize>() + a.held();
        assert_eq!(total, rest.len(), "every byte once");
    }
});
