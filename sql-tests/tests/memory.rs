//! Memory: the server's resident set stays under its configured `memory_limit_bytes` while it
//! loads a table and serves 20 concurrent scans of it; a query that needs more than the query
//! pool fails with 53200 while the server keeps serving.
//!
//! `make test` loads `OROCHI_MEMORY_ROWS` rows (default 400,000, to fit CI time with a debug
//! build); `bench/memory.sh` runs the same test with 5,000,000 rows on a release build.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::SinkExt;
use orochi_sql_tests::Server;

const MEMORY_LIMIT: u64 = 768 << 20;
const QUERY_MEMORY: u64 = 64 << 20;
const ROW_CACHE: u64 = 32 << 20;

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_scans_stay_within_memory_and_excess_fails_with_53200() {
    let rows: u64 = std::env::var("OROCHI_MEMORY_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400_000);
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("orochi.toml");
    std::fs::write(
        &config,
        format!(
            "memory_limit_bytes = {MEMORY_LIMIT}\nquery_memory_limit_bytes = {QUERY_MEMORY}\n\
             row_cache_bytes = {ROW_CACHE}\n"
        ),
    )
    .unwrap();
    let server = Server::start_with(&["--config", config.to_str().unwrap()], &[]).expect("server");
    let pid = server.pid().expect("server pid");
    let peak = Arc::new(AtomicU64::new(rss_bytes(pid)));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let client = server.connect().await;
    client
        .batch_execute("CREATE TABLE big (id int8 PRIMARY KEY, g int4, v float8, s text)")
        .await
        .unwrap();
    // load in COPY chunks of 100k rows (each its own transaction)
    let chunk = 100_000u64;
    let mut start = 0;
    while start < rows {
        let end = (start + chunk).min(rows);
        let mut data = String::with_capacity(((end - start) * 40) as usize);
        for i in start..end {
            data.push_str(&format!(
                "{i}\t{}\t{}\tsome text payload {i:08}\n",
                i % 50_000,
                (i as f64) * 0.5
            ));
        }
        let sink = client.copy_in("COPY big FROM STDIN").await.unwrap();
        futures::pin_mut!(sink);
        sink.send(bytes::Bytes::from(data)).await.unwrap();
        assert_eq!(sink.finish().await.unwrap(), end - start);
        start = end;
    }
    let loaded = rss_bytes(pid);
    let load_peak = peak.swap(loaded, Ordering::Relaxed);

    let mut tasks = Vec::new();
    for c in 0..20 {
        let client = server.connect().await;
        tasks.push(tokio::spawn(async move {
            let sql = if c % 2 == 0 {
                "SELECT g, count(*), sum(v) FROM big GROUP BY g ORDER BY g LIMIT 3"
            } else {
                "SELECT count(*), max(length(s)), min(v) FROM big"
            };
            client.query(sql, &[]).await.map(|r| r.len())
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(n) => {
                assert!(n > 0);
                ok += 1;
            }
            // under 20-way concurrency a query's fair share of the pool can run out: it must
            // then fail cleanly with 53200, nothing else
            Err(e) => assert_eq!(e.code().map(|c| c.code()), Some("53200"), "{e}"),
        }
    }
    let scan_peak = peak.load(Ordering::Relaxed);
    eprintln!(
        "rows={rows} load_peak_rss={} MiB loaded_rss={} MiB scan_peak_rss={} MiB \
         (memory limit {} MiB, query pool {} MiB, row cache {} MiB), {ok}/20 queries succeeded",
        load_peak >> 20,
        loaded >> 20,
        scan_peak >> 20,
        MEMORY_LIMIT >> 20,
        QUERY_MEMORY >> 20,
        ROW_CACHE >> 20
    );
    assert!(ok >= 10, "most concurrent scans must succeed: {ok}/20");
    assert!(
        load_peak.max(scan_peak) <= MEMORY_LIMIT,
        "RSS peaked at {} MiB (load) and {} MiB (scans), over the {} MiB limit",
        load_peak >> 20,
        scan_peak >> 20,
        MEMORY_LIMIT >> 20
    );
    // and the scans themselves may add at most the query pool, plus an allowance for what the
    // pool does not account: each connection's in-flight batches and socket buffers, and the
    // row store's page cache filling up as the scans read it
    let allowance = 128 << 20;
    assert!(
        scan_peak <= loaded + QUERY_MEMORY + allowance,
        "RSS grew from {} MiB to {} MiB during the scans",
        loaded >> 20,
        scan_peak >> 20
    );

    // a query whose state cannot spill (one array of every value) exceeds the pool
    let err = client
        .query("SELECT array_agg(s || repeat('x', 300)) FROM big", &[])
        .await
        .expect_err("an over-limit query must fail");
    assert_eq!(err.code().map(|c| c.code()), Some("53200"), "{err}");
    // the server is up and the session usable
    let n: i64 = client
        .query_one("SELECT count(*) FROM big", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n as u64, rows);
    stop.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let peak = peak.load(Ordering::Relaxed);
    assert!(
        peak <= MEMORY_LIMIT,
        "RSS peaked at {} MiB with the over-limit query, over the {} MiB limit",
        peak >> 20,
        MEMORY_LIMIT >> 20
    );
}
