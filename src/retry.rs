//! The per-worker retry budget: how much retries may add to the load on a failing pool.
//! Owned by one worker, so it is plain numbers, no atomics.

/// A worker's retry budget: each request deposits `ratio` of a token, each retry spends
/// one; `min_per_sec` tokens also trickle in so a quiet worker can still retry. Per worker,
/// so no state is shared (Finagle's RetryBudget, without the sliding window).
#[derive(Debug, Clone)]
pub struct RetryBudget {
    tokens: f64,
    cap: f64,
    ratio: f64,
    min_per_sec: f64,
    last_ms: u64,
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_sec: f64) -> RetryBudget {
        let cap = (min_per_sec * 10.0).max(10.0);
        RetryBudget {
            tokens: min_per_sec.max(1.0),
            cap,
            ratio,
            min_per_sec,
            last_ms: 0,
        }
    }

    #[inline]
    pub fn deposit(&mut self) {
        self.tokens = (self.tokens + self.ratio).min(self.cap);
    }

    /// Takes one token if there is one; `now_ms` refills the trickle.
    pub fn withdraw(&mut self, now_ms: u64) -> bool {
        if self.last_ms != 0 {
            let dt = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
            self.tokens = (self.tokens + dt * self.min_per_sec).min(self.cap);
        }
        self.last_ms = now_ms;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_budget_limits_retries_to_a_share_of_requests() {
        let mut b = RetryBudget::new(0.2, 0.0);
        let mut allowed = 0;
        for _ in 0..1000 {
            b.deposit();
            if b.withdraw(1) {
                allowed += 1;
            }
        }
        // 20% of 1000, plus the initial token.
        assert!((200..=202).contains(&allowed), "{allowed}");
        // With no deposits, the trickle still allows min_per_sec.
        let mut b = RetryBudget::new(0.2, 10.0);
        while b.withdraw(1000) {}
        assert!(!b.withdraw(1000));
        assert!(b.withdraw(1100), "100 ms at 10/s refills one token");
    }
}
