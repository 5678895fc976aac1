//! PyTorch's `DistributedSampler` (and fastai's `DistributedDL`): every rank draws the same
//! permutation of the epoch (from the loader's seed and the epoch) and keeps a strided
//! 1/world share of it.

/// One rank's share of a loader's items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This rank, in 0..world.
    pub rank: usize,
    /// Number of ranks, ≥ 1.
    pub world: usize,
    /// Pad the order by repeating its first items up to a multiple of `world`, so that
    /// every rank gets ⌈n/world⌉ items and the same number of batches (PyTorch
    /// `DistributedSampler(drop_last=False)`; training). Without padding, rank r gets
    /// items r, r+world, … and the shares differ by at most one item (validation: every
    /// item counted exactly once).
    pub pad: bool,
}

impl Shard {
    /// Number of items this rank gets out of `n`.
    pub fn len(&self, n: usize) -> usize {
        if self.pad { n.div_ceil(self.world) } else { n.saturating_sub(self.rank).div_ceil(self.world) }
    }

    /// True when this rank gets no item of `n`.
    pub fn is_empty(&self, n: usize) -> bool { self.len(n) == 0 }

    /// This rank's items of the epoch's `order` (the same on every rank): positions
    /// rank, rank+world, … of the order, padded by repetition when `pad`.
    pub fn take(&self, order: &[usize]) -> Vec<usize> {
        let n = order.len();
        if n == 0 { return vec![]; }
        let total = if self.pad { n.div_ceil(self.world) * self.world } else { n };
        (self.rank..total).step_by(self.world).map(|i| order[i % n]).collect()
    }

    /// A seed mixed with the rank, so that each rank draws its own augmentation and
    /// dropout (rank 0 keeps `seed`, which keeps a one-process run unchanged).
    pub fn mix_seed(&self, seed: u64) -> u64 { mix_rank(seed, self.rank) }
}

/// `seed` mixed with `rank` (rank 0 keeps `seed`): the per-rank random streams of DDP.
pub fn mix_rank(seed: u64, rank: usize) -> u64 {
    if rank == 0 { seed } else { seed ^ (rank as u64).wrapping_mul(0xD1B5_4A32_D192_ED03) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_shares_cover_every_item_and_repeat_the_first() {
        // PyTorch DistributedSampler(num_replicas=3, shuffle=False) on 7 items:
        // [0,1,2,3,4,5,6,0,1] -> rank0 [0,3,6], rank1 [1,4,0], rank2 [2,5,1].
        let order: Vec<usize> = (0..7).collect();
        let got: Vec<Vec<usize>> = (0..3).map(|r| Shard { rank: r, world: 3, pad: true }.take(&order)).collect();
        assert_eq!(got, vec![vec![0, 3, 6], vec![1, 4, 0], vec![2, 5, 1]]);
        assert!((0..3).all(|r| Shard { rank: r, world: 3, pad: true }.len(7) == 3));
    }

    #[test]
    fn unpadded_shares_partition_the_items() {
        let order: Vec<usize> = (10..17).collect();
        let mut all: Vec<usize> = (0..2).flat_map(|r| Shard { rank: r, world: 2, pad: false }.take(&order)).collect();
        assert_eq!(Shard { rank: 0, world: 2, pad: false }.len(7), 4);
        assert_eq!(Shard { rank: 1, world: 2, pad: false }.len(7), 3);
        all.sort();
        assert_eq!(all, order);
    }

    #[test]
    fn rank_zero_keeps_the_seed() {
        assert_eq!(mix_rank(42, 0), 42);
        assert_ne!(mix_rank(42, 1), 42);
        assert_ne!(mix_rank(42, 1), mix_rank(42, 2));
    }
}
