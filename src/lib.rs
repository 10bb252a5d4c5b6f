//! labmq: one compute service (A/B assignment, exact factorials, most frequent letter,
//! upper-case echo) reached two ways: synchronously over gRPC (`labmq-server`,
//! `labmq-call`) and asynchronously through RabbitMQ (`labmq-produce` publishes to
//! `task_queue`, `labmq-consumer` calls the server and publishes result documents).
//! `labmq-web` submits tasks from a web page or JSON API and stores every result in SQLite.
//! The library holds every concern once; the binaries in `src/bin` only wire them up.

pub mod broker;
pub mod cli;
pub mod compute;
pub mod daemon;
pub mod rpc;
pub mod task;
pub mod web;
