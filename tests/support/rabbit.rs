//! A private RabbitMQ node for tests that stop, restart or break the broker, so the shared
//! node at 127.0.0.1:5672 is never touched. Each node has its own name, ports and data
//! directory (owned by the `rabbitmq` user, which `rabbitmq-server` drops to).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::free_port;

/// The shared broker every machine of this project runs (guest/guest on loopback).
pub const SHARED_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

const START_TIMEOUT: Duration = Duration::from_secs(90);

pub struct PrivateBroker {
    pub node: String,
    pub port: u16,
    /// The TLS listener's port, when started with [`PrivateBroker::start_tls`].
    pub tls_port: Option<u16>,
    dir: PathBuf,
}

/// A TLS listener for a private node: its certificate files (copied into the node's
/// directory, so the `rabbitmq` user can read them) and how it treats client certificates.
pub struct BrokerTls<'a> {
    /// The CA that signs the clients' certificates (`ssl_options.cacertfile`).
    pub ca: &'a Path,
    pub cert: &'a Path,
    pub key: &'a Path,
    /// `verify_peer` + `fail_if_no_peer_cert`: a client without a certificate signed by
    /// `ca` is refused in the handshake.
    pub require_client_cert: bool,
    /// Enables `rabbitmq_auth_mechanism_ssl` and offers EXTERNAL (the client
    /// certificate's common name is the user) before PLAIN.
    pub external: bool,
}

pub fn rabbitmqctl(node: &str, args: &[&str]) -> std::process::Output {
    Command::new("rabbitmqctl")
        .arg("-n")
        .arg(node)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run rabbitmqctl ({e}); install RabbitMQ: apt-get install rabbitmq-server"
            )
        })
}

