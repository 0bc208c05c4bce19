//! One execution per distinct subscription, shared by every client that asks for it.
//!
//! A thousand dashboards watching one workflow send the same `workflowEvents` operation with
//! the same variables under the same credential; executing it a thousand times repeats the
//! same reads, resolvers and `Value` building per event (`triad bench --fanout`: the
//! per-subscriber work was the whole cost). [`Shared`] wraps the schema as the WebSocket
//! handler's executor: the first such subscription runs once in a task of its own, which
//! appends every response to a log; each subscriber reads the log from the start at its
//! own pace, so one that joins late still receives the backlog its `fromSequence` asks
//! for, in order, and then the live events.
//!
//! What may be shared, and why it stays correct:
//! - only subscriptions whose root fields are all *replayable* (listed at construction):
//!   fields whose stream is a pure function of their arguments and the caller, so a late
//!   joiner replaying the log sees exactly what a fresh execution would have delivered.
//!   `workflowEvents` is (a workflow's events after a sequence number, in order, until the
//!   final one); `workflowUpdates` is not (it starts "now"), and queries and mutations are
//!   never shared;
//! - the key is the whole operation (document, operation name, variables) and the whole
//!   [`Principal`] of the connection, so a subscriber never receives what another caller's
//!   visibility produced; requests carrying their own data or extensions are not shared;
//! - a finished execution (completed, or ended with an error) leaves the table at once, so
//!   a later subscriber runs afresh instead of replaying a stale ending;
//! - when its last subscriber leaves, the execution's task is aborted (its stream dropped).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use async_graphql::parser::types::{DocumentOperations, OperationType, Selection};
use async_graphql::{Data, Executor, Request, Response};
use futures::StreamExt as _;
use futures::stream::BoxStream;
use triad_auth::Principal;

use crate::metrics::{ApiMetrics, StreamOpen};

/// An [`Executor`] that shares executions of replayable subscriptions (see the module docs)
/// and counts every operation's stream in `triad_api_streams_open`.
#[derive(Clone)]
pub struct Shared<E> {
    inner: E,
    replayable: &'static [&'static str],
    metrics: Arc<ApiMetrics>,
    feeds: Arc<Feeds>,
}

impl<E> std::fmt::Debug for Shared<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("replayable", &self.replayable)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Feeds {
    /// Running executions by key, each with the id that lets its task remove exactly its
    /// own entry when it finishes.
    table: Mutex<HashMap<Key, (u64, Weak<Feed>)>>,
    next_id: AtomicU64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    principal: Principal,
    query: String,
    operation: Option<String>,
    variables: String,
}

/// What one execution has produced so far.
#[derive(Default)]
struct Log {
    responses: Vec<Response>,
    done: bool,
}

struct Progress {
    log: Mutex<Log>,
    /// Bumped after every append and at the end; subscribers wait on it.
    tick: tokio::sync::watch::Sender<()>,
}

/// A running execution; subscribers hold it, the table holds it weakly.
struct Feed {
    progress: Arc<Progress>,
    task: tokio::task::AbortHandle,
}

impl Drop for Feed {
    fn drop(&mut self) {
        // No subscriber is left: stop executing (drops the subscription's stream).
        self.task.abort();
    }
}

/// Ends an execution however its task stops (its stream ended, it was aborted, or a resolver
/// panicked), so no subscriber waits for responses that will never come.
struct End {
    progress: Arc<Progress>,
    feeds: Arc<Feeds>,
    key: Key,
    id: u64,
}

impl Drop for End {
    fn drop(&mut self) {
        // Leave the table before announcing the end: a subscriber arriving from now on
        // starts a fresh execution instead of replaying this one.
        if let Ok(mut table) = self.feeds.table.lock()
            && table.get(&self.key).is_some_and(|(i, _)| *i == self.id)
        {
            table.remove(&self.key);
        }
        self.progress.push(None);
    }
}

#[expect(
    clippy::large_enum_variant,
    reason = "returned by value and moved out at once; boxing would allocate per frame"
)]
enum Next {
    Ready(Response),
    Done,
    Wait,
}

impl Progress {
    fn at(&self, index: usize) -> Next {
        // Poisoned only if a push panicked, which nothing in it does.
        let Ok(log) = self.log.lock() else {
            return Next::Done;
        };
        match log.responses.get(index) {
            Some(r) => Next::Ready(copy(r)),
            None if log.done => Next::Done,
            None => Next::Wait,
        }
    }

