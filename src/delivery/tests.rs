//! Event logic on hand-built snapshots: baseline, deployment, rollbacks to a lower and to a
//! previously served version, an alias deleted and re-created, the `Production` stage, and the
//! figures (lead time and its parts, recovery) with exact values.

use super::*;
use crate::histogram::bounds_ms;
use crate::sync::snapshot::*;

const H: i64 = 3_600_000;
const T0: i64 = 1_800_000_000_000;

fn bounds() -> Bounds {
    let b = bounds_ms(&[60.0, 3600.0, 86400.0]);
    Bounds {
        lead_time: b.clone(),
        time_to_register: b.clone(),
        time_to_deploy: b.clone(),
        recovery: b.clone(),
        incident_recovery: b,
    }
}

/// A registry with model `m`: versions 1..=n, version i made by a run that started at T0 + i h and
/// ran 10 min, created 20 min after the run's start; `aliases` and the versions in `Production`.
fn registry(n: u32, aliases: &[(&str, u32)], production: &[u32]) -> Snapshot {
    let mut snap = Snapshot::default();
    let s = &mut snap.strings;
    let (m, exp, ready) = (s.intern("m"), s.intern("1"), s.intern("READY"));
    let (none, prod) = (s.intern("None"), s.intern(PRODUCTION));
    let aliases = aliases.iter().map(|(a, v)| (s.intern(a), *v)).collect();
    snap.models.insert(
        m,
        ModelRecord {
            aliases,
            team: None,
            workspace: None,
        },
    );
    for i in 1..=n {
        let start = T0 + i64::from(i) * H;
        let key = u128::from(i);
        snap.runs.insert(
            key,
            RunRecord::new(exp, RunStatus::Finished, start, start + H / 6),
        );
        snap.versions.insert(
            (m, i),
            VersionRecord {
                stage: if production.contains(&i) { prod } else { none },
                status: ready,
                created_ms: start + H / 3,
                last_updated_ms: start + H / 3,
                run: Some(key),
                logged_model: None,
            },
        );
    }
    snap
}

fn serving() -> Vec<String> {
    vec!["champion".into(), "prod".into()]
}

/// Detects and folds in one poll; returns the events.
fn poll(d: &mut Delivery, snap: &Snapshot, first: bool, at: i64) -> Vec<Event> {
    let events = d.detect(snap, &serving(), first, at);
    for e in &events {
        d.apply(e);
    }
    events
}

fn kinds(events: &[Event]) -> Vec<(Kind, &str, Option<u32>)> {
    events
        .iter()
        .map(|e| (e.kind, e.target.as_str(), e.version))
        .collect()
}

#[test]
fn first_sight_at_start_up_is_a_baseline_and_later_moves_are_deployments() {
    let mut d = Delivery::new(bounds());
    let e = poll(
        &mut d,
        &registry(3, &[("champion", 1), ("challenger", 2)], &[]),
        true,
        T0 + 10 * H,
    );
    // Only serving aliases count: challenger is not one.
    assert_eq!(kinds(&e), vec![(Kind::Baseline, "champion", Some(1))]);
    // The baseline dates the alias by the creation of the version it serves (T0 + 1 h 20 min):
    // it cannot have served it before; and its histograms exist, empty.
    let f = &d.figures[&("m".to_string(), "champion".to_string())];
    assert_eq!((f.deployments, f.last_deployed_ms), (0, T0 + H + H / 3));
    assert_eq!(d.histograms.len(), 1);
    // Nothing changed: nothing to record.
    assert!(poll(
        &mut d,
        &registry(3, &[("champion", 1)], &[]),
        false,
        T0 + 11 * H
    )
    .is_empty());

    let e = poll(
        &mut d,
        &registry(3, &[("champion", 3)], &[]),
        false,
        T0 + 12 * H,
    );
    assert_eq!(kinds(&e), vec![(Kind::Deployment, "champion", Some(3))]);
    assert_eq!(e[0].dedup_key, "m\u{1f}champion\u{1f}2");
    assert_eq!(
        (e[0].run_start_ms, e[0].run_end_ms, e[0].version_created_ms),
        (
            Some(T0 + 3 * H),
            Some(T0 + 3 * H + H / 6),
            Some(T0 + 3 * H + H / 3)
        )
    );
    let f = &d.figures[&("m".to_string(), "champion".to_string())];
    assert_eq!(
        (f.deployments, f.rollbacks, f.last_deployed_ms),
        (1, 0, T0 + 12 * H)
    );
    // Lead time: run start (T0+3h) → deployment (T0+12h) = 9 h; to deploy: 8 h 40 min. m is the
    // first model seen serving: shown apart, with no team.
    assert_eq!(f.last_lead_time_ms, 9 * H);
    let h = &d.histograms[&(String::new(), "m".to_string())];
    assert_eq!(h.lead_time.sum_ms, 9 * H as u64);
    assert_eq!(h.lead_time.counts, vec![0, 0, 1, 0]);
    assert_eq!(h.time_to_deploy.sum_ms, (9 * H - H / 3) as u64);
    // To register: run end → version created = 10 min.
    assert_eq!(h.time_to_register.sum_ms, (H / 6) as u64);
    assert_eq!(h.time_to_register.counts, vec![0, 1, 0, 0]);
}

