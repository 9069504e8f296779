//! Client drivers and ORMs against a real `orochi-coordinator`, each with a script that
//! connects, creates a table, inserts with bound parameters, reads every supported type back,
//! rolls back, uses a savepoint and checks that a unique violation arrives as 23505:
//!
//! - Python: psycopg 3, psycopg2, asyncpg, SQLAlchemy 2 (`drivers/python/test_drivers.py`,
//!   run with the interpreter in `OROCHI_PYTHON`, set up by `scripts/python-env.sh`);
//! - Node.js: node-postgres (`drivers/node/test_drivers.js`, with `NODE_PATH` from
//!   `OROCHI_NODE_PATH`, set up by `scripts/node-env.sh`);
//! - Java: Debian's PostgreSQL JDBC driver (`drivers/java/DriverTest.java`, run as a
//!   single-file program with the jar in `OROCHI_JDBC_JAR`, set up by `scripts/java-env.sh`).
//!
//! - Rust: tokio-postgres (in this file; its type round trips are in `protocol.rs`) and sqlx
//!   (in this file, against both servers).
//!
//! `make test` sets the three environment variables. With `OROCHI_PG_URL` set (`scripts/with-postgres.sh`) every script
//! first runs against PostgreSQL, so its expectations are Postgres' own.

use std::path::Path;
use std::process::Command;

use orochi_sql_tests::Server;

fn required_env(name: &str, how: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: `make test` sets it ({how})"))
}

/// Runs `program [args] script` against `dsn`; every line starting `ok ` is a passed test.
fn run_script(
    program: &str,
    args: &[&str],
    script: &str,
    env: &[(&str, &str)],
    dsn: &str,
    against: &str,
) -> usize {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let out = Command::new(program)
        .args(args)
        .arg(&script)
        .envs(env.iter().copied())
        .env("OROCHI_TEST_DSN", dsn)
        .output()
        .unwrap_or_else(|e| panic!("running {program} {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "--- {} against {against} ---\n{stdout}{stderr}",
        script.display()
    );
    assert!(
        out.status.success(),
        "{} failed against {against}",
        script.display()
    );
    stdout.lines().filter(|l| l.starts_with("ok ")).count()
}

fn against_both(run: impl Fn(&str, &str) -> usize, expected: usize) {
    if let Ok(pg) = std::env::var("OROCHI_PG_URL") {
        assert_eq!(run(&pg, "PostgreSQL"), expected);
    }
    let server = Server::start().expect("server");
    let dsn = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        server.port
    );
    assert_eq!(run(&dsn, "OrochiDB"), expected);
}

#[test]
fn python_drivers_and_orms() {
    let python = required_env("OROCHI_PYTHON", "scripts/python-env.sh");
    against_both(
        |dsn, against| {
            run_script(
                &python,
                &[],
                "drivers/python/test_drivers.py",
                &[],
                dsn,
                against,
            )
        },
        // psycopg 3, psycopg2, asyncpg, SQLAlchemy, intervals
        5,
    );
}

#[test]
fn node_postgres() {
    let node_path = required_env("OROCHI_NODE_PATH", "scripts/node-env.sh");
    against_both(
        |dsn, against| {
            run_script(
                "node",
                &[],
                "drivers/node/test_drivers.js",
                &[("NODE_PATH", &node_path)],
                dsn,
                against,
            )
        },
        1,
    );
}

#[test]
fn jdbc() {
    let jar = required_env("OROCHI_JDBC_JAR", "scripts/java-env.sh");
    against_both(
        |dsn, against| {
            run_script(
                "java",
                &["-cp", &jar],
                "drivers/java/DriverTest.java",
                &[],
                dsn,
                against,
            )
        },
        1,
    );
}

/// tokio-postgres, the Rust driver (the type round trips are in `protocol.rs`): its
/// `Transaction` rolls back on drop, its savepoints are nested transactions, and a unique
/// violation is a `tokio_postgres::Error` whose code is `SqlState::UNIQUE_VIOLATION`.
#[tokio::test]
async fn tokio_postgres_transactions_savepoints_and_errors() {
    use tokio_postgres::error::SqlState;
    let server = Server::start().expect("server");
    let mut client = server.connect().await;
    client
        .batch_execute("CREATE TABLE rs_tp (id int4 PRIMARY KEY, v text)")
        .await
        .unwrap();
    client
        .execute("INSERT INTO rs_tp VALUES ($1, $2)", &[&1i32, &"one"])
        .await
        .unwrap();
    {
        let txn = client.transaction().await.unwrap();
        txn.execute("INSERT INTO rs_tp VALUES ($1, $2)", &[&2i32, &"two"])
            .await
            .unwrap();
        // dropped without commit: rolled back
    }
    {
        let mut txn = client.transaction().await.unwrap();
        txn.execute("INSERT INTO rs_tp VALUES ($1, $2)", &[&3i32, &"three"])
            .await
            .unwrap();
        let sp = txn.savepoint("sp").await.unwrap();
        let err = sp
            .execute("INSERT INTO rs_tp VALUES ($1, $2)", &[&1i32, &"dup"])
            .await
            .expect_err("duplicate key");
        assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION));
        sp.rollback().await.unwrap();
        txn.commit().await.unwrap();
    }
    let rows: Vec<(i32, String)> = client
        .query("SELECT id, v FROM rs_tp ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows, vec![(1, "one".into()), (3, "three".into())]);
}

