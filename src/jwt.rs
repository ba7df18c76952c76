//! JWT verification with Supabase Realtime's rules and error texts: clients
//! show these messages to users, so they match Realtime's word for word.
//!
//! Only the header and claims are parsed here; `jsonwebtoken` is used for the
//! key set and the signature alone, so that none of its own claim checks
//! (`aud`, `exp` with leeway, ...) can reject a token Realtime would accept,
//! or word an error differently.

use crate::api_keys::{self, ApiKeys};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};

/// The claims of a verified token.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    pub role: String,
    /// Expiry in unix seconds, rounded when the token gave a decimal.
    pub exp: i64,
    /// `sub` as a string (JSON text for non-string values), if present.
    pub sub: Option<String>,
    /// Every claim, as given.
    pub all: Map<String, Value>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum JwtError {
    /// Not three base64url parts of JSON objects, or the header has no `alg`.
    Malformed,
    /// `alg` is `none` or one Realtime does not accept (e.g. PS256).
    UnsupportedAlgorithm(String),
    /// No configured secret or JWK fits the token's algorithm and `kid`.
    NoKey,
    /// The signature does not match the key.
    BadSignature,
    /// `role` (a string) or `exp` is missing.
    MissingClaims,
    /// `exp`, `iat` or `nbf` is present but not a number.
    InvalidExpiry,
    /// `exp` is not after the verification time.
    Expired { seconds_ago: i64 },
    /// `nbf` is after the verification time. Realtime ignores `nbf`; a token
    /// its issuer meant for later is refused here all the same.
    NotYetValid { seconds_early: i64 },
    /// The named claim is absent or differs from its [`ClaimValidators`] value.
    /// Realtime has no text of its own for this (it answers "Error connecting
    /// to Realtime"), so the message names the claim instead.
    ClaimMismatch(String),
    /// The `role` claim is not in the verifier's allow-list.
    RoleNotAllowed(String),
    /// An opaque `sb_` key that `realtime.api_keys` does not name.
    UnknownApiKey,
}

impl JwtError {
    /// Supabase's error code.
    pub fn code(&self) -> &'static str {
        match self {
            JwtError::Malformed => "MalformedJWT",
            // A well-formed token we cannot check is a signature failure, the
            // same as one signed with a key we do not have.
            JwtError::UnsupportedAlgorithm(_) | JwtError::NoKey | JwtError::BadSignature => "JwtSignatureError",
            JwtError::MissingClaims
            | JwtError::InvalidExpiry
            | JwtError::Expired { .. }
            | JwtError::NotYetValid { .. }
            | JwtError::ClaimMismatch(_)
            | JwtError::RoleNotAllowed(_)
            | JwtError::UnknownApiKey => "InvalidJWTToken",
        }
    }

    /// Supabase's message text.
    pub fn message(&self) -> String {
        match self {
            JwtError::Malformed => "The token provided is not a valid JWT".into(),
            JwtError::UnsupportedAlgorithm(_) | JwtError::NoKey | JwtError::BadSignature => {
                "Failed to validate JWT signature".into()
            }
            JwtError::MissingClaims => "Fields `role` and `exp` are required in JWT".into(),
            JwtError::InvalidExpiry => "Token expiration time is invalid".into(),
            JwtError::Expired { seconds_ago } => {
                format!("Token has expired {seconds_ago} seconds ago")
            }
            JwtError::NotYetValid { seconds_early } => {
                format!("Token is not valid yet (nbf), it becomes valid in {seconds_early} seconds")
            }
            JwtError::ClaimMismatch(claim) => {
                format!("Token claim `{claim}` does not match what this server accepts")
            }
            JwtError::RoleNotAllowed(role) => {
                format!("The role {role:?} is not one this server lets clients assume")
            }
            JwtError::UnknownApiKey => {
                "Unknown API key: an sb_ key is accepted once realtime.api_keys maps it to a role".into()
            }
        }
    }
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code(), self.message())
    }
}

impl std::error::Error for JwtError {}

/// Claims every token must carry with given values, like Realtime's
/// `JWT_CLAIM_VALIDATORS` (e.g. `{"iss": "https://x.supabase.co/auth/v1"}`).
///
/// Stricter than Realtime, which skips a validator when the token lacks the
/// claim: here an absent claim is a mismatch, so that leaving `iss` out of a
/// token cannot get it past an `iss` check. Values are compared as JSON, with
/// numbers by value (`1` equals `1.0`, as in Elixir); an `aud` array passes
/// when it contains the value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClaimValidators(Map<String, Value>);

impl ClaimValidators {
    /// Parses a JSON object text; blank text means no validators.
    pub fn parse(text: &str) -> Result<ClaimValidators, String> {
        if text.trim().is_empty() {
            return Ok(ClaimValidators::default());
        }
        // Realtime's words for the same mistake, then what is wrong.
        let refuse = |why: String| Err(format!("JWT claim validators is not a valid JSON object: {why}"));
        match serde_json::from_str(text) {
            Ok(Value::Object(claims)) => Ok(ClaimValidators(claims)),
            Ok(other) => refuse(format!("found {}", json_kind(&other))),
            Err(e) => refuse(e.to_string()),
        }
    }

    /// The first configured claim `claims` does not satisfy, if any.
    fn mismatch(&self, claims: &Map<String, Value>) -> Option<&str> {
        let passes = |name: &str, expected: &Value| match claims.get(name) {
            None => false,
            Some(Value::Array(auds)) if name == "aud" && !expected.is_array() => {
                auds.iter().any(|aud| same(aud, expected))
            }
            Some(actual) => same(actual, expected),
        };
        self.0.iter().find(|(name, expected)| !passes(name, expected)).map(|(name, _)| name.as_str())
    }
}

/// JSON equality, except that an integer equals the same float.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        // Integers alone compare exactly: as floats, large ones would collide.
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The kind of key an algorithm needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Oct,
    Rsa,
    P256,
    P384,
    Ed25519,
}

/// The algorithms Realtime accepts, with the key kind each verifies with.
fn accepted(alg: &str) -> Option<(Algorithm, KeyKind)> {
    Some(match alg {
        "HS256" => (Algorithm::HS256, KeyKind::Oct),
        "HS384" => (Algorithm::HS384, KeyKind::Oct),
        "HS512" => (Algorithm::HS512, KeyKind::Oct),
        "RS256" => (Algorithm::RS256, KeyKind::Rsa),
        "RS384" => (Algorithm::RS384, KeyKind::Rsa),
        "RS512" => (Algorithm::RS512, KeyKind::Rsa),
        "ES256" => (Algorithm::ES256, KeyKind::P256),
        "ES384" => (Algorithm::ES384, KeyKind::P384),
        "EdDSA" => (Algorithm::EdDSA, KeyKind::Ed25519),
        _ => return None,
    })
}

/// A usable verification key from the JWKS.
struct Key {
    kid: Option<String>,
    /// The one algorithm the key is restricted to, when it says so.
    alg: Option<KeyAlgorithm>,
    kind: KeyKind,
    key: DecodingKey,
}

