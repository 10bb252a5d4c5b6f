//! HTTP endpoints. JSON errors are `{"error": {"code": "...", "message": "..."}}` with a
//! 4xx/5xx status; the page's form gets the same errors as HTML.
//!
//! | method and path          | what                                                   |
//! |--------------------------|--------------------------------------------------------|
//! | `GET /`                  | the page: submit form and results table                |
//! | `POST /submit`           | the form without JavaScript: the page with a report    |
//! | `POST /api/tasks`        | JSON array of task strings → per-task report           |
//! | `GET /api/results`       | `kind`, `ok`, `after`, `before`, `limit` → results     |
//! | `GET /api/results/{id}`  | one result with its whole value                        |
//! | `GET /results/{id}/value`| the whole value as a text download                     |
//! | `GET /healthz`           | database and broker status, 200 or 503                 |

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::{FormRejection, JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Extension, Form, Json, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::http::{self, BODY_TIMEOUT_MARK, Guard, Peer};
use super::page::{self, Filters, PageView};
use super::status::Status;
use super::store::{self, Store, StoredResult};
use super::submit::{Inputs, SubmitError, Submitter};
use crate::daemon::logging::error_chain;
use crate::task::TaskKind;

/// Most results one `/api/results` answer may hold.
pub const MAX_LIMIT: usize = 1000;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub submitter: Arc<Submitter>,
    pub status: Arc<Status>,
    pub page_size: usize,
    pub max_body_bytes: usize,
}

/// The routes of labmq-web; `metrics`, when given, adds `GET /metrics`.
pub fn router(state: AppState, guard: Guard, metrics: Option<Router<AppState>>) -> Router {
    let limit = state.max_body_bytes;
    let routes = match metrics {
        Some(metrics) => Router::new().merge(metrics),
        None => Router::new(),
    };
    routes
        .route("/", get(index))
        .route("/submit", post(submit_form))
        .route("/static/app.js", get(app_js))
        .route("/static/style.css", get(style_css))
        .route("/api/tasks", post(submit_api))
        .route("/api/results", get(list_results))
        .route("/api/results/{id}", get(one_result))
        .route("/results/{id}/value", get(result_value))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            guard.clone(),
            http::timed_body,
        ))
        .layer(axum::middleware::from_fn_with_state(guard, http::guard))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// The page loads only its own script and style; nothing it shows can run as code even
/// if escaping were ever missed.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// A JSON error.
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn internal(error: &store::StoreError) -> Self {
        let message = error_chain(error);
        tracing::error!(error = %message, "database error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "database_error", message)
    }
}

impl From<SubmitError> for ApiError {
    fn from(error: SubmitError) -> Self {
        Self {
            status: error.status(),
            code: error.code(),
            message: error_chain(&error),
            retry_after: error.retry_after_secs(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": {"code": self.code, "message": self.message}}));
        let mut response = (self.status, body).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// A request body the extractor refused: too large (413), too slow (408), not JSON
/// (400/415/422).
fn body_error(status: StatusCode, text: String, max_body_bytes: usize) -> ApiError {
    if text.contains(BODY_TIMEOUT_MARK) {
        ApiError::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", text)
    } else if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            status,
            "body_too_large",
            format!("request body is over {max_body_bytes} bytes (max_body_bytes)"),
        )
    } else {
        ApiError::new(status, "bad_request", text)
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such page")
}

async fn app_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        page::APP_JS,
    )
}

async fn style_css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        page::STYLE_CSS,
    )
}

/// Query parameters of the page and `/api/results`, as text so bad values get a clear
/// message instead of a generic rejection.
#[derive(Debug, Default, Deserialize)]
pub struct ListParams {
    kind: Option<String>,
    ok: Option<String>,
    after: Option<String>,
    before: Option<String>,
    limit: Option<String>,
}

fn bad(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_parameter", message)
}

/// A parameter's value, trimmed; empty counts as absent (an "all" choice of a form).
fn some(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

impl ListParams {
    fn to_query(&self, page_size: usize) -> Result<store::Query, ApiError> {
        let kind = match some(&self.kind) {
            None => None,
            Some(kind) => Some(
                serde_json::from_value::<TaskKind>(serde_json::Value::String(kind.into()))
                    .map_err(|_| {
                        bad(format!(
                            "kind={kind:?}: expected ab, factorial, frequent_letter or upper"
                        ))
                    })?,
            ),
        };
        let ok = match some(&self.ok) {
            None => None,
            Some("true" | "ok" | "1") => Some(true),
            Some("false" | "error" | "0") => Some(false),
            Some(other) => return Err(bad(format!("ok={other:?}: expected true or false"))),
        };
        let seq = |name: &str, value: &Option<String>| -> Result<Option<i64>, ApiError> {
            some(value)
                .map(|v| {
                    v.parse::<i64>()
                        .map_err(|_| bad(format!("{name}={v:?}: expected an integer (a seq)")))
                })
                .transpose()
        };
        let limit = match some(&self.limit) {
            None => page_size,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(bad(format!(
                        "limit={v:?}: expected an integer from 1 to {MAX_LIMIT}"
                    )));
                }
            },
        };
        Ok(store::Query {
            kind,
            ok,
            after: seq("after", &self.after)?,
            before: seq("before", &self.before)?,
            limit,
        })
    }
}

