//! `triad bench --fanout`: one workflow's live events delivered to many GraphQL subscribers
//! (`workflowEvents` over graphql-transport-ws), against a raw WebSocket broadcast of a
//! pre-serialised frame to the same number of clients, measured in the same run.
//!
//! TRIAD: the projection worker and the API run in this process on a fresh topic, schema and
//! port. A workflow is accepted, `--subscribers` WebSocket clients subscribe to its events,
//! then its further events are appended to the event store — first paced (latency: from the
//! moment the event is visible in the read model, seen by a `LISTEN` observer, to the moment
//! each client has it), then all at once (throughput: frames delivered per second across all
//! clients, from the first event visible to the last frame received).
//!
//! Baseline: an axum WebSocket server in the same process that forwards each frame of a
//! broadcast channel, already serialised, to every connection; the same clients, the same
//! number of frames, the same pacing and burst, latency from the broadcast.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use futures::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use triad_codec::Codec;
use triad_config::Config;
use triad_domain::{EventBody, TaskScheduled, WorkflowEvent};
use triad_kafka::produce::Producer;

const SUBSCRIPTION: &str = "subscription($w: String!, $f: Int!) { \
    workflowEvents(workflowId: $w, fromSequence: $f) { sequence } }";

/// When each client received each sequence number (index = sequence - first).
type Arrivals = Arc<Mutex<Vec<Vec<Option<Instant>>>>>;

/// One phase's figures.
struct Phase {
    latencies_ms: Vec<f64>,
    frames_per_s: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Latencies from `published[k]` to each client's arrival of frame `k`, sorted, and the
/// delivery rate from the first publication to the last arrival.
fn measure(
    published: &[Instant],
    arrivals: &[Vec<Option<Instant>>],
    range: std::ops::Range<usize>,
) -> Result<Phase> {
    let mut latencies = Vec::new();
    let mut last = published[range.start];
    for client in arrivals {
        for k in range.clone() {
            let at = client[k].with_context(|| format!("a client never received frame {k}"))?;
            latencies.push(at.saturating_duration_since(published[k]).as_secs_f64() * 1e3);
            last = last.max(at);
        }
    }
    latencies.sort_by(f64::total_cmp);
    let frames = (arrivals.len() * range.len()) as f64;
    let span = last.saturating_duration_since(published[range.start]);
    Ok(Phase {
        latencies_ms: latencies,
        frames_per_s: frames / span.as_secs_f64().max(1e-9),
    })
}

/// Opens `n` clients on `url` (graphql-transport-ws), each subscribing with `variables`
/// (or, for the raw server, just reading), recording arrivals of sequence numbers from
/// `first` on. Returns when every client is connected (and, for GraphQL, acknowledged and
/// subscribed).
async fn clients(
    url: &str,
    n: usize,
    // The subscription's variables and the API key it authenticates with; none for the raw
    // WebSocket baseline.
    graphql: Option<(serde_json::Value, &str)>,
    first: i64,
    frames: usize,
    arrivals: Arrivals,
    cancel: &CancellationToken,
) -> Result<tokio::task::JoinSet<Result<()>>> {
    let mut set = tokio::task::JoinSet::new();
    for c in 0..n {
        let mut request = url.into_client_request()?;
        if graphql.is_some() {
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse()?);
        }
        // A small read buffer: tungstenite zero-fills the free part of it on every read, and
        // at the default 128 KiB that memset would dominate the clients' cost.
        let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), false)
            .await
            .with_context(|| format!("client {c} connecting to {url}"))?;
        let (mut tx, mut rx) = ws.split();
        if let Some((variables, key)) = &graphql {
            let init = serde_json::json!({
                "type": "connection_init",
                "payload": {"Authorization": format!("Bearer {key}")},
            });
            tx.send(Message::text(init.to_string())).await?;
            let ack = rx.next().await.context("no connection_ack")??;
            anyhow::ensure!(
                ack.to_text()?.contains("connection_ack"),
                "expected connection_ack, got {ack:?}"
            );
            let subscribe = serde_json::json!({
                "id": "1", "type": "subscribe",
                "payload": {"query": SUBSCRIPTION, "variables": variables},
            });
            tx.send(Message::text(subscribe.to_string())).await?;
        }
        let (arrivals, cancel) = (arrivals.clone(), cancel.clone());
        set.spawn(async move {
            let mut received = 0;
            while received < frames {
                let m = tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    m = rx.next() => m,
                };
                let Some(m) = m else {
                    anyhow::bail!("client {c}: the server closed after {received} frames")
                };
                let now = Instant::now();
                let Message::Text(text) = m? else { continue };
                let v: serde_json::Value = serde_json::from_str(text.as_str())?;
                let Some(seq) = v
                    .pointer("/payload/data/workflowEvents/sequence")
                    .and_then(serde_json::Value::as_i64)
                else {
                    continue;
                };
                let k = usize::try_from(seq - first)?;
                if let Ok(mut a) = arrivals.lock()
                    && k < a[c].len()
                    && a[c][k].is_none()
                {
                    a[c][k] = Some(now);
                    received += 1;
                }
            }
            drop(tx);
            Ok(())
        });
    }
    Ok(set)
}