/// sqlx (Postgres driver, tokio runtime), against PostgreSQL (when `OROCHI_PG_URL` is set)
/// and OrochiDB: every supported type bound and read back through sqlx's own encoders and
/// decoders (binary format, prepared and cached statements), a transaction rolled back, a
/// nested transaction (a savepoint) rolled back, and a unique violation as
/// `sqlx::Error::Database` with code 23505.
#[tokio::test]
async fn sqlx_types_transactions_and_errors() {
    if let Ok(pg) = std::env::var("OROCHI_PG_URL") {
        let get = |k: &str| {
            pg.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .unwrap_or_default()
                .to_string()
        };
        sqlx_script(&get("host"), get("port").parse().unwrap(), "PostgreSQL").await;
    }
    let server = Server::start().expect("server");
    sqlx_script("127.0.0.1", server.port, "OrochiDB").await;
}

async fn sqlx_script(host: &str, port: u16, against: &str) {
    use sqlx::Connection;
    use sqlx::Row;
    let options = sqlx::postgres::PgConnectOptions::new()
        .host(host)
        .port(port)
        .username("postgres")
        .database("postgres");
    let mut conn = sqlx::PgConnection::connect_with(&options)
        .await
        .unwrap_or_else(|e| panic!("sqlx connect to {against}: {e}"));
    sqlx::query("DROP TABLE IF EXISTS rs_sqlx")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(
        "CREATE TABLE rs_sqlx (id int4 PRIMARY KEY, i2 int2, i8 int8, f4 float4, f8 float8, \
         n numeric(12,3), b bool, t text, vc varchar(10), by bytea, d date, ts timestamp, \
         tz timestamptz, u uuid, j json, jb jsonb)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let n = rust_decimal::Decimal::new(-12345, 3);
    let d = chrono::NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
    let ts = d.and_hms_micro_opt(13, 14, 15, 123456).unwrap();
    let tz = chrono::DateTime::<chrono::Utc>::from_naive_utc_and_offset(ts, chrono::Utc);
    let u = uuid::Uuid::parse_str("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap();
    let j = serde_json::json!({"k": [1, "two", null]});
    sqlx::query(
        "INSERT INTO rs_sqlx VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
         $14, $15, $16)",
    )
    .bind(1i32)
    .bind(-2i16)
    .bind(9_000_000_000i64)
    .bind(1.5f32)
    .bind(-0.25f64)
    .bind(n)
    .bind(true)
    .bind("héllo")
    .bind("short")
    .bind(vec![0u8, 255, 7])
    .bind(d)
    .bind(ts)
    .bind(tz)
    .bind(u)
    .bind(sqlx::types::Json(j.clone()))
    .bind(sqlx::types::Json(j.clone()))
    .execute(&mut conn)
    .await
    .unwrap_or_else(|e| panic!("sqlx insert against {against}: {e}"));
    // the same statement again: sqlx's statement cache reuses the prepared statement
    for id in [2i32, 3] {
        sqlx::query("INSERT INTO rs_sqlx (id, t) VALUES ($1, $2)")
            .bind(id)
            .bind(format!("row {id}"))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let row = sqlx::query("SELECT * FROM rs_sqlx WHERE id = $1")
        .bind(1i32)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(row.get::<i16, _>("i2"), -2);
    assert_eq!(row.get::<i64, _>("i8"), 9_000_000_000);
    assert_eq!(row.get::<f32, _>("f4"), 1.5);
    assert_eq!(row.get::<f64, _>("f8"), -0.25);
    assert_eq!(row.get::<rust_decimal::Decimal, _>("n"), n);
    assert!(row.get::<bool, _>("b"));
    assert_eq!(row.get::<String, _>("t"), "héllo");
    assert_eq!(row.get::<String, _>("vc"), "short");
    assert_eq!(row.get::<Vec<u8>, _>("by"), vec![0u8, 255, 7]);
    assert_eq!(row.get::<chrono::NaiveDate, _>("d"), d);
    assert_eq!(row.get::<chrono::NaiveDateTime, _>("ts"), ts);
    assert_eq!(row.get::<chrono::DateTime<chrono::Utc>, _>("tz"), tz);
    assert_eq!(row.get::<uuid::Uuid, _>("u"), u);
    assert_eq!(row.get::<sqlx::types::Json<serde_json::Value>, _>("j").0, j);
    assert_eq!(
        row.get::<sqlx::types::Json<serde_json::Value>, _>("jb").0,
        j
    );
    let nulls = sqlx::query("SELECT i2, n, u, jb FROM rs_sqlx WHERE id = 2")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(nulls.get::<Option<i16>, _>("i2"), None);
    assert_eq!(nulls.get::<Option<rust_decimal::Decimal>, _>("n"), None);
    assert_eq!(nulls.get::<Option<uuid::Uuid>, _>("u"), None);

    // a transaction rolled back, and a savepoint (nested transaction) rolled back
    {
        let mut txn = conn.begin().await.unwrap();
        sqlx::query("INSERT INTO rs_sqlx (id) VALUES (10)")
            .execute(&mut *txn)
            .await
            .unwrap();
        txn.rollback().await.unwrap();
    }
    {
        let mut txn = conn.begin().await.unwrap();
        sqlx::query("INSERT INTO rs_sqlx (id) VALUES (11)")
            .execute(&mut *txn)
            .await
            .unwrap();
        let mut nested = txn.begin().await.unwrap();
        let err = sqlx::query("INSERT INTO rs_sqlx (id) VALUES (1)")
            .execute(&mut *nested)
            .await
            .expect_err("duplicate key");
        let db = err.as_database_error().expect("a database error");
        assert_eq!(db.code().as_deref(), Some("23505"), "{against}: {db}");
        assert!(db.is_unique_violation());
        nested.rollback().await.unwrap();
        txn.commit().await.unwrap();
    }
    let ids: Vec<i32> = sqlx::query_scalar("SELECT id FROM rs_sqlx ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(ids, vec![1, 2, 3, 11], "{against}");
    sqlx::query("DROP TABLE rs_sqlx")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}
