//! The `tpm` key store: the node's P-256 key is created inside a TPM 2.0 and persisted under a
//! handle; the DH step of unwrapping runs inside it (`TPM2_ECDH_ZGen`), so the private key
//! never leaves it. The node's signing key (ECDSA P-256) lives there too, at the next handle,
//! and signs there ([`TpmKey::signer`]). The TCTI string names the TPM:
//! `swtpm:host=127.0.0.1,port=2321` for the simulator, `device:/dev/tpmrm0` for hardware.
//!
//! The ESAPI context is not `Send`, so it lives on a thread of its own and both keys talk to
//! it over one channel — one connection, which is all swtpm serves at a time. Authorisation uses the password session (the key has an empty auth
//! value), which takes no TPM session slot; transient objects a killed process left behind
//! are flushed at start, so repeated `kill -9` cannot exhaust the TPM's slots.

use std::str::FromStr;
use std::sync::mpsc;

use p256::PublicKey;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::CapabilityType;
use tss_esapi::constants::tss::TPM2_TRANSIENT_FIRST;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    CapabilityData, Digest, EccParameter, EccPoint, EccScheme, HashScheme,
    KeyDerivationFunctionScheme, Public, PublicBuilder, PublicEccParametersBuilder, Signature,
    SignatureScheme,
};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use tss_esapi::{Context, TctiNameConf};
use zeroize::Zeroizing;

use crate::hpke::KeyAgreement;
use crate::keys::{NodeKey, key_id};
use crate::{Error, Result};

/// The default persistent handle of a node's key (owner range `0x8101_xxxx`).
pub const DEFAULT_HANDLE: u32 = 0x8101_0101;

/// The handle of the signing key that goes with the node key at `handle`.
pub fn signing_handle(handle: u32) -> u32 {
    handle.wrapping_add(1)
}

/// Work for the TPM thread.
enum Job {
    ZGen([u8; 65], mpsc::Sender<Result<Zeroizing<[u8; 32]>>>),
    Sign([u8; 32], mpsc::Sender<Result<[u8; 64]>>),
}

/// A node key held by a TPM.
pub struct TpmKey {
    jobs: mpsc::Sender<Job>,
    public: PublicKey,
    key_id: String,
    signing: PublicKey,
    /// Transient objects flushed when the store opened (left by a killed process).
    pub flushed_at_start: usize,
}

/// The node's signing key in the TPM: [`crate::signing::Signer`] over the same connection.
pub struct TpmSigner {
    jobs: mpsc::Sender<Job>,
    public: PublicKey,
    key_id: String,
}

impl std::fmt::Debug for TpmSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

fn stopped() -> Error {
    Error::Key {
        reason: "the TPM thread stopped".to_owned(),
    }
}

impl crate::signing::Signer for TpmSigner {
    fn public(&self) -> &PublicKey {
        &self.public
    }

    fn key_id(&self) -> &str {
        &self.key_id
    }

