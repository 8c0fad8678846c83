//! What one tenant may use: checked at each submit against the tenant's
//! jobs in the store, so every gateway enforces the same quotas.

use crawler_core::auth::TenantUsage;

/// Per tenant, from the gateway's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    pub running_jobs: u32,
    pub jobs_per_hour: u32,
    pub pages_per_day: u64,
}

/// How far back each quota counts.
pub const HOUR_MS: u64 = 3_600_000;
pub const DAY_MS: u64 = 24 * HOUR_MS;

impl Quotas {
    /// Why a new job may not be accepted, if it may not. Answers from the
    /// cache start no crawl, so only `crawls` counts running jobs.
    pub fn refusal(&self, usage: &TenantUsage, crawls: bool) -> Option<String> {
        if usage.jobs_last_hour >= self.jobs_per_hour {
            return Some(format!(
                "your tenant submitted {} jobs in the last hour, its quota; submit again later",
                usage.jobs_last_hour
            ));
        }
        if usage.pages_last_day >= self.pages_per_day {
            return Some(format!(
                "your tenant's jobs of the last 24 hours hold {} pages, its quota of {}; submit again later",
                usage.pages_last_day, self.pages_per_day
            ));
        }
        if crawls && usage.running_jobs >= self.running_jobs {
            return Some(format!(
                "your tenant has {} jobs running, its quota; submit again when one ends",
                usage.running_jobs
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_quota_refuses_at_its_limit() {
        let quotas = Quotas {
            running_jobs: 2,
            jobs_per_hour: 10,
            pages_per_day: 100,
        };
        let under = TenantUsage {
            running_jobs: 1,
            jobs_last_hour: 9,
            pages_last_day: 99,
        };
        assert_eq!(quotas.refusal(&under, true), None);
        let running = TenantUsage {
            running_jobs: 2,
            ..under
        };
        assert!(quotas.refusal(&running, true).is_some());
        assert_eq!(quotas.refusal(&running, false), None, "a cache answer");
        for over in [
            TenantUsage {
                jobs_last_hour: 10,
                ..under
            },
            TenantUsage {
                pages_last_day: 100,
                ..under
            },
        ] {
            assert!(quotas.refusal(&over, false).is_some(), "{over:?}");
        }
    }
}
