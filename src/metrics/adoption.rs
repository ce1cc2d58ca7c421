//! Who uses the platform: users who ever started a run and, per window, the active, new and churned
//! ones; teams; users who reached a registered model (activation) and how long that took (time to
//! value); and which platform features each window's users used.
//!
//! On a workspace-enabled MLflow these families are per workspace (a `workspace` label), and the
//! `mlflow_platform_*` families count the platform as a whole: a person active in two workspaces
//! is one platform user, so they are not sums of the workspaces' series. Without workspaces both
//! count the same.

// foldhash, not SipHash: these maps are hit once per run, and their keys are our own symbols.
use std::collections::BTreeMap;

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
pub const PLATFORM_USERS: Spec = Spec::gauge(
    "mlflow_platform_users",
    "Distinct users who ever started a run, in any workspace",
    &[],
);
pub const PLATFORM_ACTIVE_USERS: Spec = Spec::gauge(
    "mlflow_platform_active_users",
    "Distinct users who started a run within the window, in any workspace",
    &["window"],
);
pub const PLATFORM_NEW_USERS: Spec = Spec::gauge(
    "mlflow_platform_new_users",
    "Distinct users whose first run in any workspace started within the window",
    &["window"],
);
pub const PLATFORM_CHURNED_USERS: Spec = Spec::gauge(
    "mlflow_platform_churned_users",
    "Distinct users who started a run in the window before this one but none in this one, in any workspace",
    &["window"],
);
pub const PLATFORM_TEAMS: Spec = Spec::gauge(
    "mlflow_platform_teams",
    "Distinct teams that ever started a run, in any workspace",
    &[],
);
pub const PLATFORM_ACTIVE_TEAMS: Spec = Spec::gauge(
    "mlflow_platform_active_teams",
    "Distinct teams with a run started within the window, in any workspace",
    &["window"],
);
pub const PLATFORM_ACTIVATED_USERS: Spec = Spec::gauge(
    "mlflow_platform_activated_users",
    "Users with at least one registered model version produced by a run of theirs, in any workspace",
    &[],
);
pub const PLATFORM_FEATURE_USERS: Spec = Spec::gauge(
    "mlflow_platform_feature_users",
    "Distinct users whose runs started within the window used the feature, in any workspace",
    &["feature", "window"],
);

/// The families of one kind of count, per workspace or for the platform, in the order
/// [`Group::write`] fills them.
pub const PER_WORKSPACE: [Spec; 8] = [
    USERS,
    ACTIVE_USERS,
    NEW_USERS,
    CHURNED_USERS,
    TEAMS,
    ACTIVE_TEAMS,
    ACTIVATED_USERS,
    FEATURE_USERS,
];
const PLATFORM: [Spec; 8] = [
    PLATFORM_USERS,
    PLATFORM_ACTIVE_USERS,
    PLATFORM_NEW_USERS,
    PLATFORM_CHURNED_USERS,
    PLATFORM_TEAMS,
    PLATFORM_ACTIVE_TEAMS,
    PLATFORM_ACTIVATED_USERS,
    PLATFORM_FEATURE_USERS,
];

/// Exported from the tally, which observes each user once, when they activate.
pub fn time_to_first_model(tally: &Tally, d: &Derivation) -> TextFamily {
    let buckets = &d.settings.time_to_first_model_buckets;
    let h = &tally.time_to_first_model;
    // Exported empty before anyone activates, so the series exists from the start.
    let mut f = Family::new(&TIME_TO_FIRST_MODEL);
    f.add_histogram(&[], buckets, &h.counts, h.sum_ms as f64 / 1000.0);
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
    PLATFORM_USERS,
    PLATFORM_ACTIVE_USERS,
    PLATFORM_NEW_USERS,
    PLATFORM_CHURNED_USERS,
    PLATFORM_TEAMS,
    PLATFORM_ACTIVE_TEAMS,
    PLATFORM_ACTIVATED_USERS,
    PLATFORM_FEATURE_USERS,
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

/// The users and teams of one group of runs: the platform's, or one workspace's.
#[derive(Default)]
struct Group<'a> {
    users: Vec<&'a Activity>,
    teams: Vec<&'a Activity>,
    activated: usize,
}

impl Group<'_> {
    /// Adds this group's series to `out` (the families of [`PER_WORKSPACE`] or [`PLATFORM`]),
    /// labelled `workspace` first when one is given.
    fn write(&self, out: &mut [Family; 8], workspace: Option<&str>, d: &Derivation, now_ms: i64) {
        let windows = &d.windows[..d.windows.len().min(32)];
        let add = |f: &mut Family, rest: &[&str], v: usize| {
            let mut labels: Vec<&str> = Vec::with_capacity(3);
            labels.extend(workspace);
            labels.extend_from_slice(rest);
            f.add(&labels, v as f64);
        };
        let count =
            |set: &[&Activity], f: &dyn Fn(&Activity) -> bool| set.iter().filter(|a| f(a)).count();
        let [all, active, new, churned, team_total, active_teams, activated, feature_users] = out;
        add(all, &[], self.users.len());
        add(team_total, &[], self.teams.len());
        for (i, (w, label)) in windows.iter().enumerate() {
            add(active, &[label], count(&self.users, &|u| u.active(i)));
            let fresh = |u: &Activity| u.first_ms >= now_ms - w && u.first_ms != i64::MAX;
            add(new, &[label], count(&self.users, &fresh));
            add(churned, &[label], count(&self.users, &|u| u.churned(i)));
            add(active_teams, &[label], count(&self.teams, &|t| t.active(i)));
            for (bit, feature) in d.settings.features.iter().enumerate() {
                let n = count(&self.users, &|u| u.features[i] & 1 << bit != 0);
                add(feature_users, &[&feature.name, label], n);
            }
        }
        add(activated, &[], self.activated);
    }
}

