//! The [`Election`] suite. As for the store, the callers choose the time.

use std::time::Duration;

use crawler_core::ports::Election;

const NOW: u64 = 1_000_000;
const TTL: Duration = Duration::from_secs(3);

pub async fn the_first_candidate_leads_and_only_it_renews(election: &dyn Election) {
    let first = election.try_lead("a", "http://a", TTL, NOW).await.unwrap();
    assert_eq!(
        (first.holder.as_str(), first.address.as_str()),
        ("a", "http://a")
    );
    assert_eq!(first.expires_at_ms, NOW + 3_000);

    let refused = election
        .try_lead("b", "http://b", TTL, NOW + 2_999)
        .await
        .unwrap();
    assert_eq!(refused, first, "b is told who leads, and nothing changes");

    let renewed = election
        .try_lead("a", "http://a", TTL, NOW + 2_000)
        .await
        .unwrap();
    assert_eq!(renewed.epoch, first.epoch);
    assert_eq!(renewed.expires_at_ms, NOW + 5_000);
}

pub async fn an_expired_leadership_passes_with_the_next_epoch(election: &dyn Election) {
    let first = election.try_lead("a", "http://a", TTL, NOW).await.unwrap();
    let taken = election
        .try_lead("b", "http://b", TTL, first.expires_at_ms)
        .await
        .unwrap();
    assert_eq!(taken.holder, "b");
    assert_eq!(taken.epoch, first.epoch + 1);
    let late = election
        .try_lead("a", "http://a", TTL, first.expires_at_ms + 1)
        .await
        .unwrap();
    assert_eq!(late, taken, "the old leader finds it has been replaced");
    let lapsed = election
        .try_lead("b", "http://b", TTL, taken.expires_at_ms)
        .await
        .unwrap();
    assert_eq!(
        lapsed.epoch,
        taken.epoch + 1,
        "a lapsed lead taken back starts an epoch"
    );
}

pub async fn resigning_hands_the_lead_over_at_once(election: &dyn Election) {
    let first = election.try_lead("a", "http://a", TTL, NOW).await.unwrap();
    election.resign("b").await.unwrap();
    assert_eq!(
        election
            .try_lead("b", "http://b", TTL, NOW + 1)
            .await
            .unwrap(),
        first,
        "only the holder can resign"
    );
    election.resign("a").await.unwrap();
    let next = election
        .try_lead("b", "http://b", TTL, NOW + 1)
        .await
        .unwrap();
    assert_eq!((next.holder.as_str(), next.epoch), ("b", first.epoch + 1));
}

pub async fn racing_candidates_agree_on_one_leader(election: &dyn Election) {
    let candidates: Vec<String> = (0..8).map(|n| format!("r{n}")).collect();
    let outcomes =
        futures::future::join_all(candidates.iter().map(|c| election.try_lead(c, c, TTL, NOW)))
            .await;
    let leaders: std::collections::HashSet<String> = outcomes
        .into_iter()
        .map(|outcome| outcome.unwrap().holder)
        .collect();
    assert_eq!(leaders.len(), 1, "{leaders:?}");
}

/// Runs the election suite against one implementation.
#[macro_export]
macro_rules! election_conformance {
    ($setup:expr) => {
        $crate::__conformance_tests!(
            election,
            $setup,
            [
                the_first_candidate_leads_and_only_it_renews,
                an_expired_leadership_passes_with_the_next_epoch,
                resigning_hands_the_lead_over_at_once,
                racing_candidates_agree_on_one_leader,
            ]
        );
    };
}
