//! Durability against real processes: clean restart, `kill -9` under a commit load, and the
//! data-directory lock.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use orochi_sql_tests::{Server, binary, free_port};
use tokio::sync::Mutex;
use tokio_postgres::NoTls;

#[tokio::test]
async fn data_survives_a_clean_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut server = Server::start_on(0, &dir).unwrap();
    let port = server.port;
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE SCHEMA app;
             CREATE TABLE app.items (id serial PRIMARY KEY, name text NOT NULL, price numeric(10,2));
             INSERT INTO app.items (name, price) VALUES ('a', 1.50), ('b', 2.25), ('c', 3);
             UPDATE app.items SET price = price * 2 WHERE name = 'b';
             DELETE FROM app.items WHERE name = 'c';
             ALTER TABLE app.items ADD COLUMN note text DEFAULT 'n/a';
             CREATE TABLE nokey (v int);
             INSERT INTO nokey SELECT * FROM (VALUES (1), (2), (2)) AS t(v);",
        )
        .await
        .unwrap();
    drop(client);
    assert!(server.terminate(), "SIGTERM must shut down cleanly");

    let server = Server::start_on(port, &dir).unwrap();
    let client = server.connect().await;
    let rows = client
        .query(
            "SELECT id, name, price::text, note FROM app.items ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(i32, String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, "a".into(), "1.50".into(), "n/a".into()),
            (2, "b".into(), "4.50".into(), "n/a".into()),
        ]
    );
    // the serial sequence does not hand out a used value again
    let id: i32 = client
        .query_one(
            "INSERT INTO app.items (name) VALUES ('d') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(id > 3, "sequence went backwards after restart: {id}");
    let n: i64 = client
        .query_one("SELECT count(*) FROM nokey WHERE v = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}

/// Four clients commit in a loop (single statements and 3-row transaction blocks); the server
/// is killed with SIGKILL mid-stream. After a restart every acknowledged row is there, and no
/// transaction block is half there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut server = Server::start_on(0, &dir).unwrap();
    let port = server.port;
    let setup = server.connect().await;
    setup
        .batch_execute("CREATE TABLE acks (id int8 PRIMARY KEY, client int4, block int8)")
        .await
        .unwrap();

    let acked: Arc<Mutex<BTreeSet<i64>>> = Arc::default();
    let blocks: Arc<Mutex<Vec<[i64; 3]>>> = Arc::default();
    let mut tasks = Vec::new();
    for c in 0..4i64 {
        let (client, conn) = tokio_postgres::connect(&server.url(), NoTls).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let acked = acked.clone();
        let blocks = blocks.clone();
        tasks.push(tokio::spawn(async move {
            let insert = client
                .prepare("INSERT INTO acks VALUES ($1, $2, $3)")
                .await
                .unwrap();
            for i in 0i64.. {
                let base = (c << 40) | (i << 2);
                if i % 5 == 4 {
                    let block = [base, base + 1, base + 2];
                    let r = async {
                        client.batch_execute("BEGIN").await?;
                        for id in block {
                            client.execute(&insert, &[&id, &(c as i32), &base]).await?;
                        }
                        client.batch_execute("COMMIT").await
                    }
                    .await;
                    if r.is_err() {
                        return;
                    }
                    blocks.lock().await.push(block);
                    acked.lock().await.extend(block);
                } else {
                    if client
                        .execute(&insert, &[&base, &(c as i32), &0i64])
                        .await
                        .is_err()
                    {
                        return;
                    }
                    acked.lock().await.insert(base);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    server.kill();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().await.clone();
    assert!(
        acked.len() > 100,
        "too few commits before the kill to prove anything: {}",
        acked.len()
    );

    let server = Server::start_on(port, &dir).unwrap();
    let client = server.connect().await;
    let present: BTreeSet<i64> = client
        .query("SELECT id FROM acks", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lost: Vec<_> = acked.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged rows lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    // transaction blocks are atomic: all three rows or none (the in-flight one may be either)
    let rows = client
        .query(
            "SELECT block, count(*) FROM acks WHERE block <> 0 GROUP BY block",
            &[],
        )
        .await
        .unwrap();
    for r in rows {
        let (block, n): (i64, i64) = (r.get(0), r.get(1));
        assert_eq!(n, 3, "transaction block {block} is partially present");
    }
    // and the table is writable again
    client
        .execute("INSERT INTO acks VALUES (-1, -1, 0)", &[])
        .await
        .unwrap();
}

#[test]
fn a_second_process_on_the_same_data_dir_is_refused() {
    let server = Server::start().unwrap();
    let out = std::process::Command::new(binary("orochi-coordinator"))
        .args([
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--data-dir",
        ])
        .arg(&server.data_dir)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("in use by another OrochiDB process"),
        "unexpected message: {stderr}"
    );
}
