//! The results database: one SQLite row per result id. A result stored again (a
//! redelivery, or a task run twice) updates its row and moves it to the top; it never adds
//! a second one. `seq` orders rows by their last store and is the paging cursor.
//!
//! SQLite calls block, so every method runs on tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::task::{ErrorInfo, ResultDocument, TaskKind, TaskOutput, truncate};

/// Characters of a result shown in lists; the whole value is one request away.
pub const SHORT_CHARS: usize = 200;
/// Result values up to this many bytes of JSON are included in list answers.
pub const INLINE_RESULT_BYTES: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: cannot create its directory")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database: a blocking task failed")]
    Join(#[from] tokio::task::JoinError),
    #[error("database: the connection lock was poisoned")]
    Poisoned,
}

/// One stored result as lists and the API show it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoredResult {
    /// Position in store order; larger is newer. The `after`/`before` cursor.
    pub seq: i64,
    pub id: String,
    pub task: String,
    pub kind: Option<String>,
    pub ok: bool,
    /// The value or `error CODE: message`, cut to [`SHORT_CHARS`] characters.
    pub short: String,
    /// True when `short` is cut (the whole value: `/api/results/{id}`).
    pub truncated: bool,
    /// The result value; in lists only when it is small ([`INLINE_RESULT_BYTES`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    pub attempts: u32,
    pub processed_at: String,
    pub duration_ms: f64,
    /// How many times this result was stored (1 unless redelivered or re-run).
    pub deliveries: u32,
}

/// Filters and cursor of a list.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub kind: Option<TaskKind>,
    pub ok: Option<bool>,
    /// Rows stored after this `seq`, oldest first (for tailing).
    pub after: Option<i64>,
    /// Rows stored before this `seq`, newest first (for paging back).
    pub before: Option<i64>,
    pub limit: usize,
}

