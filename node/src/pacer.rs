//! When a node sends its beacons (sans-IO: the caller passes the time): mDNS-style storm
//! control. Periods are jittered, so nodes started together do not beacon in lockstep; a
//! change may send a beacon early, but never more than a set number in any one period, so a
//! node whose table changes quickly, or a large cluster, cannot flood the group — changes that
//! come faster coalesce into the next beacon allowed (the table sends everything since).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Beacon timing for one node.
#[derive(Debug, Clone)]
pub struct Pacer {
    period: Duration,
    /// Largest deviation from `period`, either way.
    jitter: Duration,
    max_per_period: usize,
    /// Send times of the last `max_per_period` beacons, oldest first.
    recent: VecDeque<Instant>,
    /// When the next beacon is due if nothing changes.
    next_regular: Instant,
    /// A change is waiting to go out early.
    urgent: bool,
    /// Changes that asked for an early beacon while the limit held them back.
    deferred: u64,
    rng: u64,
}

impl Pacer {
    /// Beacons every `period` ± `jitter_percent`% (capped at 50), at most `max_per_period`
    /// (at least 1) in any interval of one period; the first is due at `now`. `seed` drives
    /// the jitter (differing per node is what breaks lockstep).
    pub fn new(period: Duration, jitter_percent: u32, max_per_period: u32, seed: u64, now: Instant) -> Self {
        Pacer {
            period,
            jitter: period * jitter_percent.min(50) / 100,
            max_per_period: max_per_period.max(1) as usize,
            recent: VecDeque::new(),
            next_regular: now,
            urgent: false,
            deferred: 0,
            rng: seed,
        }
    }

    /// A change should go out before the next regular beacon (as soon as the limit allows).
    pub fn urge(&mut self, now: Instant) {
        if !self.urgent && self.allowed_at().is_some_and(|t| t > now) {
            self.deferred += 1;
        }
        self.urgent = true;
    }

    /// Changes that had to wait for the rate limit (they went out together in a later beacon).
    pub fn deferred(&self) -> u64 {
        self.deferred
    }

    /// The earliest the limit allows another beacon, if it holds one back at all.
    fn allowed_at(&self) -> Option<Instant> {
        (self.recent.len() >= self.max_per_period).then(|| self.recent[0] + self.period)
    }

    /// When the next beacon should be sent: send it once `now` reaches this.
    pub fn due(&self) -> Instant {
        let wanted = if self.urgent { None } else { Some(self.next_regular) };
        match (wanted, self.allowed_at()) {
            (Some(w), Some(a)) => w.max(a),
            (Some(w), None) => w,
            (None, Some(a)) => a,
            // Urgent and not limited: now (the oldest send is in the past).
            (None, None) => self.recent.back().copied().unwrap_or(self.next_regular),
        }
    }

    /// A beacon was sent at `now`: it carried every change so far, and the next regular one
    /// is a jittered period away.
    pub fn on_sent(&mut self, now: Instant) {
        self.recent.push_back(now);
        while self.recent.len() > self.max_per_period {
            self.recent.pop_front();
        }
        self.urgent = false;
        self.next_regular = now + self.jittered();
    }

    fn jittered(&mut self) -> Duration {
        let span = self.jitter.as_nanos() as u64;
        if span == 0 {
            return self.period;
        }
        // splitmix64: plenty for spreading beacons, and no dependency.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (self.period - self.jitter) + Duration::from_nanos(z % (2 * span + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Duration = Duration::from_millis(100);

    /// Run the pacer like the beacon task does, for `total`, with changes at `changes`
    /// (offsets); the send times.
    fn simulate(p: &mut Pacer, t0: Instant, total: Duration, changes: &[Duration]) -> Vec<Duration> {
        let mut sent = Vec::new();
        let mut changes = changes.iter().copied().peekable();
        let mut now = t0;
        while now < t0 + total {
            // The next event: a change, or the pacer's due time.
            let due = p.due();
            match changes.peek() {
                Some(&c) if t0 + c <= due.max(now) => {
                    now = now.max(t0 + c);
                    p.urge(now);
                    changes.next();
                }
                _ => {
                    now = now.max(due);
                    if now >= t0 + total {
                        break;
                    }
                    p.on_sent(now);
                    sent.push(now - t0);
                }
            }
        }
        sent
    }

    #[test]
    fn periods_are_jittered_within_bounds_and_differ_between_nodes() {
        let t0 = Instant::now();
        let gaps = |seed| {
            let mut p = Pacer::new(P, 10, 2, seed, t0);
            let sent = simulate(&mut p, t0, P * 50, &[]);
            sent.windows(2).map(|w| w[1] - w[0]).collect::<Vec<_>>()
        };
        let (a, b) = (gaps(1), gaps(2));
        assert!(a.len() >= 44, "{} beacons in 50 periods", a.len());
        assert!(a.iter().chain(&b).all(|g| *g >= P * 9 / 10 && *g <= P * 11 / 10), "{a:?}");
        assert_ne!(a, b, "two nodes' schedules differ");
        assert!(a.iter().any(|g| *g != a[0]), "periods vary");
    }

    #[test]
    fn without_jitter_beacons_are_exactly_periodic() {
        let t0 = Instant::now();
        let mut p = Pacer::new(P, 0, 2, 1, t0);
        let sent = simulate(&mut p, t0, P * 5 + P / 2, &[]);
        assert_eq!(sent, (0..6).map(|i| P * i).collect::<Vec<_>>());
    }

    #[test]
    fn a_change_goes_out_at_once_when_the_limit_allows() {
        let t0 = Instant::now();
        let mut p = Pacer::new(P, 0, 2, 1, t0);
        let sent = simulate(&mut p, t0, P * 2, &[P / 2]);
        // The change at 50 ms went out then, and the regular schedule restarted from it.
        assert_eq!(sent, [Duration::ZERO, P / 2, P * 3 / 2]);
        assert_eq!(p.deferred(), 0);
    }

    #[test]
    fn a_burst_of_changes_coalesces_under_the_rate_limit() {
        let t0 = Instant::now();
        let mut p = Pacer::new(P, 10, 2, 7, t0);
        // A thousand changes, one every 100 µs, for 100 ms from t = 10 ms.
        let changes: Vec<Duration> = (0..1000).map(|i| P / 10 + Duration::from_micros(100 * i)).collect();
        let sent = simulate(&mut p, t0, P * 10, &changes);
        // Never more than two beacons in any interval of one period.
        for (i, &t) in sent.iter().enumerate() {
            let in_window = sent[i..].iter().take_while(|&&u| u < t + P).count();
            assert!(in_window <= 2, "{in_window} beacons within a period from {t:?}: {sent:?}");
        }
        // The changes did go out early (the first at once), and the rest were held back.
        assert_eq!(sent[1], P / 10);
        assert!(sent.len() < 25, "{} beacons in 10 periods", sent.len());
        assert!(p.deferred() >= 1);
    }

    #[test]
    fn the_limit_also_holds_with_one_beacon_per_period() {
        let t0 = Instant::now();
        let mut p = Pacer::new(P, 0, 1, 1, t0);
        let sent = simulate(&mut p, t0, P * 3, &[P / 10, P / 5]);
        // The changes waited for the period after the first beacon, together.
        assert_eq!(sent, [Duration::ZERO, P, P * 2]);
    }
}
