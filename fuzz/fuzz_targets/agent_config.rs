//! Fuzzes the agent's configuration reader (`agent.json`): any JSON gives a configuration or
//! an error naming a key, never a panic.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run agent_config -- -max_total_time=60`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Err(e) = kinesis_agent::config::from_value(&v) {
            assert!(!e.path.is_empty());
        }
    }
});
