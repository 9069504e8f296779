//! Client-protocol tests through tokio-postgres against a real `orochi-coordinator` process.

use futures::SinkExt;
use orochi_sql_tests::Server;

/// A COPY whose final line has no newline and completes a write chunk:
/// every row must arrive (a regression test for rows dropped at the end of COPY).
#[tokio::test]
async fn copy_from_stdin_keeps_every_row() {
    let server = Server::start().expect("server");
    let client = server.connect().await;
    client
        .batch_execute("CREATE TABLE copy_t (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    // 4,999 complete lines (below the 5,000-row write chunk), then one line without a newline
    let mut data = String::new();
    for i in 0..4_999 {
        data.push_str(&format!("{i}\tv{i}\n"));
    }
    let sink = client.copy_in("COPY copy_t FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from(data)).await.unwrap();
    sink.send(bytes::Bytes::from("4999\tlast")).await.unwrap();
    let n = sink.finish().await.unwrap();
    assert_eq!(n, 5_000);
    let row = client
        .query_one("SELECT count(*) FROM copy_t", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 5_000);
}

/// A bad row fails the whole COPY with 22P02 and leaves nothing behind.
#[tokio::test]
async fn copy_bad_row_loads_nothing() {
    let server = Server::start().expect("server");
    let client = server.connect().await;
    client
        .batch_execute("CREATE TABLE copy_bad (id int PRIMARY KEY)")
        .await
        .unwrap();
    let sink = client.copy_in("COPY copy_bad FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from("1\n2\nnot-a-number\n4\n"))
        .await
        .unwrap();
    let err = sink.finish().await.unwrap_err();
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("22P02"));
    // the line number is in CONTEXT, where Postgres puts it
    let context = err
        .as_db_error()
        .and_then(|e| e.where_())
        .unwrap_or_default();
    assert!(context.starts_with("COPY copy_bad, line 3"), "{context}");
    let row = client
        .query_one("SELECT count(*) FROM copy_bad", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 0);
}

/// Binary COPY FROM: a malformed tuple (wrong field count, a value of the wrong width) fails
/// the COPY with 22P04 / 22P03 and loads nothing; a good stream loads every row.
#[tokio::test]
async fn copy_binary_from_stdin() {
    let server = Server::start().expect("server");
    let client = server.connect().await;
    client
        .batch_execute("CREATE TABLE copy_bin (id int PRIMARY KEY, v text, n int8)")
        .await
        .unwrap();
    let header = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
    let tuple = |id: i32, v: Option<&str>, n: i64| {
        let mut t = 3i16.to_be_bytes().to_vec();
        t.extend(4i32.to_be_bytes());
        t.extend(id.to_be_bytes());
        match v {
            Some(v) => {
                t.extend((v.len() as i32).to_be_bytes());
                t.extend(v.as_bytes());
            }
            None => t.extend((-1i32).to_be_bytes()),
        }
        t.extend(8i32.to_be_bytes());
        t.extend(n.to_be_bytes());
        t
    };
    let trailer = (-1i16).to_be_bytes().to_vec();
    let load = |chunks: Vec<Vec<u8>>| {
        let client = &client;
        async move {
            let sink = client
                .copy_in("COPY copy_bin FROM STDIN (FORMAT binary)")
                .await
                .unwrap();
            futures::pin_mut!(sink);
            for c in chunks {
                sink.send(bytes::Bytes::from(c)).await?;
            }
            sink.finish().await
        }
    };
    // a tuple split across messages, a NULL, then the trailer
    let mut all = header.clone();
    all.extend(tuple(1, Some("one"), 10));
    all.extend(tuple(2, None, 20));
    all.extend(&trailer);
    let (a, b) = all.split_at(25);
    assert_eq!(load(vec![a.to_vec(), b.to_vec()]).await.unwrap(), 2);

    // second tuple has two fields: 22P04, and the first tuple is not loaded either
    let mut bad = header.clone();
    bad.extend(tuple(3, Some("three"), 30));
    bad.extend(2i16.to_be_bytes());
    bad.extend(&trailer);
    let e = load(vec![bad]).await.unwrap_err();
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::BAD_COPY_FILE_FORMAT)
    );

    // an int4 sent in 2 bytes: 22P03
    let mut bad = header.clone();
    let mut t = tuple(4, Some("four"), 40);
    t.splice(2..10, 2i32.to_be_bytes().iter().copied().chain([0u8, 4]));
    bad.extend(t);
    bad.extend(&trailer);
    let e = load(vec![bad]).await.unwrap_err();
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_BINARY_REPRESENTATION)
    );

    // no trailer: 22P04
    let mut bad = header.clone();
    bad.extend(tuple(5, Some("five"), 50));
    let e = load(vec![bad]).await.unwrap_err();
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::BAD_COPY_FILE_FORMAT)
    );

    let rows = client
        .query("SELECT id, v, n FROM copy_bin ORDER BY id", &[])
        .await
        .unwrap();
    let got: Vec<(i32, Option<String>, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(got, vec![(1, Some("one".into()), 10), (2, None, 20)]);
}

