//! Security, over the wire: roles logging in with SCRAM-SHA-256 verifiers, host-based access
//! rules, TLS (`sslmode=require` and `verify-full`, from psql and from sqlx), and a fuzz test
//! of the message decoder (garbage and truncated messages never hurt the server or other
//! sessions).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use orochi_sql_tests::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::NoTls;

fn dsn(port: u16, user: &str, password: Option<&str>) -> String {
    let mut s = format!("host=127.0.0.1 port={port} user={user} dbname=postgres");
    if let Some(p) = password {
        s.push_str(&format!(" password={p}"));
    }
    s
}

/// Connects and returns the client, or the error's SQLSTATE and message.
async fn login(
    port: u16,
    user: &str,
    password: Option<&str>,
) -> Result<tokio_postgres::Client, (String, String)> {
    match tokio_postgres::connect(&dsn(port, user, password), NoTls).await {
        Ok((client, conn)) => {
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(client)
        }
        Err(e) => Err((
            e.code().map(|c| c.code().to_string()).unwrap_or_default(),
            e.as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_else(|| e.to_string()),
        )),
    }
}

fn write_config(dir: &Path, extra: &str, hba: &str) -> String {
    let hba_path = dir.join("pg_hba.conf");
    std::fs::write(&hba_path, hba).unwrap();
    let config = dir.join("orochi.toml");
    std::fs::write(
        &config,
        format!("hba_file = \"{}\"\n{extra}", hba_path.display()),
    )
    .unwrap();
    config.display().to_string()
}

/// Roles created in SQL log in with their passwords (SCRAM-SHA-256); the rules file decides
/// who must authenticate, who is trusted and who is rejected; NOLOGIN roles, unknown roles
/// and wrong passwords are refused with Postgres' SQLSTATEs; passwords survive a restart.
#[tokio::test]
async fn roles_log_in_under_host_based_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(
        tmp.path(),
        "",
        "# the administrator is trusted on loopback\n\
         host all postgres 127.0.0.1/32 trust\n\
         host all blocked  127.0.0.1/32 reject\n\
         host all all      127.0.0.1/32 scram-sha-256\n",
    );
    let data = tmp.path().join("data");
    {
        let server = Server::start_on_with(0, &data, &["--config", &config]).expect("server");
        let admin = login(server.port, "postgres", None).await.expect("trusted");
        admin
            .batch_execute(
                "CREATE USER alice WITH PASSWORD 'alice-pw';
                 CREATE ROLE nologin_role PASSWORD 'pw';
                 CREATE USER blocked PASSWORD 'pw';
                 CREATE USER nopass;",
            )
            .await
            .unwrap();

        let alice = login(server.port, "alice", Some("alice-pw"))
            .await
            .expect("alice logs in");
        let row = alice
            .query_one("SELECT current_user, session_user", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "alice");
        assert_eq!(row.get::<_, String>(1), "alice");

        let (code, msg) = login(server.port, "alice", Some("wrong"))
            .await
            .err()
            .unwrap();
        assert_eq!(code, "28P01");
        assert_eq!(msg, "password authentication failed for user \"alice\"");
        let (code, _) = login(server.port, "nobody", Some("pw"))
            .await
            .err()
            .unwrap();
        assert_eq!(code, "28P01", "an unknown role fails like a wrong password");
        let (code, _) = login(server.port, "nopass", Some("anything"))
            .await
            .err()
            .unwrap();
        assert_eq!(code, "28P01", "a role without a password cannot pass SCRAM");
        let (code, msg) = login(server.port, "nologin_role", Some("pw"))
            .await
            .err()
            .unwrap();
        assert_eq!(code, "28000");
        assert_eq!(msg, "role \"nologin_role\" is not permitted to log in");
        let (code, msg) = login(server.port, "blocked", Some("pw"))
            .await
            .err()
            .unwrap();
        assert_eq!(code, "28000");
        assert!(
            msg.starts_with(
                "pg_hba.conf rejects connection for host \"127.0.0.1\", user \"blocked\""
            ),
            "{msg}"
        );

        // a new password takes effect for the next login; the old one stops working
        alice
            .batch_execute("ALTER ROLE alice WITH PASSWORD 'changed'")
            .await
            .unwrap();
        assert!(login(server.port, "alice", Some("changed")).await.is_ok());
        assert_eq!(
            login(server.port, "alice", Some("alice-pw"))
                .await
                .err()
                .unwrap()
                .0,
            "28P01"
        );
        // a role without CREATEROLE may change its own password, nothing else
        let err = alice
            .batch_execute("ALTER ROLE alice WITH CREATEDB")
            .await
            .unwrap_err();
        assert_eq!(err.code().unwrap().code(), "42501");
        // sessions that were already open are unaffected
        assert!(admin.simple_query("SELECT 1").await.is_ok());
        // the server is killed (-9) here
    }
    // the verifier is durable
    let server = Server::start_on_with(0, &data, &["--config", &config]).expect("restart");
    let alice = login(server.port, "alice", Some("changed"))
        .await
        .expect("alice after restart");
    assert!(alice.simple_query("SELECT 1").await.is_ok());
}

