//! Where a lazy export keeps the blocks it has: the resumable assembly of the image
//! (`tmp/<digest>.partial` and its bitmap, docs/repository-format.md), or the image itself
//! when the repository already holds it. Writes go through the `Assembler`, which
//! verifies, records and finally publishes; reads use a read-only descriptor of the same
//! file, and the caller verifies what it reads, so the bitmap is never needed here.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::repo::{AddOptions, Assembler, AssemblyOptions, ImageEntry, Repository, Run};
use crate::Index;

pub(super) struct Store {
    asm: Assembler,
    /// The partial data (or the complete image). A descriptor, so it stays valid when
    /// `finish` renames the partial into the repository.
    file: File,
    path: PathBuf,
}

impl Store {
    /// Starts (or resumes) the resumable assembly of `index` in `repo`.
    pub(super) fn open(repo: &Repository, index: Index, expected_digest: Option<String>) -> Result<Store> {
        let asm = repo.begin_assembly(index, AssemblyOptions { resumable: true, expected_digest })?;
        let path = if asm.is_complete_image() {
            repo.resolve(asm.digest_hex())?.path
        } else {
            // The assembler's resumable data file (repo/assemble.rs); it holds the
            // file's lock, and a read-only descriptor does not need it.
            repo.tmp_dir().join(format!("{}.partial", asm.digest_hex()))
        };
        let file = File::open(&path).map_err(|e| Error::io(&path, "cannot open", e))?;
        Ok(Store { asm, file, path })
    }

    pub(super) fn index(&self) -> &Index {
        self.asm.index()
    }

    /// True if the image is complete in the repository: nothing is ever stored.
    pub(super) fn is_complete_image(&self) -> bool {
        self.asm.is_complete_image()
    }

    /// Reads the blocks starting at `first` into `buf` (unverified; absent blocks read as
    /// zeros, since the partial is sparse).
    pub(super) fn read(&self, first: u64, buf: &mut [u8]) -> Result<()> {
        let off = first * self.index().block_size() as u64;
        self.file.read_exact_at(buf, off).map_err(|e| Error::io(&self.path, "cannot read", e))
    }

    /// Stores verified consecutive blocks (the assembler checks them again).
    pub(super) fn put(&self, first: u64, data: &[u8]) -> Result<u64> {
        self.asm.put_blocks(first, data)
    }

    pub(super) fn flush(&self) -> Result<()> {
        self.asm.flush()
    }

    pub(super) fn missing(&self) -> Vec<Run> {
        self.asm.missing()
    }

    /// True if block `i` is recorded as stored (in the bitmap a resume trusts).
    pub(super) fn has(&self, i: u64) -> bool {
        self.asm.has_block(i)
    }

    pub(super) fn have_blocks(&self) -> u64 {
        self.asm.have_blocks()
    }

    pub(super) fn finish(&self, opts: &AddOptions) -> Result<ImageEntry> {
        self.asm.finish(opts)
    }
}
