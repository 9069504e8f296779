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
//! - Rust: tokio-postgres (in this file; its type round trips are in `protocol.rs`).
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
        4,
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