#[test]
fn a_target_new_after_start_up_is_a_deployment() {
    let mut d = Delivery::new(bounds());
    poll(&mut d, &registry(2, &[], &[]), true, T0 + 10 * H);
    let e = poll(
        &mut d,
        &registry(2, &[("prod", 2)], &[]),
        false,
        T0 + 11 * H,
    );
    assert_eq!(kinds(&e), vec![(Kind::Deployment, "prod", Some(2))]);
}

#[test]
fn rollbacks_to_a_lower_and_to_a_previously_served_version() {
    let mut d = Delivery::new(bounds());
    poll(
        &mut d,
        &registry(5, &[("champion", 2)], &[]),
        true,
        T0 + 10 * H,
    );
    poll(
        &mut d,
        &registry(5, &[("champion", 4)], &[]),
        false,
        T0 + 11 * H,
    );
    // 4 → 3: lower than the version replaced, although never served.
    poll(
        &mut d,
        &registry(5, &[("champion", 3)], &[]),
        false,
        T0 + 11 * H + 30 * 60_000,
    );
    poll(
        &mut d,
        &registry(5, &[("champion", 5)], &[]),
        false,
        T0 + 13 * H,
    );
    // 5 → 4? lower. Then 4 → 5: higher, but 5 was served before: a rollback too.
    poll(
        &mut d,
        &registry(5, &[("champion", 4)], &[]),
        false,
        T0 + 14 * H,
    );
    poll(
        &mut d,
        &registry(5, &[("champion", 5)], &[]),
        false,
        T0 + 14 * H + 60_000,
    );
    let f = &d.figures[&("m".to_string(), "champion".to_string())];
    assert_eq!((f.deployments, f.rollbacks), (5, 3));
    // Recovery: the replaced deployment's time → the rollback: 30 min, 1 h, 1 min.
    let h = &d.histograms[&(String::new(), "m".to_string())];
    assert_eq!(h.rollback_recovery.sum_ms, (H / 2 + H + 60_000) as u64);
    assert_eq!(h.rollback_recovery.counts, vec![1, 2, 0, 0]);
    // Lead time only for the two forward changes (to 4 and to 5).
    assert_eq!(h.lead_time.counts.iter().sum::<u64>(), 2);
    assert_eq!(d.serving("m", "champion"), Some(5));
    assert_eq!(d.replaced("m", "champion"), Some(4));
}

#[test]
fn an_alias_deleted_and_re_created() {
    let mut d = Delivery::new(bounds());
    poll(
        &mut d,
        &registry(3, &[("champion", 1)], &[]),
        true,
        T0 + 10 * H,
    );
    let e = poll(&mut d, &registry(3, &[], &[]), false, T0 + 11 * H);
    assert_eq!(kinds(&e), vec![(Kind::AliasDeleted, "champion", None)]);
    assert_eq!(d.serving("m", "champion"), None);
    // Deleted again? Nothing more to say.
    assert!(poll(&mut d, &registry(3, &[], &[]), false, T0 + 12 * H).is_empty());
    // Re-created on a new version: a deployment, not a baseline, and no rollback.
    let e = poll(
        &mut d,
        &registry(3, &[("champion", 2)], &[]),
        false,
        T0 + 13 * H,
    );
    assert_eq!(kinds(&e), vec![(Kind::Deployment, "champion", Some(2))]);
    assert_eq!(e[0].dedup_key, "m\u{1f}champion\u{1f}3");
    let f = &d.figures[&("m".to_string(), "champion".to_string())];
    assert_eq!((f.deployments, f.rollbacks), (1, 0));
    // Deleted and re-created on version 1, which it served before: a rollback, with no recovery
    // time (nothing was serving in between).
    poll(&mut d, &registry(3, &[], &[]), false, T0 + 14 * H);
    poll(
        &mut d,
        &registry(3, &[("champion", 1)], &[]),
        false,
        T0 + 15 * H,
    );
    let f = &d.figures[&("m".to_string(), "champion".to_string())];
    assert_eq!((f.deployments, f.rollbacks), (2, 1));
    let h = &d.histograms[&(String::new(), "m".to_string())];
    assert!(h.rollback_recovery.counts.iter().all(|c| *c == 0));
    // Re-created: it replaced nothing.
    assert_eq!(d.replaced("m", "champion"), None);
}

