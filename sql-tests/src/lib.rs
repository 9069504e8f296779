//! Test harness for the `.slt` suites: a [`sqllogictest::AsyncDB`] over tokio-postgres
//! ([`PgDb`]), and [`Server`], which starts a real `orochi-coordinator` binary on a free
//! loopback port with a temporary data directory.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};
use tokio_postgres::{NoTls, SimpleQueryMessage};

/// An error from the server, displayed with its SQLSTATE so `.slt` files can assert on it:
/// `statement error 23505` matches `... (SQLSTATE 23505)`.
#[derive(Debug)]
pub struct DbError(pub String);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DbError {}

fn describe(e: tokio_postgres::Error) -> DbError {
    match e.as_db_error() {
        Some(db) => DbError(format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        )),
        None => DbError(format!("{e:#}")),
    }
}

pub struct PgDb {
    client: tokio_postgres::Client,
    conn: tokio::task::JoinHandle<()>,
    name: String,
}

impl PgDb {
    pub async fn connect(url: &str, name: &str) -> anyhow::Result<PgDb> {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
        let conn = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(PgDb {
            client,
            conn,
            name: name.to_string(),
        })
    }
}

#[async_trait]
impl AsyncDB for PgDb {
    type Error = DbError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DbError> {
        let msgs = self.client.simple_query(sql).await.map_err(describe)?;
        let mut rows = Vec::new();
        let mut columns = None;
        let mut count = 0;
        for m in msgs {
            match m {
                SimpleQueryMessage::RowDescription(cols) => columns = Some(cols.len()),
                SimpleQueryMessage::Row(r) => {
                    columns = Some(r.len());
                    rows.push(
                        (0..r.len())
                            .map(|i| match r.get(i) {
                                None => "NULL".to_string(),
                                Some("") => "(empty)".to_string(),
                                Some(v) => v.to_string(),
                            })
                            .collect(),
                    );
                }
                SimpleQueryMessage::CommandComplete(n) => count = n,
                _ => {}
            }
        }
        match columns {
            Some(n) => Ok(DBOutput::Rows {
                types: vec![DefaultColumnType::Any; n],
                rows,
            }),
            None => Ok(DBOutput::StatementComplete(count)),
        }
    }

    async fn shutdown(&mut self) {
        self.conn.abort();
    }

    fn engine_name(&self) -> &str {
        &self.name
    }
}

/// A running `orochi-coordinator` process, killed on drop.
pub struct Server {
    pub port: u16,
    pub data_dir: PathBuf,
    child: Option<Child>,
    _tmp: Option<tempfile::TempDir>,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a free port")
}

/// Path of a binary built in the same target directory as the running test.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/slt-xxxx -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join(name)
}

impl Server {
    /// Starts a standalone coordinator on a fresh temp data directory and a port it picks.
    pub fn start() -> anyhow::Result<Server> {
        Server::start_with(&[], &[])
    }

