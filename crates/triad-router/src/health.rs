//! A model's health from its probes (docs/routing.md): one failed probe is noise, so a model
//! is marked unhealthy only after `unhealthy_after` failed probes in a row, and healthy again
//! only after `healthy_after` good ones in a row. The router skips unhealthy models.

/// How many probes in a row change a model's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    pub unhealthy_after: u32,
    pub healthy_after: u32,
}

/// One model's health and the probes against it so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTracker {
    healthy: bool,
    /// Probes in a row that disagree with `healthy`.
    streak: u32,
}

impl Default for ProbeTracker {
    /// A model starts healthy: it has not failed anything yet.
    fn default() -> Self {
        Self {
            healthy: true,
            streak: 0,
        }
    }
}

impl ProbeTracker {
    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Records one probe; returns the new health when this probe changed it.
    /// Sets the state directly (a model judged on heartbeats, not probes); returns the new
    /// state when it changed.
    pub fn set(&mut self, healthy: bool) -> Option<bool> {
        self.streak = 0;
        if self.healthy == healthy {
            return None;
        }
        self.healthy = healthy;
        Some(healthy)
    }

    pub fn observe(&mut self, ok: bool, config: HealthConfig) -> Option<bool> {
        if ok == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.healthy {
            config.unhealthy_after
        } else {
            config.healthy_after
        };
        if self.streak >= needed.max(1) {
            self.healthy = ok;
            self.streak = 0;
            return Some(ok);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: HealthConfig = HealthConfig {
        unhealthy_after: 3,
        healthy_after: 2,
    };

    #[test]
    fn health_changes_only_after_enough_probes_in_a_row() {
        let mut t = ProbeTracker::default();
        assert!(t.healthy());
        // Two failures, then a success: the streak is broken, still healthy.
        assert_eq!(t.observe(false, CONFIG), None);
        assert_eq!(t.observe(false, CONFIG), None);
        assert_eq!(t.observe(true, CONFIG), None);
        assert_eq!(t.observe(false, CONFIG), None);
        assert_eq!(t.observe(false, CONFIG), None);
        assert_eq!(t.observe(false, CONFIG), Some(false));
        assert!(!t.healthy());
        // Further failures change nothing; recovery needs two good probes in a row.
        assert_eq!(t.observe(false, CONFIG), None);
        assert_eq!(t.observe(true, CONFIG), None);
        assert_eq!(t.observe(false, CONFIG), None);
        assert_eq!(t.observe(true, CONFIG), None);
        assert_eq!(t.observe(true, CONFIG), Some(true));
        assert!(t.healthy());
    }

    #[test]
    fn a_threshold_of_zero_acts_as_one() {
        let mut t = ProbeTracker::default();
        let eager = HealthConfig {
            unhealthy_after: 0,
            healthy_after: 0,
        };
        assert_eq!(t.observe(false, eager), Some(false));
        assert_eq!(t.observe(true, eager), Some(true));
    }
}
