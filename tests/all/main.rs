//! Every integration test of wasmq, in one binary (one link of wasmtime instead of one per area),
//! one module per area. Run with `tests/run.sh` (installs what they need), or `cargo test -p wasmq
//! --test all AREA::` for one area.
//!
//! - [`common`]: the kit — sample jobs, a shared sandbox, private Redis servers and clusters, a
//!   broker of any backend for tests run on each, `wasmq serve`.
//! - [`sandbox`], [`modules`], [`guests`], [`guest_sdk`]: running one job and loading modules.
//! - [`broker`]: the broker's behaviour on every backend; [`differential`]: both backends driven
//!   with the same random operations, every observable result compared.
//! - [`worker`], [`faults`]: the worker end to end, and with faults injected; [`futures`]: jobs
//!   that await their sub-jobs; [`cluster`]: what only a Redis Cluster shows.
//! - [`egress`], [`secrets`]: outbound HTTP and secrets, behind the operator's grants.
//! - [`api`], [`cli`], [`clients`], [`dashboard`]: the ways in: HTTP, the binary, the clients, the
//!   browser.

mod common;

mod api;
mod broker;
mod cli;
mod clients;
mod cluster;
mod dashboard;
mod differential;
mod egress;
mod faults;
mod futures;
mod guest_sdk;
mod guests;
mod modules;
mod sandbox;
mod secrets;
mod worker;
