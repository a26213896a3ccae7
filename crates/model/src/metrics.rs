//! Quality metrics of click predictions.

/// Area under the ROC curve: the probability that a random positive scores above a random
/// negative (ties count one half). `None` without both classes.
pub fn auc(scores: &[f32], labels: &[f32]) -> Option<f64> {
    assert_eq!(scores.len(), labels.len());
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum_pos, mut n_pos) = (0.0f64, 0u64);
    let mut i = 0;
    while i < idx.len() {
        // a run of tied scores shares the mean of its ranks (1-based)
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let mean_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if labels[k] > 0.5 {
                rank_sum_pos += mean_rank;
                n_pos += 1;
            }
        }
        i = j + 1;
    }
    let n_neg = scores.len() as u64 - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    Some((rank_sum_pos - (n_pos * (n_pos + 1)) as f64 / 2.0) / (n_pos as f64 * n_neg as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute(scores: &[f32], labels: &[f32]) -> f64 {
        let (mut num, mut den) = (0.0, 0.0);
        for i in 0..scores.len() {
            for j in 0..scores.len() {
                if labels[i] > 0.5 && labels[j] < 0.5 {
                    den += 1.0;
                    num += if scores[i] > scores[j] {
                        1.0
                    } else if scores[i] == scores[j] {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        num / den
    }

    #[test]
    fn auc_matches_pairwise_definition() {
        let s = [0.1, 0.4, 0.35, 0.8, 0.4, 0.4, 0.05, 0.9];
        let l = [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0];
        assert!((auc(&s, &l).unwrap() - brute(&s, &l)).abs() < 1e-12);
        assert_eq!(auc(&[0.1, 0.9], &[0.0, 1.0]), Some(1.0));
        assert_eq!(auc(&[0.1, 0.9], &[1.0, 1.0]), None);
    }
}
