//! `GET /api/v1/events`: the event stream (server-sent events), filtered, resumable with
//! `Last-Event-ID`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anneal_shared::api::Problem;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::app::App;
use crate::events::{Cursor, Filter, Follower};
use crate::problem::{ApiError, ApiQuery};

/// How often an idle stream sends a comment, so proxies and clients know it is alive.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Filters and the resume point of the event stream.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct EventsQuery {
    /// Only this machine's events: its id or a prefix of it.
    pub machine: Option<String>,
    /// Only these kinds, comma-separated (e.g. `run_phase,attempt_ended`).
    pub kind: Option<String>,
    /// Only events of runs of this workflow.
    pub workflow: Option<String>,
    /// Resume after this event id, like the `Last-Event-ID` header (the header wins).
    pub since: Option<String>,
}

/// Follow every state change as server-sent events: `id` (`<epoch>-<seq>`), `event` (the
/// kind) and `data` (the event as JSON). From `Last-Event-ID` (or `since`) the missed events
/// are replayed first; when they are no longer held, or the client falls behind, a `reset`
/// event says to re-read state. A comment every 15 s keeps the connection alive.
#[utoipa::path(get, path = "/api/v1/events", tag = "events", params(EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "resume after this event id")),
    responses((status = 200, description = "an endless text/event-stream of events",
            content_type = "text/event-stream", body = anneal_shared::events::Event),
        (status = 400, body = Problem), (status = 401, body = Problem)),
    security(("bearer" = [])))]
pub async fn stream(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Response, ApiError> {
    let filter = Filter::parse(
        q.machine.as_deref(),
        q.kind.as_deref(),
        q.workflow.as_deref(),
    )
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let since = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::bad_request("Last-Event-ID is not text"))?
                .to_string(),
        ),
        None => q.since,
    };
    let after = match since.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(s) => Some(Cursor::parse(s).ok_or_else(|| {
            let s: String = s.chars().take(64).collect();
            ApiError::bad_request(format!("`{s}` is not an event id (<epoch>-<seq>)"))
        })?),
        None => None,
    };
    let follower = Follower::new(app.events.clone(), after, filter);
    let events = futures::stream::unfold(follower, |mut f| async move {
        let e = f.next().await?;
        let data = serde_json::to_string(&*e).unwrap_or_default();
        let sse = SseEvent::default()
            .id(e.id.clone())
            .event(e.kind.as_str())
            .data(data);
        Some((Ok::<_, Infallible>(sse), f))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}