#[derive(Serialize)]
struct ResultList {
    results: Vec<StoredResult>,
}

async fn list_results(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<ResultList>, ApiError> {
    let Query(params) = params.map_err(|e| bad(e.body_text()))?;
    let query = params.to_query(state.page_size)?;
    let results = state
        .store
        .list(query)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(ResultList { results }))
}

async fn one_result(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<StoredResult>, ApiError> {
    match state.store.get(id.clone()).await {
        Ok(Some(result)) => Ok(Json(result)),
        Ok(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no result with id {id:?}"),
        )),
        Err(e) => Err(ApiError::internal(&e)),
    }
}

async fn result_value(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match state.store.value_text(id.clone()).await {
        Ok(Some(text)) => {
            // The id is only ever a filename suggestion; keep it to safe characters.
            let name: String = id
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .take(80)
                .collect();
            let disposition =
                HeaderValue::from_str(&format!("attachment; filename=\"{name}.txt\""))
                    .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
            Ok((
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; charset=utf-8"),
                    ),
                    (header::CONTENT_DISPOSITION, disposition),
                ],
                text,
            )
                .into_response())
        }
        Ok(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no result with id {id:?}"),
        )),
        Err(e) => Err(ApiError::internal(&e)),
    }
}

async fn submit_api(
    State(state): State<AppState>,
    peer: Option<Extension<Peer>>,
    body: Result<Json<Vec<String>>, JsonRejection>,
) -> Response {
    let Json(tasks) = match body {
        Ok(body) => body,
        Err(e) => {
            return body_error(e.status(), e.body_text(), state.max_body_bytes).into_response();
        }
    };
    let client = peer.map(|Extension(Peer(addr))| addr.ip());
    match state.submitter.submit(Inputs::Api(&tasks), client).await {
        Ok(report) => Json(report).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Health for anyone who can reach the port: states and counts, never the broker's
/// user or URL credentials (the status text names the broker by host and port only).
async fn healthz(State(state): State<AppState>) -> Response {
    let database = state.store.count().await;
    let write_failure = state.status.database_failure();
    let (broker_ok, broker) = state.status.broker_state();
    let database_ok = database.is_ok() && write_failure.is_none();
    let healthy = database_ok && broker_ok;
    let body = json!({
        "status": if healthy { "ok" } else { "unavailable" },
        "database": match (&database, &write_failure) {
            (Ok(results), None) => json!({"ok": true, "results": results}),
            (Ok(results), Some(error)) => json!({
                "ok": false,
                "results": results,
                "error": format!("storing results fails: {error}"),
            }),
            (Err(e), _) => json!({"ok": false, "error": error_chain(e)}),
        },
        "broker": {"ok": broker_ok, "status": broker},
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn render_page(
    state: &AppState,
    params: &ListParams,
    status: StatusCode,
    submitted: Option<page::Submitted>,
) -> Response {
    let (query, filter_error) = match params.to_query(state.page_size) {
        Ok(query) => (query, None),
        Err(e) => (
            store::Query {
                limit: state.page_size,
                ..store::Query::default()
            },
            Some(e.message),
        ),
    };
    // The page pages backwards only; `after` is for API tailing.
    let query = store::Query {
        after: None,
        ..query
    };
    let filters = Filters {
        kind: query.kind,
        ok: query.ok,
        before: query.before,
    };
    let (results, store_error) = match state.store.list(query).await {
        Ok(results) => (results, None),
        Err(e) => {
            let message = error_chain(&e);
            tracing::error!(error = %message, "database error");
            (Vec::new(), Some(message))
        }
    };
    let view = PageView {
        filters,
        results,
        page_size: state.page_size,
        submitted,
        notice: filter_error.or(store_error),
        broker: state.status.broker_state(),
    };
    (status, Html(page::render(&view).into_string())).into_response()
}

async fn index(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Response {
    let params = params.map(|Query(p)| p).unwrap_or_default();
    render_page(&state, &params, StatusCode::OK, None).await
}

#[derive(Debug, Deserialize)]
struct SubmitFormData {
    #[serde(default)]
    tasks: String,
}

/// The form's POST, for browsers without JavaScript: the page again, with the report.
async fn submit_form(
    State(state): State<AppState>,
    peer: Option<Extension<Peer>>,
    form: Result<Form<SubmitFormData>, FormRejection>,
) -> Response {
    let params = ListParams::default();
    let form = match form {
        Ok(Form(form)) => form,
        Err(e) => {
            let error = body_error(e.status(), e.body_text(), state.max_body_bytes);
            let submitted = page::Submitted {
                input: String::new(),
                outcome: Err(error.message),
            };
            return render_page(&state, &params, error.status, Some(submitted)).await;
        }
    };
    let client = peer.map(|Extension(Peer(addr))| addr.ip());
    let outcome = state
        .submitter
        .submit(Inputs::Form(&form.tasks), client)
        .await;
    let (status, retry_after, outcome) = match outcome {
        Ok(report) => (StatusCode::OK, None, Ok(report)),
        Err(e) => (e.status(), e.retry_after_secs(), Err(error_chain(&e))),
    };
    let submitted = page::Submitted {
        input: form.tasks,
        outcome,
    };
    let mut response = render_page(&state, &params, status, Some(submitted)).await;
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}
