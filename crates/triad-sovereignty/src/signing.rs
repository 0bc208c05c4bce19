//! Signatures: ECDSA over P-256 with SHA-256, encoded as 64 bytes `r || s` (hex in JSON).
//! The operator key signs the key directory; node signing keys (in the key store, or the
//! TPM) will sign execution records and checkpoints.

use p256::PublicKey;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use rand_core::OsRng;

use crate::keys::{hex, key_id, unhex};
use crate::{Error, Result};

/// Something that signs with a P-256 key.
pub trait Signer: Send + Sync + std::fmt::Debug {
    fn public(&self) -> &PublicKey;
    fn key_id(&self) -> &str;
    /// The 64-byte `r || s` signature of `message` (ECDSA, SHA-256).
    fn sign(&self, message: &[u8]) -> Result<[u8; 64]>;
}

/// A signing key held in memory.
pub struct SoftwareSigner {
    key: SigningKey,
    public: PublicKey,
    key_id: String,
}

impl std::fmt::Debug for SoftwareSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftwareSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl SoftwareSigner {
    pub fn generate() -> Self {
        Self::from_key(SigningKey::random(&mut OsRng))
    }

    /// From the 32-byte private scalar.
    pub fn from_scalar(bytes: &[u8]) -> Result<Self> {
        let key = SigningKey::from_slice(bytes).map_err(|_| Error::Key {
            reason: "not a P-256 private scalar".to_owned(),
        })?;
        Ok(Self::from_key(key))
    }

    fn from_key(key: SigningKey) -> Self {
        let public = PublicKey::from(key.verifying_key());
        Self {
            key_id: key_id(&public),
            key,
            public,
        }
    }

    /// The private scalar, hex (for the key file).
    pub fn scalar_hex(&self) -> zeroize::Zeroizing<String> {
        zeroize::Zeroizing::new(hex(&self.key.to_bytes()))
    }
}

impl Signer for SoftwareSigner {
    fn public(&self) -> &PublicKey {
        &self.public
    }

    fn key_id(&self) -> &str {
        &self.key_id
    }

    fn sign(&self, message: &[u8]) -> Result<[u8; 64]> {
        let signature: Signature = self.key.sign(message);
        Ok(signature.to_bytes().into())
    }
}

/// Whether `signature` (hex `r || s`) is `public`'s signature of `message`.
pub fn verify(public: &PublicKey, message: &[u8], signature: &str) -> bool {
    let Some(bytes) = unhex(signature) else {
        return false;
    };
    let Ok(signature) = Signature::from_slice(&bytes) else {
        return false;
    };
    VerifyingKey::from(public)
        .verify(message, &signature)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_message_and_key() {
        let a = SoftwareSigner::generate();
        let b = SoftwareSigner::generate();
        let sig = hex(&a.sign(b"root").unwrap());
        assert_eq!(sig.len(), 128);
        assert!(verify(a.public(), b"root", &sig));
        assert!(!verify(a.public(), b"rooT", &sig));
        assert!(!verify(b.public(), b"root", &sig));
        assert!(!verify(a.public(), b"root", "zz"));
        let again = SoftwareSigner::from_scalar(&unhex(&a.scalar_hex()).unwrap()).unwrap();
        assert_eq!(again.key_id(), a.key_id());
    }
}
