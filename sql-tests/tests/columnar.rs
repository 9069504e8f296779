//! COPY into columnar segments, against a real standalone server: loaded rows are read,
//! updated and deleted like any other; uniqueness holds against committed rows, the load
//! itself and concurrent transactions; a load survives `kill -9`; a failed one leaves nothing.

use futures::SinkExt;
use orochi_sql_tests::Server;

async fn copy(client: &tokio_postgres::Client, table: &str, data: String) -> Result<u64, String> {
    let sink = client
        .copy_in(&format!("COPY {table} FROM STDIN (FORMAT csv)"))
        .await
        .map_err(|e| e.to_string())?;
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from(data))
        .await
        .map_err(|e| e.to_string())?;
    sink.finish().await.map_err(|e| {
        e.as_db_error()
            .map(|d| format!("{} {}", d.code().code(), d.detail().unwrap_or_default()))
            .unwrap_or_else(|| e.to_string())
    })
}

fn rows(range: std::ops::Range<i64>) -> String {
    range
        .map(|i| format!("{i},name {i},{}.50\n", i % 100))
        .collect()
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

const TABLE: &str = "CREATE TABLE seg (id bigint PRIMARY KEY, name text, amt numeric(10,2))";

/// 300,000 rows (several runs per shard) land in segment files and read back exactly: full
/// scans, aggregates, point lookups, updates and deletes of loaded rows, a deleted key loaded
/// again, and sizes from the segments.
#[tokio::test]
async fn loaded_rows_behave_like_rows() {
    let server = Server::start().expect("server");
    let c = server.connect().await;
    c.batch_execute(TABLE).await.unwrap();
    assert_eq!(copy(&c, "seg", rows(1..300_001)).await, Ok(300_000));
    let files = std::fs::read_dir(server.data_dir.join("worker/segments"))
        .unwrap()
        .count();
    assert!(files >= 32, "the load is in segment files: {files}");

    assert_eq!(count(&c, "SELECT count(*) FROM seg").await, 300_000);
    let sum: String = c
        .query_one("SELECT sum(amt)::text FROM seg", &[])
        .await
        .unwrap()
        .get(0);
    // 3000 times each of 0.50 … 99.50
    assert_eq!(sum, "15000000.00");
    let r = c
        .query_one("SELECT name FROM seg WHERE id = 123457", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "name 123457");

    c.batch_execute(
        "UPDATE seg SET name = 'changed' WHERE id = 10;
         DELETE FROM seg WHERE id BETWEEN 20 AND 29;
         UPDATE seg SET id = 400000 WHERE id = 30;",
    )
    .await
    .unwrap();
    assert_eq!(count(&c, "SELECT count(*) FROM seg").await, 299_990);
    let names: Vec<String> = c
        .query(
            "SELECT name FROM seg WHERE id IN (10, 25, 30, 400000) ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, vec!["changed", "name 30"]);
    // deleted keys load again; a key that is still live does not
    assert_eq!(copy(&c, "seg", rows(20..25)).await, Ok(5));
    assert_eq!(
        count(&c, "SELECT count(*) FROM seg WHERE id BETWEEN 20 AND 29").await,
        5
    );
    assert_eq!(
        copy(&c, "seg", rows(25..27).replace("26,", "10,")).await,
        Err("23505 Key (id)=(10) already exists.".into())
    );
    assert_eq!(count(&c, "SELECT count(*) FROM seg").await, 299_995);
    let dist = count(
        &c,
        "SELECT sum(row_count)::int8 FROM orochi_shard_distribution() WHERE table_name = 'public.seg'",
    )
    .await;
    assert_eq!(
        dist, 299_995,
        "row counts see through tombstones and new versions"
    );
}

/// A duplicate inside one COPY, or against committed rows, fails the COPY with 23505 and loads
/// nothing; inside a transaction block a failed load rolls back to a savepoint.
#[tokio::test]
async fn duplicates_fail_the_load_and_leave_nothing() {
    let server = Server::start().expect("server");
    let c = server.connect().await;
    c.batch_execute(TABLE).await.unwrap();
    // far apart in one COPY: different runs of one shard
    let mut data = rows(1..200_001);
    data.push_str("7,again,1\n");
    assert_eq!(
        copy(&c, "seg", data).await,
        Err("23505 Key (id)=(7) already exists.".into())
    );
    assert_eq!(count(&c, "SELECT count(*) FROM seg").await, 0);

    c.batch_execute("INSERT INTO seg VALUES (5, 'row', 1)")
        .await
        .unwrap();
    assert_eq!(
        copy(&c, "seg", rows(1..10)).await,
        Err("23505 Key (id)=(5) already exists.".into())
    );
    assert_eq!(count(&c, "SELECT count(*) FROM seg").await, 1);

    c.batch_execute("BEGIN; SAVEPOINT before").await.unwrap();
    assert_eq!(copy(&c, "seg", rows(100..200)).await, Ok(100));
    assert_eq!(count(&c, "SELECT count(*) FROM seg").await, 101);
    c.batch_execute("ROLLBACK TO before").await.unwrap();
    assert_eq!(count(&c, "SELECT count(*) FROM seg").await, 1);
    assert_eq!(copy(&c, "seg", rows(200..210)).await, Ok(10));
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(count(&c, "SELECT count(*) FROM seg").await, 11);
}

/// Loads take no row locks, so a concurrent insert of a loaded key is caught at commit: by
/// the load when the insert committed first, by the insert when the load did.
#[tokio::test]
async fn concurrent_inserts_and_loads_keep_keys_unique() {
    let server = Server::start().expect("server");
    let a = server.connect().await;
    let b = server.connect().await;
    a.batch_execute(TABLE).await.unwrap();

    // the insert commits first: the load's commit fails
    a.batch_execute("BEGIN").await.unwrap();
    assert_eq!(copy(&a, "seg", rows(1..1000)).await, Ok(999));
    b.batch_execute("INSERT INTO seg VALUES (500, 'b', 1)")
        .await
        .unwrap();
    let err = a.batch_execute("COMMIT").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "23505", "{err:?}");
    assert_eq!(count(&b, "SELECT count(*) FROM seg").await, 1);

    // the load commits first: the insert's commit fails
    b.batch_execute("BEGIN; INSERT INTO seg VALUES (2500, 'b', 1)")
        .await
        .unwrap();
    assert_eq!(copy(&a, "seg", rows(2000..3000)).await, Ok(1000));
    let err = b.batch_execute("COMMIT").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "23505", "{err:?}");
    assert_eq!(count(&a, "SELECT count(*) FROM seg").await, 1001);
    let r = a
        .query_one("SELECT name FROM seg WHERE id = 2500", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "name 2500");
}

