//! `CREATE ROLE`/`USER`, `ALTER ROLE`, `DROP ROLE`, `GRANT`/`REVOKE` on tables and schemas,
//! `SET ROLE` and `SET SESSION AUTHORIZATION` — with Postgres' rules for who may do what.

use datafusion::sql::sqlparser::ast;
use orochi_common::error::{DbError, DbResult, SqlState};

use crate::handler::dml::{normalize_ident, resolve_table};
use crate::privilege::{
    Acl, ObjectKind, PrivSet, Privilege, RoleDef, password_verifier, permission_denied,
};
use crate::session::{Session, StatementResult};

fn role_missing(name: &str) -> DbError {
    DbError::new(
        SqlState::UndefinedObject,
        format!("role \"{name}\" does not exist"),
    )
}

fn string_literal(e: &ast::Expr, what: &str) -> DbResult<String> {
    match e {
        ast::Expr::Value(v) => match &v.value {
            ast::Value::SingleQuotedString(s) | ast::Value::EscapedStringLiteral(s) => {
                Ok(s.clone())
            }
            ast::Value::Number(n, _) => Ok(n.clone()),
            _ => Err(DbError::new(
                SqlState::SyntaxError,
                format!("{what} must be a string constant"),
            )),
        },
        _ => Err(DbError::new(
            SqlState::SyntaxError,
            format!("{what} must be a constant"),
        )),
    }
}

/// Who may create, alter or drop roles: a superuser, or a role with CREATEROLE (which may not
/// touch superusers).
fn check_role_admin(s: &Session, target: Option<&RoleDef>, verb: &str) -> DbResult<()> {
    let me = s.instance.catalog.role(&s.role);
    let superuser = me.as_ref().is_some_and(|r| r.superuser);
    let create_role = me.as_ref().is_some_and(|r| r.create_role);
    if superuser {
        return Ok(());
    }
    if target.is_some_and(|t| t.superuser) {
        return Err(DbError::new(
            SqlState::InsufficientPrivilege,
            format!("permission denied to {verb} role"),
        )
        .with_detail(
            "Only roles with the SUPERUSER attribute may alter roles with the SUPERUSER attribute.",
        ));
    }
    if !create_role {
        return Err(DbError::new(
            SqlState::InsufficientPrivilege,
            format!("permission denied to {verb} role"),
        ));
    }
    Ok(())
}

/// Applies role options to `role`; `superuser_asked` tells whether SUPERUSER etc. were given.
fn apply_option(role: &mut RoleDef, option: &ast::RoleOption) -> DbResult<bool> {
    use ast::RoleOption as O;
    let mut needs_superuser = false;
    match option {
        O::BypassRLS(b) => {
            role.bypass_rls = *b;
            needs_superuser = true;
        }
        O::ConnectionLimit(e) => {
            let n: i32 = string_literal(e, "CONNECTION LIMIT")?
                .parse()
                .ok()
                .filter(|&n| n >= -1)
                .ok_or_else(|| {
                    DbError::new(SqlState::InvalidParameterValue, "invalid connection limit")
                })?;
            role.connection_limit = n;
        }
        O::CreateDB(b) => role.create_db = *b,
        O::CreateRole(b) => role.create_role = *b,
        O::Inherit(b) => role.inherit = *b,
        O::Login(b) => role.login = *b,
        O::Password(ast::Password::NullPassword) => role.password = None,
        O::Password(ast::Password::Password(e)) => {
            let p = string_literal(e, "password")?;
            // Postgres: an empty password is no password
            role.password = (!p.is_empty()).then(|| password_verifier(&p));
        }
        O::Replication(b) => {
            role.replication = *b;
            needs_superuser = true;
        }
        O::SuperUser(b) => {
            role.superuser = *b;
            needs_superuser = true;
        }
        O::ValidUntil(e) => role.valid_until = Some(string_literal(e, "VALID UNTIL")?),
    }
    Ok(needs_superuser)
}

fn check_new_name(name: &str) -> DbResult<()> {
    if name.starts_with("pg_") {
        return Err(DbError::new(
            SqlState::ReservedName,
            format!("role name \"{name}\" is reserved"),
        )
        .with_detail("Role names starting with \"pg_\" are reserved."));
    }
    if name == "public" || name == "none" {
        return Err(DbError::new(
            SqlState::ReservedName,
            format!("role name \"{name}\" is reserved"),
        ));
    }
    Ok(())
}

