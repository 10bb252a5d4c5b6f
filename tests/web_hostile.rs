//! labmq-web against hostile or unlucky clients and brokers, over real HTTP and a real
//! broker: silent and slow clients, connection floods, cross-site POSTs and foreign Host
//! headers, one client spending the submit budget, unbounded storage, a failing database,
//! what /healthz shows, text tasks with commas, and SIGTERM while the broker says nothing.
//! Each test has its own queues, exchange and database.

mod support;

#[path = "support/rawhttp.rs"]
mod rawhttp;

use std::io::Write;
use std::net::{IpAddr, TcpListener};
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::amqp::{Amqp, ConsumerSetup, produce};
use support::rabbit::{RABBITMQ4, SHARED_AMQP_URL};
use support::web::WebSetup;
use support::{EXIT_TIMEOUT, READY_TIMEOUT, spawn_server};

const RESULTS_TIMEOUT: Duration = Duration::from_secs(60);

fn result_document(id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id, "task": "fact:6", "kind": "factorial", "ok": true,
        "result": {"result": "720"}, "attempts": 1,
        "processed_at": "2025-01-01T00:00:00Z", "duration_ms": 1.5,
    }))
    .unwrap()
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn silent_and_slow_clients_are_cut_off_and_connections_are_capped() {
    let mut setup = WebSetup::new(SHARED_AMQP_URL);
    setup.extra = "header_timeout_secs = 2\nbody_timeout_secs = 2\nmax_connections = 2\n".into();
    let web = setup.start();

    // Connects and says nothing: closed after header_timeout_secs.
    let mut silent = rawhttp::connect_from(web.addr, None);
    let closed = rawhttp::wait_closed(&mut silent, Duration::from_secs(15));
    let closed = closed.unwrap_or_else(|| {
        panic!(
            "a silent connection was still open after 15 s\n{}",
            web.daemon.stderr()
        )
    });
    assert!(
        closed >= Duration::from_secs(1),
        "closed too early: {closed:?}"
    );

    // Half the headers, then nothing: closed too.
    let mut slow = rawhttp::connect_from(web.addr, None);
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    assert!(
        rawhttp::wait_closed(&mut slow, Duration::from_secs(15)).is_some(),
        "a connection stuck in its headers was still open after 15 s"
    );

    // Headers, then part of the promised body: 408 after body_timeout_secs.
    let mut stalled = rawhttp::connect_from(web.addr, None);
    stalled
        .write_all(b"POST /api/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n[\"fact:")
        .unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stalled, &mut answer);
    let (status, body) = rawhttp::parse(&answer)
        .unwrap_or_else(|| panic!("no answer to a stalled body: {answer:?}"));
    assert_eq!(status, 408, "{body}");
    assert_eq!(json_of(&body)["error"]["code"], "body_timeout", "{body}");

    // Two silent connections hold both slots: a third client waits, and is served once
    // they are cut off.
    let _hog1 = rawhttp::connect_from(web.addr, None);
    let _hog2 = rawhttp::connect_from(web.addr, None);
    std::thread::sleep(Duration::from_millis(300));
    let quick = reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(800))
        .build()
        .unwrap();
    assert!(
        quick.get(web.url("/healthz")).send().is_err(),
        "served beyond max_connections = 2"
    );
    let started = Instant::now();
    let (status, _) = web.get_json("/api/results");
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[test]
fn cross_site_posts_and_foreign_hosts_are_refused() {
    let mut setup = WebSetup::new(SHARED_AMQP_URL);
    setup.extra = "allowed_hosts = [\"labmq.test\"]\n".into();
    let web = setup.start();
    let host = web.addr.to_string();
    let tasks = "[\"fact:x\"]";
    let json_type = "Content-Type: application/json";

    // A page elsewhere posting to the API or the form.
    for headers in [
        vec![json_type, "Origin: http://evil.example"],
        vec![json_type, "Origin: null"],
        vec![json_type, "Sec-Fetch-Site: cross-site"],
        vec![json_type, "Sec-Fetch-Site: same-site"],
    ] {
        let request = rawhttp::request("POST", "/api/tasks", &host, &headers, tasks);
        let (status, body) = rawhttp::exchange(web.addr, None, &request);
        assert_eq!(status, 403, "{headers:?}: {body}");
        assert_eq!(json_of(&body)["error"]["code"], "cross_site", "{body}");
    }
    let form = rawhttp::request(
        "POST",
        "/submit",
        &host,
        &[
            "Content-Type: application/x-www-form-urlencoded",
            "Origin: https://evil.example",
            "Sec-Fetch-Site: cross-site",
        ],
        "tasks=fact%3Ax",
    );
    assert_eq!(rawhttp::exchange(web.addr, None, &form).0, 403);

    // The page itself (same origin), and clients that are not browsers.
    let origin = format!("Origin: http://{host}");
    for headers in [
        vec![json_type, origin.as_str(), "Sec-Fetch-Site: same-origin"],
        vec![json_type],
    ] {
        let request = rawhttp::request("POST", "/api/tasks", &host, &headers, tasks);
        let (status, body) = rawhttp::exchange(web.addr, None, &request);
        assert_eq!(status, 200, "{headers:?}: {body}");
        assert_eq!(json_of(&body)["rejected"], 1, "{body}");
    }

    // DNS rebinding: a name of the attacker's that resolves to 127.0.0.1.
    let rebound = rawhttp::request("GET", "/api/results", "rebind.evil.example:8080", &[], "");
    let (status, body) = rawhttp::exchange(web.addr, None, &rebound);
    assert_eq!(status, 421, "{body}");
    assert_eq!(json_of(&body)["error"]["code"], "host_not_allowed");
    assert!(body.contains("allowed_hosts"), "{body}");
    for allowed in [
        "labmq.test:8080",
        "LABMQ.test",
        "localhost:8080",
        "127.0.0.1",
    ] {
        let request = rawhttp::request("GET", "/api/results", allowed, &[], "");
        let (status, body) = rawhttp::exchange(web.addr, None, &request);
        assert_eq!(status, 200, "Host {allowed}: {body}");
    }
}

