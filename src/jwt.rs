//! JWT verification with Supabase Realtime's rules and error texts: clients
//! show these messages to users, so they match Realtime's word for word.
//!
//! Only the header and claims are parsed here; `jsonwebtoken` is used for the
//! signature alone, so that none of its own claim checks (`aud`, `exp` with
//! leeway, ...) can reject a token Realtime would accept, or word an error
//! differently.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::fmt;

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
    /// `exp` or `iat` is present but not a number.
    InvalidExpiry,
    /// `exp` is not after the verification time.
    Expired { seconds_ago: i64 },
}

impl JwtError {
    /// Supabase's error code.
    pub fn code(&self) -> &'static str {
        match self {
            JwtError::Malformed => "MalformedJWT",
            // A well-formed token we cannot check is a signature failure, the
            // same as one signed with a key we do not have.
            JwtError::UnsupportedAlgorithm(_) | JwtError::NoKey | JwtError::BadSignature => "JwtSignatureError",
            JwtError::MissingClaims | JwtError::InvalidExpiry | JwtError::Expired { .. } => "InvalidJWTToken",
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
        }
    }
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code(), self.message())
    }
}

impl std::error::Error for JwtError {}

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

/// A JWK as written in the JWKS text; only the members used here.
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
    k: Option<String>,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<RawJwk>,
}

/// A usable verification key from the JWKS.
struct Jwk {
    kid: Option<String>,
    /// The one algorithm the key is restricted to, when it says so.
    alg: Option<String>,
    kind: KeyKind,
    key: DecodingKey,
}

impl Jwk {
    /// `Ok(None)` for keys that are valid but cannot verify signatures here
    /// (encryption keys, other curves or key types), so one such key does not
    /// make a whole key set unusable.
    fn parse(raw: RawJwk) -> Result<Option<Jwk>, String> {
        if raw.usage.as_deref().is_some_and(|usage| usage != "sig") {
            return Ok(None);
        }
        let member = |value: &Option<String>, name: &str| -> Result<Vec<u8>, String> {
            let text = value.as_deref().ok_or_else(|| format!("missing `{name}`"))?;
            let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|e| format!("`{name}` is not base64url: {e}"))?;
            if bytes.is_empty() {
                return Err(format!("`{name}` is empty"));
            }
            Ok(bytes)
        };
        // Coordinates of the wrong size would only fail later, at every
        // verification, so they are refused up front.
        let sized = |value: &Option<String>, name: &str, len: usize| -> Result<String, String> {
            let bytes = member(value, name)?;
            if bytes.len() != len {
                return Err(format!("`{name}` must be {len} bytes, not {}", bytes.len()));
            }
            Ok(value.clone().unwrap_or_default())
        };
        let ec = |len| {
            let (x, y) = (sized(&raw.x, "x", len)?, sized(&raw.y, "y", len)?);
            DecodingKey::from_ec_components(&x, &y).map_err(|e| e.to_string())
        };
        let (kind, key) = match (raw.kty.as_str(), raw.crv.as_deref()) {
            ("oct", _) => (KeyKind::Oct, DecodingKey::from_secret(&member(&raw.k, "k")?)),
            ("RSA", _) => {
                let (n, e) = (member(&raw.n, "n")?, member(&raw.e, "e")?);
                (KeyKind::Rsa, DecodingKey::from_rsa_raw_components(&n, &e))
            }
            ("EC", Some("P-256")) => (KeyKind::P256, ec(32)?),
            ("EC", Some("P-384")) => (KeyKind::P384, ec(48)?),
            ("OKP", Some("Ed25519")) => {
                let x = sized(&raw.x, "x", 32)?;
                let key = DecodingKey::from_ed_components(&x).map_err(|e| e.to_string())?;
                (KeyKind::Ed25519, key)
            }
            _ => return Ok(None),
        };
        Ok(Some(Jwk { kid: raw.kid, alg: raw.alg, kind, key }))
    }
}

/// Verifies tokens against the configured HS secret and JWKS.
pub struct Verifier {
    secret: Option<DecodingKey>,
    keys: Vec<Jwk>,
}

impl fmt::Debug for Verifier {
    // Hand-written so that the secret never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<_> = self.keys.iter().map(|k| (k.kind, k.kid.as_deref())).collect();
        f.debug_struct("Verifier").field("secret", &self.secret.is_some()).field("keys", &kids).finish()
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
            Some(text) => {
                let set: RawJwks = serde_json::from_str(text).map_err(|e| format!("invalid JWKS: {e}"))?;
                let mut keys = Vec::new();
                for (i, raw) in set.keys.into_iter().enumerate() {
                    let kid = raw.kid.clone().unwrap_or_default();
                    let key = Jwk::parse(raw).map_err(|e| format!("invalid JWKS key {i} (kid {kid:?}): {e}"))?;
                    keys.extend(key);
                }
                keys
            }
        };
        Ok(Verifier { secret, keys })
    }

    /// Verifies `token` at unix time `now` (seconds) and returns its claims.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, JwtError> {
        let token = clean(token);
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
        let key = self.key_for(alg_name, kind, kid).ok_or(JwtError::NoKey)?;

        // The signed text is exactly the first two parts as sent.
        let signed = &token[..header.len() + 1 + payload.len()];
        match jsonwebtoken::crypto::verify(signature, signed.as_bytes(), key, alg) {
            Ok(true) => check_claims(claims, now),
            _ => Err(JwtError::BadSignature),
        }
    }

    /// The key to verify with: the JWK named by `kid`; else, for HS tokens, the
    /// shared secret (legacy tokens carry no `kid`); else, when the token has
    /// no `kid`, the only JWK that fits.
    fn key_for(&self, alg: &str, kind: KeyKind, kid: Option<&str>) -> Option<&DecodingKey> {
        let fitting: Vec<&Jwk> =
            self.keys.iter().filter(|k| k.kind == kind && k.alg.as_deref().is_none_or(|a| a == alg)).collect();
        let named = kid.and_then(|kid| fitting.iter().find(|k| k.kid.as_deref() == Some(kid)));
        let secret = self.secret.as_ref().filter(|_| kind == KeyKind::Oct);
        let only = match fitting.as_slice() {
            [key] if kid.is_none() => Some(&key.key),
            _ => None,
        };
        named.map(|k| &k.key).or(secret).or(only)
    }
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

/// Realtime's claim rules, applied once the signature is known to be good.
fn check_claims(all: Map<String, Value>, now: i64) -> Result<Claims, JwtError> {
    let role = match all.get("role") {
        Some(Value::String(role)) => role.clone(),
        _ => return Err(JwtError::MissingClaims),
    };
    let exp = all.get("exp").ok_or(JwtError::MissingClaims)?;
    let exp = exp.as_i64().or_else(|| exp.as_f64().map(|f| f.round() as i64)).ok_or(JwtError::InvalidExpiry)?;
    if all.get("iat").is_some_and(|iat| !iat.is_number()) {
        return Err(JwtError::InvalidExpiry);
    }
    if exp <= now {
        return Err(JwtError::Expired { seconds_ago: now.saturating_sub(exp) });
    }
    let sub = match all.get("sub") {
        None | Some(Value::Null) => None,
        Some(Value::String(sub)) => Some(sub.clone()),
        Some(other) => Some(other.to_string()),
    };
    Ok(Claims { role, exp, sub, all })
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
}
