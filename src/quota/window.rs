//! A sliding window of fixed buckets, as the memory backend keeps it per service and limit.
//!
//! The window is split into `BUCKETS` buckets; an amount counts from the moment it is added until
//! its whole bucket has left the window. That errs on the safe side: an amount is counted for at
//! least the window's length (and at most one bucket longer), so no window of that length ever
//! holds more than the limit, and there is no boundary at which a double burst gets through.

/// Buckets per window: a minute in 5 s buckets, an hour in 5 min buckets.
pub const BUCKETS: u64 = 12;
const SLOTS: usize = BUCKETS as usize + 1;

#[derive(Debug, Clone)]
pub struct Window {
    bucket_ms: u64,
    /// `(bucket number, amount)`; a bucket number is `time / bucket_ms`.
    slots: [(u64, u64); SLOTS],
}

impl Window {
    pub fn new(window_ms: u64) -> Window {
        Window {
            bucket_ms: (window_ms / BUCKETS).max(1),
            slots: [(0, 0); SLOTS],
        }
    }

    fn bucket(&self, at_ms: u64) -> u64 {
        at_ms / self.bucket_ms
    }

    /// Whether bucket `number` still counts at bucket `current`.
    fn live(number: u64, current: u64) -> bool {
        number + BUCKETS >= current
    }

    /// The amount counted at `now_ms`.
    pub fn total(&self, now_ms: u64) -> u64 {
        let current = self.bucket(now_ms);
        self.slots
            .iter()
            .filter(|(number, _)| Window::live(*number, current))
            .map(|(_, amount)| amount)
            .sum()
    }

    /// Adds an amount at `at_ms`. An amount for a bucket whose slot a newer bucket has taken
    /// over is dropped: it has left the window already, and the newer counts must stay.
    pub fn add(&mut self, at_ms: u64, amount: u64) {
        let number = self.bucket(at_ms);
        let slot = &mut self.slots[(number % SLOTS as u64) as usize];
        if amount == 0 || slot.0 > number {
            return;
        }
        if slot.0 != number {
            *slot = (number, 0);
        }
        slot.1 += amount;
    }

    /// Takes back (part of) an amount added at `at_ms`, if its bucket is still kept.
    pub fn remove(&mut self, at_ms: u64, amount: u64) {
        let number = self.bucket(at_ms);
        let slot = &mut self.slots[(number % SLOTS as u64) as usize];
        if slot.0 == number {
            slot.1 = slot.1.saturating_sub(amount);
        }
    }

    /// Milliseconds from `now_ms` until `need` more fits under `limit`.
    pub fn retry_after_ms(&self, now_ms: u64, need: u64, limit: u64) -> u64 {
        let current = self.bucket(now_ms);
        let mut live: Vec<(u64, u64)> = self
            .slots
            .iter()
            .copied()
            .filter(|(number, amount)| *amount > 0 && Window::live(*number, current))
            .collect();
        live.sort_unstable();
        let mut total: u64 = live.iter().map(|(_, amount)| amount).sum();
        for (number, amount) in live {
            total -= amount;
            if total + need <= limit {
                return ((number + BUCKETS + 1) * self.bucket_ms).saturating_sub(now_ms);
            }
        }
        (BUCKETS + 1) * self.bucket_ms
    }

    /// Whether nothing is counted any more at `now_ms`.
    pub fn is_empty(&self, now_ms: u64) -> bool {
        self.total(now_ms) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60_000;

    #[test]
    fn counts_for_at_least_the_window_and_frees_after() {
        let mut w = Window::new(MINUTE);
        w.add(4_999, 3);
        assert_eq!(w.total(4_999), 3);
        // Still counted a full minute after it was added…
        assert_eq!(w.total(4_999 + MINUTE), 3);
        // …and gone once its bucket has left the window.
        assert_eq!(w.total(65_000), 0);
    }

    #[test]
    fn no_double_burst_at_any_boundary() {
        // Whatever the timing, any 60 s span admits at most the limit.
        let limit = 10;
        for start in (0..MINUTE).step_by(777) {
            let mut w = Window::new(MINUTE);
            let mut admitted = Vec::new();
            let mut t = start;
            while t < start + 3 * MINUTE {
                if w.total(t) < limit {
                    w.add(t, 1);
                    admitted.push(t);
                }
                t += 250;
            }
            for &from in &admitted {
                let inside = admitted
                    .iter()
                    .filter(|&&a| a >= from && a < from + MINUTE)
                    .count();
                assert!(
                    inside as u64 <= limit,
                    "start {start}: {inside} in the minute from {from}"
                );
            }
        }
    }

    #[test]
    fn retry_after_points_at_the_moment_room_is_back() {
        let mut w = Window::new(MINUTE);
        w.add(1_000, 1);
        w.add(20_000, 1);
        let wait = w.retry_after_ms(30_000, 1, 2);
        assert!(w.total(30_000 + wait - 1) + 1 > 2);
        assert!(w.total(30_000 + wait) < 2);
    }

    #[test]
    fn a_late_addition_never_overwrites_a_newer_bucket() {
        let mut w = Window::new(MINUTE);
        let now = 10 * MINUTE;
        w.add(now, 4);
        // An upload reserved 13 buckets ago settles now: its bucket's slot is the current one.
        w.add(now - 13 * 5_000, 1);
        assert_eq!(w.total(now), 4);
    }

    #[test]
    fn removal_refunds_the_bucket_it_was_added_to() {
        let mut w = Window::new(MINUTE);
        w.add(1_000, 5);
        w.remove(1_000, 2);
        assert_eq!(w.total(2_000), 3);
        w.remove(1_000 + 2 * MINUTE, 3); // a bucket long gone: nothing to take back
        assert_eq!(w.total(2_000), 3);
    }
}
