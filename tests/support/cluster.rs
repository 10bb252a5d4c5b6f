//! A private RabbitMQ cluster for the failover tests: N nodes on this machine, each with
//! its own node name, AMQP and distribution ports, data and log directories, clustered
//! with `rabbitmqctl join_cluster` (RabbitMQ's own clustering), all stopped on drop. The
//! shared node at 127.0.0.1:5672 and the ports 5672/25672 are never used.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

use super::free_port;
use super::rabbit::{rabbitmqctl, wait_node_serving};

const START_TIMEOUT: Duration = Duration::from_secs(120);

pub struct ClusterNode {
    pub name: String,
    pub port: u16,
    dist_port: u16,
    dir: PathBuf,
}

fn checked(node: &str, args: &[&str]) -> String {
    let output = rabbitmqctl(node, args);
    assert!(
        output.status.success(),
        "rabbitmqctl -n {node} {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

impl ClusterNode {
    fn new() -> Self {
        let port = free_port();
        let dist_port = free_port();
        let name = format!("labmqcl{port}@localhost");
        let dir = PathBuf::from(format!("/tmp/labmq-cluster-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create cluster node dir");
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("write enabled_plugins");
        // A config of its own: the machine's /etc/rabbitmq/rabbitmq.conf may pin the
        // listener to 5672, which would clash with the shared node.
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\nloopback_users = none\n"),
        )
        .expect("write rabbitmq.conf");
        let chown = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir)
            .status()
            .expect("run chown");
        assert!(chown.success(), "chown {} failed", dir.display());
        Self {
            name,
            port,
            dist_port,
            dir,
        }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Boots the node in the background (`rabbitmq-server -detached`); see [`Self::wait_serving`].
    pub fn boot(&self) {
        let dir = self.dir.display();
        let status = Command::new("rabbitmq-server")
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", format!("{dir}/mnesia"))
            .env("RABBITMQ_LOG_BASE", format!("{dir}/log"))
            .env("RABBITMQ_PID_FILE", format!("{dir}/pid"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                format!("{dir}/enabled_plugins"),
            )
            // Named without ".conf": RabbitMQ 3.10 appends the extension itself.
            .env("RABBITMQ_CONFIG_FILE", format!("{dir}/rabbitmq"))
            .arg("-detached")
            .status()
            .expect("run rabbitmq-server");
        assert!(status.success(), "rabbitmq-server -detached: {status}");
    }

    /// Blocks until the node has booted and its AMQP listener is up.
    pub fn wait_serving(&self) {
        wait_node_serving(&self.name, self.port, &self.dir, START_TIMEOUT);
    }

    /// Stops the whole node (the Erlang VM), waiting until its process is gone.
    pub fn stop(&self) {
        let pid_file = self.dir.join("pid");
        checked(&self.name, &["stop", &pid_file.display().to_string()]);
    }
}

pub struct Cluster {
    pub nodes: Vec<ClusterNode>,
}

impl Cluster {
    /// Boots `n` nodes at once and joins every other node to the first.
    pub fn start(n: usize) -> Self {
        let cluster = Self {
            nodes: (0..n).map(|_| ClusterNode::new()).collect(),
        };
        for node in &cluster.nodes {
            node.boot();
        }
        for node in &cluster.nodes {
            node.wait_serving();
        }
        let first = &cluster.nodes[0].name;
        for node in &cluster.nodes[1..] {
            checked(&node.name, &["stop_app"]);
            checked(&node.name, &["join_cluster", first]);
            checked(&node.name, &["start_app"]);
            node.wait_serving();
        }
        let status = checked(first, &["cluster_status"]);
        for node in &cluster.nodes {
            assert!(
                status.contains(&node.name),
                "{} not in cluster: {status}",
                node.name
            );
        }
        cluster
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(ClusterNode::url).collect()
    }

    /// The node whose AMQP port is `port`.
    pub fn by_port(&self, port: u16) -> &ClusterNode {
        self.nodes
            .iter()
            .find(|node| node.port == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    pub fn by_name(&self, name: &str) -> &ClusterNode {
        self.nodes
            .iter()
            .find(|node| node.name == name)
            .unwrap_or_else(|| panic!("no cluster node named {name}"))
    }

    /// The node leading quorum queue `queue`, asked of node `via` (which must be up).
    pub fn leader_of(&self, queue: &str, via: &ClusterNode) -> &ClusterNode {
        let listing = checked(
            &via.name,
            &["list_queues", "-q", "--no-table-headers", "name", "leader"],
        );
        let leader = listing
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .find(|(name, _)| name.trim() == queue)
            .map(|(_, leader)| leader.trim().to_owned())
            .unwrap_or_else(|| panic!("queue {queue} not listed by {}: {listing}", via.name));
        self.by_name(&leader)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            let _ = rabbitmqctl(&node.name, &["stop"]);
        }
        if std::env::var_os("LABMQ_KEEP_BROKER").is_none() {
            for node in &self.nodes {
                let _ = std::fs::remove_dir_all(&node.dir);
            }
        }
    }
}

/// Messages in `queue` as node `url` reports them, or `None` if it cannot say within 5 s
/// (node down, queue leader being elected): for polling progress across failovers.
pub fn message_count(url: &str, queue: &str) -> Option<u32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async {
        let look = async {
            let connection = Connection::connect(url, ConnectionProperties::default())
                .await
                .ok()?;
            let channel = connection.create_channel().await.ok()?;
            let found = labmq::amqp::topology::inspect_queue(&channel, queue)
                .await
                .ok()
                .map(|q| q.message_count());
            let _ = connection.close(200, "".into()).await;
            found
        };
        tokio::time::timeout(Duration::from_secs(5), look)
            .await
            .ok()
            .flatten()
    })
}
