//! The weighted split between stable and canary: deterministic and exact.
//!
//! The n-th request of a service goes to the canary exactly when `floor((n+1)·w) > floor(n·w)` with `w`
//! the canary weight as a fraction. Over any run of N consecutive requests the canary therefore gets
//! `floor(N·w)` or `ceil(N·w)` of them: a 1% canary gets 10 of every 1,000 requests, never 0 or 25.
//! The sequence number `n` is one shared atomic per service that survives table swaps, so a new weight
//! keeps the property from the first request after the swap, on every worker thread.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use weir_config::Weight;

/// Basis points in 100%.
const FULL: u64 = 10_000;

/// Which arm a request goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// The stable version.
    Stable,
    /// The canary version.
    Canary,
}

/// The split of one service, as compiled into a route table.
#[derive(Debug)]
pub enum Split {
    /// Everything to stable (no canary, or weight 0). Touches no shared state.
    AllStable,
    /// Everything to canary (weight 100). Touches no shared state.
    AllCanary,
    /// A real split: `canary_bp` of 10 000 go to the canary.
    Weighted {
        /// Canary share in basis points, strictly between 0 and 10 000.
        canary_bp: u64,
        /// The service's request sequence, shared with earlier and later tables.
        sequence: Arc<AtomicU64>,
    },
}

// === impl Split ===

impl Split {
    /// The split for a canary `weight`, reusing the service's `sequence`.
    pub fn new(weight: Weight, has_canary: bool, sequence: Arc<AtomicU64>) -> Split {
        let canary_bp = u64::from(weight.basis_points());
        match (has_canary, canary_bp) {
            (false, _) | (true, 0) => Split::AllStable,
            (true, FULL) => Split::AllCanary,
            (true, canary_bp) => Split::Weighted {
                canary_bp,
                sequence,
            },
        }
    }

    /// Picks the arm for the next request.
    #[inline]
    pub fn pick(&self) -> Pick {
        match self {
            Split::AllStable => Pick::Stable,
            Split::AllCanary => Pick::Canary,
            Split::Weighted {
                canary_bp,
                sequence,
            } => {
                let n = sequence.fetch_add(1, Relaxed);
                pick_nth(n, *canary_bp)
            }
        }
    }
}

/// The arm of the `n`-th request at `canary_bp` basis points. Depends only on `n mod 10 000`, so it
/// never overflows and the pattern repeats exactly every 10 000 requests.
#[inline]
pub fn pick_nth(n: u64, canary_bp: u64) -> Pick {
    let r = n % FULL;
    if ((r + 1) * canary_bp) / FULL > (r * canary_bp) / FULL {
        Pick::Canary
    } else {
        Pick::Stable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest deviation of the canary count from N·w over every window of every length up to
    /// `max_len`, starting anywhere in the first `starts` requests.
    fn worst_deviation(canary_bp: u64, starts: u64, max_len: u64) -> f64 {
        let picks: Vec<u64> = (0..starts + max_len)
            .map(|n| u64::from(pick_nth(n, canary_bp) == Pick::Canary))
            .collect();
        let mut worst = 0.0f64;
        for start in 0..starts as usize {
            let mut count = 0u64;
            for len in 1..=max_len as usize {
                count += picks[start + len - 1];
                let expected = len as f64 * canary_bp as f64 / FULL as f64;
                worst = worst.max((count as f64 - expected).abs());
            }
        }
        worst
    }

    #[test]
    fn any_window_stays_within_one_of_the_exact_share() {
        for bp in [1, 25, 50, 100, 333, 1000, 2500, 5000, 7777, 9900, 9999] {
            let worst = worst_deviation(bp, 300, 3000);
            assert!(worst < 1.0, "weight {bp} bp deviates by {worst}");
        }
    }

    #[test]
    fn one_percent_gets_ten_of_a_thousand() {
        for offset in [0u64, 7, 123_456_789] {
            let canary = (offset..offset + 1000)
                .filter(|&n| pick_nth(n, 100) == Pick::Canary)
                .count();
            assert_eq!(canary, 10, "offset {offset}");
        }
    }

    #[test]
    fn zero_and_full_never_touch_the_other_arm() {
        let sequence = Arc::new(AtomicU64::new(0));
        let none = Split::new(Weight::ZERO, true, sequence.clone());
        let all = Split::new(Weight::FULL, true, sequence.clone());
        let no_canary = Split::new(Weight::FULL, false, sequence.clone());
        for _ in 0..10_000 {
            assert_eq!(none.pick(), Pick::Stable);
            assert_eq!(all.pick(), Pick::Canary);
            assert_eq!(no_canary.pick(), Pick::Stable);
        }
        assert_eq!(
            sequence.load(Relaxed),
            0,
            "degenerate splits share no state"
        );
    }

    #[test]
    fn a_new_weight_is_exact_from_the_first_request_after_the_swap() {
        let sequence = Arc::new(AtomicU64::new(0));
        let before = Split::new(
            Weight::from_basis_points(3_333).unwrap(),
            true,
            sequence.clone(),
        );
        for _ in 0..517 {
            before.pick();
        }
        let after = Split::new(Weight::from_basis_points(50).unwrap(), true, sequence);
        let canary = (0..2000).filter(|_| after.pick() == Pick::Canary).count();
        assert!(
            (9..=11).contains(&canary),
            "0.5% of 2000 is 10, got {canary}"
        );
    }
}
