//! Tests of the whole pack path: directory and tar input, alignment, determinism,
//! hostile input. The archives are read back with the `tar` crate, an independent reader.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::*;
use crate::error::Code;
use crate::progress::{Counter, Silent};

const SIZES: [usize; 9] = [0, 1, 511, 512, 513, 4095, 4096, 4097, (1 << 20) + 3];

fn content(size: usize, seed: u8) -> Vec<u8> {
    (0..size).map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[3] ^ seed).collect()
}

fn set_mtime(path: &Path, secs: i64) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let t = libc::timespec { tv_sec: secs, tv_nsec: 0 };
    let times = [t, t];
    // SAFETY: valid NUL-terminated path and a two-element timespec array.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    assert_eq!(rc, 0, "utimensat {}", path.display());
}

/// A tree with every size of interest, subdirectories, a symlink, a hard link and a long name.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("sub/deeper")).unwrap();
    for (i, &size) in SIZES.iter().enumerate() {
        fs::write(root.join(format!("f{size}")), content(size, i as u8)).unwrap();
        fs::write(root.join(format!("sub/g{size}")), content(size, 100 + i as u8)).unwrap();
    }
    fs::write(root.join("sub/deeper/x"), b"x").unwrap();
    symlink("../f1", root.join("sub/link")).unwrap();
    fs::hard_link(root.join("f513"), root.join("sub/hard")).unwrap();
    let long = "l".repeat(150);
    fs::write(root.join("sub").join(&long), content(5000, 9)).unwrap();
    fs::set_permissions(root.join("f1"), fs::Permissions::from_mode(0o4755)).unwrap();
    walk_set_mtime(root, 1_600_000_000);
}

fn walk_set_mtime(root: &Path, secs: i64) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
        set_mtime(&p, secs);
    }
}

/// One entry as the `tar` crate reads it back.
struct Item {
    name: Vec<u8>,
    ty: tar::EntryType,
    /// Offset of the data in the archive.
    off: u64,
    data: Vec<u8>,
    header: tar::Header,
    /// Pax records other than the alignment comment.
    pax: Vec<(String, Vec<u8>)>,
    /// Link target, long forms resolved.
    link: Option<Vec<u8>>,
}

/// Reads an archive back with the `tar` crate, an independent reader.
fn read_back(archive: &[u8]) -> Vec<Item> {
    use std::io::Read;
    let mut a = tar::Archive::new(archive);
    let mut out = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let pax: Vec<(String, Vec<u8>)> = match e.pax_extensions().unwrap() {
            Some(exts) => exts
                .map(|x| x.unwrap())
                .filter(|x| x.key().unwrap() != "comment")
                .map(|x| (x.key().unwrap().to_string(), x.value_bytes().to_vec()))
                .collect(),
            None => Vec::new(),
        };
        let mut item = Item {
            name: e.path_bytes().into_owned(),
            ty: e.header().entry_type(),
            off: e.raw_file_position(),
            data: Vec::new(),
            header: e.header().clone(),
            pax,
            link: e.link_name_bytes().map(|l| l.into_owned()),
        };
        e.read_to_end(&mut item.data).unwrap();
        out.push(item);
    }
    out
}

fn pack_bytes(input: &Path, opts: &PackOptions) -> (Vec<u8>, PackStats) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.tar");
    let stats = pack(input, &out, opts, &Silent).unwrap();
    let bytes = fs::read(&out).unwrap();
    assert_eq!(stats.output_size, bytes.len() as u64);
    (bytes, stats)
}

fn opts(block_size: u32) -> PackOptions {
    PackOptions { block_size, ..Default::default() }
}