fn is_superuser(s: &Session) -> bool {
    s.instance.catalog.is_superuser(&s.role)
}

pub fn handle_create_role(s: &Session, cr: &ast::CreateRole) -> DbResult<StatementResult> {
    check_role_admin(s, None, "create")?;
    let catalog = &s.instance.catalog;
    // IN ROLE/IN GROUP: roles the new one joins; ROLE/USER: members it gets; ADMIN: members
    // with the admin option. All must exist before anything is created.
    let names = |list: &[ast::Ident]| -> DbResult<Vec<RoleDef>> {
        list.iter()
            .map(|i| {
                let n = normalize_ident(i);
                catalog.role(&n).ok_or_else(|| role_missing(&n))
            })
            .collect()
    };
    let joins = names(&[cr.in_role.clone(), cr.in_group.clone()].concat())?;
    let members = names(&[cr.role.clone(), cr.user.clone()].concat())?;
    let admins = names(&cr.admin)?;
    for name in &cr.names {
        let name = name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .map(normalize_ident)
            .unwrap_or_default();
        check_new_name(&name)?;
        if catalog.role(&name).is_some() {
            if cr.if_not_exists {
                continue;
            }
            return Err(DbError::new(
                SqlState::DuplicateObject,
                format!("role \"{name}\" already exists"),
            ));
        }
        let mut role = RoleDef::new(catalog.allocate_oid()?, &name);
        let mut options = Vec::new();
        use ast::RoleOption as O;
        let flag = |o: Option<bool>, f: fn(bool) -> O| o.map(f);
        options.extend(flag(cr.superuser, O::SuperUser));
        options.extend(flag(cr.create_db, O::CreateDB));
        options.extend(flag(cr.create_role, O::CreateRole));
        options.extend(flag(cr.inherit, O::Inherit));
        options.extend(flag(cr.login, O::Login));
        options.extend(flag(cr.replication, O::Replication));
        options.extend(flag(cr.bypassrls, O::BypassRLS));
        options.extend(cr.password.clone().map(O::Password));
        options.extend(cr.connection_limit.clone().map(O::ConnectionLimit));
        options.extend(cr.valid_until.clone().map(O::ValidUntil));
        for o in &options {
            if apply_option(&mut role, o)? && !is_superuser(s) {
                return Err(DbError::new(
                    SqlState::InsufficientPrivilege,
                    "permission denied to create role",
                )
                .with_detail(
                    "Only roles with the SUPERUSER attribute may create roles with the \
                     SUPERUSER, REPLICATION or BYPASSRLS attribute.",
                ));
            }
        }
        catalog.put_role(role.clone())?;
        for joined in &joins {
            add_member(s, joined, &role.name, false)?;
        }
        for (m, admin) in members
            .iter()
            .map(|m| (m, false))
            .chain(admins.iter().map(|m| (m, true)))
        {
            add_member(s, &role, &m.name, admin)?;
        }
    }
    Ok(StatementResult::Command("CREATE ROLE".into()))
}

pub fn handle_alter_role(
    s: &mut Session,
    name: &ast::Ident,
    operation: &ast::AlterRoleOperation,
) -> DbResult<StatementResult> {
    let catalog = s.instance.catalog.clone();
    let name = normalize_ident(name);
    let Some(mut role) = catalog.role(&name) else {
        return Err(role_missing(&name));
    };
    match operation {
        ast::AlterRoleOperation::RenameRole { role_name } => {
            check_role_admin(s, Some(&role), "rename")?;
            let to = normalize_ident(role_name);
            if name == s.user || name == s.role {
                return Err(DbError::new(
                    SqlState::FeatureNotSupported,
                    "session user cannot be renamed",
                ));
            }
            check_new_name(&to)?;
            if catalog.role(&to).is_some() {
                return Err(DbError::new(
                    SqlState::DuplicateObject,
                    format!("role \"{to}\" already exists"),
                ));
            }
            catalog.rename_role(&name, &to)?;
            Ok(StatementResult::Command("ALTER ROLE".into()))
        }
        ast::AlterRoleOperation::WithOptions { options } => {
            // a role may change its own password
            let own_password_only = name == s.role
                && options
                    .iter()
                    .all(|o| matches!(o, ast::RoleOption::Password(_)));
            if !own_password_only {
                check_role_admin(s, Some(&role), "alter")?;
            }
            for o in options {
                if apply_option(&mut role, o)? && !is_superuser(s) {
                    return Err(DbError::new(
                        SqlState::InsufficientPrivilege,
                        "permission denied to alter role",
                    )
                    .with_detail(
                        "Only roles with the SUPERUSER attribute may change the SUPERUSER, \
                         REPLICATION or BYPASSRLS attribute.",
                    ));
                }
            }
            catalog.put_role(role)?;
            Ok(StatementResult::Command("ALTER ROLE".into()))
        }
        _ => Err(DbError::new(
            SqlState::FeatureNotSupported,
            "ALTER ROLE … SET/RESET and role membership are not supported yet",
        )),
    }
}

