//! Small HTTP helpers shared by the listeners.

use anneal_shared::protocol::HEADER_SERVER_TIME_MS;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Uri};
use axum::middleware::Next;
use axum::response::Response;
use time::OffsetDateTime;

/// The server's clock in Unix milliseconds.
pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Middleware: stamp every response with the server's clock, so agents with a wrong RTC can
/// correct for it on any exchange.
pub async fn stamp_server_time(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&now_ms().to_string()) {
        res.headers_mut().insert(HEADER_SERVER_TIME_MS, v);
    }
    res
}

/// The host name or address the client used to reach us (Host header, or the HTTP/2
/// authority), without the port. This is the address on the client's side of the network.
pub fn request_host(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    let raw = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| uri.authority().map(|a| a.as_str().to_string()))?;
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // [v6]:port
        format!("[{}]", rest.split(']').next()?)
    } else {
        raw.rsplit_once(':')
            .map(|(h, _)| h.to_string())
            .unwrap_or(raw)
    };
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_without_port() {
        let mut h = HeaderMap::new();
        let uri: Uri = "/x".parse().unwrap();
        h.insert("host", "10.0.0.1:8443".parse().unwrap());
        assert_eq!(request_host(&h, &uri).as_deref(), Some("10.0.0.1"));
        h.insert("host", "[fd00::1]:8443".parse().unwrap());
        assert_eq!(request_host(&h, &uri).as_deref(), Some("[fd00::1]"));
        h.insert("host", "anneal.lab".parse().unwrap());
        assert_eq!(request_host(&h, &uri).as_deref(), Some("anneal.lab"));
        let uri: Uri = "https://srv:8443/x".parse().unwrap();
        assert_eq!(
            request_host(&HeaderMap::new(), &uri).as_deref(),
            Some("srv")
        );
    }
}
