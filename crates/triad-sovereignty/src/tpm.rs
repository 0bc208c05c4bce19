//! The `tpm` key store: the node's P-256 key is created inside a TPM 2.0 and persisted under a
//! handle; the DH step of unwrapping runs inside it (`TPM2_ECDH_ZGen`), so the private key
//! never leaves it. The TCTI string names the TPM: `swtpm:host=127.0.0.1,port=2321` for the
//! simulator, `device:/dev/tpmrm0` for hardware.
//!
//! The ESAPI context is not `Send`, so it lives on a thread of its own and the key talks to
//! it over a channel. Authorisation uses the password session (the key has an empty auth
//! value), which takes no TPM session slot; transient objects a killed process left behind
//! are flushed at start, so repeated `kill -9` cannot exhaust the TPM's slots.

use std::str::FromStr;
use std::sync::mpsc;

use p256::PublicKey;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::CapabilityType;
use tss_esapi::constants::tss::TPM2_TRANSIENT_FIRST;
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    CapabilityData, EccParameter, EccPoint, EccScheme, HashScheme, KeyDerivationFunctionScheme,
    Public, PublicBuilder, PublicEccParametersBuilder,
};
use tss_esapi::{Context, TctiNameConf};
use zeroize::Zeroizing;

use crate::hpke::KeyAgreement;
use crate::keys::{NodeKey, key_id};
use crate::{Error, Result};

/// The default persistent handle of a node's key (owner range `0x8101_xxxx`).
pub const DEFAULT_HANDLE: u32 = 0x8101_0101;

type Reply = mpsc::Sender<Result<Zeroizing<[u8; 32]>>>;

/// A node key held by a TPM.
pub struct TpmKey {
    jobs: mpsc::Sender<([u8; 65], Reply)>,
    public: PublicKey,
    key_id: String,
    /// Transient objects flushed when the store opened (left by a killed process).
    pub flushed_at_start: usize,
}

impl std::fmt::Debug for TpmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

fn tpm(what: &str, e: &tss_esapi::Error) -> Error {
    Error::Key {
        reason: format!("TPM: {what}: {e}"),
    }
}

impl TpmKey {
    /// Opens the key persisted at `handle` in the TPM `tcti` names, creating and persisting
    /// it on first use.
    pub fn open(tcti: &str, handle: u32) -> Result<Self> {
        let conf = TctiNameConf::from_str(tcti).map_err(|e| tpm("TCTI", &e))?;
        let (ready_tx, ready_rx) = mpsc::channel();
        let (jobs, job_rx) = mpsc::channel::<([u8; 65], Reply)>();
        std::thread::Builder::new()
            .name("triad-tpm".to_owned())
            .spawn(move || {
                let started = start(conf, handle);
                let (mut ctx, key) = match started {
                    Ok((ctx, key, public, flushed)) => {
                        let _ = ready_tx.send(Ok((public, flushed)));
                        (ctx, key)
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                // Ends when every `TpmKey` sender is dropped.
                for (point, reply) in job_rx {
                    let _ = reply.send(z_gen(&mut ctx, key, &point));
                }
            })
            .map_err(|e| Error::Key {
                reason: format!("starting the TPM thread: {e}"),
            })?;
        let (public, flushed_at_start) = ready_rx.recv().map_err(|_| Error::Key {
            reason: "the TPM thread stopped".to_owned(),
        })??;
        Ok(Self {
            jobs,
            key_id: key_id(&public),
            public,
            flushed_at_start,
        })
    }
}

/// How long connecting retries: a TPM daemon or simulator started next to the node may
/// accept connections a moment before it answers (swtpm has been seen to refuse the first
/// session right after it began listening).
const CONNECT_FOR: std::time::Duration = std::time::Duration::from_secs(5);

fn connect(conf: &TctiNameConf) -> Result<Context> {
    let deadline = std::time::Instant::now() + CONNECT_FOR;
    let mut pause = std::time::Duration::from_millis(10);
    loop {
        match Context::new(conf.clone()) {
            Ok(ctx) => return Ok(ctx),
            Err(_) if std::time::Instant::now() + pause < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(500));
            }
            Err(e) => return Err(tpm("connecting", &e)),
        }
    }
}

fn start(conf: TctiNameConf, handle: u32) -> Result<(Context, KeyHandle, PublicKey, usize)> {
    let mut ctx = connect(&conf)?;
    let flushed = flush_transients(&mut ctx)?;
    let persistent = PersistentTpmHandle::new(handle).map_err(|e| tpm("persistent handle", &e))?;
    // Create only when the handle is free: any other failure to load it is an error, never
    // a reason to replace the node's key.
    let key = if is_persisted(&mut ctx, handle)? {
        let object = ctx
            .tr_from_tpm_public(TpmHandle::Persistent(persistent))
            .map_err(|e| tpm("loading the persisted key", &e))?;
        KeyHandle::from(object)
    } else {
        create(&mut ctx, persistent)?
    };
    let (public, _, _) = ctx
        .read_public(key)
        .map_err(|e| tpm("reading the public key", &e))?;
    let Public::Ecc { unique, .. } = public else {
        return Err(Error::Key {
            reason: format!("TPM: handle {handle:#x} does not hold an ECC key"),
        });
    };
    let point = sec1(&unique)?;
    let public = PublicKey::from_sec1_bytes(&point).map_err(|_| Error::Key {
        reason: format!("TPM: handle {handle:#x} does not hold a P-256 key"),
    })?;
    Ok((ctx, key, public, flushed))
}

