//! `pg_proc`: the functions a session can call — scalar, aggregate, window and table
//! functions, built-in (DataFusion's) and ours — one row per signature where the signature
//! lists its argument types, in `pg_catalog`; and the functions that describe them
//! (`pg_get_function_result`, `pg_get_function_arguments`,
//! `pg_get_function_identity_arguments`, `pg_function_is_visible`).
//!
//! OIDs are stable: a hash of the name and argument types, folded into `[2^30, 2^31)` (away
//! from the relation and namespace OIDs). A function whose signature does not list its types
//! (variadic, coercible) has one row without arguments and returns `anyelement` (`record`
//! for a table function).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use arrow::datatypes::DataType;
use datafusion::datasource::TableProvider;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{TypeSignature, Volatility};
use parking_lot::RwLock;

use crate::pgtypes::regtype_name;
use crate::system::{Table, V, t};

/// `pg_type` OIDs Postgres uses for polymorphic positions.
const ANY: u32 = 2276;
const ANYELEMENT: u32 = 2283;
const RECORD: u32 = 2249;
const INTERNAL_LANGUAGE: u32 = 12;
const SUPERUSER_OID: u32 = 10;
const PG_CATALOG: u32 = 11;

/// One row of `pg_proc`.
#[derive(Debug, Clone)]
pub struct Proc {
    pub oid: u32,
    pub name: String,
    /// `f` function, `a` aggregate, `w` window.
    pub kind: char,
    pub retset: bool,
    pub volatile: char,
    pub args: Vec<u32>,
    pub ret: u32,
}

/// The rows last listed, by oid, for the describing functions.
fn listed() -> &'static RwLock<BTreeMap<u32, Proc>> {
    static LISTED: OnceLock<RwLock<BTreeMap<u32, Proc>>> = OnceLock::new();
    LISTED.get_or_init(Default::default)
}

fn oid_of(name: &str, args: &[u32]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let key = format!("{name}({args:?})");
    for b in key.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    (1 << 30) | (h & ((1 << 30) - 1))
}

fn type_oid(t: &DataType) -> u32 {
    if t == &DataType::Null {
        ANY
    } else {
        crate::pgwire::encode::pg_type_of_arrow(t).oid()
    }
}

/// The argument type lists a signature spells out (`None`: it does not).
fn arg_lists(sig: &TypeSignature) -> Vec<Option<Vec<DataType>>> {
    match sig {
        TypeSignature::Exact(types) => vec![Some(types.clone())],
        TypeSignature::Uniform(n, types) => {
            types.iter().map(|t| Some(vec![t.clone(); *n])).collect()
        }
        TypeSignature::Nullary => vec![Some(vec![])],
        TypeSignature::Any(n) => vec![Some(vec![DataType::Null; *n])],
        TypeSignature::OneOf(list) => list.iter().flat_map(arg_lists).collect(),
        _ => vec![None],
    }
}

fn volatility(v: Volatility) -> char {
    match v {
        Volatility::Immutable => 'i',
        Volatility::Stable => 's',
        Volatility::Volatile => 'v',
    }
}

