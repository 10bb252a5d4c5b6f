//! Shared gRPC pieces: the code generated from `proto/message_service.proto` and the
//! balancing client that `labmq-consumer` and `labmq-call` use. The server is
//! [`crate::server`].

mod batch;
pub(crate) mod client;

/// Code generated from `proto/message_service.proto` by build.rs.
pub mod proto {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("message");

    /// The encoded descriptor set, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/message_descriptor.bin"));
}

/// Largest `n` a `Factorial` inside a `ComputeBatch` takes: 2000! has 5,736 digits, so with
/// the server's `max_batch_tasks` it bounds a batch's answer. Larger ones are unary calls.
pub const BATCH_FACTORIAL_MAX_N: i64 = 2_000;

/// Responses carry a 456,574-digit factorial at the default limit and may carry more when
/// `max_factorial_n` is raised, so clients accept far more than tonic's 4 MiB default.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
