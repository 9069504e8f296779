//! The catalog's Raft group (openraft): one coordinator is a one-member group, three elect a
//! leader and replicate every catalog change (DESIGN.md §7).
//!
//! - `store.rs`: the log, vote and committed index in sled trees of the catalog's database, and
//!   the state machine, which applies [`Command`]s to the `catalog` tree
//!   ([`CatalogState::execute`]) and snapshots it.
//! - `network.rs`: members talk Arrow Flight (`DoAction`, JSON bodies), like workers do:
//!   AppendEntries, Vote, InstallSnapshot, and `propose`, with which a follower forwards a change
//!   to the leader.
//!
//! Raft runs on its own small tokio runtime, so the catalog's API stays synchronous: a change
//! blocks its caller until it is committed and applied here (as the fsync it replaces did), and
//! no caller's runtime has to be the one driving Raft.

mod network;
mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Config, Raft, ServerState, SnapshotPolicy};
use orochi_common::error::{DbError, DbResult, SqlState};

use crate::catalog::{CatalogState, Command, Outcome};

openraft::declare_raft_types!(
    /// The catalog's Raft types: entries carry [`Command`]s, nodes are known by their
    /// `--raft-listen` address.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// How long a catalog change waits for a leader and a majority before failing.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(15);
/// The default Raft port (`--raft-listen` without a port is not accepted; this is documentation).
pub const DEFAULT_RAFT_PORT: u16 = 7000;

/// Membership of the group, as configured.
#[derive(Debug, Clone)]
pub struct RaftOptions {
    /// This coordinator's id in the group.
    pub node_id: u64,
    /// Where this member serves the other members (`--raft-listen`); none: a one-member group.
    pub listen: Option<String>,
    /// Every member, this one included (`--raft-peer ID=ADDR`); empty: this one alone.
    pub peers: BTreeMap<u64, String>,
}

impl Default for RaftOptions {
    fn default() -> Self {
        RaftOptions {
            node_id: 1,
            listen: None,
            peers: BTreeMap::new(),
        }
    }
}

impl RaftOptions {
    /// The members the group starts with: the configured peers, and this node.
    fn members(&self) -> BTreeMap<u64, BasicNode> {
        let mut members: BTreeMap<u64, BasicNode> = self
            .peers
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr)))
            .collect();
        members
            .entry(self.node_id)
            .or_insert_with(|| BasicNode::new(self.listen.clone().unwrap_or_default()));
        members
    }
}

/// One member's view of the group, for `orochi_raft_status()`.
#[derive(Debug, Clone)]
pub struct RaftStatus {
    pub node_id: u64,
    /// `leader`, `follower`, `candidate`, `learner` (or `shutdown`).
    pub role: &'static str,
    pub term: u64,
    pub leader_id: Option<u64>,
    pub commit_index: u64,
    pub applied_index: u64,
    /// Voters, by id, with their Raft address.
    pub members: Vec<(u64, String)>,
    /// The last log index of the snapshot this member holds (built or installed), 0: none.
    pub snapshot_index: u64,
}

/// A running member: the openraft handle and the runtime driving it.
pub struct RaftNode {
    raft: Raft<TypeConfig>,
    id: u64,
    committed: Arc<AtomicU64>,
    peers: Arc<network::Peers>,
    runtime: Option<tokio::runtime::Runtime>,
}

fn raft_error(context: &str, e: impl std::fmt::Display) -> DbError {
    DbError::new(
        SqlState::InternalError,
        format!("catalog Raft {context}: {e}"),
    )
}

