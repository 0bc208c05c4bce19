//! `triad keys`: node keys and the operator-signed key directory on `triad.key-directory`
//! (docs/sovereignty_kernel.md). The operator holds the signing key (a file here, kept off
//! the nodes); every reader verifies each change against `sovereignty.operator_public_key`.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rdkafka::message::Message;
use triad_codec::Codec;
use triad_config::Config;
use triad_domain::KeyDirectoryChange;
use triad_kafka::topics::Names;
use triad_sovereignty::signing::{Signer, SoftwareSigner};
use triad_sovereignty::{
    DirectoryChange, DirectoryWriter, FileKeyStore, KeyState, NodeKey, SignedChange,
    SignedDirectory, TpmKey, parse_public_hex, public_hex, unhex,
};

/// The record key of every directory change (one partition, one chain).
const KEY: &str = "directory";

fn parse_public(hex_key: &str, what: &str) -> Result<p256::PublicKey> {
    parse_public_hex(hex_key).with_context(|| format!("{what} is not a P-256 public key in hex"))
}

/// Creates the operator's signing key at `out` (mode 0600, never overwritten).
pub fn operator_init(out: &Path) -> Result<()> {
    let signer = SoftwareSigner::generate();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(out).with_context(|| {
        format!(
            "creating {} (an existing key is never overwritten)",
            out.display()
        )
    })?;
    file.write_all(signer.scalar_hex().as_bytes())?;
    file.sync_all()?;
    println!(
        "operator key written to {} (keep it off the nodes)",
        out.display()
    );
    println!("key id {}", signer.key_id());
    println!("configure every node with:");
    println!(
        "  sovereignty.operator_public_key = \"{}\"",
        public_hex(signer.public())
    );
    Ok(())
}

fn load_operator(path: &Path) -> Result<SoftwareSigner> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the operator key {}", path.display()))?;
    let bytes = unhex(text.trim()).with_context(|| format!("{}: not hex", path.display()))?;
    Ok(SoftwareSigner::from_scalar(&bytes)?)
}

/// Prints a node's public key and key id, creating the key in its store when needed.
pub fn node_key(config: &Config, node: &str, tpm: Option<&str>) -> Result<()> {
    use triad_sovereignty::signing::Signer;
    // With a TPM both keys live (and are created) inside it; otherwise in the file store.
    let (public, key_id, signer): (_, _, Box<dyn Signer>) = match tpm {
        Some(tcti) => {
            let key = TpmKey::open(tcti, triad_sovereignty::tpm::DEFAULT_HANDLE)?;
            (
                *key.public(),
                key.key_id().to_owned(),
                Box::new(key.signer()),
            )
        }
        None => {
            let store = FileKeyStore::new(&config.sovereignty.key_dir);
            let key = store.load_or_create(node)?;
            let signer = store.load_or_create_signer(node)?;
            (*key.public(), key.key_id().to_owned(), Box::new(signer))
        }
    };
    println!("node {node}: key id {key_id}");
    println!("public key {}", public_hex(&public));
    println!("signing key {}", public_hex(signer.public()));
    println!("signing key id {}", signer.key_id());
    Ok(())
}

fn to_signed(r: KeyDirectoryChange) -> Result<SignedChange> {
    triad_kernel::to_signed(r).map_err(anyhow::Error::msg)
}

fn to_record(s: SignedChange) -> Result<KeyDirectoryChange> {
    triad_kernel::to_record(s).map_err(anyhow::Error::msg)
}

/// Folds `triad.key-directory`, verifying every change against `operator`.
pub async fn read(
    config: &Config,
    codec: &Codec,
    operator: p256::PublicKey,
) -> Result<SignedDirectory> {
    let topic = Names::new(&config.kafka).key_directory;
    let records = triad_kafka::consume::read_all(&config.kafka, &topic, Duration::from_secs(60))
        .await
        .with_context(|| format!("reading {topic}"))?;
    let mut directory = SignedDirectory::new(operator);
    for m in records {
        let record: KeyDirectoryChange = codec
            .decode(m.payload())
            .await
            .with_context(|| format!("{topic}@{}: undecodable change", m.offset()))?;
        directory
            .apply(&to_signed(record)?)
            .with_context(|| format!("{topic}@{}: refused", m.offset()))?;
    }
    Ok(directory)
}

fn configured_operator(config: &Config) -> Result<p256::PublicKey> {
    let Some(pk) = &config.sovereignty.operator_public_key else {
        bail!("sovereignty.operator_public_key is not set (`triad keys operator-init` prints it)");
    };
    parse_public(pk, "sovereignty.operator_public_key")
}

/// Signs `change` as the next change of the directory and appends it.
pub async fn append(
    config: &Config,
    codec: &Codec,
    operator_key: &Path,
    change: DirectoryChange,
) -> Result<()> {
    let operator = load_operator(operator_key)?;
    if let Some(pk) = &config.sovereignty.operator_public_key
        && parse_public(pk, "sovereignty.operator_public_key")? != *operator.public()
    {
        bail!(
            "{} is not the operator key the configuration names (sovereignty.operator_public_key)",
            operator_key.display()
        );
    }
    let (sequence, topic, offset) = append_signed(config, codec, &operator, change).await?;
    println!("change {sequence} signed and appended to {topic}@{offset}");
    Ok(())
}

/// Signs `change` with `operator` as the next change of the directory and appends it;
/// returns its sequence number, the topic and its offset.
pub async fn append_signed(
    config: &Config,
    codec: &Codec,
    operator: &SoftwareSigner,
    change: DirectoryChange,
) -> Result<(u64, String, i64)> {
    if let DirectoryChange::Enrolled {
        zone, public_key, ..
    }
    | DirectoryChange::SigningKeyEnrolled {
        zone, public_key, ..
    } = &change
    {
        if !config.policy.zones.contains(zone) {
            bail!(
                "zone {zone} is not in policy.zones ({})",
                config.policy.zones.join(", ")
            );
        }
        parse_public(public_key, "--public-key")?;
    }
    let current = read(config, codec, *operator.public()).await?;
    let (sequence, head) = current.head();
    let mut writer = DirectoryWriter::new(operator, sequence, Some(head.to_owned()));
    let mut next = current.clone();
    let signed = writer.sign(change)?;
    // Applying it locally first refuses what the readers would refuse (e.g. a second
    // enrolment of a key, a change to an unknown or revoked key).
    next.apply(&signed)?;
    let sequence = signed.sequence;
    let topic = Names::new(&config.kafka).key_directory;
    let producer = triad_kafka::produce::Producer::new(&config.kafka)?;
    let delivered = producer
        .send_record(codec, &topic, None, KEY, &to_record(signed)?)
        .await?;
    Ok((sequence, topic, delivered.offset))
}

/// Prints every key of the directory with its zone and state.
pub async fn list(config: &Config, codec: &Codec) -> Result<()> {
    let directory = read(config, codec, configured_operator(config)?).await?;
    let (sequence, head) = directory.head();
    println!("key directory: {sequence} changes, all signed by the operator; head {head}");
    let d = directory.directory();
    let keys = d
        .entries()
        .map(|e| (e, "wrap"))
        .chain(d.signers().map(|e| (e, "sign")));
    for (e, purpose) in keys {
        let state = match e.state {
            KeyState::Active => "active",
            KeyState::Retired => "retired",
            KeyState::Revoked => "revoked",
        };
        println!(
            "  {:<12} {:<16} {}  {purpose}  {state}",
            e.zone, e.node_id, e.key_id
        );
    }
    Ok(())
}
