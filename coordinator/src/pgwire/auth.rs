//! Password authentication: SCRAM-SHA-256 for users with a configured password.
//!
//! With no password configured the server trusts every client (the default for a loopback
//! standalone server). Once any password is configured, every login must pass SCRAM-SHA-256
//! (a user without a password cannot log in), and a failure is FATAL 28P01. Only the salted
//! password is kept in memory, derived once at start-up; the exchange itself is pgwire's.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use pgwire::api::auth::sasl::scram::{ScramAuth, gen_salted_password};
use pgwire::api::auth::{AuthSource, LoginInfo, Password};
use pgwire::error::{PgWireError, PgWireResult};

/// PBKDF2 iterations, Postgres' default (`scram_iterations`).
const SCRAM_ITERATIONS: usize = 4096;

/// Salted passwords by user name.
#[derive(Debug)]
pub struct PasswordDb {
    users: HashMap<String, Password>,
}

impl PasswordDb {
    pub fn new(passwords: &BTreeMap<String, String>) -> PasswordDb {
        let users = passwords
            .iter()
            .map(|(user, password)| {
                let salt = random_salt();
                let salted = gen_salted_password(password, &salt, SCRAM_ITERATIONS);
                (user.clone(), Password::new(Some(salt), salted))
            })
            .collect();
        PasswordDb { users }
    }

    /// The SCRAM configuration, or `None` when no password is configured (trust).
    pub fn scram(passwords: &BTreeMap<String, String>) -> Option<Arc<ScramAuth>> {
        if passwords.is_empty() {
            return None;
        }
        let mut auth = ScramAuth::new(Arc::new(PasswordDb::new(passwords)));
        auth.set_iterations(SCRAM_ITERATIONS);
        Some(Arc::new(auth))
    }
}

#[async_trait]
impl AuthSource for PasswordDb {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let user = login.user().unwrap_or_default();
        self.users
            .get(user)
            .cloned()
            .ok_or_else(|| PgWireError::InvalidPassword(user.to_string()))
    }
}

fn random_salt() -> Vec<u8> {
    use std::hash::{BuildHasher, Hasher};
    let mut salt = Vec::with_capacity(16);
    for i in 0..2u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        salt.extend_from_slice(&h.finish().to_le_bytes());
    }
    salt
}
