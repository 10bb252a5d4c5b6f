//! The result document: one JSON object per task, published to `labmq.results` and to
//! the task's `reply_to`. Its fields are a stable format; add fields, never rename them.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::grammar::{Task, TaskKind, truncate};
use super::output::TaskOutput;

/// Task texts in result documents are cut to this many characters (a 10 MB body must not
/// become a 10 MB result).
pub const MAX_TASK_CHARS: usize = 1000;

/// Error codes of failures that never reached the server, beside gRPC's own codes.
pub mod codes {
    pub const INVALID_TASK: &str = "INVALID_TASK";
    pub const INVALID_UTF8: &str = "INVALID_UTF8";
    pub const BODY_TOO_LARGE: &str = "BODY_TOO_LARGE";
    pub const EMPTY_BODY: &str = "EMPTY_BODY";
    /// More tasks in one body than `max_tasks_per_message`.
    pub const TOO_MANY_TASKS: &str = "TOO_MANY_TASKS";
    /// The results of one body over `max_result_bytes_per_message`.
    pub const RESULT_TOO_LARGE: &str = "RESULT_TOO_LARGE";
    /// Handling the message panicked; the panic message is the reason.
    pub const PANIC: &str = "PANIC";
    /// The broker's `x-delivery-count` shows the message was delivered `delivery_limit`
    /// times without being settled (consumers killed or stopped while holding it): it is
    /// dead-lettered before any work, so that a quorum queue's own delivery limit cannot
    /// drop it.
    pub const DELIVERY_LIMIT: &str = "DELIVERY_LIMIT";
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultDocument {
    /// The message's `message_id` (suffixed `#N` for the N-th task of a list body), or
    /// an id derived from the body when the message has none.
    pub id: String,
    pub task: String,
    /// `ab | factorial | frequent_letter | upper`; null when the body is not a task at all.
    pub kind: Option<TaskKind>,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// Calls made to the gRPC server for this task (0 when it was rejected before).
    pub attempts: u32,
    /// RFC 3339, UTC.
    pub processed_at: String,
    pub duration_ms: f64,
}

pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

impl ResultDocument {
    pub fn success(id: String, task: &Task, output: &TaskOutput, attempts: u32, ms: f64) -> Self {
        Self {
            id,
            task: truncate(&task.to_string(), MAX_TASK_CHARS),
            kind: Some(task.kind()),
            ok: true,
            result: Some(output.to_json()),
            error: None,
            attempts,
            processed_at: now_rfc3339(),
            duration_ms: round_ms(ms),
        }
    }

    pub fn failure(
        id: String,
        task_text: &str,
        kind: Option<TaskKind>,
        error: ErrorInfo,
        attempts: u32,
        ms: f64,
    ) -> Self {
        Self {
            id,
            task: truncate(task_text, MAX_TASK_CHARS),
            kind,
            ok: false,
            result: None,
            error: Some(error),
            attempts,
            processed_at: now_rfc3339(),
            duration_ms: round_ms(ms),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings, numbers and JSON values cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// One human line: `fact:6 => 720` or `fact:-1 => error: INVALID_ARGUMENT: …`.
    pub fn summary(&self) -> String {
        format!("{} => {}", self.task, self.outcome())
    }

    /// The part of [`summary`](Self::summary) after `=>`: the value (`720`, `group A`)
    /// or `error: CODE: message`, as labmq-call prints it.
    pub fn outcome(&self) -> String {
        match (&self.result, &self.error) {
            (Some(result), _) => render_result(result),
            (None, Some(error)) => format!("error: {}: {}", error.code, error.message),
            (None, None) => "(empty result)".to_owned(),
        }
    }
}

fn render_result(result: &serde_json::Value) -> String {
    serde_json::from_value::<TaskOutput>(result.clone())
        .map_or_else(|_| result.to_string(), |output| output.to_string())
}

fn round_ms(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_document_has_stable_fields() {
        let doc = ResultDocument::success(
            "m1".into(),
            &Task::Factorial(6),
            &TaskOutput::Factorial {
                result: "720".into(),
            },
            1,
            1.23456,
        );
        let json: serde_json::Value = serde_json::from_slice(&doc.to_json()).unwrap();
        assert_eq!(json["id"], "m1");
        assert_eq!(json["task"], "fact:6");
        assert_eq!(json["kind"], "factorial");
        assert_eq!(json["ok"], true);
        assert_eq!(json["result"]["result"], "720");
        assert_eq!(json["attempts"], 1);
        assert_eq!(json["duration_ms"], 1.235);
        assert!(json.get("error").is_none());
        assert!(json["processed_at"].as_str().unwrap().ends_with('Z'));
        assert_eq!(doc.summary(), "fact:6 => 720");
    }

    #[test]
    fn failure_document_round_trips() {
        let doc = ResultDocument::failure(
            "m2".into(),
            "fact:x",
            Some(TaskKind::Factorial),
            ErrorInfo {
                code: codes::INVALID_TASK.into(),
                message: "fact: needs an integer".into(),
            },
            0,
            0.0,
        );
        let back: ResultDocument = serde_json::from_slice(&doc.to_json()).unwrap();
        assert_eq!(back, doc);
        assert_eq!(
            doc.summary(),
            "fact:x => error: INVALID_TASK: fact: needs an integer"
        );
    }

    #[test]
    fn summaries_of_each_kind() {
        let letter = ResultDocument::success(
            "i".into(),
            &Task::FrequentLetter("abracadabra".into()),
            &TaskOutput::FrequentLetter {
                letter: "a".into(),
                count: 5,
            },
            1,
            0.0,
        );
        assert_eq!(letter.summary(), "freq:abracadabra => a (5 times)");
        let group = ResultDocument::success(
            "i".into(),
            &Task::Ab("user42".into()),
            &TaskOutput::Ab { group: "A".into() },
            1,
            0.0,
        );
        assert_eq!(group.summary(), "user42 => group A");
    }
}