    /// Starts a standalone coordinator on a fresh temp data directory (and a port it picks)
    /// with extra flags and environment variables.
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Server> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("data");
        let mut s = Server::start_configured(0, &dir, args, env)?;
        s._tmp = Some(tmp);
        Ok(s)
    }

    /// Starts a coordinator on `port` over `data_dir` (kept after the server stops).
    pub fn start_on(port: u16, data_dir: &Path) -> anyhow::Result<Server> {
        Server::start_configured(port, data_dir, &[], &[])
    }

    /// [`Server::start_on`] with extra flags.
    pub fn start_on_with(port: u16, data_dir: &Path, args: &[&str]) -> anyhow::Result<Server> {
        Server::start_configured(port, data_dir, args, &[])
    }

    /// Whether the server process is still alive.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Starts the binary and waits for its `orochi.pid` file (written once it listens): the
    /// port it reports is the one this child bound, never another test's server.
    fn start_configured(
        port: u16,
        data_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Server> {
        Server::start_binary("orochi-coordinator", port, data_dir, args, env)
    }

    /// Starts `name` (`orochi-coordinator` or `orochi-worker`: both take `--listen` and
    /// `--data-dir` and write `orochi.pid`) and waits until it listens.
    pub fn start_binary(
        name: &str,
        port: u16,
        data_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Server> {
        let bin = binary(name);
        anyhow::ensure!(
            bin.exists(),
            "{} not built (run `cargo build -p orochi-coordinator -p orochi-worker`)",
            bin.display()
        );
        let mut child = Command::new(&bin)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(data_dir)
            .args(args)
            .envs(env.iter().copied())
            .env(
                "RUST_LOG",
                std::env::var("OROCHI_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let pid_file = data_dir.join("orochi.pid");
        let deadline = Instant::now() + Duration::from_secs(60);
        let port = loop {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("server exited during start-up: {status}");
            }
            if let Ok(text) = std::fs::read_to_string(&pid_file) {
                let mut lines = text.lines();
                let pid = lines.next().and_then(|p| p.parse::<u32>().ok());
                let addr = lines
                    .next()
                    .and_then(|a| a.parse::<std::net::SocketAddr>().ok());
                if let (Some(pid), Some(addr)) = (pid, addr)
                    && pid == child.id()
                {
                    break addr.port();
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                anyhow::bail!("server did not start listening within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(Server {
            port,
            data_dir: data_dir.to_path_buf(),
            child: Some(child),
            _tmp: None,
        })
    }

    /// A tokio-postgres client connected as `postgres` (its connection task spawned).
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(), NoTls)
            .await
            .expect("connect");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            return c.wait().map(|s| s.success()).unwrap_or(false);
        }
        false
    }
}

fn worker_addresses(workers: &[Server]) -> Vec<String> {
    workers
        .iter()
        .map(|w| format!("127.0.0.1:{}", w.port))
        .collect()
}

/// `--worker A --worker B …`
fn worker_args(addresses: &[String]) -> Vec<&str> {
    addresses
        .iter()
        .flat_map(|a| ["--worker", a.as_str()])
        .collect()
}

/// A coordinator with worker daemons, each a real process on loopback.
pub struct Cluster {
    pub coordinator: Server,
    pub workers: Vec<Server>,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// Starts `workers` worker daemons and a coordinator that places shards on them.
    pub fn start(workers: usize) -> anyhow::Result<Cluster> {
        let tmp = tempfile::tempdir()?;
        let mut started = Vec::new();
        for i in 0..workers {
            let dir = tmp.path().join(format!("worker{i}"));
            started.push(Server::start_binary("orochi-worker", 0, &dir, &[], &[])?);
        }
        let addresses = worker_addresses(&started);
        let args = worker_args(&addresses);
        let coordinator = Server::start_configured(0, &tmp.path().join("coordinator"), &args, &[])?;
        Ok(Cluster {
            coordinator,
            workers: started,
            _tmp: tmp,
        })
    }

    /// The workers' Flight addresses, in the order the coordinator was given them.
    pub fn worker_addresses(&self) -> Vec<String> {
        worker_addresses(&self.workers)
    }

    /// `kill -9` of the coordinator, then a start on the same port, data directory and
    /// workers.
    pub fn restart_coordinator(&mut self) -> anyhow::Result<()> {
        let (port, dir) = (self.coordinator.port, self.coordinator.data_dir.clone());
        self.coordinator.kill();
        let addresses = self.worker_addresses();
        self.coordinator = Server::start_on_with(port, &dir, &worker_args(&addresses))?;
        Ok(())
    }

    /// Restarts worker `i` on its port and data directory (after [`Server::kill`]).
    pub fn restart_worker(&mut self, i: usize) -> anyhow::Result<()> {
        let (port, dir) = (self.workers[i].port, self.workers[i].data_dir.clone());
        self.workers[i] = Server::start_binary("orochi-worker", port, &dir, &[], &[])?;
        Ok(())
    }
}

/// Three coordinators in one Raft group over shared worker daemons, real processes on
/// loopback.
pub struct Group {
    pub coordinators: Vec<Option<Server>>,
    pub workers: Vec<Server>,
    /// `--raft-peer` values, `id=127.0.0.1:port`, by coordinator index (id = index + 1).
    peers: Vec<String>,
    /// Each coordinator's `--cluster-listen` address, where workers may register.
    pub cluster_listen: Vec<String>,
    tmp: tempfile::TempDir,
}

impl Group {
    pub fn start(coordinators: usize, workers: usize) -> anyhow::Result<Group> {
        // The Raft and cluster ports are picked free and then bound by the coordinators; a
        // test running alongside can take one in between ("Address already in use"). Such a
        // start is tried again with new ports.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Group::try_start(coordinators, workers) {
                Err(e) if attempt < 3 && format!("{e:#}").contains("exited during start-up") => {
                    eprintln!("group start failed ({e:#}); trying again with new ports");
                }
                other => return other,
            }
        }
    }

    fn try_start(coordinators: usize, workers: usize) -> anyhow::Result<Group> {
        let tmp = tempfile::tempdir()?;
        let mut started = Vec::new();
        for i in 0..workers {
            let dir = tmp.path().join(format!("worker{i}"));
            started.push(Server::start_binary("orochi-worker", 0, &dir, &[], &[])?);
        }
        let peers: Vec<String> = (0..coordinators)
            .map(|i| format!("{}=127.0.0.1:{}", i + 1, free_port()))
            .collect();
        let cluster_listen = (0..coordinators)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let mut group = Group {
            coordinators: Vec::new(),
            workers: started,
            peers,
            cluster_listen,
            tmp,
        };
        // together: each waits for a majority of the group before it listens
        let handles: Vec<_> = (0..coordinators)
            .map(|i| {
                let (dir, args) = group.coordinator_args(i);
                std::thread::spawn(move || {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    Server::start_binary("orochi-coordinator", 0, &dir, &args, &[])
                })
            })
            .collect();
        // every start is waited for (and a failed group's servers stopped) before an error
        let results: Vec<anyhow::Result<Server>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("start thread panicked"))?
            })
            .collect();
        for r in results {
            group.coordinators.push(Some(r?));
        }
        Ok(group)
    }

    fn coordinator_args(&self, i: usize) -> (PathBuf, Vec<String>) {
        let dir = self.tmp.path().join(format!("coordinator{}", i + 1));
        let mut args = vec![
            "--node-id".to_string(),
            (i + 1).to_string(),
            "--raft-listen".into(),
            self.peers[i].split_once('=').unwrap().1.to_string(),
            "--cluster-listen".into(),
            self.cluster_listen[i].clone(),
        ];
        for p in &self.peers {
            args.push("--raft-peer".into());
            args.push(p.clone());
        }
        for w in worker_addresses(&self.workers) {
            args.push("--worker".into());
            args.push(w);
        }
        (dir, args)
    }

    /// Starts a worker that registers itself with coordinator `i`.
    pub fn register_worker(&mut self, i: usize) -> anyhow::Result<()> {
        let dir = self
            .tmp
            .path()
            .join(format!("worker{}", self.workers.len()));
        let w = Server::start_binary(
            "orochi-worker",
            0,
            &dir,
            &["--coordinator", &self.cluster_listen[i]],
            &[],
        )?;
        self.workers.push(w);
        Ok(())
    }

    pub fn coordinator(&self, i: usize) -> &Server {
        self.coordinators[i].as_ref().expect("coordinator running")
    }

    /// `kill -9` of coordinator `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut s) = self.coordinators[i].take() {
            s.kill();
        }
    }

    /// Starts coordinator `i` again, on its data directory (a new port).
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.restart_with(i, &[])
    }

    /// Starts coordinator `i` again with environment `env` (a failpoint, say).
    pub fn restart_with(&mut self, i: usize, env: &[(&str, &str)]) -> anyhow::Result<()> {
        self.kill(i);
        let (dir, args) = self.coordinator_args(i);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.coordinators[i] = Some(Server::start_binary(
            "orochi-coordinator",
            0,
            &dir,
            &args,
            env,
        )?);
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
