//! The change transactions behind the routes: each takes the context
//! ([`Ctx`]) and a mutable copy of the runtime state, and returns what it
//! did ([`Outcome`]); [`AppState::change`](super::controller::AppState::change)
//! runs it under the runtime mutex, saves and swaps.

use super::controller::{
    check_amounts, effective, no_domain, no_pool, parse_domain, parse_name, plan_with, Ctx, Outcome,
};
use super::error::Error;
use super::moves;
use super::types::*;
use super::views;
use crate::agent::state::RuntimeState;
use crate::core::config::{self, Config};
use crate::core::membership::Membership;
use crate::core::model::{PerResource, Resource};
use crate::core::planner::reserve;
use crate::core::words;

/// `PUT /v1/pools/{pool}`. A domain it lists that is in another pool is
/// moved with `"move": true`, refused without (see [`moves`]).
pub fn put_pool(
    ctx: &Ctx,
    rt: &mut RuntimeState,
    name: &str,
    body: PutPool,
) -> Result<Outcome<bool>, Error> {
    let PutPool { spec, move_ } = body;
    parse_name("pool", name)?;
    if ctx.config.pools.contains_key(name) {
        return Err(Error::Conflict(format!(
            "pool {name:?} is defined in the config file {}: change it there",
            ctx.config.source.display()
        )));
    }
    Config::validate_pool(name, &spec).map_err(|p| Error::BadRequest(p.to_string()))?;
    let created = !rt.pools.contains_key(name);
    if rt.pools.get(name) == Some(&spec) {
        return Ok(Outcome {
            value: false,
            changed: false,
            message: format!("pool {name:?} unchanged"),
        });
    }
    let before = effective(rt, &ctx.config)?;
    let mut moved = Vec::new();
    for d in &spec.domains {
        let Some(at) = moves::place_of(ctx, &before, d).filter(|at| at.pool != name) else {
            continue;
        };
        if !move_ {
            return Err(moves::refused(&at));
        }
        moves::take_out(rt, &before, &at);
        moved.push(format!("{:?} from {}", at.name, at.describe()));
    }
    rt.pools.insert(name.to_string(), spec);
    let eff = effective(rt, &ctx.config)?;
    let host = ctx.status.host.ok_or(Error::NotReady)?;
    let alloc = eff.host.allocatable(&host);
    let problems = config::budget_problems(&eff.pools, &alloc);
    if !problems.is_empty() {
        return Err(Error::DoesNotFit(
            config::BudgetProblems(problems).to_string(),
        ));
    }
    Ok(Outcome {
        value: created,
        changed: true,
        message: format!(
            "pool {name:?} {}{}",
            if created { "created" } else { "updated" },
            if moved.is_empty() {
                String::new()
            } else {
                format!("; moved into it: {}", moved.join(", "))
            }
        ),
    })
}

/// `DELETE /v1/pools/{pool}`.
pub fn delete_pool(ctx: &Ctx, rt: &mut RuntimeState, name: &str) -> Result<Outcome<()>, Error> {
    parse_name("pool", name)?;
    if ctx.config.pools.contains_key(name) {
        return Err(Error::Conflict(format!(
            "pool {name:?} is defined in the config file {}: only runtime pools can be deleted",
            ctx.config.source.display()
        )));
    }
    if rt.pools.remove(name).is_none() {
        return Err(no_pool(name));
    }
    rt.added.remove(name);
    rt.removed.remove(name);
    rt.reservations.remove(name);
    rt.paused_pools.remove(name);
    Ok(Outcome {
        value: (),
        changed: true,
        message: format!("pool {name:?} deleted"),
    })
}

/// The effective pool config, or 404.
fn pool_exists(eff: &Config, pool: &str) -> Result<(), Error> {
    if eff.pools.contains_key(pool) {
        Ok(())
    } else {
        Err(no_pool(pool))
    }
}