#[test]
fn every_file_starts_on_a_block_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    make_tree(&root);
    for bs in [512u32, 4096, 65536] {
        let (bytes, stats) = pack_bytes(&root, &opts(bs));
        assert_eq!(bytes.len() % bs as usize, 0, "archive is whole blocks");
        let entries = read_back(&bytes);
        let mut files = 0;
        for Item { name, ty, off, data, .. } in &entries {
            assert!(name.starts_with(b"./"), "{}", String::from_utf8_lossy(name));
            if ty.is_file() && !data.is_empty() {
                files += 1;
                assert_eq!(off % bs as u64, 0, "bs {bs}: {} at {off}", String::from_utf8_lossy(name));
                let on_disk = fs::read(root.join(std::str::from_utf8(&name[2..]).unwrap())).unwrap();
                assert_eq!(&on_disk, data);
            }
        }
        // f*, sub/g* (zero-length ones excluded), sub/deeper/x, the long name.
        assert_eq!(files, 2 * (SIZES.len() - 1) + 2);
        assert_eq!(stats.regular_files, 2 * SIZES.len() as u64 + 2);
        assert_eq!(stats.entries, entries.len() as u64);
        if bs == 512 {
            assert_eq!(stats.padding_bytes, 0);
        }
        // The order is the documented one.
        let names: Vec<String> = entries.iter().map(|e| String::from_utf8_lossy(&e.name).into_owned()).collect();
        assert_eq!(names[0], "./");
        let pos = |n: &str| names.iter().position(|x| x == n).unwrap_or_else(|| panic!("{n} missing"));
        assert!(pos("./f0") < pos("./f1") && pos("./f1") < pos("./f1048579") && pos("./f1048579") < pos("./f4095"));
        assert!(pos("./sub/") < pos("./sub/deeper/") && pos("./sub/deeper/") < pos("./sub/deeper/x"));
        assert!(pos("./sub/deeper/x") < pos("./sub/g0"));
        // The hard link: the first in order is the file, the later one the link.
        let hard = &entries[pos("./sub/hard")];
        assert_eq!(hard.ty, tar::EntryType::Link);
        assert_eq!(hard.link.as_deref(), Some(&b"./f513"[..]));
        let link = &entries[pos("./sub/link")];
        assert_eq!(link.ty, tar::EntryType::Symlink);
        assert_eq!(link.link.as_deref(), Some(&b"../f1"[..]));
        assert_eq!(entries[pos("./f1")].header.mode().unwrap(), 0o4755);
        assert_eq!(entries[pos("./f1")].header.mtime().unwrap(), 1_600_000_000);
    }
}

#[test]
fn output_is_deterministic_and_clamped() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    make_tree(&root);
    let (a, _) = pack_bytes(&root, &opts(4096));
    let (b, _) = pack_bytes(&root, &opts(4096));
    assert!(a == b, "same tree, same bytes");

    let epoch = PackOptions { block_size: 4096, source_date_epoch: Some(1_500_000_000), ..Default::default() };
    let (c, _) = pack_bytes(&root, &epoch);
    assert!(c != a);
    assert!(read_back(&c).iter().all(|e| e.header.mtime().unwrap() == 1_500_000_000));
    // Touching a file after the epoch changes nothing when clamped, and does otherwise.
    set_mtime(&root.join("f512"), 1_700_000_000);
    let (d, _) = pack_bytes(&root, &epoch);
    assert!(c == d, "clamped output ignores newer mtimes");
    let (e, _) = pack_bytes(&root, &opts(4096));
    assert!(e != a);
    // An older mtime is kept under the clamp.
    set_mtime(&root.join("f512"), 1_400_000_000);
    let (f, _) = pack_bytes(&root, &epoch);
    let f512 = read_back(&f).into_iter().find(|x| x.name == b"./f512").unwrap();
    assert_eq!(f512.header.mtime().unwrap(), 1_400_000_000);
}

#[test]
fn tar_input_round_trips_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    make_tree(&root);
    let out1 = dir.path().join("one.tar");
    let out2 = dir.path().join("two.tar");
    let out3 = dir.path().join("three.tar");
    let s1 = pack(&root, &out1, &opts(4096), &Silent).unwrap();
    // Packing an aligned tar again with the same block size changes nothing.
    let s2 = pack(&out1, &out2, &opts(4096), &Silent).unwrap();
    assert_eq!(fs::read(&out1).unwrap(), fs::read(&out2).unwrap());
    assert_eq!(PackStats { input_bytes: 0, ..s1 }, PackStats { input_bytes: 0, ..s2 });
    assert_eq!(s1.input_bytes, s1.file_bytes);
    assert_eq!(s2.input_bytes, s1.output_size);
    // Through gzip too (detected by content: the name says .tar).
    let gz = dir.path().join("gz.tar");
    let mut enc = flate2::write::GzEncoder::new(fs::File::create(&gz).unwrap(), flate2::Compression::fast());
    enc.write_all(&fs::read(&out1).unwrap()).unwrap();
    enc.finish().unwrap();
    assert_eq!(detect(&gz).unwrap(), InputKind::TarGz);
    let counter = Counter::default();
    let s3 = pack(&gz, &out3, &opts(4096), &counter).unwrap();
    assert_eq!(fs::read(&out1).unwrap(), fs::read(&out3).unwrap());
    let total = counter.total.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(total, fs::metadata(&gz).unwrap().len());
    assert_eq!(counter.done.load(std::sync::atomic::Ordering::Relaxed), total);
    assert_eq!(s3.input_bytes, total);
    // And to another block size: same entries, new alignment.
    let s4 = pack(&out1, &out2, &opts(65536), &Silent).unwrap();
    assert_eq!(s4.entries, s1.entries);
    for e in read_back(&fs::read(&out2).unwrap()) {
        if e.ty.is_file() && !e.data.is_empty() {
            assert_eq!(e.off % 65536, 0);
        }
    }
}

