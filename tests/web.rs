//! labmq-web over real HTTP against the real broker: submits through the API reach
//! labmq-consumer and labmq-server and their results come back through labmq-web's own
//! results queue into its database; idempotent storage, catch-up after downtime, limits,
//! rejected tasks, escaping, health and configuration checks. Each test has its own queues,
//! exchange and database.

mod support;

use std::time::Duration;

use lapin::BasicProperties;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::amqp::{Amqp, ConsumerSetup, produce_tasks};
use support::rabbit::SHARED_AMQP_URL;
use support::web::{WEB_BIN, WebSetup};
use support::{EXIT_TIMEOUT, free_port, run, spawn_server};

const RESULTS_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn api_submit_results_appear_with_filters_and_whole_values() {
    let server = spawn_server("");
    let consumer_setup = ConsumerSetup::new(SHARED_AMQP_URL, &[server.url()]);
    let _consumer = consumer_setup.start();
    let web_setup = WebSetup::for_consumer(&consumer_setup);
    let web = web_setup.start_healthy();

    let (status, body) = web.submit(&["user42, fact:6, freq:abracadabra", "fact:x", "fact:3000"]);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["accepted"], 4, "{body}");
    assert_eq!(body["rejected"], 1, "{body}");
    let tasks = body["tasks"].as_array().unwrap();
    let texts: Vec<&str> = tasks.iter().map(|t| t["task"].as_str().unwrap()).collect();
    assert_eq!(
        texts,
        [
            "user42",
            "fact:6",
            "freq:abracadabra",
            "fact:x",
            "fact:3000"
        ]
    );
    assert_eq!(tasks[3]["status"], "rejected");
    assert!(
        tasks[3]["reason"].as_str().unwrap().contains("integer"),
        "{body}"
    );
    let ids: Vec<String> = tasks
        .iter()
        .filter(|t| t["status"] == "accepted")
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    let results = web.wait_results(&ids, RESULTS_TIMEOUT);
    let user = &results[&ids[0]];
    assert_eq!(user["kind"], "ab");
    assert!(
        user["short"].as_str().unwrap().starts_with("group "),
        "{user}"
    );
    assert_eq!(results[&ids[1]]["short"], "720");
    assert_eq!(results[&ids[1]]["result"]["result"], "720");
    assert_eq!(results[&ids[2]]["short"], "a (5 times)");

    // 3000! has 9131 digits: shortened in lists, whole by id and as a download.
    let (_, list) = web.get_json("/api/results?kind=factorial&ok=true");
    let rows = list["results"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{list}");
    let big = rows.iter().find(|r| r["id"] == ids[3].as_str()).unwrap();
    assert_eq!(big["truncated"], true);
    assert!(big.get("result").is_none(), "{big}");
    assert!(big["short"].as_str().unwrap().len() < 400);
    let whole = &results[&ids[3]]["result"]["result"];
    assert_eq!(whole.as_str().unwrap().len(), 9131);
    let download = web.get(&format!("/results/{}/value", ids[3]));
    assert_eq!(download.status(), StatusCode::OK);
    assert_eq!(download.text().unwrap(), whole.as_str().unwrap());

    // Newest first, filters and paging.
    let (_, all) = web.get_json("/api/results");
    let seqs: Vec<i64> = all["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 4);
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "{seqs:?}");
    let (_, page) = web.get_json(&format!("/api/results?limit=2&before={}", seqs[1]));
    assert_eq!(page["results"].as_array().unwrap().len(), 2);
    assert_eq!(page["results"][0]["seq"], seqs[2]);
    let (_, tail) = web.get_json(&format!("/api/results?after={}", seqs[2]));
    assert_eq!(tail["results"][0]["seq"], seqs[1], "after: oldest first");
    let (_, errors) = web.get_json("/api/results?ok=false");
    assert_eq!(errors["results"].as_array().unwrap().len(), 0);
    let (status, bad) = web.get_json("/api/results?limit=0");
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    let (status, missing) = web.get_json("/api/results/no-such-id");
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");

    let (status, health) = web.get_json("/healthz");
    assert_eq!(status, StatusCode::OK, "{health}");
    assert_eq!(health["database"]["results"], 4);
    assert_eq!(health["broker"]["ok"], true);
}

fn result_document(id: &str, value: &str, attempts: u32) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id, "task": "fact:6", "kind": "factorial", "ok": true,
        "result": {"result": value}, "attempts": attempts,
        "processed_at": "2025-01-01T00:00:00Z", "duration_ms": 1.5,
    }))
    .unwrap()
}

