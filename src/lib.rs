//! labmq: one compute service (A/B assignment, exact factorials, most frequent letter,
//! upper-case echo) reached two ways: synchronously over gRPC (`labmq-server`,
//! `labmq-call`) and asynchronously through RabbitMQ (`labmq-produce` publishes to
//! `task_queue`, `labmq-consumer` calls the server and publishes result documents).
//! `labmq-web` submits tasks from a web page or JSON API and stores every result in SQLite.
//!
//! Modules by program, then what they share; dependencies point down this list only:
//!
//! | module       | what                                                                 |
//! |--------------|----------------------------------------------------------------------|
//! | [`server`]   | labmq-server: config, the tonic service, its metrics, `run`           |
//! | [`consumer`] | labmq-consumer: config, delivery handling, session, status, metrics,  |
//! |              | task log, `run`                                                       |
//! | [`web`]      | labmq-web: config, routes, page, SQLite store, ingest, submit,        |
//! |              | metrics, `run`                                                        |
//! | [`cli`]      | labmq-produce and labmq-call: arguments, config, logic                |
//! | [`amqp`]     | shared RabbitMQ code: settings, topology, confirmed publishing, the   |
//! |              | producer and the one reconnecting session driver                      |
//! | [`grpc`]     | the generated `message` package and the balancing client              |
//! | [`tls`]      | PEM certificates and keys: loading, config checks, rustls configs     |
//! | [`task`]     | the domain: task grammar, outputs, result documents                   |
//! | [`compute`]  | pure computations, no I/O                                            |
//! | [`daemon`]   | generic plumbing: Service trait, config loader, runner, logging,      |
//! |              | signals, systemd notify, the bounded HTTP listener, the Prometheus    |
//! |              | registry and `/metrics` exporter; imports none of the above           |
//!
//! The binaries in `src/bin` hand their program to [`daemon::run::run`] (daemons) or to
//! the tool's `run` (tools) and nothing more.

pub mod amqp;
pub mod cli;
pub mod compute;
pub mod consumer;
pub mod daemon;
pub mod grpc;
pub mod server;
pub mod task;
pub mod tls;
pub mod web;