    fn push(&self, response: Option<Response>) {
        if let Ok(mut log) = self.log.lock() {
            match response {
                Some(r) => log.responses.push(r),
                None => log.done = true,
            }
        }
        self.tick.send_replace(());
    }
}

/// `Response` is not `Clone`; every field that reaches a client is.
fn copy(r: &Response) -> Response {
    let mut c = Response::new(r.data.clone());
    c.errors.clone_from(&r.errors);
    c.extensions.clone_from(&r.extensions);
    c.cache_control = r.cache_control;
    c.http_headers.clone_from(&r.http_headers);
    c
}

impl<E: Executor> Shared<E> {
    /// `replayable`: the subscription fields that may be shared (see the module docs).
    pub fn new(inner: E, replayable: &'static [&'static str], metrics: Arc<ApiMetrics>) -> Self {
        Self {
            inner,
            replayable,
            metrics,
            feeds: Arc::default(),
        }
    }

    /// The sharing key of `request`, if it is a replayable subscription.
    fn key(&self, request: &Request, session: Option<&Data>) -> Option<Key> {
        if !request.data.is_empty() || !request.extensions.is_empty() {
            return None;
        }
        let principal = session?
            .get(&std::any::TypeId::of::<Principal>())?
            .downcast_ref::<Principal>()?
            .clone();
        let document = async_graphql::parser::parse_query(&request.query).ok()?;
        let operation = match (&document.operations, &request.operation_name) {
            (DocumentOperations::Single(op), None) => op,
            (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name.as_str())?,
            _ => return None,
        };
        let items = &operation.node.selection_set.node.items;
        let replayable = operation.node.ty == OperationType::Subscription
            && !items.is_empty()
            && items.iter().all(|s| match &s.node {
                Selection::Field(f) => self.replayable.contains(&f.node.name.node.as_str()),
                Selection::FragmentSpread(_) | Selection::InlineFragment(_) => false,
            });
        if !replayable {
            return None;
        }
        Some(Key {
            principal,
            query: request.query.clone(),
            operation: request.operation_name.clone(),
            variables: serde_json::to_string(&request.variables).ok()?,
        })
    }

    /// Follows the running execution of `key`, or starts one with this request. (Outside a
    /// Tokio runtime, or should the table's lock be poisoned, the request runs unshared.)
    fn join(
        &self,
        key: Key,
        request: Request,
        session: Option<Arc<Data>>,
    ) -> BoxStream<'static, Response> {
        let (Ok(runtime), Ok(mut table)) = (
            tokio::runtime::Handle::try_current(),
            self.feeds.table.lock(),
        ) else {
            return self.inner.execute_stream(request, session);
        };
        if let Some(feed) = table.get(&key).and_then(|(_, w)| w.upgrade()) {
            return follow(feed);
        }
        if table.len() >= 1024 {
            table.retain(|_, (_, w)| w.strong_count() > 0);
        }
        let id = self.feeds.next_id.fetch_add(1, Ordering::Relaxed);
        let progress = Arc::new(Progress {
            log: Mutex::default(),
            tick: tokio::sync::watch::Sender::new(()),
        });
        let mut stream = self.inner.execute_stream(request, session);
        let end = End {
            progress: progress.clone(),
            feeds: self.feeds.clone(),
            key: key.clone(),
            id,
        };
        let task = runtime.spawn(async move {
            while let Some(response) = stream.next().await {
                end.progress.push(Some(response));
            }
            drop(end);
        });
        let feed = Arc::new(Feed {
            progress,
            task: task.abort_handle(),
        });
        table.insert(key, (id, Arc::downgrade(&feed)));
        follow(feed)
    }
}

/// A subscriber's view of a shared execution: every response from the first, then the end.
fn follow(feed: Arc<Feed>) -> BoxStream<'static, Response> {
    let tick = feed.progress.tick.subscribe();
    futures::stream::unfold((feed, tick, 0usize), |(feed, mut tick, at)| async move {
        loop {
            // Marked seen before reading, so an append after the read wakes the wait.
            tick.borrow_and_update();
            match feed.progress.at(at) {
                Next::Ready(r) => return Some((r, (feed, tick, at + 1))),
                Next::Done => return None,
                Next::Wait => {
                    // The sender lives in `feed.progress`, which this stream holds.
                    if tick.changed().await.is_err() {
                        return None;
                    }
                }
            }
        }
    })
    .boxed()
}

