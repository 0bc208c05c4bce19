//! Node keys: a P-256 key pair per node (API, executor). The private half stays in its key
//! store — a file here, a TPM with the `tpm` store — and is only ever asked to agree on a DH
//! secret ([`KeyAgreement`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use p256::{PublicKey, SecretKey};
use rand_core::OsRng;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::hpke::{KeyAgreement, public_bytes};
use crate::{Error, Result};

/// A node's key pair as the kernel uses it.
pub trait NodeKey: KeyAgreement + Send + Sync + std::fmt::Debug {
    fn public(&self) -> &PublicKey;
    /// [`key_id`] of the public key.
    fn key_id(&self) -> &str;
}

/// The id of a public key: lower-case hex of the first 16 bytes of SHA-256 over its
/// uncompressed SEC1 bytes.
pub fn key_id(public: &PublicKey) -> String {
    hex(&Sha256::digest(public_bytes(public))[..16])
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Bytes from hex (either case); `None` unless every pair is a hex byte.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Hex of a public key's uncompressed SEC1 bytes (130 characters): how keys are enrolled.
pub fn public_hex(public: &PublicKey) -> String {
    hex(&public_bytes(public))
}

/// A public key from [`public_hex`]'s form.
pub fn parse_public_hex(text: &str) -> Option<PublicKey> {
    PublicKey::from_sec1_bytes(&unhex(text)?).ok()
}

/// Appends `bytes` with a 4-byte big-endian length prefix (the `lp` of the format documents).
pub(crate) fn put_lp(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A key pair held in memory (loaded from a [`FileKeyStore`], or generated for tests).
pub struct SoftwareKey {
    secret: SecretKey,
    public: PublicKey,
    key_id: String,
}

impl std::fmt::Debug for SoftwareKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftwareKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl SoftwareKey {
    pub fn generate() -> Self {
        Self::from_secret(SecretKey::random(&mut OsRng))
    }

    /// From the 32-byte big-endian private scalar.
    pub fn from_scalar(bytes: &[u8]) -> Result<Self> {
        let secret = SecretKey::from_slice(bytes).map_err(|_| Error::Key {
            reason: "not a P-256 private scalar".to_owned(),
        })?;
        Ok(Self::from_secret(secret))
    }

    fn from_secret(secret: SecretKey) -> Self {
        let public = secret.public_key();
        let key_id = key_id(&public);
        Self {
            secret,
            public,
            key_id,
        }
    }
}

impl KeyAgreement for SoftwareKey {
    fn agree(&self, peer: &PublicKey) -> Result<Zeroizing<[u8; 32]>> {
        let shared = p256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), peer.as_affine());
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(shared.raw_secret_bytes());
        Ok(out)
    }
}

impl NodeKey for SoftwareKey {
    fn public(&self) -> &PublicKey {
        &self.public
    }

    fn key_id(&self) -> &str {
        &self.key_id
    }
}

/// The `file` key store (development): one file per node, `<dir>/<node id>.key`, holding the
/// hex private scalar, created on first use with mode 0600 in a 0700 directory.
#[derive(Debug, Clone)]
pub struct FileKeyStore {
    dir: PathBuf,
}

impl FileKeyStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The key of `node`, generated and stored when it has none yet.
    pub fn load_or_create(&self, node: &str) -> Result<SoftwareKey> {
        let (path, scalar) = self.scalar(node, "key")?;
        SoftwareKey::from_scalar(&scalar).map_err(|_| Error::Key {
            reason: format!("{}: not a P-256 private key", path.display()),
        })
    }

    /// The node's signing key (`<node>.sign`), created on first use.
    pub fn load_or_create_signer(&self, node: &str) -> Result<crate::signing::SoftwareSigner> {
        let (path, scalar) = self.scalar(node, "sign")?;
        crate::signing::SoftwareSigner::from_scalar(&scalar).map_err(|_| Error::Key {
            reason: format!("{}: not a P-256 private key", path.display()),
        })
    }

    /// The private scalar in `<node>.<ext>`: read (the file must be private), or drawn and
    /// written (mode 0600, never overwritten).
    fn scalar(&self, node: &str, ext: &str) -> Result<(PathBuf, Zeroizing<Vec<u8>>)> {
        if node.is_empty()
            || !node
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || node.starts_with('.')
        {
            return Err(Error::Key {
                reason: format!("node id {node:?}: use letters, digits, '-', '_' and '.'"),
            });
        }
        let path = self.dir.join(format!("{node}.{ext}"));
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                check_private(&path)?;
                let bytes = Zeroizing::new(unhex(text.trim()).ok_or_else(|| Error::Key {
                    reason: format!("{}: not hex", path.display()),
                })?);
                Ok((path, bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let scalar = Zeroizing::new(SecretKey::random(&mut OsRng).to_bytes().to_vec());
                self.write(&path, &scalar)?;
                Ok((path, scalar))
            }
            Err(e) => Err(io(&path, &e)),
        }
    }

    fn write(&self, path: &Path, scalar: &[u8]) -> Result<()> {
        create_private_dir(&self.dir)?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(|e| io(path, &e))?;
        let text = Zeroizing::new(hex(scalar));
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| io(path, &e))
    }
}

fn io(path: &Path, e: &std::io::Error) -> Error {
    Error::Key {
        reason: format!("{}: {e}", path.display()),
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io(dir, &e))
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, &e))
    }
}

/// A key file others can read is refused: the key may have leaked.
fn check_private(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| io(path, &e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(Error::Key {
                reason: format!(
                    "{}: mode {:o} lets others read the key; it must be 0600",
                    path.display(),
                    mode & 0o777
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        std::env::temp_dir().join(format!("triad-keys-{}", uuid::Uuid::new_v4().simple()))
    }

    #[test]
    fn a_key_is_created_once_private_and_loaded_back() {
        let dir = scratch();
        let store = FileKeyStore::new(&dir);
        let first = store.load_or_create("US-EAST-0").unwrap();
        let again = store.load_or_create("US-EAST-0").unwrap();
        assert_eq!(first.key_id(), again.key_id());
        assert_eq!(first.key_id().len(), 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir.join("US-EAST-0.key")), 0o600);
            assert_eq!(mode(&dir), 0o700);
        }
        let other = store.load_or_create("US-EAST-1").unwrap();
        assert_ne!(other.key_id(), first.key_id());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_readable_key_file_and_a_bad_node_id_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch();
        let store = FileKeyStore::new(&dir);
        store.load_or_create("n1").unwrap();
        let path = dir.join("n1.key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = store.load_or_create("n1").unwrap_err().to_string();
        assert!(err.contains("must be 0600"), "{err}");
        let err = store.load_or_create("../etc").unwrap_err().to_string();
        assert!(err.contains("node id"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(
            unhex(&hex(&[0, 1, 0xab, 0xff])).unwrap(),
            [0, 1, 0xab, 0xff]
        );
        assert!(unhex("abc").is_none());
        assert!(unhex("zz").is_none());
    }
}
