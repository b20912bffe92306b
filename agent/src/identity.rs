//! Who a file is: its device and inode, together with a fingerprint of its first bytes.
//!
//! ```text
//!   stat ─► (dev, ino) ─► a watch of ours with that inode whose content still starts with its
//!   │                     fingerprint? ─► the same file (a rename keeps its offset)
//!   │                     fingerprint gone (truncated in place) ─► new content: offset 0; the
//!   │                     old content is an orphan waiting for its copy (copytruncate)
//!   └─ new inode ─► starts like an orphan? ─► the copy: continues the orphan's offset
//!                   starts like a live file of ours? ─► maybe a copy in progress: wait (bounded)
//!                   else ─► a new file
//! ```
//!
//! The fingerprint is the CRC32 of the first [`FINGERPRINT_MAX`] bytes (fewer while the file is
//! shorter; it grows with the file), so files that share a header line are still told apart by
//! the lines after it, and an inode reused by another file is not mistaken for the old one.
//! (Vector's `checksum` fingerprint and Fluent Bit's inode database are the models.)

use std::fs::File;
use std::os::unix::fs::{FileExt as _, MetadataExt as _};

/// Most bytes a fingerprint covers.
pub const FINGERPRINT_MAX: u32 = 1024;

/// Device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Inode {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

impl Inode {
    /// The inode of an open file.
    pub fn of(file: &File) -> std::io::Result<(Self, u64)> {
        let m = file.metadata()?;
        Ok((
            Self {
                dev: m.dev(),
                ino: m.ino(),
            },
            m.len(),
        ))
    }
}

/// CRC32 of a file's first `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Fingerprint {
    /// Bytes covered (0 for an empty file: matches any content).
    pub len: u32,
    /// Their CRC32.
    pub crc: u32,
}

impl Fingerprint {
    /// The fingerprint of the first `min(file length, FINGERPRINT_MAX)` bytes.
    pub fn of(file: &File, file_len: u64) -> std::io::Result<Self> {
        let len = u32::try_from(file_len.min(u64::from(FINGERPRINT_MAX))).unwrap_or(0);
        let crc = crc_of(file, len)?;
        Ok(Self {
            len,
            crc: crc.unwrap_or(0),
        })
    }

    /// Whether the file's content still begins with the bytes this fingerprint covers.
    pub fn matches(&self, file: &File, file_len: u64) -> bool {
        if file_len < u64::from(self.len) {
            return false;
        }
        crc_of(file, self.len).ok().flatten() == Some(self.crc)
    }

    /// Whether a fingerprint can still grow (the file was shorter than the maximum).
    pub fn partial(&self) -> bool {
        self.len < FINGERPRINT_MAX
    }
}

/// Reads from the file's start until `buf` is full or the file ends; the bytes read.
pub fn read_head(file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let n = file.read_at(&mut buf[got..], got as u64)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

/// CRC32 of the first `len` bytes; `None` if the file holds fewer.
fn crc_of(file: &File, len: u32) -> std::io::Result<Option<u32>> {
    let mut buf = vec![0u8; len as usize];
    let got = read_head(file, &mut buf)?;
    Ok((got == buf.len()).then(|| crc32fast::hash(&buf)))
}

/// CRC32 of a file's first line (or first 8 KiB): the identity of checkpoint files written
/// before version 2, read only to take them over.
pub fn first_line_crc(file: &File) -> Option<u32> {
    let mut buf = vec![0u8; 8 * 1024];
    let n = file.read_at(&mut buf, 0).ok()?;
    buf.truncate(n);
    let first = match buf.iter().position(|b| *b == b'\n') {
        Some(i) => &buf[..=i],
        None if n == buf.len() => &buf[..],
        None => return None,
    };
    Some(crc32fast::hash(first))
}

/// What a file found by a scan is, given what the flow knows. Pure: the tailer gathers the
/// facts, this decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<K> {
    /// One of ours (same inode, content still ours): keep reading it.
    Same(K),
    /// A known inode whose content is no longer ours: truncated in place. Its old content is
    /// an orphan; the file is read again from 0 as new content.
    Truncated(K),
    /// A new inode that starts like this orphan: the copy made by copytruncate; continues the
    /// orphan's offset.
    CopyOf(K),
    /// A new inode that starts like this live file of ours: perhaps a copy still being made
    /// (copytruncate copies, then truncates); wait before deciding.
    MaybeCopyOf(K),
    /// A file we know nothing of.
    New,
}

/// What a flow knows about one candidate: a file it watches or an orphan, or an entry of the
/// checkpoint file not yet matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known<K> {
    /// Its key.
    pub key: K,
    /// Its inode.
    pub inode: Inode,
    /// Its content's fingerprint.
    pub fingerprint: Fingerprint,
    /// An orphan: content that left its inode (truncated in place), waiting for its copy.
    pub orphan: bool,
}