pub fn handle_drop_roles(
    s: &Session,
    names: &[ast::ObjectName],
    if_exists: bool,
) -> DbResult<StatementResult> {
    let catalog = &s.instance.catalog;
    for name in names {
        let name = name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .map(normalize_ident)
            .unwrap_or_default();
        let Some(role) = catalog.role(&name) else {
            if if_exists {
                continue;
            }
            return Err(role_missing(&name));
        };
        check_role_admin(s, Some(&role), "drop")?;
        if name == s.role || name == s.user {
            return Err(DbError::new(
                SqlState::ObjectInUse,
                if name == s.role {
                    "current user cannot be dropped"
                } else {
                    "session user cannot be dropped"
                },
            ));
        }
        if name == crate::privilege::BOOTSTRAP_SUPERUSER {
            return Err(DbError::new(
                SqlState::ObjectInUse,
                format!("cannot drop role {name} because it is required by the database system"),
            ));
        }
        let deps = catalog.role_dependencies(&name);
        if !deps.is_empty() {
            return Err(DbError::new(
                SqlState::DependentObjectsStillExist,
                format!("role \"{name}\" cannot be dropped because some objects depend on it"),
            )
            .with_detail(deps.join("\n")));
        }
        catalog.remove_role(&name)?;
    }
    Ok(StatementResult::Command("DROP ROLE".into()))
}

/// The privileges a GRANT/REVOKE names, for objects of `kind`.
fn privileges(p: &ast::Privileges, kind: ObjectKind) -> DbResult<PrivSet> {
    let actions = match p {
        ast::Privileges::All { .. } => return Ok(PrivSet::of(kind.privileges())),
        ast::Privileges::Actions(a) => a,
    };
    let mut out = Vec::new();
    for a in actions {
        let (privilege, columns) = match a {
            ast::Action::Select { columns } => (Privilege::Select, columns.as_ref()),
            ast::Action::Insert { columns } => (Privilege::Insert, columns.as_ref()),
            ast::Action::Update { columns } => (Privilege::Update, columns.as_ref()),
            ast::Action::References { columns } => (Privilege::References, columns.as_ref()),
            ast::Action::Delete => (Privilege::Delete, None),
            ast::Action::Truncate => (Privilege::Truncate, None),
            ast::Action::Trigger => (Privilege::Trigger, None),
            ast::Action::Usage => (Privilege::Usage, None),
            ast::Action::Create { obj_type: None } => (Privilege::Create, None),
            other => {
                return Err(DbError::new(
                    SqlState::FeatureNotSupported,
                    format!("privilege {other} is not supported"),
                ));
            }
        };
        if columns.is_some() {
            return Err(DbError::new(
                SqlState::FeatureNotSupported,
                "column privileges are not supported yet",
            ));
        }
        if !kind.privileges().contains(&privilege) {
            return Err(DbError::new(
                SqlState::InvalidGrantOperation,
                format!(
                    "invalid privilege type {} for {}",
                    privilege.keyword(),
                    kind.noun()
                ),
            ));
        }
        out.push(privilege);
    }
    Ok(PrivSet::of(&out))
}