/// A tar written by another writer (the `tar` crate, GNU long names) keeps its metadata.
#[test]
fn foreign_tar_metadata_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.tar");
    let long = format!("dir/{}/file", "n".repeat(120));
    let long_target = format!("/{}", "t".repeat(130));
    {
        let mut b = tar::Builder::new(fs::File::create(&input).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_path("dir/").unwrap();
        h.set_mode(0o1777);
        h.set_mtime(1_234_567_890);
        h.set_size(0);
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();

        let data = content(10_000, 3);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o4751);
        h.set_uid(1234);
        h.set_gid(5678);
        h.set_username("alice").unwrap();
        h.set_groupname("staff").unwrap();
        h.set_mtime(1_111_111_111);
        h.set_size(data.len() as u64);
        b.append_pax_extensions([
            ("SCHILY.xattr.user.color", &b"blue"[..]),
            ("SCHILY.xattr.security.capability", b"\x01\x00\x00\x02\0\x20\0\0\0\0\0\0\0\0\0\0\0\0\0\0"),
        ])
        .unwrap();
        b.append_data(&mut h, &long, &data[..]).unwrap();

        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_mode(0o4751);
        h.set_mtime(1_111_111_111);
        h.set_size(0);
        b.append_link(&mut h, "dir/hard", &long).unwrap();

        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        b.append_link(&mut h, "dir/sym", &long_target).unwrap();

        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Char);
        h.set_path("dir/null").unwrap();
        h.set_mode(0o666);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        h.set_size(0);
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
        b.finish().unwrap();
    }
    let (bytes, stats) = pack_bytes(&input, &opts(4096));
    assert_eq!(stats.entries, 5);
    assert_eq!(stats.regular_files, 1);
    let entries = read_back(&bytes);
    let names: Vec<Vec<u8>> = entries.iter().map(|e| e.name.clone()).collect();
    assert_eq!(
        names,
        vec![
            b"./dir/".to_vec(),
            format!("./{long}").into_bytes(),
            b"./dir/hard".to_vec(),
            b"./dir/sym".to_vec(),
            b"./dir/null".to_vec()
        ]
    );
    let d = &entries[0].header;
    assert_eq!((d.mode().unwrap(), d.mtime().unwrap()), (0o1777, 1_234_567_890));
    let Item { ty, off, data, header: h, pax, .. } = &entries[1];
    assert!(ty.is_file());
    assert_eq!(off % 4096, 0);
    assert_eq!(data, &content(10_000, 3));
    assert_eq!((h.mode().unwrap(), h.uid().unwrap(), h.gid().unwrap()), (0o4751, 1234, 5678));
    assert_eq!((h.username().unwrap(), h.groupname().unwrap()), (Some("alice"), Some("staff")));
    assert_eq!(h.mtime().unwrap(), 1_111_111_111);
    let keys: Vec<&str> = pax.iter().map(|(k, _)| k.as_str()).collect();
    // The long name fits a ustar prefix/name split: no pax path record.
    assert_eq!(keys, vec!["SCHILY.xattr.security.capability", "SCHILY.xattr.user.color"]);
    assert_eq!(pax[1].1, b"blue");
    assert_eq!(entries[2].link.as_deref(), Some(format!("./{long}").as_bytes()));
    assert_eq!(entries[3].link.as_deref(), Some(long_target.as_bytes()));
    let dev = &entries[4].header;
    assert_eq!(dev.entry_type(), tar::EntryType::Char);
    assert_eq!((dev.device_major().unwrap(), dev.device_minor().unwrap()), (Some(1), Some(3)));
}

