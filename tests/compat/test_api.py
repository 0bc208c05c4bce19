"""Third-party clients against TRIAD's API: the `gql` client (websockets transport, both the
graphql-transport-ws and the legacy graphql-ws protocols) submits a workflow and receives its
full, ordered event sequence over the subscription, and follows the dashboard feed of
workflows that change; `curl -N` reads the same events as
Server-Sent Events and resumes with Last-Event-ID. Every client authenticates with an API key
(`triad api-keys create`): the bearer header over HTTP, the `connection_init` payload over the
WebSocket. Starts `triad dev` on topics, consumer groups, a read-model schema and a port of
its own. Needs the stack (scripts/dev.sh up) and a built `triad` binary."""

import asyncio
import json
import os
import pathlib
import socket
import subprocess
import time
import urllib.request
import uuid

import pytest
from gql import Client, gql
from gql.transport.websockets import WebsocketsTransport

ROOT = pathlib.Path(__file__).resolve().parents[2]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
TRIAD = str(TARGET / "debug" / "triad")

SUBMIT = gql("""
mutation Submit($input: WorkflowInput!, $key: String) {
  submitWorkflow(input: $input, idempotencyKey: $key) { workflowId status streamUrl }
}""")
EVENTS = gql("""
subscription Events($id: String!, $from: Int!) {
  workflowEvents(workflowId: $id, fromSequence: $from) { sequence type eventId taskId }
}""")

UPDATES = gql("""
subscription Updates($status: String, $name: String) {
  workflowUpdates(filter: {status: $status, name: $name}) {
    workflowId name status tasksCompleted
  }
}""")


class Api(str):
    """The API's base URL, with the API key the tests present."""
    key = ""

    @property
    def bearer(self):
        return f"Bearer {self.key}"


def transport(api, subprotocol, authenticated=True):
    url = api.replace("http://", "ws://") + "/graphql/ws"
    payload = {"Authorization": api.bearer} if authenticated else {}
    return WebsocketsTransport(url=url, subprotocols=[subprotocol], init_payload=payload)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    run = uuid.uuid4().hex
    port = free_port()
    env = dict(os.environ,
               TRIAD_KAFKA__TOPIC_PREFIX=f"compat-api-{run}.",
               TRIAD_KAFKA__GROUP_PREFIX=f"compat-api-{run}",
               TRIAD_PROJECTION__SCHEMA=f"compat_{run}",
               TRIAD_API__LISTEN=f"127.0.0.1:{port}",
               TRIAD_LOG__FILTER="warn")
    subprocess.run([TRIAD, "topics", "ensure"], env=env, check=True, capture_output=True)
    created = subprocess.run([TRIAD, "api-keys", "create", "--tenant", "compat", "--role",
                              "member", "--name", "compat suite"],
                             env=env, check=True, capture_output=True, text=True)
    log = tmp_path_factory.mktemp("api") / "dev.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([TRIAD, "dev"], env=env, stdout=subprocess.DEVNULL, stderr=err)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{base}/v1/health", timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the API never became healthy: " + log.read_text()
        time.sleep(0.2)
    api = Api(base)
    api.key = created.stdout.strip()
    assert api.key.startswith("triad_"), created
    yield api
    proc.terminate()
    proc.wait(30)
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "triad", "triad", "-qc",
                    f"SELECT triad_drop_schema('compat_{run}')"], capture_output=True)


def workflow(topic, name="compat-research"):
    return {
        "name": name,
        "zones": ["US-EAST"],
        "labels": [{"key": "suite", "value": "compat"}],
        "tasks": [
            {"id": "generate_questions", "prompt": f"Generate 3 questions about {topic}"},
            {"id": "answer", "prompt": "Answer: {generate_questions.output}",
             "dependsOn": ["generate_questions"]},
        ],
    }


