//! The integration tests, one binary: each area is a module, and `support` holds what
//! they share (the fake API server, the SQS emulator's client and proxies, harnesses).
//! One binary links kube and the AWS SDK once instead of once per file.
//!
//! Needs `SQS_ENDPOINT_URL` (scripts/test starts moto).

mod support;

mod cli;
mod daemon;
mod demo;
mod fake_kube;
mod faults;
mod fleet;
mod fuzz;
mod jobs;
mod jobs_faults;
mod leader;
mod package;
mod process;
mod readme;
mod schedule;
mod secrets;
mod supervisor;
