//! The store conformance suite against SQLite (the PostgreSQL engine will run the same suite).

use std::sync::Arc;

use anneal_server::store::{conformance, SqliteStore, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let counter = std::sync::atomic::AtomicU32::new(0);
    conformance::run_all(|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.path().join(format!("store-{n}.db"));
        async move { Arc::new(SqliteStore::open(&path).await.expect("open")) as Arc<dyn Store> }
    })
    .await;
}

#[tokio::test]
async fn sqlite_data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    {
        let s = SqliteStore::open(&path).await.unwrap();
        assert!(s.put_setting_if_absent("k", "v").await.unwrap());
    }
    let s = SqliteStore::open(&path).await.unwrap();
    assert_eq!(s.get_setting("k").await.unwrap().as_deref(), Some("v"));
    assert!(!s.put_setting_if_absent("k", "w").await.unwrap());
}
