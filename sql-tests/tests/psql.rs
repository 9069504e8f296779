//! psql's meta-commands against OrochiDB and PostgreSQL, output compared byte for byte.
//!
//! The same schema is created in a fresh database on the PostgreSQL from `OROCHI_PG_URL`
//! (`scripts/with-postgres.sh`) and on a fresh OrochiDB; then each meta-command runs through
//! the real `psql` against both. What only differs by the connection (database name, port,
//! elapsed time) is normalized first. `make test` runs this under `with-postgres.sh`.

use std::process::Command;

use orochi_sql_tests::Server;

const SCHEMA: &str = r#"
CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2) DEFAULT 0,
                    created timestamp DEFAULT now(), tags varchar(20));
CREATE TABLE two (a int, b text, PRIMARY KEY (b, a));
CREATE TABLE nopk (x bigint, "Mixed Case" boolean DEFAULT true, s varchar, c char(3));
CREATE SCHEMA app;
CREATE TABLE app.events (id bigserial PRIMARY KEY, payload jsonb, at timestamptz NOT NULL DEFAULT now());
INSERT INTO items VALUES (1, 'apple', 1.50, '2024-01-02 03:04:05', 'fruit'), (2, 'bread', 2.25, '2024-02-03 04:05:06', NULL);
"#;

/// The meta-commands compared (each one psql invocation; several lines run in order).
const COMMANDS: &[&str] = &[
    r"\d items",
    r"\d two",
    r"\d nopk",
    r"\d app.events",
    r"\d",
    r"\dt",
    r"\dt app.*",
    r"\di",
    r"\dn",
    r"\du",
    r"\df",
    r"\x on
SELECT id, name, price, tags FROM items ORDER BY id;",
    r"\timing on
SELECT count(*) FROM items;",
    r"\conninfo",
];

fn psql() -> String {
    if let Ok(p) = std::env::var("OROCHI_PSQL") {
        return p;
    }
    let bins = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|d| {
        d.filter_map(|e| e.ok())
            .map(|e| e.path().join("bin/psql"))
            .filter(|p| p.exists())
            .max()
    });
    bins.map(|p| p.display().to_string())
        .unwrap_or_else(|| "psql".to_string())
}

/// `host=… port=… user=… dbname=…` → (host, port).
fn host_port(dsn: &str) -> (String, String) {
    let get = |k: &str| {
        dsn.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .unwrap_or_default()
            .to_string()
    };
    (get("host"), get("port"))
}

fn run_psql(host: &str, port: &str, db: &str, input: &str) -> String {
    let out = Command::new(psql())
        .args(["-X", "-h", host, "-p", port, "-U", "postgres", "-d", db])
        .args(["-v", "ON_ERROR_STOP=1", "-f", "-"])
        .env("PGTZ", "UTC")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap_or_else(|e| panic!("running psql: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "psql failed on port {port}:\n{input}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    normalize(&stdout, port, db)
}

fn normalize(out: &str, port: &str, db: &str) -> String {
    out.lines()
        .map(|l| {
            if l.starts_with("Time: ") {
                "Time: <elapsed>".to_string()
            } else {
                l.replace(&format!("port \"{port}\""), "port \"<port>\"")
                    .replace(&format!("database \"{db}\""), "database \"<db>\"")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn meta_commands_print_what_postgres_prints() {
    let pg = std::env::var("OROCHI_PG_URL")
        .expect("OROCHI_PG_URL is not set: `make test` runs this under scripts/with-postgres.sh");
    let (pg_host, pg_port) = host_port(&pg);
    let db = "orochi_psql_diff";
    run_psql(
        &pg_host,
        &pg_port,
        "postgres",
        &format!("DROP DATABASE IF EXISTS {db};\nCREATE DATABASE {db};\n"),
    );
    run_psql(&pg_host, &pg_port, db, SCHEMA);

    let server = Server::start().expect("server");
    let or_port = server.port.to_string();
    run_psql("127.0.0.1", &or_port, "postgres", SCHEMA);

    let mut failures = Vec::new();
    for cmd in COMMANDS {
        let expected = run_psql(&pg_host, &pg_port, db, cmd);
        let actual = run_psql("127.0.0.1", &or_port, "postgres", cmd);
        if expected != actual {
            failures.push(format!(
                "=== {cmd}\n--- PostgreSQL\n{expected}\n--- OrochiDB\n{actual}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `\l` lists our one database as Postgres lists its own (PostgreSQL also has templates).
#[test]
fn list_databases() {
    let server = Server::start().expect("server");
    let out = run_psql("127.0.0.1", &server.port.to_string(), "postgres", r"\l");
    assert!(
        out.contains(" postgres | postgres | UTF8     | C.UTF-8 | C.UTF-8 |"),
        "{out}"
    );
    assert!(out.contains("(1 row)"), "{out}");
}
