//! Scraping a daemon's `/metrics` over real HTTP and reading it with the reference
//! Prometheus parser (Python `prometheus_client`, tests/python/parse_metrics.py), so an
//! exposition only passes if a real Prometheus client library reads it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{COMMAND_TIMEOUT, Daemon, isolated_command};

const PIP_HINT: &str = "pip install prometheus-client";

/// What the daemon logs once its metrics listener is bound.
const SERVING_MARK: &str = "serving Prometheus metrics on http://";

/// The address of `daemon`'s metrics listener, read from its log (it may have been
/// given port 0).
pub fn metrics_addr(daemon: &mut Daemon, timeout: Duration) -> SocketAddr {
    let deadline = Instant::now() + timeout;
    loop {
        let log = daemon.stderr();
        if let Some(addr) = log
            .split(SERVING_MARK)
            .nth(1)
            .and_then(|rest| rest.split("/metrics").next())
            .and_then(|addr| addr.parse().ok())
        {
            return addr;
        }
        if let Some(status) = daemon.try_exit_status() {
            panic!(
                "{} exited with {status} before serving metrics\n{log}",
                daemon.name
            );
        }
        assert!(
            Instant::now() < deadline,
            "{} did not log {SERVING_MARK:?} within {timeout:?}\n{log}",
            daemon.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET http://addr/metrics`: must answer 200 in the text format; returns the body.
pub fn scrape(addr: SocketAddr) -> String {
    let url = format!("http://{addr}/metrics");
    let response = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
        .get(&url)
        .send()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status(), 200, "GET {url}");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "GET {url}: Content-Type {content_type:?}"
    );
    response.text().expect("metrics body")
}

/// One sample as the parser read it.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug)]
pub struct Exposition {
    /// Family name (as the parser names it: counters without `_total`) -> type.
    pub families: HashMap<String, String>,
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Exposition {
    /// Parses `text` with tests/python/parse_metrics.py; panics if the parser refuses it.
    pub fn parse(text: &str) -> Self {
        let env: Vec<(&str, String)> = ["PYTHONPATH", "VIRTUAL_ENV"]
            .into_iter()
            .filter_map(|key| std::env::var(key).ok().map(|value| (key, value)))
            .collect();
        let mut command = isolated_command("python3", &env);
        command
            .arg("tests/python/parse_metrics.py")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}); install Python 3, then `{PIP_HINT}`")
        });
        let mut stdin = child.stdin.take().expect("stdin");
        let input = text.to_owned();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let output = rx
            .recv_timeout(COMMAND_TIMEOUT)
            .expect("parse_metrics.py finished in time")
            .expect("parse_metrics.py output");
        let _ = writer.join();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "parse_metrics.py failed ({}): {stderr}\n(`{PIP_HINT}` if the package is missing)\n--- exposition ---\n{text}",
            output.status
        );
        let json: Value = serde_json::from_slice(&output.stdout).expect("parse_metrics.py JSON");
        let families = json["families"]
            .as_object()
            .expect("families")
            .iter()
            .map(|(name, kind)| (name.clone(), kind.as_str().unwrap_or_default().to_owned()))
            .collect();
        let samples = json["samples"]
            .as_array()
            .expect("samples")
            .iter()
            .map(|sample| Sample {
                name: sample["name"].as_str().expect("name").to_owned(),
                labels: sample["labels"]
                    .as_object()
                    .expect("labels")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect(),
                value: match &sample["value"] {
                    Value::Number(n) => n.as_f64().expect("number"),
                    Value::String(s) if s == "+Inf" => f64::INFINITY,
                    other => panic!("sample value {other}"),
                },
            })
            .collect();
        Self {
            families,
            samples,
            text: text.to_owned(),
        }
    }

    /// Samples named `name` whose labels include every pair of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The sum of the samples [`matching`](Self::matching); 0 when there is none (a
    /// labelled counter that never moved has no sample).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// The one sample named `name` with exactly `labels`; panics if absent.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self
            .matching(name, labels)
            .filter(|s| s.labels.len() == labels.len())
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected one sample {name}{labels:?}, found {found:?}\n{}",
            self.text
        );
        found[0].value
    }

    /// The type the exposition declares for family `name`.
    pub fn kind(&self, family: &str) -> &str {
        self.families
            .get(family)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no family {family}\n{}", self.text))
    }
}

/// Scrapes and parses `addr`.
pub fn scrape_parsed(addr: SocketAddr) -> Exposition {
    Exposition::parse(&scrape(addr))
}

/// Scrapes `addr` until `done` holds for the parsed exposition (counters are updated
/// right after the work they count, e.g. after the ack that follows a published
/// result), then returns that exposition. `timeout` is a hang guard.
pub fn scrape_until(
    addr: SocketAddr,
    timeout: Duration,
    what: &str,
    done: impl Fn(&Exposition) -> bool,
) -> Exposition {
    let deadline = Instant::now() + timeout;
    loop {
        let exposition = scrape_parsed(addr);
        if done(&exposition) {
            return exposition;
        }
        assert!(
            Instant::now() < deadline,
            "metrics at {addr} never showed {what} within {timeout:?}\n{}",
            exposition.text
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