/// Grantee names (`""` for PUBLIC), each an existing role.
fn grantees(s: &Session, list: &[ast::Grantee]) -> DbResult<Vec<String>> {
    let mut out = Vec::new();
    for g in list {
        if matches!(g.grantee_type, ast::GranteesType::Public) {
            out.push(String::new());
            continue;
        }
        let name = match &g.name {
            Some(ast::GranteeName::ObjectName(n)) => {
                n.0.last()
                    .and_then(|p| p.as_ident())
                    .map(normalize_ident)
                    .unwrap_or_default()
            }
            _ => {
                return Err(DbError::new(
                    SqlState::FeatureNotSupported,
                    "this kind of grantee is not supported",
                ));
            }
        };
        if name == "public" {
            out.push(String::new());
            continue;
        }
        if s.instance.catalog.role(&name).is_none() {
            return Err(role_missing(&name));
        }
        out.push(name);
    }
    Ok(out)
}

/// One object a GRANT/REVOKE acts on.
enum Target {
    Table(std::sync::Arc<orochi_common::schema::TableDef>),
    Schema(String),
}

fn targets(s: &Session, objects: Option<&ast::GrantObjects>) -> DbResult<Vec<Target>> {
    let Some(objects) = objects else {
        return Err(DbError::new(
            SqlState::FeatureNotSupported,
            "granting roles to roles is not supported yet",
        ));
    };
    let schema_name = |n: &ast::ObjectName| -> DbResult<String> {
        let name =
            n.0.last()
                .and_then(|p| p.as_ident())
                .map(normalize_ident)
                .unwrap_or_default();
        if !s.instance.catalog.schema_exists(&name) {
            return Err(DbError::new(
                SqlState::InvalidSchemaName,
                format!("schema \"{name}\" does not exist"),
            ));
        }
        Ok(name)
    };
    Ok(match objects {
        ast::GrantObjects::Tables(names) => names
            .iter()
            .map(|n| resolve_table(s, n).map(Target::Table))
            .collect::<DbResult<_>>()?,
        ast::GrantObjects::AllTablesInSchema { schemas } => {
            let mut out = Vec::new();
            for n in schemas {
                let schema = schema_name(n)?;
                out.extend(
                    s.instance
                        .catalog
                        .tables_in(&schema)
                        .into_iter()
                        .map(Target::Table),
                );
            }
            out
        }
        ast::GrantObjects::Schemas(names) => names
            .iter()
            .map(|n| schema_name(n).map(Target::Schema))
            .collect::<DbResult<_>>()?,
        _ => {
            return Err(DbError::new(
                SqlState::FeatureNotSupported,
                "GRANT/REVOKE is supported on tables and schemas only",
            ));
        }
    })
}

fn kind_of(objects: Option<&ast::GrantObjects>) -> ObjectKind {
    match objects {
        Some(ast::GrantObjects::Schemas(_)) => ObjectKind::Schema,
        _ => ObjectKind::Table,
    }
}

/// GRANT and REVOKE share everything but the change itself.
fn change_acls(
    s: &Session,
    objects: Option<&ast::GrantObjects>,
    privs: &ast::Privileges,
    grantees_list: &[ast::Grantee],
    change: impl Fn(&mut Acl, ObjectKind, &str, &str, PrivSet),
) -> DbResult<()> {
    let kind = kind_of(objects);
    let privs = privileges(privs, kind)?;
    let targets = targets(s, objects)?;
    let grantees = grantees(s, grantees_list)?;
    let access = s.access();
    let catalog = &s.instance.catalog;
    for t in targets {
        let (mut acl, name) = match &t {
            Target::Table(def) => (catalog.table_acl(def.id), def.name.clone()),
            Target::Schema(n) => (catalog.schema_acl(n), n.clone()),
        };
        // A superuser acts as the owner. Anyone else grants (and revokes) what they hold
        // with grant option, as themselves; holding a privilege without it grants nothing
        // (Postgres warns), holding none is an error.
        let (grantor, privs) = if access.superuser || access.owns(&acl) {
            (acl.owner.clone(), privs)
        } else {
            let (held, grantable) = access.held(&acl, kind);
            if held.is_empty() {
                return Err(permission_denied(kind, &name));
            }
            (access.role.clone(), privs.intersect(grantable))
        };
        if privs.is_empty() {
            continue;
        }
        for g in &grantees {
            change(&mut acl, kind, g, &grantor, privs);
        }
        match &t {
            Target::Table(def) => catalog.put_table_acl(def.id, &acl)?,
            Target::Schema(n) => catalog.put_schema_acl(n, &acl)?,
        }
    }
    Ok(())
}