impl Key {
    /// `Ok(None)` for keys that are valid but cannot verify signatures here
    /// (encryption keys, other curves or key types), so one such key does not
    /// make a whole key set unusable.
    fn from_jwk(jwk: &Jwk) -> Result<Option<Key>, String> {
        if jwk.common.public_key_use.as_ref().is_some_and(|usage| *usage != PublicKeyUse::Signature) {
            return Ok(None);
        }
        // Members that do not decode, or coordinates of the wrong size, would
        // only fail later, at every verification, so they are refused up front.
        let kind = match &jwk.algorithm {
            AlgorithmParameters::OctetKey(oct) => {
                member(&oct.value, "k")?;
                KeyKind::Oct
            }
            AlgorithmParameters::RSA(rsa) => {
                member(&rsa.n, "n")?;
                member(&rsa.e, "e")?;
                KeyKind::Rsa
            }
            AlgorithmParameters::EllipticCurve(ec) => {
                let (kind, len) = match ec.curve {
                    EllipticCurve::P256 => (KeyKind::P256, 32),
                    EllipticCurve::P384 => (KeyKind::P384, 48),
                    _ => return Ok(None),
                };
                sized(&ec.x, "x", len)?;
                sized(&ec.y, "y", len)?;
                kind
            }
            AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
                sized(&okp.x, "x", 32)?;
                KeyKind::Ed25519
            }
            AlgorithmParameters::Other(other) => return untyped(&other.fields).map(|()| None),
            _ => return Ok(None),
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
        Ok(Some(Key { kid: jwk.common.key_id.clone(), alg: jwk.common.key_algorithm, kind, key }))
    }
}

/// A base64url key member, which must not be empty.
fn member(text: &str, name: &str) -> Result<Vec<u8>, String> {
    let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|e| format!("`{name}` is not base64url: {e}"))?;
    if bytes.is_empty() {
        return Err(format!("`{name}` is empty"));
    }
    Ok(bytes)
}

fn sized(text: &str, name: &str, len: usize) -> Result<(), String> {
    let bytes = member(text, name)?;
    if bytes.len() != len {
        return Err(format!("`{name}` must be {len} bytes, not {}", bytes.len()));
    }
    Ok(())
}

/// `JwkSet` keeps a key it cannot type as `Other`, which hides a key of a
/// supported kind with a member missing; that one is an error, the rest are
/// kinds this server does not verify with.
fn untyped(fields: &BTreeMap<String, Value>) -> Result<(), String> {
    let text = |name: &str| fields.get(name).and_then(Value::as_str);
    let kty = match fields.get("kty") {
        None => return Err("missing field `kty`".into()),
        Some(kty) => kty.as_str().ok_or("`kty` is not a string")?,
    };
    let required: &[&str] = match (kty, text("crv")) {
        ("oct", _) => &["k"],
        ("RSA", _) => &["n", "e"],
        ("EC", Some("P-256" | "P-384")) => &["x", "y"],
        ("OKP", Some("Ed25519")) => &["x"],
        _ => return Ok(()),
    };
    match required.iter().find(|name| text(name).is_none()) {
        Some(name) if fields.contains_key(*name) => Err(format!("`{name}` is not a string")),
        Some(name) => Err(format!("missing `{name}`")),
        None => Ok(()),
    }
}

/// Verifies tokens against the configured HS secret and JWKS, then checks
/// their claims.
pub struct Verifier {
    secret: Option<DecodingKey>,
    keys: Vec<Key>,
    validators: ClaimValidators,
    /// `None` lets every role through.
    allowed_roles: Option<Vec<String>>,
    api_keys: ApiKeys,
    fetched: Option<Arc<FetchedKeys>>,
}

/// The keys of a JWKS document (`{"keys": [...]}`); unusable ones (an `enc`
/// key, an unknown curve) are skipped, malformed ones refuse the set.
fn parse_jwks(text: &str) -> Result<Vec<Key>, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("invalid JWKS: {e}"))?;
    let mut keys = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let kid = jwk.common.key_id.as_deref().unwrap_or_default();
        let key = Key::from_jwk(jwk).map_err(|e| format!("invalid JWKS key {i} (kid {kid:?}): {e}"))?;
        keys.extend(key);
    }
    Ok(keys)
}

/// Keys fetched from a JWKS URL, replaced whole by each good fetch; shared
/// by every verifier built while the worker runs, so a reload keeps them.
#[derive(Default)]
pub struct FetchedKeys(RwLock<Vec<Key>>);

impl FetchedKeys {
    /// Takes the set in `text`; the keys in use stay when it is not one.
    /// Returns how many keys it holds.
    pub fn replace(&self, text: &str) -> Result<usize, String> {
        let keys = parse_jwks(text)?;
        let count = keys.len();
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = keys;
        Ok(count)
    }

    /// The `kid`s held, for the log.
    pub fn kids(&self) -> Vec<String> {
        let keys = self.0.read().unwrap_or_else(|p| p.into_inner());
        keys.iter().map(|k| k.kid.clone().unwrap_or_default()).collect()
    }
}

impl fmt::Debug for Verifier {
    // Hand-written so that the secret never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<_> = self.keys.iter().map(|k| (k.kind, k.kid.as_deref())).collect();
        f.debug_struct("Verifier")
            .field("secret", &self.secret.is_some())
            .field("keys", &kids)
            .field("validators", &self.validators.0.keys().collect::<Vec<_>>())
            .field("allowed_roles", &self.allowed_roles)
            .field("api_keys", &self.api_keys)
            .finish()
    }
}

impl Verifier {
    /// `secret`: the HS shared secret (GUC `realtime.jwt_secret`), used as raw
    /// bytes; `None` or empty means not configured.
    /// `jwks`: optional JWKS JSON text (`{"keys":[...]}`) with RSA, EC (P-256,
    /// P-384), OKP (Ed25519) and `oct` keys; empty means not configured.
    /// Fails with a human message when the JWKS text is invalid.
    pub fn new(secret: Option<&str>, jwks: Option<&str>) -> Result<Verifier, String> {
        let secret = secret.filter(|s| !s.is_empty()).map(|s| DecodingKey::from_secret(s.as_bytes()));
        let keys = match jwks.map(str::trim).filter(|j| !j.is_empty()) {
            None => Vec::new(),
            Some(text) => parse_jwks(text)?,
        };
        Ok(Verifier {
            secret,
            keys,
            validators: ClaimValidators::default(),
            allowed_roles: None,
            api_keys: ApiKeys::default(),
            fetched: None,
        })
    }

    /// Also uses the keys fetched from `realtime.jwt_jwks_url`, as they
    /// are replaced.
    pub fn with_fetched(self, fetched: Arc<FetchedKeys>) -> Verifier {
        Verifier { fetched: Some(fetched), ..self }
    }

    /// Also requires the claims in `validators`.
    pub fn with_claim_validators(self, validators: ClaimValidators) -> Verifier {
        Verifier { validators, ..self }
    }

    /// Also requires the `role` claim to be one of `roles`, exactly as
    /// spelled (Postgres role names are case-sensitive); an empty list
    /// refuses every token.
    pub fn with_allowed_roles(self, roles: Vec<String>) -> Verifier {
        Verifier { allowed_roles: Some(roles), ..self }
    }

