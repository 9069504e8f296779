//! Roles and privileges, as Postgres defines them.
//!
//! A role ([`RoleDef`]) may log in, be a superuser, create roles or databases, and carries a
//! SCRAM-SHA-256 verifier (Postgres' `rolpassword` format), never a password. Tables and
//! schemas have an owner and an access-control list ([`Acl`]): `None` until the first GRANT
//! or REVOKE, meaning the default (the owner holds everything), then the explicit list
//! Postgres would print (`{alice=arwdDxt/alice,bob=r/alice}`). `public` starts with the
//! explicit ACL initdb gives it (PG 15: PUBLIC may use it, not create in it).
//!
//! Checks ([`Access`]): a superuser passes every check; anyone else needs the privilege in the
//! object's effective ACL, granted to them or to PUBLIC. Ownership (DROP, ALTER, GRANT) is
//! separate: the owner, or a superuser.

use orochi_common::error::{DbError, DbResult, SqlState};
use orochi_common::schema::TableDef;
use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;

/// The bootstrap superuser.
pub const BOOTSTRAP_SUPERUSER: &str = "postgres";
/// The predefined role that owns `public` (Postgres 15); it stands for the database owner.
pub const DATABASE_OWNER: &str = "pg_database_owner";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleDef {
    pub oid: u32,
    pub name: String,
    pub superuser: bool,
    pub inherit: bool,
    pub create_role: bool,
    pub create_db: bool,
    pub login: bool,
    pub replication: bool,
    pub bypass_rls: bool,
    /// -1: no limit.
    pub connection_limit: i32,
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub password: Option<String>,
    pub valid_until: Option<String>,
}

impl RoleDef {
    /// A role with Postgres' `CREATE ROLE` defaults (no login, nothing else).
    pub fn new(oid: u32, name: &str) -> RoleDef {
        RoleDef {
            oid,
            name: name.to_string(),
            superuser: false,
            inherit: true,
            create_role: false,
            create_db: false,
            login: false,
            replication: false,
            bypass_rls: false,
            connection_limit: -1,
            password: None,
            valid_until: None,
        }
    }

    pub fn bootstrap() -> RoleDef {
        RoleDef {
            superuser: true,
            create_role: true,
            create_db: true,
            login: true,
            replication: true,
            bypass_rls: true,
            ..RoleDef::new(10, BOOTSTRAP_SUPERUSER)
        }
    }
}

/// `GRANT role TO member`: the member has the role's privileges (when it inherits) and may
/// `SET ROLE` to it; with the admin option it may grant the role on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub role: String,
    pub member: String,
    pub grantor: String,
    pub admin_option: bool,
    /// Order of the grant (or of its last change): `pg_auth_members` lists memberships in
    /// it, as Postgres' heap does.
    #[serde(default)]
    pub seq: u64,
}

/// One privilege, with its letter in Postgres' ACL text (`arwdDxt`, `UC`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    Insert,
    Select,
    Update,
    Delete,
    Truncate,
    References,
    Trigger,
    Usage,
    Create,
}

/// Table privileges in the order Postgres prints them.
pub const TABLE_PRIVILEGES: &[Privilege] = &[
    Privilege::Insert,
    Privilege::Select,
    Privilege::Update,
    Privilege::Delete,
    Privilege::Truncate,
    Privilege::References,
    Privilege::Trigger,
];
pub const SCHEMA_PRIVILEGES: &[Privilege] = &[Privilege::Usage, Privilege::Create];
/// Sequence privileges in the order Postgres prints them (`rwU`).
pub const SEQUENCE_PRIVILEGES: &[Privilege] =
    &[Privilege::Select, Privilege::Update, Privilege::Usage];

impl Privilege {
    fn bit(self) -> u16 {
        1 << (self as u16)
    }

