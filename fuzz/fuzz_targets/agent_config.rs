//! Fuzzes the agent's configuration reader (`agent.json`, comments allowed as the Kinesis Agent
//! allows them): any text gives a configuration or an error naming a key, never a panic; the
//! comment stripper keeps every line and never touches a string.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run agent_config -- -max_total_time=60`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(stripped) = kinesis_agent::jsonc::strip_comments(text) {
        assert_eq!(stripped.lines().count(), text.lines().count());
    }
    if let Ok(v) = kinesis_agent::config::parse_json(text) {
        if let Err(e) = kinesis_agent::config::from_value(&v) {
            assert!(!e.path.is_empty());
        }
    }
});
