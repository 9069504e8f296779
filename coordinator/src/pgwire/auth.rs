//! Client authentication: host-based rules choose the method, SCRAM-SHA-256 verifies
//! passwords against the roles' stored verifiers.
//!
//! Rules come from `hba_file` (Postgres' `pg_hba.conf` format: `host|hostssl|hostnossl
//! DATABASE USER ADDRESS METHOD`, first match wins, `trust`, `reject`, `scram-sha-256`, and
//! `md5`, which Postgres also answers with SCRAM when the password is stored as SCRAM).
//! Without a file: when passwords are configured (`[passwords]`, `OROCHI_PASSWORD`) every
//! login must pass SCRAM; otherwise loopback clients are trusted and everyone else must pass
//! SCRAM, as `initdb -A trust --auth-host=scram-sha-256` would set up.
//!
//! The SCRAM exchange itself is pgwire's; it reads the verifier from the catalog at each
//! login, so `ALTER ROLE … PASSWORD` takes effect for the next connection.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use pgwire::api::auth::sasl::scram::{ScramAuth, ScramSecret};
use pgwire::api::auth::{AuthSource, LoginInfo, Password};
use pgwire::error::{PgWireError, PgWireResult};

use crate::catalog::Catalog;

/// PBKDF2 iterations, Postgres' default (`scram_iterations`).
pub const SCRAM_ITERATIONS: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Trust,
    Reject,
    Scram,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnType {
    /// `host`: TLS or not.
    Any,
    /// `hostssl`
    Ssl,
    /// `hostnossl`
    NoSsl,
}

#[derive(Debug, Clone)]
enum Address {
    All,
    Net { base: IpAddr, prefix: u8 },
}

impl Address {
    fn matches(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match *self {
            Address::All => true,
            Address::Net { base, prefix } => match (base, ip) {
                (IpAddr::V4(b), IpAddr::V4(a)) => {
                    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                    u32::from(b) & mask == u32::from(a) & mask
                }
                (IpAddr::V6(b), IpAddr::V6(a)) => {
                    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                    u128::from(b) & mask == u128::from(a) & mask
                }
                _ => false,
            },
        }
    }
}

/// One line of the rules file.
#[derive(Debug, Clone)]
struct Rule {
    conn: ConnType,
    /// `None`: all.
    databases: Option<Vec<String>>,
    /// `None`: all.
    users: Option<Vec<String>>,
    address: Address,
    method: Method,
}

impl Rule {
    fn new(address: Address, method: Method) -> Rule {
        Rule {
            conn: ConnType::Any,
            databases: None,
            users: None,
            address,
            method,
        }
    }
}

/// Host-based access rules (see the module docs).
#[derive(Debug, Clone)]
pub struct HbaRules {
    rules: Vec<Rule>,
}

impl HbaRules {
    /// The rules used without an `hba_file`.
    pub fn default_for(passwords_configured: bool) -> HbaRules {
        let rules = if passwords_configured {
            vec![Rule::new(Address::All, Method::Scram)]
        } else {
            let loopback = |base: IpAddr, prefix| Address::Net { base, prefix };
            vec![
                Rule::new(loopback([127, 0, 0, 1].into(), 8), Method::Trust),
                Rule::new(
                    loopback(std::net::Ipv6Addr::LOCALHOST.into(), 128),
                    Method::Trust,
                ),
                Rule::new(Address::All, Method::Scram),
            ]
        };
        HbaRules { rules }
    }