    pub fn letter(self) -> char {
        match self {
            Privilege::Insert => 'a',
            Privilege::Select => 'r',
            Privilege::Update => 'w',
            Privilege::Delete => 'd',
            Privilege::Truncate => 'D',
            Privilege::References => 'x',
            Privilege::Trigger => 't',
            Privilege::Usage => 'U',
            Privilege::Create => 'C',
        }
    }

    /// The SQL keyword (`has_table_privilege`'s spelling too).
    pub fn keyword(self) -> &'static str {
        match self {
            Privilege::Insert => "INSERT",
            Privilege::Select => "SELECT",
            Privilege::Update => "UPDATE",
            Privilege::Delete => "DELETE",
            Privilege::Truncate => "TRUNCATE",
            Privilege::References => "REFERENCES",
            Privilege::Trigger => "TRIGGER",
            Privilege::Usage => "USAGE",
            Privilege::Create => "CREATE",
        }
    }

    pub fn from_keyword(word: &str) -> Option<Privilege> {
        let all = TABLE_PRIVILEGES.iter().chain(SCHEMA_PRIVILEGES);
        all.copied()
            .find(|p| p.keyword().eq_ignore_ascii_case(word.trim()))
    }
}

/// A set of privileges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivSet(u16);

impl PrivSet {
    pub fn of(privs: &[Privilege]) -> PrivSet {
        PrivSet(privs.iter().fold(0, |m, p| m | p.bit()))
    }
    pub fn contains(self, p: Privilege) -> bool {
        self.0 & p.bit() != 0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn union(self, o: PrivSet) -> PrivSet {
        PrivSet(self.0 | o.0)
    }
    pub fn minus(self, o: PrivSet) -> PrivSet {
        PrivSet(self.0 & !o.0)
    }
    pub fn intersect(self, o: PrivSet) -> PrivSet {
        PrivSet(self.0 & o.0)
    }
}

/// What kind of object an ACL guards: which privileges exist, how messages name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    Table,
    Schema,
    /// Only its owner's default ACL so far (no GRANT on sequences yet).
    Sequence,
}

impl ObjectKind {
    pub fn privileges(self) -> &'static [Privilege] {
        match self {
            ObjectKind::Table => TABLE_PRIVILEGES,
            ObjectKind::Schema => SCHEMA_PRIVILEGES,
            ObjectKind::Sequence => SEQUENCE_PRIVILEGES,
        }
    }
    pub fn noun(self) -> &'static str {
        match self {
            ObjectKind::Table => "table",
            ObjectKind::Schema => "schema",
            ObjectKind::Sequence => "sequence",
        }
    }
}

/// One entry of an ACL: `grantee=privs/grantor` (`grantee` empty: PUBLIC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclItem {
    pub grantee: String,
    pub grantor: String,
    pub privs: PrivSet,
    /// The subset that may be granted on (`WITH GRANT OPTION`, printed as `*`).
    pub grantable: PrivSet,
}

impl AclItem {
    pub fn text(&self, kind: ObjectKind) -> String {
        let mut s = quote_acl_name(&self.grantee);
        s.push('=');
        for &p in kind.privileges() {
            if self.privs.contains(p) {
                s.push(p.letter());
                if self.grantable.contains(p) {
                    s.push('*');
                }
            }
        }
        s.push('/');
        s.push_str(&quote_acl_name(&self.grantor));
        s
    }
}

/// Postgres double-quotes names in ACL text that are not plain lower-case words.
fn quote_acl_name(name: &str) -> String {
    let plain = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// Owner and access list of a table or schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acl {
    pub owner: String,
    /// `None`: the default ACL (see [`Acl::effective`]).
    pub items: Option<Vec<AclItem>>,
}

impl Acl {
    pub fn owned_by(owner: &str) -> Acl {
        Acl {
            owner: owner.to_string(),
            items: None,
        }
    }