/// An acknowledged COPY survives `kill -9`; segment files of a load in progress at the kill
/// are removed at restart and their rows never appear.
#[tokio::test]
async fn an_acknowledged_load_survives_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut server = Server::start_on(0, &dir).unwrap();
    let port = server.port;
    let c = server.connect().await;
    c.batch_execute(TABLE).await.unwrap();
    assert_eq!(copy(&c, "seg", rows(1..150_001)).await, Ok(150_000));
    // a second load, not committed: a savepoint writes its buffers out as runs
    c.batch_execute("BEGIN").await.unwrap();
    assert_eq!(copy(&c, "seg", rows(200_000..300_000)).await, Ok(100_000));
    c.batch_execute("SAVEPOINT s").await.unwrap();
    let files = |d: &std::path::Path| {
        std::fs::read_dir(d.join("worker/segments"))
            .unwrap()
            .count()
    };
    let before = files(&dir);
    server.kill();

    let server = Server::start_on(port, &dir).unwrap();
    let c = server.connect().await;
    assert_eq!(count(&c, "SELECT count(*) FROM seg").await, 150_000);
    assert_eq!(
        count(&c, "SELECT count(*) FROM seg WHERE id >= 200000").await,
        0
    );
    let after = files(&dir);
    assert!(
        after < before,
        "unregistered runs removed: {before} -> {after}"
    );
    let r = c
        .query_one("SELECT name FROM seg WHERE id = 149999", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "name 149999");
}

