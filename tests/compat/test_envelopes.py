"""A second implementation of the envelope format, written from docs/sovereignty_kernel.md
alone with Python's `cryptography` (its own HPKE, HKDF and AES-GCM), against TRIAD's:
Python opens what Rust sealed and Rust opens what Python sealed. Needs a built `triad`
binary (no services).
"""

import json
import os
import pathlib
import struct
import subprocess
import uuid

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ROOT = pathlib.Path(__file__).resolve().parents[2]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
TRIAD = str(TARGET / "debug" / "triad")
SUITE = hpke.Suite(hpke.KEM.P256, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
FORMAT = 1


# --- the format, as the document specifies it -------------------------------------------

def lp(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def zones_bytes(zones) -> bytes:
    return struct.pack(">I", len(zones)) + b"".join(lp(z.encode()) for z in zones)


def aad(e) -> bytes:
    return (b"TRIAD-ENVELOPE" + bytes([e["format"]]) + lp(e["envelope_id"].encode())
            + lp(e["workflow_id"].encode()) + lp(e["task_id"].encode())
            + lp(e["role"].encode()) + struct.pack(">I", e["attempt"])
            + zones_bytes(e["zones"]) + lp(e["workflow_key_id"].encode()))


def wrap_info(workflow_id, workflow_key_id, zones) -> bytes:
    return (b"TRIAD-WORKFLOW-KEY" + bytes([FORMAT]) + lp(workflow_id.encode())
            + lp(workflow_key_id.encode()) + zones_bytes(zones))


def data_key(workflow_key: bytes, workflow_key_id: str, envelope_id: str) -> bytes:
    info = b"TRIAD-DATA-KEY" + bytes([FORMAT]) + lp(envelope_id.encode())
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=workflow_key_id.encode(),
                info=info).derive(workflow_key)


def public_hex(private_key) -> str:
    return private_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint).hex()


def key_id(public_hex_str: str) -> str:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(bytes.fromhex(public_hex_str))
    return digest.finalize()[:16].hex()


def py_open(record, envelope, node_key, node_zone) -> bytes:
    assert node_zone in envelope["zones"]
    kid = key_id(public_hex(node_key))
    [mine] = [w for w in record["wrapped"] if w["key_id"] == kid and w["zone"] == node_zone]
    info = wrap_info(record["workflow_id"], record["workflow_key_id"], record["zones"])
    workflow_key = SUITE.decrypt(bytes.fromhex(mine["enc"]) + bytes.fromhex(mine["wrapped"]),
                                 node_key, info)
    ct = bytes.fromhex(envelope["ciphertext"])
    digest = hashes.Hash(hashes.SHA256())
    digest.update(ct)
    assert digest.finalize().hex() == envelope["ciphertext_sha256"]
    key = data_key(workflow_key, envelope["workflow_key_id"], envelope["envelope_id"])
    return AESGCM(key).decrypt(bytes.fromhex(envelope["nonce"]), ct, aad(envelope))


def py_seal(directory, workflow_id, task_id, role, attempt, zones, plaintext: bytes):
    zones = sorted(set(zones))
    workflow_key = os.urandom(32)
    workflow_key_id = str(uuid.uuid4())
    info = wrap_info(workflow_id, workflow_key_id, zones)
    wrapped = []
    for zone in zones:
        for entry in directory:
            if entry["zone"] != zone:
                continue
            public = ec.EllipticCurvePublicKey.from_encoded_point(
                ec.SECP256R1(), bytes.fromhex(entry["public_key"]))
            sealed = SUITE.encrypt(workflow_key, public, info)
            wrapped.append({"zone": zone, "node_id": entry["node_id"],
                            "key_id": key_id(entry["public_key"]),
                            "enc": sealed[:65].hex(), "wrapped": sealed[65:].hex()})
    record = {"format": FORMAT, "workflow_id": workflow_id, "workflow_key_id": workflow_key_id,
              "zones": zones, "wrapped": wrapped}
    envelope = {"format": FORMAT, "envelope_id": str(uuid.uuid4()), "workflow_id": workflow_id,
                "task_id": task_id, "role": role, "attempt": attempt, "zones": zones,
                "workflow_key_id": workflow_key_id, "nonce": os.urandom(12).hex()}
    key = data_key(workflow_key, workflow_key_id, envelope["envelope_id"])
    ct = AESGCM(key).encrypt(bytes.fromhex(envelope["nonce"]), plaintext, aad(envelope))
    digest = hashes.Hash(hashes.SHA256())
    digest.update(ct)
    envelope.update(ciphertext=ct.hex(), ciphertext_sha256=digest.finalize().hex())
    return record, envelope


