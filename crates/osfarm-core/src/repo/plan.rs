//! Plans: for each block of a wanted image, where it can come from.

use rayon::prelude::*;

use super::lock::LockKind;
use super::{Holders, Repository, State};
use crate::digest_set::{DigestKey, DigestMap};
use crate::error::Result;
use crate::hash;
use crate::index::Index;

/// Where one block of the wanted image comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockSource {
    /// All zeros: nothing to fetch or copy (a hole).
    Zero,
    /// Present in the repository: block `block` of image `Plan::images[image]`.
    Present { image: u32, block: u64 },
    /// Not in the repository, but the same as the earlier block `of` of the wanted image,
    /// which is missing: it arrives with that one.
    Duplicate { of: u64 },
    /// Must be fetched (the first block of the wanted image with this digest).
    Missing,
}

/// A range of consecutive blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub first: u64,
    pub count: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanSummary {
    pub blocks: u64,
    pub zero_blocks: u64,
    pub zero_bytes: u64,
    pub present_blocks: u64,
    pub present_bytes: u64,
    pub duplicate_blocks: u64,
    pub duplicate_bytes: u64,
    /// Distinct missing blocks: what must be transferred.
    pub missing_blocks: u64,
    pub missing_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub image_digest: String,
    pub image_len: u64,
    pub block_size: u32,
    /// The wanted image itself is already in the repository.
    pub already_present: bool,
    /// One source per block.
    pub sources: Vec<BlockSource>,
    /// Digests (hex) of the repository images that `Present` sources refer to.
    pub images: Vec<String>,
    pub summary: PlanSummary,
    /// The `Missing` blocks coalesced into runs, in order.
    pub missing_runs: Vec<Run>,
}

/// What `locate` gives for an all-zero block.
pub(crate) const ZERO: u64 = u64::MAX;
/// What `locate` gives for a block no image holds.
pub(crate) const ABSENT: u64 = u64::MAX - 1;

impl Repository {
    /// Plans the assembly of the image `index` describes from this repository's blocks.
    /// Takes the shared lock while it reads the table.
    pub fn plan(&self, index: &Index) -> Result<Plan> {
        self.check_params(index)?;
        let lock = self.lock(LockKind::Shared)?;
        let st = self.state(&lock)?;
        plan_with_state(self, &st, index)
    }
}

/// For each block: ZERO, ABSENT, or (slot << 32 | block) of a confirmed holder.
pub(crate) fn locate(repo: &Repository, st: &State, index: &Index) -> Result<Vec<u64>> {
    let holders = Holders::new(repo, &st.catalog);
    let table = &st.table;
    index
        .digests()
        .par_chunks(index.alg().len())
        .with_min_len(4096)
        .map(|d| -> Result<u64> {
            if hash::is_zero_digest(d) {
                return Ok(ZERO);
            }
            Ok(match table.find(d, |e| holders.confirm(e, d))? {
                Some(i) => {
                    let e = table.entry(i);
                    (e.slot as u64) << 32 | e.block as u64
                }
                None => ABSENT,
            })
        })
        .collect()
}

pub(crate) fn plan_with_state(repo: &Repository, st: &State, index: &Index) -> Result<Plan> {
    let located = locate(repo, st, index)?;
    let mut images: Vec<String> = Vec::new();
    let mut image_of_slot: Vec<Option<u32>> = vec![None; st.catalog.slot_bound()];
    let mut first_of: DigestMap<'_, u64> = DigestMap::default();
    let mut sources = Vec::with_capacity(located.len());
    let mut s = PlanSummary { blocks: index.block_count(), ..Default::default() };
    let mut runs: Vec<Run> = Vec::new();
    for (i, &loc) in located.iter().enumerate() {
        let i = i as u64;
        let len = index.block_len(i) as u64;
        let src = match loc {
            ZERO => {
                s.zero_blocks += 1;
                s.zero_bytes += len;
                BlockSource::Zero
            }
            ABSENT => match first_of.entry(DigestKey(index.digest(i))) {
                std::collections::hash_map::Entry::Occupied(o) => {
                    s.duplicate_blocks += 1;
                    s.duplicate_bytes += len;
                    BlockSource::Duplicate { of: *o.get() }
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(i);
                    s.missing_blocks += 1;
                    s.missing_bytes += len;
                    match runs.last_mut() {
                        Some(r) if r.first + r.count == i => r.count += 1,
                        _ => runs.push(Run { first: i, count: 1 }),
                    }
                    BlockSource::Missing
                }
            },
            _ => {
                let slot = (loc >> 32) as usize;
                let image = *image_of_slot[slot].get_or_insert_with(|| {
                    images.push(st.catalog.by_slot(slot as u32).map(|e| e.digest_hex()).unwrap_or_default());
                    images.len() as u32 - 1
                });
                s.present_blocks += 1;
                s.present_bytes += len;
                BlockSource::Present { image, block: loc & 0xffff_ffff }
            }
        };
        sources.push(src);
    }
    Ok(Plan {
        image_digest: index.image_digest_hex(),
        image_len: index.image_len(),
        block_size: index.block_size(),
        already_present: st.catalog.by_digest(index.image_digest()).is_some(),
        sources,
        images,
        summary: s,
        missing_runs: runs,
    })
}