/// Name, type flag, link target, data.
type RawEntry<'a> = (&'a [u8], u8, &'a [u8], &'a [u8]);

/// Builds a tar by hand, so that hostile names the `tar` crate refuses can be written.
fn raw_tar(entries: &[RawEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(name, typeflag, link, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_entry_type(tar::EntryType::new(typeflag));
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn assert_refused(dir: &Path, name: &str, bytes: &[u8], what: &str) {
    let input = dir.join(name);
    fs::write(&input, bytes).unwrap();
    let outdir = dir.join(format!("out-{name}"));
    fs::create_dir(&outdir).unwrap();
    let err = pack(&input, &outdir.join("out.tar"), &opts(4096), &Silent).unwrap_err();
    assert_eq!(err.code, Code::BadArchive, "{name}: {err}");
    assert!(err.message.contains(what), "{name}: '{}' does not mention '{what}'", err.message);
    let left: Vec<PathBuf> = fs::read_dir(&outdir).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(left.is_empty(), "{name}: left behind {left:?}");
}

#[test]
fn hostile_tars_are_refused_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ok = raw_tar(&[(b"./", b'5', b"", b""), (b"./a", b'0', b"", &[7u8; 3000]), (b"./b", b'0', b"", b"hello")]);
    // The good archive is accepted (so the refusals below are about what was changed).
    pack(
        &{
            let p = d.join("ok.tar");
            fs::write(&p, &ok).unwrap();
            p
        },
        &d.join("ok.out"),
        &opts(4096),
        &Silent,
    )
    .unwrap();

    assert_refused(d, "dotdot", &raw_tar(&[(b"../x", b'0', b"", b"evil")]), "'..'");
    assert_refused(d, "inner-dotdot", &raw_tar(&[(b"./a/../../x", b'0', b"", b"evil")]), "'..'");
    assert_refused(d, "absolute", &raw_tar(&[(b"/etc/passwd", b'0', b"", b"root::0:0::/:/bin/sh\n")]), "absolute");
    assert_refused(d, "abs-hardlink", &raw_tar(&[(b"./x", b'1', b"/etc/shadow", b"")]), "absolute");
    assert_refused(d, "dangling-hardlink", &raw_tar(&[(b"./x", b'1', b"./nothing", b"")]), "not an earlier file");
    assert_refused(
        d,
        "through-symlink",
        &raw_tar(&[(b"./etc", b'2', b"/etc", b""), (b"./etc/passwd", b'0', b"", b"evil")]),
        "through a symlink",
    );
    // Cut inside file data, inside a header, and exactly between entries (no end marker).
    assert_refused(d, "truncated-data", &ok[..1024 + 1000], "truncated");
    assert_refused(d, "truncated-header", &ok[..512 + 100], "truncated");
    assert_refused(d, "truncated-boundary", &ok[..512 + 512 + 3072], "truncated");
    let mut bad = ok.clone();
    bad[512 + 10] ^= 0x20; // a byte of the second header's name
    assert_refused(d, "bad-checksum", &bad, "checksum");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&ok).unwrap();
    let gz = gz.finish().unwrap();
    assert_refused(d, "truncated-gz", &gz[..gz.len() / 2], "gzip");
    assert_refused(d, "gz-no-trailer", &gz[..gz.len() - 4], "gzip");
    let mut corrupt = gz.clone();
    let n = corrupt.len();
    corrupt[n - 6] ^= 0xff; // the CRC
    assert_refused(d, "gz-bad-crc", &corrupt, "gzip");
    assert_refused(d, "not-a-tar", &[b'x'; 4096], "not a directory, a tar or a tar.gz");
    assert_refused(d, "zstd", &[0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0], "zstd");
}

#[test]
fn cancel_and_bad_options_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    make_tree(&root);
    let outdir = dir.path().join("out");
    fs::create_dir(&outdir).unwrap();
    let counter = Counter::default();
    counter.cancel.cancel();
    let err = pack(&root, &outdir.join("x.tar"), &opts(4096), &counter).unwrap_err();
    assert_eq!(err.code, Code::Aborted);
    let err = pack(&root, &outdir.join("x.tar"), &opts(3000), &Silent).unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);
    let err = pack(&root, &root.join("sub/x.tar"), &opts(4096), &Silent).unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);
    let err = pack(&dir.path().join("missing"), &outdir.join("x.tar"), &opts(4096), &Silent).unwrap_err();
    assert_eq!(err.code, Code::NotFound);
    let err = pack(Path::new("/dev/null"), &outdir.join("x.tar"), &opts(4096), &Silent).unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);
    assert_eq!(fs::read_dir(&outdir).unwrap().count(), 0);
    assert!(!root.join("sub/x.tar").exists());
}

