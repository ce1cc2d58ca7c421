//! Who uses the platform: users who ever started a run and, per window, the active, new and churned
//! ones; teams; users who reached a registered model (activation) and how long that took (time to
//! value); and which platform features each window's users used.

// foldhash, not SipHash: these maps are hit once per run, and their keys are our own symbols.
use hashbrown::{HashMap, HashSet};

use super::family::TextFamily;

use super::family::{Family, Spec};
use super::{team_of, Derivation};
use crate::sync::snapshot::{RunKey, Snapshot, Sym, NO_TIME};
use crate::tally::Tally;

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
pub const TEAMS: Spec = Spec::gauge(
    "mlflow_teams",
    "Distinct teams that ever started a run",
    &[],
);
pub const ACTIVE_TEAMS: Spec = Spec::gauge(
    "mlflow_active_teams",
    "Distinct teams with a run started within the window",
    &["window"],
);
pub const ACTIVATED_USERS: Spec = Spec::gauge(
    "mlflow_activated_users",
    "Users with at least one registered model version produced by a run of theirs",
    &[],
);
pub const TIME_TO_FIRST_MODEL: Spec = Spec::histogram(
    "mlflow_user_time_to_first_model_seconds",
    "Per activated user: from their first run's start to the first model version created from a run of theirs",
    &[],
);
pub const FEATURE_USERS: Spec = Spec::gauge(
    "mlflow_feature_users",
    "Distinct users whose runs started within the window used the feature",
    &["feature", "window"],
);
/// Exported from the tally, which observes each user once, when they activate.
pub fn time_to_first_model(tally: &Tally, d: &Derivation) -> TextFamily {
    let buckets = &d.settings.time_to_first_model_buckets;
    let h = &tally.time_to_first_model;
    // Exported empty before anyone activates, so the series exists from the start.
    let zeros = vec![0; buckets.len() + 1];
    let counts = if h.counts.is_empty() {
        &zeros
    } else {
        &h.counts
    };
    let mut f = Family::new(&TIME_TO_FIRST_MODEL);
    f.add_histogram(&[], buckets, counts, h.sum_ms as f64 / 1000.0);
    f.finish()
}

pub const SPECS: &[Spec] = &[
    USERS,
    ACTIVE_USERS,
    NEW_USERS,
    CHURNED_USERS,
    TEAMS,
    ACTIVE_TEAMS,
    ACTIVATED_USERS,
    TIME_TO_FIRST_MODEL,
    FEATURE_USERS,
];

/// Per user or team: first start, per window two bits (active now, active in the window before), and
/// per window the features its runs in that window used.
#[derive(Clone)]
struct Activity {
    first_ms: i64,
    bits: u64,
    features: Vec<u32>,
}

impl Activity {
    fn new(windows: usize) -> Activity {
        Activity {
            first_ms: i64::MAX,
            bits: 0,
            features: vec![0; windows],
        }
    }

    /// Records a run started at `start` that used `features`.
    fn record(&mut self, start: i64, features: u32, windows: &[(i64, String)], now_ms: i64) {
        self.first_ms = self.first_ms.min(start);
        for (i, (w, _)) in windows.iter().enumerate() {
            if start >= now_ms - w {
                self.bits |= 1 << (2 * i);
                self.features[i] |= features;
            } else if start >= now_ms - 2 * w {
                self.bits |= 1 << (2 * i + 1);
            }
        }
    }

    fn active(&self, window: usize) -> bool {
        self.bits & 1 << (2 * window) != 0
    }

    fn churned(&self, window: usize) -> bool {
        self.bits & 1 << (2 * window + 1) != 0 && !self.active(window)
    }
}

pub fn families(snap: &Snapshot, d: &Derivation, now_ms: i64) -> Vec<TextFamily> {
    // Windows beyond 32 would overflow the bit set; Settings keeps them few in practice.
    let windows = &d.windows[..d.windows.len().min(32)];
    let registered: HashSet<RunKey> = snap.versions.values().filter_map(|v| v.run).collect();
    let mut users: Vec<Option<Activity>> = vec![None; snap.strings.len()];
    let mut teams: HashMap<Sym, Activity> = HashMap::new();
    for (key, r) in snap.runs.iter() {
        let user = r
            .user
            .map(|u| users[u.index()].get_or_insert_with(|| Activity::new(windows.len())));
        if r.start_ms == NO_TIME {
            continue;
        }
        let mut features = r.features;
        if registered.contains(&key) {
            features |= d.registered_features;
        }
        if let Some(u) = user {
            u.record(r.start_ms, features, windows, now_ms);
        }
        if let Some(t) = team_of(snap, r) {
            teams
                .entry(t)
                .or_insert_with(|| Activity::new(windows.len()))
                .record(r.start_ms, 0, windows, now_ms);
        }
    }

    let first_model = crate::tally::first_models(snap);
    let users: Vec<Activity> = users.into_iter().flatten().collect();
    let mut all = Family::new(&USERS);
    all.add(&[], users.len() as f64);
    let mut active = Family::new(&ACTIVE_USERS);
    let mut new = Family::new(&NEW_USERS);
    let mut churned = Family::new(&CHURNED_USERS);
    let mut team_total = Family::new(&TEAMS);
    team_total.add(&[], teams.len() as f64);
    let mut active_teams = Family::new(&ACTIVE_TEAMS);
    let mut feature_users = Family::new(&FEATURE_USERS);
    let count = |set: &mut dyn Iterator<Item = &Activity>, f: &dyn Fn(&Activity) -> bool| {
        set.filter(|a| f(a)).count() as f64
    };
    for (i, (w, label)) in windows.iter().enumerate() {
        active.add(&[label], count(&mut users.iter(), &|u| u.active(i)));
        new.add(
            &[label],
            count(&mut users.iter(), &|u| {
                u.first_ms >= now_ms - w && u.first_ms != i64::MAX
            }),
        );
        churned.add(&[label], count(&mut users.iter(), &|u| u.churned(i)));
        active_teams.add(&[label], count(&mut teams.values(), &|t| t.active(i)));
        for (bit, feature) in d.settings.features.iter().enumerate() {
            let n = count(&mut users.iter(), &|u| u.features[i] & 1 << bit != 0);
            feature_users.add(&[&feature.name, label], n);
        }
    }
    let mut activated = Family::new(&ACTIVATED_USERS);
    activated.add(&[], first_model.len() as f64);
    vec![
        all.finish(),
        active.finish(),
        new.finish(),
        churned.finish(),
        team_total.finish(),
        active_teams.finish(),
        activated.finish(),
        feature_users.finish(),
    ]
}