    /// Also accepts these opaque keys, each as its role.
    pub fn with_api_keys(self, api_keys: ApiKeys) -> Verifier {
        Verifier { api_keys, ..self }
    }

    /// Verifies `token` (a JWT, or an opaque key `realtime.api_keys` maps) at
    /// unix time `now` (seconds) and returns its claims.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, JwtError> {
        let token = clean(token);
        if token.starts_with(api_keys::PREFIX) {
            return self.verify_api_key(&token);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let header_map = decode_part(header)?;
        let claims = decode_part(payload)?;

        let alg_name = header_map.get("alg").and_then(Value::as_str).ok_or(JwtError::Malformed)?;
        let kid = match header_map.get("kid") {
            None | Some(Value::Null) => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(JwtError::Malformed),
        };
        let (alg, kind) = accepted(alg_name).ok_or_else(|| JwtError::UnsupportedAlgorithm(alg_name.into()))?;
        let fetched = self.fetched.as_ref().map(|f| f.0.read().unwrap_or_else(|p| p.into_inner()));
        let key = self.key_for(alg, kind, kid, fetched.as_deref().map_or(&[], Vec::as_slice)).ok_or(JwtError::NoKey)?;

        // The signed text is exactly the first two parts as sent.
        let signed = &token[..header.len() + 1 + payload.len()];
        match jsonwebtoken::crypto::verify(signature, signed.as_bytes(), key, alg) {
            Ok(true) => self.check_claims(claims, now),
            _ => Err(JwtError::BadSignature),
        }
    }

    /// A mapped opaque key: the claims of the JWT it stands for, which does
    /// not expire while the key is configured.
    fn verify_api_key(&self, key: &str) -> Result<Claims, JwtError> {
        let role = self.api_keys.role(key).ok_or(JwtError::UnknownApiKey)?.to_owned();
        if self.allowed_roles.as_ref().is_some_and(|allowed| !allowed.contains(&role)) {
            return Err(JwtError::RoleNotAllowed(role));
        }
        Ok(Claims { all: ApiKeys::claims(&role), role, exp: API_KEY_EXPIRY, sub: None })
    }

    /// The key to verify with: the JWK named by `kid`; else, for HS tokens, the
    /// shared secret (legacy tokens carry no `kid`); else, when the token has
    /// no `kid`, the only JWK that fits.
    fn key_for<'a>(
        &'a self,
        alg: Algorithm,
        kind: KeyKind,
        kid: Option<&str>,
        fetched: &'a [Key],
    ) -> Option<&'a DecodingKey> {
        let fitting: Vec<&Key> = self
            .keys
            .iter()
            .chain(fetched)
            .filter(|k| k.kind == kind && k.alg.is_none_or(|a| a == KeyAlgorithm::from(alg)))
            .collect();
        let named = kid.and_then(|kid| fitting.iter().find(|k| k.kid.as_deref() == Some(kid)));
        let secret = self.secret.as_ref().filter(|_| kind == KeyKind::Oct);
        let only = match fitting.as_slice() {
            [key] if kid.is_none() => Some(&key.key),
            _ => None,
        };
        named.map(|k| &k.key).or(secret).or(only)
    }

    /// Realtime's claim rules, then this verifier's own, applied once the
    /// signature is known to be good.
    fn check_claims(&self, all: Map<String, Value>, now: i64) -> Result<Claims, JwtError> {
        let role = match all.get("role") {
            Some(Value::String(role)) => role.clone(),
            _ => return Err(JwtError::MissingClaims),
        };
        let exp = all.get("exp").ok_or(JwtError::MissingClaims)?;
        let exp = seconds(exp).ok_or(JwtError::InvalidExpiry)?;
        if ["iat", "nbf"].iter().any(|name| all.get(*name).is_some_and(|time| !time.is_number())) {
            return Err(JwtError::InvalidExpiry);
        }
        if exp <= now {
            return Err(JwtError::Expired { seconds_ago: now.saturating_sub(exp) });
        }
        if let Some(nbf) = all.get("nbf").and_then(seconds)
            && nbf > now
        {
            return Err(JwtError::NotYetValid { seconds_early: nbf.saturating_sub(now) });
        }
        if let Some(claim) = self.validators.mismatch(&all) {
            return Err(JwtError::ClaimMismatch(claim.into()));
        }
        if self.allowed_roles.as_ref().is_some_and(|allowed| !allowed.contains(&role)) {
            return Err(JwtError::RoleNotAllowed(role));
        }
        let sub = match all.get("sub") {
            None | Some(Value::Null) => None,
            Some(Value::String(sub)) => Some(sub.clone()),
            Some(other) => Some(other.to_string()),
        };
        Ok(Claims { role, exp, sub, all })
    }
}

/// When a token made from an opaque key expires: 2100-01-01, never in
/// practice (a key stops working when it leaves the setting, which
/// disconnects every socket, as a new JWT secret does).
const API_KEY_EXPIRY: i64 = 4_102_444_800;

/// A time claim in unix seconds, rounded when the token gave a decimal.
fn seconds(time: &Value) -> Option<i64> {
    time.as_i64().or_else(|| time.as_f64().map(|f| f.round() as i64))
}

/// Undoes what transports do to tokens: percent-encoding (tokens sent in URLs)
/// and whitespace (line breaks from copy and paste).
fn clean(token: &str) -> String {
    percent_encoding::percent_decode_str(token).decode_utf8_lossy().chars().filter(|c| !c.is_whitespace()).collect()
}

