//! Tokens: what a client may claim. A role realtime_worker may not assume,
//! an `nbf` in the future and a claim the settings require but the token
//! lacks are refused at connect, at join and on a refresh; asymmetric keys
//! from `realtime.jwt_jwks` (RS256, ES256, EdDSA) are accepted and picked by
//! `kid`. Tests that change the token settings disconnect every socket, so
//! they take turns.

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use realtime_e2e::*;
use serde_json::{Value, json};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The connect refusal: (status, `error` text).
async fn refused_at_connect(token: &str) -> (u16, String) {
    let (status, body) = get(&format!("/realtime/v1/websocket?apikey={token}&vsn=2.0.0")).await;
    let error = serde_json::from_str::<Value>(&body).ok().and_then(|b| b["error"].as_str().map(str::to_owned));
    (status, error.unwrap_or(body))
}

const NOT_ASSUMABLE: &str = "The role \"postgres\" is not one this server lets clients assume";

#[tokio::test]
async fn a_role_clients_may_not_assume_is_refused_everywhere() {
    let _turn = SERIAL.lock().await;
    let superuser = jwt_with("postgres", json!({"sub": "mallory"}));
    assert_eq!(refused_at_connect(&superuser).await, (401, NOT_ASSUMABLE.to_owned()));

    let mut c = Client::connect(Vsn::V2, &jwt("anon")).await;
    let topic = format!("realtime:{}", unique("role"));
    let (_, reply) = c.join(&topic, json!({"config": {"private": true}, "access_token": superuser})).await;
    assert_eq!(reply["response"]["reason"], format!("InvalidJWTToken: {NOT_ASSUMABLE}"));

    // A refresh to it ends the channel.
    let jr = c.join_ok(&topic, json!({})).await;
    c.push(Some(&jr), None, &topic, "access_token", json!({"access_token": superuser})).await;
    let system = c.recv_event("system").await;
    assert_eq!(system.payload["message"], NOT_ASSUMABLE);
    c.recv_event("phx_close").await;

    // So does REST.
    let bearer = format!("Bearer {superuser}");
    let body = json!({"messages": [{"topic": "x", "event": "e", "payload": {}}]}).to_string();
    let (status, _) =
        post("/api/broadcast", &[("authorization", &bearer), ("content-type", "application/json")], body.as_bytes())
            .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_token_not_valid_yet_is_refused() {
    let _turn = SERIAL.lock().await;
    let later = jwt_with("anon", json!({"nbf": now() + 120}));
    let (status, error) = refused_at_connect(&later).await;
    assert_eq!(status, 401);
    assert!(error.starts_with("Token is not valid yet (nbf), it becomes valid in 1"), "{error}");
    // One already valid is fine.
    let mut c = Client::connect(Vsn::V2, &jwt_with("anon", json!({"nbf": now() - 5}))).await;
    c.join_ok(&format!("realtime:{}", unique("nbf")), json!({})).await;
}

#[tokio::test]
async fn claims_the_settings_require_are_checked() {
    let _turn = SERIAL.lock().await;
    let _validators =
        SystemSetting::set("realtime.jwt_claim_validators", r#"{"iss": "https://issuer.example", "aud": "realtime"}"#);
    let good = jwt_with("anon", json!({"iss": "https://issuer.example", "aud": ["realtime", "other"]}));
    let mut c = Client::connect(Vsn::V2, &good).await;
    c.join_ok(&format!("realtime:{}", unique("claims")), json!({})).await;
    for (claims, claim) in [
        (json!({"iss": "https://elsewhere.example", "aud": "realtime"}), "iss"),
        (json!({"iss": "https://issuer.example", "aud": "other"}), "aud"),
        (json!({"aud": "realtime"}), "iss"),
    ] {
        let (status, error) = refused_at_connect(&jwt_with("anon", claims)).await;
        assert_eq!((status, error), (401, format!("Token claim `{claim}` does not match what this server accepts")));
    }
}

#[tokio::test]
async fn a_bad_validator_setting_refuses_every_token() {
    let _turn = SERIAL.lock().await;
    let _validators = SystemSetting::set("realtime.jwt_claim_validators", "[1, 2]");
    assert_eq!(
        refused_at_connect(&jwt("anon")).await,
        (401, "The role \"anon\" is not one this server lets clients assume".into())
    );
}

struct SigningKey {
    alg: Algorithm,
    kid: &'static str,
    key: EncodingKey,
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).expect("a test key")
}

fn signing_keys() -> Vec<SigningKey> {
    vec![
        SigningKey {
            alg: Algorithm::RS256,
            kid: "rsa-1",
            key: EncodingKey::from_rsa_pem(&fixture("rs256.pem")).unwrap(),
        },
        SigningKey {
            alg: Algorithm::ES256,
            kid: "ec-1",
            key: EncodingKey::from_ec_pem(&fixture("es256.pem")).unwrap(),
        },
        SigningKey {
            alg: Algorithm::EdDSA,
            kid: "ed-1",
            key: EncodingKey::from_ed_pem(&fixture("eddsa.pem")).unwrap(),
        },
    ]
}

fn sign(key: &SigningKey, kid: &str, role: &str) -> String {
    let mut header = Header::new(key.alg);
    header.kid = Some(kid.to_owned());
    let claims = json!({"role": role, "exp": now() + 3600, "iat": now(), "sub": "jwks-user"});
    jsonwebtoken::encode(&header, &claims, &key.key).unwrap()
}

#[tokio::test]
async fn jwks_tokens_are_accepted_and_picked_by_kid() {
    let _turn = SERIAL.lock().await;
    let keys = signing_keys();
    let public: Vec<Jwk> = keys
        .iter()
        .map(|k| {
            let mut jwk = Jwk::from_encoding_key(&k.key, k.alg).unwrap();
            jwk.common.key_id = Some(k.kid.to_owned());
            jwk
        })
        .collect();
    let set = serde_json::to_string(&JwkSet { keys: public }).unwrap();
    let _jwks = SystemSetting::set("realtime.jwt_jwks", &set);

    for key in &keys {
        let token = sign(key, key.kid, "authenticated");
        let mut c = Client::connect(Vsn::V2, &token).await;
        c.join_ok(&format!("realtime:{}", unique("jwks")), json!({})).await;
        let bearer = format!("Bearer {token}");
        let body = json!({"messages": [{"topic": "jwks", "event": "e", "payload": {}}]}).to_string();
        let headers = [("authorization", bearer.as_str()), ("content-type", "application/json")];
        assert_eq!(post("/api/broadcast", &headers, body.as_bytes()).await.0, 202, "{:?} over REST", key.alg);
    }
    // Signed with one key, naming another's kid; or a kid nobody published.
    let (rsa, ec) = (&keys[0], &keys[1]);
    assert_eq!(refused_at_connect(&sign(rsa, ec.kid, "anon")).await, (401, "Failed to validate JWT signature".into()));
    assert_eq!(
        refused_at_connect(&sign(rsa, "unknown", "anon")).await,
        (401, "Failed to validate JWT signature".into())
    );
    // The HS256 secret still works beside the key set.
    Client::connect(Vsn::V2, &jwt("anon")).await.join_ok(&format!("realtime:{}", unique("hs")), json!({})).await;
}
