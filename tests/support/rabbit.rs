//! The RabbitMQ brokers the tests run against, and private nodes for tests that stop,
//! restart or break a broker, so the shared nodes are never touched.
//!
//! Three RabbitMQ versions, one [`Rabbit`] each: the host's package (3.10 on Debian 12,
//! the broker older distributions ship) and the two roots `tests/rabbitmq4` makes (4.0,
//! the broker people run today; 4.3, which changed what counts towards a quorum queue's
//! delivery limit and how a consumer timeout is told). The suites that talk to a broker
//! run against 4.0 ([`SHARED_AMQP_URL`] is its shared node); tests of what differs by
//! version run once per version, named for it ([`on_brokers!`](crate::on_brokers)).
//!
//! A private node has its own name, ports and data directory (owned by the `rabbitmq`
//! user, which `rabbitmq-server` drops to); one of a 4.x version runs with chroot in its
//! root, on the host's network.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::free_port;

/// A RabbitMQ installation the tests can run nodes of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rabbit {
    /// The host's `rabbitmq-server` package (3.10 on Debian 12).
    Host,
    /// Debian 13's 4.0.x, in `tests/rabbitmq4 root 4.0`.
    V4_0,
    /// Debian testing's 4.3.x, in `tests/rabbitmq4 root 4.3`.
    V4_3,
}

impl Rabbit {
    /// Its root, for the chroot'd versions.
    pub fn root(self) -> Option<PathBuf> {
        let cache = std::env::var_os("LABMQ_E2E_CACHE")
            .map_or_else(|| PathBuf::from("/var/cache/labmq-e2e"), PathBuf::from);
        let name = match self {
            Rabbit::Host => return None,
            Rabbit::V4_0 => "rabbitmq-4.0",
            Rabbit::V4_3 => "rabbitmq-4.3",
        };
        let root = cache.join(name);
        assert!(
            root.join("usr/sbin/rabbitmq-server").exists(),
            "no RabbitMQ {self:?} root at {}: make it with `tests/rabbitmq4 prepare` (tests/run does)",
            root.display()
        );
        Some(root)
    }

    /// `program` (rabbitmq-server, rabbitmqctl) of this installation, with a clean
    /// environment inside a root.
    pub fn command(self, program: &str) -> Command {
        match self.root() {
            None => Command::new(program),
            Some(root) => {
                let mut command = Command::new("chroot");
                command
                    .arg(root)
                    .args(["/usr/bin/env", "-i"])
                    .args([
                        "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                        "HOME=/root",
                        "LANG=C.UTF-8",
                    ])
                    .arg(program);
                command
            }
        }
    }

    /// `rabbitmqctl -n NODE ARGS` of this installation.
    pub fn ctl(self, node: &str, args: &[&str]) -> Output {
        self.command("rabbitmqctl")
            .arg("-n")
            .arg(node)
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run rabbitmqctl of {self:?} ({e}); install RabbitMQ (apt-get install rabbitmq-server) and `tests/rabbitmq4 prepare`")
            })
    }

    /// Where a node's files go: (as this process sees the path, as the node sees it).
    fn node_dir(self, name: &str) -> (PathBuf, PathBuf) {
        let inside = PathBuf::from("/tmp").join(name);
        match self.root() {
            None => (inside.clone(), inside),
            Some(root) => {
                // Erlang reads /proc (memory, CPUs); `tests/rabbitmq4 stop` unmounts it.
                let proc_dir = root.join("proc");
                if !proc_dir.join("self").exists() {
                    let mounted = Command::new("mount")
                        .args(["-t", "proc", "proc"])
                        .arg(&proc_dir)
                        .status()
                        .expect("run mount");
                    assert!(mounted.success(), "mount proc on {}", proc_dir.display());
                }
                (
                    root.join(inside.strip_prefix("/").expect("absolute")),
                    inside,
                )
            }
        }
    }

    /// The version the node `node` runs, as it says.
    pub fn version_of(self, node: &str) -> String {
        let output = self.ctl(node, &["eval", "rabbit_misc:version()."]);
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .trim_matches('"')
            .to_owned()
    }
}

/// A node that serves the tests without being started by them (`tests/run` starts both).
#[derive(Debug, Clone, Copy)]
pub struct SharedBroker {
    pub rabbit: Rabbit,
    pub url: &'static str,
    /// Its node name, for `rabbitmqctl -n` (`None`: rabbitmqctl's default, the host's
    /// own node, whatever the machine's host name).
    pub node: Option<&'static str>,
    /// How to start it when it does not answer.
    pub start: &'static str,
}

/// The host's broker (guest/guest on loopback), which every machine of this project runs.
pub const RABBITMQ3: SharedBroker = SharedBroker {
    rabbit: Rabbit::Host,
    url: "amqp://guest:guest@127.0.0.1:5672/%2f",
    node: None,
    start: "rabbitmq-server -detached",
};

