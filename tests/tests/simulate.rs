//! The scale benchmark's simulator (`anneal-agent simulate`) against a real server, in
//! miniature; and inventories much larger than an agent connection's read buffer.

use anneal_agent::simulate::{self, SimConfig};
use anneal_shared::inventory::PciDevice;
use anneal_tests::{hints, TestServer};

#[tokio::test]
async fn simulated_agents_enroll_report_and_heartbeat() {
    let server = TestServer::start().await;
    let count = 5;
    let token = server.bootstrap_token(count).await;
    let report = simulate::run(SimConfig {
        url: server.api_url.clone(),
        ca_fingerprint: server.fingerprint(),
        token,
        count,
        enroll_concurrency: 2,
        heartbeat_secs: 1,
        duration_secs: 2,
        id_base: 7,
    })
    .await
    .expect("simulation runs");
    assert_eq!(report.total_errors, 0, "{}", report.summary());
    assert_eq!(report.enrolled, count);
    assert_eq!(report.peak_connected, count as u64);
    assert_eq!(report.inventories_sent, count);
    assert_eq!(report.inventory_resends, 0);
    assert!(report.min_heartbeats_per_agent >= 2, "{}", report.summary());
    assert_eq!(report.heartbeats_ok, report.heartbeats_sent);
    assert_eq!(report.heartbeat_latency.count as u64, report.heartbeats_ok);
    assert!(report.enrolls_per_sec > 0.0);

    // Distinct machines, each with its inventory, as the operator sees them.
    let list: Vec<serde_json::Value> = server
        .http()
        .get(format!("{}/api/v1/machines", server.api_url))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(list.len(), count as usize);
    server.stop().await;
}

#[tokio::test]
async fn inventories_larger_than_the_connection_buffer_arrive_whole() {
    let server = TestServer::start().await;
    let session = server.enroll(hints(3), "boot-big").await;
    let mut inv = simulate::inventory(3);
    let template = inv.pci[0].clone();
    inv.pci = (0..1500)
        .map(|n| PciDevice {
            address: format!("0000:{:02x}:{:02x}.{}", n / 256, (n / 8) % 32, n % 8),
            ..template.clone()
        })
        .collect();
    let size = serde_json::to_vec(&inv).expect("json").len();
    assert!(
        size > 20 * anneal_server::agent_api::HTTP1_MAX_BUF,
        "{size} bytes"
    );
    session.send_inventory(&inv).await.expect("large inventory");
    let own = session.own_record().await.expect("own record");
    assert_eq!(own.inventory.as_ref(), Some(&inv));
    // The same kept-alive connection still serves small requests.
    session.heartbeat("idle").await.expect("heartbeat");
    server.stop().await;
}
