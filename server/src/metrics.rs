//! Prometheus metrics: one process-wide recorder, rendered at `/metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide recorder, installed on first use (tests start several servers in one
/// process; they share it).
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first; then ours just renders nothing.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// `GET /metrics` in the Prometheus text format.
pub async fn render() -> String {
    handle().render()
}
