"""Third-party clients against TRIAD's topics and registry.

Confluent's Python client (the same AvroDeserializer + SchemaRegistryClient logic Kafka
Connect's AvroConverter uses) must decode every record TRIAD writes, and must drive the dev
registry through its public API; fastavro must read the golden corpus. Needs the stack
(scripts/dev.sh up) and a built `triad` binary.
"""

import datetime as dt
import hashlib
import json
import os
import pathlib
import subprocess
import uuid

import fastavro
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

ROOT = pathlib.Path(__file__).resolve().parents[2]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
TRIAD = str(TARGET / "debug" / "triad")
KAFKA = os.environ.get("COMPAT_KAFKA", "127.0.0.1:9092")
REGISTRY = "http://127.0.0.1:8081"
EPOCH_2026 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def read_all(topic):
    """Every record of a topic, up to the high watermarks at the time of the call."""
    consumer = Consumer({"bootstrap.servers": KAFKA, "group.id": f"compat-{uuid.uuid4()}",
                         "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        assert meta.error is None, meta.error
        ends = {}
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        out = []
        while ends:
            m = consumer.poll(10)
            assert m is not None, f"timed out reading {topic}"
            assert m.error() is None, m.error()
            out.append(m)
            if m.offset() + 1 >= ends.get(m.partition(), 0):
                ends.pop(m.partition(), None)
        return out
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def registry():
    return SchemaRegistryClient({"url": REGISTRY})


@pytest.fixture(scope="module")
def fixture_topics():
    prefix = f"compat-{uuid.uuid4().hex}."
    out = subprocess.run([TRIAD, "publish-fixtures", "--topic-prefix", prefix],
                         check=True, capture_output=True, text=True).stdout.split()
    return dict(zip(["inbox", "events", "dlq", "tasks", "control", "status",
                     "credits_inbox", "credits"], out))


def decode_all(registry, topic):
    deserializer = AvroDeserializer(registry)
    ctx = SerializationContext(topic, MessageField.VALUE)
    return [deserializer(m.value(), ctx) for m in read_all(topic)]


def test_every_event_type_decodes_with_confluent_avro_deserializer(registry, fixture_topics):
    events = decode_all(registry, fixture_topics["events"])
    assert [e["meta"]["event_type"] for e in events] == [
        "WorkflowAccepted", "WorkflowRejected", "TaskScheduled", "TaskDispatched",
        "TaskCompleted", "TaskFailed", "TaskSkipped", "WorkflowCompleted", "WorkflowFailed",
        "WorkflowCancelled", "TaskRouted", "TaskResultDiscarded", "BidPlaced", "AuctionClosed",
        "BudgetRequested", "BudgetSettled"]
    assert [e["meta"]["sequence"] for e in events] == list(range(1, 17))
    assert all(e["meta"]["occurred_at"] == EPOCH_2026 for e in events)
    completed = events[4]["body"]
    # The fixture's output travels by reference (claim check, events v3).
    assert completed["output"] == b""
    assert completed["output_ref"]["size"] == 300 * 1024
    assert len(completed["output_ref"]["sha256"]) == 64
    assert completed["cost_micros"] == 42
    accepted = events[0]["body"]
    assert [t["id"] for t in accepted["tasks"]] == ["generate_questions", "answer"]
    assert accepted["tasks"][1]["depends_on"] == ["generate_questions"]
    assert events[7]["body"]["outputs"] == {"answer": b"42"}
    assert events[7]["body"]["output_refs"]["measure"]["uri"].startswith("postgres:triad_blobs/")
    decision = events[10]["body"]["decision"]
    assert decision["model_id"] == "triad-local" and decision["score"] == 0.75
    assert [c["ok"] for c in decision["calls"]] == [False, True]
    assert events[5]["body"]["unavailable_zone"] is None
    # Auctions (events v7): a bid with its fate and the bidder's standing, then the award.
    bid = events[12]["body"]["bid"]
    assert (bid["model_id"], bid["status"], bid["price_micros"], bid["standing"]) == (
        "triad-local", "WON", 10, 1.0)
    closed = events[13]["body"]
    assert (closed["winner"], closed["price_micros"], closed["bids"]) == ("triad-local", 10, 4)
    assert decision["auction"] is None
    # Budgets (events v8): the reservation asked for, carrying the submission, and its
    # settlement.
    assert accepted["budget"] is None
    requested = events[14]["body"]
    assert requested["budget"]["account"] == "acct-demo"
    assert requested["budget"]["attempt_micros"] == {"answer": 1500, "generate_questions": 1500}
    assert requested["submission"]["budget"]["reserved_micros"] == 9000
    assert events[15]["body"] == {"account": "acct-demo", "burned_micros": 84,
                                  "released_micros": 8916}


def test_every_command_and_dead_letter_decodes(registry, fixture_topics):
    inbox = decode_all(registry, fixture_topics["inbox"])
    assert [r["meta"]["idempotency_key"] for r in inbox] == [f"demo-key-{n}" for n in range(1, 6)]
    assert inbox[0]["body"]["name"] == "research"
    assert inbox[0]["body"]["account"] is None
    assert inbox[4]["body"] == {"account": "acct-demo", "outcome": "SETTLED", "amount_micros": 9000,
                                "burned_micros": 84, "released_micros": 8916, "reason": None}
    assert inbox[2]["body"]["outcome"] == "SUCCEEDED"
    assert inbox[2]["body"]["routing"]["alternatives"] == ["aetherai-v1"]
    # The reported auction (inbox v5): late bids carry no offer.
    bids = inbox[2]["body"]["routing"]["auction"]["bids"]
    assert [(b["status"], b["price_micros"]) for b in bids] == [
        ("WON", 10), ("ACCEPTED", 90), ("LATE", None), ("MALFORMED", -5)]
    assert inbox[3]["body"]["kind"] == "DEADLINE"


def test_the_credits_ledger_decodes_and_its_totals_add_up(registry, fixture_topics):
    commands = decode_all(registry, fixture_topics["credits_inbox"])
    assert [list(c["body"].keys()) for c in commands] == [
        ["amount_micros", "kind", "reason"],
        ["workflow_id", "amount_micros", "reply_topic"],
        ["workflow_id", "burned_micros", "reply_topic"]]
    assert commands[0]["body"]["kind"] == "CAPACITY"
    ledger = decode_all(registry, fixture_topics["credits"])
    assert [e["sequence"] for e in ledger] == [1, 2, 3, 4, 5]
    assert ledger[0]["previous_sha256"] == "0" * 64
    for e in ledger:
        t = e["totals"]
        # The ledger's invariant, checked by a third-party decoder.
        assert t["issued_micros"] == t["balance_micros"] + t["reserved_micros"] + t["burned_micros"]
        assert min(t.values()) >= 0
    assert ledger[-1]["totals"]["burned_micros"] == 84


def test_work_queue_control_and_status_records_decode(registry, fixture_topics):
    [request] = decode_all(registry, fixture_topics["tasks"])
    assert request["attempt_id"].endswith("/answer#1")
    assert request["inputs"] == {"generate_questions": b"1. Who holds the keys?"}
    assert request["auction"] is True
    # Budgets (task requests v4): what the attempt may spend on its reservation.
    assert request["budget_micros"] == 1500
    [control] = decode_all(registry, fixture_topics["control"])
    assert control["action"] == "CANCEL"
    statuses = decode_all(registry, fixture_topics["status"])
    assert statuses[0]["body"]["capacity"] == 256
    assert statuses[1]["body"]["to_state"] == "OPEN"
    health = statuses[3]["body"]
    assert (health["model_id"], health["healthy"], health["probes"]) == ("aetherai-v1", False, 2)
    [letter] = decode_all(registry, fixture_topics["dlq"])
    assert letter["value"] == b"{not avro}"
    assert letter["source_offset"] == 17
    assert letter["headers"][0]["key"] == "traceparent"


def test_the_live_inbox_decodes_record_by_record(registry):
    # The demo writes to an inbox of its own per run (it names it); every record there must
    # decode with the third-party deserializer.
    out = subprocess.run([TRIAD, "demo"], check=True, capture_output=True, text=True).stdout
    [inbox] = [line.split("inbox: ", 1)[1].strip() for line in out.splitlines() if "inbox: " in line]
    assert inbox.endswith("triad.workflow-inbox") and inbox != "triad.workflow-inbox"
    records = decode_all(registry, inbox)
    assert records, "the demo should have written at least one record"
    assert all(r["meta"]["workflow_id"].startswith("wf-") for r in records)


def test_golden_corpus_reads_with_fastavro():
    schemas = ROOT / "schemas"
    for history in (schemas / "history").iterdir():
        current = fastavro.parse_schema(json.loads((schemas / f"{history.name}.avsc").read_text()))
        for version in sorted(history.iterdir()):
            writer = fastavro.parse_schema(json.loads(version.read_text()))
            golden = schemas / "golden" / history.name / version.stem
            files = sorted(golden.iterdir())
            assert files, golden
            for f in files:
                with f.open("rb") as fh:
                    record = fastavro.schemaless_reader(fh, writer, current)
                    assert fh.read() == b"", f"{f}: trailing bytes"
                assert isinstance(record, dict)


AVSC_V1 = json.dumps({"type": "record", "name": "Compat", "fields": [{"name": "a", "type": "string"}]})
AVSC_V2 = json.dumps({"type": "record", "name": "Compat", "fields": [
    {"name": "a", "type": "string"}, {"name": "b", "type": "int", "default": 0}]})
AVSC_BAD = json.dumps({"type": "record", "name": "Compat", "fields": [{"name": "a", "type": "int"}]})


def test_schema_registry_client_drives_the_registry(registry):
    subject = f"compat-{uuid.uuid4().hex}-value"
    id1 = registry.register_schema(subject, Schema(AVSC_V1, "AVRO"))
    assert registry.register_schema(subject, Schema(AVSC_V1, "AVRO")) == id1
    id2 = registry.register_schema(subject, Schema(AVSC_V2, "AVRO"))
    assert id2 != id1
    assert json.loads(registry.get_schema(id1).schema_str) == json.loads(AVSC_V1)
    latest = registry.get_latest_version(subject)
    assert (latest.version, latest.schema_id) == (2, id2)
    assert registry.get_versions(subject) == [1, 2]
    found = registry.lookup_schema(subject, Schema(AVSC_V1, "AVRO"))
    assert (found.version, found.schema_id) == (1, id1)
    assert subject in registry.get_subjects()

    assert registry.test_compatibility(subject, Schema(AVSC_BAD, "AVRO")) is False
    with pytest.raises(SchemaRegistryError) as e:
        registry.register_schema(subject, Schema(AVSC_BAD, "AVRO"))
    assert e.value.http_status_code == 409

    registry.set_compatibility(subject, "NONE")
    assert registry.get_compatibility(subject) == "NONE"
    assert registry.test_compatibility(subject, Schema(AVSC_BAD, "AVRO")) is True

    assert registry.delete_subject(subject) == [1, 2]
    assert registry.delete_subject(subject, permanent=True) == [1, 2]
    with pytest.raises(SchemaRegistryError) as e:
        registry.get_versions(subject)
    assert e.value.error_code == 40401
    with pytest.raises(SchemaRegistryError) as e:
        registry.get_schema(10_000_000)
    assert e.value.error_code == 40403


def test_the_broker_serves_reads_that_start_inside_a_batch():
    """The broker contract TRIAD's consumers rely on (ADR 0007 §1): a group resumes at a
    committed offset that is usually inside a batch, and the processor's recovery reads to the
    high watermark. Tansu's memory storage fails both; the stack runs on sqlite storage."""
    topic = f"compat-batches-{uuid.uuid4().hex}"
    admin = AdminClient({"bootstrap.servers": KAFKA})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": KAFKA, "linger.ms": 20, "enable.idempotence": True})
    acked = []
    for n in range(50):
        producer.produce(topic, value=b"%d" % n, partition=0,
                         on_delivery=lambda err, m: acked.append(None if err else m.offset()))
    producer.flush(30)
    assert sorted(acked) == list(range(50))
    for start in (0, 10, 25, 49):
        consumer = Consumer({"bootstrap.servers": KAFKA, "group.id": f"compat-{uuid.uuid4()}",
                             "enable.partition.eof": True, "enable.auto.commit": False})
        try:
            consumer.assign([TopicPartition(topic, 0, start)])
            offsets = []
            while True:
                m = consumer.poll(10)
                assert m is not None, f"start {start}: no record and no end after {offsets}"
                if m.error():
                    assert m.error().code() == -191, m.error()  # _PARTITION_EOF
                    break
                offsets.append(m.offset())
            assert offsets == list(range(start, 50)), f"start {start}"
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
            assert high == 50, "high watermark"
        finally:
            consumer.close()


def _leaf(value: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + value).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _mth(leaves):
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return _node(_mth(leaves[:k]), _mth(leaves[k:]))


def _verify(leaf, index, size, proof, root):
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            r = _node(p, r)
            while fn % 2 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def test_a_third_party_recomputes_the_root_and_checks_a_proof(registry):
    # docs/audit.md, followed with confluent-kafka and hashlib only.
    out = subprocess.run([TRIAD, "demo"], check=True, capture_output=True, text=True).stdout
    [inbox] = [line.split("inbox: ", 1)[1].strip() for line in out.splitlines() if "inbox: " in line]
    prefix = inbox[: -len("triad.workflow-inbox")]
    [workflow] = [line.split("submitted ", 1)[1].split()[0] for line in out.splitlines()
                  if "3. submitted " in line]
    [printed_root] = [line.split("Merkle root ", 1)[1].strip() for line in out.splitlines()
                      if "Merkle root " in line]
    env = dict(os.environ, TRIAD_KAFKA__TOPIC_PREFIX=prefix)
    mine = [m for m in read_all(f"{prefix}triad.workflow-events") if m.key() == workflow.encode()]
    mine.sort(key=lambda m: m.offset())
    leaves = [_leaf(m.value()) for m in mine]
    assert len(leaves) >= 8
    assert _mth(leaves).hex() == printed_root
    middle = AvroDeserializer(registry)(mine[len(mine) // 2].value(),
                                        SerializationContext(mine[0].topic(), MessageField.VALUE))
    event_id = middle["meta"]["event_id"]
    proof = json.loads(subprocess.run([TRIAD, "audit", "prove", workflow, event_id], check=True,
                                      capture_output=True, text=True, env=env).stdout)
    assert proof["size"] == len(leaves) and proof["root"] == printed_root
    [record] = [m for m in mine if m.offset() == proof["offset"]]
    leaf = _leaf(record.value())
    assert leaf.hex() == proof["leaf_hash"]
    path = [bytes.fromhex(p) for p in proof["proof"]]
    root = bytes.fromhex(proof["root"])
    assert _verify(leaf, proof["index"], proof["size"], path, root)
    # A changed byte in the record, or a proof for another position, does not verify.
    assert not _verify(_leaf(record.value() + b"\x00"), proof["index"], proof["size"], path, root)
    assert not _verify(leaf, proof["index"] ^ 1, proof["size"], path, root)
