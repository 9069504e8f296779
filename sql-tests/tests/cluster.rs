//! Cluster topology against real processes: a coordinator and two `orochi-worker` daemons on
//! loopback. Placement across workers, failing fast when a worker is down, no acknowledged
//! write lost by `kill -9` of a worker or the coordinator, multi-worker atomicity.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use orochi_sql_tests::{Cluster, Server};

/// Sets up `t` with 200 rows spread over all 32 shards, so over both workers.
async fn cluster_with_rows() -> Cluster {
    let cluster = Cluster::start(2).unwrap();
    let c = cluster.coordinator.connect().await;
    c.batch_execute(
        "CREATE TABLE t (k int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 200) g;",
    )
    .await
    .unwrap();
    cluster
}

/// A key whose shard lives on worker `w` (shard i is on worker i mod 2), found through
/// EXPLAIN, which names the shard a point lookup reads.
async fn key_on_worker(c: &tokio_postgres::Client, w: usize) -> i32 {
    for k in 1..=200 {
        let plan: Vec<String> = c
            .query(&format!("EXPLAIN SELECT * FROM t WHERE k = {k}"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let plan = plan.join("\n");
        let shard: usize = plan
            .split("shards=1/32 [")
            .nth(1)
            .and_then(|s| s.split(']').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no shard in plan:\n{plan}"));
        if shard % 2 == w {
            return k;
        }
    }
    panic!("no key on worker {w}");
}

#[tokio::test]
async fn rows_live_on_both_workers_and_a_dead_worker_fails_fast() {
    let mut cluster = cluster_with_rows().await;
    let c = cluster.coordinator.connect().await;
    let on0 = key_on_worker(&c, 0).await;
    let on1 = key_on_worker(&c, 1).await;
    let addresses = cluster.worker_addresses();

    // EXPLAIN says where a scan runs: a point lookup on its shard's owner, a full scan on both
    let plan = |sql: String| {
        let c = &c;
        async move {
            c.query(&sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    let point = plan(format!("EXPLAIN SELECT * FROM t WHERE k = {on1}")).await;
    assert!(point.contains(&format!("on=[{}]", addresses[1])), "{point}");
    let full = plan("EXPLAIN SELECT count(*) FROM t".into()).await;
    assert!(
        full.contains(&format!("on=[{}, {}]", addresses[0], addresses[1])),
        "{full}"
    );

    // the shards are spread: 16 per worker, and both hold rows
    let split: Vec<(String, i64, i64)> = c
        .query(
            "SELECT worker, count(*), sum(row_count)::bigint FROM orochi_shard_distribution() \
             WHERE table_name = 'public.t' GROUP BY worker ORDER BY worker",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let mut expected = addresses.clone();
    expected.sort();
    assert_eq!(
        split.iter().map(|s| s.0.clone()).collect::<Vec<_>>(),
        expected
    );
    assert!(split.iter().all(|s| s.1 == 16 && s.2 > 0), "{split:?}");
    assert_eq!(split.iter().map(|s| s.2).sum::<i64>(), 200);
    let status: Vec<(String, String, i32)> = c
        .query(
            "SELECT address, state, shard_count FROM orochi_cluster_status() \
             WHERE role = 'worker' ORDER BY node_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        status,
        vec![
            (addresses[0].clone(), "up".to_string(), 16),
            (addresses[1].clone(), "up".to_string(), 16)
        ]
    );

    cluster.workers[1].kill();
    let down = addresses[1].clone();
    let states: Vec<String> = c
        .query(
            "SELECT state FROM orochi_cluster_status() WHERE role = 'worker' ORDER BY node_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(states, vec!["up", "down"]);

    // a statement that needs worker 1 fails within seconds, naming it
    let started = Instant::now();
    let err = c.query("SELECT count(*) FROM t", &[]).await.unwrap_err();
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "08006", "{db:?}");
    assert!(db.message().contains(&down), "{}", db.message());
    assert!(started.elapsed() < Duration::from_secs(5));
    let err = c
        .query(&format!("SELECT v FROM t WHERE k = {on1}"), &[])
        .await
        .unwrap_err();
    assert!(err.as_db_error().unwrap().message().contains(&down));

    // one that does not need it keeps working, reads and writes
    let v: String = c
        .query_one(&format!("SELECT v FROM t WHERE k = {on0}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, format!("v{on0}"));
    c.execute(&format!("UPDATE t SET v = 'new' WHERE k = {on0}"), &[])
        .await
        .unwrap();

    // back: it serves its shards again, with everything it had
    cluster.restart_worker(1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let n: i64 = loop {
        match c.query_one("SELECT count(*) FROM t", &[]).await {
            Ok(r) => break r.get(0),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("worker did not come back: {e}"),
        }
    };
    assert_eq!(n, 200);
    let v: String = c
        .query_one(&format!("SELECT v FROM t WHERE k = {on0}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "new");
}

/// A statement that writes on both workers is atomic: a duplicate key on one worker leaves
/// nothing on the other; one that succeeds is visible everywhere.
#[tokio::test]
async fn multi_worker_statements_are_atomic() {
    let cluster = cluster_with_rows().await;
    let c = cluster.coordinator.connect().await;
    let on1 = key_on_worker(&c, 1).await;
    // 201..=300 land on both workers; `on1` is a duplicate on worker 1
    let err = c
        .batch_execute(&format!(
            "INSERT INTO t SELECT g, 'x' FROM generate_series(201, 300) g UNION ALL SELECT {on1}, 'dup'"
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "23505");
    let n: i64 = c
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 200, "the failed statement left rows behind");

    // a transaction block over both workers: rollback leaves nothing, commit everything
    c.batch_execute(
        "BEGIN; DELETE FROM t WHERE k <= 100; UPDATE t SET v = 'u' WHERE k > 100; ROLLBACK;",
    )
    .await
    .unwrap();
    let (n, u): (i64, i64) = {
        let r = c
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE v = 'u') FROM t",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((n, u), (200, 0));
    c.batch_execute(
        "BEGIN; DELETE FROM t WHERE k <= 100; UPDATE t SET v = 'u' WHERE k > 100; COMMIT;",
    )
    .await
    .unwrap();
    let r = c
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE v = 'u') FROM t",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((r.get::<_, i64>(0), r.get::<_, i64>(1)), (100, 100));
}

/// Clients commit rows (each INSERT spans both workers) while a worker is killed with
/// `kill -9` and restarted, then the coordinator likewise: every acknowledged row is there.
#[tokio::test]
async fn no_acknowledged_row_is_lost_when_a_worker_or_the_coordinator_is_killed() {
    let mut cluster = Cluster::start(2).unwrap();
    let c = cluster.coordinator.connect().await;
    c.batch_execute("CREATE TABLE acked (k int PRIMARY KEY, batch int)")
        .await
        .unwrap();
    let url = cluster.coordinator.url();
    let writer = tokio::spawn(async move {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut acked = BTreeSet::new();
        let mut errors = 0;
        for batch in 0..400 {
            // four keys: they hash to shards on both workers
            let keys: Vec<i32> = (0..4).map(|i| batch * 4 + i).collect();
            let values: Vec<String> = keys.iter().map(|k| format!("({k}, {batch})")).collect();
            match client
                .execute(
                    &format!("INSERT INTO acked VALUES {}", values.join(", ")),
                    &[],
                )
                .await
            {
                Ok(_) => acked.extend(keys),
                Err(_) => {
                    errors += 1;
                    if client.is_closed() {
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (acked, errors)
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    cluster.workers[0].kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.restart_worker(0).unwrap();
    let (acked, errors) = writer.await.unwrap();
    assert!(errors > 0, "the kill should have failed some statements");
    assert!(acked.len() > 100, "only {} rows acknowledged", acked.len());

    // the coordinator too: catalog and data come back from its data directory
    cluster.restart_coordinator().unwrap();
    let c = cluster.coordinator.connect().await;
    let stored: BTreeSet<i32> = c
        .query("SELECT k FROM acked", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lost: Vec<&i32> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged rows lost: {lost:?}");
    // and whole statements only: every batch is all there or not at all
    let partial: i64 = c
        .query_one(
            "SELECT count(*) FROM (SELECT batch FROM acked GROUP BY batch HAVING count(*) <> 4) p",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(partial, 0, "a statement was half applied");
}

/// The coordinator refuses to start with a worker list other than the one its shards were
/// placed on (shards cannot move yet), rather than looking for rows in the wrong place.
#[tokio::test]
async fn a_changed_worker_list_is_refused() {
    let mut cluster = cluster_with_rows().await;
    let dir = cluster.coordinator.data_dir.clone();
    cluster.coordinator.terminate();
    let one = format!("127.0.0.1:{}", cluster.workers[0].port);
    let err = Server::start_on_with(0, &dir, &["--worker", one.as_str()])
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains("exited"), "{err}");
}

/// A worker that restarts during a transaction has lost the transaction's writes there: the
/// transaction must not commit what is left (the next statement or the COMMIT fails with
/// 40001, and nothing of it is visible on any worker).
#[tokio::test]
async fn a_worker_restart_inside_a_transaction_rolls_it_back() {
    let mut cluster = cluster_with_rows().await;
    let c = cluster.coordinator.connect().await;
    let on0 = key_on_worker(&c, 0).await;
    let on1 = key_on_worker(&c, 1).await;

    // restart before the next statement: that statement fails
    c.batch_execute(&format!(
        "BEGIN; UPDATE t SET v = 'lost' WHERE k IN ({on0}, {on1})"
    ))
    .await
    .unwrap();
    cluster.workers[1].kill();
    cluster.restart_worker(1).unwrap();
    let err = c
        .batch_execute(&format!("UPDATE t SET v = 'again' WHERE k = {on1}"))
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "40001", "{err:?}");
    let message = err.as_db_error().unwrap().message().to_string();
    assert!(message.contains("restarted"), "{message}");
    c.batch_execute("ROLLBACK").await.unwrap();

    // restart between the last statement and COMMIT: the COMMIT fails
    c.batch_execute(&format!(
        "BEGIN; UPDATE t SET v = 'lost' WHERE k IN ({on0}, {on1})"
    ))
    .await
    .unwrap();
    cluster.workers[1].kill();
    cluster.restart_worker(1).unwrap();
    let err = c.batch_execute("COMMIT").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "40001", "{err:?}");

    let lost: i64 = c
        .query_one("SELECT count(*) FROM t WHERE v IN ('lost', 'again')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(lost, 0, "a half transaction was committed");
}

/// A coordinator killed with a transaction open: its row locks on the workers do not outlive
/// it; the restarted coordinator's sessions can write those rows at once.
#[tokio::test]
async fn a_dead_coordinators_locks_are_released_when_it_restarts() {
    let mut cluster = cluster_with_rows().await;
    let c = cluster.coordinator.connect().await;
    c.batch_execute("BEGIN; UPDATE t SET v = 'held' WHERE k <= 50")
        .await
        .unwrap();
    cluster.restart_coordinator().unwrap();
    drop(c);
    let c = cluster.coordinator.connect().await;
    c.batch_execute("SET lock_timeout = '2s'").await.unwrap();
    let n = c
        .execute("UPDATE t SET v = 'mine' WHERE k <= 50", &[])
        .await
        .expect("the old transaction's locks must be gone");
    assert_eq!(n, 50);
    let held: i64 = c
        .query_one("SELECT count(*) FROM t WHERE v = 'held'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        held, 0,
        "the dead coordinator's transaction was not rolled back"
    );
}

/// The rows and bytes each worker shipped, from EXPLAIN ANALYZE's `Shipped from` lines.
async fn shipped(c: &tokio_postgres::Client, sql: &str) -> (Vec<(String, u64, u64)>, String) {
    let plan: Vec<String> = c
        .query(&format!("EXPLAIN ANALYZE {sql}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = Vec::new();
    for line in &plan {
        let Some(rest) = line.strip_prefix("Shipped from ") else {
            continue;
        };
        let (worker, counts) = rest.split_once(": ").unwrap();
        let num = |key: &str| -> u64 {
            counts
                .split(", ")
                .find_map(|kv| kv.strip_prefix(key))
                .unwrap()
                .parse()
                .unwrap()
        };
        out.push((worker.to_string(), num("rows="), num("bytes=")));
    }
    (out, plan.join("\n"))
}

#[tokio::test]
async fn aggregates_and_filters_run_on_the_workers() {
    let cluster = Cluster::start(2).unwrap();
    let c = cluster.coordinator.connect().await;
    const ROWS: u64 = 20_000;
    const GROUPS: u64 = 5;
    c.batch_execute(&format!(
        "CREATE TABLE big (id int PRIMARY KEY, g int, v bigint, pad text);
         INSERT INTO big SELECT i, i % {GROUPS}, i, repeat('x', 20) FROM generate_series(1, {ROWS}) i;"
    ))
    .await
    .unwrap();
    let addresses = cluster.worker_addresses();

    // without pushdown every row reaches the coordinator: the baseline a fragment must beat
    let (all, plan) = shipped(&c, "SELECT * FROM big").await;
    assert_eq!(all.iter().map(|w| w.1).sum::<u64>(), ROWS, "{plan}");

    // a grouped aggregate ships one partial state per group per scan partition:
    // O(partitions × groups), not O(rows)
    let sql = "SELECT g, count(*), sum(v), avg(v), min(v), max(v), count(DISTINCT v % 7) \
               FROM big GROUP BY g ORDER BY g";
    let (per_worker, plan) = shipped(&c, sql).await;
    assert!(
        plan.contains("on_workers=[AggregateExec: mode=Partial"),
        "{plan}"
    );
    let workers: BTreeSet<&str> = per_worker.iter().map(|w| w.0.as_str()).collect();
    assert_eq!(
        workers,
        addresses
            .iter()
            .map(String::as_str)
            .collect::<BTreeSet<_>>(),
        "{plan}"
    );
    let rows: u64 = per_worker.iter().map(|w| w.1).sum();
    let bytes: u64 = per_worker.iter().map(|w| w.2).sum();
    // count(DISTINCT) keeps (group, value) pairs: 5 groups × 7 values per partition at most
    let partitions_per_worker = 32; // an upper bound: a partition has at least one shard
    assert!(
        rows <= 2 * partitions_per_worker * GROUPS * 7 && rows < ROWS / 20,
        "{rows} rows shipped for {ROWS}:\n{plan}"
    );
    let all_bytes: u64 = all.iter().map(|w| w.2).sum();
    assert!(
        bytes * 20 < all_bytes,
        "{bytes} vs {all_bytes} bytes:\n{plan}"
    );
    // and the answer is right
    let got: Vec<(i32, i64, String)> = c
        .query(
            "SELECT g, count(*), sum(v)::text FROM big GROUP BY g ORDER BY g",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let want: Vec<(i32, i64, String)> = (0..GROUPS as i32)
        .map(|g| {
            let sum: u64 = (1..=ROWS).filter(|i| i % GROUPS == g as u64).sum();
            (g, (ROWS / GROUPS) as i64, sum.to_string())
        })
        .collect();
    assert_eq!(got, want);

    // a filter ships the matching rows only
    let (filtered, plan) = shipped(&c, "SELECT id FROM big WHERE v % 1000 = 0").await;
    assert!(plan.contains("on_workers=[FilterExec"), "{plan}");
    assert_eq!(
        filtered.iter().map(|w| w.1).sum::<u64>(),
        ROWS / 1000,
        "{plan}"
    );

    // a join of co-located tables on the distribution column runs on the workers too: the
    // aggregate over it ships partial states, not the rows of either table
    c.batch_execute(&format!(
        "CREATE TABLE big_o (id int, line int, qty int, PRIMARY KEY (id, line));
         INSERT INTO big_o SELECT i, 1, i % 10 FROM generate_series(1, {ROWS}) i;
         INSERT INTO big_o SELECT i, 2, 1 FROM generate_series(1, {ROWS}, 2) i;"
    ))
    .await
    .unwrap();
    let sql =
        "SELECT b.g, count(*), sum(o.qty) FROM big b JOIN big_o o ON b.id = o.id GROUP BY b.g";
    let (joined, plan) = shipped(&c, sql).await;
    assert!(plan.contains("joined=[public.big_o]"), "{plan}");
    let rows: u64 = joined.iter().map(|w| w.1).sum();
    assert!(rows <= 2 * 32 * GROUPS, "{rows} rows shipped:\n{plan}");
    let total: (i64, i64) = c
        .query_one(
            "SELECT count(*), sum(o.qty)::bigint FROM big b JOIN big_o o ON b.id = o.id",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    let qty: u64 = (1..=ROWS).map(|i| i % 10).sum::<u64>() + ROWS / 2;
    assert_eq!(total, ((ROWS + ROWS / 2) as i64, qty as i64));
}

/// A reference table has a full copy on every worker: a write reaches every copy or none, and
/// reads are served by whichever copy answers.
#[tokio::test]
async fn reference_tables_are_copied_to_every_worker() {
    let mut cluster = Cluster::start(2).unwrap();
    let c = cluster.coordinator.connect().await;
    c.batch_execute(
        "CREATE TABLE region (id int PRIMARY KEY, name text);
         SELECT create_reference_table('region');
         INSERT INTO region SELECT i, 'r' || i FROM generate_series(1, 100) i;",
    )
    .await
    .unwrap();
    assert_eq!(region_count(&c).await, (100, 5050));

    // worker 0 dead: worker 1's copy answers; writes need every copy and fail naming worker 0
    let dead = cluster.worker_addresses()[0].clone();
    cluster.workers[0].kill();
    assert_eq!(region_count(&c).await, (100, 5050));
    let err = c
        .execute("INSERT INTO region VALUES (101, 'lost')", &[])
        .await
        .unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "08006", "{db:?}");
    assert!(db.message().contains(&dead), "{db:?}");
    assert_eq!(region_count(&c).await, (100, 5050));

    // back: every copy has the same rows, and a write (two-phase, both copies) lands on both
    cluster.restart_worker(0).unwrap();
    c.execute("INSERT INTO region VALUES (101, 'kept')", &[])
        .await
        .unwrap();
    assert_eq!(region_count(&c).await, (101, 5151));
    cluster.workers[1].kill();
    assert_eq!(region_count(&c).await, (101, 5151));
    let row = c
        .query_one("SELECT name FROM region WHERE id = 101", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "kept");
}

async fn region_count(c: &tokio_postgres::Client) -> (i64, i64) {
    let r = c
        .query_one("SELECT count(*), sum(id)::bigint FROM region", &[])
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

/// Waits until `orochi_cluster_status()` lists `n` workers, all up.
async fn wait_for_workers(c: &tokio_postgres::Client, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = c
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE state = 'up') \
                 FROM orochi_cluster_status() WHERE role = 'worker'",
                &[],
            )
            .await
            .unwrap();
        if row.get::<_, i64>(0) == n && row.get::<_, i64>(1) == n {
            return;
        }
        assert!(Instant::now() < deadline, "{n} workers never registered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Workers started with `--coordinator` join a coordinator started with `--cluster-listen`
/// (and no `--worker`): tables created after a worker joined are placed over it too, older
/// ones stay where they were, and a restarted coordinator remembers every worker.
#[tokio::test]
async fn workers_register_themselves() {
    let tmp = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", orochi_sql_tests::free_port());
    let coordinator_dir = tmp.path().join("coordinator");
    let mut coordinator = Server::start_binary(
        "orochi-coordinator",
        0,
        &coordinator_dir,
        &["--cluster-listen", &listen],
        &[],
    )
    .unwrap();
    let c = coordinator.connect().await;
    // no worker yet: nothing can be placed
    let err = c
        .batch_execute("CREATE TABLE too_early (id int PRIMARY KEY)")
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "08006", "{err:?}");

    let start_worker = |i: usize| {
        Server::start_binary(
            "orochi-worker",
            0,
            &tmp.path().join(format!("worker{i}")),
            &["--coordinator", &listen],
            &[],
        )
        .unwrap()
    };
    let mut w0 = start_worker(0);
    wait_for_workers(&c, 1).await;
    c.batch_execute(
        "CREATE TABLE one (id int PRIMARY KEY);
         INSERT INTO one SELECT i FROM generate_series(1, 300) i;
         CREATE TABLE ref (id int PRIMARY KEY, v text);
         SELECT create_reference_table('ref');
         INSERT INTO ref VALUES (1, 'a'), (2, 'b'), (3, 'c');",
    )
    .await
    .unwrap();
    let _w1 = start_worker(1);
    wait_for_workers(&c, 2).await;
    c.batch_execute(
        "CREATE TABLE two (id int PRIMARY KEY);
         INSERT INTO two SELECT i FROM generate_series(1, 300) i;",
    )
    .await
    .unwrap();
    // the reference table keeps its copies where it was placed: the new worker has none,
    // and writes still reach every copy
    c.batch_execute(
        "UPDATE ref SET v = 'aa' WHERE id = 1;
         DELETE FROM ref WHERE id = 2;
         INSERT INTO ref VALUES (4, 'd');",
    )
    .await
    .unwrap();
    let refs: Vec<(i32, String)> = c
        .query("SELECT id, v FROM ref ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        refs,
        vec![(1, "aa".into()), (3, "c".into()), (4, "d".into())]
    );
    let w0_addr = format!("127.0.0.1:{}", w0.port);
    let one = placed_on(&c, "one").await;
    assert_eq!(one, vec![(w0_addr.clone(), 32, 300)], "older table stays");
    let two = placed_on(&c, "two").await;
    assert_eq!(two.len(), 2, "{two:?}");
    assert!(
        two.iter()
            .all(|(_, shards, rows)| *shards == 16 && *rows > 0),
        "{two:?}"
    );
    // different placements are not co-located: the join is correct, on the coordinator
    let joined: i64 = c
        .query_one("SELECT count(*) FROM one JOIN two USING (id)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(joined, 300);

    // a restarted coordinator (no --worker either) knows both workers and their data
    drop(c);
    let port = coordinator.port;
    coordinator.kill();
    let coordinator = Server::start_binary(
        "orochi-coordinator",
        port,
        &coordinator_dir,
        &["--cluster-listen", &listen],
        &[],
    )
    .unwrap();
    let c = coordinator.connect().await;
    wait_for_workers(&c, 2).await;
    let total: i64 = c
        .query_one(
            "SELECT (SELECT count(*) FROM one) + (SELECT count(*) FROM two)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 600);

    // a restarted worker registers again, in its old place
    w0.kill();
    // meanwhile the reference table has no copy to read: worker 1 holds none, so the read
    // fails rather than answer from a worker that never had its rows
    let err = c.query("SELECT * FROM ref", &[]).await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "08006", "{err:?}");
    w0 = Server::start_binary(
        "orochi-worker",
        w0.port,
        &tmp.path().join("worker0"),
        &["--coordinator", &listen],
        &[],
    )
    .unwrap();
    wait_for_workers(&c, 2).await;
    assert_eq!(placed_on(&c, "one").await, vec![(w0_addr, 32, 300)]);
    drop(w0);
}

/// Per worker, the shards of `table` it owns and their rows.
async fn placed_on(c: &tokio_postgres::Client, table: &str) -> Vec<(String, i64, i64)> {
    let sql = format!(
        "SELECT worker, count(*), sum(row_count)::bigint FROM orochi_shard_distribution() \
         WHERE table_name = 'public.{table}' GROUP BY worker ORDER BY worker"
    );
    c.query(&sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// A worker that does not answer while the coordinator restarts (stopped, not dead: its open
/// transactions and their row locks survive) has the old process's transactions ended once it
/// answers again.
#[tokio::test]
async fn a_worker_unreachable_during_coordinator_recovery_releases_old_locks_later() {
    let mut cluster = cluster_with_rows().await;
    let c = cluster.coordinator.connect().await;
    c.batch_execute("BEGIN; UPDATE t SET v = 'held' WHERE k <= 50")
        .await
        .unwrap();
    let pid = cluster.workers[1].pid().unwrap().to_string();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    };
    signal("-STOP");
    cluster.restart_coordinator().unwrap();
    drop(c);
    let c = cluster.coordinator.connect().await;
    // recovery gave up on the stopped worker; it answers again now
    signal("-CONT");
    c.batch_execute("SET lock_timeout = '20s'").await.unwrap();
    let n = c
        .execute("UPDATE t SET v = 'mine' WHERE k <= 50", &[])
        .await
        .expect("the old transaction's locks must be released once the worker answers");
    assert_eq!(n, 50);
}

/// `orochi_raft_status()` of one coordinator: (node_id, role, term, leader_id, members).
async fn raft_status(c: &tokio_postgres::Client) -> (i64, String, i64, Option<i64>, String) {
    let r = c
        .query_one(
            "SELECT node_id, role, term, leader_id, commit_index, applied_index, members \
             FROM orochi_raft_status()",
            &[],
        )
        .await
        .unwrap();
    let (commit, applied): (i64, i64) = (r.get(4), r.get(5));
    assert!(applied <= commit, "applied {applied} > committed {commit}");
    (r.get(0), r.get(1), r.get(2), r.get(3), r.get(6))
}

/// What a coordinator's catalog holds, as its clients see it.
async fn catalog_view(c: &tokio_postgres::Client) -> Vec<String> {
    c.query(
        "SELECT c.relname || ':' || c.oid::text || ':' || a.attname || ':' || \
                format_type(a.atttypid, a.atttypmod) \
         FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND a.attnum > 0 ORDER BY 1",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

async fn eventually<F, Fut>(what: &str, mut ok: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok().await {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Three coordinators over two workers: one Raft leader; DDL through any coordinator (a
/// follower forwards it) is in every catalog, and rows written through one are read through
/// another. The leader is killed: the other two elect a new one and DDL still works; the
/// catalogs of the survivors are identical; the killed one restarts and catches up.
#[tokio::test]
async fn three_coordinators_share_one_raft_catalog_and_survive_a_leader_kill() {
    let mut g = orochi_sql_tests::Group::start(3, 2).unwrap();
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(g.coordinator(i).connect().await);
    }
    let mut leaders = BTreeSet::new();
    for (i, c) in clients.iter().enumerate() {
        let (id, role, _, leader, members) = raft_status(c).await;
        assert_eq!(id, i as i64 + 1);
        assert!(["leader", "follower"].contains(&role.as_str()), "{role}");
        assert_eq!(members.split(',').count(), 3, "{members}");
        leaders.insert(leader.expect("a leader is known"));
        if role == "leader" {
            assert_eq!(leader, Some(id));
        }
    }
    assert_eq!(leaders.len(), 1, "one leader for all: {leaders:?}");
    let leader = *leaders.iter().next().unwrap() as usize - 1;
    let follower = (leader + 1) % 3;

    // DDL through a follower and through the leader
    clients[follower]
        .batch_execute("CREATE TABLE t (k int PRIMARY KEY, v text)")
        .await
        .unwrap();
    clients[leader]
        .batch_execute("CREATE TABLE u (id bigint PRIMARY KEY, n numeric(10,2))")
        .await
        .unwrap();
    // a name taken through another coordinator is taken
    let err = clients[(leader + 2) % 3]
        .batch_execute("CREATE TABLE t (x int)")
        .await;
    let err = match err {
        Ok(()) => {
            // not applied there yet when it parsed: it still cannot create a second `t`
            panic!("a second table t was created")
        }
        Err(e) => e,
    };
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::DUPLICATE_TABLE),
        "{err}"
    );
    // rows written through each coordinator, read through every one
    for (i, c) in clients.iter().enumerate() {
        let (from, to) = (i * 100 + 1, i * 100 + 100);
        c.batch_execute(&format!(
            "INSERT INTO t SELECT g, 'c{i}' FROM generate_series({from}, {to}) g"
        ))
        .await
        .unwrap();
    }
    for c in &clients {
        let n: i64 = c
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 300);
    }
    // a worker registering with one coordinator is known to all (one order, the log's), and
    // a table created afterwards through another places shards on it
    g.register_worker(follower).unwrap();
    for c in &clients {
        eventually("the third worker everywhere", || async move {
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM orochi_cluster_status() WHERE role = 'worker' AND state = 'up'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            n == 3
        })
        .await;
    }
    let third = format!("127.0.0.1:{}", g.workers[2].port);
    clients[leader]
        .batch_execute(
            "CREATE TABLE w3 (k int PRIMARY KEY); INSERT INTO w3 SELECT g FROM generate_series(1, 100) g",
        )
        .await
        .unwrap();
    for c in &clients {
        let on_third: i64 = c
            .query_one(
                "SELECT coalesce(sum(row_count), 0)::bigint FROM orochi_shard_distribution() \
                 WHERE table_name = 'public.w3' AND worker = $1",
                &[&third],
            )
            .await
            .unwrap()
            .get(0);
        assert!(on_third > 0, "rows of w3 on {third}");
        let n: i64 = c
            .query_one("SELECT count(*) FROM w3", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 100);
    }
    let first = catalog_view(&clients[0]).await;
    assert!(first.iter().any(|l| l.starts_with("u:")), "{first:?}");
    for c in &clients[1..] {
        assert_eq!(catalog_view(c).await, first);
    }

    // the leader dies
    g.kill(leader);
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    for &i in &survivors {
        eventually("a new leader", || {
            let c = &clients[i];
            async move {
                let (_, _, _, l, _) = raft_status(c).await;
                l.is_some_and(|l| l as usize - 1 != leader)
            }
        })
        .await;
    }
    for &i in &survivors {
        clients[i]
            .batch_execute(&format!("CREATE TABLE after_{i} (k int PRIMARY KEY)"))
            .await
            .unwrap();
        clients[i]
            .execute(&format!("INSERT INTO after_{i} VALUES (1), (2)"), &[])
            .await
            .unwrap();
    }
    for &i in &survivors {
        let c = &clients[i];
        eventually("both tables on every survivor", || async move {
            catalog_view(c)
                .await
                .iter()
                .filter(|l| l.starts_with("after_"))
                .count()
                == 2
        })
        .await;
    }
    let a = catalog_view(&clients[survivors[0]]).await;
    assert_eq!(catalog_view(&clients[survivors[1]]).await, a);
    let n: i64 = clients[survivors[1]]
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 300);

    // the killed coordinator comes back as a follower, with everything it missed
    g.restart(leader).unwrap();
    let back = g.coordinator(leader).connect().await;
    eventually("the restarted coordinator catches up", || {
        let back = &back;
        let a = a.clone();
        async move { catalog_view(back).await == a }
    })
    .await;
    let (_, role, _, _, _) = raft_status(&back).await;
    assert_eq!(role, "follower");
    let n: i64 = back
        .query_one(&format!("SELECT count(*) FROM after_{}", survivors[0]), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}

/// COPY rows `keys` into `loaded`; the number of rows, or the error's SQLSTATE.
async fn copy_keys(c: &tokio_postgres::Client, keys: &[i32]) -> Result<u64, String> {
    use futures::SinkExt;
    let data: String = keys.iter().map(|k| format!("{k}\tv{k}\n")).collect();
    let sink = c
        .copy_in("COPY loaded FROM STDIN")
        .await
        .map_err(|e| format!("{e:?}"))?;
    futures::pin_mut!(sink);
    let sent = sink.send(bytes::Bytes::from(data)).await;
    let done = match sent {
        Ok(()) => sink.finish().await,
        Err(e) => Err(e),
    };
    done.map_err(|e| {
        e.code()
            .map_or_else(|| format!("{e:?}"), |s| s.code().to_string())
    })
}

/// (rows, sum of keys) of `loaded`, and the rows each storage tier holds.
async fn loaded_state(c: &tokio_postgres::Client) -> ((i64, i64), Vec<(String, i64)>) {
    let r = c
        .query_one(
            "SELECT count(*), coalesce(sum(k), 0)::bigint FROM loaded",
            &[],
        )
        .await
        .unwrap();
    let tiers = c
        .query(
            "SELECT tier, row_count::bigint FROM orochi_storage_stats() \
             WHERE table_name = 'public.loaded' ORDER BY tier",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    ((r.get(0), r.get(1)), tiers)
}

/// COPY into a distributed table ships Arrow batches to the workers that own the rows
/// (Flight `DoPut`), where they become columnar segments; a COPY that loaded on both workers
/// commits on both in one two-phase commit. A duplicate key on one worker leaves nothing
/// loaded on the other, and loaded rows survive `kill -9` of a worker.
#[tokio::test]
async fn copy_loads_columnar_segments_on_both_workers_atomically() {
    let mut cluster = Cluster::start(2).unwrap();
    let c = cluster.coordinator.connect().await;
    c.batch_execute("CREATE TABLE loaded (k int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let keys: Vec<i32> = (1..=20_000).collect();
    assert_eq!(copy_keys(&c, &keys).await, Ok(20_000));
    let sum: i64 = keys.iter().map(|&k| k as i64).sum();
    let want = ((20_000, sum), vec![("columnar".to_string(), 20_000)]);
    assert_eq!(loaded_state(&c).await, want, "segments, not the row store");
    let per_worker: Vec<i64> = c
        .query(
            "SELECT sum(row_count)::bigint FROM orochi_shard_distribution() \
             WHERE table_name = 'public.loaded' GROUP BY worker ORDER BY worker",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(per_worker.len(), 2, "{per_worker:?}");
    assert!(per_worker.iter().all(|&n| n > 5_000), "{per_worker:?}");

    // new keys on both workers and one already loaded: nothing of it stays, anywhere
    let mut again: Vec<i32> = (20_001..=21_000).collect();
    again.push(7);
    assert_eq!(copy_keys(&c, &again).await, Err("23505".to_string()));
    // and a key twice in one COPY
    let twice: Vec<i32> = (21_001..=22_000).chain([21_500]).collect();
    assert_eq!(copy_keys(&c, &twice).await, Err("23505".to_string()));
    assert_eq!(
        loaded_state(&c).await,
        want,
        "a failed COPY left rows behind"
    );

    // inside a transaction, with a row written before it: all of it or none
    c.batch_execute("BEGIN; INSERT INTO loaded VALUES (0, 'zero')")
        .await
        .unwrap();
    assert_eq!(copy_keys(&c, &[30_001, 30_002, 30_003]).await, Ok(3));
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(loaded_state(&c).await, want);

    // acknowledged, the segments survive kill -9 of either worker
    cluster.workers[1].kill();
    cluster.restart_worker(1).unwrap();
    cluster.workers[0].kill();
    cluster.restart_worker(0).unwrap();
    let c = cluster.coordinator.connect().await;
    assert_eq!(loaded_state(&c).await, want);
    let got = c
        .query_one("SELECT v FROM loaded WHERE k = 12345", &[])
        .await
        .unwrap();
    assert_eq!(got.get::<_, String>(0), "v12345");
}

/// A coordinator that dies in the middle of a two-phase commit leaves its transaction
/// prepared on the workers, holding row locks. The decision is replicated in the Raft
/// catalog, so the surviving coordinators finish it: abort when it died before deciding,
/// commit when it died after — and the rows are writable again without it.
#[tokio::test]
async fn survivors_finish_the_transactions_a_dead_coordinator_left_in_doubt() {
    let mut g = orochi_sql_tests::Group::start(3, 2).unwrap();
    let c0 = g.coordinator(0).connect().await;
    c0.batch_execute(
        "CREATE TABLE doubt (k int PRIMARY KEY, v text);
         INSERT INTO doubt SELECT g, 'old' FROM generate_series(1, 200) g",
    )
    .await
    .unwrap();
    let count = |v: &'static str| {
        let c0 = &c0;
        async move {
            c0.query_one("SELECT count(*) FROM doubt WHERE v = $1", &[&v])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    // writable through a survivor: the in-doubt transaction's row locks are gone
    let writable = || {
        let c0 = &c0;
        async move {
            c0.batch_execute("SET lock_timeout = '200ms'; UPDATE doubt SET k = k WHERE k = 1")
                .await
                .is_ok()
        }
    };

    for (failpoint, value, committed) in [
        ("crash-before-decision", "aborted", false),
        ("crash-after-decision", "committed", true),
    ] {
        g.restart_with(2, &[("OROCHI_FAILPOINT", failpoint)])
            .unwrap();
        let c2 = g.coordinator(2).connect().await;
        // every row: a transaction on both workers, so a two-phase commit
        let r = c2
            .execute(&format!("UPDATE doubt SET v = '{value}'"), &[])
            .await;
        assert!(r.is_err(), "{failpoint}: the coordinator should have died");
        assert!(
            !writable().await,
            "{failpoint}: the rows are locked while in doubt"
        );
        let start = Instant::now();
        eventually(&format!("{failpoint}: resolved by a survivor"), writable).await;
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "{:?}",
            start.elapsed()
        );
        let want = if committed { (200, 0) } else { (0, 200) };
        assert_eq!(
            (count(value).await, count("old").await),
            want,
            "{failpoint}"
        );
        if committed {
            c0.batch_execute("UPDATE doubt SET v = 'old'")
                .await
                .unwrap();
        }
    }
    // the dead coordinator comes back without a failpoint and serves
    g.restart(2).unwrap();
    let c2 = g.coordinator(2).connect().await;
    let n: i64 = c2
        .query_one("SELECT count(*) FROM doubt WHERE v = 'old'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 200);
}

/// `create_distributed_table` of a table with rows rewrites it while clients insert into it:
/// an insert either is acknowledged and in the re-placed table, or fails (55006 while the
/// table is frozen, or 42P01 if it raced the switch), never acknowledged and lost.
#[tokio::test]
async fn a_table_rewrite_loses_no_acknowledged_write() {
    let cluster = Cluster::start(2).unwrap();
    let c = cluster.coordinator.connect().await;
    c.batch_execute(
        "CREATE TABLE moving (k int PRIMARY KEY, v int);
         INSERT INTO moving SELECT g, g FROM generate_series(1, 20000) g",
    )
    .await
    .unwrap();
    let url = cluster.coordinator.url();
    let writer = tokio::spawn(async move {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut acked = Vec::new();
        let mut refused = 0;
        for k in 100_001..100_400 {
            match client
                .execute("INSERT INTO moving VALUES ($1, 0)", &[&k])
                .await
            {
                Ok(_) => acked.push(k),
                Err(e) => {
                    let code = e.code().map(|c| c.code().to_string());
                    assert!(
                        matches!(code.as_deref(), Some("55006" | "42P01" | "40001")),
                        "{e:?}"
                    );
                    refused += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (acked, refused)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.batch_execute("SELECT create_distributed_table('moving', 'k', shard_count => 8)")
        .await
        .unwrap();
    let (acked, _refused) = writer.await.unwrap();
    let stored: BTreeSet<i32> = c
        .query("SELECT k FROM moving WHERE k > 100000", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lost: Vec<&i32> = acked.iter().filter(|k| !stored.contains(k)).collect();
    assert!(lost.is_empty(), "acknowledged inserts lost: {lost:?}");
    let n: i64 = c
        .query_one("SELECT count(*) FROM moving WHERE k <= 20000", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 20000);
    let shards: i64 = c
        .query_one(
            "SELECT count(*) FROM orochi_shard_distribution() WHERE table_name = 'public.moving'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(shards, 8);
}
