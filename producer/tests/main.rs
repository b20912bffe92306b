//! The integration tests of `kinesis-producer`, in one binary: each file beside this one is a module of it
//! (`cargo test -p kinesis-producer --test integration <module>::` runs one file's tests). One binary, not
//! one per file, because each binary links the SDK and the emulators (~80 MB in the dev profile):
//! CI's disk and link time paid that for every file.

// Test code: a failed unwrap is a failed test (each file allows the same for itself).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod backpressure;
mod batch;
mod cloudwatch;
mod delivery;
mod faults;
mod firehose;
mod preserve_order_reshard;
mod reshard_faults;
mod streams;
mod unbounded_durations;