/// Every function of the session, sorted by name and oid.
pub fn procs(state: &SessionState) -> Vec<Proc> {
    let mut out: BTreeMap<u32, Proc> = BTreeMap::new();
    let mut add = |name: &str, kind: char, retset: bool, volatile: char, args: Vec<u32>, ret| {
        // internal helpers the rewrites call
        if name.starts_with("__") {
            return;
        }
        let oid = oid_of(name, &args);
        out.entry(oid).or_insert(Proc {
            oid,
            name: name.to_string(),
            kind,
            retset,
            volatile,
            args,
            ret,
        });
    };
    // (first: a name that is both, as generate_series, is listed as the set-returning one)
    for name in state.table_functions().keys() {
        add(name, 'f', true, 'v', Vec::new(), RECORD);
    }
    // each signature's argument types, and the result type for them
    let typed =
        |sig: &datafusion::logical_expr::Signature,
         ret: &dyn Fn(&[DataType]) -> datafusion::common::Result<DataType>| {
            arg_lists(&sig.type_signature)
                .into_iter()
                .map(|args| match args {
                    Some(types) => (
                        types.iter().map(type_oid).collect::<Vec<u32>>(),
                        ret(&types).map_or(ANYELEMENT, |t| type_oid(&t)),
                    ),
                    None => (Vec::new(), ANYELEMENT),
                })
                .collect::<Vec<_>>()
        };
    for (name, f) in state.scalar_functions() {
        let sig = f.signature();
        for (args, ret) in typed(sig, &|t| f.return_type(t)) {
            add(name, 'f', false, volatility(sig.volatility), args, ret);
        }
    }
    for (name, f) in state.aggregate_functions() {
        let sig = f.signature();
        for (args, ret) in typed(sig, &|t| f.return_type(t)) {
            add(name, 'a', false, volatility(sig.volatility), args, ret);
        }
    }
    for (name, f) in state.window_functions() {
        let sig = f.signature();
        for args in arg_lists(&sig.type_signature) {
            let arg_oids = args.map_or_else(Vec::new, |t| t.iter().map(type_oid).collect());
            add(
                name,
                'w',
                false,
                volatility(sig.volatility),
                arg_oids,
                ANYELEMENT,
            );
        }
    }
    let mut rows: Vec<Proc> = out.values().cloned().collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name).then(a.oid.cmp(&b.oid)));
    *listed().write() = out;
    rows
}

/// The `pg_proc` table of a session.
pub fn pg_proc(state: &SessionState) -> Arc<dyn TableProvider> {
    let mut tb = Table::new(&[
        ("oid", 'o'),
        ("proname", 't'),
        ("pronamespace", 'o'),
        ("proowner", 'o'),
        ("prolang", 'o'),
        ("prokind", 't'),
        ("prosecdef", 'b'),
        ("proleakproof", 'b'),
        ("proisstrict", 'b'),
        ("proretset", 'b'),
        ("provolatile", 't'),
        ("proparallel", 't'),
        ("pronargs", 's'),
        ("pronargdefaults", 's'),
        ("prorettype", 'o'),
        ("proargtypes", 't'),
        ("proargnames", 'a'),
        ("prosrc", 't'),
        ("proacl", 'a'),
    ]);
    for p in procs(state) {
        let argtypes: Vec<String> = p.args.iter().map(|o| o.to_string()).collect();
        tb.row(vec![
            V::O(p.oid),
            t(&p.name),
            V::O(PG_CATALOG),
            V::O(SUPERUSER_OID),
            V::O(INTERNAL_LANGUAGE),
            t(&p.kind.to_string()),
            V::B(false),
            V::B(false),
            V::B(false),
            V::B(p.retset),
            t(&p.volatile.to_string()),
            t("s"),
            V::S(p.args.len() as i16),
            V::S(0),
            V::O(p.ret),
            t(&argtypes.join(" ")),
            V::Null,
            t(&p.name),
            V::Null,
        ]);
    }
    tb.provider()
}

fn type_text(oid: u32) -> String {
    match oid {
        ANY => "\"any\"".to_string(),
        ANYELEMENT => "anyelement".to_string(),
        RECORD => "record".to_string(),
        other => regtype_name(other),
    }
}

/// `pg_get_function_result(oid)`: what it returns (`SETOF …` for a set).
pub fn result_of(oid: u32) -> Option<String> {
    let listed = listed().read();
    let p = listed.get(&oid)?;
    Some(if p.retset {
        format!("SETOF {}", type_text(p.ret))
    } else {
        type_text(p.ret)
    })
}

/// `pg_get_function_arguments(oid)`: its argument types, comma-separated.
pub fn arguments_of(oid: u32) -> Option<String> {
    let listed = listed().read();
    let p = listed.get(&oid)?;
    Some(
        p.args
            .iter()
            .map(|&a| type_text(a))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// `pg_function_is_visible(oid)`: every function is in `pg_catalog`, which is searched first.
pub fn is_visible(oid: u32) -> bool {
    listed().read().contains_key(&oid)
}