#[test]
fn the_production_stage_is_a_target_serving_its_highest_version() {
    let mut d = Delivery::new(bounds());
    poll(&mut d, &registry(3, &[], &[1]), true, T0 + 10 * H);
    // Version 2 enters Production while 1 stays: the stage now serves 2.
    let e = poll(&mut d, &registry(3, &[], &[1, 2]), false, T0 + 11 * H);
    assert_eq!(kinds(&e), vec![(Kind::Deployment, PRODUCTION, Some(2))]);
    // Version 2 is archived: back to 1, a rollback.
    let e = poll(&mut d, &registry(3, &[], &[1]), false, T0 + 12 * H);
    assert_eq!(kinds(&e), vec![(Kind::Deployment, PRODUCTION, Some(1))]);
    let f = &d.figures[&("m".to_string(), PRODUCTION.to_string())];
    assert_eq!((f.deployments, f.rollbacks), (2, 1));
}

#[test]
fn folding_stored_events_again_gives_the_same_figures() {
    let mut live = Delivery::new(bounds());
    let mut all = Vec::new();
    for (first, aliases, at) in [
        (true, vec![("champion", 1)], 10),
        (false, vec![("champion", 3)], 11),
        (false, vec![("champion", 2)], 12),
        (false, vec![], 13),
    ] {
        all.extend(poll(
            &mut live,
            &registry(3, &aliases, &[]),
            first,
            T0 + at * H,
        ));
    }
    let mut rebuilt = Delivery::new(bounds());
    for e in &all {
        rebuilt.apply(e);
    }
    let key = ("m".to_string(), "champion".to_string());
    let (a, b) = (&live.figures[&key], &rebuilt.figures[&key]);
    assert_eq!((a.deployments, a.rollbacks), (b.deployments, b.rollbacks));
    let hk = (String::new(), "m".to_string());
    let (a, b) = (&live.histograms[&hk], &rebuilt.histograms[&hk]);
    assert_eq!(a.lead_time.counts, b.lead_time.counts);
    assert_eq!(a.rollback_recovery.sum_ms, b.rollback_recovery.sum_ms);
    // After the rebuild, the next poll sees what the live state saw: nothing new.
    let snap = registry(3, &[], &[]);
    assert!(rebuilt
        .detect(&snap, &serving(), true, T0 + 14 * H)
        .is_empty());
}

#[test]
fn incidents_open_once_and_resolve_once() {
    let mut d = Delivery::new(bounds());
    let open =
        |id, sev, at| Event::incident(Kind::IncidentOpened, Source::Alertmanager, id, "m", sev, at);
    let resolve = |id, sev, at| {
        Event::incident(
            Kind::IncidentResolved,
            Source::Alertmanager,
            id,
            "m",
            sev,
            at,
        )
    };
    for e in [
        open("a", "critical", T0),
        open("a", "critical", T0 + 60_000), // a repeat while open: no second incident
        open("b", "warning", T0),
        resolve("a", "critical", T0 + H),
        resolve("a", "critical", T0 + 2 * H), // already resolved
        resolve("c", "critical", T0),         // never opened
    ] {
        d.apply(&e);
    }
    let crit = &d.incidents[&("m".to_string(), "critical".to_string())];
    assert_eq!((crit.opened, crit.open), (1, 0));
    // m was never seen serving: its incidents' recovery is under __other__ of no team.
    let key = |sev: &str| (String::new(), OTHER.to_string(), sev.to_string());
    let recovery = &d.incident_recovery[&key("critical")];
    assert_eq!(recovery.sum_ms, H as u64);
    assert_eq!(recovery.counts, vec![0, 1, 0, 0]);
    assert_eq!(
        d.incident_recovery[&key("warning")].counts,
        Vec::<u64>::new()
    );
    let warn = &d.incidents[&("m".to_string(), "warning".to_string())];
    assert_eq!((warn.opened, warn.open), (1, 1));
    assert!(d.is_open("alertmanager\u{1f}b") && !d.is_open("alertmanager\u{1f}a"));
    // The same incident id from another source is another incident.
    assert_ne!(
        open("a", "x", 0).dedup_key,
        Event::incident(Kind::IncidentOpened, Source::Api, "a", "m", "x", 0).dedup_key
    );
}