    /// The default ACL Postgres uses while `relacl`/`nspacl` is NULL: everything for the owner
    /// (who may always grant it on).
    pub fn default_items(&self, kind: ObjectKind) -> Vec<AclItem> {
        vec![AclItem {
            grantee: self.owner.clone(),
            grantor: self.owner.clone(),
            privs: PrivSet::of(kind.privileges()),
            grantable: PrivSet::default(),
        }]
    }

    /// `public` as initdb leaves it (PG 15): its owner may use and create in it, PUBLIC may
    /// use it; an explicit ACL, as Postgres shows it.
    pub fn public_schema() -> Acl {
        let mut acl = Acl::owned_by(DATABASE_OWNER);
        acl.grant(
            ObjectKind::Schema,
            "",
            DATABASE_OWNER,
            PrivSet::of(&[Privilege::Usage]),
            false,
        );
        acl
    }

    pub fn effective(&self, kind: ObjectKind) -> Vec<AclItem> {
        self.items
            .clone()
            .unwrap_or_else(|| self.default_items(kind))
    }

    /// `{a=r/b,…}` as `relacl`/`nspacl` print; `None` while the ACL is the default.
    pub fn text(&self, kind: ObjectKind) -> Option<Vec<String>> {
        self.items
            .as_ref()
            .map(|items| items.iter().map(|i| i.text(kind)).collect())
    }

    /// Adds `privs` for `grantee`, granted by `grantor`.
    pub fn grant(
        &mut self,
        kind: ObjectKind,
        grantee: &str,
        grantor: &str,
        privs: PrivSet,
        grant_option: bool,
    ) {
        let mut items = self.effective(kind);
        match items
            .iter_mut()
            .find(|i| i.grantee == grantee && i.grantor == grantor)
        {
            Some(i) => {
                i.privs = i.privs.union(privs);
                if grant_option {
                    i.grantable = i.grantable.union(privs);
                }
            }
            None => items.push(AclItem {
                grantee: grantee.to_string(),
                grantor: grantor.to_string(),
                privs,
                grantable: if grant_option {
                    privs
                } else {
                    PrivSet::default()
                },
            }),
        }
        self.items = Some(items);
    }

    /// Removes `privs` from what `grantor` granted `grantee` (`grant_option_only`: only the
    /// right to grant them on).
    pub fn revoke(
        &mut self,
        kind: ObjectKind,
        grantee: &str,
        grantor: &str,
        privs: PrivSet,
        grant_option_only: bool,
    ) {
        let mut items = self.effective(kind);
        for i in items
            .iter_mut()
            .filter(|i| i.grantee == grantee && i.grantor == grantor)
        {
            i.grantable = i.grantable.minus(privs);
            if !grant_option_only {
                i.privs = i.privs.minus(privs);
            }
        }
        items.retain(|i| !i.privs.is_empty());
        self.items = Some(items);
    }

    /// What `role` holds (its own grants and PUBLIC's), and which of those it may grant on.
    pub fn held_by(&self, kind: ObjectKind, role: &str) -> (PrivSet, PrivSet) {
        self.effective(kind)
            .iter()
            .filter(|i| i.grantee.is_empty() || i.grantee == role)
            .fold((PrivSet::default(), PrivSet::default()), |(h, g), i| {
                (h.union(i.privs), g.union(i.grantable))
            })
    }

    pub fn privileges_of(&self, kind: ObjectKind, role: &str) -> PrivSet {
        self.held_by(kind, role).0
    }

    /// Whether `role` appears in the ACL as grantee or grantor (DROP ROLE refuses then).
    pub fn mentions(&self, role: &str) -> bool {
        self.items
            .iter()
            .flatten()
            .any(|i| i.grantee == role || i.grantor == role)
    }

    /// Renames `from` to `to` wherever it appears.
    pub fn rename_role(&mut self, from: &str, to: &str) {
        if self.owner == from {
            self.owner = to.to_string();
        }
        for i in self.items.iter_mut().flatten() {
            if i.grantee == from {
                i.grantee = to.to_string();
            }
            if i.grantor == from {
                i.grantor = to.to_string();
            }
        }
    }
}

