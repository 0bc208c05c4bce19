//! The WebAssembly host against real components (`adapters/`, built by the build script) in
//! real wasmtime: answers, limits, the deny-all WASI context, import checks, egress and hot
//! swap.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};
use triad_models::{ModelAdapter, ModelRequest, Secret};
use triad_wasm::{Egress, Error, HostConfig, LOCAL_ADAPTER, TESTBED_ADAPTER, WasmHost, WasmModel};

fn request(prompt: &str, timeout: Duration) -> ModelRequest {
    ModelRequest {
        prompt: prompt.to_owned(),
        max_tokens: 256,
        timeout,
    }
}

async fn testbed(host: &WasmHost, egress: Egress) -> WasmModel {
    WasmModel::load(
        host,
        "testbed",
        vec!["US-EAST".into()],
        TESTBED_ADAPTER,
        egress,
    )
    .await
    .unwrap()
}

async fn ask(model: &WasmModel, prompt: &str) -> String {
    model
        .invoke(&request(prompt, Duration::from_secs(5)))
        .await
        .unwrap()
        .output
}

#[tokio::test]
async fn the_local_model_component_answers_like_the_native_code() {
    let host = WasmHost::new(HostConfig::default()).unwrap();
    let local = WasmModel::load(
        &host,
        "triad-local",
        vec![],
        LOCAL_ADAPTER,
        Egress::none().unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(ask(&local, "What is 2+2?").await, "4");
    let caps = local.capabilities();
    assert_eq!(caps.id, "triad-local");
    assert!(
        caps.specialties.contains(&"arithmetic".to_owned()),
        "{caps:?}"
    );
    for prompt in [
        "Generate 3 questions about data sovereignty",
        "Answer: 1. Who controls data sovereignty, and who can prove it?",
        "uppercase: hello world",
        "reverse: abc",
        "What is (3 + 4) * 2 ^ 2?",
        "Something free-form that no rule matches, said twice, said twice",
    ] {
        let wasm = local
            .invoke(&request(prompt, Duration::from_secs(5)))
            .await
            .unwrap();
        let native = triad_local_model::complete(prompt, 256).unwrap();
        assert_eq!(
            (wasm.output, wasm.input_tokens, wasm.output_tokens),
            (native.output, native.input_tokens, native.output_tokens),
            "{prompt}"
        );
    }
    let empty = local
        .invoke(&request("   ", Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert!(
        !empty.retryable && empty.message.contains("empty prompt"),
        "{empty:?}"
    );
    // Compiled once: a second model from the same bytes reuses the compiled component.
    WasmModel::load(
        &host,
        "triad-local-2",
        vec![],
        LOCAL_ADAPTER,
        Egress::none().unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(host.cached_components(), 1);
}

// One worker thread: the looping guest and the other calls share it, so the others can only
// finish if the guest yields.
#[tokio::test(flavor = "current_thread")]
async fn a_looping_adapter_is_stopped_at_its_deadline_while_other_calls_flow() {
    let host = WasmHost::new(HostConfig::default()).unwrap();
    let model = Arc::new(testbed(&host, Egress::none().unwrap()).await);
    // Long enough that other calls finish inside it even on a loaded machine (at 300 ms a
    // slow first echo call once outlasted the whole loop, in CI).
    let deadline = Duration::from_millis(1500);
    let spinning = {
        let model = Arc::clone(&model);
        tokio::spawn(async move {
            let started = Instant::now();
            let result = model.invoke(&request("spin", deadline)).await;
            (result, started.elapsed(), Instant::now())
        })
    };
    let mut finished = Vec::new();
    while !spinning.is_finished() {
        assert_eq!(ask(&model, "echo me").await, "echo me");
        finished.push(Instant::now());
    }
    let (result, took, ended) = spinning.await.unwrap();
    let err = result.unwrap_err();
    assert!(err.retryable && err.message.contains("deadline"), "{err:?}");
    let overshoot = took.saturating_sub(deadline);
    assert!(
        took >= deadline && overshoot <= Duration::from_millis(25),
        "stopped {overshoot:?} after its {deadline:?} deadline"
    );
    // Calls completed while the guest looped on the same thread: it yielded.
    let others = finished.iter().filter(|t| **t < ended).count();
    assert!(others >= 1, "no call finished while the guest looped");
    eprintln!("stopped {overshoot:?} after the deadline; {others} calls meanwhile");
    // The host is fine afterwards.
    assert_eq!(ask(&model, "still here").await, "still here");
}

#[tokio::test]
async fn an_adapter_that_grows_without_bound_traps_at_the_memory_cap() {
    let host = WasmHost::new(HostConfig {
        memory_bytes: 16 << 20,
        ..HostConfig::default()
    })
    .unwrap();
    let model = testbed(&host, Egress::none().unwrap()).await;
    let err = model
        .invoke(&request("grow", Duration::from_secs(10)))
        .await
        .unwrap_err();
    assert!(
        err.retryable && err.message.contains("memory limit"),
        "{err:?}"
    );
    assert_eq!(ask(&model, "after").await, "after");
}

#[tokio::test]
async fn wasi_gives_an_adapter_nothing_and_every_call_is_a_fresh_instance() {
    let host = WasmHost::new(HostConfig::default()).unwrap();
    let model = testbed(&host, Egress::none().unwrap()).await;
    let file = ask(&model, "read-file:/etc/passwd").await;
    assert!(file.starts_with("denied:"), "{file}");
    let socket = ask(&model, "connect:127.0.0.1:5432").await;
    assert!(socket.starts_with("denied:"), "{socket}");
    assert_eq!(ask(&model, "env").await, "0 variables");
    // A global incremented by each call starts again at 1: no state survives a call.
    for _ in 0..3 {
        assert_eq!(ask(&model, "count").await, "1");
    }
}

#[tokio::test]
async fn a_component_importing_what_the_host_does_not_provide_is_refused_by_name() {
    let host = WasmHost::new(HostConfig::default()).unwrap();
    for import in ["evil:net/raw@1.0.0", "wasi:http/outgoing-handler@0.2.0"] {
        let wat = format!(r#"(component (import "{import}" (instance (export "handle" (func)))))"#);
        let err = WasmModel::load(
            &host,
            "rogue",
            vec![],
            wat.as_bytes(),
            Egress::none().unwrap(),
        )
        .await
        .unwrap_err();
        match &err {
            Error::UnknownImport {
                model,
                import: named,
            } => {
                assert_eq!(model, "rogue");
                assert_eq!(named, import, "{err}");
            }
            other => panic!("{import}: {other}"),
        }
        assert!(err.to_string().contains(import), "{err}");
    }
    // Not a component at all, and a component without the adapter's exports.
    let garbage = WasmModel::load(
        &host,
        "junk",
        vec![],
        b"\0asm junk",
        Egress::none().unwrap(),
    )
    .await
    .unwrap_err();
    assert!(matches!(garbage, Error::Invalid { .. }), "{garbage}");
    let empty = WasmModel::load(
        &host,
        "empty",
        vec![],
        b"(component)",
        Egress::none().unwrap(),
    )
    .await
    .unwrap_err();
    assert!(matches!(empty, Error::NotAnAdapter { .. }), "{empty}");
}

/// A local HTTP server: counts requests, records the Authorization header, and holds
/// `/hold` until released.
struct Server {
    addr: std::net::SocketAddr,
    hits: Arc<AtomicUsize>,
    auth: Arc<std::sync::Mutex<Option<String>>>,
    held: Arc<Notify>,
    release: std::sync::Mutex<Option<oneshot::Sender<()>>>,
}

async fn server() -> Server {
    use axum::routing::get;
    let hits = Arc::new(AtomicUsize::new(0));
    let auth = Arc::new(std::sync::Mutex::new(None));
    let held = Arc::new(Notify::new());
    let (release, released) = oneshot::channel::<()>();
    let released = Arc::new(tokio::sync::Mutex::new(Some(released)));
    let app = axum::Router::new()
        .route(
            "/hello",
            get({
                let (hits, auth) = (hits.clone(), auth.clone());
                move |headers: axum::http::HeaderMap| async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    // Every value, so a doubled header shows.
                    let values: Vec<&str> = headers
                        .get_all("authorization")
                        .iter()
                        .map(|v| v.to_str().unwrap())
                        .collect();
                    *auth.lock().unwrap() = (!values.is_empty()).then(|| values.join(", "));
                    "hello from the allowed host"
                }
            }),
        )
        .route(
            "/hold",
            get({
                let held = held.clone();
                move || async move {
                    held.notify_one();
                    if let Some(rx) = released.lock().await.take() {
                        rx.await.unwrap();
                    }
                    "released"
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server {
        addr,
        hits,
        auth,
        held,
        release: std::sync::Mutex::new(Some(release)),
    }
}

#[tokio::test]
async fn egress_reaches_only_allowlisted_hosts_and_carries_the_hosts_credential() {
    let server = server().await;
    let host = WasmHost::new(HostConfig::default()).unwrap();
    let allowed = testbed(
        &host,
        Egress::new(
            vec!["127.0.0.1".into()],
            Some(("authorization".into(), Secret::new("Bearer sk-test".into()))),
        )
        .unwrap(),
    )
    .await;
    let url = format!("http://{}/hello", server.addr);
    assert_eq!(
        ask(&allowed, &format!("egress:{url}")).await,
        "200 hello from the allowed host"
    );
    assert_eq!(
        server.auth.lock().unwrap().as_deref(),
        Some("Bearer sk-test")
    );
    // A header of the component's own cannot replace or double the credential.
    ask(&allowed, &format!("egress-forged:{url}")).await;
    assert_eq!(
        server.auth.lock().unwrap().as_deref(),
        Some("Bearer sk-test")
    );
    assert_eq!(allowed.egress().stats.allowed.load(Ordering::SeqCst), 2);

    let denied = testbed(
        &host,
        Egress::new(vec!["api.openai.com".into()], None).unwrap(),
    )
    .await;
    let err = denied
        .invoke(&request(&format!("egress:{url}"), Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert!(err.message.contains("127.0.0.1 denied"), "{err:?}");
    assert_eq!(denied.egress().stats.denied.load(Ordering::SeqCst), 1);
    assert_eq!(
        server.hits.load(Ordering::SeqCst),
        2,
        "a denied call must not leave the host"
    );
}

#[tokio::test]
async fn a_swap_serves_new_calls_while_calls_in_flight_finish_on_the_old_version() {
    let server = server().await;
    let host = WasmHost::new(HostConfig::default()).unwrap();
    let model =
        Arc::new(testbed(&host, Egress::new(vec!["127.0.0.1".into()], None).unwrap()).await);
    let v1 = model.version();
    assert_eq!(v1.number, 1);
    // A call on version 1 that stays in flight until the server releases it.
    let in_flight = {
        let model = Arc::clone(&model);
        let url = format!("egress:http://{}/hold", server.addr);
        tokio::spawn(async move { model.invoke(&request(&url, Duration::from_secs(30))).await })
    };
    server.held.notified().await;
    let v2 = model.swap(LOCAL_ADAPTER).unwrap();
    assert_eq!(v2.number, 2);
    assert_ne!(v2.sha256, v1.sha256);
    // New calls go to the new component (the local model answers arithmetic; the testbed
    // would echo).
    assert_eq!(ask(&model, "What is 2+2?").await, "4");
    server
        .release
        .lock()
        .unwrap()
        .take()
        .unwrap()
        .send(())
        .unwrap();
    let old = in_flight.await.unwrap().unwrap();
    assert_eq!(
        old.output, "200 released",
        "the in-flight call finished on version 1"
    );
    // A bad swap changes nothing.
    assert!(model.swap(b"(component)").is_err());
    assert_eq!(model.version(), v2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swaps_under_load_lose_and_double_nothing() {
    let host = WasmHost::new(HostConfig::default()).unwrap();
    let model = Arc::new(testbed(&host, Egress::none().unwrap()).await);
    let calls = 200;
    let mut set = tokio::task::JoinSet::new();
    for n in 0..calls {
        let model = Arc::clone(&model);
        set.spawn(async move {
            let prompt = format!("echo: task {n}");
            let r = model
                .invoke(&request(&prompt, Duration::from_secs(30)))
                .await
                .unwrap();
            (n, r.output)
        });
    }
    // Swap back and forth while the calls run: testbed echoes the whole prompt, the local
    // model's `echo:` command returns the text after it.
    let mut answered = std::collections::BTreeMap::new();
    let mut swaps = 0;
    while !set.is_empty() && swaps < 20 {
        let next = if swaps % 2 == 0 {
            LOCAL_ADAPTER
        } else {
            TESTBED_ADAPTER
        };
        model.swap(next).unwrap();
        swaps += 1;
        if let Some(done) = set.try_join_next() {
            let (n, output) = done.unwrap();
            assert!(
                answered.insert(n, output).is_none(),
                "task {n} answered twice"
            );
        }
        tokio::task::yield_now().await;
    }
    while let Some(done) = set.join_next().await {
        let (n, output) = done.unwrap();
        assert!(
            answered.insert(n, output).is_none(),
            "task {n} answered twice"
        );
    }
    // Every task has exactly one answer, from one of the two versions.
    assert_eq!(answered.len(), calls);
    for (n, output) in &answered {
        let text = format!("task {n}");
        assert!(
            *output == text || *output == format!("echo: {text}"),
            "task {n}: {output:?}"
        );
    }
    assert_eq!(model.version().number, 1 + swaps);
    assert!(swaps >= 2, "the swaps must overlap the calls");
}

#[tokio::test]
async fn with_fuel_a_loop_stops_after_the_same_work_on_any_machine() {
    let host = WasmHost::new(HostConfig {
        fuel: Some(50_000_000),
        ..HostConfig::default()
    })
    .unwrap();
    let model = testbed(&host, Egress::none().unwrap()).await;
    // A deadline far away: only the fuel can stop it.
    let err = model
        .invoke(&request("spin", Duration::from_secs(600)))
        .await
        .unwrap_err();
    assert!(
        err.retryable && err.message.contains("ran out of fuel"),
        "{err:?}"
    );
    // Ordinary calls fit in the budget.
    assert_eq!(ask(&model, "fits").await, "fits");
}
