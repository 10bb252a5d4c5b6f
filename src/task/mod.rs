//! The domain every program shares: the task grammar (this file), what a task computes
//! ([`TaskOutput`], in `output`) and the result document published for it
//! ([`ResultDocument`], in `result`). One name per concept, from the grammar to the wire:
//!
//! | task text    | [`Task`] / [`TaskKind`] / [`TaskOutput`] | gRPC method          | `kind`            |
//! |--------------|------------------------------------------|----------------------|-------------------|
//! | `fact:N`     | `Factorial`                              | `Factorial`          | `factorial`       |
//! | `freq:TEXT`  | `FrequentLetter`                         | `MostFrequentLetter` | `frequent_letter` |
//! | `upper:TEXT` | `Upper`                                  | `ProcessMessage`     | `upper`           |
//! | anything else| `Ab`                                     | `AssignAB`           | `ab`              |
//!
//! ```text
//! list := task ("," task)*
//! task := "fact:" INTEGER | "freq:" TEXT | "upper:" TEXT | USER_ID
//! ```
//! Items of a list are trimmed; empty items between commas are skipped. Range checks
//! (negative or too large `n`, texts without letters) belong to the server, whose limits are
//! configurable, so a task that parses here can still be refused there.

mod grammar;
mod output;
mod result;

pub use grammar::{Task, TaskKind, TaskParseError};
pub(crate) use grammar::{parse_list, truncate};
pub use output::TaskOutput;
pub use result::{ErrorInfo, ResultDocument};
pub(crate) use result::{MAX_TASK_CHARS, codes, now_rfc3339};