/// Who is asking: the current role, whether it is a superuser, and the roles whose
/// privileges it has (itself and the roles it inherits from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub role: String,
    pub superuser: bool,
    pub roles: Vec<String>,
}

impl Access {
    pub fn superuser() -> Access {
        Access {
            role: BOOTSTRAP_SUPERUSER.to_string(),
            superuser: true,
            roles: vec![BOOTSTRAP_SUPERUSER.to_string()],
        }
    }

    /// `role` as the catalog has it now.
    pub fn of(catalog: &Catalog, role: &str) -> Access {
        Access {
            role: role.to_string(),
            superuser: catalog.is_superuser(role),
            roles: catalog.roles_of(role, true),
        }
    }

    /// What the role holds on the object, its own grants, PUBLIC's and those of the roles it
    /// inherits from, and which of them it may grant on.
    pub fn held(&self, acl: &Acl, kind: ObjectKind) -> (PrivSet, PrivSet) {
        self.roles.iter().map(|r| acl.held_by(kind, r)).fold(
            (PrivSet::default(), PrivSet::default()),
            |(h, g), (h2, g2)| (h.union(h2), g.union(g2)),
        )
    }

    /// Whether the role owns the object, itself or through a role it inherits from.
    pub fn owns(&self, acl: &Acl) -> bool {
        self.roles.contains(&acl.owner)
    }

    /// Ok when the role holds `p` on the object; else `permission denied for <kind> <name>`.
    pub fn check(&self, acl: &Acl, kind: ObjectKind, name: &str, p: Privilege) -> DbResult<()> {
        if self.superuser || self.held(acl, kind).0.contains(p) {
            return Ok(());
        }
        Err(permission_denied(kind, name))
    }

    /// Ok for the owner (or a superuser); else `must be owner of <kind> <name>`.
    pub fn check_owner(&self, acl: &Acl, kind: ObjectKind, name: &str) -> DbResult<()> {
        if self.superuser || self.owns(acl) {
            return Ok(());
        }
        Err(DbError::new(
            SqlState::InsufficientPrivilege,
            format!("must be owner of {} {name}", kind.noun()),
        ))
    }
}

/// USAGE on the table's schema, then `p` on the table (a superuser passes).
pub fn check_table(catalog: &Catalog, who: &Access, def: &TableDef, p: Privilege) -> DbResult<()> {
    if who.superuser {
        return Ok(());
    }
    check_schema(catalog, who, &def.schema, Privilege::Usage)?;
    who.check(&catalog.table_acl(def.id), ObjectKind::Table, &def.name, p)
}

/// `p` on a schema (a superuser passes).
pub fn check_schema(catalog: &Catalog, who: &Access, schema: &str, p: Privilege) -> DbResult<()> {
    if who.superuser || schema == "pg_catalog" || schema == "information_schema" {
        return Ok(());
    }
    who.check(&catalog.schema_acl(schema), ObjectKind::Schema, schema, p)
}

/// DROP, ALTER, GRANT on a table: its owner or a superuser.
pub fn check_table_owner(catalog: &Catalog, who: &Access, def: &TableDef) -> DbResult<()> {
    who.check_owner(&catalog.table_acl(def.id), ObjectKind::Table, &def.name)
}

pub fn permission_denied_database(name: &str) -> DbError {
    DbError::new(
        SqlState::InsufficientPrivilege,
        format!("permission denied for database {name}"),
    )
}

pub fn permission_denied(kind: ObjectKind, name: &str) -> DbError {
    DbError::new(
        SqlState::InsufficientPrivilege,
        format!("permission denied for {} {name}", kind.noun()),
    )
}