/// `POST /v1/pools/{pool}/members`. A domain in another pool is moved
/// with `move`, refused without (see [`moves`]).
pub fn add_member(
    ctx: &Ctx,
    rt: &mut RuntimeState,
    pool: &str,
    body: &AddMember,
) -> Result<Outcome<()>, Error> {
    let domain = body.domain.as_str();
    parse_name("pool", pool)?;
    parse_domain(domain)?;
    let eff = effective(rt, &ctx.config)?;
    pool_exists(&eff, pool)?;
    let d = views::find_domain(&ctx.status.domains, domain).ok_or_else(|| no_domain(domain))?;
    let mut moved = None;
    if let Some(at) = moves::place_of(ctx, &eff, domain) {
        if at.pool == pool {
            return Ok(Outcome {
                value: (),
                changed: false,
                message: format!("domain {:?} is already in pool {pool:?}", d.name),
            });
        }
        if !body.move_ {
            return Err(moves::refused(&at));
        }
        moves::take_out(rt, &eff, &at);
        moved = Some(at);
    }
    if let Some(set) = rt.removed.get_mut(pool) {
        set.remove(&*d.name);
        set.remove(&*d.uuid);
        set.remove(domain);
        if set.is_empty() {
            rt.removed.remove(pool);
        }
    }
    let eff = effective(rt, &ctx.config)?;
    if Membership::new(&eff.pools).pool_of(d).map(|(p, _)| p) != Some(pool) {
        rt.added_to(pool).insert(d.name.to_string());
    }
    let eff = effective(rt, &ctx.config)?;
    match Membership::new(&eff.pools).pool_of(d) {
        Some((p, _)) if p == pool => Ok(Outcome {
            value: (),
            changed: true,
            message: match moved {
                Some(at) => format!(
                    "domain {:?} moved from {} to pool {pool:?}",
                    d.name,
                    at.describe()
                ),
                None => format!("domain {:?} added to pool {pool:?}", d.name),
            },
        }),
        other => Err(Error::Conflict(format!(
            "domain {:?} would be in {} instead of pool {pool:?}",
            d.name,
            other.map_or("no pool".to_string(), |(p, _)| format!("pool {p:?}"))
        ))),
    }
}

/// `DELETE /v1/pools/{pool}/members/{domain}`.
pub fn remove_member(
    ctx: &Ctx,
    rt: &mut RuntimeState,
    pool: &str,
    domain: &str,
) -> Result<Outcome<()>, Error> {
    parse_name("pool", pool)?;
    parse_domain(domain)?;
    let eff = effective(rt, &ctx.config)?;
    pool_exists(&eff, pool)?;
    let found = views::find_domain(&ctx.status.domains, domain);
    let (name, uuid) = match found {
        Some(d) => (d.name.to_string(), d.uuid.to_string()),
        None => (domain.to_string(), domain.to_string()),
    };
    let listed = rt
        .added
        .get(pool)
        .is_some_and(|s| s.contains(&name) || s.contains(&uuid) || s.contains(domain));
    let member =
        found.is_some_and(|d| Membership::new(&eff.pools).pool_of(d).map(|(p, _)| p) == Some(pool));
    if !member && !listed {
        return Err(Error::NotFound(
            match moves::place_of(ctx, &eff, domain).filter(|_| found.is_some()) {
                Some(at) => format!(
                    "domain {:?} is not a member of pool {pool:?}: it is in {}",
                    at.name,
                    at.describe()
                ),
                None => format!("domain {domain:?} is not a member of pool {pool:?}"),
            },
        ));
    }
    if let Some(set) = rt.added.get_mut(pool) {
        set.remove(&name);
        set.remove(&uuid);
        set.remove(domain);
        if set.is_empty() {
            rt.added.remove(pool);
        }
    }
    if let Some(res) = rt.reservations.get_mut(pool) {
        res.remove(&name);
        res.remove(&uuid);
        if res.is_empty() {
            rt.reservations.remove(pool);
        }
    }
    let eff = effective(rt, &ctx.config)?;
    let still =
        found.is_some_and(|d| Membership::new(&eff.pools).pool_of(d).map(|(p, _)| p) == Some(pool));
    if still {
        rt.removed_from(pool).insert(name.clone());
    }
    effective(rt, &ctx.config)?;
    Ok(Outcome {
        value: (),
        changed: true,
        message: format!("domain {name:?} removed from pool {pool:?}"),
    })
}

/// A resolved member of a pool.
struct MemberRef {
    name: String,
    uuid: String,
}

