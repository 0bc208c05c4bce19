//! `triad envelope key|seal|open`: the sovereignty kernel's envelopes from the command line,
//! on files in one directory — for interoperability checks against another implementation of
//! `docs/sovereignty_kernel.md` (tests/compat/test_envelopes.py) and for operators inspecting
//! the format. Files: `directory.json` (a list of directory changes), `record.json` (the
//! wrapped workflow key), `envelope.json`, and `keys/<node>.key` (the `file` key store).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use triad_sovereignty::{
    Binding, DirectoryChange, Envelope, FileKeyStore, KeyDirectory, NodeKey, Opener, Role,
    WorkflowKey, WorkflowKeyRecord,
};

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
}

fn directory(dir: &Path) -> Result<KeyDirectory> {
    let changes: Vec<DirectoryChange> = read_json(&dir.join("directory.json"))?;
    let mut d = KeyDirectory::default();
    for c in &changes {
        d.apply(c)?;
    }
    Ok(d)
}

/// Prints the public key (uncompressed SEC1, hex) of `node`, creating its key if needed.
pub fn key(dir: &Path, node: &str) -> Result<()> {
    let key = FileKeyStore::new(dir.join("keys")).load_or_create(node)?;
    println!("{}", triad_sovereignty::public_hex(key.public()));
    Ok(())
}

pub struct Seal<'a> {
    pub workflow: &'a str,
    pub task: &'a str,
    pub role: Role,
    pub attempt: u32,
    pub zones: &'a [String],
    pub plaintext: &'a Path,
}

/// Creates a workflow key for the zones and seals the file's bytes.
pub fn seal(dir: &Path, s: &Seal<'_>) -> Result<()> {
    let directory = directory(dir)?;
    let (key, record) = WorkflowKey::create(&directory, s.workflow, s.zones)?;
    let plaintext =
        std::fs::read(s.plaintext).with_context(|| format!("reading {}", s.plaintext.display()))?;
    let envelope = key.seal(
        Binding {
            task_id: s.task,
            role: s.role,
            attempt: s.attempt,
        },
        &plaintext,
    )?;
    std::fs::write(dir.join("record.json"), serde_json::to_vec_pretty(&record)?)?;
    std::fs::write(
        dir.join("envelope.json"),
        serde_json::to_vec_pretty(&envelope)?,
    )?;
    println!(
        "sealed {} bytes to {} ({} wrapped keys)",
        plaintext.len(),
        envelope.zones.join(", "),
        record.wrapped.len()
    );
    Ok(())
}

/// Opens `envelope.json` as `node` of `zone` and writes the plaintext to standard output.
pub fn open(dir: &Path, node: &str, zone: &str) -> Result<()> {
    let directory = directory(dir)?;
    let record: WorkflowKeyRecord = read_json(&dir.join("record.json"))?;
    let envelope: Envelope = read_json(&dir.join("envelope.json"))?;
    let key = FileKeyStore::new(dir.join("keys")).load_or_create(node)?;
    let opener = Opener::new(node, zone, Arc::new(key));
    let plaintext = opener.unseal(&directory, &record, &envelope)?;
    use std::io::Write;
    std::io::stdout().write_all(&plaintext)?;
    Ok(())
}