    /// ECDSA over SHA-256 of `message`, inside the TPM (its nonce is random, so two
    /// signatures of one message differ; both verify).
    fn sign(&self, message: &[u8]) -> Result<[u8; 64]> {
        let digest = crate::custody::sha256(message);
        let (tx, rx) = mpsc::channel();
        self.jobs
            .send(Job::Sign(digest, tx))
            .map_err(|_| stopped())?;
        rx.recv().map_err(|_| stopped())?
    }
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
    /// The signing key at [`signing_handle`] is opened (or created) with it.
    pub fn open(tcti: &str, handle: u32) -> Result<Self> {
        let conf = TctiNameConf::from_str(tcti).map_err(|e| tpm("TCTI", &e))?;
        let (ready_tx, ready_rx) = mpsc::channel();
        let (jobs, job_rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("triad-tpm".to_owned())
            .spawn(move || {
                let started = start(conf, handle);
                let (mut ctx, key, signing) = match started {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok((s.public, s.signing_public, s.flushed)));
                        (s.ctx, s.key, s.signing)
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                // Ends when every sender (`TpmKey`, `TpmSigner`) is dropped.
                for job in job_rx {
                    match job {
                        Job::ZGen(point, reply) => {
                            let _ = reply.send(z_gen(&mut ctx, key, &point));
                        }
                        Job::Sign(digest, reply) => {
                            let _ = reply.send(sign(&mut ctx, signing, &digest));
                        }
                    }
                }
            })
            .map_err(|e| Error::Key {
                reason: format!("starting the TPM thread: {e}"),
            })?;
        let (public, signing, flushed_at_start) = ready_rx.recv().map_err(|_| stopped())??;
        Ok(Self {
            jobs,
            key_id: key_id(&public),
            public,
            signing,
            flushed_at_start,
        })
    }

    /// The node's signing key, signing inside the same TPM over the same connection.
    pub fn signer(&self) -> TpmSigner {
        TpmSigner {
            jobs: self.jobs.clone(),
            key_id: key_id(&self.signing),
            public: self.signing,
        }
    }
}

/// What the TPM thread starts with.
struct Started {
    ctx: Context,
    key: KeyHandle,
    public: PublicKey,
    signing: KeyHandle,
    signing_public: PublicKey,
    flushed: usize,
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

fn start(conf: TctiNameConf, handle: u32) -> Result<Started> {
    let mut ctx = connect(&conf)?;
    let flushed = flush_transients(&mut ctx)?;
    let (key, public) = load_or_create(&mut ctx, handle, Purpose::Agreement)?;
    let (signing, signing_public) =
        load_or_create(&mut ctx, signing_handle(handle), Purpose::Signing)?;
    Ok(Started {
        ctx,
        key,
        public,
        signing,
        signing_public,
        flushed,
    })
}

/// What a key is for: ECDH (unwrapping) or ECDSA (signing); a TPM key is never both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Agreement,
    Signing,
}

fn load_or_create(
    ctx: &mut Context,
    handle: u32,
    purpose: Purpose,
) -> Result<(KeyHandle, PublicKey)> {
    let persistent = PersistentTpmHandle::new(handle).map_err(|e| tpm("persistent handle", &e))?;
    // Create only when the handle is free: any other failure to load it is an error, never
    // a reason to replace the node's key.
    let key = if is_persisted(ctx, handle)? {
        let object = ctx
            .tr_from_tpm_public(TpmHandle::Persistent(persistent))
            .map_err(|e| tpm("loading the persisted key", &e))?;
        KeyHandle::from(object)
    } else {
        create(ctx, persistent, purpose)?
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
    Ok((key, public))
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

/// Creates a node key (ECDH or ECDSA, P-256) under the owner hierarchy and makes it
/// persistent.
fn create(
    ctx: &mut Context,
    persistent: PersistentTpmHandle,
    purpose: Purpose,
) -> Result<KeyHandle> {
    let signing = purpose == Purpose::Signing;
    let scheme = if signing {
        EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256))
    } else {
        EccScheme::EcDh(HashScheme::new(HashingAlgorithm::Sha256))
    };
    let ecc = PublicEccParametersBuilder::new()
        .with_ecc_scheme(scheme)
        .with_curve(EccCurve::NistP256)
        .with_is_signing_key(signing)
        .with_is_decryption_key(!signing)
        .with_restricted(false)
        .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
        .build()
        .map_err(|e| tpm("key parameters", &e))?;
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_decrypt(!signing)
        .with_sign_encrypt(signing)
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

/// ECDSA P-256 over `digest` with the signing key: `r || s`, `s` normalised to the low half
/// (the TPM may return either; one form keeps signatures comparable).
fn sign(ctx: &mut Context, key: KeyHandle, digest: &[u8; 32]) -> Result<[u8; 64]> {
    let validation = TPMT_TK_HASHCHECK {
        tag: TPM2_ST_HASHCHECK,
        hierarchy: TPM2_RH_NULL,
        digest: Default::default(),
    };
    let digest = Digest::try_from(digest.to_vec()).map_err(|e| tpm("digest", &e))?;
    let validation = validation
        .try_into()
        .map_err(|e: tss_esapi::Error| tpm("validation ticket", &e))?;
    let signature = ctx
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.sign(
                key,
                digest,
                SignatureScheme::EcDsa {
                    hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
                },
                validation,
            )
        })
        .map_err(|e| tpm("signing", &e))?;
    let Signature::EcDsa(ecc) = signature else {
        return Err(Error::Key {
            reason: "TPM: the signature is not ECDSA".to_owned(),
        });
    };
    let mut out = [0u8; 64];
    for (src, dst) in [
        (ecc.signature_r().value(), 0..32),
        (ecc.signature_s().value(), 32..64),
    ] {
        if src.len() > 32 {
            return Err(Error::Key {
                reason: "TPM: a signature half is longer than 32 bytes".to_owned(),
            });
        }
        let start = dst.end - src.len();
        out[start..dst.end].copy_from_slice(src);
    }
    let parsed = p256::ecdsa::Signature::from_slice(&out).map_err(|_| Error::Key {
        reason: "TPM: the signature is not a P-256 signature".to_owned(),
    })?;
    let normal = parsed.normalize_s().unwrap_or(parsed);
    Ok(normal.to_bytes().into())
}

impl KeyAgreement for TpmKey {
    fn agree(&self, peer: &PublicKey) -> Result<Zeroizing<[u8; 32]>> {
        let bytes = crate::hpke::public_bytes(peer);
        let mut point = [0u8; 65];
        point.copy_from_slice(&bytes);
        let (tx, rx) = mpsc::channel();
        self.jobs
            .send(Job::ZGen(point, tx))
            .map_err(|_| stopped())?;
        rx.recv().map_err(|_| stopped())?
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