/// Blocks until `node` has booted and its AMQP listener on `port` is up; panics after
/// `timeout`, pointing at the node's logs in `dir`.
pub fn wait_node_serving(node: &str, port: u16, dir: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let output = rabbitmqctl(node, &["await_startup", "--timeout", "10"]);
        if output.status.success() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "RabbitMQ node {node} did not start within {timeout:?}: {}\nlogs in {}",
            String::from_utf8_lossy(&output.stderr),
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

impl PrivateBroker {
    /// Starts a node and waits until its AMQP port serves.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Starts a node whose rabbitmq.conf also holds `extra_config` (lines in
    /// rabbitmq.conf syntax, e.g. `consumer_timeout = 3000`).
    pub fn start_with(extra_config: &str) -> Self {
        Self::start_node(extra_config, None)
    }

    /// Starts a node with a TLS listener (on [`PrivateBroker::tls_port`]) beside its
    /// plaintext one.
    pub fn start_tls(tls: &BrokerTls<'_>) -> Self {
        Self::start_node("", Some(tls))
    }

    fn start_node(extra_config: &str, tls: Option<&BrokerTls<'_>>) -> Self {
        let port = free_port();
        let dist_port = free_port();
        let node = format!("labmqtest{port}@localhost");
        let dir = PathBuf::from(format!("/tmp/labmq-rabbit-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create private broker dir");
        let plugins = dir.join("enabled_plugins");
        let external = tls.is_some_and(|tls| tls.external);
        std::fs::write(
            &plugins,
            if external {
                "[rabbitmq_auth_mechanism_ssl].\n"
            } else {
                "[].\n"
            },
        )
        .expect("write enabled_plugins");
        let mut extra_config = extra_config.to_owned();
        let mut tls_port = None;
        if let Some(tls) = tls {
            let listen = free_port();
            tls_port = Some(listen);
            let copy = |from: &Path, name: &str| {
                let to = dir.join(name);
                std::fs::copy(from, &to).expect("copy a broker TLS file");
                to.display().to_string()
            };
            let (ca, cert, key) = (
                copy(tls.ca, "ca.pem"),
                copy(tls.cert, "server.pem"),
                copy(tls.key, "server.key"),
            );
            let verify = if tls.require_client_cert {
                "verify_peer"
            } else {
                "verify_none"
            };
            extra_config.push_str(&format!(
                "\nlisteners.ssl.1 = 127.0.0.1:{listen}\n\
                 ssl_options.cacertfile = {ca}\n\
                 ssl_options.certfile = {cert}\n\
                 ssl_options.keyfile = {key}\n\
                 ssl_options.verify = {verify}\n\
                 ssl_options.fail_if_no_peer_cert = {}\n",
                tls.require_client_cert
            ));
            if external {
                extra_config.push_str(
                    "auth_mechanisms.1 = EXTERNAL\nauth_mechanisms.2 = PLAIN\n\
                     ssl_cert_login_from = common_name\n",
                );
            }
        }
        // A config of its own: the machine's /etc/rabbitmq/rabbitmq.conf may pin the
        // listener to 5672, which would clash with the shared node.
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.local = 127.0.0.1:{port}\nloopback_users = none\n{extra_config}\n"
            ),
        )
        .expect("write rabbitmq.conf");
        let chown = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir)
            .status()
            .expect("run chown");
        assert!(
            chown.success(),
            "chown {} to rabbitmq failed",
            dir.display()
        );

        let broker = Self {
            node,
            port,
            tls_port,
            dir,
        };
        let mut command = Command::new("rabbitmq-server");
        let status = broker
            .env(&mut command)
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .arg("-detached")
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run rabbitmq-server ({e}); install it: apt-get install rabbitmq-server"
                )
            });
        assert!(
            status.success(),
            "rabbitmq-server -detached failed: {status}"
        );
        broker.wait_serving();
        broker
    }

    fn env<'a>(&self, command: &'a mut Command) -> &'a mut Command {
        let dir = self.dir.display();
        command
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_MNESIA_BASE", format!("{dir}/mnesia"))
            .env("RABBITMQ_LOG_BASE", format!("{dir}/log"))
            .env("RABBITMQ_PID_FILE", format!("{dir}/pid"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                format!("{dir}/enabled_plugins"),
            )
            // Named without ".conf": RabbitMQ 3.10 appends the extension itself.
            .env("RABBITMQ_CONFIG_FILE", format!("{dir}/rabbitmq"))
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The TLS listener as `amqps://guest:guest@HOST:PORT/%2f`.
    pub fn tls_url(&self, host: &str) -> String {
        let port = self.tls_port.expect("a node started with start_tls");
        format!("amqps://guest:guest@{host}:{port}/%2f")
    }

    /// Blocks until the node has booted and its AMQP listener is up.
    pub fn wait_serving(&self) {
        wait_node_serving(&self.node, self.port, &self.dir, START_TIMEOUT);
    }

    /// Stops the RabbitMQ application (connections drop, the node stays up).
    pub fn stop_app(&self) {
        let output = rabbitmqctl(&self.node, &["stop_app"]);
        assert!(
            output.status.success(),
            "stop_app: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Raises (or clears) RabbitMQ's disk alarm by moving the free-disk limit above (or
    /// below) any real disk, and waits until the node reports the change.
    pub fn set_disk_alarm(&self, raised: bool) {
        let limit = if raised { "100000GB" } else { "1MB" };
        let output = rabbitmqctl(&self.node, &["set_disk_free_limit", limit]);
        assert!(
            output.status.success(),
            "set_disk_free_limit {limit}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let alarms = rabbitmqctl(&self.node, &["eval", "rabbit_alarm:get_alarms()."]);
            let alarms = String::from_utf8_lossy(&alarms.stdout).into_owned();
            if alarms.contains("disk") == raised {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "disk alarm still {} after {START_TIMEOUT:?}: {alarms}",
                if raised { "clear" } else { "raised" }
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn start_app(&self) {
        let output = rabbitmqctl(&self.node, &["start_app"]);
        assert!(
            output.status.success(),
            "start_app: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        self.wait_serving();
    }
}

impl PrivateBroker {
    /// Stops the node and removes its directory (unless LABMQ_KEEP_BROKER is set); what
    /// dropping it does, for a node kept in a static that is never dropped.
    pub fn shutdown(&self) {
        let _ = rabbitmqctl(&self.node, &["stop"]);
        if std::env::var_os("LABMQ_KEEP_BROKER").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.shutdown();
    }
}
