//! Fuzzes the agent's checkpoint file parser: any bytes must give an error or checkpoints,
//! never a panic; what parses is written back to the same checkpoints.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run agent_checkpoint -- -max_total_time=60`.
#![no_main]

use kinesis_agent::checkpoint::{encode, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = parse(data) {
        let files: Vec<_> = c.files.iter().collect();
        let legacy: Vec<_> = c.legacy.iter().collect();
        let again = parse(&encode(&files, &legacy)).expect("what we write parses");
        assert_eq!(again, c);
    }
});