#[test]
fn one_client_cannot_spend_the_whole_submit_budget() {
    let mut setup = WebSetup::new(SHARED_AMQP_URL);
    setup.extra = "submits_per_minute = 100\nsubmits_per_minute_per_client = 2\n".into();
    let web = setup.start();
    let host = web.addr.to_string();
    let submit = rawhttp::request(
        "POST",
        "/api/tasks",
        &host,
        &["Content-Type: application/json"],
        "[\"fact:x\"]",
    );
    let first: IpAddr = [127, 0, 0, 1].into();
    let second: IpAddr = [127, 0, 0, 2].into();
    for _ in 0..2 {
        assert_eq!(rawhttp::exchange(web.addr, Some(first), &submit).0, 200);
    }
    let (status, body) = rawhttp::exchange(web.addr, Some(first), &submit);
    assert_eq!(status, 429, "{body}");
    let error = &json_of(&body)["error"];
    assert_eq!(error["code"], "rate_limited");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("submits_per_minute_per_client"),
        "{body}"
    );
    // Another client still has its own budget.
    let (status, body) = rawhttp::exchange(web.addr, Some(second), &submit);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn storage_is_bounded_by_retention_and_queue_length() {
    let mut setup = WebSetup::new(SHARED_AMQP_URL);
    setup.extra =
        "retention_max_rows = 5\nretention_interval_secs = 1\nresults_queue_max_length = 3\n"
            .into();
    let mut web = setup.start_healthy();
    let amqp = Amqp::connect(SHARED_AMQP_URL);
    let ids: Vec<String> = (0..12)
        .map(|i| format!("ret-{i}-{}", uuid::Uuid::new_v4()))
        .collect();
    for id in &ids {
        amqp.publish_to_exchange(
            &setup.results_exchange,
            &result_document(id),
            BasicProperties::default(),
        );
    }
    web.wait_results(&ids[11..], RESULTS_TIMEOUT);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, health) = web.get_json("/healthz");
        if health["database"]["results"] == 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "retention did not apply: {health}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, list) = web.get_json("/api/results");
    let kept: Vec<&str> = list["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    let newest: Vec<&str> = ids[7..].iter().rev().map(String::as_str).collect();
    assert_eq!(kept, newest, "the newest five are kept");

    // Stopped, its queue keeps only the newest results_queue_max_length.
    assert!(web.daemon.stop(EXIT_TIMEOUT).success());
    for i in 0..10 {
        amqp.publish_to_exchange(
            &setup.results_exchange,
            &result_document(&format!("later-{i}")),
            BasicProperties::default(),
        );
    }
    assert_eq!(amqp.ready_count(&setup.results_queue), 3);
    let drained = amqp.drain(&setup.results_queue);
    let first: Value = serde_json::from_slice(&drained[0].0).unwrap();
    assert_eq!(first["id"], "later-7", "drop-head keeps the newest");
    amqp.delete_queue(&setup.results_queue);
}