#[test]
fn numbering_continues_past_stored_keys_when_old_events_were_purged() {
    let mut d = Delivery::new(bounds());
    let mut all = Vec::new();
    for (first, v, at) in [(true, 1, 10), (false, 2, 11), (false, 3, 12)] {
        all.extend(poll(
            &mut d,
            &registry(3, &[("champion", v)], &[]),
            first,
            T0 + at * H,
        ));
    }
    // Retention deleted the first two; a restart folds only the third (key n = 3).
    let mut rebuilt = Delivery::new(bounds());
    rebuilt.apply(&all[2]);
    let e = rebuilt.detect(
        &registry(3, &[("champion", 1)], &[]),
        &serving(),
        true,
        T0 + 13 * H,
    );
    assert_eq!(e[0].dedup_key, "m\u{1f}champion\u{1f}4");
}

#[test]
fn a_change_seen_by_the_webhook_and_by_polling_counts_once() {
    // Webhook first: MLflow's delivery names the change; the next poll finds nothing new.
    let mut d = Delivery::new(bounds());
    poll(
        &mut d,
        &registry(3, &[("champion", 1)], &[]),
        true,
        T0 + 10 * H,
    );
    let hook = d
        .change(
            Kind::Deployment,
            Source::MlflowWebhook,
            "m",
            "champion",
            2,
            T0 + 10 * H + 5_000,
            VersionTimes::default(),
        )
        .unwrap();
    d.apply(&hook);
    assert!(poll(
        &mut d,
        &registry(3, &[("champion", 2)], &[]),
        false,
        T0 + 11 * H
    )
    .is_empty());
    // Poll first: the webhook's late delivery of the same move has nothing to add.
    let e = poll(
        &mut d,
        &registry(3, &[("champion", 3)], &[]),
        false,
        T0 + 12 * H,
    );
    assert_eq!(e.len(), 1);
    assert!(d
        .change(
            Kind::Deployment,
            Source::MlflowWebhook,
            "m",
            "champion",
            3,
            T0 + 12 * H - 1,
            VersionTimes::default()
        )
        .is_none());
    let f = &d.figures[&("m".to_string(), "champion".to_string())];
    assert_eq!(f.deployments, 2);
    // Both orders name a change the same way, so the store would also keep one of two racing writers.
    let mut other = Delivery::new(bounds());
    poll(
        &mut other,
        &registry(3, &[("champion", 1)], &[]),
        true,
        T0 + 10 * H,
    );
    let polled = other.detect(
        &registry(3, &[("champion", 2)], &[]),
        &serving(),
        false,
        T0 + 11 * H,
    );
    assert_eq!(polled[0].dedup_key, hook.dedup_key);
}

#[test]
fn a_pushed_model_is_named_as_the_snapshot_names_it() {
    use crate::delivery::model_key;
    assert_eq!(model_key(false, Some("team-b"), "churn"), "churn");
    assert_eq!(model_key(true, Some("team-b"), "churn"), "team-b/churn");
    assert_eq!(model_key(true, None, "churn"), "default/churn");
    assert_eq!(model_key(true, Some(""), "a/b"), "default/a/b");
}

/// Adds prompt `m` (named as the model is, on purpose) with versions 1..=n, version i created at
/// T0 + i h, and its serving `aliases`.
fn with_prompt(snap: &mut Snapshot, n: u32, aliases: &[(&str, u32)]) {
    let s = &mut snap.strings;
    let (p, ready, none) = (s.intern("m"), s.intern("READY"), s.intern("None"));
    let team = Some(s.intern("nlp"));
    let aliases = aliases.iter().map(|(a, v)| (s.intern(a), *v)).collect();
    snap.prompts.insert(
        p,
        ModelRecord {
            aliases,
            team,
            workspace: None,
        },
    );
    for i in 1..=n {
        let created = T0 + i64::from(i) * H;
        snap.prompt_versions.insert(
            (p, i),
            VersionRecord {
                stage: none,
                status: ready,
                created_ms: created,
                last_updated_ms: created,
                run: None,
                logged_model: None,
            },
        );
    }
}

