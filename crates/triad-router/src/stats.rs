//! Measured model figures: a sliding window over a model's most recent calls. Once it holds
//! enough calls, its latency percentiles and success ratio replace the figures the model
//! declared, so the router ranks by what a model does, not by what it says it does.

use std::collections::VecDeque;

/// The last `capacity` calls of one model (latency in ms, success).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallWindow {
    calls: VecDeque<(u64, bool)>,
    capacity: usize,
    min_samples: usize,
}

impl CallWindow {
    /// Defaults: the last 100 calls, measured figures from 20 on.
    pub fn new() -> Self {
        Self::with(100, 20)
    }

    pub fn with(capacity: usize, min_samples: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            calls: VecDeque::with_capacity(capacity),
            capacity,
            min_samples: min_samples.clamp(1, capacity),
        }
    }

    pub fn record(&mut self, latency_ms: u64, ok: bool) {
        if self.calls.len() == self.capacity {
            self.calls.pop_front();
        }
        self.calls.push_back((latency_ms, ok));
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    fn enough(&self) -> bool {
        self.calls.len() >= self.min_samples
    }

    /// The nearest-rank percentile `p` (0 < p ≤ 100) of the successful calls' latencies, once
    /// there are enough calls; failures are left out (a fast error is not a fast answer).
    pub fn latency_percentile(&self, p: u32) -> Option<u64> {
        if !self.enough() {
            return None;
        }
        let mut ok: Vec<u64> = self.calls.iter().filter(|c| c.1).map(|c| c.0).collect();
        if ok.is_empty() {
            return None;
        }
        ok.sort_unstable();
        let rank = (ok.len() * p.clamp(1, 100) as usize).div_ceil(100);
        ok.get(rank.saturating_sub(1)).copied()
    }

    /// The share of successful calls, once there are enough calls.
    pub fn success_ratio(&self) -> Option<f64> {
        if !self.enough() {
            return None;
        }
        let ok = self.calls.iter().filter(|c| c.1).count();
        Some(ok as f64 / self.calls.len() as f64)
    }
}

impl Default for CallWindow {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_appear_once_there_are_enough_calls() {
        let mut w = CallWindow::with(10, 4);
        for ms in [40, 10, 30] {
            w.record(ms, true);
        }
        assert_eq!((w.latency_percentile(50), w.success_ratio()), (None, None));
        w.record(20, false);
        assert_eq!(w.success_ratio(), Some(0.75));
        // Successful calls only: 10, 30, 40.
        assert_eq!(w.latency_percentile(50), Some(30));
        assert_eq!(w.latency_percentile(99), Some(40));
    }

    #[test]
    fn the_window_slides() {
        let mut w = CallWindow::with(3, 3);
        for (ms, ok) in [
            (1000, false),
            (1000, false),
            (5, true),
            (6, true),
            (7, true),
        ] {
            w.record(ms, ok);
        }
        assert_eq!(w.len(), 3);
        assert_eq!(w.success_ratio(), Some(1.0));
        assert_eq!(w.latency_percentile(95), Some(7));
        assert_eq!(w.latency_percentile(1), Some(5));
    }

    #[test]
    fn only_failures_have_no_latency() {
        let mut w = CallWindow::with(5, 2);
        w.record(3, false);
        w.record(4, false);
        assert_eq!(w.latency_percentile(50), None);
        assert_eq!(w.success_ratio(), Some(0.0));
    }
}
