//! Supabase's opaque API keys (`sb_publishable_…`, `sb_secret_…`), which
//! projects made since May 2025 have instead of JWTs. Supabase's gateway
//! swaps each for a JWT of the role it stands for before Realtime sees it;
//! in front of this worker there is no gateway, so `realtime.api_keys` maps
//! each key to its role here, and a mapped key is accepted wherever a JWT
//! is, with the claims the gateway's JWT would carry. Pure: no Postgres.

use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

/// What every opaque key starts with.
pub const PREFIX: &str = "sb_";

/// The keys the settings name, and the role each stands for.
#[derive(Default)]
pub struct ApiKeys(Vec<(String, String)>);

impl std::fmt::Debug for ApiKeys {
    // The keys are secrets: only their roles reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|(_, role)| role)).finish()
    }
}

impl ApiKeys {
    /// `realtime.api_keys`: a JSON object of key → role; empty for none.
    pub fn parse(text: &str) -> Result<ApiKeys, String> {
        if text.trim().is_empty() {
            return Ok(ApiKeys::default());
        }
        let map: Map<String, Value> =
            serde_json::from_str(text).map_err(|_| "not a JSON object of key → role".to_owned())?;
        let mut keys = Vec::new();
        for (key, role) in map {
            if !key.starts_with(PREFIX) || key.len() < PREFIX.len() + 16 {
                return Err(format!("a key must start with {PREFIX} and be at least 19 characters long"));
            }
            match role {
                Value::String(role) if !role.is_empty() => keys.push((key, role)),
                _ => return Err("each key's role must be a non-empty string".into()),
            }
        }
        Ok(ApiKeys(keys))
    }

    /// The role `key` stands for; every configured key is compared in
    /// constant time, so timing tells nothing of how much of a key matched.
    pub fn role(&self, key: &str) -> Option<&str> {
        let mut found = None;
        for (candidate, role) in &self.0 {
            if bool::from(candidate.as_bytes().ct_eq(key.as_bytes())) {
                found = Some(role.as_str());
            }
        }
        found
    }

    /// The claims of the JWT Supabase's gateway would put in a mapped key's
    /// place: its role, and `iss: supabase`. No `exp`: the key does not
    /// expire while it is configured.
    pub fn claims(role: &str) -> Map<String, Value> {
        Map::from_iter([("role".to_owned(), role.into()), ("iss".to_owned(), "supabase".into())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PUBLISHABLE: &str = "sb_publishable_0123456789abcdef";
    const SECRET: &str = "sb_secret_0123456789abcdefghij";

    #[test]
    fn keys_map_to_their_roles_and_nothing_else_does() {
        let keys = ApiKeys::parse(&format!(r#"{{"{PUBLISHABLE}": "anon", "{SECRET}": "service_role"}}"#)).unwrap();
        assert_eq!(keys.role(PUBLISHABLE), Some("anon"));
        assert_eq!(keys.role(SECRET), Some("service_role"));
        assert_eq!(keys.role("sb_publishable_0123456789abcdeF"), None);
        assert_eq!(keys.role(&PUBLISHABLE[..PUBLISHABLE.len() - 1]), None);
        assert_eq!(keys.role(""), None);
        assert_eq!(format!("{keys:?}"), r#"["anon", "service_role"]"#, "no key in a log");
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        assert!(ApiKeys::parse("").unwrap().0.is_empty());
        assert!(ApiKeys::parse("[]").is_err());
        assert!(ApiKeys::parse(r#"{"sb_short": "anon"}"#).unwrap_err().contains("sb_"));
        assert!(ApiKeys::parse(r#"{"not_sb_0123456789abcdef": "anon"}"#).is_err());
        assert!(ApiKeys::parse(&format!(r#"{{"{PUBLISHABLE}": 1}}"#)).unwrap_err().contains("role"));
    }

    #[test]
    fn claims_are_the_gateway_s() {
        assert_eq!(Value::Object(ApiKeys::claims("anon")), json!({"role": "anon", "iss": "supabase"}));
    }
}
