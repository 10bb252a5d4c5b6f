//! Shared helpers for the integration tests: free ports, the built binaries, and labmq
//! daemons started in an isolated environment and awaited through their own readiness
//! signal (`READY=1` on a `NOTIFY_SOCKET` that the test binds).
//!
//! Every test gets its own temporary directory (config file, notify socket, captured
//! stderr), so tests run in parallel and in any order. Every wait has a deadline and
//! panics with what went wrong and the daemon's stderr.
//!
//! Each test crate compiles this module separately and uses a different part of it.
#![allow(dead_code)]

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// `labmq-server`, as built by cargo for this test run.
pub const SERVER_BIN: &str = env!("CARGO_BIN_EXE_labmq-server");
/// `labmq-call`, as built by cargo for this test run.
pub const CALL_BIN: &str = env!("CARGO_BIN_EXE_labmq-call");

/// How long a daemon may take from spawn to `READY=1`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a daemon may take to exit after SIGTERM when nothing is in flight.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a one-shot command (e.g. `labmq-call`, `--check-config`) may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Environment variables passed through to every spawned process; everything else is
/// cleared so no `LABMQ_*`, `RUST_LOG`, `NOTIFY_SOCKET` or `JOURNAL_STREAM` of the
/// developer's shell or CI leaks in.
const PASSED_THROUGH: &[&str] = &["PATH", "HOME", "LANG", "TMPDIR", "RUST_BACKTRACE"];

/// A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it). Prefer
/// [`spawn_server`], which binds port 0 and reports the real address, when the daemon
/// can tell its address itself; use this for daemons that need the port up front.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 for a free port");
    listener
        .local_addr()
        .expect("local address of the probe listener")
        .port()
}

/// `127.0.0.1:PORT` with a [`free_port`].
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A fresh command for `program` with a cleared environment (see [`PASSED_THROUGH`]) and
/// `env` added.
pub fn isolated_command<K, V>(program: impl AsRef<OsStr>, env: &[(K, V)]) -> Command
where
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let mut command = Command::new(program);
    command.env_clear();
    for name in PASSED_THROUGH {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    for (key, value) in env {
        command.env(key, value);
    }
    command.stdin(Stdio::null());
    command
}

/// Runs `command` to completion with captured stdout and stderr, killing it and panicking
/// if it takes longer than `timeout`.
pub fn output_within(mut command: Command, timeout: Duration) -> Output {
    let description = format!("{command:?}");
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {description}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(output) => output.unwrap_or_else(|e| panic!("waiting for {description}: {e}")),
        Err(_) => {
            send_signal(pid, libc::SIGKILL);
            panic!("{description} did not finish within {timeout:?}; killed it");
        }
    }
}

/// Runs `program args` in an isolated environment with `env`, bounded by
/// [`COMMAND_TIMEOUT`].
pub fn run<K, V>(program: impl AsRef<OsStr>, args: &[&str], env: &[(K, V)]) -> Output
where
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let mut command = isolated_command(program, env);
    command.args(args);
    output_within(command, COMMAND_TIMEOUT)
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
pub fn send_signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions; it only sends a signal.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc != 0 {
        let error = std::io::Error::last_os_error();
        assert_eq!(
            error.raw_os_error(),
            Some(libc::ESRCH),
            "kill({pid}, {signal}): {error}"
        );
    }
}

/// The service-manager end of `sd_notify`: a datagram socket bound in a temporary
/// directory, whose path goes into the daemon's `NOTIFY_SOCKET`. Like systemd, it reads
/// every datagram as it arrives (in a thread of its own): a datagram socket holds only
/// ~10 unread messages, after which the daemon's next `sd_notify` would block, which is
/// not what a daemon under systemd ever sees.
pub struct NotifySocket {
    received: mpsc::Receiver<String>,
    stop: Arc<AtomicBool>,
    path: PathBuf,
    /// Every message taken so far, in order, for failure reports.
    log: Vec<String>,
}

