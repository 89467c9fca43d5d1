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

/// The never-used cursor is memory only: after reopening, offers still start at the lowest
/// never-used address (here a hole below an address a client asked for).
#[tokio::test]
async fn lease_offers_after_reopening_fill_holes_first() {
    use anneal_server::store::{LeaseOp, LeaseOutcome, LeaseStore};
    use std::net::Ipv4Addr;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leases.db");
    let ip = |n: u8| Ipv4Addr::new(10, 9, 2, n);
    let offer = |n: u32, requested: Option<Ipv4Addr>| LeaseOp::Offer {
        subnet: "10.9.2.0/24".into(),
        mac: format!("02:00:00:02:00:{n:02x}"),
        range: (ip(1), ip(50)),
        fixed: None,
        requested,
        exclude: vec![],
        hold_until: time::OffsetDateTime::now_utc() + time::Duration::seconds(60),
        hostname: None,
    };
    let now = time::OffsetDateTime::now_utc();
    {
        let s = SqliteStore::open(&path).await.unwrap();
        let out = s
            .apply_lease_ops(
                &[offer(1, None), offer(2, None), offer(3, Some(ip(10)))],
                now,
            )
            .await
            .unwrap();
        assert_eq!(
            out,
            vec![
                LeaseOutcome::Leased(ip(1)),
                LeaseOutcome::Leased(ip(2)),
                LeaseOutcome::Leased(ip(10))
            ]
        );
    }
    let s = SqliteStore::open(&path).await.unwrap();
    let out = s.apply_lease_ops(&[offer(4, None)], now).await.unwrap();
    assert_eq!(out, vec![LeaseOutcome::Leased(ip(3))]);
}