/// Without a rules file, loopback is trusted, but only for roles that exist and may log in.
#[tokio::test]
async fn trusted_logins_need_an_existing_login_role() {
    let server = Server::start().expect("server");
    let admin = server.connect().await;
    admin
        .batch_execute("CREATE ROLE reader; CREATE USER writer")
        .await
        .unwrap();
    let (code, msg) = login(server.port, "ghost", None).await.err().unwrap();
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("28000", "role \"ghost\" does not exist")
    );
    let (code, _) = login(server.port, "reader", None).await.err().unwrap();
    assert_eq!(code, "28000");
    let writer = login(server.port, "writer", None).await.expect("writer");
    let user: String = writer
        .query_one("SELECT current_user", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, "writer");
    // a non-superuser cannot read tables it was not granted
    admin
        .batch_execute("CREATE TABLE payroll (id int PRIMARY KEY, salary int)")
        .await
        .unwrap();
    let err = writer
        .query("SELECT * FROM payroll", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42501");
    assert_eq!(
        err.as_db_error().unwrap().message(),
        "permission denied for table payroll"
    );
    admin
        .batch_execute("GRANT SELECT ON payroll TO writer")
        .await
        .unwrap();
    assert!(writer.query("SELECT * FROM payroll", &[]).await.is_ok());
}

/// A CA and a server certificate for `localhost` / 127.0.0.1, made with the openssl CLI.
fn make_certificates(dir: &Path) {
    let script = format!(
        r#"set -e
cd "{dir}"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout ca.key -out ca.pem -days 2 -subj "/CN=OrochiDB test CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
printf "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n" > ext.cnf
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
  -out server.pem -days 2 -extfile ext.cnf 2>/dev/null
"#,
        dir = dir.display()
    );
    let status = Command::new("bash").arg("-c").arg(script).status().unwrap();
    assert!(
        status.success(),
        "openssl could not make the test certificates"
    );
}

fn psql() -> String {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin/psql"))
                .filter(|p| p.exists())
                .max()
        })
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "psql".to_string())
}

/// Runs psql with a connection string; (success, stdout + stderr).
fn run_psql(conninfo: &str, command: &str) -> (bool, String) {
    let out = Command::new(psql())
        .arg("-X")
        .arg("-At")
        .arg("-c")
        .arg(command)
        .arg(conninfo)
        .output()
        .expect("psql runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// TLS: with a certificate configured, psql and sqlx connect with `sslmode=require` and
/// `verify-full` (the server's certificate checked against the CA and the host name);
/// `hostssl`/`hostnossl` rules tell encrypted connections from plain ones.
#[tokio::test]
async fn tls_require_and_verify_full() {
    let tmp = tempfile::tempdir().unwrap();
    make_certificates(tmp.path());
    let config = write_config(
        tmp.path(),
        &format!(
            "tls_cert_file = \"{0}/server.pem\"\ntls_key_file = \"{0}/server.key\"\n",
            tmp.path().display()
        ),
        "hostssl   all all 127.0.0.1/32 trust\n\
         hostnossl all all 127.0.0.1/32 reject\n",
    );
    let server = Server::start_with(&["--config", &config], &[]).expect("server");
    let ca = tmp.path().join("ca.pem");
    let base = format!("port={} user=postgres dbname=postgres", server.port);

    let (ok, out) = run_psql(
        &format!("host=127.0.0.1 {base} sslmode=require"),
        r"\conninfo",
    );
    assert!(ok, "{out}");
    assert!(out.contains("SSL connection (protocol: TLSv1."), "{out}");
    let (ok, out) = run_psql(
        &format!(
            "host=localhost hostaddr=127.0.0.1 {base} sslmode=verify-full sslrootcert={}",
            ca.display()
        ),
        "SELECT 40 + 2",
    );
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "42");
    // the certificate does not name this host: verify-full refuses it
    let (ok, out) = run_psql(
        &format!(
            "host=127.0.0.2 hostaddr=127.0.0.1 {base} sslmode=verify-full sslrootcert={}",
            ca.display()
        ),
        "SELECT 1",
    );
    assert!(!ok, "{out}");
    assert!(out.contains("does not match host name"), "{out}");
    // a plain connection meets the hostnossl reject rule
    let (ok, out) = run_psql(
        &format!("host=127.0.0.1 {base} sslmode=disable"),
        "SELECT 1",
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("pg_hba.conf rejects connection for host \"127.0.0.1\", user \"postgres\", database \"postgres\", no encryption"),
        "{out}"
    );

    // a driver: sqlx over rustls, verify-full against the CA
    use sqlx::ConnectOptions;
    use sqlx::postgres::{PgConnectOptions, PgSslMode};
    for mode in [PgSslMode::Require, PgSslMode::VerifyFull] {
        let mut conn = PgConnectOptions::new()
            .host("localhost")
            .port(server.port)
            .username("postgres")
            .database("postgres")
            .ssl_mode(mode)
            .ssl_root_cert(&ca)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("sqlx with {mode:?}: {e}"));
        let v: i32 = sqlx::query_scalar("SELECT 7")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(v, 7);
    }
}