impl NotifySocket {
    /// Binds `dir/notify.sock`.
    pub fn bind_in(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path)
            .unwrap_or_else(|e| panic!("cannot bind notify socket {}: {e}", path.display()));
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("set notify socket timeout");
        let (sender, received) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let reader_stop = stop.clone();
        let reader_path = path.clone();
        std::thread::spawn(move || {
            let mut buffer = vec![0u8; 4096];
            while !reader_stop.load(Ordering::Relaxed) {
                match socket.recv(&mut buffer) {
                    Ok(len) => {
                        let message = String::from_utf8_lossy(&buffer[..len]).into_owned();
                        if sender.send(message).is_err() {
                            return;
                        }
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(e) => panic!("reading notify socket {}: {e}", reader_path.display()),
                }
            }
        });
        Self {
            received,
            stop,
            path,
            log: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every message taken so far.
    pub fn messages(&self) -> &[String] {
        &self.log
    }

    /// The next message, or `None` if none arrives within `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Option<String> {
        let message = self.received.recv_timeout(timeout).ok()?;
        self.log.push(message.clone());
        Some(message)
    }

    /// A message the daemon has already sent, e.g. just before it exited; waits briefly
    /// because the reader thread may not have passed it on yet.
    pub fn recv_already_sent(&mut self) -> Option<String> {
        self.recv(Duration::from_millis(500))
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The value of `KEY=value` in an sd_notify message (one assignment per line).
pub fn notify_field<'a>(message: &'a str, key: &str) -> Option<&'a str> {
    message.lines().find_map(|line| {
        line.split_once('=')
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
    })
}

/// How to start one labmq daemon: any binary, its arguments and extra environment.
#[derive(Debug, Clone)]
pub struct DaemonSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
}

impl DaemonSpec {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Starts the daemon with `NOTIFY_SOCKET` pointing at a socket in a fresh temporary
    /// directory and stderr captured to a file there. Does not wait for readiness.
    pub fn spawn(self) -> Daemon {
        let dir = tempfile::tempdir().expect("temporary directory for a daemon");
        self.spawn_in(dir)
    }

    /// As [`DaemonSpec::spawn`], in `dir`, which may already hold files the arguments
    /// name (e.g. a config file); the daemon owns it from now on.
    pub fn spawn_in(self, dir: TempDir) -> Daemon {
        let notify = NotifySocket::bind_in(dir.path());
        let stderr_path = dir.path().join("stderr.log");
        let stderr = File::create(&stderr_path)
            .unwrap_or_else(|e| panic!("create {}: {e}", stderr_path.display()));
        let stdout_path = dir.path().join("stdout.log");
        let stdout = File::create(&stdout_path)
            .unwrap_or_else(|e| panic!("create {}: {e}", stdout_path.display()));
        let mut command = isolated_command(&self.program, &self.env);
        command
            .args(&self.args)
            .env("NOTIFY_SOCKET", notify.path())
            .stdout(stdout)
            .stderr(stderr);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program.display()));
        Daemon {
            name: self
                .program
                .file_name()
                .map_or_else(|| "daemon".into(), |n| n.to_string_lossy().into_owned()),
            child: Some(child),
            notify,
            stderr_path,
            stdout_path,
            dir,
        }
    }
}