#[test]
fn progress_counts_file_bytes_and_sockets_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    make_tree(&root);
    let _sock = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
    let counter = Counter::default();
    let out = dir.path().join("out.tar");
    let stats = pack(&root, &out, &opts(4096), &counter).unwrap();
    assert_eq!(stats.skipped, 1);
    let total = counter.total.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(total, stats.file_bytes);
    assert_eq!(counter.done.load(std::sync::atomic::Ordering::Relaxed), total);
    assert!(read_back(&fs::read(&out).unwrap()).iter().all(|e| e.name != b"./sock"));
    let meta = fs::metadata(root.join("f513")).unwrap();
    assert_eq!(meta.nlink(), 2);
}

/// A mount point is stored as an empty directory (needs root to mount; skipped otherwise).
#[test]
fn the_walk_stays_on_one_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    fs::create_dir_all(root.join("proc")).unwrap();
    fs::write(root.join("file"), b"x").unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "osfarm-test", root.join("proc").to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    fs::write(root.join("proc/inside"), b"not part of the tree").unwrap();
    let result = std::panic::catch_unwind(|| pack_bytes(&root, &opts(4096)));
    std::process::Command::new("umount").arg(root.join("proc")).status().unwrap();
    let names: Vec<Vec<u8>> = read_back(&result.unwrap().0).into_iter().map(|e| e.name).collect();
    assert_eq!(names, vec![b"./".to_vec(), b"./file".to_vec(), b"./proc/".to_vec()]);
}

#[test]
fn xattrs_and_odd_names_of_a_directory_are_stored() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    fs::create_dir(&root).unwrap();
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9-latin1");
    fs::write(root.join(odd), b"bytes").unwrap();
    let deep = root.join("d".repeat(200));
    fs::create_dir(&deep).unwrap();
    let odd_long = std::ffi::OsStr::from_bytes(&[&[0xffu8][..], "q".repeat(150).as_bytes()].concat()).to_os_string();
    fs::write(deep.join(&odd_long), b"long and not utf-8").unwrap();
    let f = root.join("attr");
    fs::write(&f, b"with xattr").unwrap();
    let c = std::ffi::CString::new(f.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C strings and buffer.
    let rc = unsafe { libc::setxattr(c.as_ptr(), c"user.osfarm".as_ptr(), b"v\0\x01".as_ptr().cast(), 3, 0) };
    let has_xattrs = rc == 0;
    let (bytes, _) = pack_bytes(&root, &opts(4096));
    let entries = read_back(&bytes);
    let names: Vec<&[u8]> = entries.iter().map(|e| e.name.as_slice()).collect();
    assert!(names.contains(&&b"./caf\xe9-latin1"[..]));
    let long_name =
        [b"./".to_vec(), "d".repeat(200).into_bytes(), b"/".to_vec(), odd_long.as_bytes().to_vec()].concat();
    let long = entries.iter().find(|e| e.name == long_name).expect("long non-UTF-8 name");
    assert_eq!(long.data, b"long and not utf-8");
    assert!(long.pax.iter().any(|(k, v)| k == "hdrcharset" && v == b"BINARY"));
    if has_xattrs {
        let a = entries.iter().find(|e| e.name == b"./attr").unwrap();
        assert!(a.pax.contains(&("SCHILY.xattr.user.osfarm".to_string(), b"v\0\x01".to_vec())));
    }
}

