//! The task grammar: parsing one task or a comma-separated list, and the canonical text
//! form of a task.

use std::fmt;

/// One unit of work, as it travels on every path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Task {
    Factorial(i64),
    FrequentLetter(String),
    Upper(String),
    Ab(String),
}

/// The result document's `kind` field; stable, part of the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    Ab,
    Factorial,
    FrequentLetter,
    Upper,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Ab => "ab",
            TaskKind::Factorial => "factorial",
            TaskKind::FrequentLetter => "frequent_letter",
            TaskKind::Upper => "upper",
        }
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskParseError {
    #[error("empty task")]
    Empty,
    #[error("fact: needs an integer, got {0:?}")]
    NotAnInteger(String),
    #[error("{prefix} needs a text after the colon")]
    MissingText { prefix: &'static str },
}

const FACT: &str = "fact:";
const FREQ: &str = "freq:";
const UPPER: &str = "upper:";

impl Task {
    /// Parses one task; surrounding whitespace is ignored.
    pub fn parse(input: &str) -> Result<Task, TaskParseError> {
        let input = input.trim();
        if input.is_empty() {
            return Err(TaskParseError::Empty);
        }
        if let Some(number) = input.strip_prefix(FACT) {
            let number = number.trim();
            return number
                .parse::<i64>()
                .map(Task::Factorial)
                .map_err(|_| TaskParseError::NotAnInteger(truncate(number, 40)));
        }
        if let Some(text) = input.strip_prefix(FREQ) {
            return non_empty(text, FREQ).map(Task::FrequentLetter);
        }
        if let Some(text) = input.strip_prefix(UPPER) {
            return non_empty(text, UPPER).map(Task::Upper);
        }
        Ok(Task::Ab(input.to_owned()))
    }

    pub fn kind(&self) -> TaskKind {
        match self {
            Task::Factorial(_) => TaskKind::Factorial,
            Task::FrequentLetter(_) => TaskKind::FrequentLetter,
            Task::Upper(_) => TaskKind::Upper,
            Task::Ab(_) => TaskKind::Ab,
        }
    }
}

impl fmt::Display for Task {
    /// The canonical text form, which parses back to the same task.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Task::Factorial(n) => write!(f, "{FACT}{n}"),
            Task::FrequentLetter(text) => write!(f, "{FREQ}{text}"),
            Task::Upper(text) => write!(f, "{UPPER}{text}"),
            Task::Ab(user_id) => f.write_str(user_id),
        }
    }
}

fn non_empty(text: &str, prefix: &'static str) -> Result<String, TaskParseError> {
    if text.trim().is_empty() {
        Err(TaskParseError::MissingText { prefix })
    } else {
        Ok(text.to_owned())
    }
}

/// Splits a comma-separated list into its items, trimmed, skipping empty ones, and parses
/// each. Every item gets its own result so one bad item never hides the good ones.
pub fn parse_list(input: &str) -> Vec<(String, Result<Task, TaskParseError>)> {
    split_list(input)
        .map(|item| (item.to_owned(), Task::parse(item)))
        .collect()
}