impl RaftNode {
    /// Opens the log and state machine in `db`, starts the member (and its listener), and
    /// initializes the group on first start: a lone member at once; a group by its
    /// lowest-numbered member, once.
    pub fn start(db: &sled::Db, state: Arc<CatalogState>, options: &RaftOptions) -> DbResult<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("orochi-raft")
            .enable_all()
            .build()
            .map_err(|e| raft_error("runtime", e))?;
        let committed = Arc::new(AtomicU64::new(0));
        let log = store::LogStore::open(db, committed.clone())?;
        let machine = store::StateMachine::open(db, state)?;
        let peers = Arc::new(network::Peers::default());
        let config = Config {
            cluster_name: "orochi-catalog".into(),
            heartbeat_interval: 250,
            election_timeout_min: 1000,
            election_timeout_max: 2000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(1000),
            max_in_snapshot_log_to_keep: 100,
            ..Default::default()
        }
        .validate()
        .map_err(|e| raft_error("configuration", e))?;
        let id = options.node_id;
        let members = options.members();
        let listen = options.listen.clone();
        let factory = network::Factory {
            peers: peers.clone(),
        };
        let raft = run_on(runtime.handle(), async move {
            let raft = Raft::new(id, Arc::new(config), factory, log, machine)
                .await
                .map_err(|e| raft_error("start", e))?;
            if let Some(addr) = listen {
                network::serve(raft.clone(), &addr).await?;
            }
            let initialized = raft
                .is_initialized()
                .await
                .map_err(|e| raft_error("start", e))?;
            let lowest = members.keys().next() == Some(&id);
            if !initialized && lowest {
                tracing::info!(members = ?members.keys().collect::<Vec<_>>(), "initializing the catalog's Raft group");
                raft.initialize(members.clone())
                    .await
                    .map_err(|e| raft_error("initialization", e))?;
            }
            if members.len() == 1 {
                // a lone member elects itself at once; wait, so the first statement need not
                let _ = raft
                    .wait(Some(Duration::from_secs(10)))
                    .state(ServerState::Leader, "single-member group")
                    .await;
            }
            Ok::<_, DbError>(raft)
        })?;
        Ok(RaftNode {
            raft,
            id,
            committed,
            peers,
            runtime: Some(runtime),
        })
    }

    /// Appends `command` (here, or at the leader) and waits until it is committed and applied
    /// to this member's state machine, so the caller reads its own change.
    pub fn propose(&self, command: Command) -> DbResult<Outcome> {
        let raft = self.raft.clone();
        let peers = self.peers.clone();
        run_on(self.handle(), propose(raft, peers, command))
    }

    /// Whether member `node` of the group is running (answers within a second). This
    /// member is; one the group does not know is not.
    pub fn member_alive(&self, node: u64) -> bool {
        if node == self.id {
            return true;
        }
        let m = self.raft.metrics().borrow().clone();
        let Some(addr) = m
            .membership_config
            .nodes()
            .find(|(id, _)| **id == node)
            .map(|(_, n)| n.addr.clone())
        else {
            return false;
        };
        let Ok(peer) = self.peers.get(&addr) else {
            return false;
        };
        run_on(self.handle(), async move { peer.ping().await })
    }

    /// How many members the group has.
    pub fn member_count(&self) -> usize {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .nodes()
            .count()
    }

    pub fn status(&self) -> RaftStatus {
        let m = self.raft.metrics().borrow().clone();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let voters: BTreeSet<u64> = m.membership_config.voter_ids().collect();
        let members = m
            .membership_config
            .nodes()
            .filter(|(id, _)| voters.contains(id))
            .map(|(id, node)| (*id, node.addr.clone()))
            .collect();
        let applied = m.last_applied.map_or(0, |l| l.index);
        RaftStatus {
            node_id: self.id,
            role,
            term: m.current_term,
            leader_id: m.current_leader,
            commit_index: self.committed.load(Ordering::Relaxed).max(applied),
            applied_index: applied,
            members,
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
        }
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime.as_ref().expect("running").handle()
    }
}

impl Drop for RaftNode {
    fn drop(&mut self) {
        let raft = self.raft.clone();
        let _ = run_on(self.handle(), async move { raft.shutdown().await });
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Runs `fut` on the Raft runtime and blocks this thread for its result (from synchronous
/// code, or from a task of another runtime: a short block, like the fsync it replaces).
fn run_on<F>(handle: &tokio::runtime::Handle, fut: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    handle.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .expect("the Raft runtime runs while the catalog is open")
}

async fn propose(
    raft: Raft<TypeConfig>,
    peers: Arc<network::Peers>,
    command: Command,
) -> DbResult<Outcome> {
    let deadline = Instant::now() + PROPOSE_TIMEOUT;
    let no_leader = || {
        DbError::new(
            SqlState::ConnectionFailure,
            "catalog change failed: the coordinators' Raft group has no leader reachable (a \
             majority of the coordinators must be up)",
        )
    };
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let attempt = tokio::time::timeout(remaining, raft.client_write(command.clone())).await;
        let leader = match attempt {
            Err(_) => return Err(no_leader()),
            Ok(Ok(response)) => return Ok(response.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => f.leader_node,
            Ok(Err(e)) => return Err(raft_error("write", e)),
        };
        if let Some(leader) = leader {
            match peers.get(&leader.addr)?.propose(&command).await {
                Ok(Some((outcome, index))) => {
                    // read-your-writes: this member applies the entry before we return
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    raft.wait(Some(remaining))
                        .applied_index_at_least(Some(index), "a forwarded catalog change")
                        .await
                        .map_err(|_| no_leader())?;
                    return Ok(outcome);
                }
                // leadership moved, or the leader is unreachable: ask again
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(leader = %leader.addr, error = %e, "forwarding a catalog change")
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(no_leader());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
