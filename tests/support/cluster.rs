//! A private RabbitMQ cluster for the failover tests: N nodes on this machine, each with
//! its own node name, AMQP and distribution ports, data and log directories, clustered
//! with `rabbitmqctl join_cluster` (RabbitMQ's own clustering), all stopped on drop, of any
//! [`Rabbit`] version. The shared nodes are never used.

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

use super::rabbit::{NodeFiles, Rabbit};

const START_TIMEOUT: Duration = Duration::from_secs(120);

pub struct ClusterNode {
    pub files: NodeFiles,
    pub name: String,
    pub port: u16,
}

impl ClusterNode {
    fn new(rabbit: Rabbit) -> Self {
        let files = NodeFiles::new(
            rabbit,
            "labmqcl",
            "",
            "listeners.tcp.local = 127.0.0.1:{port}\nloopback_users = none\n",
        );
        Self {
            name: files.name.clone(),
            port: files.port,
            files,
        }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Boots the node in the background (`rabbitmq-server -detached`); see [`Self::wait_serving`].
    pub fn boot(&self) {
        self.files.boot();
    }

    /// Blocks until the node has booted and its AMQP listener is up.
    pub fn wait_serving(&self) {
        self.files.wait_serving(START_TIMEOUT);
    }

    /// Stops the whole node (the Erlang VM), waiting until its process is gone.
    pub fn stop(&self) {
        self.files.ctl(&["stop", &self.files.node_path("pid")]);
    }

    /// `rabbitmqctl ARGS` against this node; panics with its output if it fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        self.files.ctl(args)
    }
}

pub struct Cluster {
    pub nodes: Vec<ClusterNode>,
}

impl Cluster {
    /// Boots `n` nodes of `rabbit` at once and joins every other node to the first.
    pub fn start(rabbit: Rabbit, n: usize) -> Self {
        let cluster = Self {
            nodes: (0..n).map(|_| ClusterNode::new(rabbit)).collect(),
        };
        for node in &cluster.nodes {
            node.boot();
        }
        for node in &cluster.nodes {
            node.wait_serving();
        }
        let first = &cluster.nodes[0].name;
        for node in &cluster.nodes[1..] {
            node.ctl(&["stop_app"]);
            node.ctl(&["join_cluster", first]);
            node.ctl(&["start_app"]);
            node.wait_serving();
        }
        let status = cluster.nodes[0].ctl(&["cluster_status"]);
        for node in &cluster.nodes {
            assert!(
                status.contains(&node.name),
                "{} not in cluster: {status}",
                node.name
            );
        }
        eprintln!(
            "cluster of {n} nodes: RabbitMQ {} ({rabbit:?})",
            rabbit.version_of(first)
        );
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
        let listing = via.ctl(&["list_queues", "-q", "--no-table-headers", "name", "leader"]);
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
            let _ = node.files.rabbit.ctl(&node.name, &["stop"]);
        }
        for node in &self.nodes {
            node.files.remove();
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
