//! labmq-server under socket activation, the way systemd's labmq-server.socket starts it:
//! `systemd-socket-activate` (from systemd) holds the listening socket and execs the
//! server on the first connection with `LISTEN_FDS`. The restart without refused calls
//! that this enables is tested under real systemd by `packaging/e2e`.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::{CALL_BIN, Daemon, DaemonSpec, EXIT_TIMEOUT, SERVER_BIN, free_addr, run};

const NO_ENV: &[(&str, &str)] = &[];
const ACTIVATE: &str = "systemd-socket-activate";

/// Starts `systemd-socket-activate -l ADDR labmq-server --listen LISTEN` and waits until
/// it holds the socket (it says "Listening on").
fn activator(socket: SocketAddr, listen: SocketAddr) -> Daemon {
    let activator = DaemonSpec::new(ACTIVATE)
        .args([
            "-l",
            &socket.to_string(),
            SERVER_BIN,
            "--listen",
            &listen.to_string(),
        ])
        .spawn();
    let deadline = Instant::now() + EXIT_TIMEOUT;
    while !activator.stderr().contains("Listening on") {
        assert!(
            Instant::now() < deadline,
            "{ACTIVATE} did not listen on {socket}: {}",
            activator.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    activator
}

#[test]
fn socket_activated_server_serves_on_the_socket_systemd_passed() {
    let addr = free_addr();
    let mut activator = activator(addr, addr);
    // The first connection makes systemd-socket-activate exec the server; labmq-call's
    // connection waits in the socket's backlog meanwhile.
    let output = run(
        CALL_BIN,
        &["--server", &format!("http://{addr}"), "fact:12"],
        NO_ENV,
    );
    assert!(
        output.status.success(),
        "labmq-call through the activated socket: {}\n--- server ---\n{}",
        String::from_utf8_lossy(&output.stderr),
        activator.stderr()
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "fact:12 => 479001600\n"
    );
    let log = activator.stderr();
    assert!(
        log.contains(&format!("serving gRPC on {addr} (socket-activated)")),
        "the server did not say it took systemd's socket: {log}"
    );
    activator.stop(EXIT_TIMEOUT);
}

#[test]
fn socket_activated_server_refuses_a_socket_on_another_address_than_listen() {
    let socket = free_addr();
    let listen = free_addr();
    let mut activator = activator(socket, listen);
    // Any connection starts the server.
    let _trigger = TcpStream::connect_timeout(&socket, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect to the activation socket {socket}: {e}"));
    let status = activator.wait_exit(EXIT_TIMEOUT);
    assert!(
        !status.success(),
        "the server ran on a socket it was not configured for"
    );
    let log = activator.stderr();
    assert!(
        log.contains(&format!(
            "systemd passed a socket on {socket}, but listen is {listen}"
        )),
        "the error does not name both addresses: {log}"
    );
}