/// Bytes allocated on disk for a file.
fn allocated(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn sparse_files_and_zero_blocks_become_holes() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    fs::create_dir(&root).unwrap();
    // 256 MiB with data at the start, at an unaligned offset in the middle and at the end.
    let sparse = root.join("disk.img");
    let f = fs::File::create(&sparse).unwrap();
    f.set_len(256 << 20).unwrap();
    let data = content(300_000, 3);
    for at in [0u64, (100 << 20) + 1234, (256 << 20) - 5000] {
        f.write_all_at(&data[..data.len().min(((256 << 20) - at) as usize)], at).unwrap();
    }
    drop(f);
    assert!(allocated(&sparse) < 4 << 20, "the input is sparse");
    // A written (not sparse) file of zeros between data: its zero blocks become holes too.
    let mut zeros = content(5000, 1);
    zeros.resize(8 << 20, 0);
    zeros.extend_from_slice(&content(100, 2));
    fs::write(root.join("zeros"), &zeros).unwrap();

    let out = dir.path().join("out.tar");
    let stats = pack(&root, &out, &opts(4096), &Silent).unwrap();
    assert_eq!(stats.file_bytes, (256 << 20) + zeros.len() as u64);
    assert_eq!(fs::metadata(&out).unwrap().len(), stats.output_size);
    assert!(
        allocated(&out) < 4 << 20,
        "{} bytes allocated for {} bytes of archive",
        allocated(&out),
        stats.output_size
    );

    // The archive reads back as the files, zeros and all (the `tar` crate, another reader).
    let mut a = tar::Archive::new(fs::File::open(&out).unwrap());
    let mut seen = 0;
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let want = match name.as_str() {
            "./disk.img" => fs::read(&sparse).unwrap(),
            "./zeros" => zeros.clone(),
            _ => continue,
        };
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut got).unwrap();
        assert!(got == want, "{name} differs");
        seen += 1;
    }
    assert_eq!(seen, 2);
}

#[test]
fn a_size_limit_refuses_a_gzip_bomb_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    // A tar.gz of 256 MiB of zeros: about 260 KB.
    let mut h = tar::Header::new_ustar();
    h.set_path("bomb").unwrap();
    h.set_mode(0o644);
    h.set_size(256 << 20);
    h.set_cksum();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(h.as_bytes()).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..256 {
        gz.write_all(&zeros).unwrap();
    }
    gz.write_all(&[0u8; 1024]).unwrap();
    let input = dir.path().join("bomb.tar.gz");
    fs::write(&input, gz.finish().unwrap()).unwrap();
    assert!(fs::metadata(&input).unwrap().len() < 1 << 20);

    let outdir = dir.path().join("out");
    fs::create_dir(&outdir).unwrap();
    let limited = PackOptions { max_size: Some(64 << 20), ..opts(4096) };
    let counter = Counter::default();
    let err = pack(&input, &outdir.join("x.tar"), &limited, &counter).unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);
    assert!(err.message.contains("limit of 67108864 bytes") && err.message.contains("'bomb'"), "{}", err.message);
    assert_eq!(fs::read_dir(&outdir).unwrap().count(), 0, "nothing is left");
    // Refused at the entry's header: not a MiB of the 256 was decompressed.
    let read = counter.done.load(std::sync::atomic::Ordering::Relaxed);
    assert!(read <= 2 << 20, "{read} bytes of input read");

    // Within the limit it packs, into a file of holes.
    let roomy = PackOptions { max_size: Some(300 << 20), ..opts(4096) };
    let stats = pack(&input, &outdir.join("x.tar"), &roomy, &Silent).unwrap();
    assert!(stats.output_size > 256 << 20 && stats.output_size <= 300 << 20);
    assert!(allocated(&outdir.join("x.tar")) < 1 << 20);
    // The limit counts the end marker and the final padding: the exact size passes, one less fails.
    let exact = PackOptions { max_size: Some(stats.output_size), ..opts(4096) };
    pack(&input, &outdir.join("y.tar"), &exact, &Silent).unwrap();
    let short = PackOptions { max_size: Some(stats.output_size - 1), ..opts(4096) };
    assert_eq!(pack(&input, &outdir.join("z.tar"), &short, &Silent).unwrap_err().code, Code::InvalidArgument);
    assert!(!outdir.join("z.tar").exists());
}