fn is_persisted(ctx: &mut Context, handle: u32) -> Result<bool> {
    let (data, _) = ctx
        .get_capability(CapabilityType::Handles, handle, 1)
        .map_err(|e| tpm("listing persistent handles", &e))?;
    Ok(match data {
        CapabilityData::Handles(list) => list.iter().any(|h| u32::from(*h) == handle),
        _ => false,
    })
}

/// Flushes every transient object: nothing of this process exists yet, so whatever is
/// loaded was left by one that died.
fn flush_transients(ctx: &mut Context) -> Result<usize> {
    let (data, _) = ctx
        .get_capability(CapabilityType::Handles, TPM2_TRANSIENT_FIRST, 64)
        .map_err(|e| tpm("listing transient handles", &e))?;
    let CapabilityData::Handles(list) = data else {
        return Ok(0);
    };
    let mut flushed = 0;
    for h in list.iter() {
        let object = ctx
            .tr_from_tpm_public(*h)
            .map_err(|e| tpm("loading a stale handle", &e))?;
        ctx.flush_context(object)
            .map_err(|e| tpm("flushing a stale handle", &e))?;
        flushed += 1;
    }
    Ok(flushed)
}

/// Creates the node's ECDH key under the owner hierarchy and makes it persistent.
fn create(ctx: &mut Context, persistent: PersistentTpmHandle) -> Result<KeyHandle> {
    let ecc = PublicEccParametersBuilder::new()
        .with_ecc_scheme(EccScheme::EcDh(HashScheme::new(HashingAlgorithm::Sha256)))
        .with_curve(EccCurve::NistP256)
        .with_is_signing_key(false)
        .with_is_decryption_key(true)
        .with_restricted(false)
        .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
        .build()
        .map_err(|e| tpm("key parameters", &e))?;
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_decrypt(true)
        .with_sign_encrypt(false)
        .with_restricted(false)
        .build()
        .map_err(|e| tpm("key attributes", &e))?;
    let public = PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(ecc)
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(|e| tpm("key template", &e))?;
    ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
        let transient = ctx
            .create_primary(Hierarchy::Owner, public, None, None, None, None)
            .map_err(|e| tpm("creating the key", &e))?
            .key_handle;
        let stored = ctx
            .evict_control(
                Provision::Owner,
                ObjectHandle::from(transient),
                Persistent::Persistent(persistent),
            )
            .map_err(|e| tpm("persisting the key", &e));
        ctx.flush_context(ObjectHandle::from(transient))
            .map_err(|e| tpm("flushing the creation handle", &e))?;
        Ok(KeyHandle::from(stored?))
    })
}

fn sec1(point: &EccPoint) -> Result<[u8; 65]> {
    let mut out = [0u8; 65];
    out[0] = 0x04;
    for (src, dst) in [(point.x().value(), 1..33), (point.y().value(), 33..65)] {
        if src.len() > 32 {
            return Err(Error::Key {
                reason: "TPM: a coordinate is longer than 32 bytes".to_owned(),
            });
        }
        let start = dst.end - src.len();
        out[start..dst.end].copy_from_slice(src);
    }
    Ok(out)
}

fn z_gen(ctx: &mut Context, key: KeyHandle, peer: &[u8; 65]) -> Result<Zeroizing<[u8; 32]>> {
    let x = EccParameter::try_from(&peer[1..33]).map_err(|e| tpm("peer x", &e))?;
    let y = EccParameter::try_from(&peer[33..65]).map_err(|e| tpm("peer y", &e))?;
    let z = ctx
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.ecdh_z_gen(key, EccPoint::new(x, y))
        })
        .map_err(|e| tpm("ECDH ZGen", &e))?;
    let zx = z.x().value();
    if zx.len() > 32 {
        return Err(Error::Key {
            reason: "TPM: the shared point is longer than 32 bytes".to_owned(),
        });
    }
    let mut out = Zeroizing::new([0u8; 32]);
    out[32 - zx.len()..].copy_from_slice(zx);
    Ok(out)
}

impl KeyAgreement for TpmKey {
    fn agree(&self, peer: &PublicKey) -> Result<Zeroizing<[u8; 32]>> {
        let bytes = crate::hpke::public_bytes(peer);
        let mut point = [0u8; 65];
        point.copy_from_slice(&bytes);
        let (tx, rx) = mpsc::channel();
        self.jobs.send((point, tx)).map_err(|_| Error::Key {
            reason: "the TPM thread stopped".to_owned(),
        })?;
        rx.recv().map_err(|_| Error::Key {
            reason: "the TPM thread stopped".to_owned(),
        })?
    }
}

impl NodeKey for TpmKey {
    fn public(&self) -> &PublicKey {
        &self.public
    }

    fn key_id(&self) -> &str {
        &self.key_id
    }
}
