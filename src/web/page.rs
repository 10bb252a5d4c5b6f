//! The HTML page, rendered with maud: every interpolated value is escaped by the template
//! engine, so a task like `<script>alert(1)</script>` is shown as text. The script that
//! submits without a reload and adds new results builds rows with `textContent` only.

use maud::{DOCTYPE, Markup, html};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use super::store::StoredResult;
use super::submit::{Outcome, SubmitReport};
use crate::task::TaskKind;

pub const APP_JS: &str = include_str!("assets/app.js");
pub const STYLE_CSS: &str = include_str!("assets/style.css");

const KINDS: [TaskKind; 4] = [
    TaskKind::Ab,
    TaskKind::Factorial,
    TaskKind::FrequentLetter,
    TaskKind::Upper,
];

/// The table's filters and cursor.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub kind: Option<TaskKind>,
    pub ok: Option<bool>,
    pub before: Option<i64>,
}

impl Filters {
    /// `kind=…&ok=…` for links, URL-encoded.
    fn query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(kind) = self.kind {
            parts.push(format!("kind={}", kind.as_str()));
        }
        if let Some(ok) = self.ok {
            parts.push(format!("ok={ok}"));
        }
        parts.join("&")
    }
}

/// What a form submit produced.
pub struct Submitted {
    pub input: String,
    pub outcome: Result<SubmitReport, String>,
}

pub struct PageView {
    pub filters: Filters,
    pub results: Vec<StoredResult>,
    pub page_size: usize,
    pub submitted: Option<Submitted>,
    /// A problem to show above the table (bad filter, database error).
    pub notice: Option<String>,
    pub broker: (bool, String),
}

fn encode(id: &str) -> String {
    utf8_percent_encode(id, NON_ALPHANUMERIC).to_string()
}

pub fn render(view: &PageView) -> Markup {
    let filters = &view.filters;
    // The table updates itself only on its first page; older pages stay put.
    let live = filters.before.is_none();
    let latest = view.results.iter().map(|r| r.seq).max().unwrap_or(0);
    let oldest = view.results.iter().map(|r| r.seq).min();
    let base = filters.query();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "labmq" }
                link rel="stylesheet" href="/static/style.css";
                script src="/static/app.js" defer {}
            }
            body {
                header {
                    h1 { "labmq" }
                    p.broker.(if view.broker.0 { "up" } else { "down" }) { (view.broker.1) }
                }
                section #submit {
                    h2 { "Submit tasks" }
                    form #submit-form method="post" action="/submit" {
                        label for="tasks" { "Tasks, comma-separated: " code { "fact:N" } ", " code { "freq:TEXT" } ", " code { "upper:TEXT" } " or a user id" }
                        div.row {
                            input #tasks type="text" name="tasks" autocomplete="off"
                                placeholder="user42, fact:6, freq:abracadabra"
                                value=(view.submitted.as_ref().map_or("", |s| s.input.as_str()));
                            button type="submit" { "Submit" }
                        }
                    }
                    div #report aria-live="polite" {
                        @if let Some(submitted) = &view.submitted {
                            (report(&submitted.outcome))
                        }
                    }
                }
                section #results {
                    h2 { "Results" }
                    form #filters method="get" action="/" {
                        label { "Kind "
                            select name="kind" {
                                option value="" selected[filters.kind.is_none()] { "all" }
                                @for kind in KINDS {
                                    option value=(kind.as_str()) selected[filters.kind == Some(kind)] { (kind.as_str()) }
                                }
                            }
                        }
                        " "
                        label { "Outcome "
                            select name="ok" {
                                option value="" selected[filters.ok.is_none()] { "all" }
                                option value="true" selected[filters.ok == Some(true)] { "ok" }
                                option value="false" selected[filters.ok == Some(false)] { "error" }
                            }
                        }
                        " "
                        button type="submit" { "Filter" }
                    }
                    @if let Some(notice) = &view.notice {
                        p.notice { (notice) }
                    }
                    table #results-table
                        data-live=(live) data-latest=(latest) data-page-size=(view.page_size)
                        data-kind=(filters.kind.map_or("", TaskKind::as_str))
                        data-ok=(filters.ok.map_or(String::new(), |ok| ok.to_string())) {
                        thead {
                            tr { th { "#" } th { "Task" } th { "Kind" } th { "Result" } th { "Processed (UTC)" } }
                        }
                        tbody {
                            @for result in &view.results {
                                (row(result))
                            }
                        }
                    }
                    @if view.results.is_empty() {
                        p #empty { "No results yet." }
                    }
                    nav.paging {
                        @if filters.before.is_some() {
                            a href={ "/?" (base) } { "← newest" }
                            " "
                        }
                        @if let Some(oldest) = oldest.filter(|_| view.results.len() >= view.page_size) {
                            a href={ "/?" (base) @if !base.is_empty() { "&" } "before=" (oldest) } { "older →" }
                        }
                    }
                }
                footer {
                    "JSON: " a href="/api/results" { "/api/results" } " · " a href="/healthz" { "/healthz" }
                }
            }
        }
    }
}

fn row(result: &StoredResult) -> Markup {
    let id = encode(&result.id);
    html! {
        tr data-id=(result.id) data-seq=(result.seq) class=(if result.ok { "ok" } else { "error" }) {
            td { (result.seq) }
            td.task { (result.task) }
            td { (result.kind.as_deref().unwrap_or("-")) }
            td.value {
                span.short { (result.short) }
                @if result.truncated {
                    " "
                    a.whole href={ "/results/" (id) "/value" } download { "whole value" }
                    " "
                    a.json href={ "/api/results/" (id) } { "JSON" }
                }
            }
            td.when { (result.processed_at) }
        }
    }
}

fn report(outcome: &Result<SubmitReport, String>) -> Markup {
    html! {
        @match outcome {
            Err(message) => p.error { (message) },
            Ok(report) => {
                p { (report.accepted) " accepted, " (report.rejected) " rejected" }
                table.report {
                    thead { tr { th { "Task" } th { "Status" } th { "Id or reason" } } }
                    tbody {
                        @for task in &report.tasks {
                            @match &task.outcome {
                                Outcome::Accepted { id } => tr.accepted { td { (task.task) } td { "accepted" } td { code { (id) } } },
                                Outcome::Rejected { reason } => tr.rejected { td { (task.task) } td { "rejected" } td { (reason) } },
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_shown_is_escaped() {
        let result = StoredResult {
            seq: 1,
            id: "x\"><script>alert(2)</script>".into(),
            task: "<script>alert(1)</script>".into(),
            kind: Some("ab".into()),
            ok: true,
            short: "group <b>A</b>".into(),
            truncated: true,
            result: None,
            error: None,
            attempts: 1,
            processed_at: "2025-01-01T00:00:00Z".into(),
            duration_ms: 1.0,
            deliveries: 1,
        };
        let html = render(&PageView {
            filters: Filters::default(),
            results: vec![result],
            page_size: 50,
            submitted: Some(Submitted {
                input: "<img src=x onerror=alert(3)>".into(),
                outcome: Err("<i>bad</i>".into()),
            }),
            notice: None,
            broker: (true, "broker <ok>".into()),
        })
        .into_string();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(!html.contains("<img src=x"), "{html}");
        assert!(!html.contains("<b>A</b>"), "{html}");
        assert!(!html.contains("<i>bad"), "{html}");
        assert!(html.contains("/results/x%22%3E%3Cscript%3Ealert%282%29%3C%2Fscript%3E/value"));
    }
}