/// A base64url-encoded JSON object, as JWT headers and payloads must be.
fn decode_part(part: &str) -> Result<Map<String, Value>, JwtError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::jwk::Jwk as PublicJwk;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const NOW: i64 = 1_700_000_000;
    const SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters";

    // Test-only keys, generated once with `openssl genpkey`.
    const RSA_PEM: &str = "\
        -----BEGIN PRIVATE KEY-----\n\
        MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQCxfmso76ukrLmu\n\
        J5QHP0IhOzOX9HNxmOw4wLa+lWfyAJ0b4KBXK9W+4w9R8YiLhQpkAs28xOz1kzxK\n\
        oHaq6AZiIQPr+fdF9GCme5iWfPKFQwo5XhEPOd5I98blfRnqle7xdPxWMUWho4nd\n\
        TKijEBYZYOhwRkxhhclrQGfO4N3oLBp7fPyzj62j5NziDHykm1RfTT0MerB/bUeE\n\
        k/lJbTB2rhNEEjQ83cakESYTkmNKzmjENaRhLxVFpXwImBFOHp62ORz/Uq35Ig4b\n\
        qRVShIJJpjyJgYOCPQzErNc2txp3oc8hoYIsD1g0yYSQw4YuHiunO0qgHc4TlM4C\n\
        JvruYWuTAgMBAAECggEARWOr1xwjmURhbuFQMKkdXEp9uBk8DJwBNYq5prZYJbbx\n\
        tNVTOeEMNg0kjx+DBzBiyIiEEBlYngUKnA4xdk0xOam4k8dsUS/hnRRSqfp9AXYd\n\
        CCJrPu2bpiEf49XNjPVCrajTgYrPswpxOk/e2ajPSuqk1EfXUoTwInrSWoF0n2//\n\
        woYw8OK9tYVJZGmCKVUtgWg0F1a9hxV23uVRloX02qJdUoUHivbgY9b8/Y3DQoSG\n\
        MIgF62HQ9qiD4bS4O0moi3+KszrO9svTkb4aKljkPJ5lYVxBWCAYOkPhy9VUaTui\n\
        3HWQYmlwpMuevmy11fDPyHitKi3YSH4vwU+CcUJwSQKBgQDcfCt7n4YmE8Ckyb1F\n\
        jTBbIiaDU2Nd8TSUOSqdcPtmbeMF1CQH80ZZ1DiNAmus55G7//JralcGYPOK/gE4\n\
        Nj4oIUUMlxRXPRRntunGf6zYgcO9bjHVXvlhXyVQoj5t7owjQvdEd/N+BUP2b6sD\n\
        u3F8qU8xZK/A87b49cyEJ22ZbQKBgQDOFXsOM6T8bz+eFZUpfoUYAf4iQHjDjftU\n\
        x0xMOtkrraffLSRCDLeddv7Er5BRU+bZI8MaZS+kk2gvyaWBseQ95ZONII6mpymd\n\
        BomxW7g2kfj/gPi0W90PZqW69bhow/S1HHrkNQt3FaZ5CUAxxILM+XYZV++4Y/72\n\
        ank4oWT4/wKBgQCi89JfR4Mp2SdjowYTxUmb0R2Nqa+i2oX1llp8iegDx+slf6gx\n\
        iAbSlRpGfSd/XpZCz+MmqC0xNa5JZ3kXRl+h4RTbPT13TFksXe9hGTNxwFYeRrbl\n\
        7493+43kjkR9kvRXi0Kcg9qdpN6Z3+YQmBREAg3Zf4S1omn0jhVdBpbl8QKBgQCS\n\
        5OjT1KgTb1DPY97wtsgztqfozj/GVFwDsBOIeqH16lAwWkLv+ZSf3wP2OpYKAl4Y\n\
        BM+67sko7BFljrw0WBKytAOaosxLqfeVf+WB0DjcXOw5YzrjhF9r7OTRAPkzZAn3\n\
        VpeaNt03Qu1odNmXH9WEOYSex/mNW2mPR5GkdhY9DQKBgGK/fW3Mm6tIr0OTq7Jl\n\
        B8XtbC+ajl+I5o5VjXUDmxeCNIiVounOHfgkGMebJwHR75f3PdWgMJMzsnkGTI2v\n\
        pujCeZDnE3NSxOXdI7dCBeyZKpW9DPRjugb1sKT6INwT/hwe9HJNFeMwq/H1B7ny\n\
        YJwfd0n3YumVi8Q6CmvO/X2s\n\
        -----END PRIVATE KEY-----\n";
    const EC_PEM: &str = "\
        -----BEGIN PRIVATE KEY-----\n\
        MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgaairo0kKzDobuhWW\n\
        TGi1OBnnX1mbjYJ1rJ0U3dROhKyhRANCAARG+zwSAT3I+94A2Lk7FmZ/l1/H6nm1\n\
        dHcBIRfYPdDeIqXqIpC/vFs76+de28sEJlMB7TW0vCry6HNJ4+X/ImnA\n\
        -----END PRIVATE KEY-----\n";
    const ED_PEM: &str = "\
        -----BEGIN PRIVATE KEY-----\n\
        MC4CAQAwBQYDK2VwBCIEIEbFdStNJotnP4g295KmobFrHrxwuk1DoafN/EfzazfB\n\
        -----END PRIVATE KEY-----\n";

    fn claims(extra: Value) -> Value {
        let mut claims = json!({"role": "authenticated", "exp": NOW + 3600, "sub": "user-1"});
        claims.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        claims
    }

    fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
        let header = Header { kid: kid.map(str::to_owned), ..Header::new(alg) };
        encode(&header, claims, key).unwrap()
    }

    fn hs256(secret: &str, claims: &Value) -> String {
        sign(Algorithm::HS256, None, claims, &EncodingKey::from_secret(secret.as_bytes()))
    }

    fn secret_only() -> Verifier {
        Verifier::new(Some(SECRET), None).unwrap()
    }

    fn rsa_key() -> EncodingKey {
        EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).unwrap()
    }
    fn ec_key() -> EncodingKey {
        EncodingKey::from_ec_pem(EC_PEM.as_bytes()).unwrap()
    }
    fn ed_key() -> EncodingKey {
        EncodingKey::from_ed_pem(ED_PEM.as_bytes()).unwrap()
    }

    /// The public JWK of `key`, as a key server would publish it.
    fn public_jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Value {
        let mut jwk = serde_json::to_value(PublicJwk::from_encoding_key(key, alg).unwrap()).unwrap();
        jwk["kid"] = json!(kid);
        jwk
    }

    fn jwks(keys: &[Value]) -> String {
        json!({ "keys": keys }).to_string()
    }

    fn b64(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(value.to_string())
    }

    #[test]
    fn valid_hs256_returns_all_claims() {
        let token = hs256(SECRET, &claims(json!({"aud": "authenticated", "iat": NOW - 10})));
        let got = secret_only().verify(&token, NOW).unwrap();
        assert_eq!(got.role, "authenticated");
        assert_eq!(got.exp, NOW + 3600);
        assert_eq!(got.sub.as_deref(), Some("user-1"));
        assert_eq!(got.all.get("aud"), Some(&json!("authenticated")));
        assert_eq!(got.all.len(), 5);
    }

    #[test]
    fn sub_is_optional_and_stringified() {
        let mut no_sub = claims(json!({}));
        no_sub.as_object_mut().unwrap().remove("sub");
        let got = secret_only().verify(&hs256(SECRET, &no_sub), NOW).unwrap();
        assert_eq!(got.sub, None);

        let numeric = hs256(SECRET, &claims(json!({"sub": 42})));
        let got = secret_only().verify(&numeric, NOW).unwrap();
        assert_eq!(got.sub.as_deref(), Some("42"));
    }

    #[test]
    fn hs384_and_hs512_use_the_secret() {
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let token = sign(alg, None, &claims(json!({})), &key);
            assert!(secret_only().verify(&token, NOW).is_ok(), "{alg:?}");
        }
    }

    #[test]
    fn wrong_secret_is_a_signature_error() {
        let token = hs256("another-secret", &claims(json!({})));
        let err = secret_only().verify(&token, NOW).unwrap_err();
        assert_eq!(err, JwtError::BadSignature);
        assert_eq!(err.code(), "JwtSignatureError");
        assert_eq!(err.message(), "Failed to validate JWT signature");
        assert_eq!(err.to_string(), "JwtSignatureError: Failed to validate JWT signature");
    }

    #[test]
    fn tampered_payload_is_a_signature_error() {
        let token = hs256(SECRET, &claims(json!({})));
        let parts: Vec<&str> = token.split('.').collect();
        let forged = b64(&claims(json!({"role": "service_role"})));
        let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
        assert_eq!(secret_only().verify(&tampered, NOW), Err(JwtError::BadSignature));
        // So is a missing signature.
        let unsigned = format!("{}.{}.", parts[0], parts[1]);
        assert_eq!(secret_only().verify(&unsigned, NOW), Err(JwtError::BadSignature));
    }

    #[test]
    fn expired_says_how_long_ago() {
        let token = hs256(SECRET, &claims(json!({"exp": NOW - 30})));
        let err = secret_only().verify(&token, NOW).unwrap_err();
        assert_eq!(err, JwtError::Expired { seconds_ago: 30 });
        assert_eq!(err.code(), "InvalidJWTToken");
        assert_eq!(err.to_string(), "InvalidJWTToken: Token has expired 30 seconds ago");
    }

    #[test]
    fn expiring_now_is_expired_zero_seconds_ago() {
        let token = hs256(SECRET, &claims(json!({"exp": NOW})));
        let err = secret_only().verify(&token, NOW).unwrap_err();
        assert_eq!(err.message(), "Token has expired 0 seconds ago");
        assert!(secret_only().verify(&token, NOW - 1).is_ok());
    }

    #[test]
    fn role_and_exp_are_required() {
        let mut no_role = claims(json!({}));
        no_role.as_object_mut().unwrap().remove("role");
        let mut no_exp = claims(json!({}));
        no_exp.as_object_mut().unwrap().remove("exp");
        let role_not_string = claims(json!({"role": 1}));
        for claims in [no_role, no_exp, role_not_string] {
            let err = secret_only().verify(&hs256(SECRET, &claims), NOW).unwrap_err();
            assert_eq!(err, JwtError::MissingClaims, "{claims}");
            assert_eq!(err.to_string(), "InvalidJWTToken: Fields `role` and `exp` are required in JWT");
        }
    }

    #[test]
    fn non_numeric_exp_or_iat_is_invalid() {
        for extra in [json!({"exp": "tomorrow"}), json!({"exp": null}), json!({"iat": "yesterday"})] {
            let token = hs256(SECRET, &claims(extra.clone()));
            let err = secret_only().verify(&token, NOW).unwrap_err();
            assert_eq!(err, JwtError::InvalidExpiry, "{extra}");
            assert_eq!(err.to_string(), "InvalidJWTToken: Token expiration time is invalid");
        }
    }

    #[test]
    fn missing_claims_come_before_expiry() {
        let token = hs256(SECRET, &json!({"exp": NOW - 5}));
        assert_eq!(secret_only().verify(&token, NOW), Err(JwtError::MissingClaims));
    }

    #[test]
    fn signature_comes_before_claims() {
        let token = hs256("another-secret", &json!({"exp": "never"}));
        assert_eq!(secret_only().verify(&token, NOW), Err(JwtError::BadSignature));
    }

    #[test]
    fn decimal_exp_is_rounded() {
        let token = hs256(SECRET, &claims(json!({"exp": (NOW + 100) as f64 + 0.6})));
        assert_eq!(secret_only().verify(&token, NOW).unwrap().exp, NOW + 101);
        let token = hs256(SECRET, &claims(json!({"exp": (NOW - 10) as f64 + 0.2})));
        assert_eq!(secret_only().verify(&token, NOW), Err(JwtError::Expired { seconds_ago: 10 }));
    }

    #[test]
    fn alg_none_is_refused() {
        let header = b64(&json!({"alg": "none", "typ": "JWT"}));
        let token = format!("{header}.{}.", b64(&claims(json!({}))));
        let err = secret_only().verify(&token, NOW).unwrap_err();
        assert_eq!(err, JwtError::UnsupportedAlgorithm("none".into()));
        assert_eq!(err.to_string(), "JwtSignatureError: Failed to validate JWT signature");
    }

    #[test]
    fn algorithms_outside_the_list_are_refused() {
        let token = sign(Algorithm::PS256, Some("rsa"), &claims(json!({})), &rsa_key());
        let verifier = Verifier::new(None, Some(&jwks(&[public_jwk(&rsa_key(), Algorithm::RS256, "rsa")]))).unwrap();
        assert_eq!(verifier.verify(&token, NOW), Err(JwtError::UnsupportedAlgorithm("PS256".into())));
    }

    #[test]
    fn garbage_is_malformed() {
        let payload = b64(&claims(json!({})));
        let no_alg = format!("{}.{payload}.sig", b64(&json!({"typ": "JWT"})));
        let array_header = format!("{}.{payload}.sig", b64(&json!(["HS256"])));
        let bad_kid = format!("{}.{payload}.sig", b64(&json!({"alg": "HS256", "kid": 7})));
        let not_json = format!("{}.{payload}.sig", URL_SAFE_NO_PAD.encode("{alg"));
        let bad_payload = format!("{}.!!!.sig", b64(&json!({"alg": "HS256"})));
        let good = hs256(SECRET, &claims(json!({})));
        let four_parts = format!("{good}.x");
        for token in [
            "",
            "   ",
            "garbage",
            "a.b",
            "a.b.c",
            &no_alg,
            &array_header,
            &bad_kid,
            &not_json,
            &bad_payload,
            &four_parts,
        ] {
            let err = secret_only().verify(token, NOW).unwrap_err();
            assert_eq!(err, JwtError::Malformed, "{token:?}");
            assert_eq!(err.to_string(), "MalformedJWT: The token provided is not a valid JWT");
        }
    }

    #[test]
    fn whitespace_and_percent_encoding_are_cleaned() {
        let token = hs256(SECRET, &claims(json!({})));
        let mangled = format!(" {}\n", token.replacen('.', "%2E", 2));
        let mangled = format!("{}\r\n\t{}", &mangled[..20], &mangled[20..]);
        assert_ne!(mangled, token);
        assert_eq!(secret_only().verify(&mangled, NOW), secret_only().verify(&token, NOW));
        assert!(secret_only().verify(&mangled, NOW).is_ok());
    }

    #[test]
    fn hs_without_any_secret_has_no_key() {
        let token = hs256(SECRET, &claims(json!({})));
        for verifier in [Verifier::new(None, None).unwrap(), Verifier::new(Some(""), Some("")).unwrap()] {
            assert_eq!(verifier.verify(&token, NOW), Err(JwtError::NoKey));
        }
    }

    #[test]
    fn rs256_es256_and_eddsa_via_jwks() {
        let keys = [
            (Algorithm::RS256, rsa_key(), "rsa-1"),
            (Algorithm::ES256, ec_key(), "ec-1"),
            (Algorithm::EdDSA, ed_key(), "ed-1"),
        ];
        let set: Vec<Value> = keys.iter().map(|(alg, key, kid)| public_jwk(key, *alg, kid)).collect();
        let verifier = Verifier::new(Some(SECRET), Some(&jwks(&set))).unwrap();
        for (alg, key, kid) in &keys {
            let token = sign(*alg, Some(kid), &claims(json!({})), key);
            let got = verifier.verify(&token, NOW);
            assert_eq!(got.map(|c| c.role), Ok("authenticated".into()), "{alg:?}");

            // The same token with its claims swapped fails.
            let parts: Vec<&str> = token.split('.').collect();
            let forged = format!("{}.{}.{}", parts[0], b64(&claims(json!({"x": 1}))), parts[2]);
            assert_eq!(verifier.verify(&forged, NOW), Err(JwtError::BadSignature), "{alg:?}");
        }
        // The shared secret still verifies HS tokens alongside the JWKS.
        assert!(verifier.verify(&hs256(SECRET, &claims(json!({}))), NOW).is_ok());
    }

    #[test]
    fn asymmetric_tokens_need_a_jwks() {
        let token = sign(Algorithm::RS256, Some("rsa-1"), &claims(json!({})), &rsa_key());
        assert_eq!(secret_only().verify(&token, NOW), Err(JwtError::NoKey));
    }

    #[test]
    fn kid_must_match() {
        let set = jwks(&[public_jwk(&rsa_key(), Algorithm::RS256, "rsa-1")]);
        let verifier = Verifier::new(None, Some(&set)).unwrap();
        let token = sign(Algorithm::RS256, Some("rsa-2"), &claims(json!({})), &rsa_key());
        let err = verifier.verify(&token, NOW).unwrap_err();
        assert_eq!(err, JwtError::NoKey);
        assert_eq!(err.code(), "JwtSignatureError");
    }

    #[test]
    fn kid_must_name_a_key_of_the_right_type() {
        // The kid exists, but on an EC key, so an RS256 token has no key.
        let set = jwks(&[public_jwk(&ec_key(), Algorithm::ES256, "k")]);
        let verifier = Verifier::new(None, Some(&set)).unwrap();
        let token = sign(Algorithm::RS256, Some("k"), &claims(json!({})), &rsa_key());
        assert_eq!(verifier.verify(&token, NOW), Err(JwtError::NoKey));
    }

    #[test]
    fn without_kid_the_only_fitting_key_is_used() {
        let rsa = public_jwk(&rsa_key(), Algorithm::RS256, "rsa-1");
        let ec = public_jwk(&ec_key(), Algorithm::ES256, "ec-1");
        let token = sign(Algorithm::RS256, None, &claims(json!({})), &rsa_key());

        // One RSA key (the EC key does not fit): used.
        let verifier = Verifier::new(None, Some(&jwks(&[rsa.clone(), ec]))).unwrap();
        assert!(verifier.verify(&token, NOW).is_ok());

        // Two RSA keys: ambiguous, so refused.
        let mut other = rsa.clone();
        other["kid"] = json!("rsa-2");
        let verifier = Verifier::new(None, Some(&jwks(&[rsa, other]))).unwrap();
        assert_eq!(verifier.verify(&token, NOW), Err(JwtError::NoKey));
    }

    #[test]
    fn a_key_restricted_to_another_alg_does_not_fit() {
        let mut rsa = public_jwk(&rsa_key(), Algorithm::RS256, "rsa-1");
        rsa["alg"] = json!("RS384");
        let verifier = Verifier::new(None, Some(&jwks(&[rsa]))).unwrap();
        let rs256 = sign(Algorithm::RS256, Some("rsa-1"), &claims(json!({})), &rsa_key());
        assert_eq!(verifier.verify(&rs256, NOW), Err(JwtError::NoKey));
        let rs384 = sign(Algorithm::RS384, Some("rsa-1"), &claims(json!({})), &rsa_key());
        assert!(verifier.verify(&rs384, NOW).is_ok());
    }

    #[test]
    fn hs256_via_an_oct_jwk() {
        let oct = json!({"kty": "oct", "kid": "hs-1", "k": URL_SAFE_NO_PAD.encode("jwk-secret")});
        let verifier = Verifier::new(None, Some(&jwks(&[oct]))).unwrap();
        let key = EncodingKey::from_secret(b"jwk-secret");
        let token = sign(Algorithm::HS256, Some("hs-1"), &claims(json!({})), &key);
        assert!(verifier.verify(&token, NOW).is_ok());
        // Without a kid the only oct key is used.
        let token = sign(Algorithm::HS256, None, &claims(json!({})), &key);
        assert!(verifier.verify(&token, NOW).is_ok());
        // The oct key is not a fallback for other kids.
        let token = sign(Algorithm::HS256, Some("hs-2"), &claims(json!({})), &key);
        assert_eq!(verifier.verify(&token, NOW), Err(JwtError::NoKey));
    }

    #[test]
    fn hs256_with_an_unknown_kid_falls_back_to_the_secret() {
        let oct = json!({"kty": "oct", "kid": "hs-1", "k": URL_SAFE_NO_PAD.encode("jwk-secret")});
        let verifier = Verifier::new(Some(SECRET), Some(&jwks(&[oct]))).unwrap();
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let token = sign(Algorithm::HS256, Some("legacy"), &claims(json!({})), &key);
        assert!(verifier.verify(&token, NOW).is_ok());
        // With a kid naming the oct key, that key (not the secret) is used.
        let token = sign(Algorithm::HS256, Some("hs-1"), &claims(json!({})), &key);
        assert_eq!(verifier.verify(&token, NOW), Err(JwtError::BadSignature));
    }

    #[test]
    fn hs256_without_kid_prefers_the_secret() {
        let oct = json!({"kty": "oct", "kid": "hs-1", "k": URL_SAFE_NO_PAD.encode("jwk-secret")});
        let verifier = Verifier::new(Some(SECRET), Some(&jwks(&[oct]))).unwrap();
        assert!(verifier.verify(&hs256(SECRET, &claims(json!({}))), NOW).is_ok());
        assert_eq!(verifier.verify(&hs256("jwk-secret", &claims(json!({}))), NOW), Err(JwtError::BadSignature));
    }

    #[test]
    fn invalid_jwks_text_is_refused() {
        let rsa = public_jwk(&rsa_key(), Algorithm::RS256, "rsa-1");
        let mut short_x = public_jwk(&ec_key(), Algorithm::ES256, "ec-1");
        short_x["x"] = json!(URL_SAFE_NO_PAD.encode([1u8; 31]));
        let mut no_n = rsa.clone();
        no_n.as_object_mut().unwrap().remove("n");
        for (text, needle) in [
            ("not json".to_string(), "invalid JWKS"),
            (json!({"kys": []}).to_string(), "missing field `keys`"),
            (json!({"keys": [{"kid": "a"}]}).to_string(), "missing field `kty`"),
            (jwks(&[json!({"kty": "oct", "k": "***"})]), "`k` is not base64url"),
            (jwks(&[rsa, no_n]), "key 1 (kid \"rsa-1\"): missing `n`"),
            (jwks(&[short_x]), "`x` must be 32 bytes, not 31"),
        ] {
            let err = Verifier::new(None, Some(&text)).unwrap_err();
            assert!(err.contains(needle), "{err:?} lacks {needle:?}");
        }
    }

    #[test]
    fn unusable_jwks_keys_are_skipped() {
        let mut enc = public_jwk(&rsa_key(), Algorithm::RS256, "rsa-1");
        enc["use"] = json!("enc");
        let x25519 = json!({"kty": "OKP", "crv": "X25519", "kid": "x", "x": "AAAA"});
        let p521 = json!({"kty": "EC", "crv": "P-521", "kid": "p", "x": "AA", "y": "AA"});
        let verifier = Verifier::new(None, Some(&jwks(&[enc, x25519, p521]))).unwrap();
        assert!(verifier.keys.is_empty());
        let token = sign(Algorithm::RS256, Some("rsa-1"), &claims(json!({})), &rsa_key());
        assert_eq!(verifier.verify(&token, NOW), Err(JwtError::NoKey));
    }

    #[test]
    fn verifier_can_be_shared_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Verifier>();
    }

    #[test]
    fn debug_hides_the_secret() {
        let text = format!("{:?}", secret_only());
        assert!(!text.contains(SECRET), "{text}");
        assert!(text.contains("secret: true"), "{text}");
    }

    #[test]
    fn a_published_jwks_with_extra_members_is_read() {
        // As Supabase Auth publishes it: `use`, `key_ops`, `alg` and `ext`.
        let mut ec = public_jwk(&ec_key(), Algorithm::ES256, "ec-1");
        let extra = json!({"use": "sig", "key_ops": ["verify"], "ext": true});
        ec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let verifier = Verifier::new(None, Some(&jwks(&[ec]))).unwrap();
        let token = sign(Algorithm::ES256, Some("ec-1"), &claims(json!({})), &ec_key());
        assert!(verifier.verify(&token, NOW).is_ok());
    }

    #[test]
    fn kid_picks_among_keys_of_one_kind() {
        let oct = |kid: &str, secret: &str| json!({"kty": "oct", "kid": kid, "k": URL_SAFE_NO_PAD.encode(secret)});
        let verifier = Verifier::new(None, Some(&jwks(&[oct("a", "secret-a"), oct("b", "secret-b")]))).unwrap();
        for (kid, secret) in [("a", "secret-a"), ("b", "secret-b")] {
            let key = EncodingKey::from_secret(secret.as_bytes());
            let token = sign(Algorithm::HS256, Some(kid), &claims(json!({})), &key);
            assert!(verifier.verify(&token, NOW).is_ok(), "{kid}");
            let other = if kid == "a" { "b" } else { "a" };
            let token = sign(Algorithm::HS256, Some(other), &claims(json!({})), &key);
            assert_eq!(verifier.verify(&token, NOW), Err(JwtError::BadSignature), "{kid}");
        }
    }

    #[test]
    fn a_future_nbf_is_refused() {
        let token = hs256(SECRET, &claims(json!({"nbf": NOW + 60})));
        let err = secret_only().verify(&token, NOW).unwrap_err();
        assert_eq!(err, JwtError::NotYetValid { seconds_early: 60 });
        assert_eq!(err.to_string(), "InvalidJWTToken: Token is not valid yet (nbf), it becomes valid in 60 seconds");
        // From `nbf` on, the token is good.
        assert!(secret_only().verify(&token, NOW + 60).is_ok());
    }

    #[test]
    fn a_past_nbf_passes() {
        for nbf in [json!(NOW - 60), json!(NOW), json!((NOW - 1) as f64 + 0.5)] {
            let token = hs256(SECRET, &claims(json!({ "nbf": nbf })));
            assert!(secret_only().verify(&token, NOW).is_ok(), "{nbf}");
        }
    }

    #[test]
    fn non_numeric_nbf_is_invalid() {
        for nbf in [json!("soon"), json!(null)] {
            let token = hs256(SECRET, &claims(json!({ "nbf": nbf })));
            assert_eq!(secret_only().verify(&token, NOW), Err(JwtError::InvalidExpiry), "{nbf}");
        }
    }

    #[test]
    fn expiry_comes_before_nbf() {
        let token = hs256(SECRET, &claims(json!({"exp": NOW - 1, "nbf": NOW + 1})));
        assert_eq!(secret_only().verify(&token, NOW), Err(JwtError::Expired { seconds_ago: 1 }));
    }

    fn validated(text: &str) -> Verifier {
        secret_only().with_claim_validators(ClaimValidators::parse(text).unwrap())
    }

    const ISS: &str = "https://x.supabase.co/auth/v1";

    #[test]
    fn validators_pass_when_every_claim_matches() {
        let verifier = validated(&json!({"iss": ISS, "aud": "authenticated"}).to_string());
        let token = hs256(SECRET, &claims(json!({"iss": ISS, "aud": "authenticated"})));
        assert!(verifier.verify(&token, NOW).is_ok());
    }

    #[test]
    fn a_validated_claim_that_differs_is_refused() {
        let verifier = validated(&json!({"iss": ISS, "aud": "authenticated"}).to_string());
        let token = hs256(SECRET, &claims(json!({"iss": "https://evil.example", "aud": "authenticated"})));
        let err = verifier.verify(&token, NOW).unwrap_err();
        assert_eq!(err, JwtError::ClaimMismatch("iss".into()));
        assert_eq!(err.to_string(), "InvalidJWTToken: Token claim `iss` does not match what this server accepts");
        // Equality is of JSON values: a string is not the number it spells.
        let verifier = validated(r#"{"tier": 2}"#);
        let token = hs256(SECRET, &claims(json!({"tier": "2"})));
        assert_eq!(verifier.verify(&token, NOW), Err(JwtError::ClaimMismatch("tier".into())));
    }

    #[test]
    fn a_validated_claim_that_is_absent_is_refused() {
        // Stricter than Realtime, which lets the token through.
        let verifier = validated(&json!({"iss": ISS}).to_string());
        let token = hs256(SECRET, &claims(json!({})));
        assert_eq!(verifier.verify(&token, NOW), Err(JwtError::ClaimMismatch("iss".into())));
    }

    #[test]
    fn an_aud_array_passes_when_it_holds_the_value() {
        let verifier = validated(r#"{"aud": "authenticated"}"#);
        let holds = hs256(SECRET, &claims(json!({"aud": ["other", "authenticated"]})));
        assert!(verifier.verify(&holds, NOW).is_ok());
        let lacks = hs256(SECRET, &claims(json!({"aud": ["other"]})));
        assert_eq!(verifier.verify(&lacks, NOW), Err(JwtError::ClaimMismatch("aud".into())));
        // Only `aud` is a list of candidates; other arrays must be equal.
        let verifier = validated(r#"{"groups": "a"}"#);
        let token = hs256(SECRET, &claims(json!({"groups": ["a"]})));
        assert_eq!(verifier.verify(&token, NOW), Err(JwtError::ClaimMismatch("groups".into())));
    }

    #[test]
    fn validator_numbers_compare_by_value() {
        let verifier = validated(r#"{"nbf": 1610078130, "v": 1.0}"#);
        let token = hs256(SECRET, &claims(json!({"nbf": 1610078130.0, "v": 1})));
        assert!(verifier.verify(&token, NOW).is_ok());
        let token = hs256(SECRET, &claims(json!({"nbf": 1610078131, "v": 1})));
        assert_eq!(verifier.verify(&token, NOW), Err(JwtError::ClaimMismatch("nbf".into())));
    }

    #[test]
    fn signature_and_expiry_come_before_validators() {
        let verifier = validated(&json!({"iss": ISS}).to_string());
        let forged = hs256("another-secret", &claims(json!({})));
        assert_eq!(verifier.verify(&forged, NOW), Err(JwtError::BadSignature));
        let expired = hs256(SECRET, &claims(json!({"exp": NOW - 5})));
        assert_eq!(verifier.verify(&expired, NOW), Err(JwtError::Expired { seconds_ago: 5 }));
    }

    #[test]
    fn validators_text_is_a_json_object() {
        assert_eq!(ClaimValidators::parse(" "), Ok(ClaimValidators::default()));
        assert_eq!(ClaimValidators::parse("{}"), Ok(ClaimValidators::default()));
        for (text, needle) in [
            (r#"{"iss": "#, "EOF while parsing"),
            ("[1]", "found an array"),
            (r#""iss""#, "found a string"),
            ("null", "found null"),
        ] {
            let err = ClaimValidators::parse(text).unwrap_err();
            assert!(err.starts_with("JWT claim validators is not a valid JSON object: "), "{err}");
            assert!(err.contains(needle), "{err:?} lacks {needle:?}");
        }
    }

    fn roles(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_role_outside_the_allow_list_is_refused() {
        let verifier = secret_only().with_allowed_roles(roles(&["anon", "authenticated", "service_role"]));
        let token = hs256(SECRET, &claims(json!({"role": "postgres"})));
        let err = verifier.verify(&token, NOW).unwrap_err();
        assert_eq!(err, JwtError::RoleNotAllowed("postgres".into()));
        assert_eq!(
            err.to_string(),
            "InvalidJWTToken: The role \"postgres\" is not one this server lets clients assume"
        );
        // Role names are compared exactly.
        let token = hs256(SECRET, &claims(json!({"role": "Anon"})));
        assert_eq!(verifier.verify(&token, NOW), Err(JwtError::RoleNotAllowed("Anon".into())));
    }

    #[test]
    fn a_role_in_the_allow_list_passes() {
        let verifier = secret_only().with_allowed_roles(roles(&["anon", "authenticated", "service_role", "editor"]));
        for role in ["anon", "authenticated", "service_role", "editor"] {
            let token = hs256(SECRET, &claims(json!({ "role": role })));
            assert_eq!(verifier.verify(&token, NOW).map(|c| c.role), Ok(role.to_string()));
        }
    }

    #[test]
    fn without_an_allow_list_every_role_passes_and_an_empty_one_refuses_all() {
        let token = hs256(SECRET, &claims(json!({"role": "postgres"})));
        assert!(secret_only().verify(&token, NOW).is_ok());
        let verifier = secret_only().with_allowed_roles(Vec::new());
        assert_eq!(verifier.verify(&token, NOW), Err(JwtError::RoleNotAllowed("postgres".into())));
    }

    #[test]
    fn role_and_validators_apply_to_jwks_tokens_too() {
        let set = jwks(&[public_jwk(&ed_key(), Algorithm::EdDSA, "ed-1")]);
        let verifier = Verifier::new(None, Some(&set))
            .unwrap()
            .with_claim_validators(ClaimValidators::parse(&json!({"iss": ISS}).to_string()).unwrap())
            .with_allowed_roles(roles(&["authenticated"]));
        let good = sign(Algorithm::EdDSA, Some("ed-1"), &claims(json!({"iss": ISS})), &ed_key());
        assert!(verifier.verify(&good, NOW).is_ok());
        let bad_role = sign(Algorithm::EdDSA, Some("ed-1"), &claims(json!({"iss": ISS, "role": "anon"})), &ed_key());
        assert_eq!(verifier.verify(&bad_role, NOW), Err(JwtError::RoleNotAllowed("anon".into())));
        let text = format!("{verifier:?}");
        assert!(text.contains(r#"validators: ["iss"]"#) && text.contains("authenticated"), "{text}");
    }

    mod properties {
        use super::*;
        use proptest::collection::{btree_map, vec};
        use proptest::prelude::*;
        use std::sync::LazyLock;

        /// One of each key, with every check switched on, so that each path
        /// through `verify` can be reached.
        static VERIFIER: LazyLock<Verifier> = LazyLock::new(|| {
            let oct = json!({"kty": "oct", "kid": "hs-1", "k": URL_SAFE_NO_PAD.encode("jwk-secret")});
            let set = jwks(&[
                public_jwk(&rsa_key(), Algorithm::RS256, "rsa-1"),
                public_jwk(&ec_key(), Algorithm::ES256, "ec-1"),
                public_jwk(&ed_key(), Algorithm::EdDSA, "ed-1"),
                oct,
            ]);
            Verifier::new(Some(SECRET), Some(&set))
                .unwrap()
                .with_claim_validators(ClaimValidators::parse(r#"{"aud": "authenticated"}"#).unwrap())
                .with_allowed_roles(roles(&["anon", "authenticated"]))
        });

        /// A token part: base64url junk, base64url of JSON-ish text, or any text.
        fn part() -> impl Strategy<Value = String> {
            prop_oneof![
                "[A-Za-z0-9_=%+/-]{0,64}",
                r#"\{("[a-z]{1,4}":("[A-Za-z0-9]{0,8}"|-?[0-9]{1,20}(\.[0-9]{1,3})?|null|\[\]|\{\}),?){0,4}\}?"#
                    .prop_map(|json| URL_SAFE_NO_PAD.encode(json)),
                any::<String>(),
            ]
        }

        fn claim_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                "[a-z_]{0,12}".prop_map(Value::from),
                any::<bool>().prop_map(Value::from),
                Just(Value::Null),
            ];
            leaf.prop_recursive(2, 8, 4, |inner| vec(inner, 0..4).prop_map(Value::from))
        }

        fn claim_map() -> impl Strategy<Value = Value> {
            let name =
                prop_oneof![Just("role"), Just("exp"), Just("nbf"), Just("iat"), Just("aud"), Just("sub"), Just("x")];
            btree_map(name.prop_map(str::to_owned), claim_value(), 0..7)
                .prop_map(|claims| Value::Object(claims.into_iter().collect()))
        }

        proptest! {
            #[test]
            fn verify_never_panics_on_any_text(token in any::<String>(), now in any::<i64>()) {
                let _ = VERIFIER.verify(&token, now);
            }

            #[test]
            fn verify_never_panics_on_any_bytes(bytes in vec(any::<u8>(), 0..300), now in any::<i64>()) {
                let _ = VERIFIER.verify(&String::from_utf8_lossy(&bytes), now);
            }

            #[test]
            fn verify_never_panics_on_dotted_junk(parts in vec(part(), 0..6), now in any::<i64>()) {
                let _ = VERIFIER.verify(&parts.join("."), now);
            }

            #[test]
            fn verify_never_panics_on_junk_under_a_real_header(
                alg in prop::sample::select(vec!["HS256", "HS512", "RS256", "RS512", "ES256", "ES384", "EdDSA", "PS256", "none"]),
                kid in prop::option::of(prop::sample::select(vec!["hs-1", "rsa-1", "ec-1", "ed-1", "nope"])),
                payload in part(),
                signature in part(),
                now in any::<i64>(),
            ) {
                let header = b64(&json!({"alg": alg, "kid": kid}));
                let _ = VERIFIER.verify(&format!("{header}.{payload}.{signature}"), now);
            }

            #[test]
            fn verify_never_panics_on_signed_odd_claims(claims in claim_map(), now in any::<i64>()) {
                // Well signed, so every claim check runs on the odd values.
                let _ = VERIFIER.verify(&hs256(SECRET, &claims), now);
            }
        }
    }
}