/// The roles of `GRANT r1, r2 TO …` / `REVOKE r1, r2 FROM …` (parsed as `ROLE r1, ROLE r2`,
/// see `pgwire::parse`); `None` for a grant of privileges.
fn granted_roles(
    privileges: &ast::Privileges,
    objects: Option<&ast::GrantObjects>,
) -> Option<Vec<String>> {
    let ast::Privileges::Actions(actions) = privileges else {
        return None;
    };
    if objects.is_some() || actions.is_empty() {
        return None;
    }
    actions
        .iter()
        .map(|a| match a {
            ast::Action::Role { role } => role
                .0
                .last()
                .and_then(|p| p.as_ident())
                .map(normalize_ident),
            _ => None,
        })
        .collect()
}

/// Who may grant or revoke membership in `role`: a superuser; for a role that is not a
/// superuser, a role with CREATEROLE or a member with the admin option (Postgres 15).
fn check_membership_admin(s: &Session, role: &RoleDef) -> DbResult<()> {
    let catalog = &s.instance.catalog;
    let me = catalog.role(&s.role);
    if me.as_ref().is_some_and(|r| r.superuser) {
        return Ok(());
    }
    if role.superuser {
        return Err(DbError::new(
            SqlState::InsufficientPrivilege,
            "must be superuser to alter superusers",
        ));
    }
    if me.as_ref().is_some_and(|r| r.create_role) {
        return Ok(());
    }
    let admin = catalog.roles_of(&s.role, false).iter().any(|r| {
        catalog
            .membership(&role.name, r)
            .is_some_and(|m| m.admin_option)
    });
    if !admin {
        return Err(DbError::new(
            SqlState::InsufficientPrivilege,
            format!("must have admin option on role \"{}\"", role.name),
        ));
    }
    Ok(())
}

/// Makes `member` a member of `role` (with the admin option: adds it), as the session's role
/// may: the admin rules, no cycles, nothing to do if it already is one.
fn add_member(s: &Session, role: &RoleDef, member: &str, admin_option: bool) -> DbResult<()> {
    let catalog = &s.instance.catalog;
    let name = &role.name;
    check_membership_admin(s, role)?;
    if member.is_empty() {
        return Err(DbError::new(
            SqlState::InvalidGrantOperation,
            "role \"public\" cannot be granted to other roles",
        ));
    }
    // no cycles: the role must not already be (through others) a member of the member
    if catalog.roles_of(name, false).iter().any(|r| r == member) {
        return Err(DbError::new(
            SqlState::InvalidGrantOperation,
            format!("role \"{name}\" is a member of role \"{member}\""),
        ));
    }
    let existing = catalog.membership(name, member);
    // already a member (with the admin option, if asked): nothing to do, as Postgres (which
    // says so in a NOTICE)
    if existing.is_some_and(|m| m.admin_option || !admin_option) {
        return Ok(());
    }
    catalog.put_membership(&crate::privilege::Membership {
        role: name.clone(),
        member: member.to_string(),
        grantor: s.role.clone(),
        admin_option,
        seq: 0,
    })
}

/// `GRANT role, … TO member, … [WITH ADMIN OPTION]`.
fn grant_roles(s: &Session, roles: &[String], g: &ast::Grant) -> DbResult<StatementResult> {
    let catalog = &s.instance.catalog;
    let members = grantees(s, &g.grantees)?;
    if g.granted_by.is_some() || g.as_grantor.is_some() {
        return Err(DbError::new(
            SqlState::FeatureNotSupported,
            "GRANTED BY is not supported",
        ));
    }
    for name in roles {
        let role = catalog.role(name).ok_or_else(|| role_missing(name))?;
        for member in &members {
            add_member(s, &role, member, g.with_grant_option)?;
        }
    }
    Ok(StatementResult::Command("GRANT ROLE".into()))
}