async def submit_and_follow(api, subprotocol, key):
    async with Client(transport=transport(api, subprotocol),
                      fetch_schema_from_transport=False) as session:
        SUBMIT.variable_values = {"input": workflow(key), "key": key}
        submitted = await session.execute(SUBMIT)
        wid = submitted["submitWorkflow"]["workflowId"]
        assert submitted["submitWorkflow"]["status"] == "SUBMITTED"
        events = []
        EVENTS.variable_values = {"id": wid, "from": 0}
        async for e in session.subscribe(EVENTS):
            events.append(e["workflowEvents"])
        rest = []
        EVENTS.variable_values = {"id": wid, "from": 5}
        async for e in session.subscribe(EVENTS):
            rest.append(e["workflowEvents"])
        return wid, events, rest


@pytest.mark.parametrize("subprotocol", [WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL,
                                         WebsocketsTransport.APOLLO_SUBPROTOCOL])
def test_gql_client_submits_and_receives_the_whole_ordered_sequence(api, subprotocol):
    key = f"compat-{uuid.uuid4()}"
    wid, events, rest = asyncio.run(asyncio.wait_for(submit_and_follow(api, subprotocol, key),
                                                     120))
    seqs = [e["sequence"] for e in events]
    assert seqs == list(range(1, len(events) + 1)), events
    assert events[0]["type"] == "WorkflowAccepted"
    assert events[-1]["type"] == "WorkflowCompleted"
    assert sum(e["type"] == "TaskCompleted" for e in events) == 2
    assert [e["sequence"] for e in rest] == seqs[5:]

    # curl -N reads the same events as SSE, and resumes after an id.
    out = subprocess.run(["curl", "-sN", "-H", f"Authorization: {api.bearer}",
                          f"{api}/v1/workflows/{wid}/events"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    frames = [b for b in out.split("\n\n") if b.startswith("id: ")]
    ids = [json.loads(f.split("data: ", 1)[1])["event_id"] for f in frames]
    assert ids == [e["eventId"] for e in events]
    out = subprocess.run(["curl", "-sN", "-H", "Last-Event-ID: 3",
                          "-H", f"Authorization: {api.bearer}",
                          f"{api}/v1/workflows/{wid}/events"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    resumed = [int(b.split("\n")[0][4:]) for b in out.split("\n\n") if b.startswith("id: ")]
    assert resumed == seqs[3:]


async def watch_dashboard(api, name, count):
    """Opens the dashboard feed filtered to COMPLETED workflows named `name`, then submits
    `count` such workflows on the same connection; returns their ids and the updates."""
    async with Client(transport=transport(api, WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL),
                      fetch_schema_from_transport=False) as session:
        UPDATES.variable_values = {"status": "COMPLETED", "name": name}
        updates = []
        ids = set()
        feed = session.subscribe(UPDATES)
        first = asyncio.ensure_future(feed.__anext__())
        # The subscription is sent before the mutations on this connection; a workflow takes
        # several Kafka hops to complete, long after the feed took its starting position.
        for n in range(count):
            SUBMIT.variable_values = {"input": workflow(f"dashboards {n}", name), "key": None}
            submitted = await session.execute(SUBMIT)
            ids.add(submitted["submitWorkflow"]["workflowId"])
        updates.append((await first)["workflowUpdates"])
        while {u["workflowId"] for u in updates} != ids:
            updates.append((await feed.__anext__())["workflowUpdates"])
        await feed.aclose()
        return ids, updates


def test_the_dashboard_feed_delivers_every_matching_workflow_that_changes(api):
    name = f"dashboard-{uuid.uuid4().hex[:8]}"
    ids, updates = asyncio.run(asyncio.wait_for(watch_dashboard(api, name, 3), 120))
    assert {u["workflowId"] for u in updates} == ids
    for u in updates:
        assert u["status"] == "COMPLETED", u
        assert u["name"] == name, u
        assert u["tasksCompleted"] == 2, u

    # The same workflows through the list, two per page, each with its tasks.
    query = """query($name: String, $after: String) {
      workflows(filter: {name: $name}, first: 2, after: $after) {
        edges { cursor node { workflowId status tasks { taskId status } } }
        pageInfo { hasNextPage endCursor }
      }
    }"""
    pages, after = [], None
    while True:
        status, body = post_graphql(api, {"query": query,
                                          "variables": {"name": name, "after": after}})
        assert status == 200 and "errors" not in body, body
        page = body["data"]["workflows"]
        pages.append(page)
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert [len(p["edges"]) for p in pages] == [2, 1], pages
    listed = [e["node"] for p in pages for e in p["edges"]]
    assert {w["workflowId"] for w in listed} == ids and len(listed) == 3
    for w in listed:
        assert w["status"] == "COMPLETED", w
        assert sorted((t["taskId"], t["status"]) for t in w["tasks"]) == [
            ("answer", "COMPLETED"), ("generate_questions", "COMPLETED")], w


def post_graphql(api, body, authorization=None):
    headers = {"content-type": "application/json",
               "authorization": authorization if authorization is not None else api.bearer}
    req = urllib.request.Request(f"{api}/graphql", data=json.dumps(body).encode(),
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_abusive_queries_are_rejected_before_execution(api):
    deep = "{ workflows { edges { node { tasks { taskId } events { data } } } } }"
    nested = "query { " + "workflow(id: \"x\") { " * 1 + "events { sequence } " + "}" * 1 + " }"
    status, body = post_graphql(api, {"query": nested})
    assert status == 200 and "errors" not in body, body
    too_deep = "query { __schema { types { fields { type { " + "ofType { " * 12 + "name" \
        + " }" * 12 + " } } } } }"
    status, body = post_graphql(api, {"query": too_deep})
    assert "errors" in body and "nested too deep" in json.dumps(body), body
    aliased = "query { " + " ".join(
        f"a{i}: workflows(first: 100) {{ edges {{ node {{ workflowId tasks {{ taskId }} }} }} }}"
        for i in range(40)) + " }"
    status, body = post_graphql(api, {"query": aliased})
    assert "errors" in body and "too complex" in json.dumps(body), body
    status, body = post_graphql(api, [{"query": "{ models { modelId } }"}] * 2)
    assert status == 400, (status, body)
    status, body = post_graphql(api, {"query": "{ models { modelId } }" + " " * (2 << 20)})
    assert status == 413, status
    status, body = post_graphql(api, {"query": "{ workflows(first: 1000) { edges { cursor } } }"})
    assert body["errors"][0]["extensions"]["code"] == "PAGE_SIZE", body
    status, body = post_graphql(api, {"query": deep})
    assert status == 200 and "errors" not in body, body


def test_submit_errors_name_the_field(api):
    bad = {"name": "x", "zones": ["US-EAST"],
           "tasks": [{"id": "a", "prompt": "hi"}, {"id": "b", "prompt": "{a.output}"}]}
    status, body = post_graphql(api, {
        "query": "mutation($i: WorkflowInput!) { submitWorkflow(input: $i) { workflowId } }",
        "variables": {"i": bad}})
    ext = body["errors"][0]["extensions"]
    assert ext["code"] == "INVALID_WORKFLOW", body
    assert ext["errors"][0]["field"] == "tasks[1].prompt", body


async def subscribe_without_credentials(api, subprotocol):
    async with Client(transport=transport(api, subprotocol, authenticated=False),
                      fetch_schema_from_transport=False) as session:
        async for _ in session.subscribe(UPDATES):
            return "an update arrived"


@pytest.mark.parametrize("subprotocol", [WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL,
                                         WebsocketsTransport.APOLLO_SUBPROTOCOL])
def test_credentials_are_required_everywhere_but_health(api, subprotocol):
    with urllib.request.urlopen(f"{api}/v1/health", timeout=10) as r:
        assert r.status == 200
    for authorization in ["", "Bearer triad_0000000000000000_" + "0" * 64, "Bearer not-a-jwt"]:
        status, body = post_graphql(api, {"query": "{ models { modelId } }"}, authorization)
        assert status == 401, (authorization, status, body)
        assert json.loads(body)["code"] == "unauthenticated", body
    # The WebSocket refuses the connection before any operation runs.
    with pytest.raises(Exception) as refused:
        asyncio.run(asyncio.wait_for(subscribe_without_credentials(api, subprotocol), 30))
    assert "TimeoutError" not in type(refused.value).__name__, refused.value