fn member_of(ctx: &Ctx, eff: &Config, pool: &str, domain: &str) -> Result<MemberRef, Error> {
    pool_exists(eff, pool)?;
    let d = views::find_domain(&ctx.status.domains, domain).ok_or_else(|| no_domain(domain))?;
    match Membership::new(&eff.pools).pool_of(d) {
        Some((p, _)) if p == pool => Ok(MemberRef {
            name: d.name.to_string(),
            uuid: d.uuid.to_string(),
        }),
        Some((p, _)) => Err(Error::Conflict(format!(
            "domain {:?} is in {}, not in pool {pool:?}",
            d.name,
            moves::place_of(ctx, eff, domain).map_or(format!("pool {p:?}"), |at| at.describe())
        ))),
        None => Err(Error::Conflict(format!(
            "domain {:?} is not in pool {pool:?} (it is unmanaged)",
            d.name
        ))),
    }
}

/// The stored reservation of a member, moved under its name.
fn take_reservation(rt: &mut RuntimeState, pool: &str, m: &MemberRef) -> PerResource<Option<u64>> {
    let Some(res) = rt.reservations.get_mut(pool) else {
        return PerResource::default();
    };
    let by_uuid = res.remove(&m.uuid);
    res.remove(&m.name).or(by_uuid).unwrap_or_default()
}

fn put_reservation(rt: &mut RuntimeState, pool: &str, m: &MemberRef, r: PerResource<Option<u64>>) {
    if Resource::ALL.iter().all(|x| r.get(*x).is_none()) {
        if rt.reservations.get(pool).is_some_and(|v| v.is_empty()) {
            rt.reservations.remove(pool);
        }
        return;
    }
    rt.reservations_in(pool).insert(m.name.clone(), r);
}

/// `POST /v1/pools/{pool}/allocate`: sets reservations, admission-checked.
/// Needs libvirt: admission is checked against the members' current floors
/// (guest-used memory), which a disconnected agent does not know.
pub fn allocate(
    ctx: &Ctx,
    rt: &mut RuntimeState,
    pool: &str,
    req: &Reservation,
) -> Result<Outcome<ReservationResponse>, Error> {
    parse_name("pool", pool)?;
    check_amounts(req)?;
    if req.is_empty() {
        return Err(Error::BadRequest(
            "name at least one of vcpus, memory, disk_bytes_sec, disk_iops_sec".into(),
        ));
    }
    let st = &ctx.status;
    let host = st.host.ok_or(Error::NotReady)?;
    if st.cycle == 0 {
        return Err(Error::NotReady);
    }
    if !st.libvirt.connected {
        return Err(Error::LibvirtDown(
            st.libvirt
                .error
                .clone()
                .unwrap_or_else(|| "no connection".into()),
        ));
    }
    let eff = effective(rt, &ctx.config)?;
    let m = member_of(ctx, &eff, pool, &req.domain)?;
    let pconf = eff.pools.get(pool).ok_or_else(|| no_pool(pool))?;
    let d = views::find_domain(&st.domains, &m.uuid).ok_or_else(|| no_domain(&req.domain))?;
    let want = req.amounts();
    let before = plan_with(st, &eff, rt, host);
    let old = take_reservation(rt, pool, &m);
    let mut new = old;
    let budget = Config::pool_budget(pconf, &before.allocatable);
    for r in Resource::ALL {
        let Some(v) = *want.get(r) else { continue };
        let Some(b) = *budget.get(r) else {
            return Err(Error::BadRequest(format!(
                "pool {pool:?} does not manage {r}"
            )));
        };
        let bounds = reserve::Bounds {
            max: pconf.member_limits(&m.name, &m.uuid, r).max,
            hardware: match r {
                Resource::Vcpus => d.vcpus_max.max(1),
                Resource::Memory => d.memory_max,
                Resource::DiskBytesSec | Resource::DiskIopsSec => crate::core::planner::UNCAPPED,
                // Its online vCPUs' worth (its maximum while it is shut off).
                Resource::Cpu => {
                    let vcpus = if d.state.is_active() {
                        d.vcpus
                    } else {
                        d.vcpus_max
                    };
                    vcpus.max(1).saturating_mul(crate::core::cpu::MILLI)
                }
            },
            budget: b,
        };
        reserve::within_bounds(r, &m.name, pool, v, &bounds)?;
        *new.get_mut(r) = if v == 0 { None } else { Some(v) };
    }
    put_reservation(rt, pool, &m, new);
    // Admission: this member's floor under the new reservation beside the
    // floors of the other admitted members, for each raised resource.
    let after = plan_with(st, &effective(rt, &ctx.config)?, rt, host);
    let pb = before.pools.iter().find(|p| p.name == pool);
    let pa = after.pools.iter().find(|p| p.name == pool);
    for r in Resource::ALL {
        let (Some(v), Some(b)) = (*want.get(r), *budget.get(r)) else {
            continue;
        };
        if v > old.get(r).unwrap_or(0) {
            reserve::fits(r, &m.name, &m.uuid, v, b, pb, pa)?;
        }
    }
    Ok(reservation_outcome(pool, &m, old, new, "set to"))
}

