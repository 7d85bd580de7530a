//! Packed batches: several documents share one row of `t` tokens. Each
//! token carries the position it would have in its document alone (0 at the
//! document's start) and its document's segment id; attention never crosses
//! segments. Run with [`Gpt::forward_token_losses_packed`](crate::Gpt).

use crate::ModelError;

/// Positions and segment ids per token, `[b*t]` each, row-major like the
/// tokens. Segment ids only need to differ between documents of one row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packing {
    pub positions: Vec<u32>,
    pub segments: Vec<u32>,
}

impl Packing {
    /// Positions from segment ids: within each row of `t` tokens the
    /// position restarts at 0 at the row's start and wherever the segment id
    /// changes (documents are contiguous runs).
    pub fn from_segments(segments: Vec<u32>, t: usize) -> Packing {
        let positions = segments
            .iter()
            .enumerate()
            .scan(0u32, |pos, (i, &s)| {
                if i % t == 0 || segments[i - 1] != s {
                    *pos = 0;
                } else {
                    *pos += 1;
                }
                Some(*pos)
            })
            .collect();
        Packing {
            positions,
            segments,
        }
    }

    /// Both vectors hold one entry per token; positions fit the model's
    /// position table.
    pub(crate) fn check(&self, tokens: usize, max_seq_len: usize) -> Result<(), ModelError> {
        for (name, v) in [("positions", &self.positions), ("segments", &self.segments)] {
            if v.len() != tokens {
                return Err(ModelError::Input(format!(
                    "packing: got {} {name} for a batch of {tokens} tokens (need one per token)",
                    v.len()
                )));
            }
        }
        if let Some((i, &p)) = self
            .positions
            .iter()
            .enumerate()
            .find(|(_, &p)| p as usize >= max_seq_len)
        {
            return Err(ModelError::Input(format!(
                "packing: position {p} of token {i} is not below the model's max_seq_len {max_seq_len}"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_restart_per_segment_and_per_row() {
        let p = Packing::from_segments(vec![0, 0, 0, 1, 1, 1, 1, 2, 2, 2], 5);
        assert_eq!(p.positions, vec![0, 1, 2, 0, 1, 0, 1, 0, 1, 2]);
    }

    #[test]
    fn check_names_the_problem() {
        let p = Packing::from_segments(vec![0; 4], 4);
        assert!(p.check(4, 4).is_ok());
        let e = p.check(3, 4).unwrap_err().to_string();
        assert!(e.contains("positions") && e.contains("3 tokens"), "{e}");
        let e = p.check(4, 3).unwrap_err().to_string();
        assert!(
            e.contains("position 3") && e.contains("max_seq_len 3"),
            "{e}"
        );
    }
}
