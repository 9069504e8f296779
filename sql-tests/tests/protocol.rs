//! Extended-protocol tests through tokio-postgres against a real `orochi-coordinator`.
//!
//! tokio-postgres always uses the extended protocol for `query`/`execute`: Parse (with no
//! parameter types, so the server infers them), Describe, Bind with binary parameters, and
//! binary result columns. Every supported type goes in as a parameter and comes back as a
//! binary result, and must round-trip exactly.

use std::str::FromStr;

use chrono::{NaiveDate, NaiveDateTime, TimeZone, Utc};
use orochi_sql_tests::Server;
use rust_decimal::Decimal;
use tokio_postgres::types::Type;
use tokio_postgres::{NoTls, SimpleQueryMessage};

const CREATE: &str = "CREATE TABLE all_types (
    id int4 PRIMARY KEY, i2 int2, i8 int8, f4 float4, f8 float8, n numeric(12,3), b bool,
    t text, vc varchar(20), ch char(5), by bytea, d date, ts timestamp, tz timestamptz,
    u uuid, j json, jb jsonb)";

#[tokio::test]
async fn every_type_round_trips_as_binary_parameter_and_result() {
    let server = Server::start().expect("server");
    let client = server.connect().await;
    client.batch_execute(CREATE).await.unwrap();

    let insert = client
        .prepare(
            "INSERT INTO all_types VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
        )
        .await
        .unwrap();
    // the server inferred every parameter's type from the target columns
    assert_eq!(
        insert.params(),
        &[
            Type::INT4,
            Type::INT2,
            Type::INT8,
            Type::FLOAT4,
            Type::FLOAT8,
            Type::NUMERIC,
            Type::BOOL,
            Type::TEXT,
            Type::VARCHAR,
            Type::BPCHAR,
            Type::BYTEA,
            Type::DATE,
            Type::TIMESTAMP,
            Type::TIMESTAMPTZ,
            Type::UUID,
            Type::JSON,
            Type::JSONB,
        ]
    );

    let n = Decimal::from_str("-12345.678").unwrap();
    let d = NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
    let ts: NaiveDateTime = d.and_hms_micro_opt(23, 59, 58, 123_456).unwrap();
    let tz = Utc.with_ymd_and_hms(1999, 12, 31, 23, 0, 0).unwrap();
    let u = uuid::Uuid::from_str("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap();
    let j = serde_json::json!({"a": [1, 2, {"b": null}]});
    let bytes: Vec<u8> = vec![0, 1, 2, 255, b'\\'];
    let affected = client
        .execute(
            &insert,
            &[
                &1i32,
                &-32768i16,
                &i64::MAX,
                &1.5f32,
                &-2.25e300f64,
                &n,
                &true,
                &"héllo 'quoted'",
                &"varchar",
                &"ab",
                &bytes,
                &d,
                &ts,
                &tz,
                &u,
                &j,
                &j,
            ],
        )
        .await
        .unwrap();
    assert_eq!(affected, 1);
    // all NULLs but the key
    client
        .execute(
            "INSERT INTO all_types (id, i2, t, tz, u) VALUES ($1, $2, $3, $4, $5)",
            &[
                &2i32,
                &None::<i16>,
                &None::<String>,
                &None::<chrono::DateTime<Utc>>,
                &None::<uuid::Uuid>,
            ],
        )
        .await
        .unwrap();

    let row = client
        .query_one("SELECT * FROM all_types WHERE id = $1", &[&1i32])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>("id"), 1);
    assert_eq!(row.get::<_, i16>("i2"), -32768);
    assert_eq!(row.get::<_, i64>("i8"), i64::MAX);
    assert_eq!(row.get::<_, f32>("f4"), 1.5);
    assert_eq!(row.get::<_, f64>("f8"), -2.25e300);
    assert_eq!(row.get::<_, Decimal>("n"), n);
    assert!(row.get::<_, bool>("b"));
    assert_eq!(row.get::<_, String>("t"), "héllo 'quoted'");
    assert_eq!(row.get::<_, String>("vc"), "varchar");
    assert_eq!(row.get::<_, String>("ch"), "ab   "); // char(5) is blank-padded
    assert_eq!(row.get::<_, Vec<u8>>("by"), bytes);
    assert_eq!(row.get::<_, NaiveDate>("d"), d);
    assert_eq!(row.get::<_, NaiveDateTime>("ts"), ts);
    assert_eq!(row.get::<_, chrono::DateTime<Utc>>("tz"), tz);
    assert_eq!(row.get::<_, uuid::Uuid>("u"), u);
    assert_eq!(row.get::<_, serde_json::Value>("j"), j);
    assert_eq!(row.get::<_, serde_json::Value>("jb"), j);
    // result column types as Postgres reports them
    let types: Vec<Type> = row.columns().iter().map(|c| c.type_().clone()).collect();
    assert_eq!(types, insert.params());

    let row = client
        .query_one("SELECT i2, t, tz, u FROM all_types WHERE id = 2", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<i16>>(0), None);
    assert_eq!(row.get::<_, Option<String>>(1), None);
    assert_eq!(row.get::<_, Option<chrono::DateTime<Utc>>>(2), None);
    assert_eq!(row.get::<_, Option<uuid::Uuid>>(3), None);

    // parameters in WHERE, typed from the column they are compared with
    let rows = client
        .query(
            "SELECT id FROM all_types WHERE u = $1 AND d = $2 AND n = $3",
            &[&u, &d, &n],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
}

#[tokio::test]
async fn named_statements_are_reused_and_updates_report_counts() {
    let server = Server::start().expect("server");
    let client = server.connect().await;
    client
        .batch_execute("CREATE TABLE kv (k int PRIMARY KEY, v int NOT NULL)")
        .await
        .unwrap();
    let ins = client
        .prepare("INSERT INTO kv VALUES ($1, $2)")
        .await
        .unwrap();
    for k in 0..50i32 {
        assert_eq!(client.execute(&ins, &[&k, &(k * 10)]).await.unwrap(), 1);
    }
    let upd = client
        .prepare("UPDATE kv SET v = v + $1 WHERE k = $2")
        .await
        .unwrap();
    assert_eq!(client.execute(&upd, &[&5i32, &7i32]).await.unwrap(), 1);
    assert_eq!(client.execute(&upd, &[&5i32, &700i32]).await.unwrap(), 0);
    let sel = client
        .prepare("SELECT v FROM kv WHERE k = $1")
        .await
        .unwrap();
    assert_eq!(sel.params(), &[Type::INT4]);
    assert_eq!(
        client
            .query_one(&sel, &[&7i32])
            .await
            .unwrap()
            .get::<_, i32>(0),
        75
    );
    assert!(client.query_opt(&sel, &[&700i32]).await.unwrap().is_none());
    // a range UPDATE takes the general path and reports its count
    assert_eq!(
        client
            .execute("UPDATE kv SET v = 0 WHERE k >= $1", &[&40i32])
            .await
            .unwrap(),
        10
    );
    // an overflowing point update fails with 22003 and changes nothing
    client
        .execute("UPDATE kv SET v = 2147483647 WHERE k = 1", &[])
        .await
        .unwrap();
    let err = client.execute(&upd, &[&1i32, &1i32]).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22003"));
    assert_eq!(
        client
            .query_one(&sel, &[&1i32])
            .await
            .unwrap()
            .get::<_, i32>(0),
        i32::MAX
    );
    // the session is still usable, and the statements still work after the error
    assert_eq!(client.execute(&upd, &[&1i32, &2i32]).await.unwrap(), 1);
}

#[tokio::test]
async fn simple_protocol_tags_and_empty_query() {
    let server = Server::start().expect("server");
    let client = server.connect().await;
    let msgs = client
        .simple_query(
            "CREATE TABLE s (a int PRIMARY KEY); INSERT INTO s VALUES (1), (2), (3); \
             UPDATE s SET a = a + 10 WHERE a >= 2; SELECT * FROM s ORDER BY a; \
             DELETE FROM s WHERE a = 1",
        )
        .await
        .unwrap();
    let tags: Vec<u64> = msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .collect();
    assert_eq!(tags, vec![0, 3, 2, 3, 1]);
    let rows: Vec<String> = msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(rows, vec!["1", "12", "13"]);
    // an empty query string is answered (EmptyQueryResponse), not an error
    assert!(client.simple_query("").await.is_ok());
    assert!(client.simple_query(" ; ").await.is_ok());
}

#[tokio::test]
async fn max_connections_is_enforced_with_53300() {
    let server = Server::start_with(&["--max-connections", "2"], &[]).expect("server");
    // the start-up probe's TCP connection holds a slot until the server sees it close
    let mut admitted = Vec::new();
    for _ in 0..50 {
        if let Ok((c, conn)) = tokio_postgres::connect(&server.url(), NoTls).await {
            tokio::spawn(conn);
            admitted.push(c);
            if admitted.len() == 2 {
                break;
            }
        } else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let b = admitted.pop().expect("two connections admitted");
    let a = admitted.pop().expect("two connections admitted");
    let err = match tokio_postgres::connect(&server.url(), NoTls).await {
        Ok(_) => panic!("a third connection was accepted"),
        Err(e) => e,
    };
    assert_eq!(err.code().map(|c| c.code()), Some("53300"), "{err}");
    // the admitted sessions are unaffected
    assert_eq!(
        a.query_one("SELECT 1::int4", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    drop(b);
    // a freed slot can be used again (the server notices the disconnect asynchronously)
    let mut ok = false;
    for _ in 0..50 {
        if let Ok((c, conn)) = tokio_postgres::connect(&server.url(), NoTls).await {
            tokio::spawn(conn);
            ok = c.simple_query("SELECT 1").await.is_ok();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        ok,
        "no connection slot was freed after a client disconnected"
    );
}

/// Result column names and types are the ones Postgres reports, duplicates included.
#[tokio::test]
async fn result_columns_have_postgres_names_and_types() {
    let server = Server::start().expect("server");
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE TABLE names_t (id int PRIMARY KEY, price numeric(10,2), u uuid);
             INSERT INTO names_t VALUES (1, 1.50, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11')",
        )
        .await
        .unwrap();
    let stmt = client
        .prepare(
            "SELECT count(*), price::text, price::int4, u::text, 1 + 1, \
             CASE WHEN id > 0 THEN 'pos' END, id AS ident, now(), 2.5::numeric::int4 \
             FROM names_t GROUP BY id, price, u",
        )
        .await
        .unwrap();
    let cols: Vec<(&str, Type)> = stmt
        .columns()
        .iter()
        .map(|c| (c.name(), c.type_().clone()))
        .collect();
    assert_eq!(
        cols,
        vec![
            ("count", Type::INT8),
            ("price", Type::TEXT),
            ("price", Type::INT4),
            ("u", Type::TEXT),
            ("?column?", Type::INT4),
            ("case", Type::TEXT),
            ("ident", Type::INT4),
            ("now", Type::TIMESTAMPTZ),
            ("int4", Type::INT4),
        ]
    );
    let row = client.query_one(&stmt, &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(1), "1.50");
    assert_eq!(
        row.get::<_, String>(3),
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    );
    assert_eq!(row.get::<_, i32>(2), 2); // numeric 1.50 rounds to 2, as in Postgres
    assert_eq!(row.get::<_, i32>(8), 3);
}

/// With a password configured, logins go through SCRAM-SHA-256; a wrong password (or an
/// unknown user) is refused with 28P01 and the server keeps serving.
#[tokio::test]
async fn scram_password_authentication() {
    let server = Server::start_with(&[], &[("OROCHI_PASSWORD", "s3cr3t")]).expect("server");
    let url = |password: &str| format!("{} password={password}", server.url());

    let (client, conn) = tokio_postgres::connect(&url("s3cr3t"), NoTls)
        .await
        .expect("the right password is accepted");
    tokio::spawn(conn);
    assert_eq!(
        client
            .query_one("SELECT 42::int4", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        42
    );

    let err = tokio_postgres::connect(&url("wrong"), NoTls)
        .await
        .err()
        .expect("a wrong password is refused");
    assert_eq!(err.code().map(|c| c.code()), Some("28P01"), "{err}");
    assert_eq!(
        err.as_db_error().map(|e| e.message()),
        Some("password authentication failed for user \"postgres\"")
    );

    let err = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=mallory dbname=postgres password=s3cr3t",
            server.port
        ),
        NoTls,
    )
    .await
    .err()
    .expect("an unknown user is refused");
    assert_eq!(err.code().map(|c| c.code()), Some("28P01"), "{err}");

    // no password at all: the client cannot answer the SCRAM challenge
    assert!(
        tokio_postgres::connect(&server.url(), NoTls).await.is_err(),
        "a login without a password was accepted"
    );
    // the authenticated session is unaffected
    assert!(client.simple_query("SELECT 1").await.is_ok());
}

/// Integer literals are int4 when they fit, as in Postgres (drivers decode them as i32).
#[tokio::test]
async fn integer_literals_are_int4() {
    let server = Server::start().expect("server");
    let client = server.connect().await;
    let row = client
        .query_one("SELECT 1, 3000000000, 2 * 3", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    assert_eq!(row.get::<_, i64>(1), 3_000_000_000);
    assert_eq!(row.get::<_, i32>(2), 6);
}

/// Arrays come back typed (text[], int8[]) and decode from the binary format.
#[tokio::test]
async fn arrays_in_binary_results() {
    let server = Server::start().expect("server");
    let client = server.connect().await;
    let row = client
        .query_one(
            "SELECT current_schemas(true), make_array(1::int8, NULL, 3::int8)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.columns()[0].type_(), &Type::TEXT_ARRAY);
    assert_eq!(row.columns()[1].type_(), &Type::INT8_ARRAY);
    assert_eq!(
        row.get::<_, Vec<String>>(0),
        vec!["pg_catalog".to_string(), "public".to_string()]
    );
    assert_eq!(
        row.get::<_, Vec<Option<i64>>>(1),
        vec![Some(1), None, Some(3)]
    );
}

/// A CancelRequest stops a running query with 57014, and so does statement_timeout; the
/// session stays usable.
#[tokio::test]
async fn cancel_request_and_statement_timeout() {
    let server = Server::start().expect("server");
    let client = server.connect().await;
    let slow = "SELECT count(*) FROM generate_series(1, 5000000000)";

    let token = client.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        token.cancel_query(NoTls).await
    });
    let started = std::time::Instant::now();
    let err = client.query(slow, &[]).await.expect_err("cancelled");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    assert_eq!(
        err.as_db_error().map(|e| e.message()),
        Some("canceling statement due to user request")
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    canceller.await.unwrap().unwrap();

    client
        .batch_execute("SET statement_timeout = '200ms'")
        .await
        .unwrap();
    let err = client.simple_query(slow).await.expect_err("timed out");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    assert_eq!(
        err.as_db_error().map(|e| e.message()),
        Some("canceling statement due to statement timeout")
    );
    // a fast statement is unaffected, and the session is fine
    let n: i64 = client
        .query_one("SELECT count(*) FROM generate_series(1, 1000)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1000);
    client
        .batch_execute("SET statement_timeout = 0")
        .await
        .unwrap();
}

/// Sends one simple-protocol message and returns the transaction status of the
/// ReadyForQuery that ends its reply (`I`, `T` or `E`).
async fn simple_query_status(socket: &mut tokio::net::TcpStream, sql: &str) -> u8 {
    use tokio::io::AsyncWriteExt;
    let mut msg = vec![b'Q'];
    msg.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
    msg.extend_from_slice(sql.as_bytes());
    msg.push(0);
    socket.write_all(&msg).await.unwrap();
    ready_status(socket).await
}

/// Reads backend messages up to ReadyForQuery and returns its transaction status byte.
async fn ready_status(socket: &mut tokio::net::TcpStream) -> u8 {
    use tokio::io::AsyncReadExt;
    loop {
        let kind = socket.read_u8().await.unwrap();
        let len = socket.read_i32().await.unwrap() as usize;
        let mut body = vec![0u8; len - 4];
        socket.read_exact(&mut body).await.unwrap();
        if kind == b'Z' {
            return body[0];
        }
    }
}

/// ReadyForQuery carries the session's transaction state, including the way back from a
/// failed block to an open one (ROLLBACK TO SAVEPOINT), which drivers rely on.
#[tokio::test]
async fn ready_for_query_reports_transaction_state() {
    use tokio::io::AsyncWriteExt;
    let server = Server::start().expect("server");
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let mut startup = Vec::new();
    startup.extend_from_slice(&196_608i32.to_be_bytes()); // protocol 3.0
    for s in ["user", "postgres", "database", "postgres"] {
        startup.extend_from_slice(s.as_bytes());
        startup.push(0);
    }
    startup.push(0);
    let mut packet = ((startup.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend_from_slice(&startup);
    socket.write_all(&packet).await.unwrap();
    assert_eq!(ready_status(&mut socket).await, b'I');
    let steps = [
        ("CREATE TABLE rfq (id int PRIMARY KEY)", b'I'),
        ("BEGIN", b'T'),
        ("SAVEPOINT s", b'T'),
        ("INSERT INTO rfq VALUES (1)", b'T'),
        ("SELECT 1/0", b'E'),
        ("SELECT 1", b'E'),
        ("ROLLBACK TO SAVEPOINT s", b'T'),
        ("INSERT INTO rfq VALUES (2)", b'T'),
        ("ROLLBACK TO SAVEPOINT nope", b'E'),
        ("ROLLBACK TO s; INSERT INTO rfq VALUES (3)", b'T'),
        ("COMMIT", b'I'),
    ];
    for (sql, want) in steps {
        let got = simple_query_status(&mut socket, sql).await;
        assert_eq!(got as char, want as char, "after {sql}");
    }
    let client = server.connect().await;
    let ids: Vec<i32> = client
        .query("SELECT id FROM rfq ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![3]);
}

/// `pg_cancel_backend(pid)` from another session stops a running query with 57014, as a
/// CancelRequest does; an unknown pid gives false.
#[tokio::test]
async fn pg_cancel_backend_from_another_session() {
    let server = Server::start().expect("server");
    let victim = server.connect().await;
    let other = server.connect().await;
    let pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let slow = victim.query("SELECT count(*) FROM generate_series(1, 5000000000)", &[]);
    let cancel = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        other
            .query_one("SELECT pg_cancel_backend($1::int4)", &[&pid])
            .await
            .unwrap()
            .get::<_, bool>(0)
    };
    let started = std::time::Instant::now();
    let (result, cancelled) = tokio::join!(slow, cancel);
    assert!(cancelled);
    let err = result.expect_err("cancelled");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let unknown: bool = other
        .query_one("SELECT pg_cancel_backend(999999)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!unknown);
    // the cancelled session goes on
    let one: i32 = victim.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

/// Sends a simple query and returns the ParameterStatus (name, value) pairs of its reply.
async fn parameter_reports(socket: &mut tokio::net::TcpStream, sql: &str) -> Vec<(String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut msg = vec![b'Q'];
    msg.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
    msg.extend_from_slice(sql.as_bytes());
    msg.push(0);
    socket.write_all(&msg).await.unwrap();
    let mut out = Vec::new();
    loop {
        let kind = socket.read_u8().await.unwrap();
        let len = socket.read_i32().await.unwrap() as usize;
        let mut body = vec![0u8; len - 4];
        socket.read_exact(&mut body).await.unwrap();
        match kind {
            b'Z' => return out,
            b'S' => {
                let parts: Vec<String> = body
                    .split(|&b| b == 0)
                    .map(|p| String::from_utf8_lossy(p).to_string())
                    .collect();
                out.push((parts[0].clone(), parts[1].clone()));
            }
            _ => {}
        }
    }
}

/// A change of a reported parameter (SET, RESET, a rollback undoing a SET, SET ROLE) is
/// sent to the client as ParameterStatus, as Postgres does; other statements send none.
#[tokio::test]
async fn parameter_status_follows_reported_settings() {
    use tokio::io::AsyncWriteExt;
    let server = Server::start().expect("server");
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let mut startup = Vec::new();
    startup.extend_from_slice(&196_608i32.to_be_bytes());
    for s in ["user", "postgres", "database", "postgres"] {
        startup.extend_from_slice(s.as_bytes());
        startup.push(0);
    }
    startup.push(0);
    let mut packet = ((startup.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend_from_slice(&startup);
    socket.write_all(&packet).await.unwrap();
    assert_eq!(ready_status(&mut socket).await, b'I');
    let pair = |n: &str, v: &str| (n.to_string(), v.to_string());
    assert_eq!(
        parameter_reports(&mut socket, "SET application_name = 'reporting'").await,
        vec![pair("application_name", "reporting")]
    );
    assert_eq!(parameter_reports(&mut socket, "SELECT 1").await, vec![]);
    assert_eq!(
        parameter_reports(&mut socket, "SET statement_timeout = 1000").await,
        vec![],
        "statement_timeout is not a reported parameter"
    );
    assert_eq!(
        parameter_reports(&mut socket, "BEGIN; SET DateStyle = 'ISO, DMY'").await,
        vec![pair("DateStyle", "ISO, DMY")]
    );
    assert_eq!(
        parameter_reports(&mut socket, "ROLLBACK").await,
        vec![pair("DateStyle", "ISO, MDY")]
    );
    assert_eq!(
        parameter_reports(&mut socket, "RESET application_name").await,
        vec![pair("application_name", "")]
    );
    assert_eq!(
        parameter_reports(&mut socket, "CREATE ROLE plain; SET ROLE plain").await,
        vec![pair("is_superuser", "off")]
    );
    assert_eq!(
        parameter_reports(&mut socket, "RESET ROLE").await,
        vec![pair("is_superuser", "on")]
    );
}

/// Parameters a statement mentions are all described, also where the server cannot type
/// them; table functions get their parameters' values (they evaluate arguments while
/// planning), in SELECT, INSERT … SELECT and EXPLAIN.
#[tokio::test]
async fn parameters_reach_table_function_arguments() {
    let server = Server::start().expect("server");
    let client = server.connect().await;
    client
        .batch_execute("CREATE TABLE series (k int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let ins = client
        .prepare("INSERT INTO series SELECT g, $1::text FROM generate_series($2::int, $3::int) g")
        .await
        .unwrap();
    assert_eq!(ins.params().len(), 3);
    assert_eq!(
        client.execute(&ins, &[&"x", &1i32, &40i32]).await.unwrap(),
        40
    );
    let row = client
        .query_one(
            "SELECT count(*), min(v) FROM generate_series(1, $1::int) g JOIN series ON k = g",
            &[&25i32],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 25);
    assert_eq!(row.get::<_, String>(1), "x");
    let plan = client
        .query(
            "EXPLAIN SELECT * FROM generate_series(1, $1::int)",
            &[&3i32],
        )
        .await
        .unwrap();
    assert!(!plan.is_empty());
}

/// COPY … TO STDOUT through the extended protocol (tokio-postgres prepares it): the rows, the
/// CSV header alone for no rows, the binary signature and trailer, and the session usable after.
#[tokio::test]
async fn copy_out_through_the_extended_protocol() {
    use futures::TryStreamExt;
    let server = Server::start().expect("server");
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE TABLE copy_ext (id int PRIMARY KEY, v text);
             INSERT INTO copy_ext VALUES (1, 'a'), (2, NULL)",
        )
        .await
        .unwrap();
    let read = |sql: &'static str| {
        let client = &client;
        async move {
            let chunks: Vec<bytes::Bytes> = client
                .copy_out(sql)
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            chunks.concat()
        }
    };
    assert_eq!(
        read("COPY (SELECT * FROM copy_ext ORDER BY id) TO STDOUT").await,
        b"1\ta\n2\t\\N\n"
    );
    assert_eq!(
        read("COPY (SELECT * FROM copy_ext WHERE false) TO STDOUT (FORMAT csv, HEADER)").await,
        b"id,v\n"
    );
    let empty_binary =
        read("COPY (SELECT * FROM copy_ext WHERE false) TO STDOUT (FORMAT binary)").await;
    assert_eq!(&empty_binary[..11], b"PGCOPY\n\xff\r\n\0");
    assert_eq!(
        empty_binary.len(),
        19 + 2,
        "signature, flags, extension, trailer"
    );
    assert_eq!(&empty_binary[19..], b"\xff\xff");
    let n: i64 = client
        .query_one("SELECT count(*) FROM copy_ext", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}
