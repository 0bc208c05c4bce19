//! A workflow's events in sequence order: the backlog from the timeline, then live, until
//! the final event (shared by the SSE stream and the GraphQL subscription); and the
//! dashboard's feed of changed workflows.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::AppState;
use crate::read::{self, EventView, Positions, WorkflowView};

/// Timeline rows read per query.
const PAGE: i64 = 256;

/// Shares timeline reads between the streams of one workflow: when a change wakes a
/// thousand subscribers of the same workflow, one of them queries PostgreSQL and the others
/// take its rows. A stream reuses a read only if it started after the stream was woken
/// (so it saw the change that woke it) and covers the stream's position.
#[derive(Debug, Default)]
pub struct EventHub {
    slots: std::sync::Mutex<std::collections::HashMap<String, std::sync::Weak<Slot>>>,
}

type Slot = tokio::sync::Mutex<Option<Cached>>;

/// The last read of one workflow's timeline.
#[derive(Debug)]
struct Cached {
    /// When the query was sent.
    read_at: Instant,
    /// The rows are the events after this sequence...
    after: i64,
    /// ...up to the end of the timeline at `read_at`, unless the page was full.
    complete: bool,
    /// Shared, not copied, with every stream that reuses the read: a burst hands each of a
    /// thousand subscribers every event.
    events: Vec<Arc<EventView>>,
}

impl EventHub {
    fn slot(&self, workflow: &str) -> Arc<Slot> {
        let Ok(mut slots) = self.slots.lock() else {
            // A panic while holding this lock cannot happen (no code in it panics); serve
            // without sharing if it ever did.
            return Arc::new(Slot::default());
        };
        if let Some(slot) = slots.get(workflow).and_then(std::sync::Weak::upgrade) {
            return slot;
        }
        if slots.len() >= 1024 {
            slots.retain(|_, w| w.strong_count() > 0);
        }
        let slot = Arc::new(Slot::default());
        slots.insert(workflow.to_owned(), Arc::downgrade(&slot));
        slot
    }
}

async fn shared_read(
    slot: &Slot,
    pool: &deadpool_postgres::Pool,
    workflow: &str,
    after: i64,
    woke: Instant,
) -> crate::Result<Vec<Arc<EventView>>> {
    let mut cached = slot.lock().await;
    if let Some(c) = cached.as_ref() {
        let last = c.events.last().map_or(c.after, |e| e.sequence);
        if c.read_at >= woke && c.after <= after && (c.complete || last > after) {
            return Ok(c
                .events
                .iter()
                .filter(|e| e.sequence > after)
                .cloned()
                .collect());
        }
    }
    let read_at = Instant::now();
    let events: Vec<Arc<EventView>> = read::events_after(pool, workflow, after, PAGE)
        .await?
        .into_iter()
        .map(Arc::new)
        .collect();
    *cached = Some(Cached {
        read_at,
        after,
        complete: i64::try_from(events.len()).unwrap_or(i64::MAX) < PAGE,
        events: events.clone(),
    });
    Ok(events)
}

#[derive(Debug)]
pub struct EventStream {
    state: Arc<AppState>,
    workflow: String,
    slot: Arc<Slot>,
    after: i64,
    /// When the stream was created or last woken by a change.
    woke: Instant,
    changes: tokio::sync::broadcast::Receiver<()>,
    buffer: VecDeque<Arc<EventView>>,
    done: bool,
    /// The caller's tenant (none for an operator) and whether the workflow was found to be
    /// its: checked when events are read, until the workflow's row exists (it is written
    /// with WorkflowAccepted or WorkflowRejected, in the same transaction; a workflow
    /// awaiting its credits reservation has events but no row yet).
    scope: Option<String>,
    owner_checked: bool,
}

impl EventStream {
    /// Events of `workflow` after sequence `after`, if the workflow is `scope`'s (the
    /// caller's tenant; none for an operator): another tenant's workflow ends the stream
    /// before any event. Subscribes to changes before the first read, so a change between a
    /// read and the wait still wakes it.
    pub fn new(state: Arc<AppState>, workflow: String, after: i64, scope: Option<String>) -> Self {
        let changes = state.changes.subscribe();
        let slot = state.hub.slot(&workflow);
        Self {
            state,
            workflow,
            slot,
            after,
            woke: Instant::now(),
            changes,
            buffer: VecDeque::new(),
            done: false,
            owner_checked: scope.is_none(),
            scope,
        }
    }

