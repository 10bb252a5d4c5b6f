//! The two command-line tools, each with its arguments (kept in the library so man pages
//! and completions are generated from the same definitions) and its logic:
//!
//! - [`produce`]: `labmq-produce`, the asynchronous path (publish to RabbitMQ, optionally
//!   wait for results);
//! - [`call`]: `labmq-call`, the synchronous path (call labmq-server directly).
//!
//! Named `cli` rather than `produce`: labmq-call produces nothing; what both share is that
//! they are one-shot tools, not daemons.

pub mod call;
pub mod produce;
