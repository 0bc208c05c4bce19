//! HPKE (RFC 9180), base mode, single shot, for one suite: DHKEM(P-256, HKDF-SHA256)
//! (`kem_id` 0x0010), HKDF-SHA256 (`kdf_id` 0x0001), AES-256-GCM (`aead_id` 0x0002).
//!
//! Written here rather than taken from a crate because the recipient's half of the DH step
//! must be able to run inside a TPM (`ZGen`): [`open`] asks a [`KeyAgreement`] for the shared
//! point and never sees a private key. The construction is checked against an independent
//! implementation (Python's `cryptography` HPKE) in `tests/compat/test_envelopes.py`.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use hkdf::Hkdf;
use p256::PublicKey;
use p256::ecdh::EphemeralSecret;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rand_core::OsRng;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::{Error, Result};

/// Length of an encapsulated key: an uncompressed SEC1 P-256 point.
pub const ENC_LEN: usize = 65;

const KEM_SUITE: &[u8] = b"KEM\x00\x10";
const HPKE_SUITE: &[u8] = b"HPKE\x00\x10\x00\x01\x00\x02";
const MODE_BASE: u8 = 0x00;

/// The recipient's half of ECDH: the x-coordinate of `private · peer`.
pub trait KeyAgreement {
    fn agree(&self, peer: &PublicKey) -> Result<Zeroizing<[u8; 32]>>;
}

/// Uncompressed SEC1 bytes of a public key (65 bytes, `0x04 || x || y`).
pub fn public_bytes(key: &PublicKey) -> Vec<u8> {
    key.to_encoded_point(false).as_bytes().to_vec()
}