/// Waits (up to two minutes) for every client to have received all its frames.
async fn join_clients(set: &mut tokio::task::JoinSet<Result<()>>, what: &str) -> Result<()> {
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(c) = set.join_next().await {
            c??;
        }
        anyhow::Ok(())
    })
    .await
    .with_context(|| format!("waiting for {what}"))?
}

pub(crate) fn free_port() -> Result<std::net::SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// The workflow's events after its acceptance: one task scheduled again and again, so the
/// timeline grows by one event each.
fn later_events(workflow: &WorkflowEvent, count: usize) -> Vec<WorkflowEvent> {
    (0..count)
        .map(|k| {
            let mut e = workflow.clone();
            let sequence = i64::try_from(k).unwrap_or(0) + 2;
            e.meta.sequence = sequence;
            e.meta.occurred_at += sequence * 1_000;
            e.meta.event_id = uuid::Uuid::new_v5(
                &uuid::Uuid::NAMESPACE_OID,
                format!("{}/{sequence}", e.meta.workflow_id).as_bytes(),
            )
            .to_string();
            e.body = EventBody::TaskScheduled(TaskScheduled {
                task_id: "generate_questions".into(),
                attempt: i32::try_from(sequence).unwrap_or(i32::MAX),
            });
            e.meta.event_type = e.body.type_name().to_owned();
            e
        })
        .collect()
}

pub async fn run(
    config: &Config,
    codec: Arc<Codec>,
    subscribers: usize,
    paced: usize,
    burst: usize,
) -> Result<()> {
    anyhow::ensure!(
        subscribers > 0 && paced > 0 && burst > 0,
        "counts must be above 0"
    );
    let frames = paced + burst;
    let mut scratch =
        crate::bench_projection::Projected::start(config, "fan", codec.clone()).await?;
    let (run, names) = (scratch.run.clone(), scratch.names.clone());
    let mut config = scratch.config.clone();
    config.api.listen = free_port()?;
    // Every subscriber connects as the same tenant, and a connection counts as a request:
    // the tenant's rate would refuse most of the thousand (`--flood` measures the limits).
    config.api.limits.requests_per_second = 0;
    let cancel = scratch.cancel.clone();
    // The fixture workflow has no tenant: an operator's key sees it.
    let key = crate::access::new_key(
        &config,
        &codec,
        "bench",
        triad_domain::AccessRole::Operator,
        "bench --fanout",
    )
    .await?;
    let (state, api) = crate::workers::api(&config, codec.clone(), &cancel).await?;
    {
        let (state, cancel) = (state.clone(), cancel.clone());
        scratch.services.spawn(async move {
            triad_api::serve(state, &api, cancel).await?;
            anyhow::Ok(())
        });
    }

    // The workflow, accepted and visible.
    let workflow_id = format!("wf-fan-{}", &run[..12]);
    let accepted = crate::bench_projection::events_of(&workflow_id)
        .into_iter()
        .next()
        .context("no fixture events")?;
    let producer = Producer::new(&config.kafka)?;
    let append = |e: &WorkflowEvent| {
        let (producer, codec, topic) = (producer.clone(), codec.clone(), names.events.clone());
        let e = e.clone();
        async move {
            let bytes = codec.encode(&topic, &e).await?;
            let ack = producer
                .enqueue(&topic, None, e.meta.workflow_id.as_bytes(), &bytes)
                .await?;
            ack.await?;
            anyhow::Ok(())
        }
    };
    append(&accepted).await?;
    let http = reqwest::Client::new();
    let base = format!("http://{}", config.api.listen);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = http
            .get(format!("{base}/v1/workflows/{workflow_id}"))
            .bearer_auth(&key)
            .send()
            .await;
        if r.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the workflow never became visible"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // When each later event became visible: LISTEN, then read the new timeline rows.
    let later = later_events(&accepted, frames);
    let visible: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; frames]));
    let observer = {
        let mut pg: tokio_postgres::Config = config.postgres.url.parse()?;
        if let Ok(p) = std::env::var("PGPASSWORD") {
            pg.password(p);
        }
        let (listener, mut connection) = pg.connect(tokio_postgres::NoTls).await?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        scratch.services.spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(m) = messages.next().await {
                if let tokio_postgres::AsyncMessage::Notification(_) = m?
                    && tx.send(Instant::now()).is_err()
                {
                    break;
                }
            }
            anyhow::Ok(())
        });
        listener.batch_execute("LISTEN triad_read_model").await?;
        let (pool, visible, id) = (state.pool.clone(), visible.clone(), workflow_id.clone());
        tokio::spawn(async move {
            let _listener = listener;
            let mut after = 1i64;
            while after < i64::try_from(frames)? + 1 {
                let at = rx.recv().await.context("notifications ended")?;
                while rx.try_recv().is_ok() {}
                let events = triad_api::read::events_after(&pool, &id, after, 10_000).await?;
                let mut v = visible.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                for e in events {
                    let k = usize::try_from(e.sequence - 2)?;
                    if k < v.len() && v[k].is_none() {
                        v[k] = Some(at);
                    }
                    after = after.max(e.sequence);
                }
            }
            anyhow::Ok(())
        })
    };

    let ws = format!("ws://{}/graphql/ws", config.api.listen);
    eprintln!("bench --fanout: {subscribers} GraphQL subscribers on {ws}");
    let arrivals: Arrivals = Arc::new(Mutex::new(vec![vec![None; frames]; subscribers]));
    let variables = serde_json::json!({"w": workflow_id, "f": 1});
    let mut triad_clients = clients(
        &ws,
        subscribers,
        Some((variables, &key)),
        2,
        frames,
        arrivals.clone(),
        &cancel,
    )
    .await?;
    eprintln!("appending {paced} events paced at 20/s, then {burst} at once");
    for e in &later[..paced] {
        append(e).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let appends: Vec<_> = later[paced..].iter().map(append).collect();
    futures::future::try_join_all(appends).await?;
    tokio::time::timeout(Duration::from_secs(120), observer)
        .await
        .context("waiting for the events to become visible")???;
    join_clients(&mut triad_clients, "the subscribers").await?;
    let published: Vec<Instant> = visible
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .iter()
        .map(|v| v.context("an event never became visible"))
        .collect::<Result<_>>()?;
    let got = arrivals
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let triad = (
        measure(&published, &got, 0..paced)?,
        measure(&published, &got, paced..frames)?,
    );
    scratch.finish().await?;

    // The baseline: the same frames, pre-serialised, broadcast to the same number of clients.
    let raw = raw_broadcast(subscribers, paced, burst).await?;

    println!("| subscribers | phase | server | p50 ms | p99 ms | frames/s |");
    println!("| ---: | --- | --- | ---: | ---: | ---: |");
    for (phase, t, r) in [
        ("paced 20/s", &triad.0, &raw.0),
        ("burst", &triad.1, &raw.1),
    ] {
        for (server, p) in [("TRIAD subscription", t), ("raw broadcast", r)] {
            println!(
                "| {subscribers} | {phase} | {server} | {:.1} | {:.1} | {:.0} |",
                percentile(&p.latencies_ms, 50.0),
                percentile(&p.latencies_ms, 99.0),
                p.frames_per_s
            );
        }
    }
    println!(
        "burst throughput ratio (TRIAD / raw): {:.2}",
        triad.1.frames_per_s / raw.1.frames_per_s.max(1e-9)
    );
    Ok(())
}