# --- the two implementations against each other -----------------------------------------

def triad(d, *args, check=True):
    return subprocess.run([TRIAD, "envelope", "--dir", str(d), *args], check=check,
                          capture_output=True)


@pytest.fixture
def world(tmp_path):
    """A directory with a Rust node in US-EAST and a Python node in EU-WEST."""
    rust_public = triad(tmp_path, "key", "--node", "rust-node").stdout.decode().strip()
    py_key = ec.generate_private_key(ec.SECP256R1())
    directory = [
        {"change": "enrolled", "node_id": "rust-node", "zone": "US-EAST", "public_key": rust_public},
        {"change": "enrolled", "node_id": "py-node", "zone": "EU-WEST", "public_key": public_hex(py_key)},
    ]
    (tmp_path / "directory.json").write_text(json.dumps(directory))
    return tmp_path, py_key, directory


def test_python_opens_what_rust_sealed(world):
    d, py_key, _ = world
    secret = "the answer is 4 — Größe ✓".encode()
    (d / "plain").write_bytes(secret)
    triad(d, "seal", "--workflow", "wf-1", "--task", "answer", "--role", "output",
          "--attempt", "2", "--zones", "US-EAST,EU-WEST", str(d / "plain"))
    record = json.loads((d / "record.json").read_text())
    envelope = json.loads((d / "envelope.json").read_text())
    assert envelope["zones"] == ["EU-WEST", "US-EAST"]
    assert py_open(record, envelope, py_key, "EU-WEST") == secret
    # The document's AAD really is what Rust bound: change one bound field and it fails.
    moved = dict(envelope, attempt=3)
    with pytest.raises(InvalidTag):
        py_open(record, moved, py_key, "EU-WEST")
    assert triad(d, "open", "--node", "rust-node", "--zone", "US-EAST").stdout == secret


def test_rust_opens_what_python_sealed(world):
    d, _, directory = world
    secret = os.urandom(3000)
    record, envelope = py_seal(directory, "wf-py", "generate", "prompt", 1,
                               ["US-EAST", "EU-WEST"], secret)
    (d / "record.json").write_text(json.dumps(record))
    (d / "envelope.json").write_text(json.dumps(envelope))
    assert triad(d, "open", "--node", "rust-node", "--zone", "US-EAST").stdout == secret


def test_rust_refuses_a_tampered_or_foreign_zone_envelope_from_python(world):
    d, _, directory = world
    record, envelope = py_seal(directory, "wf-py", "t", "output", 1, ["US-EAST"], b"payload")
    ct = bytearray(bytes.fromhex(envelope["ciphertext"]))
    ct[0] ^= 1
    digest = hashes.Hash(hashes.SHA256())
    digest.update(bytes(ct))
    tampered = dict(envelope, ciphertext=bytes(ct).hex(), ciphertext_sha256=digest.finalize().hex())
    (d / "record.json").write_text(json.dumps(record))
    (d / "envelope.json").write_text(json.dumps(tampered))
    out = triad(d, "open", "--node", "rust-node", "--zone", "US-EAST", check=False)
    assert out.returncode != 0 and b"does not open" in out.stderr, out.stderr
    record, envelope = py_seal(directory, "wf-eu", "t", "output", 1, ["EU-WEST"], b"eu only")
    (d / "record.json").write_text(json.dumps(record))
    (d / "envelope.json").write_text(json.dumps(envelope))
    out = triad(d, "open", "--node", "rust-node", "--zone", "US-EAST", check=False)
    assert out.returncode != 0 and b"sovereignty violation" in out.stderr, out.stderr
    assert b"eu only" not in out.stdout