/// The shared RabbitMQ 4.0 node of `tests/rabbitmq4 start`.
pub const RABBITMQ4: SharedBroker = SharedBroker {
    rabbit: Rabbit::V4_0,
    url: "amqp://guest:guest@127.0.0.1:5673/%2f",
    node: Some("labmq4@localhost"),
    start: "tests/rabbitmq4 start",
};

/// The broker the suites run against: RabbitMQ 4.0, what people run today.
pub const SHARED_AMQP_URL: &str = RABBITMQ4.url;

/// Says on the test's output which broker `url` is (a test's output is shown when it
/// fails): the shared nodes by name, any other by its URL without the password.
pub fn say_broker(url: &str) {
    let which = if url == RABBITMQ4.url {
        "RabbitMQ 4.0, tests/rabbitmq4's shared node at 127.0.0.1:5673".to_owned()
    } else if url == RABBITMQ3.url {
        "RabbitMQ 3.10, the host's at 127.0.0.1:5672".to_owned()
    } else {
        let shown = match (url.find("://"), url.find('@')) {
            (Some(scheme), Some(at)) if scheme < at => {
                format!("{}{}", &url[..scheme + 3], &url[at + 1..])
            }
            _ => url.to_owned(),
        };
        format!("the broker at {shown}")
    };
    eprintln!("broker: {which}");
}

impl SharedBroker {
    /// `rabbitmqctl ARGS` against this node; panics with its stderr if it fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        let mut command = self.rabbit.command("rabbitmqctl");
        if let Some(node) = self.node {
            command.arg("-n").arg(node);
        }
        let output = command.args(args).output().expect("run rabbitmqctl");
        assert!(
            output.status.success(),
            "rabbitmqctl {args:?} ({:?}) failed: {}{}; is it running? ({})",
            self.rabbit,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.start
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// "RabbitMQ 4.0.5 at amqp://…:5673", for a test's output.
    pub fn describe(&self) -> String {
        let version = self.ctl(&["eval", "rabbit_misc:version()."]);
        format!(
            "RabbitMQ {} at 127.0.0.1:{}",
            version.trim().trim_matches('"'),
            self.port()
        )
    }

    /// Its AMQP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.url
            .trim_end_matches("/%2f")
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .expect("a port in the shared broker's URL")
    }
}

