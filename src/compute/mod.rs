//! Pure computations behind the gRPC methods: no I/O, no async, each with its own limits
//! and error type so the gRPC layer can map them to `INVALID_ARGUMENT`. One module per
//! task kind, named as in [`crate::task`].

pub mod ab;
pub(crate) mod factorial;
pub(crate) mod frequent_letter;
pub(crate) mod upper;

pub(crate) use ab::AbSplitter;
pub use factorial::{FactorialError, factorial_decimal};
pub(crate) use frequent_letter::{FrequentLetterError, most_frequent_letter};
pub(crate) use upper::processed_text;
