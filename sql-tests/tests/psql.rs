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
CREATE TABLE ident (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
CREATE TABLE nopk (x bigint, "Mixed Case" boolean DEFAULT true, s varchar, c char(3));
CREATE SCHEMA app;
CREATE TABLE app.events (id bigserial PRIMARY KEY, payload jsonb, at timestamptz NOT NULL DEFAULT now());
INSERT INTO items VALUES (1, 'apple', 1.50, '2024-01-02 03:04:05', 'fruit'), (2, 'bread', 2.25, '2024-02-03 04:05:06', NULL);
DROP ROLE IF EXISTS psql_reader;
DROP ROLE IF EXISTS psql_writer;
CREATE ROLE psql_reader;
CREATE USER psql_writer CREATEDB CONNECTION LIMIT 3 PASSWORD 'pw';
GRANT SELECT ON items TO psql_reader;
GRANT INSERT, UPDATE ON items TO psql_writer;
GRANT psql_reader TO psql_writer;
"#;

/// The meta-commands compared (each one psql invocation; several lines run in order).
const COMMANDS: &[&str] = &[
    r"\d items",
    r"\d+ items",
    r"\d+ two",
    r"\d+ app.events",
    // sizes differ by storage engine: unaligned output, the Size column normalized
    r"\pset format unaligned
\dt+",
    r"\pset format unaligned
\d+",
    r"\pset format unaligned
\di+",
    r"\d two",
    r"\d nopk",
    r"\d ident",
    r"\d app.events",
    r"\d",
    r"\dt",
    r"\dt app.*",
    r"\di",
    r"\dn",
    r"\du",
    r"\df",
    r"\dp",
    r"\dp items",
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
    // unaligned listings with a Size column: the sizes themselves are the storage engine's
    let mut size_column: Option<(usize, usize)> = None;
    out.lines()
        .map(|l| {
            let fields: Vec<&str> = l.split('|').collect();
            if let Some(i) = fields.iter().position(|f| *f == "Size") {
                size_column = Some((i, fields.len()));
            } else if let Some((i, n)) = size_column
                && fields.len() == n
            {
                let mut fields = fields;
                fields[i] = "<size>";
                return fields.join("|");
            }
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

/// COPY TO STDOUT in text, CSV (header, delimiter, NULL, quote) and binary formats, of a table
/// and of a query, and psql's `\copy` out to a file and back in (CSV and binary): what
/// PostgreSQL prints.
#[test]
fn copy_out_and_psql_copy_match_postgres() {
    let pg = std::env::var("OROCHI_PG_URL")
        .expect("OROCHI_PG_URL is not set: `make test` runs this under scripts/with-postgres.sh");
    let (pg_host, pg_port) = host_port(&pg);
    let db = "orochi_copy_diff";
    run_psql(
        &pg_host,
        &pg_port,
        "postgres",
        &format!("DROP DATABASE IF EXISTS {db};\nCREATE DATABASE {db};\n"),
    );
    let server = Server::start().expect("server");
    let or_port = server.port.to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let script = |file: &str| {
        let path = dir.path().join(file);
        COPY_SCRIPT.replace("{path}", &path.display().to_string())
    };
    let expected = run_psql(&pg_host, &pg_port, db, &script("pg.csv"));
    let actual = run_psql("127.0.0.1", &or_port, "postgres", &script("orochi.csv"));
    assert_eq!(
        expected, actual,
        "PostgreSQL:\n{expected}\nOrochiDB:\n{actual}"
    );
}

const COPY_SCRIPT: &str = r#"
CREATE TABLE cp (id int PRIMARY KEY, t text, n numeric(8,2), b boolean, d date,
                 ts timestamp, j jsonb, by bytea, f float8);
INSERT INTO cp VALUES
 (1, E'tab\there', 1.5, true, '2024-01-02', '2024-01-02 03:04:05.5', '{"a": [1, 2]}', '\x00ff', 1.25),
 (2, E'line\nbreak, "quoted" \\ back', -2, false, NULL, NULL, NULL, NULL, -0.5),
 (3, '', NULL, NULL, '1999-12-31', '2000-01-01 00:00:00', '[]', '\x', 1e300),
 (4, NULL, 0, true, NULL, NULL, '"s"', NULL, NULL);
COPY (SELECT * FROM cp ORDER BY id) TO STDOUT;
COPY (SELECT * FROM cp ORDER BY id) TO STDOUT (FORMAT csv, HEADER);
COPY (SELECT t, id FROM cp ORDER BY id) TO STDOUT WITH (FORMAT csv, DELIMITER ';', NULL 'NULL', QUOTE '''');
COPY (SELECT * FROM cp ORDER BY id) TO STDOUT WITH (DELIMITER '|', NULL '');
COPY (SELECT id, n, b, f FROM cp ORDER BY id) TO STDOUT (FORMAT binary);
COPY (SELECT 1 AS x WHERE false) TO STDOUT;
CREATE TABLE one (k int PRIMARY KEY, v text);
INSERT INTO one VALUES (7, 'seven');
COPY one TO STDOUT;
COPY one (v) TO STDOUT CSV;
\copy (SELECT * FROM cp ORDER BY id) TO '{path}' WITH (FORMAT csv, HEADER)
CREATE TABLE cp2 (id int PRIMARY KEY, t text, n numeric(8,2), b boolean, d date,
                  ts timestamp, j jsonb, by bytea, f float8);
\copy cp2 FROM '{path}' WITH (FORMAT csv, HEADER)
SELECT * FROM cp2 ORDER BY id;
\copy cp TO '{path}.bin' WITH (FORMAT binary)
CREATE TABLE cp3 (id int PRIMARY KEY, t text, n numeric(8,2), b boolean, d date,
                  ts timestamp, j jsonb, by bytea, f float8);
\copy cp3 FROM '{path}.bin' WITH (FORMAT binary)
SELECT * FROM cp3 ORDER BY id;
\copy (SELECT * FROM cp WHERE false) TO '{path}.empty' WITH (FORMAT csv, HEADER)
\copy (SELECT * FROM cp WHERE false) TO '{path}.empty.bin' WITH (FORMAT binary)
\copy (SELECT id FROM cp WHERE id < 3) TO '{path}.two.bin' WITH (FORMAT binary)
"#;

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
    // \l+ adds size (all tables' bytes), tablespace and description
    run_psql(
        "127.0.0.1",
        &server.port.to_string(),
        "postgres",
        "CREATE TABLE sized (id int PRIMARY KEY, v text);\n\
         INSERT INTO sized SELECT g, repeat('x', 100) FROM generate_series(1, 200) g;",
    );
    let out = run_psql(
        "127.0.0.1",
        &server.port.to_string(),
        "postgres",
        "\\pset format unaligned\n\\l+",
    );
    let row = out
        .lines()
        .find(|l| l.starts_with("postgres|"))
        .unwrap_or_else(|| panic!("{out}"));
    let fields: Vec<&str> = row.split('|').collect();
    assert_eq!(
        &fields[..8],
        &[
            "postgres", "postgres", "UTF8", "C.UTF-8", "C.UTF-8", "", "libc", ""
        ],
        "{out}"
    );
    // (run_psql normalizes the Size column; the size itself:)
    assert_eq!(fields[8], "<size>", "{out}");
    assert_eq!(fields[9], "pg_default", "{out}");
    let size = run_psql(
        "127.0.0.1",
        &server.port.to_string(),
        "postgres",
        "SELECT pg_database_size(current_database()) > 20000, \
         pg_size_pretty(pg_database_size('postgres')) LIKE '% kB';",
    );
    assert!(size.contains(" t        | t"), "{size}");
}
