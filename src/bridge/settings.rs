//! The `realtime.*` settings as plain values, read on the main thread (at
//! start and on SIGHUP) and handed to the network side whole.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub listen_addresses: String,
    pub port: u16,
    pub jwt_secret: Option<String>,
    pub jwt_jwks: Option<String>,
    pub private_only: bool,
    pub max_payload_bytes: usize,
    pub max_channels_per_client: usize,
    pub join_error_delay: Duration,
    /// How long a starting worker holds database broadcasts for clients to rejoin.
    pub restart_grace: Duration,
    /// `realtime.max_memory`: everything the worker holds, in bytes.
    pub max_memory_bytes: usize,
    /// The roles a token may name: anon, authenticated, service_role and the
    /// existing roles of `realtime.allowed_roles` (as the worker made them).
    pub allowed_roles: Vec<String>,
}

impl Settings {
    /// A change that needs the listening sockets bound again.
    pub fn listen_changed(&self, other: &Settings) -> bool {
        (&self.listen_addresses, self.port) != (&other.listen_addresses, other.port)
    }

    /// A change that invalidates every token already accepted.
    pub fn jwt_changed(&self, other: &Settings) -> bool {
        (&self.jwt_secret, &self.jwt_jwks) != (&other.jwt_secret, &other.jwt_jwks)
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen_addresses: "127.0.0.1".into(),
            port: 4000,
            jwt_secret: None,
            jwt_jwks: None,
            private_only: false,
            max_payload_bytes: 3000 * 1024,
            max_channels_per_client: 100,
            join_error_delay: Duration::from_secs(1),
            restart_grace: Duration::from_secs(5),
            max_memory_bytes: 256 * 1024 * 1024,
            allowed_roles: ["anon", "authenticated", "service_role"].map(String::from).into(),
        }
    }
}
