//! The integration tests of `kinesis-consumer`, in one binary: each file beside this one is a module of it
//! (`cargo test -p kinesis-consumer --test integration <module>::` runs one file's tests). One binary, not
//! one per file, because each binary links the SDK and the emulators (~80 MB in the dev profile):
//! CI's disk and link time paid that for every file.

// Test code: a failed unwrap is a failed test (each file allows the same for itself).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cloudwatch;
mod faults;
mod lease_operator;
mod lease_store;
mod worker;