/// A prompt's alias moves are deployments in the prompts' history, with their own numbering and
/// figures: a model of the same name is not touched, and the two survive a checkpoint apart.
#[test]
fn prompt_alias_moves_are_deployments_of_prompts_apart_from_models() {
    let mut d = Delivery::new(bounds());
    let mut snap = registry(2, &[("champion", 1)], &[]);
    with_prompt(&mut snap, 3, &[("champion", 1), ("staging", 2)]);
    let events = poll(&mut d, &snap, true, T0 + 10 * H);
    let subjects: Vec<_> = events.iter().map(|e| (e.subject, e.kind)).collect();
    assert_eq!(
        subjects,
        [
            (Subject::Model, Kind::Baseline),
            (Subject::Prompt, Kind::Baseline)
        ]
    );
    assert_eq!(events[1].dedup_key, "prompt\u{1f}m\u{1f}champion\u{1f}1");
    assert_eq!(events[1].team.as_deref(), Some("nlp"));

    // The prompt moves to 3, then back to 1; the model stays.
    let at = T0 + 11 * H;
    snap.prompts.values_mut().next().unwrap().aliases =
        [(snap.strings.intern("champion"), 3)].into_iter().collect();
    let events = poll(&mut d, &snap, false, at);
    assert_eq!(kinds(&events), [(Kind::Deployment, "champion", Some(3))]);
    assert_eq!(events[0].subject, Subject::Prompt);
    assert_eq!(events[0].version_created_ms, Some(T0 + 3 * H));
    assert_eq!(events[0].run_start_ms, None);
    snap.prompts.values_mut().next().unwrap().aliases =
        [(snap.strings.intern("champion"), 1)].into_iter().collect();
    poll(&mut d, &snap, false, at + H);

    let key = ("m".to_string(), "champion".to_string());
    let model = &d.figures[&key];
    assert_eq!((model.deployments, model.rollbacks), (0, 0));
    let check = |d: &Delivery| {
        let p = &d.prompts().figures[&key];
        assert_eq!((p.deployments, p.rollbacks), (2, 1));
        assert_eq!(p.last_deployed_ms, at + H);
        let h = &d.prompts().histograms[&("nlp".to_string(), "m".to_string())];
        // Version 3, created at T0 + 3 h, deployed at T0 + 11 h: 8 h, within a day.
        assert_eq!(h.time_to_deploy.counts, [0, 0, 1, 0]);
        assert_eq!(h.time_to_deploy.sum_ms, 8 * H as u64);
        assert_eq!(h.lead_time.counts, Vec::<u64>::new());
        // Version 3 served 1 h before the rollback restored 1.
        assert_eq!(h.rollback_recovery.counts, [0, 1, 0, 0]);
        assert_eq!(d.prompts().serving("m", "champion"), Some(1));
        assert_eq!(d.serving("m", "champion"), Some(1));
        assert_eq!(d.events, 4);
    };
    check(&d);
    let back = Delivery::from_checkpoint(d.empty(), &d.checkpoint()).unwrap();
    check(&back);
    // The prompt's alias deleted: a deletion in the prompts' history only.
    snap.prompts.clear();
    let events = poll(&mut d, &snap, false, at + 2 * H);
    assert_eq!(kinds(&events), [(Kind::AliasDeleted, "champion", None)]);
    assert_eq!(events[0].subject, Subject::Prompt);
    assert_eq!(d.prompts().serving("m", "champion"), None);
    assert_eq!(d.serving("m", "champion"), Some(1));
}

/// A checkpoint written before prompts were has none: it is read, with an empty prompts' history.
#[test]
fn a_checkpoint_without_prompts_is_read() {
    let d = Delivery::new(bounds());
    let mut v: serde_json::Value = serde_json::from_str(&d.checkpoint()).unwrap();
    v.as_object_mut().unwrap().remove("prompts");
    let back = Delivery::from_checkpoint(d.empty(), &v.to_string()).unwrap();
    assert_eq!(back.prompts().targets().count(), 0);
    assert!(back.prompts.is_some());
}
