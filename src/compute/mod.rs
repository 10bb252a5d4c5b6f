//! Pure computations behind the gRPC methods: no I/O, no async, each with its own limits
//! and error type so the RPC layer can map them to `INVALID_ARGUMENT`.

pub mod ab;
pub mod factorial;
pub mod letters;
pub mod upper;

pub use ab::{AbError, AbSplitter, Group};
pub use factorial::{FactorialError, factorial_decimal};
pub use letters::{LetterCount, LettersError, most_frequent_letter};
pub use upper::processed_text;