    pub fn load(path: &Path) -> Result<HbaRules, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        HbaRules::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<HbaRules, String> {
        let mut rules = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let err = |m: &str| format!("line {}: {m}: \"{line}\"", n + 1);
            let conn = match fields[0] {
                "host" => ConnType::Any,
                "hostssl" => ConnType::Ssl,
                "hostnossl" => ConnType::NoSsl,
                // no Unix-domain socket is served
                "local" => continue,
                other => return Err(err(&format!("invalid connection type \"{other}\""))),
            };
            let [_, databases, users, address, method, ..] = fields[..] else {
                return Err(err("expected TYPE DATABASE USER ADDRESS METHOD"));
            };
            if fields.len() > 5 {
                return Err(err("authentication options are not supported"));
            }
            let list = |f: &str| -> Option<Vec<String>> {
                (f != "all").then(|| {
                    f.split(',')
                        .map(|s| s.trim_matches('"').to_string())
                        .collect()
                })
            };
            let address = if address == "all" {
                Address::All
            } else {
                let (ip, prefix) = address
                    .split_once('/')
                    .ok_or_else(|| err("the address needs a CIDR mask (a.b.c.d/n)"))?;
                let base: IpAddr = ip
                    .parse()
                    .map_err(|_| err(&format!("invalid IP address \"{ip}\"")))?;
                let max = if base.is_ipv4() { 32 } else { 128 };
                let prefix: u8 = prefix
                    .parse()
                    .ok()
                    .filter(|&p| p <= max)
                    .ok_or_else(|| err(&format!("invalid CIDR mask \"{prefix}\"")))?;
                Address::Net { base, prefix }
            };
            let method = match method {
                "trust" => Method::Trust,
                "reject" => Method::Reject,
                "scram-sha-256" | "md5" => Method::Scram,
                other => {
                    return Err(err(&format!(
                        "authentication method \"{other}\" is not supported \
                         (trust, reject, scram-sha-256, md5)"
                    )));
                }
            };
            rules.push(Rule {
                conn,
                databases: list(databases),
                users: list(users),
                address,
                method,
            });
        }
        Ok(HbaRules { rules })
    }

    /// The method for a connection; `None` when no rule matches.
    pub fn method(&self, ip: IpAddr, ssl: bool, database: &str, user: &str) -> Option<Method> {
        let named = |list: &Option<Vec<String>>, name: &str, sameuser: bool| match list {
            None => true,
            Some(names) => names
                .iter()
                .any(|n| n == name || (sameuser && n == "sameuser" && name == user)),
        };
        self.rules
            .iter()
            .find(|r| {
                (match r.conn {
                    ConnType::Any => true,
                    ConnType::Ssl => ssl,
                    ConnType::NoSsl => !ssl,
                }) && named(&r.databases, database, true)
                    && named(&r.users, user, false)
                    && r.address.matches(ip)
            })
            .map(|r| r.method)
    }
}

/// SCRAM secrets: the role's stored verifier.
pub struct RoleVerifiers {
    catalog: Arc<Catalog>,
}

impl std::fmt::Debug for RoleVerifiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleVerifiers").finish_non_exhaustive()
    }
}

#[async_trait]
impl AuthSource for RoleVerifiers {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        Err(PgWireError::InvalidPassword(
            login.user().unwrap_or_default().to_string(),
        ))
    }

    async fn get_scram_secret(&self, login: &LoginInfo) -> PgWireResult<(ScramSecret, Option<()>)> {
        let user = login.user().unwrap_or_default();
        // an unknown role, or one without a password, fails like a wrong password
        let verifier = self
            .catalog
            .role(user)
            .and_then(|r| r.password)
            .and_then(|p| crate::privilege::parse_verifier(&p))
            .ok_or_else(|| PgWireError::InvalidPassword(user.to_string()))?;
        Ok((
            ScramSecret::Verifier {
                salt: verifier.salt,
                iterations: verifier.iterations,
                stored_key: verifier.stored_key,
                server_key: verifier.server_key,
            },
            None,
        ))
    }
}

/// What the accept loop hands every connection: the rules and the SCRAM exchange.
#[derive(Debug, Clone)]
pub struct Authenticator {
    pub rules: HbaRules,
    pub scram: Arc<ScramAuth>,
}

impl Authenticator {
    pub fn new(catalog: Arc<Catalog>, rules: HbaRules) -> Authenticator {
        let mut scram = ScramAuth::new(Arc::new(RoleVerifiers { catalog }));
        scram.set_iterations(SCRAM_ITERATIONS);
        Authenticator {
            rules,
            scram: Arc::new(scram),
        }
    }
}

