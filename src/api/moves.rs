//! One rule for a domain that is in a pool and named for another (`PUT
//! /v1/pools/{pool}` listing it, `POST /v1/pools/{pool}/members`): the
//! move is explicit (`"move": true`, `virtpoolctl ... --move`), and
//! refused without it, with one message that names the pool the domain is
//! in and how it got there (its explicit list, its `<virtpool:pool>`
//! metadata, or a glob).

use super::controller::Ctx;
use super::error::Error;
use super::views;
use crate::agent::state::RuntimeState;
use crate::core::config::{Config, Pool};
use crate::core::glob::Glob;
use crate::core::membership::{Membership, Via};

/// Where a domain is now.
pub struct Place {
    /// The domain's name (as observed, or as given when not observed).
    pub name: String,
    /// Its UUID, when observed.
    pub uuid: Option<String>,
    pub pool: String,
    /// How it got there: `explicit list`, `<virtpool:pool> metadata` or
    /// `glob "web-*"`.
    pub how: String,
}

impl Place {
    /// `pool "web" (glob "web-*")`.
    pub fn describe(&self) -> String {
        format!("pool {:?} ({})", self.pool, self.how)
    }
}

/// The pool `key` (a domain name or UUID) is in under `eff`, if any: by
/// the membership rules for an observed domain, else by the explicit
/// lists (a domain not observed matches no glob or metadata).
pub fn place_of(ctx: &Ctx, eff: &Config, key: &str) -> Option<Place> {
    if let Some(d) = views::find_domain(&ctx.status.domains, key) {
        let membership = Membership::new(&eff.pools);
        let (pool, via) = membership.pool_of(d)?;
        let p = eff.pools.get(pool)?;
        return Some(Place {
            name: d.name.to_string(),
            uuid: Some(d.uuid.to_string()),
            pool: pool.to_string(),
            how: how(p, via, &d.name),
        });
    }
    let p = eff
        .pools
        .values()
        .find(|p| p.domains.iter().any(|x| x == key))?;
    Some(Place {
        name: key.to_string(),
        uuid: None,
        pool: p.name.clone(),
        how: how(p, Via::Explicit, key),
    })
}

fn how(p: &Pool, via: Via, name: &str) -> String {
    match via {
        Via::Explicit => "explicit list".into(),
        Via::Metadata => "<virtpool:pool> metadata".into(),
        Via::Match => match p
            .globs
            .iter()
            .find(|g| Glob::new(g).is_ok_and(|g| g.is_match(name)))
        {
            Some(g) => format!("glob {g:?}"),
            None => "glob".into(),
        },
    }
}

/// The refusal of a move that was not asked for.
pub fn refused(at: &Place) -> Error {
    Error::Conflict(format!(
        "domain {:?} is in {}: a domain belongs to at most one pool; to move it, add --move (API: \"move\": true)",
        at.name,
        at.describe()
    ))
}

/// Takes a domain out of the pool it is in (see [`place_of`]): no longer
/// added there at run time, its reservation there dropped, and removed
/// from it (as `DELETE /v1/pools/{pool}/members/{domain}` does), so that
/// the pool's explicit list, metadata or glob no longer holds it.
pub fn take_out(rt: &mut RuntimeState, eff: &Config, at: &Place) {
    let mut keys = vec![at.name.as_str()];
    keys.extend(at.uuid.as_deref());
    let pool = at.pool.as_str();
    if let Some(set) = rt.added.get_mut(pool) {
        for k in &keys {
            set.remove(*k);
        }
        if set.is_empty() {
            rt.added.remove(pool);
        }
    }
    if let Some(res) = rt.reservations.get_mut(pool) {
        for k in &keys {
            res.remove(*k);
        }
        if res.is_empty() {
            rt.reservations.remove(pool);
        }
    }
    let listed = |k: &str| {
        eff.pools
            .get(pool)
            .is_some_and(|p| p.domains.iter().any(|d| d == k))
    };
    let removed = rt.removed_from(pool);
    removed.insert(at.name.clone());
    if let Some(u) = at.uuid.as_deref().filter(|u| listed(u)) {
        removed.insert(u.to_string());
    }
}