/// Postgres' stored form of a password: an existing SCRAM verifier is kept as given (clients
/// may hash on their side, as psql's `\password` does); anything else is hashed here.
pub fn password_verifier(password: &str) -> String {
    if parse_verifier(password).is_some() {
        return password.to_string();
    }
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    let salt = crate::pgwire::auth::random_salt();
    let iterations = crate::pgwire::auth::SCRAM_ITERATIONS;
    let salted = pgwire::api::auth::sasl::scram::gen_salted_password(password, &salt, iterations);
    let pgwire::api::auth::sasl::scram::ScramSecret::Verifier {
        stored_key,
        server_key,
        ..
    } = pgwire::api::auth::sasl::scram::ScramSecret::verifier_from_salted_password(
        salt.clone(),
        salted,
        iterations,
    )
    else {
        unreachable!("verifier_from_salted_password builds a verifier")
    };
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        STANDARD.encode(&salt),
        STANDARD.encode(stored_key),
        STANDARD.encode(server_key)
    )
}

/// The parts of a stored SCRAM-SHA-256 verifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    pub iterations: usize,
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

/// Reads `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
pub fn parse_verifier(text: &str) -> Option<Verifier> {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    let rest = text.strip_prefix("SCRAM-SHA-256$")?;
    let (params, keys) = rest.split_once('$')?;
    let (iterations, salt) = params.split_once(':')?;
    let (stored, server) = keys.split_once(':')?;
    let iterations = iterations.parse().ok().filter(|&n| n > 0)?;
    let salt = STANDARD.decode(salt).ok()?;
    let stored = STANDARD.decode(stored).ok().filter(|k| k.len() == 32)?;
    let server = STANDARD.decode(server).ok().filter(|k| k.len() == 32)?;
    Some(Verifier {
        iterations,
        salt,
        stored_key: stored,
        server_key: server,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_text_matches_postgres() {
        let mut acl = Acl::owned_by("alice");
        assert_eq!(acl.text(ObjectKind::Table), None);
        acl.grant(
            ObjectKind::Table,
            "bob",
            "alice",
            PrivSet::of(&[Privilege::Select, Privilege::Insert]),
            false,
        );
        acl.grant(
            ObjectKind::Table,
            "",
            "alice",
            PrivSet::of(&[Privilege::Select]),
            true,
        );
        assert_eq!(
            acl.text(ObjectKind::Table).unwrap(),
            vec!["alice=arwdDxt/alice", "bob=ar/alice", "=r*/alice"]
        );
        acl.revoke(
            ObjectKind::Table,
            "bob",
            "alice",
            PrivSet::of(&[Privilege::Insert]),
            false,
        );
        assert!(
            acl.privileges_of(ObjectKind::Table, "bob")
                .contains(Privilege::Select)
        );
        assert!(
            !acl.privileges_of(ObjectKind::Table, "bob")
                .contains(Privilege::Insert)
        );
        // carol has what PUBLIC has
        assert!(
            acl.privileges_of(ObjectKind::Table, "carol")
                .contains(Privilege::Select)
        );
        let public = Acl::public_schema();
        assert!(
            public
                .privileges_of(ObjectKind::Schema, "carol")
                .contains(Privilege::Usage)
        );
        assert!(
            !public
                .privileges_of(ObjectKind::Schema, "carol")
                .contains(Privilege::Create)
        );
        assert_eq!(
            public.text(ObjectKind::Schema).unwrap(),
            vec![
                "pg_database_owner=UC/pg_database_owner",
                "=U/pg_database_owner"
            ]
        );
    }

    #[test]
    fn verifier_round_trip() {
        let v = password_verifier("s3cr3t");
        let parsed = parse_verifier(&v).expect("parses");
        assert_eq!(parsed.iterations, 4096);
        assert_eq!(parsed.salt.len(), 16);
        assert_eq!((parsed.stored_key.len(), parsed.server_key.len()), (32, 32));
        // a verifier given as the password is stored as is
        assert_eq!(password_verifier(&v), v);
    }
}