/// Decides what a file is. `inode` and `content_matches(fingerprint)` describe the file found;
/// `by_content` enables copytruncate detection (off with `fileIdentity: DEVINODE`).
pub fn classify<K: Copy>(
    inode: Inode,
    known: &[Known<K>],
    mut content_matches: impl FnMut(&Fingerprint) -> bool,
    by_content: bool,
) -> Verdict<K> {
    let mut truncated = None;
    for k in known.iter().filter(|k| k.inode == inode && !k.orphan) {
        if content_matches(&k.fingerprint) {
            return Verdict::Same(k.key);
        }
        truncated = Some(k.key);
    }
    if let Some(k) = truncated {
        return Verdict::Truncated(k);
    }
    if !by_content {
        return Verdict::New;
    }
    // Content continuation needs real content: an empty fingerprint matches everything.
    let mut maybe = None;
    for k in known
        .iter()
        .filter(|k| k.inode != inode && k.fingerprint.len > 0)
    {
        if content_matches(&k.fingerprint) {
            if k.orphan {
                return Verdict::CopyOf(k.key);
            }
            maybe = maybe.or(Some(k.key));
        }
    }
    maybe.map_or(Verdict::New, Verdict::MaybeCopyOf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ino(n: u64) -> Inode {
        Inode { dev: 1, ino: n }
    }

    fn fp(crc: u32) -> Fingerprint {
        Fingerprint { len: 100, crc }
    }

    #[test]
    fn verdicts_from_a_table() {
        let live = |key, i, crc| Known {
            key,
            inode: ino(i),
            fingerprint: fp(crc),
            orphan: false,
        };
        let orphan = |key, i, crc| Known {
            key,
            inode: ino(i),
            fingerprint: fp(crc),
            orphan: true,
        };
        // (what we know, the file's inode, the fingerprint its content matches, by content, verdict)
        type Case = (Vec<Known<u32>>, u64, Option<u32>, bool, Verdict<u32>);
        let cases: Vec<Case> = vec![
            (vec![], 7, Some(1), true, Verdict::New),
            // Renamed: same inode, same content.
            (vec![live(1, 7, 10)], 7, Some(10), true, Verdict::Same(1)),
            // Same inode, content no longer ours: truncated in place (or the inode reused).
            (vec![live(1, 7, 10)], 7, None, true, Verdict::Truncated(1)),
            // Two files with the same first bytes are still two files (different inodes);
            // a new one that starts like a live file may be its copy in progress.
            (
                vec![live(1, 7, 10)],
                8,
                Some(10),
                true,
                Verdict::MaybeCopyOf(1),
            ),
            (vec![live(1, 7, 10)], 8, Some(10), false, Verdict::New),
            // Starts like an orphan: the copytruncate copy.
            (
                vec![orphan(1, 7, 10), live(2, 7, 20)],
                8,
                Some(10),
                true,
                Verdict::CopyOf(1),
            ),
            // The orphan's own inode (now new content) is not its copy.
            (
                vec![orphan(1, 7, 10), live(2, 7, 20)],
                7,
                Some(20),
                true,
                Verdict::Same(2),
            ),
            (vec![orphan(1, 7, 10)], 8, Some(10), false, Verdict::New),
            // An orphan wins over a live file with the same start.
            (
                vec![live(2, 9, 10), orphan(1, 7, 10)],
                8,
                Some(10),
                true,
                Verdict::CopyOf(1),
            ),
        ];
        for (i, (known, inode, matching, by_content, want)) in cases.into_iter().enumerate() {
            let got = classify(ino(inode), &known, |f| Some(f.crc) == matching, by_content);
            assert_eq!(got, want, "case {i}");
        }
    }

    #[test]
    fn an_empty_fingerprint_never_claims_a_copy() {
        let known = [Known {
            key: 1,
            inode: ino(7),
            fingerprint: Fingerprint::default(),
            orphan: true,
        }];
        assert_eq!(classify(ino(8), &known, |_| true, true), Verdict::New);
    }

    #[test]
    fn fingerprints_cover_more_than_the_first_line_and_grow_with_the_file() {
        let d = std::env::temp_dir().join(format!("fp-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let a = d.join("a");
        let b = d.join("b");
        std::fs::write(&a, b"time,level,msg\n1,info,a\n").unwrap();
        std::fs::write(&b, b"time,level,msg\n2,warn,b\n").unwrap();
        let fa = File::open(&a).unwrap();
        let fb = File::open(&b).unwrap();
        let pa = Fingerprint::of(&fa, 24).unwrap();
        let pb = Fingerprint::of(&fb, 24).unwrap();
        assert_ne!(pa, pb, "same header, different lines");
        assert!(pa.matches(&fa, 24) && !pa.matches(&fb, 24));
        assert!(pa.partial());
        std::fs::write(&a, vec![b'x'; 5000]).unwrap();
        let fa = File::open(&a).unwrap();
        let full = Fingerprint::of(&fa, 5000).unwrap();
        assert_eq!(full.len, FINGERPRINT_MAX);
        assert!(!full.partial());
        assert!(!full.matches(&fa, 10), "a shorter file cannot hold it");
        let _ = std::fs::remove_dir_all(d);
    }
}