impl<E: Executor> Executor for Shared<E> {
    async fn execute(&self, request: Request) -> Response {
        self.inner.execute(request).await
    }

    fn execute_stream(
        &self,
        request: Request,
        session_data: Option<Arc<Data>>,
    ) -> BoxStream<'static, Response> {
        let open = StreamOpen::new(self.metrics.clone());
        let stream = match self.key(&request, session_data.as_deref()) {
            Some(key) => self.join(key, request, session_data),
            None => self.inner.execute_stream(request, session_data),
        };
        stream
            .map(move |r| {
                let _open = &open;
                r
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use async_graphql::{Context, EmptyMutation, Object, Schema, Subscription};
    use futures::Stream;
    use tokio::sync::{Notify, watch};
    use triad_domain::AccessRole;

    use super::*;

    /// What the toy schema's resolvers did.
    struct Probe {
        /// `ticks` yields 1, 2, ... up to this value as it rises.
        now: watch::Sender<i32>,
        executions: AtomicUsize,
        dropped: AtomicUsize,
        gone: Notify,
    }

    struct Dropped(Arc<Probe>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.dropped.fetch_add(1, Ordering::SeqCst);
            self.0.gone.notify_one();
        }
    }

    struct Query;

    #[Object]
    impl Query {
        async fn count(&self, ctx: &Context<'_>) -> usize {
            let probe = ctx.data::<Arc<Probe>>().unwrap();
            probe.executions.fetch_add(1, Ordering::SeqCst) + 1
        }
    }

    struct Sub;

    #[Subscription]
    impl Sub {
        /// 1, 2, ... `upto` as `Probe::now` reaches each, then the end.
        async fn ticks(&self, ctx: &Context<'_>, upto: i32) -> impl Stream<Item = i32> + use<> {
            let probe = ctx.data::<Arc<Probe>>().unwrap().clone();
            probe.executions.fetch_add(1, Ordering::SeqCst);
            let now = probe.now.subscribe();
            let guard = Dropped(probe);
            futures::stream::unfold((1, now, guard), move |(n, mut now, guard)| async move {
                if n > upto {
                    return None;
                }
                now.wait_for(|v| *v >= n).await.unwrap();
                Some((n, (n + 1, now, guard)))
            })
        }

        /// 1, then a panic.
        async fn boom(&self) -> impl Stream<Item = i32> + use<> {
            futures::stream::unfold(1, |n| async move {
                assert!(n < 2, "the resolver's stream panics");
                Some((n, n + 1))
            })
        }

        /// Not listed as replayable.
        async fn live(&self, ctx: &Context<'_>) -> impl Stream<Item = i32> + use<> {
            let probe = ctx.data::<Arc<Probe>>().unwrap();
            probe.executions.fetch_add(1, Ordering::SeqCst);
            futures::stream::iter([7])
        }
    }

    type Exec = Shared<Schema<Query, EmptyMutation, Sub>>;

    fn setup() -> (Exec, Arc<Probe>, Arc<ApiMetrics>) {
        let probe = Arc::new(Probe {
            now: watch::Sender::new(0),
            executions: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
            gone: Notify::new(),
        });
        let schema = Schema::build(Query, EmptyMutation, Sub)
            .data(probe.clone())
            .finish();
        let metrics = Arc::new(ApiMetrics::default());
        (
            Shared::new(schema, &["ticks", "boom"], metrics.clone()),
            probe,
            metrics,
        )
    }

    fn session(tenant: &str) -> Option<Arc<Data>> {
        let mut data = Data::default();
        data.insert(Principal::of_key(tenant, AccessRole::Member, "key-1"));
        Some(Arc::new(data))
    }

    const TICKS: &str = "subscription($n: Int!) { ticks(upto: $n) }";

    fn ticks(upto: i32) -> Request {
        Request::new(TICKS).variables(async_graphql::Variables::from_json(
            serde_json::json!({ "n": upto }),
        ))
    }

    async fn value(stream: &mut BoxStream<'static, Response>) -> serde_json::Value {
        let r = stream.next().await.unwrap();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        r.data.into_json().unwrap()["ticks"].clone()
    }

    fn open_streams(metrics: &ApiMetrics) -> String {
        metrics
            .render()
            .lines()
            .find(|l| l.starts_with("triad_api_streams_open "))
            .unwrap()
            .to_owned()
    }

    #[tokio::test]
    async fn identical_subscriptions_share_one_execution_and_late_joiners_get_the_backlog() {
        let (exec, probe, metrics) = setup();
        let mut a = exec.execute_stream(ticks(3), session("acme"));
        let mut b = exec.execute_stream(ticks(3), session("acme"));
        probe.now.send_replace(1);
        assert_eq!(value(&mut a).await, 1);
        assert_eq!(value(&mut b).await, 1);
        probe.now.send_replace(2);
        assert_eq!(value(&mut a).await, 2);
        // Joins after two responses: replays them, in order.
        let mut late = exec.execute_stream(ticks(3), session("acme"));
        assert_eq!(value(&mut late).await, 1);
        assert_eq!(value(&mut late).await, 2);
        assert_eq!(probe.executions.load(Ordering::SeqCst), 1);

        // Other variables, or another caller: executions of their own.
        let mut other_vars = exec.execute_stream(ticks(4), session("acme"));
        let mut other_caller = exec.execute_stream(ticks(3), session("globex"));
        assert_eq!(value(&mut other_vars).await, 1);
        assert_eq!(value(&mut other_caller).await, 1);
        assert_eq!(probe.executions.load(Ordering::SeqCst), 3);
        assert_eq!(open_streams(&metrics), "triad_api_streams_open 5");

        probe.now.send_replace(3);
        for (s, rest) in [
            (&mut a, vec![3]),
            (&mut b, vec![2, 3]),
            (&mut late, vec![3]),
        ] {
            for v in rest {
                assert_eq!(value(s).await, v);
            }
            assert!(
                s.next().await.is_none(),
                "completes after its last response"
            );
        }

        // A finished execution is not replayed: the same request runs afresh.
        let mut again = exec.execute_stream(ticks(3), session("acme"));
        for v in 1..=3 {
            assert_eq!(value(&mut again).await, v);
        }
        assert!(again.next().await.is_none());
        assert_eq!(probe.executions.load(Ordering::SeqCst), 4);

        // The last subscriber leaving stops its execution (the resolver's stream is dropped).
        let before = probe.dropped.load(Ordering::SeqCst);
        drop(other_vars);
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while probe.dropped.load(Ordering::SeqCst) == before {
                probe.gone.notified().await;
            }
        })
        .await
        .unwrap();
        drop(other_caller);
        drop((a, b, late, again));
        assert_eq!(open_streams(&metrics), "triad_api_streams_open 0");
    }

    #[tokio::test]
    async fn queries_unlisted_fields_and_anonymous_callers_run_unshared() {
        let (exec, probe, _) = setup();
        let run = |request: Request, who: Option<Arc<Data>>| {
            let exec = exec.clone();
            async move {
                let mut s = exec.execute_stream(request, who);
                let r = s.next().await.unwrap();
                assert!(r.errors.is_empty(), "{:?}", r.errors);
                r.data.into_json().unwrap()
            }
        };
        assert_eq!(
            run(Request::new("{ count }"), session("acme")).await["count"],
            1
        );
        assert_eq!(
            run(Request::new("{ count }"), session("acme")).await["count"],
            2
        );
        run(Request::new("subscription { live }"), session("acme")).await;
        run(Request::new("subscription { live }"), session("acme")).await;
        assert_eq!(probe.executions.load(Ordering::SeqCst), 4);

        // A caller without a principal has no key.
        probe.now.send_replace(1);
        let mut n1 = exec.execute_stream(ticks(1), None);
        let mut n2 = exec.execute_stream(ticks(1), None);
        assert_eq!(value(&mut n1).await, 1);
        assert_eq!(value(&mut n2).await, 1);
        assert_eq!(probe.executions.load(Ordering::SeqCst), 6);
    }

    #[tokio::test]
    async fn an_execution_that_panics_ends_its_subscribers_streams() {
        let (exec, _, _) = setup();
        let mut a = exec.execute_stream(Request::new("subscription { boom }"), session("acme"));
        let mut b = exec.execute_stream(Request::new("subscription { boom }"), session("acme"));
        for s in [&mut a, &mut b] {
            let r = s.next().await.unwrap();
            assert_eq!(r.data.into_json().unwrap()["boom"], 1);
            let end = tokio::time::timeout(std::time::Duration::from_secs(10), s.next()).await;
            assert!(end.unwrap().is_none(), "ends instead of waiting forever");
        }
    }
}
