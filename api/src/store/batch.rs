//! How a batch of reports is cut for set-based statements (`Store::apply_reports` on PostgreSQL). One `UPDATE ...
//! FROM unnest(...)` changes each row once, however many of its input rows match it: a configuration reported twice
//! in one batch would be applied once, and its second report answered as though it had not been. So the batch is
//! applied in rounds, each naming a configuration at most once, in the order the reports came: the n-th report on a
//! configuration goes in round n, and the rounds run one after another in the batch's transaction, as the reports
//! would have one after another.

use std::collections::HashMap;
use std::hash::Hash;

/// The rounds of a batch whose reports name `keys` (in order): each round the positions of its reports, in order.
pub(super) fn rounds<K: Eq + Hash>(keys: impl IntoIterator<Item = K>) -> Vec<Vec<usize>> {
    let mut seen: HashMap<K, usize> = HashMap::new();
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (position, key) in keys.into_iter().enumerate() {
        let count = seen.entry(key).or_default();
        if rounds.len() <= *count {
            rounds.push(Vec::new());
        }
        rounds[*count].push(position);
        *count += 1;
    }
    rounds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_naming_each_configuration_once_is_one_round_in_order() {
        assert_eq!(rounds([(1, "a"), (1, "b"), (2, "a")]), vec![vec![0, 1, 2]]);
    }

    #[test]
    fn a_configuration_reported_again_goes_in_the_next_round_after_its_first_report() {
        let keys = [(1, "a"), (2, "a"), (1, "a"), (1, "b"), (1, "a"), (2, "a")];
        assert_eq!(rounds(keys), vec![vec![0, 1, 3], vec![2, 5], vec![4]]);
    }

    #[test]
    fn an_empty_batch_has_no_round() {
        assert!(rounds(Vec::<(i64, &str)>::new()).is_empty());
    }
}