#[test]
fn a_redelivered_result_updates_its_row_and_never_duplicates() {
    let setup = WebSetup::new(SHARED_AMQP_URL);
    let web = setup.start_healthy();
    let amqp = Amqp::connect(SHARED_AMQP_URL);
    let id = format!("dup-{}", uuid::Uuid::new_v4());
    amqp.publish_to_exchange(
        &setup.results_exchange,
        &result_document(&id, "720", 1),
        BasicProperties::default(),
    );
    let first = web.wait_results(std::slice::from_ref(&id), RESULTS_TIMEOUT);
    assert_eq!(first[&id]["deliveries"], 1);
    amqp.publish_to_exchange(
        &setup.results_exchange,
        &result_document(&id, "720", 2),
        BasicProperties::default(),
    );
    // Not JSON at all: dropped with a warning, never blocks the queue.
    amqp.publish_to_exchange(
        &setup.results_exchange,
        b"garbage",
        BasicProperties::default(),
    );
    let deadline = std::time::Instant::now() + RESULTS_TIMEOUT;
    loop {
        let (_, row) = web.get_json(&format!("/api/results/{id}"));
        if row["deliveries"] == 2 {
            assert_eq!(row["attempts"], 2, "the second copy wins: {row}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not updated: {row}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, list) = web.get_json("/api/results");
    let rows = list["results"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "one row per id: {list}");
    // Everything was acked: the queue is empty once stored.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while amqp.ready_count(&setup.results_queue) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "results queue not drained"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    amqp.delete_queue(&setup.results_queue);
}

#[test]
fn a_web_server_that_was_down_catches_up_from_its_queue() {
    let server = spawn_server("");
    let consumer_setup = ConsumerSetup::new(SHARED_AMQP_URL, &[server.url()]);
    let _consumer = consumer_setup.start();
    let setup = WebSetup::for_consumer(&consumer_setup);
    let mut web = setup.start_healthy();
    let before = web.submit_ok(&["fact:5"]);
    web.wait_results(&before, RESULTS_TIMEOUT);
    let status = web.daemon.stop(EXIT_TIMEOUT);
    assert!(status.success(), "{status}\n{}", web.daemon.stderr());

    // Computed and published while labmq-web is down: they wait in its queue.
    let tasks: Vec<String> = ["fact:7", "user1", "upper:later"]
        .map(String::from)
        .to_vec();
    let ids = produce_tasks(SHARED_AMQP_URL, &consumer_setup.queue, &tasks);
    let amqp = Amqp::connect(SHARED_AMQP_URL);
    let deadline = std::time::Instant::now() + RESULTS_TIMEOUT;
    while amqp.ready_count(&setup.results_queue) < 3 {
        assert!(std::time::Instant::now() < deadline, "results never queued");
        std::thread::sleep(Duration::from_millis(100));
    }

    let web = setup.start();
    let results = web.wait_results(&ids, RESULTS_TIMEOUT);
    assert_eq!(results[&ids[0]]["short"], "5040");
    assert_eq!(results[&ids[2]]["short"], "Processed by server: LATER");
    let (_, list) = web.get_json("/api/results");
    assert_eq!(
        list["results"].as_array().unwrap().len(),
        4,
        "the result stored before the restart is kept: {list}"
    );
    amqp.delete_queue(&setup.results_queue);
}

#[test]
fn over_limit_requests_get_clear_4xx_and_the_daemon_lives_on() {
    let mut setup = WebSetup::new(SHARED_AMQP_URL);
    setup.extra =
        "max_body_bytes = 1024\nmax_tasks_per_submit = 3\nsubmits_per_minute = 4\n".into();
    let web = setup.start();

    // Body too big: refused before it is read (no submit token spent).
    let big = json!(["x".repeat(5000)]);
    let (status, body) = web.post_json("/api/tasks", &big);
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "body_too_large");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_body_bytes")
    );
    let response = web
        .client
        .post(web.url("/submit"))
        .form(&[("tasks", "y".repeat(5000))])
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(response.text().unwrap().contains("max_body_bytes"));

    // Not a JSON list of strings.
    let response = web
        .client
        .post(web.url("/api/tasks"))
        .header("content-type", "application/json")
        .body("{\"tasks\": 1}")
        .send()
        .unwrap();
    assert!(response.status().is_client_error());
    let body: Value = response.json().unwrap();
    assert_eq!(body["error"]["code"], "bad_request", "{body}");

    // Too many tasks (comma lists count item by item): token 1 of 4.
    let (status, body) = web.submit(&["a,b", "c,d"]);
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "too_many_tasks");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tasks_per_submit")
    );

    // Tokens 2 to 4: tasks that do not parse are reported, nothing is published.
    for _ in 0..3 {
        let (status, body) = web.submit(&["fact:x"]);
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["rejected"], 1);
    }
    let response = web
        .client
        .post(web.url("/api/tasks"))
        .json(&json!(["fact:x"]))
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    let response = web
        .client
        .post(web.url("/submit"))
        .form(&[("tasks", "fact:x")])
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.text().unwrap().contains("submits_per_minute"));

    let (status, _) = web.get_json("/api/results");
    assert_eq!(status, StatusCode::OK, "still serving");
}

