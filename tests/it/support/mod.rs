//! Test support shared by the integration tests: a real SQS emulator client, and a fake
//! Kubernetes API server that speaks the real wire format.
#![allow(dead_code)]

pub mod daemon;
pub mod fake_kube;
pub mod fakes;
pub mod forward_proxy;
pub mod jobs;
pub mod moto;
pub mod process;
pub mod proxy;
pub mod sqs;
