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
