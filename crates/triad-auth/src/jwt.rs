//! JWT bearer tokens, checked the way RFC 8725 asks (docs/access.md):
//!
//! - only allow-listed asymmetric algorithms (RS256/384/512, ES256/384, EdDSA); `none` and
//!   every HMAC algorithm are refused whatever the configuration says, which also closes
//!   algorithm confusion (an HS256 token "signed" with a public key);
//! - the key comes from the configured JWKS by the token's `kid`, and must be of the family
//!   of the token's algorithm and, when the JWK names one, of exactly that algorithm;
//! - `iss` and `aud` must be the configured ones; `exp` is required and enforced, `nbf`
//!   too when present (with a small leeway);
//! - the tenant and the role come from claims (`tenant`, `role` by default); a token without
//!   a valid tenant is refused, a missing role means `member`.

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};
use triad_domain::AccessRole;

use crate::{Principal, Rejection, Via, valid_tenant};

/// What a token must satisfy.
#[derive(Debug, Clone)]
pub struct JwtRules {
    pub issuer: String,
    pub audience: String,
    /// Allow-listed algorithms (asymmetric only).
    pub algorithms: Vec<Algorithm>,
    pub leeway_s: u64,
    pub tenant_claim: String,
    pub role_claim: String,
}

/// Why a verifier cannot be built from its configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "api.jwt.algorithms: {0} is not allowed (only RS256, RS384, RS512, ES256, ES384, EdDSA: a shared secret next to public keys invites algorithm confusion)"
    )]
    Symmetric(String),
    #[error("api.jwt.algorithms: name at least one algorithm")]
    NoAlgorithm,
    #[error("the JWKS is not a JSON Web Key Set: {0}")]
    Jwks(String),
    #[error("JWKS key {index}: {reason}")]
    Key { index: usize, reason: String },
}

/// The key family an algorithm verifies with; `None` for symmetric (HMAC) algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
    Okp,
}

fn family(alg: Algorithm) -> Option<Family> {
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Some(Family::Rsa),
        Algorithm::ES256 | Algorithm::ES384 => Some(Family::Ec),
        Algorithm::EdDSA => Some(Family::Okp),
        _ => None,
    }
}

/// Whether a key of `params` may verify `alg`.
fn family_matches(alg: Algorithm, params: &AlgorithmParameters) -> bool {
    let key = match params {
        AlgorithmParameters::RSA(_) => Family::Rsa,
        AlgorithmParameters::EllipticCurve(_) => Family::Ec,
        AlgorithmParameters::OctetKeyPair(_) => Family::Okp,
        // Symmetric keys, and kinds this code does not know: never.
        _ => return false,
    };
    family(alg) == Some(key)
}

pub use jsonwebtoken::Algorithm;

/// The algorithm named `name` (`RS256`, `ES256`, …) if it may be allow-listed.
pub fn allowed_algorithm(name: &str) -> Result<Algorithm, ConfigError> {
    let alg: Algorithm = name
        .parse()
        .map_err(|_| ConfigError::Symmetric(name.to_owned()))?;
    match family(alg) {
        Some(_) => Ok(alg),
        None => Err(ConfigError::Symmetric(name.to_owned())),
    }
}

/// A JWKS and the rules; verifies tokens.
#[derive(Clone)]
pub struct JwtVerifier {
    rules: JwtRules,
    keys: JwkSet,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("rules", &self.rules)
            .field("keys", &self.keys.keys.len())
            .finish()
    }
}

impl JwtVerifier {
    /// A verifier over the JWKS document `jwks` (JSON). Symmetric (`oct`) keys and HMAC
    /// algorithms are refused here, once, rather than per token.
    pub fn new(rules: JwtRules, jwks: &str) -> Result<Self, ConfigError> {
        if rules.algorithms.is_empty() {
            return Err(ConfigError::NoAlgorithm);
        }
        if let Some(a) = rules.algorithms.iter().find(|a| family(**a).is_none()) {
            return Err(ConfigError::Symmetric(format!("{a:?}")));
        }
        let keys: JwkSet =
            serde_json::from_str(jwks).map_err(|e| ConfigError::Jwks(e.to_string()))?;
        for (index, k) in keys.keys.iter().enumerate() {
            if matches!(k.algorithm, AlgorithmParameters::OctetKey(_)) {
                return Err(ConfigError::Key {
                    index,
                    reason: "a symmetric (oct) key; only public keys belong in the JWKS".into(),
                });
            }
            if k.common.key_id.is_none() {
                return Err(ConfigError::Key {
                    index,
                    reason: "no kid: tokens name their key by kid".into(),
                });
            }
            DecodingKey::from_jwk(k).map_err(|e| ConfigError::Key {
                index,
                reason: e.to_string(),
            })?;
        }
        Ok(Self { rules, keys })
    }

    /// Who `token` is.
    pub fn verify(&self, token: &str) -> Result<Principal, Rejection> {
        // `none` is not an algorithm jsonwebtoken parses: such a header fails here.
        let header = decode_header(token).map_err(|_| Rejection::Malformed("not a JWT"))?;
        if !self.rules.algorithms.contains(&header.alg) {
            return Err(Rejection::Algorithm(format!("{:?}", header.alg)));
        }
        let kid = header
            .kid
            .as_deref()
            .ok_or(Rejection::Malformed("the token names no kid"))?;
        let jwk = self.keys.find(kid).ok_or(Rejection::UnknownKey)?;
        if !family_matches(header.alg, &jwk.algorithm) {
            return Err(Rejection::Algorithm(format!(
                "{:?} with a key of another type",
                header.alg
            )));
        }
        if let Some(declared) = &jwk.common.key_algorithm
            && format!("{declared:?}") != format!("{:?}", header.alg)
        {
            return Err(Rejection::Algorithm(format!(
                "{:?} with a key for {declared:?}",
                header.alg
            )));
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|_| Rejection::UnknownKey)?;
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = self.rules.leeway_s;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.rules.issuer]);
        validation.set_audience(&[&self.rules.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &validation)
            .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => Rejection::Expired,
                ErrorKind::ImmatureSignature => Rejection::Claim("nbf is in the future"),
                ErrorKind::InvalidIssuer => Rejection::Claim("iss"),
                ErrorKind::InvalidAudience => Rejection::Claim("aud"),
                ErrorKind::MissingRequiredClaim(_) => {
                    Rejection::Claim("a required claim is missing")
                }
                ErrorKind::InvalidSignature => Rejection::Signature,
                ErrorKind::InvalidAlgorithm => Rejection::Algorithm(format!("{:?}", header.alg)),
                _ => Rejection::Malformed("the token does not verify"),
            }
        })?;
        let claims = data.claims;
        let text = |name: &str| claims.get(name).and_then(|v| v.as_str());
        let subject = text("sub").ok_or(Rejection::Claim("sub"))?.to_owned();
        let tenant = text(&self.rules.tenant_claim)
            .filter(|t| valid_tenant(t))
            .ok_or(Rejection::Claim("tenant"))?
            .to_owned();
        let role = match text(&self.rules.role_claim) {
            None => AccessRole::Member,
            Some(r) => AccessRole::parse(r).ok_or(Rejection::Claim("role"))?,
        };
        Ok(Principal {
            tenant,
            role,
            subject,
            via: Via::Jwt,
        })
    }
}