async fn show(c: &tokio_postgres::Client, name: &str) -> String {
    c.query_one(&format!("SHOW {name}"), &[])
        .await
        .unwrap()
        .get::<_, String>(0)
}

/// ALTER SYSTEM stores a parameter durably; it applies after pg_reload_conf() (to sessions
/// that did not SET it themselves) and after a restart; ALTER SYSTEM RESET takes it back.
#[tokio::test]
async fn alter_system_persists_and_reloads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let port;
    {
        let server = Server::start_on(0, &dir).unwrap();
        port = server.port;
        let a = server.connect().await;
        let b = server.connect().await;
        b.batch_execute("SET orochi.compression_level = 9")
            .await
            .unwrap();
        a.batch_execute("ALTER SYSTEM SET orochi.compression_level = 5; ALTER SYSTEM SET statement_timeout = '90s'")
            .await
            .unwrap();
        // not before a reload
        assert_eq!(show(&a, "orochi.compression_level").await, "3");
        let reloaded: bool = a
            .query_one("SELECT pg_reload_conf()", &[])
            .await
            .unwrap()
            .get(0);
        assert!(reloaded);
        assert_eq!(show(&a, "orochi.compression_level").await, "5");
        assert_eq!(show(&a, "statement_timeout").await, "90s");
        // a session's own SET wins over the server's value
        assert_eq!(show(&b, "orochi.compression_level").await, "9");
        let e = a
            .batch_execute("ALTER SYSTEM SET orochi.compression_level = 99")
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::INVALID_PARAMETER_VALUE)
        );
    }
    let server = Server::start_on(port, &dir).unwrap();
    let c = server.connect().await;
    assert_eq!(show(&c, "orochi.compression_level").await, "5");
    assert_eq!(show(&c, "statement_timeout").await, "90s");
    let source: String = c
        .query_one(
            "SELECT source FROM pg_settings WHERE name = 'orochi.compression_level'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(source, "configuration file");
    c.batch_execute("ALTER SYSTEM RESET orochi.compression_level; SELECT pg_reload_conf()")
        .await
        .unwrap();
    assert_eq!(show(&c, "orochi.compression_level").await, "3");
    assert_eq!(show(&c, "statement_timeout").await, "90s");
    c.batch_execute("ALTER SYSTEM RESET ALL; SELECT pg_reload_conf()")
        .await
        .unwrap();
    assert_eq!(show(&c, "statement_timeout").await, "0");
}

/// Uncommitted writes have a memory budget (`write_set_limit_bytes`): a COPY that outgrows it
/// fails with 53200 and loads nothing; the server stays up, and work within the budget goes on.
#[tokio::test]
async fn write_set_budget_fails_with_53200_not_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("orochi.toml");
    std::fs::write(
        &config,
        "memory_limit_bytes = 1073741824\nwrite_set_limit_bytes = 4194304\n",
    )
    .unwrap();
    let server = Server::start_with(&["--config", config.to_str().unwrap()], &[]).expect("server");
    let client = server.connect().await;
    client
        .batch_execute("CREATE TABLE ws_budget (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let copy = |rows: usize| {
        let client = &client;
        async move {
            let mut data = String::new();
            for i in 0..rows {
                data.push_str(&format!("{i}\t{}\n", "x".repeat(100)));
            }
            let sink = client.copy_in("COPY ws_budget FROM STDIN").await.unwrap();
            futures::pin_mut!(sink);
            sink.send(bytes::Bytes::from(data)).await?;
            sink.finish().await
        }
    };
    // ~50k rows of ~110 bytes: well past 4 MiB
    let err = copy(50_000).await.expect_err("over the budget");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::OUT_OF_MEMORY)
    );
    let n: i64 = client
        .query_one("SELECT count(*) FROM ws_budget", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // the budget was given back: a load that fits goes through, on a new connection too
    assert_eq!(copy(5_000).await.unwrap(), 5_000);
    let other = server.connect().await;
    let n: i64 = other
        .query_one("SELECT count(*) FROM ws_budget", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 5_000);
}

