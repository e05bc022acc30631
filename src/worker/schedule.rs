//! When a worker acts: its snapshot grid, the delay of its first
//! snapshot, the deadline of each snapshot, and the backoff between
//! reconnection attempts and restarts. Pure functions of time, no I/O.

use std::time::{Duration, Instant};

use crate::repository::metas::LastSnapshot;

/// The shortest default snapshot deadline.
pub const MIN_DEFAULT_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);

/// The deadline of one snapshot: `configured` (the `snapshot_timeout` key)
/// when set, otherwise the period, and at least a minute, so that a slow
/// but healthy snapshot (the first one of a PoWA 5 server imports every
/// catalog) is not cut short while a stuck one is.
pub fn snapshot_timeout(period: Duration, configured: Option<Duration>) -> Duration {
    configured.unwrap_or_else(|| period.max(MIN_DEFAULT_SNAPSHOT_TIMEOUT))
}

/// Capped exponential backoff with jitter, for retries that must neither
/// hammer a peer nor run in step with the other workers' retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            failures: 0,
        }
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records a failure; returns how long to wait before the next try:
    /// `base`, doubled at each failure, capped at `cap`, then scaled by
    /// `jitter` (a random factor in 0.5..=1.0 in production).
    pub fn failed(&mut self, jitter: f64) -> Duration {
        let doubling = self.failures.min(20);
        self.failures = self.failures.saturating_add(1);
        let full = self.base.saturating_mul(1 << doubling).min(self.cap);
        full.mul_f64(jitter.clamp(0.5, 1.0))
    }

    /// Records a success: the next failure starts from `base` again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }
}

/// A jitter factor for [`Backoff::failed`]: random in 0.5..1.0.
pub fn jitter() -> f64 {
    0.5 + fastrand::f64() / 2.0
}

/// When the next snapshot is due.
///
/// Snapshots follow a fixed grid, `frequency` seconds apart, measured from
/// the start of each snapshot: the time a snapshot takes does not push the
/// next one back, so the period does not drift. A worker more than a whole
/// period late (the remote was unreachable, the machine was suspended)
/// starts a new grid rather than catching up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    next: Instant,
    period: Duration,
}

impl Schedule {
    /// A schedule whose first snapshot is `delay` after `now`.
    pub fn new(now: Instant, delay: Duration, period: Duration) -> Schedule {
        Schedule {
            next: now + delay,
            period,
        }
    }

    /// How long to wait, from `now`, for the next snapshot.
    pub fn wait(&self, now: Instant) -> Duration {
        self.next.saturating_duration_since(now)
    }

    /// When the next snapshot is due.
    pub fn due(&self) -> Instant {
        self.next
    }

    /// Records that a snapshot started at `at`.
    pub fn started(&mut self, at: Instant) {
        let on_grid = self.next + self.period;
        self.next = if on_grid > at {
            on_grid
        } else {
            at + self.period
        };
    }

    /// Records that an unscheduled (forced) snapshot started at `at`: the
    /// grid starts again from it.
    pub fn restart(&mut self, at: Instant) {
        self.next = at + self.period;
    }

    /// Changes the period; the next snapshot is one new period after the
    /// last one.
    pub fn change_period(&mut self, period: Duration) {
        if period != self.period {
            self.next = self.next.checked_sub(self.period).unwrap_or(self.next) + period;
            self.period = period;
        }
    }
}

