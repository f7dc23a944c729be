//! Live updates: a server-sent events stream of status transitions within the caller's scope, resumable with
//! `Last-Event-ID`.
//!
//! The tail of the status history (`feed`) fans transitions out to the streams. A resuming stream replays from the history up to where the tail is, then follows the tail;
//! one that falls behind the fan-out, or sees an id skipped, replays what it missed the same way.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_core::Stream;
use tokio::sync::broadcast;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::feed::BATCH;
use super::history::StatusEntry;
use crate::arm::ApiVersion;
use crate::arm::api_version::Fleet;
use crate::arm::params::at_both_scopes;
use crate::arm::params::{FleetApiVersionParam, ResourceGroupScopePath, SubscriptionScopePath};
use crate::arm::scope::ClusterSet;
use crate::arm::scope::FleetScope;
use crate::auth::Caller;
use crate::auth::readable_scopes;
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::model::StatusRecord;
use crate::state::AppState;

at_both_scopes! {
    get,
    tag = "Events",
    params(FleetApiVersionParam, ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id")),
    responses(
        (status = 200, description = "A text/event-stream of `status` events whose data is a StatusEntry", content_type = "text/event-stream", body = StatusEntry),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    /// Streams the status transitions of a subscription's clusters (those of the resource groups the caller may read,
    /// if it may not read the whole subscription). Each event is `status`, its data a history status entry, its id
    /// what `Last-Event-ID` resumes after.
    at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/events",
        "Events_StreamAtSubscription",
        SubscriptionScopePath;
    /// Streams the status transitions of a resource group's clusters.
    at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/events",
        "Events_Stream",
        ResourceGroupScopePath;
    |path| (
        State(state): State<AppState>,
        caller: Caller,
        _version: ApiVersion<Fleet>,
    ) path (
        headers: HeaderMap,
    ) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
        let scope = path.fleet_scope()?;
        open(state, &caller, &scope, &headers).await
    }
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(at_subscription))
        .routes(routes!(at_resource_group))
}

/// Whether a transition is in one of the scopes.
fn within(scopes: &[ClusterSet], row: &StatusRecord) -> bool {
    scopes.iter().any(|scope| {
        let (subscription, group) = scope.keys();
        row.subscription_key == subscription && (group.is_empty() || row.resource_group_key == group)
    })
}

fn event(row: StatusRecord) -> Event {
    let id = row.id.to_string();
    Event::default()
        .id(id)
        .event("status")
        .json_data(StatusEntry::from_record(row))
        .expect("a status entry serialises")
}

async fn open(
    state: AppState,
    caller: &Caller,
    scope: &FleetScope,
    headers: &HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>> + use<>>> {
    let scopes = readable_scopes(caller, scope)?;
    let resume = match headers.get("last-event-id") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|id| *id >= 0)
                .ok_or_else(|| ApiError::invalid("Last-Event-ID", "Last-Event-ID is not an event id of this stream"))?,
        ),
    };
    let feed = state.feed.clone();
    // subscribe before reading the cursor: whatever the tail sends after this is either replayed or received
    let mut live = feed.sender.subscribe();
    let store = state.store.clone();
    let mut position = match resume {
        Some(id) => id,
        None => match feed.cursor.load(Ordering::Acquire) {
            cursor if cursor >= 0 => cursor,
            _ => store.latest_status_event().await?,
        },
    };
    let notifier = state.notifier.clone();
    let stream = async_stream::stream! {
        loop {
            // replay from the history up to the tail, in batches; `position` is the last id handled
            let upto = feed.cursor.load(Ordering::Acquire);
            while position < upto {
                let mut rows = Vec::new();
                for readable in &scopes {
                    match store.status_events(Some(readable), position, BATCH).await {
                        Ok(found) => rows.extend(found),
                        Err(err) => {
                            tracing::warn!(error = %err, "replaying the status history failed");
                            return;
                        }
                    }
                }
                rows.sort_by_key(|row| row.id);
                rows.retain(|row| row.id <= upto);
                rows.truncate(BATCH as usize);
                let Some(last) = rows.last().map(|row| row.id) else {
                    break;
                };
                for row in rows {
                    yield Ok(event(row));
                }
                position = last;
            }
            position = position.max(upto);
            loop {
                let received = tokio::select! {
                    received = live.recv() => received,
                    () = notifier.closed() => return,
                };
                match received {
                    Ok(row) => {
                        if row.id <= position {
                            continue;
                        }
                        // every id reaches every stream; one skipped (the tail started past it, or it was rolled
                        // back) is looked for in the history, this one with it
                        if row.id > position + 1 {
                            break;
                        }
                        position = row.id;
                        if within(&scopes, &row) {
                            yield Ok(event(StatusRecord::clone(&row)));
                        }
                    }
                    // too slow for the fan-out: replay what was missed from the history
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
