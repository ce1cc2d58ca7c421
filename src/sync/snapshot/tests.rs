//! Unit tests of the snapshot: the size of a run's record, strings absorbed from a page, the runs
//! table, interned label combinations, run keys and compute time by status.

use super::*;

#[test]
fn run_records_stay_small() {
    // The budget is 300 bytes per run including the map's own overhead.
    assert!(
        std::mem::size_of::<RunRecord>() <= 96,
        "{}",
        std::mem::size_of::<RunRecord>()
    );
    assert_eq!(std::mem::size_of::<Option<Sym>>(), 4);
}

#[test]
fn an_absorbed_table_renames_records_to_the_same_strings() {
    let mut global = Interner::default();
    let (a, b) = (global.intern("exp-1"), global.intern("alice"));
    let mut page = Interner::default();
    let (pb, pc, pa) = (
        page.intern("alice"),
        page.intern("team-x"),
        page.intern("exp-1"),
    );
    let combo = page.intern_combo(&[Some(pc), None]);
    let mut rec = RunRecord::new(pa, RunStatus::Finished, 1, 2);
    (rec.user, rec.team, rec.instance_type, rec.extra) = (Some(pb), Some(pc), None, combo);
    global.intern_combo(&[None, None]);
    let remap = global.absorb(&page);
    remap.run(&mut rec);
    assert_eq!((rec.experiment, rec.user), (a, Some(b)));
    assert_eq!(global.get(rec.team.unwrap()), "team-x");
    assert_eq!(rec.instance_type, None);
    let c = global.lookup("team-x");
    assert_eq!(global.combo(rec.extra), &[c, None]);
    assert_eq!(rec.extra, 1);
}

#[test]
fn runs_upsert_in_place_and_keep_their_keys() {
    let experiment = Interner::default().intern("1");
    let rec = |start| RunRecord::new(experiment, RunStatus::Running, start, NO_TIME);
    let (a, b) = (rec(1), rec(2));
    let mut runs = Runs::default();
    runs.insert(u128::MAX, a);
    runs.insert(7, b);
    runs.insert(u128::MAX, rec(3));
    assert_eq!(runs.len(), 2);
    assert_eq!(runs.get(&u128::MAX).unwrap().start_ms, 3);
    assert_eq!(runs.get(&7).unwrap().start_ms, 2);
    assert!(runs.get(&8).is_none());
    let pairs: Vec<(RunKey, i64)> = runs.iter().map(|(k, r)| (k, r.start_ms)).collect();
    assert_eq!(pairs, vec![(u128::MAX, 3), (7, 2)]);
}

#[test]
fn extra_label_combinations_are_interned() {
    let mut s = Interner::default();
    let (a, b) = (s.intern("a"), s.intern("b"));
    let x = s.intern_combo(&[Some(a), None]);
    let y = s.intern_combo(&[Some(b), None]);
    assert_eq!(s.intern_combo(&[Some(a), None]), x);
    assert_ne!(x, y);
    assert_eq!(s.combo(y), &[Some(b), None]);
    assert_eq!(s.combo(99), &[] as &[Option<Sym>]);
    assert_eq!(s.combos(), 2);
}

#[test]
fn run_keys_round_trip_hex_ids() {
    // Any first digit: ids from 8… up fill the top bit of the key too.
    for id in [
        "0123456789abcdef0123456789abcdef",
        "fedcba9876543210fedcba9876543210",
    ] {
        assert!(is_hex_run_id(id));
        assert_eq!(run_id(run_key(id)), id);
    }
    assert!(!is_hex_run_id("not-hex"));
    assert_ne!(run_key("not-hex"), run_key("not-hex2"));
    assert_eq!(run_key("not-hex"), run_key("not-hex"));
}

#[test]
fn compute_time_of_each_status() {
    let experiment = Interner::default().intern("1");
    let mut r = RunRecord::new(experiment, RunStatus::Finished, 1_000, 61_000);
    assert_eq!(r.compute_ms(100_000), 60_000);
    assert_eq!(r.duration_ms(), Some(60_000));
    r.status = RunStatus::Running;
    r.end_ms = NO_TIME;
    assert_eq!(r.compute_ms(100_000), 99_000);
    assert_eq!(r.duration_ms(), None);
    r.status = RunStatus::Scheduled;
    assert_eq!(r.compute_ms(100_000), 0);
    // A clock behind the run's start never gives negative time.
    r.status = RunStatus::Running;
    assert_eq!(r.compute_ms(500), 0);
}