/// The trimmed, non-empty items of a comma-separated list.
pub fn split_list(input: &str) -> impl Iterator<Item = &str> {
    input
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

/// Shortens `text` to at most `max_chars` characters for logs and error messages.
pub fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind() {
        assert_eq!(Task::parse("fact:6"), Ok(Task::Factorial(6)));
        assert_eq!(Task::parse("fact:-5"), Ok(Task::Factorial(-5)));
        assert_eq!(
            Task::parse("freq:abracadabra"),
            Ok(Task::FrequentLetter("abracadabra".into()))
        );
        assert_eq!(Task::parse("upper:hello"), Ok(Task::Upper("hello".into())));
        assert_eq!(Task::parse("user42"), Ok(Task::Ab("user42".into())));
    }

    #[test]
    fn whitespace_around_task_is_ignored_but_inner_text_kept() {
        assert_eq!(Task::parse("  fact: 7 "), Ok(Task::Factorial(7)));
        assert_eq!(Task::parse("upper:a b"), Ok(Task::Upper("a b".into())));
        assert_eq!(Task::parse(" user 1 "), Ok(Task::Ab("user 1".into())));
    }

    #[test]
    fn bad_tasks_name_the_problem() {
        assert_eq!(Task::parse(""), Err(TaskParseError::Empty));
        assert_eq!(Task::parse("   "), Err(TaskParseError::Empty));
        let err = Task::parse("fact:abc").unwrap_err();
        assert_eq!(err, TaskParseError::NotAnInteger("abc".into()));
        assert_eq!(err.to_string(), "fact: needs an integer, got \"abc\"");
        assert_eq!(
            Task::parse("fact:99999999999999999999"),
            Err(TaskParseError::NotAnInteger("99999999999999999999".into()))
        );
        assert_eq!(
            Task::parse("freq:"),
            Err(TaskParseError::MissingText { prefix: "freq:" })
        );
        assert_eq!(
            Task::parse("upper:  "),
            Err(TaskParseError::MissingText { prefix: "upper:" })
        );
    }

    #[test]
    fn prefixes_are_case_sensitive() {
        // "FACT:6" is not the factorial prefix, so it is a user id, as the grammar says.
        assert_eq!(Task::parse("FACT:6"), Ok(Task::Ab("FACT:6".into())));
    }

    #[test]
    fn lists_split_on_commas_and_skip_empty_items() {
        let parsed = parse_list("user42, fact:6,,freq:abracadabra ,");
        let tasks: Vec<_> = parsed
            .iter()
            .map(|(item, t)| (item.as_str(), t.clone()))
            .collect();
        assert_eq!(
            tasks,
            vec![
                ("user42", Ok(Task::Ab("user42".into()))),
                ("fact:6", Ok(Task::Factorial(6))),
                (
                    "freq:abracadabra",
                    Ok(Task::FrequentLetter("abracadabra".into()))
                ),
            ]
        );
        assert!(parse_list(" , ,").is_empty());
    }

    #[test]
    fn one_bad_item_does_not_hide_others() {
        let parsed = parse_list("fact:x,fact:3");
        assert!(parsed[0].1.is_err());
        assert_eq!(parsed[1].1, Ok(Task::Factorial(3)));
    }

    #[test]
    fn display_round_trips() {
        for input in ["fact:6", "freq:abc", "upper:Hi there", "user42"] {
            assert_eq!(Task::parse(input).unwrap().to_string(), input);
        }
    }

    #[test]
    fn kinds_have_stable_names() {
        assert_eq!(Task::Factorial(1).kind().as_str(), "factorial");
        assert_eq!(Task::Ab("u".into()).kind().as_str(), "ab");
        assert_eq!(Task::Upper("u".into()).kind().as_str(), "upper");
        assert_eq!(
            Task::FrequentLetter("u".into()).kind().as_str(),
            "frequent_letter"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 1024, ..Default::default() })]

        /// Any text parses to a task or an error, never a panic, and what parses prints
        /// back to a text that parses to the same task.
        #[test]
        fn any_text_parses_or_errs_and_round_trips(
            chars in proptest::collection::vec(proptest::prelude::any::<char>(), 0..200),
            prefix in proptest::sample::select(vec!["", "fact:", "freq:", "upper:", " fact: ", ","]),
        ) {
            let input = format!("{prefix}{}", String::from_iter(chars));
            if let Ok(task) = Task::parse(&input) {
                proptest::prop_assert_eq!(Task::parse(&task.to_string()), Ok(task));
            }
            for (item, parsed) in parse_list(&input) {
                proptest::prop_assert!(!item.is_empty() && !item.contains(','));
                let _ = parsed;
            }
            let cut = truncate(&input, 10);
            proptest::prop_assert!(cut.chars().count() <= 10 + 32);
        }
    }

    #[test]
    fn truncate_keeps_short_text_and_marks_cut() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("абвгд", 2), "аб… (10 bytes)");
    }
}
