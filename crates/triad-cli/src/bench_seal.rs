//! `triad bench --seal`: the sovereignty kernel's per-payload path against the raw primitives
//! doing the same cryptographic work, in the same run (docs/benchmarks.md).
//!
//! - kernel: `WorkflowKey::seal` (fresh envelope id and nonce, HKDF data key, AES-256-GCM
//!   over the payload with the envelope's AAD, SHA-256 of the ciphertext) then
//!   `Opener::unseal` with the workflow key already unwrapped (zone, enrolment and record
//!   checks, SHA-256 check, HKDF, AES-256-GCM open).
//! - raw: AES-256-GCM seal under a fixed, pre-expanded key with an AAD of the same length,
//!   SHA-256 of the ciphertext twice (recorded at seal, checked at open), AES-256-GCM open.
//!
//! Passes alternate (raw, kernel) for `--rounds` rounds after a warm-up; the median per size
//! is reported. Separately: the per-workflow public-key work (create and wrap a workflow key
//! for one recipient; unwrap it on the first open) with a software key and, with `--tpm`,
//! with a key in a TPM.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use anyhow::{Result, ensure};
use sha2::{Digest, Sha256};
use triad_sovereignty::tpm::DEFAULT_HANDLE;
use triad_sovereignty::{
    Binding, DirectoryChange, KeyDirectory, NodeKey, Opener, Role, SoftwareKey, TpmKey, WorkflowKey,
};

const SIZES: &[usize] = &[256, 1024, 16 * 1024, 256 * 1024];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(rounds: usize, tpm: Option<&str>) -> Result<()> {
    ensure!(rounds > 0, "--rounds must be above 0");
    let node = Arc::new(SoftwareKey::generate());
    let directory = enrolled("bench-node", &*node)?;
    let (key, record) = WorkflowKey::create(&directory, "wf-bench", &["US-EAST"])?;
    let opener = Opener::new("bench-node", "US-EAST", node.clone());
    let binding = Binding {
        task_id: "answer",
        role: Role::Output,
        attempt: 1,
    };
    // An AAD as long as the kernel's, for the raw pass's GHASH work.
    let aad = triad_sovereignty::envelope::aad(&key.seal(binding, b"")?);
    let raw = Aes256Gcm::new_from_slice(&[7u8; 32]).map_err(|e| anyhow::anyhow!("{e}"))?;
    let nonce = [9u8; 12];

    println!(
        "| payload | raw AES-256-GCM + SHA-256, ns | kernel seal + unseal, ns | ratio | kernel MB/s |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for &size in SIZES {
        let payload = vec![0x5au8; size];
        let iterations = (64 * 1024 * 1024 / size).clamp(500, 50_000);
        let raw_pass = || -> Result<Duration> {
            let started = Instant::now();
            for _ in 0..iterations {
                let ct = raw
                    .encrypt(
                        Nonce::from_slice(&nonce),
                        Payload {
                            msg: black_box(&payload),
                            aad: &aad,
                        },
                    )
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let recorded = Sha256::digest(&ct);
                ensure!(Sha256::digest(black_box(&ct)) == recorded);
                let pt = raw
                    .decrypt(
                        Nonce::from_slice(&nonce),
                        Payload {
                            msg: &ct,
                            aad: &aad,
                        },
                    )
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                black_box(pt);
            }
            Ok(started.elapsed())
        };
        let kernel_pass = || -> Result<Duration> {
            let started = Instant::now();
            for _ in 0..iterations {
                let envelope = key.seal(binding, black_box(&payload))?;
                let pt = opener.unseal(&directory, &record, &envelope)?;
                black_box(pt);
            }
            Ok(started.elapsed())
        };
        raw_pass()?;
        kernel_pass()?;
        let (mut raws, mut kernels) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            raws.push(raw_pass()?.as_secs_f64() * 1e9 / iterations as f64);
            kernels.push(kernel_pass()?.as_secs_f64() * 1e9 / iterations as f64);
        }
        let (r, k) = (median(raws), median(kernels));
        println!(
            "| {size} B | {r:.0} | {k:.0} | {:.2} | {:.0} |",
            k / r,
            size as f64 / k * 1e3
        );
    }

    // Each primitive alone, to compare with the machine's limit (e.g. `openssl speed -evp
    // aes-256-gcm`): the ratio above is only as meaningful as the backend it is measured on.
    let block = vec![0x5au8; 16 * 1024];
    let n = 20_000;
    let started = Instant::now();
    for _ in 0..n {
        black_box(
            raw.encrypt(Nonce::from_slice(&nonce), black_box(block.as_slice()))
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        );
    }
    let aes = (block.len() * n) as f64 / started.elapsed().as_secs_f64() / 1e6;
    let started = Instant::now();
    for _ in 0..n {
        black_box(Sha256::digest(black_box(&block)));
    }
    let sha = (block.len() * n) as f64 / started.elapsed().as_secs_f64() / 1e6;
    println!();
    println!("| primitive, 16 KiB blocks, this build | MB/s |");
    println!("| --- | --- |");
    println!("| AES-256-GCM encrypt (aes-gcm crate) | {aes:.0} |");
    println!("| SHA-256 (sha2 crate) | {sha:.0} |");

    println!();
    println!("| per-workflow key setup | µs |");
    println!("| --- | --- |");
    setup("software key", node)?;
    if let Some(tcti) = tpm {
        setup(
            "TPM key (ECDH ZGen in the TPM)",
            Arc::new(TpmKey::open(tcti, DEFAULT_HANDLE)?),
        )?;
    }
    Ok(())
}

/// A directory with `node` enrolled in US-EAST.
fn enrolled(node_id: &str, node: &dyn NodeKey) -> Result<KeyDirectory> {
    let mut directory = KeyDirectory::default();
    directory.apply(&DirectoryChange::Enrolled {
        node_id: node_id.into(),
        zone: "US-EAST".into(),
        public_key: triad_sovereignty::public_hex(node.public()),
    })?;
    Ok(directory)
}

/// Public-key work, once per workflow and zone set (and per node on the first open): create a
/// workflow key wrapped to `node`, and open it on `node` with nothing cached.
fn setup(label: &str, node: Arc<dyn NodeKey>) -> Result<()> {
    let directory = enrolled("setup-node", &*node)?;
    let binding = Binding {
        task_id: "t",
        role: Role::Output,
        attempt: 1,
    };
    let setups = 200;
    let started = Instant::now();
    for _ in 0..setups {
        black_box(WorkflowKey::create(&directory, "wf-setup", &["US-EAST"])?);
    }
    let create = started.elapsed().as_secs_f64() * 1e6 / setups as f64;
    let (key, record) = WorkflowKey::create(&directory, "wf-setup", &["US-EAST"])?;
    let envelope = key.seal(binding, b"x")?;
    let started = Instant::now();
    for _ in 0..setups {
        let fresh = Opener::new("setup-node", "US-EAST", node.clone());
        black_box(fresh.unseal(&directory, &record, &envelope)?);
    }
    let unwrap = started.elapsed().as_secs_f64() * 1e6 / setups as f64;
    println!("| {label}: create + wrap to 1 recipient (HPKE seal) | {create:.0} |");
    println!("| {label}: first open on the node (HPKE open + payload) | {unwrap:.0} |");
    Ok(())
}
