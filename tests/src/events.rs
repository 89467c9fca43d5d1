//! Following `GET /api/v1/events` in tests, through the CLI's own event-stream reader.

use std::collections::VecDeque;
use std::time::Duration;

use anneal_server::cli::sse::SseReader;
use anneal_shared::events::Event;

use crate::TestServer;

/// How long to wait for one event before failing the test (a bound, not a timing check).
const EVENT_WAIT: Duration = Duration::from_secs(60);

/// An open event stream.
pub struct EventStream {
    res: reqwest::Response,
    reader: SseReader,
    pending: VecDeque<Event>,
}

impl EventStream {
    /// Open `/api/v1/events?{query}` as the admin, resuming after `last_event_id`.
    pub async fn open(server: &TestServer, query: &str, last_event_id: Option<&str>) -> Self {
        let req = request(server, query, last_event_id);
        let res = req.send().await.expect("events request");
        assert_eq!(res.status(), 200, "GET /api/v1/events?{query}");
        EventStream {
            res,
            reader: SseReader::default(),
            pending: VecDeque::new(),
        }
    }

    /// The next event (panics if none comes within a minute or the stream ends).
    pub async fn next(&mut self) -> Event {
        for _ in 0..10_000 {
            if let Some(e) = self.pending.pop_front() {
                return e;
            }
            let chunk = tokio::time::timeout(EVENT_WAIT, self.res.chunk())
                .await
                .expect("an event within a minute")
                .expect("stream readable")
                .expect("the stream goes on");
            for frame in self.reader.push(&chunk).expect("event-stream syntax") {
                let e: Event = serde_json::from_str(&frame.data).expect("event JSON");
                assert_eq!(
                    frame.id.as_deref(),
                    Some(e.id.as_str()),
                    "SSE id is the event's"
                );
                assert_eq!(
                    frame.event.as_deref(),
                    Some(e.kind.as_str()),
                    "SSE event is its kind"
                );
                self.pending.push_back(e);
            }
        }
        panic!("no event after 10000 chunks");
    }

    /// Events up to and including the first that `last` accepts (at most `max`).
    pub async fn until(&mut self, max: usize, last: impl Fn(&Event) -> bool) -> Vec<Event> {
        let mut out = Vec::new();
        while out.len() < max {
            let e = self.next().await;
            let done = last(&e);
            out.push(e);
            if done {
                return out;
            }
        }
        panic!("no matching event among {max}: {out:#?}");
    }
}

/// The request for `/api/v1/events?{query}` as the admin, resuming after `last_event_id`.
pub fn request(
    server: &TestServer,
    query: &str,
    last_event_id: Option<&str>,
) -> reqwest::RequestBuilder {
    let req = server.api_request(&format!("/api/v1/events?{query}"));
    match last_event_id {
        Some(id) => req.header("last-event-id", id),
        None => req,
    }
}

/// An event id's sequence number.
pub fn seq(e: &Event) -> u64 {
    e.id.split_once('-')
        .and_then(|(_, s)| s.parse().ok())
        .unwrap_or_else(|| panic!("event id {:?}", e.id))
}