    /// Whether the workflow is the caller's; none while its row does not exist yet.
    async fn owned(&mut self) -> crate::Result<Option<bool>> {
        if self.owner_checked {
            return Ok(Some(true));
        }
        match read::workflow(&self.state.pool, &self.workflow).await? {
            None => Ok(None),
            Some(w) if w.visible_to(self.scope.as_deref()) => {
                self.owner_checked = true;
                Ok(Some(true))
            }
            Some(_) => {
                tracing::info!(workflow.id = %self.workflow, "stream of another tenant's workflow refused");
                Ok(Some(false))
            }
        }
    }

    /// The next event, in sequence order; `None` after the final one or at shutdown.
    pub async fn next(&mut self) -> Option<Arc<EventView>> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                self.after = e.sequence;
                self.done = e.is_final();
                return Some(e);
            }
            if self.done || self.state.shutdown.is_cancelled() {
                return None;
            }
            let read = shared_read(
                &self.slot,
                &self.state.pool,
                &self.workflow,
                self.after,
                self.woke,
            )
            .await;
            match read {
                Ok(page) if !page.is_empty() => match self.owned().await {
                    Ok(Some(true)) => {
                        self.buffer.extend(page);
                        continue;
                    }
                    Ok(Some(false)) => {
                        self.done = true;
                        return None;
                    }
                    // No row yet: wait for the change that writes it.
                    Ok(None) => {}
                    Err(error) => {
                        tracing::warn!(%error, workflow.id = %self.workflow, "event stream owner check failed; retrying");
                    }
                },
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
            self.woke = Instant::now();
        }
    }
}

/// Every workflow matching a filter whose read-model row changes after the stream starts,
/// as its current state, in the order the changes were applied. A workflow that changes
/// several times between two reads is delivered once, with its latest state. The cursor is
/// the projection's event-store positions, so it stays valid across a rebuild.
#[derive(Debug)]
pub struct ChangeStream {
    state: Arc<AppState>,
    status: Option<String>,
    name: Option<String>,
    /// Only this tenant's workflows (none: an operator's feed of every tenant).
    tenant: Option<String>,
    positions: Option<Positions>,
    changes: tokio::sync::broadcast::Receiver<()>,
    buffer: VecDeque<String>,
}

impl ChangeStream {
    /// Subscribes to changes before the first read (as [`EventStream::new`]).
    pub fn new(
        state: Arc<AppState>,
        status: Option<String>,
        name: Option<String>,
        tenant: Option<String>,
    ) -> Self {
        let changes = state.changes.subscribe();
        Self {
            state,
            status,
            name,
            tenant,
            positions: None,
            changes,
            buffer: VecDeque::new(),
        }
    }

    fn matches(&self, view: &WorkflowView) -> bool {
        self.status.as_ref().is_none_or(|s| *s == view.status)
            && self
                .name
                .as_ref()
                .is_none_or(|n| view.name.as_ref() == Some(n))
    }

    /// The next changed workflow; `None` at shutdown.
    pub async fn next(&mut self) -> Option<WorkflowView> {
        loop {
            if self.state.shutdown.is_cancelled() {
                return None;
            }
            if let Some(id) = self.buffer.pop_front() {
                match self.state.workflow(&id, self.tenant.as_deref()).await {
                    // Read after the snapshot: it may have moved on (and out of the filter,
                    // in which case a later read reports it if it comes back).
                    Ok(Some(view)) if self.matches(&view) => return Some(view),
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, workflow.id = %id, "change stream read failed; retrying");
                        self.buffer.push_front(id);
                        self.wait().await;
                    }
                }
                continue;
            }
            let read = match &self.positions {
                None => read::positions(&self.state.pool)
                    .await
                    .map(|p| (p, Vec::new())),
                Some(from) => {
                    read::changed_since(
                        &self.state.pool,
                        from,
                        self.status.as_deref(),
                        self.name.as_deref(),
                        self.tenant.as_deref(),
                    )
                    .await
                }
            };
            match read {
                Ok((positions, ids)) => {
                    self.positions = Some(positions);
                    if !ids.is_empty() {
                        self.buffer.extend(ids);
                        continue;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "change stream read failed; retrying");
                }
            }
            self.wait().await;
        }
    }

    /// Until the read models change (or a slow tick for notifications lost while
    /// reconnecting), or shutdown.
    async fn wait(&mut self) {
        tokio::select! {
            () = self.state.shutdown.cancelled() => {}
            r = self.changes.recv() => {
                if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
