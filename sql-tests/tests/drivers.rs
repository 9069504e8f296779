//! Python drivers and ORMs (psycopg 3, psycopg2, asyncpg, SQLAlchemy 2) against a real
//! `orochi-coordinator`: `sql-tests/drivers/python/test_drivers.py`, run with the interpreter
//! in `OROCHI_PYTHON` (`make test` sets it up with `scripts/python-env.sh`). With
//! `OROCHI_PG_URL` set (`scripts/with-postgres.sh`), the same script first runs against
//! PostgreSQL, so its expectations are Postgres' own.

use std::path::Path;
use std::process::Command;

use orochi_sql_tests::Server;

fn run_script(python: &str, dsn: &str, against: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("drivers/python/test_drivers.py");
    let out = Command::new(python)
        .arg(&script)
        .env("OROCHI_TEST_DSN", dsn)
        .output()
        .expect("running the Python driver tests");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- {against} ---\n{stdout}{stderr}");
    assert!(
        out.status.success(),
        "Python driver tests failed against {against}"
    );
    assert!(
        stdout.lines().filter(|l| l.starts_with("ok ")).count() >= 4,
        "expected the four driver tests to run against {against}"
    );
}

#[test]
fn python_drivers_and_orms() {
    let python = std::env::var("OROCHI_PYTHON").expect(
        "OROCHI_PYTHON: the Python with the drivers installed (`make test` sets it from \
         scripts/python-env.sh)",
    );
    if let Ok(pg) = std::env::var("OROCHI_PG_URL") {
        run_script(&python, &pg, "PostgreSQL");
    }
    let server = Server::start().expect("server");
    let dsn = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        server.port
    );
    run_script(&python, &dsn, "OrochiDB");
}
