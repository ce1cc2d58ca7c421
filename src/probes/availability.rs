//! The up/down history of one endpoint, as a pure state machine over probe results: after enough
//! consecutive failures an outage opens (dated from the first of them), the next success closes it;
//! uptime, outage time and outage count accumulate exactly and only ever grow.

/// What is known of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No result yet since start-up (and no outage open).
    Unknown,
    Up,
    Down,
}

/// A change the store must keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened { start_ms: i64 },
    Closed { start_ms: i64, end_ms: i64 },
}

/// Totals saved to and restored from the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub uptime_ms: i64,
    pub outage_ms: i64,
    pub outages: u64,
    /// Time of the latest result these totals cover.
    pub observed_ms: i64,
    /// Start of the outage still open, if any.
    pub open_since_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Availability {
    state: State,
    /// Up: start of the up time not yet added to `uptime_ms`.
    since_ms: i64,
    /// Consecutive failures not yet judged an outage, and when the first of them happened.
    streak: u32,
    first_failure_ms: i64,
    uptime_ms: i64,
    /// Closed outages only.
    closed_outage_ms: i64,
    outages: u64,
    /// Down: when the outage began.
    outage_start_ms: i64,
    last_ms: i64,
}

impl Availability {
    pub fn new() -> Availability {
        Availability::restore(Totals::default())
    }