/// Applies configured passwords (`[passwords]`, `OROCHI_PASSWORD`) at start-up: each user
/// gets that password, and a role with LOGIN if it did not exist.
pub fn apply_configured_passwords(
    catalog: &Catalog,
    passwords: &BTreeMap<String, String>,
) -> orochi_common::error::DbResult<()> {
    for (user, password) in passwords {
        let mut role = match catalog.role(user) {
            Some(r) => r,
            None => {
                let mut r = crate::privilege::RoleDef::new(catalog.allocate_oid()?, user);
                r.login = true;
                r
            }
        };
        let unchanged = role
            .password
            .as_deref()
            .is_some_and(|v| verifier_matches(v, password));
        if !unchanged {
            role.password = Some(crate::privilege::password_verifier(password));
            catalog.put_role(role)?;
        }
    }
    Ok(())
}

/// Whether `verifier` was made from `password` (so a restart does not re-salt it).
fn verifier_matches(verifier: &str, password: &str) -> bool {
    let Some(v) = crate::privilege::parse_verifier(verifier) else {
        return false;
    };
    let salted =
        pgwire::api::auth::sasl::scram::gen_salted_password(password, &v.salt, v.iterations);
    match ScramSecret::verifier_from_salted_password(v.salt, salted, v.iterations) {
        ScramSecret::Verifier { stored_key, .. } => stored_key == v.stored_key,
        ScramSecret::SaltedPassword { .. } => false,
    }
}

/// 16 bytes of salt from the OS's random source.
pub fn random_salt() -> Vec<u8> {
    let mut salt = vec![0u8; 16];
    if getrandom::fill(&mut salt).is_err() {
        // no OS randomness: a salt only has to be unique, not secret
        use std::hash::{BuildHasher, Hasher};
        for (i, chunk) in salt.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(i);
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0),
            );
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    salt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_first_match_wins() {
        let rules = HbaRules::parse(
            "# comment\n\
             local all all trust\n\
             hostssl all alice 0.0.0.0/0 scram-sha-256\n\
             host    all alice 0.0.0.0/0 reject\n\
             host    sales,hr all 10.0.0.0/8 md5\n\
             host    all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        let lo: IpAddr = [127, 0, 0, 1].into();
        assert_eq!(rules.method(lo, true, "db", "alice"), Some(Method::Scram));
        assert_eq!(rules.method(lo, false, "db", "alice"), Some(Method::Reject));
        assert_eq!(rules.method(lo, false, "db", "bob"), Some(Method::Trust));
        let ten: IpAddr = [10, 1, 2, 3].into();
        assert_eq!(rules.method(ten, false, "hr", "bob"), Some(Method::Scram));
        assert_eq!(rules.method(ten, false, "postgres", "bob"), None);
        // an IPv4 client seen through an IPv6 socket
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(
            rules.method(mapped, false, "db", "bob"),
            Some(Method::Trust)
        );
    }

    #[test]
    fn bad_lines_are_reported_with_their_number() {
        let e = HbaRules::parse("host all all 127.0.0.1/32 trust\nhost all all 1.2.3.4 trust\n")
            .unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        assert!(HbaRules::parse("host all all all ident\n").is_err());
        assert!(HbaRules::parse("hots all all all trust\n").is_err());
    }

    #[test]
    fn default_rules_trust_loopback_only() {
        let rules = HbaRules::default_for(false);
        assert_eq!(
            rules.method([127, 0, 0, 1].into(), false, "postgres", "x"),
            Some(Method::Trust)
        );
        assert_eq!(
            rules.method([192, 168, 1, 2].into(), false, "postgres", "x"),
            Some(Method::Scram)
        );
        let rules = HbaRules::default_for(true);
        assert_eq!(
            rules.method([127, 0, 0, 1].into(), false, "postgres", "x"),
            Some(Method::Scram)
        );
    }
}
