//! labmq-web in a real browser: headless Chromium (Debian's `chromium`), driven over the
//! DevTools protocol, opens the page, types `user42, fact:6, freq:abracadabra` into the
//! form, presses Enter, and sees the three right results appear in the table without the
//! page reloading. With `LABMQ_WRITE_SCREENSHOT=1` it also saves the page, with its real
//! results, to docs/screenshots/labmq-web.png (the README's screenshot).

mod support;

use std::io::ErrorKind;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use support::amqp::ConsumerSetup;
use support::rabbit::SHARED_AMQP_URL;
use support::spawn_server;
use support::web::WebSetup;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// Debian's Chromium unless `LABMQ_CHROMIUM` names another binary (Ubuntu ships it as a snap).
fn chromium() -> String {
    std::env::var("LABMQ_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned())
}
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// A headless Chromium of our own (fresh profile), stopped on drop.
struct Browser {
    child: Child,
    profile: tempfile::TempDir,
    port: u16,
}

impl Browser {
    fn launch() -> Self {
        let chromium = chromium();
        assert!(
            Path::new(&chromium).exists(),
            "{chromium} is missing: the browser test needs Chromium \
             (Debian: apt-get install chromium; elsewhere set LABMQ_CHROMIUM to its binary)"
        );
        let profile = tempfile::tempdir().expect("browser profile dir");
        let child = Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
                "--window-size=1200,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {chromium}: {e}"));
        let mut browser = Self {
            child,
            profile,
            port: 0,
        };
        // Chromium writes the port it chose to DevToolsActivePort in the profile.
        let port_file = browser.profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + STEP_TIMEOUT;
        browser.port = loop {
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|text| text.lines().next().and_then(|l| l.parse().ok()))
            {
                break port;
            }
            if let Ok(Some(status)) = browser.child.try_wait() {
                panic!("{chromium} exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "{chromium} wrote no DevToolsActivePort within {STEP_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        browser
    }

    /// A DevTools session on the browser's first page.
    fn page(&self) -> Page {
        let targets: Value =
            reqwest::blocking::get(format!("http://127.0.0.1:{}/json/list", self.port))
                .and_then(|r| r.json())
                .expect("DevTools /json/list");
        let url = targets
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .unwrap_or_else(|| panic!("no page target: {targets}"))
            .to_owned();
        let (socket, _) = tungstenite::connect(&url).expect("DevTools WebSocket");
        if let MaybeTlsStream::Plain(stream) = socket.get_ref() {
            stream
                .set_read_timeout(Some(Duration::from_secs(1)))
                .expect("read timeout");
        }
        Page { socket, next_id: 0 }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SIGTERM lets Chromium take its helper processes down with it.
        support::send_signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Page {
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Page {
    /// Sends one DevTools command and returns its result (events are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({"id": id, "method": method, "params": params});
        self.socket
            .send(Message::text(request.to_string()))
            .unwrap_or_else(|e| panic!("DevTools {method}: {e}"));
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            assert!(
                Instant::now() < deadline,
                "DevTools {method}: no answer within {STEP_TIMEOUT:?}"
            );
            let message = match self.socket.read() {
                Ok(Message::Text(text)) => text,
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    continue;
                }
                Err(e) => panic!("DevTools {method}: {e}"),
            };
            let reply: Value = serde_json::from_str(message.as_str()).expect("DevTools JSON");
            if reply["id"] != id {
                continue;
            }
            if let Some(error) = reply.get("error") {
                panic!("DevTools {method} failed: {error}");
            }
            return reply["result"].clone();
        }
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("page script failed: {exception}\n{expression}");
        }
        result["result"]["value"].clone()
    }

    fn wait_for(&mut self, what: &str, expression: &str) -> Value {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let value = self.eval(expression);
            if !value.is_null() && value != false {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not seen within {STEP_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn key(&mut self, key: &str, code: &str, key_code: u32, text: &str) {
        for kind in ["keyDown", "keyUp"] {
            let mut params = json!({"type": kind, "key": key, "code": code,
                "windowsVirtualKeyCode": key_code, "nativeVirtualKeyCode": key_code});
            if kind == "keyDown" && !text.is_empty() {
                params["text"] = json!(text);
            }
            self.call("Input.dispatchKeyEvent", params);
        }
    }
}

/// Rows of the results table as `[task, value]`.
const TABLE_ROWS: &str = "Array.from(document.querySelectorAll('#results-table tbody tr'))
    .map(tr => [tr.cells[1].textContent, tr.querySelector('.short').textContent])";

#[test]
fn the_form_submits_and_results_appear_without_a_reload() {
    let server = spawn_server("");
    let consumer_setup = ConsumerSetup::new(SHARED_AMQP_URL, &[server.url()]);
    let _consumer = consumer_setup.start();
    let web_setup = WebSetup::for_consumer(&consumer_setup);
    let web = web_setup.start_healthy();
    // A few results already there, as on a page in use (a long value, an error, a
    // script that must stay text).
    let earlier = web.submit_ok(&[
        "upper:hello",
        "fact:-1",
        "<script>alert(1)</script>",
        "fact:2000",
    ]);
    web.wait_results(&earlier, Duration::from_secs(60));

    let browser = Browser::launch();
    let mut page = browser.page();
    page.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1200, "height": 820, "deviceScaleFactor": 1, "mobile": false}),
    );
    page.call("Page.navigate", json!({"url": web.url("/")}));
    page.wait_for(
        "the page loaded",
        "document.readyState === 'complete' && !!document.getElementById('tasks')",
    );
    let rows = page.eval(TABLE_ROWS);
    assert_eq!(rows.as_array().unwrap().len(), 4, "{rows}");
    assert!(
        page.eval("document.querySelector('#results-table a.whole') !== null") == true,
        "fact:2000 offers its whole value"
    );
    let alerts = page.eval("document.querySelectorAll('script:not([src])').length");
    assert_eq!(alerts, 0, "no inline script on the page");

    // A marker that a reload would wipe.
    page.eval("window.labmqMarker = 'no reload'; true");
    page.eval("document.getElementById('tasks').focus(); true");
    page.call(
        "Input.insertText",
        json!({"text": "user42, fact:6, freq:abracadabra"}),
    );
    page.key("Enter", "Enter", 13, "\r");

    let report = page.wait_for(
        "the submit report",
        "(() => { const r = document.querySelector('#report p'); return r && r.textContent; })()",
    );
    assert_eq!(report, "3 accepted, 0 rejected");

    let expected_group = labmq::compute::ab::AbSplitter::new(
        labmq::compute::ab::DEFAULT_AB_SALT,
        labmq::compute::ab::DEFAULT_A_PERCENT,
    )
    .assign("user42")
    .unwrap()
    .as_str();
    let want = [
        ("user42", format!("group {expected_group}")),
        ("fact:6", "720".to_owned()),
        ("freq:abracadabra", "a (5 times)".to_owned()),
    ];
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let rows = page.eval(TABLE_ROWS);
        let rows: Vec<(String, String)> = serde_json::from_value(rows).unwrap();
        let all_there = want
            .iter()
            .all(|(task, value)| rows.iter().any(|(t, v)| t == task && v == value));
        if all_there {
            assert_eq!(rows.len(), 7, "{rows:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the three results did not appear: table {rows:?}\n{}",
            web.daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        page.eval("window.labmqMarker"),
        "no reload",
        "the page reloaded"
    );
    let script_cell = page.eval(
        "Array.from(document.querySelectorAll('td.task')).map(td => td.textContent)
           .includes('<script>alert(1)</script>')",
    );
    assert_eq!(script_cell, true, "the script task is shown as text");

    if std::env::var_os("LABMQ_WRITE_SCREENSHOT").is_some_and(|v| v == "1") {
        // Let the new rows' highlight fade first.
        std::thread::sleep(Duration::from_millis(2500));
        let shot = page.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64");
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots/labmq-web.png");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, png).unwrap();
        eprintln!("wrote {}", path.display());
    }
}