/// A running daemon; killed (SIGKILL) and reaped on drop unless it already exited.
pub struct Daemon {
    pub name: String,
    child: Option<Child>,
    pub notify: NotifySocket,
    stderr_path: PathBuf,
    stdout_path: PathBuf,
    dir: TempDir,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .unwrap_or_else(|| panic!("{} was already reaped", self.name))
    }

    /// The daemon's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Everything the daemon wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    fn context(&self) -> String {
        format!(
            "notify messages: {:?}\n--- {} stderr ---\n{}",
            self.notify.messages(),
            self.name,
            self.stderr()
        )
    }

    /// Waits for `READY=1` and returns that message's `STATUS=` (empty if none).
    /// Panics if the daemon exits first or `timeout` passes.
    pub fn wait_ready(&mut self, timeout: Duration) -> String {
        let message = self.wait_notify("READY", "1", timeout);
        notify_field(&message, "STATUS")
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits for a notify message with `key=value` and returns the whole message.
    /// Panics if the daemon exits first or `timeout` passes.
    pub fn wait_notify(&mut self, key: &str, value: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "{} sent no {key}={value} within {timeout:?}\n{}",
                    self.name,
                    self.context()
                );
            }
            // Short slices so a daemon that dies early is reported at once, not at the
            // deadline; the notify message itself is what ends the wait.
            let slice = (deadline - now).min(Duration::from_millis(200));
            if let Some(message) = self.notify.recv(slice) {
                if notify_field(&message, key) == Some(value) {
                    return message;
                }
                continue;
            }
            if let Some(status) = self.try_exit_status() {
                // It may have sent the message just before exiting.
                while let Some(message) = self.notify.recv_already_sent() {
                    if notify_field(&message, key) == Some(value) {
                        return message;
                    }
                }
                panic!(
                    "{} exited with {status} before sending {key}={value}\n{}",
                    self.name,
                    self.context()
                );
            }
        }
    }

    /// The exit status if the daemon has exited; does not block.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        child
            .try_wait()
            .unwrap_or_else(|e| panic!("try_wait on {}: {e}", self.name))
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        send_signal(self.pid(), libc::SIGTERM);
    }

    /// Waits for the daemon to exit and reaps it; kills it and panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("{} was already reaped", self.name));
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(timeout) {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => panic!("waiting for {}: {e}", self.name),
            Err(_) => {
                send_signal(pid, libc::SIGKILL);
                panic!(
                    "{} did not exit within {timeout:?}; killed it\n{}",
                    self.name,
                    self.context()
                );
            }
        }
    }

    /// SIGTERM, then [`Daemon::wait_exit`].
    pub fn stop(&mut self, timeout: Duration) -> ExitStatus {
        self.terminate();
        self.wait_exit(timeout)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How to start `labmq-server` for a test.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// TOML written to the file passed with `--config`, so /etc/labmq is never read.
    pub config: String,
    /// Passed as `--listen`; port 0 lets the OS choose, and the address is read back
    /// from the `STATUS=serving on ADDR` notification.
    pub listen: String,
    /// Extra environment, e.g. `LABMQ_SERVER_*`.
    pub env: Vec<(String, String)>,
    /// Extra arguments after `--config` and `--listen`.
    pub args: Vec<String>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            config: String::new(),
            listen: "127.0.0.1:0".into(),
            env: Vec::new(),
            args: Vec::new(),
        }
    }
}

impl ServerOptions {
    pub fn with_config(config: &str) -> Self {
        Self {
            config: config.to_owned(),
            ..Self::default()
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Writes the config into a fresh temporary directory and spawns the server there
    /// without waiting for readiness.
    pub fn spawn(&self) -> Daemon {
        let dir = tempfile::tempdir().expect("temporary directory for labmq-server");
        let config_path = dir.path().join("server.toml");
        std::fs::write(&config_path, &self.config)
            .unwrap_or_else(|e| panic!("write {}: {e}", config_path.display()));
        let mut spec = DaemonSpec::new(SERVER_BIN)
            .arg("--config")
            .arg(config_path.as_os_str())
            .arg("--listen")
            .arg(&self.listen)
            .args(&self.args);
        for (key, value) in &self.env {
            spec = spec.env(key, value);
        }
        spec.spawn_in(dir)
    }

    /// Spawns the server and waits until it is serving.
    pub fn start(&self) -> Server {
        let mut daemon = self.spawn();
        let status = daemon.wait_ready(READY_TIMEOUT);
        let addr = status
            .strip_prefix("serving on ")
            .and_then(|addr| addr.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| {
                panic!(
                    "READY=1 came with STATUS={status:?}, not \"serving on ADDR\"\n{}",
                    daemon.context()
                )
            });
        Server { daemon, addr }
    }
}

/// A serving `labmq-server`.
pub struct Server {
    pub daemon: Daemon,
    pub addr: SocketAddr,
}

impl Server {
    /// `http://ADDR`, for tonic endpoints.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Polls the daemon's stderr until it contains every needle; a log line is the only
    /// outside evidence that a request reached the handler.
    pub fn wait_for_log(&mut self, needles: &[&str], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.daemon.stderr();
            if needles.iter().all(|n| contains_whole(&log, n)) {
                return;
            }
            if let Some(status) = self.daemon.try_exit_status() {
                panic!("server exited with {status} while waiting for {needles:?}\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "server did not log {needles:?} within {timeout:?}\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Whether `log` holds `needle` not followed by a digit: `n=3000` must not match the
/// `n=300000` of another call.
fn contains_whole(log: &str, needle: &str) -> bool {
    log.match_indices(needle)
        .any(|(at, _)| !log[at + needle.len()..].starts_with(|c: char| c.is_ascii_digit()))
}

/// Starts `labmq-server` with `config` (TOML) on a port the OS chooses, ready to serve.
pub fn spawn_server(config: &str) -> Server {
    ServerOptions::with_config(config).start()
}

pub mod amqp;
pub mod cluster;
pub mod metrics;
pub mod poison;
pub mod rabbit;
pub mod web;
