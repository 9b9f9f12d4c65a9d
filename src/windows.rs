//! Long inputs: overlapping windows over the token sequence, and which window owns each token.
//!
//! A window holds at most `capacity` text tokens (the model's positions minus `[CLS]` and
//! `[SEP]`). Consecutive windows overlap by `overlap` tokens so that no token is scored at the
//! very edge of its context when another window sees it better: each token is owned by the
//! window in which it lies farthest from an edge (ties go to the earlier window), so every
//! token gets exactly one score.

use std::ops::Range;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowPlan {
    /// Token ranges of the windows, in order; one empty window for an empty input.
    pub windows: Vec<Range<usize>>,
    /// For each token, the index of the window that owns it.
    pub owner: Vec<usize>,
}

impl WindowPlan {
    /// Plans windows over `len` tokens. `overlap` is clamped below `capacity`.
    pub fn new(len: usize, capacity: usize, overlap: usize) -> WindowPlan {
        assert!(capacity > 0, "window capacity must be positive");
        let overlap = overlap.min(capacity - 1);
        let step = capacity - overlap;
        let mut windows = vec![];
        let mut start = 0;
        loop {
            let end = (start + capacity).min(len);
            windows.push(start..end);
            if end == len {
                break;
            }
            start += step;
        }
        let owner = (0..len)
            .map(|i| {
                let mut best = (0, None);
                for (w, range) in windows.iter().enumerate() {
                    if range.contains(&i) {
                        let margin = (i - range.start).min(range.end - 1 - i);
                        if best.1.is_none() || margin > best.0 {
                            best = (margin, Some(w));
                        }
                    }
                }
                best.1.expect("every token lies in a window")
            })
            .collect();
        WindowPlan { windows, owner }
    }

    /// The position of token `i` inside its owning window's model input (after `[CLS]`).
    pub fn position_in_owner(&self, i: usize) -> (usize, usize) {
        let w = self.owner[i];
        (w, i - self.windows[w].start + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_is_one_window() {
        let plan = WindowPlan::new(5, 510, 127);
        assert_eq!(plan.windows, vec![(0..5)]);
        assert_eq!(plan.owner, [0; 5]);
        assert_eq!(WindowPlan::new(0, 4, 1).windows, vec![(0..0)]);
    }

    #[test]
    fn overlapping_windows_split_ownership_at_the_middle() {
        // capacity 4, overlap 2 -> step 2: windows 0..4, 2..6, 4..8, 6..9
        let plan = WindowPlan::new(9, 4, 2);
        assert_eq!(plan.windows, [0..4, 2..6, 4..8, 6..9]);
        // token 2: margin 1 in w0 (0..4: min(2,1)=1), margin 0 in w1 -> w0
        // token 3: margin 0 in w0, margin 1 in w1 -> w1
        assert_eq!(plan.owner, [0, 0, 0, 1, 1, 2, 2, 3, 3]);
        assert_eq!(plan.position_in_owner(3), (1, 2));
        assert_eq!(plan.position_in_owner(8), (3, 3));
    }

    #[test]
    fn every_token_owned_once_for_many_shapes() {
        for len in 0..40 {
            for capacity in 1..9 {
                for overlap in 0..capacity + 2 {
                    let plan = WindowPlan::new(len, capacity, overlap);
                    assert_eq!(plan.owner.len(), len);
                    assert_eq!(plan.windows.last().unwrap().end, len);
                    for (i, &w) in plan.owner.iter().enumerate() {
                        assert!(plan.windows[w].contains(&i));
                        assert!(plan.windows[w].len() <= capacity);
                    }
                    // owners never go backwards
                    assert!(plan.owner.windows(2).all(|p| p[0] <= p[1]));
                }
            }
        }
    }
}
