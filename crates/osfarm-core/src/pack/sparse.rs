//! The archive file with holes: every all-zero block of the archive (a run of zeros in a
//! file's data, a hole of a sparse input file, alignment padding) is left unwritten, so a
//! 20 GiB sparse disk image packs into a few MiB of disk, as `repo add` stores images.
//! The bytes read back are the same as if the zeros had been written.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

use super::writer::{write_zeros, Output};
use crate::hash;

/// Bytes gathered before they go to the file: a multiple of every block size.
const BUFFER: usize = 1 << 20;

/// A file written front to back in which all-zero blocks of `block` bytes (at offsets that
/// are multiples of `block`) become holes. Call [`finish`](Self::finish) at the end: it
/// writes what is buffered and sets the length, which also covers trailing holes.
pub struct SparseFile {
    file: File,
    block: usize,
    /// Bytes not yet written; they start at `pos`, a multiple of `block`.
    buf: Vec<u8>,
    pos: u64,
}

impl SparseFile {
    /// `file` must be empty and `block` a power of two of at most 1 MiB.
    pub fn new(file: File, block: u32) -> SparseFile {
        SparseFile { file, block: block as usize, buf: Vec::with_capacity(BUFFER), pos: 0 }
    }

    /// Writes what is buffered, sets the file's length, and gives the file back.
    pub fn finish(mut self) -> io::Result<File> {
        self.drain()?;
        self.file.set_len(self.pos)?;
        Ok(self.file)
    }

    /// Writes the buffer's non-zero blocks in maximal runs and empties it.
    fn drain(&mut self) -> io::Result<()> {
        let mut run: Option<usize> = None;
        for (i, chunk) in self.buf.chunks(self.block).enumerate() {
            match (hash::is_zero(chunk), run) {
                (false, None) => run = Some(i),
                (true, Some(s)) => {
                    self.file
                        .write_all_at(&self.buf[s * self.block..i * self.block], self.pos + (s * self.block) as u64)?;
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(s) = run {
            self.file.write_all_at(&self.buf[s * self.block..], self.pos + (s * self.block) as u64)?;
        }
        self.pos += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

impl Write for SparseFile {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() == BUFFER {
            self.drain()?;
        }
        let n = data.len().min(BUFFER - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Only whole blocks may be written early (a block's zeros are judged whole);
        // `finish` writes the rest.
        Ok(())
    }
}

impl Output for SparseFile {
    /// Zeros cost nothing: the buffer is topped up to a block boundary and written, then
    /// the offset moves past the whole zero blocks.
    fn zeros(&mut self, mut n: u64) -> io::Result<()> {
        let head = ((self.block - self.buf.len() % self.block) % self.block).min(n as usize);
        self.buf.resize(self.buf.len() + head, 0);
        n -= head as u64;
        if n < self.block as u64 {
            return write_zeros(self, n);
        }
        self.drain()?;
        let whole = n - n % self.block as u64;
        self.pos += whole;
        self.buf.resize((n - whole) as usize, 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn zero_blocks_become_holes_and_read_back_as_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let mut f = SparseFile::new(File::create(&path).unwrap(), 4096);
        let mut expect = Vec::new();
        // Data, a written run of zeros, skipped zeros (unaligned start and end), data, zeros.
        for (data, zeros) in [(b"head".to_vec(), 0u64), (vec![0u8; 3 << 20], 0), (vec![7u8; 100], 50 << 20)] {
            f.write_all(&data).unwrap();
            expect.extend_from_slice(&data);
            f.zeros(zeros).unwrap();
            expect.resize(expect.len() + zeros as usize, 0);
        }
        f.write_all(b"tail").unwrap();
        expect.extend_from_slice(b"tail");
        f.zeros(4000).unwrap();
        expect.resize(expect.len() + 4000, 0);
        drop(f.finish().unwrap());
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expect);
        assert!(meta.blocks() * 512 <= 64 << 10, "{} bytes allocated", meta.blocks() * 512);
    }
}