#[test]
fn a_failing_database_backs_off_and_healthz_says_so() {
    let setup = WebSetup::new(SHARED_AMQP_URL);
    let web = setup.start_healthy();
    let database = rusqlite::Connection::open(setup.database()).unwrap();
    database
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON results BEGIN SELECT RAISE(ABORT, 'disk says no'); END;",
        )
        .unwrap();
    let amqp = Amqp::connect(SHARED_AMQP_URL);
    let id = format!("dbfail-{}", uuid::Uuid::new_v4());
    amqp.publish_to_exchange(
        &setup.results_exchange,
        &result_document(&id),
        BasicProperties::default(),
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    let health = loop {
        let (status, health) = web.get_json("/healthz");
        if status == StatusCode::SERVICE_UNAVAILABLE {
            break health;
        }
        assert!(
            Instant::now() < deadline,
            "healthz never said the database fails: {health}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(health["database"]["ok"], false, "{health}");
    assert!(
        health["database"]["error"]
            .as_str()
            .unwrap()
            .contains("disk says no"),
        "{health}"
    );
    // Retried with backoff, not in a loop: over 8 s, a handful of tries.
    std::thread::sleep(Duration::from_secs(8));
    let tries = web.daemon.stderr().matches("cannot store results").count();
    assert!(
        (2..=8).contains(&tries),
        "{tries} tries in ~8 s\n{}",
        web.daemon.stderr()
    );

    database.execute_batch("DROP TRIGGER refuse;").unwrap();
    let stored = web.wait_results(std::slice::from_ref(&id), RESULTS_TIMEOUT);
    assert_eq!(
        stored[&id]["deliveries"], 1,
        "kept unacked, not redelivered"
    );
    web.wait_healthy(Duration::from_secs(60));
    amqp.delete_queue(&setup.results_queue);
}

#[test]
fn healthz_never_shows_the_broker_user() {
    let web_setup = WebSetup::new(SHARED_AMQP_URL);
    let web = web_setup.start_healthy();
    let (_, health) = web.get_json("/healthz");
    let text = health.to_string();
    assert!(!text.contains("guest"), "{text}");
    let shown = format!("amqp://127.0.0.1:{}/%2f", RABBITMQ4.port());
    assert!(text.contains(&shown), "{text}");

    // Unreachable, with the user in the error the driver reports.
    let port = support::free_port();
    let web_setup = WebSetup::new(&format!("amqp://opsuser:hunter2@127.0.0.1:{port}/%2f"));
    let web = web_setup.start();
    std::thread::sleep(Duration::from_secs(2));
    let (_, health) = web.get_json("/healthz");
    let text = health.to_string();
    assert!(
        !text.contains("opsuser") && !text.contains("hunter2"),
        "{text}"
    );
    let page = web.get("/").text().unwrap();
    assert!(!page.contains("opsuser"), "the page shows the broker user");
}

#[test]
fn a_json_array_keeps_commas_inside_text_tasks() {
    let server = spawn_server("");
    let consumer_setup = ConsumerSetup::new(SHARED_AMQP_URL, &[server.url()]);
    let _consumer = consumer_setup.start();
    let web_setup = WebSetup::for_consumer(&consumer_setup);
    let web = web_setup.start_healthy();
    let (status, body) = web.submit(&["upper:Hello, world", "freq:a, b, b", "fact:3, user7"]);
    assert_eq!(status, StatusCode::OK, "{body}");
    let tasks: Vec<&str> = body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task"].as_str().unwrap())
        .collect();
    assert_eq!(
        tasks,
        ["upper:Hello, world", "freq:a, b, b", "fact:3", "user7"]
    );
    let ids: Vec<String> = body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    let results = web.wait_results(&ids, RESULTS_TIMEOUT);
    assert_eq!(
        results[&ids[0]]["short"],
        "Processed by server: HELLO, WORLD"
    );
    assert_eq!(results[&ids[1]]["short"], "b (2 times)");

    // The form keeps its comma grammar: two tasks.
    let response = web
        .client
        .post(web.url("/submit"))
        .form(&[("tasks", "upper:Hello, world")])
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.text().unwrap().contains("2 accepted"));
}

#[test]
fn produce_takes_the_password_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("pw");
    std::fs::write(&good, "guest\n").unwrap();
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "not-the-password\n").unwrap();
    let queue = support::amqp::unique("pwfile");
    let url = "amqp://guest@127.0.0.1:5672/%2f";
    let good = good.to_str().unwrap();
    let (code, stdout, stderr) = produce(
        url,
        &["--password-file", good, "--queue", &queue, "fact:5"],
        "",
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (code, _, stderr) = produce(
        url,
        &[
            "--password-file",
            bad.to_str().unwrap(),
            "--queue",
            &queue,
            "fact:5",
        ],
        "",
    );
    assert_eq!(
        code, 3,
        "a wrong password is refused by the broker: {stderr}"
    );
    assert!(!stderr.contains("not-the-password"), "{stderr}");
    let (code, _, stderr) = produce(url, &["--password-file", "/nonexistent/pw", "fact:5"], "");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("/nonexistent/pw"), "{stderr}");
    let (code, help, _) = produce(url, &["--help"], "");
    assert_eq!(code, 0);
    assert!(help.contains("--password-file"), "{help}");
    Amqp::connect(SHARED_AMQP_URL).delete_queue(&queue);
}

#[test]
fn sigterm_while_the_broker_is_silent_exits_within_the_grace() {
    // A "broker" that accepts and never speaks.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().flatten() {
            held.push(stream);
        }
    });
    let mut setup = WebSetup::new(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f"));
    setup.extra = "shutdown_grace_secs = 2\nconfirm_timeout_secs = 30\n".into();
    let mut web = setup.start();
    // A submit in flight (connecting to the silent broker) and a client that never
    // finishes its headers.
    let url = web.url("/api/tasks");
    std::thread::spawn(move || {
        let _ = reqwest::blocking::Client::new()
            .post(url)
            .json(&json!(["fact:5"]))
            .send();
    });
    let _slow = rawhttp::connect_from(web.addr, None);
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    web.daemon.terminate();
    let status = web.daemon.wait_exit(READY_TIMEOUT);
    let took = started.elapsed();
    assert!(status.success(), "{status}\n{}", web.daemon.stderr());
    assert!(
        took <= Duration::from_secs(2 + 5),
        "exit took {took:?}, over shutdown_grace_secs + 5 s\n{}",
        web.daemon.stderr()
    );
}