/// Seals `plaintext` to `recipient`: returns (`enc`, ciphertext with its 16-byte tag).
pub fn seal(
    recipient: &PublicKey,
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<(Vec<u8>, Vec<u8>)> {
    let ephemeral = EphemeralSecret::random(&mut OsRng);
    let enc = public_bytes(&ephemeral.public_key());
    let shared = ephemeral.diffie_hellman(recipient);
    let mut dh = Zeroizing::new([0u8; 32]);
    dh.copy_from_slice(shared.raw_secret_bytes());
    let secret = shared_secret(&dh, &enc, &public_bytes(recipient))?;
    let (key, nonce) = key_schedule(&secret, info)?;
    let ct = Aes256Gcm::new_from_slice(key.as_slice())
        .map_err(|_| Error::Crypto("HPKE key length"))?
        .encrypt(
            Nonce::from_slice(nonce.as_slice()),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| Error::Crypto("HPKE seal"))?;
    Ok((enc, ct))
}

/// Opens what [`seal`] produced for the key `recipient` agrees with (whose public key is
/// `recipient_public`). Any changed byte of `enc`, `info`, `aad` or `ciphertext` fails.
pub fn open(
    recipient: &dyn KeyAgreement,
    recipient_public: &PublicKey,
    enc: &[u8],
    info: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let ephemeral = PublicKey::from_sec1_bytes(enc).map_err(|_| Error::Unwrap {
        reason: "the encapsulated key is not a P-256 point".to_owned(),
    })?;
    if enc.len() != ENC_LEN {
        return Err(Error::Unwrap {
            reason: format!(
                "the encapsulated key has {} bytes, not {ENC_LEN}",
                enc.len()
            ),
        });
    }
    let dh = recipient.agree(&ephemeral)?;
    let secret = shared_secret(&dh, enc, &public_bytes(recipient_public))?;
    let (key, nonce) = key_schedule(&secret, info)?;
    let plaintext = Aes256Gcm::new_from_slice(key.as_slice())
        .map_err(|_| Error::Crypto("HPKE key length"))?
        .decrypt(
            Nonce::from_slice(nonce.as_slice()),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map_err(|_| Error::Unwrap {
            reason: "the wrapped key does not authenticate (altered, or sealed to another key)"
                .to_owned(),
        })?;
    Ok(Zeroizing::new(plaintext))
}

type Secret = Zeroizing<Vec<u8>>;

/// `ExtractAndExpand(dh, enc || pkRm)` of DHKEM (RFC 9180 §4.1).
fn shared_secret(dh: &[u8; 32], enc: &[u8], recipient: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let prk = labeled_extract(KEM_SUITE, b"", b"eae_prk", dh);
    let mut context = Vec::with_capacity(enc.len() + recipient.len());
    context.extend_from_slice(enc);
    context.extend_from_slice(recipient);
    labeled_expand(KEM_SUITE, &prk, b"shared_secret", &context, 32)
}

/// The base-mode key schedule (RFC 9180 §5.1): the AEAD key and base nonce. A single-shot
/// seal uses sequence number 0, so the nonce is the base nonce.
fn key_schedule(shared_secret: &[u8], info: &[u8]) -> Result<(Secret, Secret)> {
    let psk_id_hash = labeled_extract(HPKE_SUITE, b"", b"psk_id_hash", b"");
    let info_hash = labeled_extract(HPKE_SUITE, b"", b"info_hash", info);
    let mut context = Vec::with_capacity(65);
    context.push(MODE_BASE);
    context.extend_from_slice(psk_id_hash.as_slice());
    context.extend_from_slice(info_hash.as_slice());
    let secret = labeled_extract(HPKE_SUITE, shared_secret, b"secret", b"");
    let key = labeled_expand(HPKE_SUITE, &secret, b"key", &context, 32)?;
    let nonce = labeled_expand(HPKE_SUITE, &secret, b"base_nonce", &context, 12)?;
    Ok((key, nonce))
}

fn labeled_extract(suite: &[u8], salt: &[u8], label: &[u8], ikm: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut labeled = Zeroizing::new(Vec::with_capacity(
        7 + suite.len() + label.len() + ikm.len(),
    ));
    labeled.extend_from_slice(b"HPKE-v1");
    labeled.extend_from_slice(suite);
    labeled.extend_from_slice(label);
    labeled.extend_from_slice(ikm);
    let (prk, _) = Hkdf::<Sha256>::extract(Some(salt), &labeled);
    Zeroizing::new(prk.to_vec())
}

fn labeled_expand(
    suite: &[u8],
    prk: &[u8],
    label: &[u8],
    info: &[u8],
    len: u16,
) -> Result<Zeroizing<Vec<u8>>> {
    let mut labeled = Vec::with_capacity(9 + suite.len() + label.len() + info.len());
    labeled.extend_from_slice(&len.to_be_bytes());
    labeled.extend_from_slice(b"HPKE-v1");
    labeled.extend_from_slice(suite);
    labeled.extend_from_slice(label);
    labeled.extend_from_slice(info);
    let hk = Hkdf::<Sha256>::from_prk(prk).map_err(|_| Error::Crypto("HKDF pseudorandom key"))?;
    let mut out = Zeroizing::new(vec![0u8; usize::from(len)]);
    hk.expand(&labeled, &mut out)
        .map_err(|_| Error::Crypto("HKDF expand length"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{NodeKey, SoftwareKey};

    #[test]
    fn what_is_sealed_to_a_key_opens_with_it_and_nothing_else() {
        let alice = SoftwareKey::generate();
        let bob = SoftwareKey::generate();
        let (enc, ct) = seal(alice.public(), b"info", b"aad", b"workflow key").unwrap();
        let pt = open(&alice, alice.public(), &enc, b"info", b"aad", &ct).unwrap();
        assert_eq!(pt.as_slice(), b"workflow key");
        assert!(open(&bob, bob.public(), &enc, b"info", b"aad", &ct).is_err());
        assert!(open(&alice, alice.public(), &enc, b"other", b"aad", &ct).is_err());
        assert!(open(&alice, alice.public(), &enc, b"info", b"other", &ct).is_err());
    }

    #[test]
    fn every_seal_uses_a_fresh_ephemeral_key() {
        let alice = SoftwareKey::generate();
        let (enc1, ct1) = seal(alice.public(), b"", b"", b"same").unwrap();
        let (enc2, ct2) = seal(alice.public(), b"", b"", b"same").unwrap();
        assert_ne!(enc1, enc2);
        assert_ne!(ct1, ct2);
        assert_eq!(enc1.len(), ENC_LEN);
        assert_eq!(ct1.len(), 4 + 16);
    }
}