#[test]
fn sparse_members_of_gnu_tar_are_packed_with_their_holes() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    fs::create_dir(&root).unwrap();
    // Eight extents, at the start and unaligned ones after (more than the four a GNU 'S'
    // header holds: extension records follow it), and a trailing hole.
    let sparse = root.join("disk.img");
    let f = fs::File::create(&sparse).unwrap();
    f.set_len(64 << 20).unwrap();
    f.write_all_at(&content(10_000, 1), 0).unwrap();
    for k in 1..8u64 {
        f.write_all_at(&content(300 * k as usize, k as u8), k * (7 << 20) + 77).unwrap();
    }
    drop(f);
    let want = fs::read(&sparse).unwrap();
    for (format, extra) in [("gnu", None), ("pax", Some("0.0")), ("pax", Some("0.1")), ("pax", Some("1.0"))] {
        let archive = dir.path().join(format!("in-{format}-{}.tar", extra.unwrap_or("")));
        let mut cmd = std::process::Command::new("tar");
        cmd.arg(format!("--format={format}")).arg("-S");
        if let Some(v) = extra {
            cmd.arg(format!("--sparse-version={v}"));
        }
        let st = cmd.arg("-cf").arg(&archive).arg("-C").arg(&root).arg("disk.img").status().unwrap();
        assert!(st.success());
        assert!(fs::metadata(&archive).unwrap().len() < 1 << 20, "GNU tar wrote a sparse member");
        let out = dir.path().join(format!("out-{format}-{}.tar", extra.unwrap_or("")));
        let stats = pack(&archive, &out, &opts(4096), &Silent).unwrap();
        assert_eq!(stats.file_bytes, 64 << 20, "{format} {extra:?}");
        assert!(allocated(&out) < 1 << 20, "{format} {extra:?}: {} bytes allocated", allocated(&out));
        let items = read_back(&fs::read(&out).unwrap());
        let item = items.iter().find(|i| i.name == b"./disk.img").expect("the file, under its real name");
        assert!(item.data == want, "{format} {extra:?}: contents differ");
        assert!(item.pax.iter().all(|(k, _)| !k.starts_with("GNU.sparse")), "an ordinary entry");
    }
}

#[test]
fn lying_sparse_maps_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sparse_tar = |records: &[(&[u8], &[u8])], data: &[u8]| {
        let mut pax = Vec::new();
        for (k, v) in records {
            super::writer::push_record(&mut pax, k, v);
        }
        raw_tar(&[(b"./PaxHeaders/x", b'x', b"", &pax), (b"./x", b'0', b"", data)])
    };
    let ok = sparse_tar(&[(b"GNU.sparse.size", b"10000"), (b"GNU.sparse.map", b"0,3,5000,2")], b"abcde");
    let input = d.join("ok.tar");
    fs::write(&input, &ok).unwrap();
    let out = d.join("ok.out");
    pack(&input, &out, &opts(4096), &Silent).unwrap();
    let item = read_back(&fs::read(&out).unwrap()).into_iter().find(|i| i.name == b"./x").unwrap();
    let mut want = vec![0u8; 10000];
    want[..3].copy_from_slice(b"abc");
    want[5000..5002].copy_from_slice(b"de");
    assert!(item.data == want);

    for (name, records, data, what) in [
        (
            "overlap",
            &[(&b"GNU.sparse.size"[..], &b"10000"[..]), (b"GNU.sparse.map", b"0,3,2,2")][..],
            &b"abcde"[..],
            "out of order",
        ),
        (
            "past-end",
            &[(b"GNU.sparse.size", b"100"), (b"GNU.sparse.map", b"0,3,99,2")],
            b"abcde",
            "past the file's end",
        ),
        ("short-data", &[(b"GNU.sparse.size", b"10000"), (b"GNU.sparse.map", b"0,3,5000,9")], b"abcde", "stores 5"),
        ("odd-map", &[(b"GNU.sparse.size", b"10000"), (b"GNU.sparse.map", b"0,3,5000")], b"abcde", "number of extents"),
        (
            "count",
            &[(b"GNU.sparse.size", b"10000"), (b"GNU.sparse.numblocks", b"3"), (b"GNU.sparse.map", b"0,5")],
            b"abcde",
            "number of extents",
        ),
        ("no-size", &[(b"GNU.sparse.map", b"0,5")], b"abcde", "real size"),
        ("version", &[(b"GNU.sparse.major", b"2"), (b"GNU.sparse.realsize", b"5")], b"abcde", "format 2"),
        (
            "map-runs-on",
            &[(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"), (b"GNU.sparse.realsize", b"5")],
            &[b'7'; 600][..],
            "malformed number",
        ),
    ] {
        assert_refused(d, name, &sparse_tar(records, data), what);
    }
}