/// Delay before the first snapshot of a worker that starts now.
///
/// A recent snapshot (younger than `frequency`) keeps its rhythm. Otherwise
/// (never taken, or long ago, as after the collector was down) the last
/// snapshot is taken to be `pick(frequency)` seconds old, a random number
/// below `frequency`, so that many servers do not all snapshot at once.
pub fn first_delay(last: LastSnapshot, frequency: u32, pick: impl FnOnce(u32) -> u32) -> Duration {
    let frequency_secs = f64::from(frequency);
    let age = match last {
        LastSnapshot::SecondsAgo(age) if (0.0..=frequency_secs).contains(&age) => age,
        _ => f64::from(pick(frequency).min(frequency.saturating_sub(1))),
    };
    Duration::from_secs_f64(frequency_secs - age)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_secs(5);

    #[test]
    fn snapshot_time_does_not_push_the_next_one() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new(t0, Duration::ZERO, PERIOD);
        let mut starts = Vec::new();
        // Each snapshot starts a little late and lasts a while: the grid holds.
        for late_ms in [3, 40, 7, 250, 1] {
            let start = t0 + schedule.wait(t0) + Duration::from_millis(late_ms);
            starts.push(start);
            schedule.started(start);
        }
        for (k, start) in starts.iter().enumerate() {
            let due = t0 + PERIOD * k as u32;
            assert!(*start - due < Duration::from_millis(300), "snapshot {k}");
        }
        assert_eq!(schedule.wait(t0), PERIOD * 5);
    }

    #[test]
    fn a_snapshot_longer_than_the_period_is_followed_at_once() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new(t0, Duration::ZERO, PERIOD);
        schedule.started(t0);
        let end = t0 + Duration::from_secs(7);
        assert_eq!(schedule.wait(end), Duration::ZERO);
        schedule.started(end);
        assert_eq!(schedule.wait(end), Duration::from_secs(3));
    }

    #[test]
    fn a_worker_far_behind_starts_a_new_grid() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new(t0, Duration::ZERO, PERIOD);
        let late = t0 + Duration::from_secs(23);
        schedule.started(late);
        assert_eq!(schedule.wait(late), PERIOD);
    }

    #[test]
    fn forced_snapshots_and_new_periods_move_the_grid() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new(t0, PERIOD, PERIOD);
        let forced = t0 + Duration::from_secs(2);
        schedule.restart(forced);
        assert_eq!(schedule.wait(forced), PERIOD);
        schedule.change_period(Duration::from_secs(60));
        assert_eq!(schedule.wait(forced), Duration::from_secs(60));
        schedule.change_period(Duration::from_secs(60));
        assert_eq!(schedule.wait(forced), Duration::from_secs(60));
    }

    #[test]
    fn first_delay_keeps_a_recent_rhythm() {
        let never_random = |_| panic!("no randomness expected");
        assert_eq!(
            first_delay(LastSnapshot::SecondsAgo(2.0), 5, never_random),
            Duration::from_secs(3)
        );
        assert_eq!(
            first_delay(LastSnapshot::SecondsAgo(5.0), 5, never_random),
            Duration::ZERO
        );
    }

    #[test]
    fn first_delay_spreads_old_and_missing_snapshots() {
        for last in [
            LastSnapshot::Never,
            LastSnapshot::SecondsAgo(3600.0),
            LastSnapshot::SecondsAgo(-4.0),
        ] {
            assert_eq!(first_delay(last, 300, |_| 0), Duration::from_secs(300));
            assert_eq!(first_delay(last, 300, |_| 299), Duration::from_secs(1));
            // An out-of-range pick is clamped: the delay is never zero.
            assert_eq!(first_delay(last, 300, |_| 1000), Duration::from_secs(1));
        }
    }

    #[test]
    fn first_delay_randomness_stays_in_range() {
        for _ in 0..1000 {
            let delay = first_delay(LastSnapshot::Never, 5, |below| fastrand::u32(..below));
            assert!(delay >= Duration::from_secs(1) && delay <= Duration::from_secs(5));
        }
    }

    #[test]
    fn snapshot_deadline_defaults_to_the_period_and_a_minute_at_least() {
        let configured = Some(Duration::from_secs(7));
        assert_eq!(snapshot_timeout(PERIOD, configured), Duration::from_secs(7));
        assert_eq!(snapshot_timeout(PERIOD, None), Duration::from_secs(60));
        let five_minutes = Duration::from_secs(300);
        assert_eq!(snapshot_timeout(five_minutes, None), five_minutes);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_starts_over_after_a_success() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let waits: Vec<u64> = (0..6).map(|_| backoff.failed(1.0).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff.failures(), 6);
        assert_eq!(
            backoff.failed(0.5),
            Duration::from_secs(5),
            "jitter halves at most"
        );
        backoff.succeeded();
        assert_eq!(backoff.failed(1.0), Duration::from_secs(1));
        for _ in 0..100 {
            let wait = backoff.failed(jitter());
            assert!(wait <= Duration::from_secs(10), "{wait:?}");
        }
    }
}