#[derive(Clone)]
pub struct Store {
    connection: Arc<Mutex<Connection>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS results (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    task TEXT NOT NULL,
    kind TEXT,
    ok INTEGER NOT NULL,
    short TEXT NOT NULL,
    truncated INTEGER NOT NULL,
    result_json TEXT,
    error_code TEXT,
    error_message TEXT,
    attempts INTEGER NOT NULL,
    processed_at TEXT NOT NULL,
    duration_ms REAL NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 1,
    stored_at INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS results_kind ON results (kind, seq);
CREATE INDEX IF NOT EXISTS results_ok ON results (ok, seq);
";

/// Databases created before retention have no `stored_at`; their rows count as stored
/// when the column is added (0 would make the first age pass delete them all).
const ADD_STORED_AT: &str = "ALTER TABLE results ADD COLUMN stored_at INTEGER NOT NULL DEFAULT 0;
UPDATE results SET stored_at = CAST(strftime('%s', 'now') AS INTEGER);";

/// What one retention pass may delete.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Rows kept, newest by `seq` (0: no limit).
    pub max_rows: u64,
    /// Rows stored longer ago than this are deleted, in seconds (0: no limit).
    pub max_age_secs: u64,
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let fail = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                path: path.to_owned(),
                source,
            })?;
        }
        let connection = Connection::open(path).map_err(fail)?;
        connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(fail)?;
        // WAL lets readers run beside the writer; FULL makes a commit durable before
        // the result is acked to the broker.
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(fail)?;
        connection
            .pragma_update(None, "synchronous", "FULL")
            .map_err(fail)?;
        connection.execute_batch(SCHEMA).map_err(fail)?;
        let has_stored_at: bool = connection
            .query_row(
                "SELECT count(*) > 0 FROM pragma_table_info('results') WHERE name = 'stored_at'",
                [],
                |row| row.get(0),
            )
            .map_err(fail)?;
        if !has_stored_at {
            connection.execute_batch(ADD_STORED_AT).map_err(fail)?;
        }
        connection
            .execute_batch("CREATE INDEX IF NOT EXISTS results_stored_at ON results (stored_at);")
            .map_err(fail)?;
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    async fn with<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let connection = self.connection.clone();
        tokio::task::spawn_blocking(move || {
            let mut connection = connection.lock().map_err(|_| StoreError::Poisoned)?;
            work(&mut connection)
        })
        .await?
    }

    /// Stores every document in one transaction; returns once it is committed.
    pub async fn upsert(&self, documents: Vec<ResultDocument>) -> Result<(), StoreError> {
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            {
                let mut statement = transaction.prepare_cached(
                    "INSERT INTO results (seq, id, task, kind, ok, short, truncated, result_json,
                         error_code, error_message, attempts, processed_at, duration_ms,
                         stored_at)
                     VALUES ((SELECT coalesce(max(seq), 0) + 1 FROM results),
                         ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12,
                         CAST(strftime('%s', 'now') AS INTEGER))
                     ON CONFLICT (id) DO UPDATE SET
                         seq = excluded.seq, task = excluded.task, kind = excluded.kind,
                         ok = excluded.ok, short = excluded.short,
                         truncated = excluded.truncated, result_json = excluded.result_json,
                         error_code = excluded.error_code,
                         error_message = excluded.error_message,
                         attempts = excluded.attempts, processed_at = excluded.processed_at,
                         duration_ms = excluded.duration_ms, stored_at = excluded.stored_at,
                         deliveries = results.deliveries + 1",
                )?;
                for document in &documents {
                    let outcome = document.outcome();
                    let short = truncate(&outcome, SHORT_CHARS);
                    let truncated = short != outcome;
                    let result_json = document.result.as_ref().map(|v| v.to_string());
                    statement.execute(params![
                        document.id,
                        document.task,
                        document.kind.map(TaskKind::as_str),
                        document.ok,
                        short,
                        truncated,
                        result_json,
                        document.error.as_ref().map(|e| e.code.as_str()),
                        document.error.as_ref().map(|e| e.message.as_str()),
                        document.attempts,
                        document.processed_at,
                        document.duration_ms,
                    ])?;
                }
            }
            transaction.commit()?;
            Ok(())
        })
        .await
    }

    /// A page of results: newest first, or with `after` the next ones oldest first.
    pub async fn list(&self, query: Query) -> Result<Vec<StoredResult>, StoreError> {
        self.with(move |connection| {
            let order = if query.after.is_some() { "ASC" } else { "DESC" };
            let sql = format!(
                "SELECT {COLUMNS_SHORT_HEAD},
                     CASE WHEN length(result_json) <= {INLINE_RESULT_BYTES} THEN result_json END,
                     {COLUMNS_TAIL} FROM results
                 WHERE (?1 IS NULL OR kind = ?1) AND (?2 IS NULL OR ok = ?2)
                   AND (?3 IS NULL OR seq > ?3) AND (?4 IS NULL OR seq < ?4)
                 ORDER BY seq {order} LIMIT ?5"
            );
            let mut statement = connection.prepare_cached(&sql)?;
            let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
            let rows = statement.query_map(
                params![
                    query.kind.map(TaskKind::as_str),
                    query.ok,
                    query.after,
                    query.before,
                    limit
                ],
                row_to_result,
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// One result with its whole value.
    pub async fn get(&self, id: String) -> Result<Option<StoredResult>, StoreError> {
        self.with(move |connection| {
            let sql = format!(
                "SELECT {COLUMNS_SHORT_HEAD}, result_json, {COLUMNS_TAIL} FROM results WHERE id = ?1"
            );
            Ok(connection
                .prepare_cached(&sql)?
                .query_row(params![id], row_to_result)
                .optional()?)
        })
        .await
    }

    /// The whole value of one result as text (`720`, `group A`, `error: CODE: message`).
    pub async fn value_text(&self, id: String) -> Result<Option<String>, StoreError> {
        Ok(self
            .get(id)
            .await?
            .map(|row| match (&row.result, &row.error) {
                (Some(result), _) => serde_json::from_value::<TaskOutput>(result.clone())
                    .map_or_else(|_| result.to_string(), |output| output.to_string()),
                (None, Some(error)) => format!("error: {}: {}", error.code, error.message),
                (None, None) => row.short,
            }))
    }

    /// Deletes what `retention` no longer keeps; returns how many rows went.
    pub async fn enforce(&self, retention: Retention) -> Result<u64, StoreError> {
        self.with(move |connection| {
            let mut deleted = 0;
            if retention.max_age_secs > 0 {
                let max_age = i64::try_from(retention.max_age_secs).unwrap_or(i64::MAX);
                deleted += connection.execute(
                    "DELETE FROM results
                     WHERE stored_at < CAST(strftime('%s', 'now') AS INTEGER) - ?1",
                    params![max_age],
                )?;
            }
            if retention.max_rows > 0 {
                let keep = i64::try_from(retention.max_rows).unwrap_or(i64::MAX);
                deleted += connection.execute(
                    "DELETE FROM results WHERE seq <=
                         (SELECT seq FROM results ORDER BY seq DESC LIMIT 1 OFFSET ?1)",
                    params![keep],
                )?;
            }
            Ok(u64::try_from(deleted).unwrap_or(u64::MAX))
        })
        .await
    }

    /// Number of rows: for health and tests.
    pub async fn count(&self) -> Result<u64, StoreError> {
        self.with(|connection| {
            let n: i64 = connection.query_row("SELECT count(*) FROM results", [], |r| r.get(0))?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }
}

/// The columns of [`StoredResult`] around `result_json`, in [`row_to_result`]'s order.
const COLUMNS_SHORT_HEAD: &str = "seq, id, task, kind, ok, short, truncated";
const COLUMNS_TAIL: &str =
    "error_code, error_message, attempts, processed_at, duration_ms, deliveries";

fn row_to_result(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredResult> {
    let result_json: Option<String> = row.get(7)?;
    let error_code: Option<String> = row.get(8)?;
    let error_message: Option<String> = row.get(9)?;
    Ok(StoredResult {
        seq: row.get(0)?,
        id: row.get(1)?,
        task: row.get(2)?,
        kind: row.get(3)?,
        ok: row.get(4)?,
        short: row.get(5)?,
        truncated: row.get(6)?,
        result: result_json.and_then(|json| serde_json::from_str(&json).ok()),
        error: error_code.map(|code| ErrorInfo {
            code,
            message: error_message.unwrap_or_default(),
        }),
        attempts: row.get(10)?,
        processed_at: row.get(11)?,
        duration_ms: row.get(12)?,
        deliveries: row.get(13)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::Task;

    fn factorial(id: &str, digits: &str) -> ResultDocument {
        ResultDocument::success(
            id.into(),
            &Task::Factorial(6),
            &TaskOutput::Factorial {
                result: digits.into(),
            },
            1,
            1.0,
        )
    }

    #[tokio::test]
    async fn upsert_is_idempotent_by_id_and_moves_the_row_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("sub/results.sqlite3")).unwrap();
        store.upsert(vec![factorial("a", "720")]).await.unwrap();
        store.upsert(vec![factorial("b", "720")]).await.unwrap();
        store.upsert(vec![factorial("a", "721")]).await.unwrap();
        assert_eq!(store.count().await.unwrap(), 2);
        let rows = store
            .list(Query {
                limit: 10,
                ..Query::default()
            })
            .await
            .unwrap();
        assert_eq!(rows[0].id, "a", "the updated row is the newest");
        assert_eq!(rows[0].short, "721");
        assert_eq!(rows[0].deliveries, 2);
        assert_eq!(rows[1].deliveries, 1);
        let after = store
            .list(Query {
                after: Some(rows[1].seq),
                limit: 10,
                ..Query::default()
            })
            .await
            .unwrap();
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].id, "a");
    }

    #[tokio::test]
    async fn retention_keeps_the_newest_rows_and_upgrades_old_databases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sqlite3");
        {
            // A database from before retention: no stored_at column.
            let old = Connection::open(&path).unwrap();
            old.execute_batch(&SCHEMA.replace(",\n    stored_at INTEGER NOT NULL DEFAULT 0", ""))
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        for i in 0..10 {
            store
                .upsert(vec![factorial(&format!("r{i}"), "720")])
                .await
                .unwrap();
        }
        let keep_all = Retention {
            max_rows: 0,
            max_age_secs: 3600,
        };
        assert_eq!(store.enforce(keep_all).await.unwrap(), 0);
        let newest_four = Retention {
            max_rows: 4,
            max_age_secs: 0,
        };
        assert_eq!(store.enforce(newest_four).await.unwrap(), 6);
        let rows = store
            .list(Query {
                limit: 10,
                ..Query::default()
            })
            .await
            .unwrap();
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["r9", "r8", "r7", "r6"]);
    }

    #[tokio::test]
    async fn long_values_are_short_in_lists_and_whole_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("r.sqlite3")).unwrap();
        let digits = "7".repeat(10_000);
        store.upsert(vec![factorial("big", &digits)]).await.unwrap();
        let rows = store
            .list(Query {
                kind: Some(TaskKind::Factorial),
                ok: Some(true),
                limit: 5,
                ..Query::default()
            })
            .await
            .unwrap();
        assert!(rows[0].truncated);
        assert!(rows[0].short.chars().count() < 300);
        assert!(rows[0].result.is_none(), "large values stay out of lists");
        let whole = store.get("big".into()).await.unwrap().unwrap();
        assert_eq!(whole.result.unwrap()["result"].as_str().unwrap(), digits);
        assert_eq!(
            store.value_text("big".into()).await.unwrap().unwrap(),
            digits
        );
        let none = store
            .list(Query {
                ok: Some(false),
                limit: 5,
                ..Query::default()
            })
            .await
            .unwrap();
        assert!(none.is_empty());
    }
}
