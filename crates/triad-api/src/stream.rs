//! A workflow's events in sequence order: the backlog from the timeline, then live, until
//! the final event. Shared by the SSE stream and the GraphQL subscription.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crate::AppState;
use crate::read::{self, EventView};

/// Timeline rows read per query.
const PAGE: i64 = 256;

#[derive(Debug)]
pub struct EventStream {
    state: Arc<AppState>,
    workflow: String,
    after: i64,
    changes: tokio::sync::broadcast::Receiver<()>,
    buffer: VecDeque<EventView>,
    done: bool,
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.state.metrics.stream_closed();
    }
}

impl EventStream {
    /// Events of `workflow` after sequence `after`. Subscribes to changes before the first
    /// read, so a change between a read and the wait still wakes it.
    pub fn new(state: Arc<AppState>, workflow: String, after: i64) -> Self {
        let changes = state.changes.subscribe();
        state.metrics.stream_opened();
        Self {
            state,
            workflow,
            after,
            changes,
            buffer: VecDeque::new(),
            done: false,
        }
    }

    /// The next event, in sequence order; `None` after the final one or at shutdown.
    pub async fn next(&mut self) -> Option<EventView> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                self.after = e.sequence;
                self.done = e.is_final();
                return Some(e);
            }
            if self.done || self.state.shutdown.is_cancelled() {
                return None;
            }
            match read::events_after(&self.state.pool, &self.workflow, self.after, PAGE).await {
                Ok(page) if !page.is_empty() => {
                    self.buffer.extend(page);
                    continue;
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, workflow.id = %self.workflow, "event stream read failed; retrying");
                }
            }
            tokio::select! {
                () = self.state.shutdown.cancelled() => return None,
                // Lagged or a tick: read again either way. A closed channel cannot happen
                // while the state holds the sender; poll slowly if it does.
                r = self.changes.recv() => {
                    if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                // Reads that failed above, or notifications lost while reconnecting.
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }
}