    /// Continues from saved totals. An outage open at shutdown stays open until a success is seen;
    /// time the exporter was not running while the endpoint was up is counted nowhere.
    pub fn restore(t: Totals) -> Availability {
        let (state, outage_start_ms, closed) = match t.open_since_ms {
            Some(start) => (
                State::Down,
                start,
                t.outage_ms - (t.observed_ms - start).max(0),
            ),
            None => (State::Unknown, 0, t.outage_ms),
        };
        Availability {
            state,
            since_ms: t.observed_ms,
            streak: 0,
            first_failure_ms: 0,
            uptime_ms: t.uptime_ms,
            closed_outage_ms: closed,
            outages: t.outages,
            outage_start_ms,
            last_ms: t.observed_ms,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Takes one result at `t_ms`. `threshold` consecutive failures make an outage.
    pub fn observe(&mut self, t_ms: i64, ok: bool, threshold: u32) -> Option<Transition> {
        // A clock stepping back must not make a negative interval.
        let t = t_ms.max(self.last_ms);
        self.last_ms = t;
        match (self.state, ok) {
            (State::Up, true) => {
                self.uptime_ms += t - self.since_ms;
                self.since_ms = t;
                self.streak = 0;
                None
            }
            (State::Unknown, true) => {
                self.state = State::Up;
                self.since_ms = t;
                self.streak = 0;
                None
            }
            (State::Up | State::Unknown, false) => {
                if self.streak == 0 {
                    self.first_failure_ms = t;
                }
                self.streak += 1;
                if self.streak < threshold.max(1) {
                    return None;
                }
                if self.state == State::Up {
                    self.uptime_ms += self.first_failure_ms - self.since_ms;
                }
                self.state = State::Down;
                self.streak = 0;
                self.outages += 1;
                self.outage_start_ms = self.first_failure_ms;
                Some(Transition::Opened {
                    start_ms: self.outage_start_ms,
                })
            }
            (State::Down, false) => None,
            (State::Down, true) => {
                self.closed_outage_ms += t - self.outage_start_ms;
                self.state = State::Up;
                self.since_ms = t;
                Some(Transition::Closed {
                    start_ms: self.outage_start_ms,
                    end_ms: t,
                })
            }
        }
    }

    /// Totals as of the latest result. Up time during a run of failures not yet judged is held back
    /// until it is (so the counters never go down).
    pub fn totals(&self) -> Totals {
        let pending_up = match self.state {
            State::Up if self.streak > 0 => self.first_failure_ms - self.since_ms,
            State::Up => self.last_ms - self.since_ms,
            _ => 0,
        };
        let open = self.state == State::Down;
        Totals {
            uptime_ms: self.uptime_ms + pending_up,
            outage_ms: self.closed_outage_ms
                + if open {
                    self.last_ms - self.outage_start_ms
                } else {
                    0
                },
            outages: self.outages,
            observed_ms: self.last_ms,
            open_since_ms: open.then_some(self.outage_start_ms),
        }
    }
}

impl Default for Availability {
    fn default() -> Self {
        Availability::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(threshold: u32, results: &[(i64, bool)]) -> (Availability, Vec<Transition>) {
        let mut a = Availability::new();
        let t = results
            .iter()
            .filter_map(|&(t, ok)| a.observe(t, ok, threshold))
            .collect();
        (a, t)
    }

    #[test]
    fn one_failure_opens_an_outage_and_a_success_closes_it() {
        let (a, t) = run(
            1,
            &[
                (1_000, true),
                (2_000, true),
                (3_000, false),
                (4_000, false),
                (5_000, true),
                (6_000, true),
            ],
        );
        assert_eq!(
            t,
            vec![
                Transition::Opened { start_ms: 3_000 },
                Transition::Closed {
                    start_ms: 3_000,
                    end_ms: 5_000
                }
            ]
        );
        // Up 1–3 s and 5–6 s; down 3–5 s.
        assert_eq!(
            a.totals(),
            Totals {
                uptime_ms: 3_000,
                outage_ms: 2_000,
                outages: 1,
                observed_ms: 6_000,
                open_since_ms: None
            }
        );
    }

    #[test]
    fn an_outage_needs_the_threshold_and_dates_from_its_first_failure() {
        // A blip of two failures under a threshold of three is up time.
        let (a, t) = run(
            3,
            &[(0, true), (1_000, false), (2_000, false), (3_000, true)],
        );
        assert!(t.is_empty());
        assert_eq!(a.totals().uptime_ms, 3_000);
        assert_eq!(a.totals().outages, 0);

        let (mut a, t) = run(3, &[(0, true), (1_000, false), (2_000, false)]);
        assert!(t.is_empty());
        // Held back while undecided: up time stops at the first failure.
        assert_eq!(a.totals().uptime_ms, 1_000);
        assert_eq!(
            a.observe(3_000, false, 3),
            Some(Transition::Opened { start_ms: 1_000 })
        );
        assert_eq!(
            a.totals(),
            Totals {
                uptime_ms: 1_000,
                outage_ms: 2_000,
                outages: 1,
                observed_ms: 3_000,
                open_since_ms: Some(1_000)
            }
        );
        assert_eq!(
            a.observe(10_000, true, 3),
            Some(Transition::Closed {
                start_ms: 1_000,
                end_ms: 10_000
            })
        );
        assert_eq!(a.totals().outage_ms, 9_000);
    }

    #[test]
    fn down_from_the_start_is_an_outage() {
        let (a, t) = run(2, &[(500, false), (1_500, false), (2_500, false)]);
        assert_eq!(t, vec![Transition::Opened { start_ms: 500 }]);
        assert_eq!(
            a.totals(),
            Totals {
                uptime_ms: 0,
                outage_ms: 2_000,
                outages: 1,
                observed_ms: 2_500,
                open_since_ms: Some(500)
            }
        );
    }

    #[test]
    fn totals_survive_a_restart_and_an_open_outage_continues() {
        let (a, _) = run(
            1,
            &[(0, true), (4_000, true), (5_000, false), (6_000, false)],
        );
        let saved = a.totals();
        assert_eq!(
            saved,
            Totals {
                uptime_ms: 5_000,
                outage_ms: 1_000,
                outages: 1,
                observed_ms: 6_000,
                open_since_ms: Some(5_000)
            }
        );
        let mut b = Availability::restore(saved);
        assert_eq!(b.state(), State::Down);
        assert_eq!(b.totals(), saved);
        // Still down after the restart, then back: one outage, 5 s → 20 s.
        assert_eq!(b.observe(15_000, false, 1), None);
        assert_eq!(
            b.observe(20_000, true, 1),
            Some(Transition::Closed {
                start_ms: 5_000,
                end_ms: 20_000
            })
        );
        assert_eq!(b.observe(21_000, true, 1), None);
        assert_eq!(
            b.totals(),
            Totals {
                uptime_ms: 6_000,
                outage_ms: 15_000,
                outages: 1,
                observed_ms: 21_000,
                open_since_ms: None
            }
        );

        // Up at shutdown: the time until the first result after the restart is not counted.
        let (a, _) = run(1, &[(0, true), (2_000, true)]);
        let mut c = Availability::restore(a.totals());
        assert_eq!(c.state(), State::Unknown);
        c.observe(60_000, true, 1);
        c.observe(61_000, true, 1);
        assert_eq!(c.totals().uptime_ms, 3_000);
    }

    #[test]
    fn totals_never_decrease_even_when_the_clock_steps_back() {
        let mut a = Availability::new();
        let mut last = a.totals();
        let results = [
            (0, true),
            (5_000, true),
            (4_000, false),
            (3_000, false),
            (9_000, true),
            (8_000, true),
            (12_000, false),
        ];
        for (t, ok) in results {
            a.observe(t, ok, 2);
            let now = a.totals();
            assert!(
                now.uptime_ms >= last.uptime_ms && now.outage_ms >= last.outage_ms,
                "{last:?} → {now:?}"
            );
            last = now;
        }
        // Failures at 5 s (4 s, stepped back) and 5 s (3 s) open an outage at 5 s; 9 s closes it.
        assert_eq!(last.outages, 1);
        assert_eq!(last.outage_ms, 4_000);
        assert_eq!(last.uptime_ms, 5_000 + 3_000);
    }
}