/// The baseline server and its run; returns (paced, burst).
async fn raw_broadcast(subscribers: usize, paced: usize, burst: usize) -> Result<(Phase, Phase)> {
    use axum::extract::ws::{Message as AxMessage, WebSocketUpgrade};
    let frames = paced + burst;
    let (tx, _) = tokio::sync::broadcast::channel::<AxMessage>(frames + 16);
    let subscribe = tx.clone();
    let app = axum::Router::new().route(
        "/ws",
        axum::routing::get(move |upgrade: WebSocketUpgrade| {
            let mut rx = subscribe.subscribe();
            async move {
                upgrade.on_upgrade(move |mut socket| async move {
                    while let Ok(frame) = rx.recv().await {
                        if socket.send(frame).await.is_err() {
                            return;
                        }
                    }
                })
            }
        }),
    );
    let addr = free_port()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let cancel = CancellationToken::new();
    let server = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { cancel.cancelled().await })
                .await
        })
    };
    let arrivals: Arrivals = Arc::new(Mutex::new(vec![vec![None; frames]; subscribers]));
    let url = format!("ws://{addr}/ws");
    let mut set = clients(
        &url,
        subscribers,
        None,
        2,
        frames,
        arrivals.clone(),
        &cancel,
    )
    .await?;
    // Every connection subscribed to the channel before the first frame.
    let deadline = Instant::now() + Duration::from_secs(30);
    while tx.receiver_count() < subscribers {
        anyhow::ensure!(
            Instant::now() < deadline,
            "raw clients never all subscribed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The frame a subscriber gets, serialised once per event as TRIAD's would be.
    let frame = |seq: usize| {
        AxMessage::text(
            serde_json::json!({"id": "1", "type": "next",
                "payload": {"data": {"workflowEvents": {"sequence": seq + 2}}}})
            .to_string(),
        )
    };
    let mut published = Vec::with_capacity(frames);
    for k in 0..paced {
        published.push(Instant::now());
        let _ = tx.send(frame(k));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for k in paced..frames {
        published.push(Instant::now());
        let _ = tx.send(frame(k));
    }
    join_clients(&mut set, "the raw clients").await?;
    cancel.cancel();
    let _ = server.await;
    let got = arrivals
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    Ok((
        measure(&published, &got, 0..paced)?,
        measure(&published, &got, paced..frames)?,
    ))
}