/// The users, teams and activations of the platform and, on a workspace-enabled MLflow, of each
/// workspace (a run's workspace is its experiment's).
pub fn families(
    snap: &Snapshot,
    d: &Derivation,
    traced: &HashSet<RunKey>,
    now_ms: i64,
) -> Vec<TextFamily> {
    // Windows beyond 32 would overflow the bit set; Settings keeps them few in practice.
    let windows = &d.windows[..d.windows.len().min(32)];
    let registered: HashSet<RunKey> = snap.versions.values().filter_map(|v| v.run).collect();
    let mut users: Vec<Option<Activity>> = vec![None; snap.strings.len()];
    let mut teams: HashMap<Sym, Activity> = HashMap::new();
    let workspace_of =
        |experiment: &Sym| snap.experiments.get(experiment).and_then(|e| e.workspace);
    let scoped = snap.experiments.values().any(|e| e.workspace.is_some());
    // (workspace, user or team) → activity, on a server with workspaces.
    let mut ws_users: HashMap<(Sym, Sym), Activity> = HashMap::new();
    let mut ws_teams: HashMap<(Sym, Sym), Activity> = HashMap::new();
    let new = || Activity::new(windows.len());
    for (key, r) in snap.runs.iter() {
        let ws = workspace_of(&r.experiment);
        let user = r.user.map(|u| {
            if let Some(w) = ws {
                ws_users.entry((w, u)).or_insert_with(new);
            }
            users[u.index()].get_or_insert_with(new)
        });
        if r.start_ms == NO_TIME {
            continue;
        }
        let mut features = r.features;
        if registered.contains(&key) {
            features |= d.card.features.registered;
        }
        if traced.contains(&key) {
            features |= d.card.features.traced;
        }
        if let Some(u) = user {
            u.record(r.start_ms, features, windows, now_ms);
        }
        let team = team_of(snap, r);
        if let Some(t) = team {
            teams
                .entry(t)
                .or_insert_with(new)
                .record(r.start_ms, 0, windows, now_ms);
        }
        if let Some(w) = ws {
            if let Some(u) = r.user {
                if let Some(a) = ws_users.get_mut(&(w, u)) {
                    a.record(r.start_ms, features, windows, now_ms);
                }
            }
            if let Some(t) = team {
                ws_teams
                    .entry((w, t))
                    .or_insert_with(new)
                    .record(r.start_ms, 0, windows, now_ms);
            }
        }
    }

    let first_model = crate::tally::first_models(snap);
    let users: Vec<Activity> = users.into_iter().flatten().collect();
    let platform = Group {
        users: users.iter().collect(),
        teams: teams.values().collect(),
        activated: first_model.len(),
    };
    let mut out: Vec<TextFamily> = Vec::with_capacity(16);
    let mut plat = PLATFORM.map(|s| Family::new(&s));
    platform.write(&mut plat, None, d, now_ms);
    if !scoped {
        let mut f = PER_WORKSPACE.map(|s| Family::new(&s));
        platform.write(&mut f, None, d, now_ms);
        out.extend(f.into_iter().map(Family::finish));
    } else {
        // A user activates in a workspace with a version of that workspace's registry made from
        // a run of theirs there.
        let activated: HashSet<(Sym, Sym)> = crate::tally::registrations(snap)
            .filter_map(|(r, _)| Some((workspace_of(&r.experiment)?, r.user?)))
            .collect();
        // Every workspace read has its series, runs or not; by name, as published.
        let mut groups: BTreeMap<&str, Group> = snap
            .experiments
            .values()
            .filter_map(|e| e.workspace)
            .map(|w| (snap.strings.get(w), Group::default()))
            .collect();
        let ws = |w: Sym| snap.strings.get(w);
        for ((w, _), a) in &ws_users {
            groups.entry(ws(*w)).or_default().users.push(a);
        }
        for ((w, _), a) in &ws_teams {
            groups.entry(ws(*w)).or_default().teams.push(a);
        }
        for (w, _) in &activated {
            groups.entry(ws(*w)).or_default().activated += 1;
        }
        let mut f = PER_WORKSPACE.map(|s| Family::per_workspace(&s));
        for (name, group) in &groups {
            group.write(&mut f, Some(name), d, now_ms);
        }
        out.extend(f.into_iter().map(Family::finish));
    }
    out.extend(plat.into_iter().map(Family::finish));
    out
}