/// A small deterministic generator (xorshift), so a failure names its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Up to `max` random bytes.
    fn bytes(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn startup_packet() -> Vec<u8> {
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for s in ["user", "postgres", "database", "postgres"] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

/// One hostile input for seed `seed`.
fn hostile_input(seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut out = Vec::new();
    match seed % 4 {
        // garbage instead of a startup packet
        0 => out.extend(rng.bytes(300)),
        // a startup packet with a lying length
        1 => {
            let mut p = startup_packet();
            let len = [0i32, 3, 7, -1, i32::MAX, 10_001, 9][rng.below(7) as usize];
            p[..4].copy_from_slice(&len.to_be_bytes());
            out.extend(p);
            out.extend(rng.bytes(64));
        }
        // after a valid startup: messages of every type with random lengths and bodies
        _ => {
            out.extend(startup_packet());
            for _ in 0..1 + rng.below(6) {
                let types = b"QPBEDSCHXFdcfpZ?\0";
                out.push(types[rng.below(types.len() as u64) as usize]);
                let body = rng.bytes(80);
                let len = match rng.below(5) {
                    0 => -1,
                    1 => 0x3fff_ffff,
                    2 => 2,
                    _ => body.len() as i32 + 4,
                };
                out.extend(len.to_be_bytes());
                out.extend(&body);
            }
            // sometimes cut the last message short
            if seed % 4 == 3 {
                let cut = rng.below(out.len() as u64) as usize;
                out.truncate(out.len().saturating_sub(cut.min(12)));
            }
        }
    }
    out
}

/// Garbage, lying lengths and truncated messages: each hostile connection ends (an error, or
/// the server waits for bytes that never come and the client hangs up); the server stays up,
/// an idle session on the side keeps working, and new connections are served.
#[tokio::test]
async fn decoder_fuzz_never_hurts_the_server() {
    let mut server = Server::start().expect("server");
    let bystander = server.connect().await;
    bystander
        .batch_execute(
            "CREATE TABLE fuzz_witness (id int PRIMARY KEY); INSERT INTO fuzz_witness VALUES (1)",
        )
        .await
        .unwrap();
    for seed in 0..400u64 {
        let input = hostile_input(seed);
        let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: server stopped accepting: {e}"));
        let _ = socket.write_all(&input).await;
        // read what the server answers, until it closes or goes quiet
        let mut buf = vec![0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_millis(200), async {
            while let Ok(n) = socket.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        drop(socket);
        if seed % 50 == 49 {
            let n: i64 = bystander
                .query_one("SELECT count(*) FROM fuzz_witness", &[])
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: the bystander session broke: {e}"))
                .get(0);
            assert_eq!(n, 1);
            let fresh = server.connect().await;
            assert!(fresh.simple_query("SELECT 1").await.is_ok(), "seed {seed}");
        }
    }
    assert!(server.is_running(), "the server process exited");
}

/// A message with a length field below 4 makes pgwire's decoder panic; the panic ends only
/// that connection, and its open transaction is rolled back: the row it locked is free.
#[tokio::test]
async fn a_panicking_connection_releases_its_locks() {
    let server = Server::start().expect("server");
    let other = server.connect().await;
    other
        .batch_execute("CREATE TABLE lock_witness (id int PRIMARY KEY, v int); INSERT INTO lock_witness VALUES (1, 0)")
        .await
        .unwrap();
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    socket.write_all(&startup_packet()).await.unwrap();
    let sql = b"BEGIN; UPDATE lock_witness SET v = 1 WHERE id = 1\0";
    let mut q = vec![b'Q'];
    q.extend(((sql.len() + 4) as i32).to_be_bytes());
    q.extend_from_slice(sql);
    socket.write_all(&q).await.unwrap();
    // wait for the UPDATE's CommandComplete ("UPDATE 1")
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 4096];
    while !seen.windows(8).any(|w| w == b"UPDATE 1") {
        let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buf))
            .await
            .expect("the UPDATE answers")
            .unwrap();
        assert!(n > 0, "the server closed the connection early");
        seen.extend_from_slice(&buf[..n]);
    }
    // CopyData with a length of 2
    socket.write_all(&[b'd', 0, 0, 0, 2]).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(n) = socket.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    // the row lock is gone: this UPDATE does not wait
    let updated = tokio::time::timeout(
        Duration::from_secs(10),
        other.execute("UPDATE lock_witness SET v = 2 WHERE id = 1", &[]),
    )
    .await
    .expect("the row lock was released")
    .unwrap();
    assert_eq!(updated, 1);
    let v: i32 = other
        .query_one("SELECT v FROM lock_witness WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        v, 2,
        "the panicked session's uncommitted write was rolled back"
    );
}