/// Row-store and columnar row counts of a table (`orochi_storage_stats()`).
async fn tiers(c: &tokio_postgres::Client, table: &str) -> (i64, i64) {
    let r = c
        .query_one(
            "SELECT coalesce(sum(row_count) FILTER (WHERE tier = 'row'), 0)::bigint, \
                    coalesce(sum(row_count) FILTER (WHERE tier = 'columnar'), 0)::bigint \
             FROM orochi_storage_stats() WHERE table_name = $1",
            &[&table],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

async fn contents(c: &tokio_postgres::Client) -> Vec<(i64, i64)> {
    c.query("SELECT id, v FROM hot ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Rows written by ordinary statements move from the row store into columnar segments in
/// the background (here by size, 500 rows a shard, and by age, one second), and nothing a
/// reader sees changes: scans running all along count a static table exactly, a writer
/// updating, deleting and inserting meanwhile finds exactly what it acknowledged, and all of
/// it survives `kill -9`.
#[tokio::test]
async fn row_store_rows_move_into_segments_in_the_background() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let config = tmp.path().join("orochi.toml");
    std::fs::write(
        &config,
        "conversion_rows = 500\nhot_tier_age_secs = 1\nconversion_check_ms = 100\n",
    )
    .unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let mut server = Server::start_on_with(0, &dir, &args).unwrap();
    let port = server.port;
    let c = server.connect().await;
    c.batch_execute(
        "CREATE TABLE still (id bigint PRIMARY KEY, v bigint);
         INSERT INTO still SELECT i, i FROM generate_series(1, 40000) i;
         CREATE TABLE hot (id bigint PRIMARY KEY, v bigint);
         INSERT INTO hot SELECT i, i FROM generate_series(1, 20000) i;",
    )
    .await
    .unwrap();
    let mut model: std::collections::BTreeMap<i64, i64> = (1..=20_000).map(|i| (i, i)).collect();

    // scans of a table nobody writes, while its shards are converted
    let reader = server.connect().await;
    let scans = tokio::spawn(async move {
        let mut n = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let r = reader
                .query_one("SELECT count(*), sum(v)::bigint FROM still", &[])
                .await
                .unwrap();
            assert_eq!(
                (r.get::<_, i64>(0), r.get::<_, i64>(1)),
                (40_000, 40_000 * 40_001 / 2),
                "scan {n}"
            );
            n += 1;
            let (row, columnar) = tiers(&reader, "public.still").await;
            if row == 0 && columnar == 40_000 && n >= 5 {
                return n;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not converted: {row} rows left"
            );
        }
    });

    // a writer on the other table, for several conversion rounds
    let writer = server.connect().await;
    let start = std::time::Instant::now();
    let mut round = 0i64;
    while start.elapsed() < std::time::Duration::from_secs(6) {
        let k = 1 + (round * 7919) % 20_000;
        writer
            .execute("UPDATE hot SET v = v + 1 WHERE id = $1", &[&k])
            .await
            .unwrap();
        if let Some(v) = model.get_mut(&k) {
            *v += 1;
        }
        let d = 1 + (round * 104_729 + 13) % 20_000;
        writer
            .execute("DELETE FROM hot WHERE id = $1", &[&d])
            .await
            .unwrap();
        model.remove(&d);
        let new = 100_000 + round;
        writer
            .execute("INSERT INTO hot VALUES ($1, $2)", &[&new, &round])
            .await
            .unwrap();
        model.insert(new, round);
        round += 1;
    }
    let scanned = scans.await.unwrap();
    assert!(scanned >= 5, "{scanned} scans");
    let want: Vec<(i64, i64)> = model.iter().map(|(k, v)| (*k, *v)).collect();
    assert_eq!(contents(&c).await, want, "after {round} rounds of writes");
    let (_, columnar) = tiers(&c, "public.hot").await;
    assert!(columnar > 0, "hot's rows were converted too");
    // point reads find converted rows
    let r = c
        .query_one("SELECT v FROM still WHERE id = 31337", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, i64>(0), 31_337);

    server.kill();
    let server = Server::start_on_with(port, &dir, &args).unwrap();
    let c = server.connect().await;
    assert_eq!(contents(&c).await, want, "after kill -9");
    assert_eq!(count(&c, "SELECT count(*) FROM still").await, 40_000);
    assert_eq!(tiers(&c, "public.still").await, (0, 40_000));
}