/// Defines one `#[test]` per broker for each named function, which takes the broker:
/// `on_brokers!(shared: declares_quorum_queues)` runs `declares_quorum_queues(&RABBITMQ3)`
/// as `rabbitmq3::declares_quorum_queues` and with `RABBITMQ4` as
/// `rabbitmq4::declares_quorum_queues`; `on_brokers!(private: held_task)` runs
/// `held_task(Rabbit::Host)`, `(Rabbit::V4_0)` and `(Rabbit::V4_3)` as
/// `rabbitmq3::held_task`, `rabbitmq4_0::held_task` and `rabbitmq4_3::held_task`, for
/// tests that start private nodes.
#[macro_export]
macro_rules! on_brokers {
    (shared: $($name:ident),+ $(,)?) => {
        mod rabbitmq3 {
            $(#[test] fn $name() {
                $crate::support::rabbit::require_host_3x();
                super::$name(&$crate::support::rabbit::RABBITMQ3)
            })+
        }
        mod rabbitmq4 {
            $(#[test] fn $name() { super::$name(&$crate::support::rabbit::RABBITMQ4) })+
        }
    };
    (private: $($name:ident),+ $(,)?) => {
        mod rabbitmq3 {
            $(#[test] fn $name() {
                $crate::support::rabbit::require_host_3x();
                super::$name($crate::support::rabbit::Rabbit::Host)
            })+
        }
        mod rabbitmq4_0 {
            $(#[test] fn $name() { super::$name($crate::support::rabbit::Rabbit::V4_0) })+
        }
        mod rabbitmq4_3 {
            $(#[test] fn $name() { super::$name($crate::support::rabbit::Rabbit::V4_3) })+
        }
    };
}

/// The `rabbitmq3::` tests need the host's RabbitMQ to be a 3.x (Debian 12's 3.10): on
/// a host whose package is 4.x (Debian 13) their names would lie.
pub fn require_host_3x() {
    let version = RABBITMQ3.ctl(&["eval", "rabbit_misc:version()."]);
    let version = version.trim().trim_matches('"');
    assert!(
        version.starts_with("3."),
        "the host's RabbitMQ at 127.0.0.1:5672 is {version}, not 3.x: the rabbitmq3 tests need Debian 12's rabbitmq-server (3.10)"
    );
}

const START_TIMEOUT: Duration = Duration::from_secs(90);

/// Blocks until `node` has booted and its AMQP listener on `port` is up; panics after
/// `timeout`, pointing at the node's logs in `dir`.
pub fn wait_node_serving(rabbit: Rabbit, node: &str, port: u16, dir: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let output = rabbit.ctl(node, &["await_startup", "--timeout", "10"]);
        if output.status.success() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "RabbitMQ node {node} ({rabbit:?}) did not start within {timeout:?}: {}\nlogs in {}",
            String::from_utf8_lossy(&output.stderr),
            dir.join("log").display()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The files and environment of one private node: its directory (config, data, logs,
/// pid file) and the variables that point `rabbitmq-server` at them.
pub struct NodeFiles {
    pub rabbit: Rabbit,
    pub name: String,
    pub port: u16,
    pub dist_port: u16,
    /// The directory as this process sees it.
    pub dir: PathBuf,
    /// The same directory as the node sees it (inside its root).
    inside: PathBuf,
}

impl NodeFiles {
    /// A fresh directory for node `PREFIX{port}@localhost` with `enabled_plugins` and a
    /// `rabbitmq.conf` of `config` (a listener line of its own is the caller's).
    pub fn new(rabbit: Rabbit, prefix: &str, plugins: &str, config: &str) -> Self {
        let port = free_port();
        let dist_port = free_port();
        let name = format!("{prefix}{port}@localhost");
        let (dir, inside) = rabbit.node_dir(&format!("labmq-{prefix}-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create private broker dir");
        std::fs::write(dir.join("enabled_plugins"), format!("[{plugins}].\n"))
            .expect("write enabled_plugins");
        // A config of its own: the machine's /etc/rabbitmq/rabbitmq.conf may pin the
        // listener to 5672, which would clash with the shared node.
        std::fs::write(
            dir.join("rabbitmq.conf"),
            config.replace("{port}", &port.to_string()),
        )
        .expect("write rabbitmq.conf");
        let files = Self {
            rabbit,
            name,
            port,
            dist_port,
            dir,
            inside,
        };
        files.chown();
        files
    }

    /// Gives the directory to the `rabbitmq` user of the node's installation (whose uid
    /// may differ from the host's).
    pub fn chown(&self) {
        let status = self
            .rabbit
            .command("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&self.inside)
            .status()
            .expect("run chown");
        assert!(
            status.success(),
            "chown {} to rabbitmq failed",
            self.dir.display()
        );
    }

    /// `path` inside the node's directory, as the node sees it.
    pub fn node_path(&self, file: &str) -> String {
        self.inside.join(file).display().to_string()
    }

    /// `rabbitmq-server -detached` for this node (returns once the VM is launched).
    pub fn boot(&self) {
        self.boot_with_env(&[]);
    }

    /// [`Self::boot`] with more environment variables for `rabbitmq-server`, e.g.
    /// `RABBITMQ_DEFAULT_USER`, which RabbitMQ reads itself (as in its Docker image).
    pub fn boot_with_env(&self, env: &[(&str, &str)]) {
        let inside = &self.inside;
        let status = self
            .rabbit
            .command("env")
            .args(env.iter().map(|(key, value)| format!("{key}={value}")))
            .arg(format!("RABBITMQ_NODENAME={}", self.name))
            .arg(format!("RABBITMQ_NODE_PORT={}", self.port))
            .arg(format!("RABBITMQ_DIST_PORT={}", self.dist_port))
            .arg(format!("RABBITMQ_MNESIA_BASE={}/mnesia", inside.display()))
            .arg(format!("RABBITMQ_LOG_BASE={}/log", inside.display()))
            .arg(format!("RABBITMQ_PID_FILE={}/pid", inside.display()))
            .arg(format!(
                "RABBITMQ_ENABLED_PLUGINS_FILE={}/enabled_plugins",
                inside.display()
            ))
            // Named without ".conf": RabbitMQ 3.10 appends the extension itself.
            .arg(format!("RABBITMQ_CONFIG_FILE={}/rabbitmq", inside.display()))
            .args(["rabbitmq-server", "-detached"])
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run rabbitmq-server of {:?} ({e}); install it: apt-get install rabbitmq-server, tests/rabbitmq4 prepare",
                    self.rabbit
                )
            });
        assert!(
            status.success(),
            "rabbitmq-server -detached ({:?}) failed: {status}",
            self.rabbit
        );
    }

    pub fn wait_serving(&self, timeout: Duration) {
        wait_node_serving(self.rabbit, &self.name, self.port, &self.dir, timeout);
    }

    /// `rabbitmqctl -n NODE ARGS`; panics with its output if it fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        let output = self.rabbit.ctl(&self.name, args);
        assert!(
            output.status.success(),
            "rabbitmqctl -n {} {args:?} ({:?}): {}{}",
            self.name,
            self.rabbit,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Stops the node and waits until its VM is gone.
    pub fn stop(&self) {
        let _ = self
            .rabbit
            .ctl(&self.name, &["stop", &self.node_path("pid")]);
    }

    /// Removes the directory, unless LABMQ_KEEP_BROKER is set (to read its logs).
    pub fn remove(&self) {
        if std::env::var_os("LABMQ_KEEP_BROKER").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub struct PrivateBroker {
    pub files: NodeFiles,
    pub node: String,
    pub port: u16,
    /// The TLS listener's port, when started with [`PrivateBroker::start_tls`].
    pub tls_port: Option<u16>,
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

impl PrivateBroker {
    /// Starts a node of `rabbit` and waits until its AMQP port serves.
    pub fn start(rabbit: Rabbit) -> Self {
        Self::start_with(rabbit, "")
    }

    /// Starts a node whose rabbitmq.conf also holds `extra_config` (lines in
    /// rabbitmq.conf syntax, e.g. `consumer_timeout = 3000`).
    pub fn start_with(rabbit: Rabbit, extra_config: &str) -> Self {
        Self::start_node(rabbit, extra_config, None)
    }

    /// Starts a node with a TLS listener (on [`PrivateBroker::tls_port`]) beside its
    /// plaintext one.
    pub fn start_tls(rabbit: Rabbit, tls: &BrokerTls<'_>) -> Self {
        Self::start_node(rabbit, "", Some(tls))
    }

    fn start_node(rabbit: Rabbit, extra_config: &str, tls: Option<&BrokerTls<'_>>) -> Self {
        let external = tls.is_some_and(|tls| tls.external);
        let plugins = if external {
            "rabbitmq_auth_mechanism_ssl"
        } else {
            ""
        };
        let files = NodeFiles::new(
            rabbit,
            "labmqtest",
            plugins,
            "listeners.tcp.local = 127.0.0.1:{port}\nloopback_users = none\n",
        );
        let mut config =
            std::fs::read_to_string(files.dir.join("rabbitmq.conf")).expect("read rabbitmq.conf");
        config.push_str(extra_config);
        config.push('\n');
        let mut tls_port = None;
        if let Some(tls) = tls {
            let listen = free_port();
            tls_port = Some(listen);
            let copy = |from: &Path, name: &str| {
                std::fs::copy(from, files.dir.join(name)).expect("copy a broker TLS file");
                files.node_path(name)
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
            config.push_str(&format!(
                "listeners.ssl.1 = 127.0.0.1:{listen}\n\
                 ssl_options.cacertfile = {ca}\n\
                 ssl_options.certfile = {cert}\n\
                 ssl_options.keyfile = {key}\n\
                 ssl_options.verify = {verify}\n\
                 ssl_options.fail_if_no_peer_cert = {}\n",
                tls.require_client_cert
            ));
            if external {
                config.push_str(
                    "auth_mechanisms.1 = EXTERNAL\nauth_mechanisms.2 = PLAIN\n\
                     ssl_cert_login_from = common_name\n",
                );
            }
        }
        std::fs::write(files.dir.join("rabbitmq.conf"), config).expect("write rabbitmq.conf");
        files.chown();
        files.boot();
        let broker = Self {
            node: files.name.clone(),
            port: files.port,
            tls_port,
            files,
        };
        broker.wait_serving();
        eprintln!(
            "private node {}: RabbitMQ {} ({:?}) at 127.0.0.1:{}",
            broker.node,
            rabbit.version_of(&broker.node),
            rabbit,
            broker.port
        );
        broker
    }

    pub fn rabbit(&self) -> Rabbit {
        self.files.rabbit
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
        self.files.wait_serving(START_TIMEOUT);
    }

    /// `rabbitmqctl ARGS` against this node; panics with its output if it fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        self.files.ctl(args)
    }

    /// Stops the RabbitMQ application (connections drop, the node stays up).
    pub fn stop_app(&self) {
        self.ctl(&["stop_app"]);
    }

    /// Raises (or clears) RabbitMQ's disk alarm by moving the free-disk limit above (or
    /// below) any real disk, and waits until the node reports the change.
    pub fn set_disk_alarm(&self, raised: bool) {
        let limit = if raised { "100000GB" } else { "1MB" };
        self.ctl(&["set_disk_free_limit", limit]);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let alarms = self.ctl(&["eval", "rabbit_alarm:get_alarms()."]);
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
        self.ctl(&["start_app"]);
        self.wait_serving();
    }

    /// Stops the node and removes its directory (unless LABMQ_KEEP_BROKER is set); what
    /// dropping it does, for a node kept in a static that is never dropped.
    pub fn shutdown(&self) {
        let _ = self.files.rabbit.ctl(&self.node, &["stop"]);
        self.files.remove();
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.shutdown();
    }
}
