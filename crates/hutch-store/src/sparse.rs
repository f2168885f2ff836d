//! Writing untrusted file content with holes: blocks that are all zeros are skipped over
//! instead of written, so a sparse tar entry (whose holes the tar crate hands over as zeros)
//! or a file of zeros takes disk space only for its data, whatever its apparent size.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

/// Filesystems allocate in blocks; a zero run shorter than one would be allocated anyway.
const BLOCK: usize = 4096;
const BUFFER: usize = 256 * 1024;
/// Compared against with `==`, which is a `memcmp` even in unoptimized builds.
static ZEROS: [u8; BLOCK] = [0; BLOCK];

/// Copies `reader` to the start of `file` (a new, empty file), leaving holes for zero blocks,
/// and returns the number of bytes copied (the file's apparent size).
pub(crate) fn copy_sparse<R: Read>(reader: &mut R, file: &File) -> io::Result<u64> {
    let mut buf = vec![0u8; BUFFER];
    let mut offset = 0u64;
    loop {
        let filled = fill(reader, &mut buf)?;
        if filled == 0 {
            break;
        }
        let data = &buf[..filled];
        // Runs of non-zero blocks are written with one call each.
        let mut run_start: Option<usize> = None;
        for start in (0..filled).step_by(BLOCK) {
            let block = &data[start..filled.min(start + BLOCK)];
            let zero = block == &ZEROS[..block.len()];
            match (zero, run_start) {
                (false, None) => run_start = Some(start),
                (true, Some(from)) => {
                    file.write_all_at(&data[from..start], offset + from as u64)?;
                    run_start = None;
                }
                _ => {}
            }
        }
        if let Some(from) = run_start {
            file.write_all_at(&data[from..], offset + from as u64)?;
        }
        offset += filled as u64;
    }
    // The length covers a trailing hole, which no write reached.
    file.set_len(offset)?;
    Ok(offset)
}

/// Reads until `buf` is full or the stream ends, so block boundaries stay aligned to the
/// file's offsets whatever sizes the reader returns.
fn fill<R: Read>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn zero_blocks_become_holes_and_content_survives() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let file = File::create(&path).expect("create");
        let mut content = vec![0u8; 64 << 20];
        content[10] = 1;
        content[(32 << 20) + 5000] = 2;
        let tail = b"tail, not block aligned";
        content.extend_from_slice(tail);
        // A reader that returns odd sizes, to prove blocks stay aligned.
        let mut reader = io::Read::chain(&content[..7], &content[7..]);
        let copied = copy_sparse(&mut reader, &file).expect("copy");
        drop(file);
        assert_eq!(copied, content.len() as u64);
        assert_eq!(std::fs::read(&path).expect("read"), content);
        let allocated = std::fs::metadata(&path).expect("stat").blocks() * 512;
        assert!(allocated < 1 << 20, "{allocated} bytes allocated");
    }

    #[test]
    fn trailing_hole_sets_the_length() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let file = File::create(&path).expect("create");
        let copied = copy_sparse(&mut io::repeat(0).take(10 << 20), &file).expect("copy");
        assert_eq!(copied, 10 << 20);
        let meta = std::fs::metadata(&path).expect("stat");
        assert_eq!(meta.len(), 10 << 20);
        assert!(meta.blocks() * 512 < 1 << 20);
    }
}
