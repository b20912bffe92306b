//! The fault mix of the chaos tests (`tests/chaos.rs`, `producer/tests/reshard_faults.rs`), in
//! one place so that every test that says "the chaos faults" means the same ones.
//!
//! ```text
//!   kinesis_reads()  GetRecords, GetShardIterator, SubscribeToShard faults
//!   kinesis()        PutRecords, ListShards faults; then faults on every call; then, for every
//!                    PutRecords the others leave alone, 30 % of its entries rejected
//!   dynamodb()       faults on every call
//! ```
//!
//! The proxy draws only for rules of the request's operation, so rules of different operations
//! may come in any order without changing what a seed does.

use std::time::Duration;

use crate::fault::{Fault, Rule};

fn on(op: &str, fault: Fault, probability: f64) -> Rule {
    Rule::new(Some(op), fault).probability(probability)
}

/// Faults on the read calls: expired iterators, throttles, responses and subscriptions cut.
pub fn kinesis_reads() -> Vec<Rule> {
    vec![
        on("GetRecords", Fault::error("ExpiredIteratorException"), 0.02),
        on("GetRecords", Fault::throttle(), 0.03),
        on(
            "GetRecords",
            Fault::ResetMidResponse { after_bytes: 200 },
            0.01,
        ),
        on("GetShardIterator", Fault::throttle(), 0.05),
        on(
            "SubscribeToShard",
            Fault::ResetMidResponse { after_bytes: 4_000 },
            0.15,
        ),
        on(
            "SubscribeToShard",
            Fault::error("ResourceInUseException"),
            0.05,
        ),
    ]
}

/// Faults on PutRecords and ListShards, then on every Kinesis call (errors, resets, latency,
/// stalls held until released), then 30 % of the entries of every remaining PutRecords call
/// rejected (half the calls throttled entries, half internal failures). Goes after
/// [`kinesis_reads`] when both are used.
pub fn kinesis() -> Vec<Rule> {
    vec![
        on("PutRecords", Fault::throttle(), 0.04),
        on("PutRecords", Fault::internal(), 0.02),
        on("PutRecords", Fault::ResetAfterForward, 0.01),
        on("PutRecords", Fault::ResetBeforeForward, 0.01),
        on("ListShards", Fault::error("LimitExceededException"), 0.05),
        Rule::all(Fault::internal()).probability(0.02),
        Rule::all(Fault::ResetBeforeForward).probability(0.01),
        Rule::all(Fault::Latency(Duration::from_millis(150))).probability(0.05),
        Rule::all(Fault::Stall).probability(0.005),
        on(
            "PutRecords",
            rejected("ProvisionedThroughputExceededException"),
            0.5,
        ),
        on("PutRecords", rejected("InternalFailure"), 1.0),
    ]
}

fn rejected(code: &str) -> Fault {
    Fault::PartialFailure {
        fraction: 0.3,
        code: code.into(),
    }
}

/// Faults on every DynamoDB call: throttles, 500s, resets, latency, stalls.
pub fn dynamodb() -> Vec<Rule> {
    vec![
        Rule::all(Fault::throttle()).probability(0.03),
        Rule::all(Fault::error("InternalServerError")).probability(0.02),
        Rule::all(Fault::ResetAfterForward).probability(0.01),
        Rule::all(Fault::ResetBeforeForward).probability(0.01),
        Rule::all(Fault::Latency(Duration::from_millis(300))).probability(0.03),
        Rule::all(Fault::Stall).probability(0.005),
    ]
}