#[test]
fn bad_task_strings_are_rejected_with_reasons() {
    let setup = WebSetup::new(SHARED_AMQP_URL);
    let web = setup.start();
    let (status, body) = web.submit(&["fact:x", "freq:", "upper:   ", "fact:1.5"]);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["accepted"], 0);
    let reasons: Vec<&str> = body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t["status"], "rejected", "{t}");
            t["reason"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        reasons,
        [
            "fact: needs an integer, got \"x\"",
            "freq: needs a text after the colon",
            "upper: needs a text after the colon",
            "fact: needs an integer, got \"1.5\"",
        ]
    );
    let (status, body) = web.submit(&[" , ,"]);
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "no_tasks");
    // The form reports the same, as HTML.
    let response = web
        .client
        .post(web.url("/submit"))
        .form(&[("tasks", "fact:x, freq:")])
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let html = response.text().unwrap();
    assert!(html.contains("0 accepted, 2 rejected"), "{html}");
    assert!(html.contains("fact: needs an integer"), "{html}");
}

#[test]
fn a_script_task_is_shown_as_text() {
    let server = spawn_server("");
    let consumer_setup = ConsumerSetup::new(SHARED_AMQP_URL, &[server.url()]);
    let _consumer = consumer_setup.start();
    let web_setup = WebSetup::for_consumer(&consumer_setup);
    let web = web_setup.start_healthy();
    let script = "<script>alert(1)</script>";
    let ids = web.submit_ok(&[script]);
    let results = web.wait_results(&ids, RESULTS_TIMEOUT);
    assert_eq!(results[&ids[0]]["task"], script, "stored as given");

    let page = web.get("/");
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = page.text().unwrap();
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{html}"
    );
    assert!(!html.contains(script), "{html}");

    // The no-JavaScript form path echoes the input and the report escaped too.
    let response = web
        .client
        .post(web.url("/submit"))
        .form(&[("tasks", script)])
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let html = response.text().unwrap();
    assert!(html.contains("1 accepted, 0 rejected"), "{html}");
    assert!(!html.contains(script), "{html}");
}

#[test]
fn without_a_broker_it_serves_stored_results_and_healthz_says_503() {
    let mut setup = WebSetup::new(&format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port()));
    setup.extra = "confirm_timeout_secs = 2\n".into();
    let mut web = setup.start();
    let (status, health) = web.get_json("/healthz");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{health}");
    assert_eq!(health["database"]["ok"], true, "{health}");
    assert_eq!(health["broker"]["ok"], false, "{health}");
    assert_eq!(health["status"], "unavailable");
    let page = web.get("/");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().unwrap().contains("No results yet."));
    let (status, body) = web.submit(&["fact:6"]);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "broker_unavailable");
    let status = web.daemon.stop(EXIT_TIMEOUT);
    assert!(status.success(), "{status}\n{}", web.daemon.stderr());
}

#[test]
fn check_config_validates_and_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "page_size = 20\n").unwrap();
    let output = run(
        WEB_BIN,
        &["--check-config", "--config", good.to_str().unwrap()],
        &[] as &[(&str, &str)],
    );
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("configuration OK"));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "submits_per_minute = 0\n").unwrap();
    let output = run(
        WEB_BIN,
        &["--check-config", "--config", bad.to_str().unwrap()],
        &[] as &[(&str, &str)],
    );
    assert_eq!(output.status.code(), Some(78), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("submits_per_minute"));
}