/// `REVOKE [ADMIN OPTION FOR] role, … FROM member, …`.
fn revoke_roles(s: &Session, roles: &[String], r: &ast::Revoke) -> DbResult<StatementResult> {
    let catalog = &s.instance.catalog;
    let admin_option_for =
        r.granted_by.as_ref() == Some(&crate::pgwire::parse::admin_option_marker());
    if r.granted_by.is_some() && !admin_option_for {
        return Err(DbError::new(
            SqlState::FeatureNotSupported,
            "GRANTED BY is not supported",
        ));
    }
    let members = grantees(s, &r.grantees)?;
    for name in roles {
        let role = catalog.role(name).ok_or_else(|| role_missing(name))?;
        check_membership_admin(s, &role)?;
        for member in &members {
            // not a member: Postgres warns and goes on
            let Some(mut m) = catalog.membership(name, member) else {
                continue;
            };
            if admin_option_for {
                m.admin_option = false;
                catalog.put_membership(&m)?;
            } else {
                catalog.remove_membership(name, member)?;
            }
        }
    }
    Ok(StatementResult::Command("REVOKE ROLE".into()))
}

pub fn handle_grant(s: &Session, g: &ast::Grant) -> DbResult<StatementResult> {
    if let Some(roles) = granted_roles(&g.privileges, g.objects.as_ref()) {
        return grant_roles(s, &roles, g);
    }
    let option = g.with_grant_option;
    change_acls(
        s,
        g.objects.as_ref(),
        &g.privileges,
        &g.grantees,
        |acl, kind, grantee, grantor, privs| acl.grant(kind, grantee, grantor, privs, option),
    )?;
    Ok(StatementResult::Command("GRANT".into()))
}

pub fn handle_revoke(s: &Session, r: &ast::Revoke) -> DbResult<StatementResult> {
    if let Some(roles) = granted_roles(&r.privileges, r.objects.as_ref()) {
        return revoke_roles(s, &roles, r);
    }
    change_acls(
        s,
        r.objects.as_ref(),
        &r.privileges,
        &r.grantees,
        |acl, kind, grantee, grantor, privs| acl.revoke(kind, grantee, grantor, privs, false),
    )?;
    Ok(StatementResult::Command("REVOKE".into()))
}

/// The role a `SET ROLE` / `SET SESSION AUTHORIZATION` names (22023 if there is none, as
/// Postgres reports an invalid parameter value).
fn existing_role_for_set(s: &Session, name: &str) -> DbResult<RoleDef> {
    s.instance.catalog.role(name).ok_or_else(|| {
        DbError::new(
            SqlState::InvalidParameterValue,
            format!("role \"{name}\" does not exist"),
        )
    })
}

/// `SET ROLE name | NONE`, `RESET ROLE`: to the session user, a role it is a member of
/// (directly or through others, inheriting or not), or, for a superuser, any role.
pub fn handle_set_role(s: &mut Session, role: Option<&ast::Ident>) -> DbResult<StatementResult> {
    let target = match role {
        None => s.user.clone(),
        Some(i) => normalize_ident(i),
    };
    let target = if target == "none" {
        s.user.clone()
    } else {
        target
    };
    let def = existing_role_for_set(s, &target)?;
    let session_superuser = s.instance.catalog.is_superuser(&s.user);
    let member = s
        .instance
        .catalog
        .roles_of(&s.user, false)
        .contains(&target);
    if !member && !session_superuser {
        return Err(DbError::new(
            SqlState::InsufficientPrivilege,
            format!("permission denied to set role \"{target}\""),
        ));
    }
    s.role = def.name;
    s.refresh_functions();
    Ok(StatementResult::Command("SET".into()))
}

/// `SET SESSION AUTHORIZATION name | DEFAULT`: a superuser login may become anyone.
pub fn handle_set_session_authorization(
    s: &mut Session,
    param: &ast::SetSessionAuthorizationParam,
) -> DbResult<StatementResult> {
    let target = match &param.kind {
        ast::SetSessionAuthorizationParamKind::Default => s.login_user.clone(),
        ast::SetSessionAuthorizationParamKind::User(i) => normalize_ident(i),
    };
    let def = existing_role_for_set(s, &target)?;
    let login_superuser = s.instance.catalog.is_superuser(&s.login_user);
    if target != s.login_user && !login_superuser {
        return Err(DbError::new(
            SqlState::InsufficientPrivilege,
            "permission denied to set session authorization",
        ));
    }
    s.user = def.name.clone();
    s.role = def.name;
    s.refresh_functions();
    Ok(StatementResult::Command("SET".into()))
}
