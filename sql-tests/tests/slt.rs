//! Runs every `.slt` file under `sql-tests/slt/` against a standalone OrochiDB and against a
//! coordinator with 2 worker daemons (all started for this run), and the `pg_compat_*.slt`
//! files also against PostgreSQL when `OROCHI_PG_URL` is set (the Makefile starts one). Exits non-zero if any file fails.

use std::path::{Path, PathBuf};

use orochi_sql_tests::{Cluster, PgDb, Server};

fn slt_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("reading slt dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            slt_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "slt") {
            out.push(p);
        }
    }
}

async fn run_file(url: &str, engine: &str, file: &Path) -> Result<(), String> {
    let url = url.to_string();
    let engine_name = engine.to_string();
    let mut runner = sqllogictest::Runner::new(move || {
        let url = url.clone();
        let engine_name = engine_name.clone();
        async move {
            PgDb::connect(&url, &engine_name)
                .await
                .map_err(|e| orochi_sql_tests::DbError(format!("{e:#}")))
        }
    });
    runner.with_hash_threshold(0);
    runner.add_label(engine);
    runner
        .run_file_async(file)
        .await
        .map_err(|e| format!("{}", e.display(true)))
}

#[tokio::main]
async fn main() {
    let filter = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("slt");
    let mut files = Vec::new();
    slt_files(&root, &mut files);
    if let Some(f) = &filter {
        files.retain(|p| p.to_string_lossy().contains(f.as_str()));
    }
    let mut failures = Vec::new();
    // the same files, the same expected results, on both topologies
    let server = Server::start().expect("starting orochi-coordinator");
    let cluster = Cluster::start(2).expect("starting a coordinator and 2 workers");
    for (topology, url) in [
        ("orochi", server.url()),
        ("cluster", cluster.coordinator.url()),
    ] {
        for f in &files {
            let name = f.strip_prefix(&root).unwrap_or(f).display().to_string();
            match run_file(&url, "orochi", f).await {
                Ok(()) => println!("ok      {topology:<10} {name}"),
                Err(e) => {
                    println!("FAILED  {topology:<10} {name}\n{e}");
                    failures.push(format!("{topology}: {name}"));
                }
            }
        }
    }
    drop(cluster);
    match std::env::var("OROCHI_PG_URL") {
        Ok(pg) => {
            for f in files.iter().filter(|f| {
                f.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("pg_compat_"))
            }) {
                let name = f.strip_prefix(&root).unwrap_or(f).display().to_string();
                match run_file(&pg, "postgres", f).await {
                    Ok(()) => println!("ok      postgres   {name}"),
                    Err(e) => {
                        println!("FAILED  postgres   {name}\n{e}");
                        failures.push(format!("postgres: {name}"));
                    }
                }
            }
        }
        Err(_) => {
            println!("note: OROCHI_PG_URL not set; pg_compat files were not run against PostgreSQL")
        }
    }
    drop(server);
    if !failures.is_empty() {
        eprintln!("{} slt file(s) failed: {failures:?}", failures.len());
        std::process::exit(1);
    }
    println!("all {} slt file(s) passed", files.len());
}
