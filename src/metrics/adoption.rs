//! Who uses the platform: users who ever started a run, and per window the active, new and churned ones.

use prometheus::proto::MetricFamily;

use super::family::{Family, Spec};
use super::Derivation;
use crate::sync::snapshot::{Snapshot, NO_TIME};

pub const USERS: Spec = Spec::gauge("mlflow_users", "Distinct users who ever started a run", &[]);
pub const ACTIVE_USERS: Spec = Spec::gauge(
    "mlflow_active_users",
    "Distinct users who started a run within the window",
    &["window"],
);
pub const NEW_USERS: Spec = Spec::gauge(
    "mlflow_new_users",
    "Distinct users whose first run started within the window",
    &["window"],
);
pub const CHURNED_USERS: Spec = Spec::gauge(
    "mlflow_churned_users",
    "Distinct users who started a run in the window before this one but none in this one",
    &["window"],
);
pub const SPECS: &[Spec] = &[USERS, ACTIVE_USERS, NEW_USERS, CHURNED_USERS];

/// Per user: first start, and per window two bits (active now, active in the window before).
#[derive(Clone, Copy)]
struct User {
    first_ms: i64,
    bits: u64,
}

pub fn families(snap: &Snapshot, d: &Derivation, now_ms: i64) -> Vec<MetricFamily> {
    // Windows beyond 32 would overflow the bit set; Settings keeps them few in practice.
    let windows = &d.windows[..d.windows.len().min(32)];
    let mut users: Vec<Option<User>> = vec![None; snap.strings.len()];
    for r in snap.runs.values() {
        let Some(u) = r.user else { continue };
        let slot = users[u.index()].get_or_insert(User {
            first_ms: i64::MAX,
            bits: 0,
        });
        if r.start_ms == NO_TIME {
            continue;
        }
        slot.first_ms = slot.first_ms.min(r.start_ms);
        for (i, (w, _)) in windows.iter().enumerate() {
            if r.start_ms >= now_ms - w {
                slot.bits |= 1 << (2 * i);
            } else if r.start_ms >= now_ms - 2 * w {
                slot.bits |= 1 << (2 * i + 1);
            }
        }
    }
    let users: Vec<User> = users.into_iter().flatten().collect();

    let mut all = Family::new(&USERS);
    all.add(&[], users.len() as f64);
    let mut active = Family::new(&ACTIVE_USERS);
    let mut new = Family::new(&NEW_USERS);
    let mut churned = Family::new(&CHURNED_USERS);
    for (i, (w, label)) in windows.iter().enumerate() {
        let (now_bit, before_bit) = (1u64 << (2 * i), 1u64 << (2 * i + 1));
        let count = |f: &dyn Fn(&User) -> bool| users.iter().filter(|u| f(u)).count() as f64;
        active.add(&[label], count(&|u| u.bits & now_bit != 0));
        new.add(
            &[label],
            count(&|u| u.first_ms != i64::MAX && u.first_ms >= now_ms - w),
        );
        churned.add(
            &[label],
            count(&|u| u.bits & before_bit != 0 && u.bits & now_bit == 0),
        );
    }
    vec![
        all.finish(),
        active.finish(),
        new.finish(),
        churned.finish(),
    ]
}