/// `idle_in_transaction_session_timeout` ends a session left idle inside a block (FATAL
/// 25P03): its transaction rolls back and its row locks go. `idle_session_timeout` ends one
/// idle outside a block (57P05). Sessions that keep working are not touched.
#[tokio::test]
async fn idle_timeouts_end_sessions_and_free_their_locks() {
    use std::time::Duration;
    let server = Server::start().expect("server");
    let admin = server.connect().await;
    admin
        .batch_execute(
            "CREATE TABLE idle_t (id int PRIMARY KEY, v int); INSERT INTO idle_t VALUES (1, 0)",
        )
        .await
        .unwrap();

    let (idler, conn) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    idler
        .batch_execute(
            "SET idle_in_transaction_session_timeout = 300; BEGIN; UPDATE idle_t SET v = 1 WHERE id = 1",
        )
        .await
        .unwrap();
    // the row is locked; once the idle session is ended, this UPDATE goes through
    let updated = tokio::time::timeout(
        Duration::from_secs(10),
        admin.execute("UPDATE idle_t SET v = 2 WHERE id = 1", &[]),
    )
    .await
    .expect("the idle transaction's lock was released")
    .unwrap();
    assert_eq!(updated, 1);
    let err = conn.await.unwrap().expect_err("the idle session was ended");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT),
        "{err}"
    );
    let v: i32 = admin
        .query_one("SELECT v FROM idle_t WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 2, "the idle transaction's UPDATE was rolled back");

    let (sleeper, conn) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    sleeper
        .batch_execute("SET idle_session_timeout = 200")
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the idle session was ended")
        .unwrap()
        .expect_err("ended with an error");
    assert_eq!(err.code().map(|c| c.code()), Some("57P05"), "{err}");
    // a busy session with the same settings is not ended between its statements
    admin
        .batch_execute("SET idle_session_timeout = 300")
        .await
        .unwrap();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        admin.simple_query("SELECT 1").await.unwrap();
    }
}

/// `lock_timeout`: a statement waiting longer than it for a row lock fails with 55P03
/// ("canceling statement due to lock timeout"), on the fast path (point UPDATE) and the
/// general one (UPDATE by a predicate); the session stays usable, and once the holder ends
/// the same statement goes through. Without it a waiter waits.
#[tokio::test]
async fn lock_timeout_bounds_row_lock_waits() {
    use std::time::{Duration, Instant};
    let server = Server::start().expect("server");
    let holder = server.connect().await;
    let waiter = server.connect().await;
    holder
        .batch_execute(
            "CREATE TABLE lt (id int PRIMARY KEY, v int); INSERT INTO lt VALUES (1, 0), (2, 0)",
        )
        .await
        .unwrap();
    holder
        .batch_execute("BEGIN; UPDATE lt SET v = 1 WHERE id = 1")
        .await
        .unwrap();
    waiter
        .batch_execute("SET lock_timeout = '200ms'")
        .await
        .unwrap();
    for sql in [
        "UPDATE lt SET v = v + 10 WHERE id = 1",
        "UPDATE lt SET v = v + 10 WHERE v >= 0",
    ] {
        let started = Instant::now();
        let err = waiter
            .execute(sql, &[])
            .await
            .expect_err("the row is locked");
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE),
            "{sql}: {err}"
        );
        assert_eq!(
            err.as_db_error().unwrap().message(),
            "canceling statement due to lock timeout"
        );
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(150) && waited < Duration::from_secs(5),
            "{sql}: waited {waited:?}"
        );
    }
    // unlocked rows are not affected
    assert_eq!(
        waiter
            .execute("UPDATE lt SET v = 5 WHERE id = 2", &[])
            .await
            .unwrap(),
        1
    );
    // without a limit the waiter waits for the holder's commit
    waiter.batch_execute("RESET lock_timeout").await.unwrap();
    let wait = tokio::spawn(async move {
        waiter
            .execute("UPDATE lt SET v = v + 10 WHERE id = 1", &[])
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!wait.is_finished(), "the waiter did not wait");
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(wait.await.unwrap().unwrap(), 1);
    let v: i32 = holder
        .query_one("SELECT v FROM lt WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 11);
}
