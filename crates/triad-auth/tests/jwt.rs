//! Token attacks against the JWT verifier (issue 8, RFC 8725): real RS256 and ES256 keys,
//! tokens signed with the real algorithms, and the classic forgeries — `alg: none`, HS256
//! "signed" with the RS256 public key, a key of the wrong family, wrong `iss`/`aud`, expired,
//! tampered — all rejected, each for the right reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};
use triad_auth::jwt::{ConfigError, JwtRules, JwtVerifier};
use triad_auth::{Rejection, Via};
use triad_domain::AccessRole;

struct Keys {
    rsa: rsa::RsaPrivateKey,
    ec: p256::ecdsa::SigningKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        rsa: rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).unwrap(),
        ec: p256::ecdsa::SigningKey::random(&mut rand_core::OsRng),
    })
}

fn jwks() -> String {
    let k = keys();
    let public = k.rsa.to_public_key();
    let point = k.ec.verifying_key().to_encoded_point(false);
    json!({"keys": [
        {"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig",
         "n": B64.encode(public.n().to_bytes_be()), "e": B64.encode(public.e().to_bytes_be())},
        {"kty": "EC", "kid": "ec-1", "crv": "P-256", "use": "sig",
         "x": B64.encode(point.x().unwrap()), "y": B64.encode(point.y().unwrap())}
    ]})
    .to_string()
}

fn rules() -> JwtRules {
    JwtRules {
        issuer: "https://idp.example".into(),
        audience: "triad".into(),
        algorithms: vec![Algorithm::RS256, Algorithm::ES256],
        leeway_s: 5,
        tenant_claim: "tenant".into(),
        role_claim: "role".into(),
    }
}

fn verifier() -> JwtVerifier {
    JwtVerifier::new(rules(), &jwks()).unwrap()
}

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

fn claims() -> Value {
    json!({"sub": "alice", "iss": "https://idp.example", "aud": "triad",
           "exp": now() + 600, "tenant": "acme", "role": "tenant_admin"})
}

fn rs256(claims: &Value, kid: &str) -> String {
    let der = keys().rsa.to_pkcs1_der().unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    encode(&header, claims, &EncodingKey::from_rsa_der(der.as_bytes())).unwrap()
}

fn es256(claims: &Value) -> String {
    use p256::pkcs8::EncodePrivateKey;
    let der = keys().ec.to_pkcs8_der().unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("ec-1".into());
    encode(&header, claims, &EncodingKey::from_ec_der(der.as_bytes())).unwrap()
}

#[test]
fn real_tokens_name_the_tenant_and_the_role() {
    let who = verifier().verify(&rs256(&claims(), "rsa-1")).unwrap();
    assert_eq!(
        (who.tenant.as_str(), who.role, who.subject.as_str(), who.via),
        ("acme", AccessRole::TenantAdmin, "alice", Via::Jwt)
    );
    let mut member = claims();
    member.as_object_mut().unwrap().remove("role");
    let who = verifier().verify(&es256(&member)).unwrap();
    assert_eq!(who.role, AccessRole::Member, "no role claim: a member");
}

#[test]
fn alg_none_is_refused() {
    let header = B64.encode(json!({"alg": "none", "typ": "JWT", "kid": "rsa-1"}).to_string());
    let body = B64.encode(claims().to_string());
    for token in [format!("{header}.{body}."), format!("{header}.{body}")] {
        assert!(
            matches!(verifier().verify(&token), Err(Rejection::Malformed(_))),
            "{token}"
        );
    }
}

#[test]
fn hs256_signed_with_the_rs256_public_key_is_refused() {
    // The confusion attack: the public key (which anyone has) used as an HMAC secret.
    let public_pem = keys()
        .rsa
        .to_public_key()
        .to_pkcs1_pem(rsa::pkcs1::LineEnding::LF)
        .unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let token = encode(
        &header,
        &claims(),
        &EncodingKey::from_secret(public_pem.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        verifier().verify(&token),
        Err(Rejection::Algorithm("HS256".into()))
    );
    // Nor can a configuration allow it.
    let mut r = rules();
    r.algorithms.push(Algorithm::HS256);
    assert!(matches!(
        JwtVerifier::new(r, &jwks()),
        Err(ConfigError::Symmetric(_))
    ));
    let oct = json!({"keys": [{"kty": "oct", "kid": "s", "k": B64.encode(b"secret")}]});
    assert!(matches!(
        JwtVerifier::new(rules(), &oct.to_string()),
        Err(ConfigError::Key { .. })
    ));
}

#[test]
fn a_key_of_another_family_or_algorithm_is_refused() {
    // An RS256 token naming the EC key, and an ES256 token naming the RSA key (declared RS256).
    assert!(matches!(
        verifier().verify(&rs256(&claims(), "ec-1")),
        Err(Rejection::Algorithm(_))
    ));
    use p256::pkcs8::EncodePrivateKey;
    let der = keys().ec.to_pkcs8_der().unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("rsa-1".into());
    let token = encode(
        &header,
        &claims(),
        &EncodingKey::from_ec_der(der.as_bytes()),
    )
    .unwrap();
    assert!(matches!(
        verifier().verify(&token),
        Err(Rejection::Algorithm(_))
    ));
    assert_eq!(
        verifier().verify(&rs256(&claims(), "nobody")),
        Err(Rejection::UnknownKey)
    );
}

#[test]
fn wrong_audience_issuer_expired_and_tampered_tokens_are_refused() {
    let v = verifier();
    let with = |key: &str, value: Value| {
        let mut c = claims();
        c[key] = value;
        rs256(&c, "rsa-1")
    };
    assert_eq!(
        v.verify(&with("aud", json!("someone-else"))),
        Err(Rejection::Claim("aud"))
    );
    assert_eq!(
        v.verify(&with("iss", json!("https://evil.example"))),
        Err(Rejection::Claim("iss"))
    );
    assert_eq!(
        v.verify(&with("exp", json!(now() - 3600))),
        Err(Rejection::Expired)
    );
    assert!(v.verify(&with("nbf", json!(now() + 3600))).is_err());
    assert_eq!(
        v.verify(&with("tenant", json!("Not A Tenant"))),
        Err(Rejection::Claim("tenant"))
    );
    assert_eq!(
        v.verify(&with("role", json!("superuser"))),
        Err(Rejection::Claim("role"))
    );
    let mut no_exp = claims();
    no_exp.as_object_mut().unwrap().remove("exp");
    assert!(
        v.verify(&rs256(&no_exp, "rsa-1")).is_err(),
        "exp is required"
    );
    // The payload changed after signing: the signature no longer holds.
    let token = rs256(&claims(), "rsa-1");
    let parts: Vec<&str> = token.split('.').collect();
    let mut forged = claims();
    forged["tenant"] = json!("victim");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        B64.encode(forged.to_string()),
        parts[2]
    );
    assert_eq!(v.verify(&tampered), Err(Rejection::Signature));
}
