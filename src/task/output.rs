//! What a task computes: one variant per task kind. Serialised (untagged) it is the
//! `result` object of the result document, i.e. the gRPC method's response fields.

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum TaskOutput {
    Ab { group: String },
    Factorial { result: String },
    FrequentLetter { letter: String, count: u64 },
    Upper { processed_text: String },
}

impl TaskOutput {
    pub fn to_json(&self) -> serde_json::Value {
        // Plain strings and numbers always serialise.
        serde_json::to_value(self).unwrap_or_default()
    }
}

impl std::fmt::Display for TaskOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskOutput::Ab { group } => write!(f, "group {group}"),
            TaskOutput::Factorial { result } => f.write_str(result),
            TaskOutput::FrequentLetter { letter, count } => write!(f, "{letter} ({count} times)"),
            TaskOutput::Upper { processed_text } => f.write_str(processed_text),
        }
    }
}
