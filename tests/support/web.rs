//! Test-side labmq-web: a setup (config, database directory kept across restarts) and a
//! blocking HTTP client for its API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use serde_json::Value;
use tempfile::TempDir;

use super::amqp::unique;
use super::{Daemon, DaemonSpec, READY_TIMEOUT};

pub const WEB_BIN: &str = env!("CARGO_BIN_EXE_labmq-web");

/// Everything a test labmq-web needs; `extra` is appended to its TOML config. The
/// database lives in `data`, which outlives each spawned daemon, so a restarted one finds
/// what the previous one stored.
pub struct WebSetup {
    pub amqp_url: String,
    pub queue: String,
    pub results_exchange: String,
    pub results_queue: String,
    pub extra: String,
    pub data: TempDir,
    /// The task queue and results exchange are this setup's own (not a test consumer's).
    owns_task_queue: bool,
}

impl WebSetup {
    /// A labmq-web with its own task queue, results exchange and results queue.
    pub fn new(amqp_url: &str) -> Self {
        super::rabbit::say_broker(amqp_url);
        Self {
            amqp_url: amqp_url.to_owned(),
            queue: unique("web-tasks"),
            results_exchange: unique("web-results"),
            results_queue: unique("web-results-q"),
            extra: String::new(),
            data: tempfile::tempdir().expect("temp dir for the web database"),
            owns_task_queue: true,
        }
    }

    /// A labmq-web on the task queue and results exchange of a test consumer.
    pub fn for_consumer(consumer: &super::amqp::ConsumerSetup) -> Self {
        Self {
            amqp_url: consumer.amqp_url.clone(),
            queue: consumer.queue.clone(),
            results_exchange: consumer.results_exchange.clone(),
            results_queue: unique("web-results-q"),
            extra: String::new(),
            data: tempfile::tempdir().expect("temp dir for the web database"),
            owns_task_queue: false,
        }
    }

    pub fn database(&self) -> std::path::PathBuf {
        self.data.path().join("results.sqlite3")
    }

    pub fn toml(&self) -> String {
        format!(
            "listen = \"127.0.0.1:0\"\namqp_url = {:?}\nqueue = {:?}\nresults_exchange = {:?}\nresults_queue = {:?}\ndatabase = {:?}\nreconnect_max_secs = 1\n{}\n",
            self.amqp_url,
            self.queue,
            self.results_exchange,
            self.results_queue,
            self.database().display().to_string(),
            self.extra
        )
    }

    pub fn spawn(&self) -> Daemon {
        let dir = tempfile::tempdir().expect("web temp dir");
        let path = dir.path().join("web.toml");
        std::fs::write(&path, self.toml()).expect("write web.toml");
        DaemonSpec::new(WEB_BIN)
            .arg("--config")
            .arg(path.as_os_str())
            .spawn_in(dir)
    }

    /// Spawns labmq-web and waits until it serves HTTP (READY=1; the broker may still be
    /// connecting: see [`Web::wait_healthy`]).
    pub fn start(&self) -> Web {
        let mut daemon = self.spawn();
        let status = daemon.wait_ready(READY_TIMEOUT);
        let addr = status
            .strip_prefix("serving on ")
            .and_then(|rest| rest.split(';').next())
            .and_then(|addr| addr.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| {
                panic!(
                    "READY=1 came with STATUS={status:?}, not \"serving on ADDR; …\"\n{}",
                    daemon.stderr()
                )
            });
        Web::new(daemon, addr)
    }

    /// Starts labmq-web and waits until its results consumer is connected.
    pub fn start_healthy(&self) -> Web {
        let web = self.start();
        web.wait_healthy(Duration::from_secs(30));
        web
    }
}

/// Deletes the results queue labmq-web declared (durable, so it would outlive the test),
/// and the task queue and results exchange when they were its own, not a consumer's.
impl Drop for WebSetup {
    fn drop(&mut self) {
        let mut queues = vec![self.results_queue.clone()];
        let mut exchanges = Vec::new();
        if self.owns_task_queue {
            queues.push(self.queue.clone());
            queues.push(format!(
                "{}{}",
                self.queue,
                labmq::amqp::topology::DEAD_LETTER_SUFFIX
            ));
            exchanges.push(self.results_exchange.clone());
        }
        super::amqp::delete_best_effort(&self.amqp_url, queues, exchanges);
    }
}

/// A running labmq-web and an HTTP client for it.
pub struct Web {
    pub daemon: Daemon,
    pub addr: SocketAddr,
    pub client: Client,
}

impl Web {
    pub fn new(daemon: Daemon, addr: SocketAddr) -> Self {
        let client = Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client");
        Self {
            daemon,
            addr,
            client,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn get(&self, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .send()
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.daemon.stderr()))
    }

    /// GET returning (status, JSON body).
    pub fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let response = self.get(path);
        let status = response.status();
        let text = response.text().expect("response body");
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("GET {path}: {status} body is not JSON ({e}): {text}"));
        (status, value)
    }

    /// POST of a JSON body returning (status, JSON body).
    pub fn post_json(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .unwrap_or_else(|e| panic!("POST {path}: {e}\n{}", self.daemon.stderr()));
        let status = response.status();
        let text = response.text().expect("response body");
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("POST {path}: {status} body is not JSON ({e}): {text}"));
        (status, value)
    }

    /// `POST /api/tasks`; returns (status, body).
    pub fn submit(&self, tasks: &[&str]) -> (StatusCode, Value) {
        self.post_json("/api/tasks", &serde_json::json!(tasks))
    }

    /// Submits and asserts success; returns the accepted ids in order.
    pub fn submit_ok(&self, tasks: &[&str]) -> Vec<String> {
        let (status, body) = self.submit(tasks);
        assert_eq!(status, StatusCode::OK, "{body}\n{}", self.daemon.stderr());
        body["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .filter(|t| t["status"] == "accepted")
            .map(|t| t["id"].as_str().expect("id").to_owned())
            .collect()
    }

    /// Waits until `/healthz` says 200.
    pub fn wait_healthy(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, body) = self.get_json("/healthz");
            if status == StatusCode::OK {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "labmq-web not healthy after {timeout:?}: {body}\n{}",
                self.daemon.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every id has a stored result (`/api/results/{id}`); returns them.
    pub fn wait_results(&self, ids: &[String], timeout: Duration) -> HashMap<String, Value> {
        let deadline = Instant::now() + timeout;
        let mut found = HashMap::new();
        loop {
            for id in ids {
                if found.contains_key(id) {
                    continue;
                }
                let (status, body) = self.get_json(&format!("/api/results/{id}"));
                if status == StatusCode::OK {
                    found.insert(id.clone(), body);
                }
            }
            if found.len() == ids.len() {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {} results not stored after {timeout:?}: {:?}\n{}",
                ids.len() - found.len(),
                ids.len(),
                ids.iter()
                    .filter(|id| !found.contains_key(*id))
                    .collect::<Vec<_>>(),
                self.daemon.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
