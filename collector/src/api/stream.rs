//! `GET /api/v1/stream`: the live feed (see [`crate::feed`]) as Server-Sent
//! Events: `event: event` for each cluster event, `event: alert` for each
//! alert transition, `event: lagged` (data: how many items were missed) when
//! the client fell behind, and a comment every 15 s to keep proxies from
//! closing a quiet stream. Streams end when the collector stops.

use crate::feed::{Feed, FeedItem};
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::Router;
use futures::Stream;
use std::convert::Infallible;
use tokio::sync::broadcast::error::RecvError;

/// The route of this module.
pub fn router(feed: Feed) -> Router {
    Router::new()
        .route("/api/v1/stream", get(stream))
        .with_state(feed)
}

fn event(item: FeedItem) -> Event {
    Event::default()
        .event(item.kind)
        .data(item.data.to_string())
}

async fn stream(State(feed): State<Feed>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let items = futures::stream::unfold((feed.subscribe(), feed), |(mut rx, feed)| async move {
        let received = tokio::select! {
            r = rx.recv() => r,
            // The collector is stopping: the stream ends, and with it the connection.
            () = feed.closed() => return None,
        };
        let next = match received {
            Ok(item) => event(item),
            Err(RecvError::Lagged(n)) => Event::default().event("lagged").data(n.to_string()),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(next), (rx, feed)))
    });
    Sse::new(items).keep_alive(KeepAlive::default())
}