/// `POST /v1/pools/{pool}/release`: lowers or clears reservations. Works
/// while libvirt is down (it only ever lowers what is guaranteed).
pub fn release(
    ctx: &Ctx,
    rt: &mut RuntimeState,
    pool: &str,
    req: &Reservation,
) -> Result<Outcome<ReservationResponse>, Error> {
    parse_name("pool", pool)?;
    check_amounts(req)?;
    let eff = effective(rt, &ctx.config)?;
    pool_exists(&eff, pool)?;
    // A domain no longer observed can still have its reservation released.
    let m = match member_of(ctx, &eff, pool, &req.domain) {
        Ok(m) => m,
        Err(e) => {
            let held = rt
                .reservations
                .get(pool)
                .is_some_and(|v| v.contains_key(&req.domain));
            if !held {
                return Err(e);
            }
            MemberRef {
                name: req.domain.clone(),
                uuid: req.domain.clone(),
            }
        }
    };
    let old = take_reservation(rt, pool, &m);
    let mut new = old;
    if req.is_empty() {
        new = PerResource::default();
    } else {
        let want = req.amounts();
        for r in Resource::ALL {
            if let Some(v) = *want.get(r) {
                let left = new.get(r).unwrap_or(0).saturating_sub(v);
                *new.get_mut(r) = (left > 0).then_some(left);
            }
        }
    }
    put_reservation(rt, pool, &m, new);
    Ok(reservation_outcome(pool, &m, old, new, "lowered to"))
}

/// The answer to an allocate or release of `m`'s reservation in `pool`
/// from `old` to `new`: the message says it was `done` (`"set to"`,
/// `"lowered to"`) the new reservation.
fn reservation_outcome(
    pool: &str,
    m: &MemberRef,
    old: PerResource<Option<u64>>,
    new: PerResource<Option<u64>>,
    done: &str,
) -> Outcome<ReservationResponse> {
    let changed = new != old;
    Outcome {
        changed,
        message: format!(
            "reservation of {:?} in pool {pool:?} {done} {}",
            m.name,
            words::amounts(&new)
        ),
        value: ReservationResponse {
            pool: pool.to_string(),
            domain: m.name.clone(),
            reservation: new,
            changed,
            cycle: None,
        },
    }
}

/// `POST /v1/pause|resume` (`pool` = None) and `/v1/pools/{pool}/pause|resume`.
pub fn set_paused(
    ctx: &Ctx,
    rt: &mut RuntimeState,
    pool: Option<&str>,
    paused: bool,
) -> Result<Outcome<()>, Error> {
    let verb = if paused { "paused" } else { "resumed" };
    let Some(pool) = pool else {
        let changed = rt.paused != paused;
        rt.paused = paused;
        return Ok(Outcome {
            value: (),
            changed,
            message: format!("agent {verb}"),
        });
    };
    parse_name("pool", pool)?;
    let eff = effective(rt, &ctx.config)?;
    pool_exists(&eff, pool)?;
    if !paused {
        let file_paused = ctx.config.pools.get(pool).is_some_and(|p| p.paused)
            || rt.pools.get(pool).is_some_and(|s| s.paused);
        if file_paused {
            return Err(Error::Conflict(format!(
                "pool {pool:?} is paused by its definition (paused = true): change the definition to resume it"
            )));
        }
    }
    let changed = if paused {
        rt.paused_pools.insert(pool.to_string())
    } else {
        rt.paused_pools.remove(pool)
    };
    Ok(Outcome {
        value: (),
        changed,
        message: format!("pool {pool:?} {verb}"),
    })
}

#[cfg(test)]
mod tests;
