//! The NBD server against qemu's own NBD client (qemu-img, qemu-io, qemu-nbd from
//! qemu-utils) over a unix socket. Images are made of numbered 4 KiB blocks, so which
//! block is local, missing, repeated or zero is known exactly.
// `u64::is_multiple_of` needs Rust 1.87; the workspace supports 1.80.
#![allow(clippy::manual_is_multiple_of)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::indexer::{index_bytes, IndexOptions};
use crate::progress::Silent;
use crate::repo::{AddOptions, BlockSource, InitOptions, Repository, Run};
use crate::test_data::{block, image};
use crate::{Code, Index};

const BS: u64 = 4096;
const N: u32 = 320;

/// Block `i` of the wanted image: every 10th zero, every 3rd held by the local "base"
/// image, every 17th (from 5) a repeat of block 5, the rest only at the origin.
fn wanted_seed(i: u32) -> u32 {
    match i {
        _ if i % 10 == 0 => 0,
        _ if i % 3 == 0 => 1000 + i,
        _ if i % 17 == 5 => 5000,
        _ => 2000 + i,
    }
}

struct Lab {
    dir: tempfile::TempDir,
    repo: Repository,
    /// The wanted image as the origin holds it.
    source: Vec<u8>,
    index: Index,
    /// Blocks the repository holds in another image.
    local: Vec<u64>,
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::Builder::new().prefix("osfarm-nbd-").tempdir().unwrap();
        let repo = Repository::init(&dir.path().join("repo"), InitOptions::default()).unwrap();
        // The base image holds the wanted image's local blocks, in another order, and more.
        let base: Vec<u32> =
            (0..N).rev().filter(|i| i % 3 == 0 && i % 10 != 0).map(|i| 1000 + i).chain(1..40).collect();
        let p = dir.path().join("base.img");
        std::fs::write(&p, image(&base)).unwrap();
        repo.add(&p, &AddOptions { tags: vec!["base".into()], ..Default::default() }, &Silent).unwrap();
        let seeds: Vec<u32> = (0..N).map(wanted_seed).collect();
        let source = image(&seeds);
        let index = index_bytes(&source, IndexOptions::default()).unwrap();
        let local = (0..N as u64).filter(|&i| i % 3 == 0 && i % 10 != 0).collect();
        Lab { dir, repo, source, index, local }
    }

    fn socket(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn block(&self, i: u64) -> &[u8] {
        &self.source[(i * BS) as usize..((i + 1) * BS) as usize]
    }
}

/// Answers from the origin's bytes on a thread of its own, logging every request. It can
/// lie about one block, and hold its answers until released.
struct TestFetcher {
    source: Vec<u8>,
    lie_about: Option<u64>,
    log: Mutex<Vec<FetchRequest>>,
    held: Mutex<Option<Vec<(FetchRequest, FetchReply)>>>,
}

impl TestFetcher {
    fn new(lab: &Lab) -> Arc<TestFetcher> {
        Arc::new(TestFetcher {
            source: lab.source.clone(),
            lie_about: None,
            log: Mutex::default(),
            held: Mutex::default(),
        })
    }

    fn answer(&self, r: &FetchRequest) -> Vec<u8> {
        let mut data = self.source[r.offset as usize..(r.offset + r.length) as usize].to_vec();
        if let Some(b) = self.lie_about.filter(|b| (r.first..r.first + r.count).contains(b)) {
            data[((b - r.first) * BS) as usize] ^= 0x55;
        }
        data
    }

    fn hold(&self) {
        *self.held.lock().unwrap() = Some(Vec::new());
    }

    fn held_count(&self) -> usize {
        self.held.lock().unwrap().as_ref().map_or(0, |h| h.len())
    }

    fn release(&self) {
        for (r, reply) in self.held.lock().unwrap().take().unwrap_or_default() {
            reply.complete(Ok(self.answer(&r)));
        }
    }

    fn requested(&self) -> Vec<u64> {
        self.log.lock().unwrap().iter().flat_map(|r| r.first..r.first + r.count).collect()
    }
}

impl Fetcher for TestFetcher {
    fn fetch(&self, request: FetchRequest, reply: FetchReply) {
        self.log.lock().unwrap().push(request);
        if let Some(held) = self.held.lock().unwrap().as_mut() {
            held.push((request, reply));
            return;
        }
        let data = self.answer(&request);
        std::thread::spawn(move || reply.complete(Ok(data)));
    }
}

type Events = Arc<Mutex<Vec<Event>>>;

fn open(lab: &Lab, fetcher: &Arc<TestFetcher>) -> (Arc<LazyImage>, Events) {
    let events: Events = Arc::default();
    let sink = events.clone();
    let opts = LazyOptions {
        fetcher: Some(fetcher.clone()),
        events: Some(Arc::new(move |e| sink.lock().unwrap().push(e))),
        ..Default::default()
    };
    (Arc::new(LazyImage::open(&lab.repo, lab.index.clone(), opts).unwrap()), events)
}

fn serve(lab: &Lab, image: &Arc<LazyImage>, name: &str) -> Server {
    let opts = ServerOptions { export_name: "osfarm-test".into(), workers: 4 };
    Server::start(&lab.socket(name), image.clone(), opts).unwrap()
}

fn uri(socket: &Path) -> String {
    format!("nbd+unix:///?socket={}", socket.display())
}

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd} (qemu-utils) must be installed: {e}"))
}

/// `qemu-io -r` reading `len` bytes at `offset`; returns its output.
fn qemu_read(socket: &Path, offset: u64, len: u64) -> Output {
    run("qemu-io", &["-r", "-f", "raw", "-c", &format!("read {offset} {len}"), &uri(socket)])
}

fn ok(o: &Output) -> &Output {
    assert!(o.status.success(), "failed: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    o
}

/// Reads the whole export with `qemu-img convert` and returns the bytes.
fn convert(lab: &Lab, socket: &Path, out: &str) -> Vec<u8> {
    let out = lab.dir.path().join(out);
    ok(&run("qemu-img", &["convert", "-f", "raw", "-O", "raw", &uri(socket), out.to_str().unwrap()]));
    std::fs::read(out).unwrap()
}

/// Polls `cond` for up to 30 s; false if it never held.
fn wait_until(cond: impl Fn() -> bool) -> bool {
    let t = Instant::now();
    while !cond() {
        if t.elapsed() > Duration::from_secs(30) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

#[test]
fn qemu_img_reads_the_whole_export_byte_identical_and_it_publishes() {
    let lab = Lab::new();
    let fetcher = TestFetcher::new(&lab);
    let (img, events) = open(&lab, &fetcher);
    let server = serve(&lab, &img, "a.sock");
    assert_eq!(convert(&lab, server.socket_path(), "out.raw"), lab.source);

    // Local blocks were copied from the base image, never fetched; each missing digest
    // was fetched once (the repeats of block 5 came with it); zero blocks cost nothing.
    let plan = lab.repo.plan(&lab.index).unwrap();
    let requested = fetcher.requested();
    let mut distinct = requested.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), requested.len(), "a block was fetched twice");
    let missing: Vec<u64> = (0..N as u64).filter(|&i| plan.sources[i as usize] == BlockSource::Missing).collect();
    assert_eq!(distinct, missing);
    let s = img.stats();
    assert_eq!(s.local_blocks, lab.local.len() as u64);
    assert_eq!(s.fetched_blocks, missing.len() as u64);
    assert_eq!(s.have_blocks, N as u64);
    assert!(events.lock().unwrap().is_empty());

    // Everything is present now: publishing needs nothing more, and reads go on.
    let entry = img.publish(&AddOptions { tags: vec!["lazy".into()], ..Default::default() }).unwrap();
    assert_eq!(entry.digest, lab.index.image_digest_hex());
    lab.repo.verify("lazy", &Silent).unwrap();
    assert_eq!(std::fs::read(&entry.path).unwrap(), lab.source);
    ok(&qemu_read(server.socket_path(), 7 * BS, BS));
    server.stop();
    assert!(!lab.socket("a.sock").exists());
}

#[test]
fn a_wrong_block_fails_the_read_with_eio_and_is_not_stored() {
    let lab = Lab::new();
    let bad = 7u64;
    let fetcher = Arc::new(TestFetcher {
        source: lab.source.clone(),
        lie_about: Some(bad),
        log: Mutex::default(),
        held: Mutex::default(),
    });
    let (img, events) = open(&lab, &fetcher);
    let server = serve(&lab, &img, "b.sock");
    let o = qemu_read(server.socket_path(), bad * BS, BS);
    assert!(!o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("Input/output error"), "{o:?}");
    {
        let ev = events.lock().unwrap();
        assert!(
            matches!(&ev[..], [Event::BadBlock { block, origin: Origin::Fetched, message }]
                if *block == bad && message.contains("does not match its digest")),
            "{ev:?}"
        );
    }
    assert_eq!(img.stats().bad_blocks, 1);
    // A read of a request's good blocks works; the bad block is still missing, and a
    // direct read of it fails the same way.
    ok(&qemu_read(server.socket_path(), 8 * BS, BS));
    assert!(img.missing().iter().any(|r| (r.first..r.first + r.count).contains(&bad)));
    let mut buf = vec![0u8; BS as usize];
    assert_eq!(img.read_at(bad * BS, &mut buf).unwrap_err().code, Code::DigestMismatch);
    // Nor is it recorded for a resume: a new export of the image still lacks it.
    server.stop();
    drop(img);
    let honest = TestFetcher::new(&lab);
    let (again, _) = open(&lab, &honest);
    assert!(again.missing().iter().any(|r| (r.first..r.first + r.count).contains(&bad)));
    assert!(!again.missing().iter().any(|r| (r.first..r.first + r.count).contains(&8)));
    again.read_at(bad * BS, &mut buf).unwrap();
    assert_eq!(buf, lab.block(bad));
}

#[test]
fn reads_of_one_missing_block_share_one_fetch_while_other_misses_proceed() {
    let lab = Lab::new();
    let fetcher = TestFetcher::new(&lab);
    fetcher.hold();
    let (img, _) = open(&lab, &fetcher);
    let server = serve(&lab, &img, "c.sock");
    let sock = server.socket_path().to_path_buf();
    let (shared, other) = (11u64, 202u64);
    // Four clients read the same missing block, a fifth another one.
    let readers: Vec<_> = [shared, shared, shared, shared, other]
        .into_iter()
        .map(|b| {
            let s = sock.clone();
            std::thread::spawn(move || qemu_read(&s, b * BS, BS))
        })
        .collect();
    // On any failure below, answer the held requests so the server can stop.
    struct Release(Arc<TestFetcher>);
    impl Drop for Release {
        fn drop(&mut self) {
            self.0.release();
        }
    }
    let _release = Release(fetcher.clone());
    let waiting = wait_until(|| img.stats().coalesced == 3 && fetcher.held_count() == 2);
    assert!(waiting, "the readers do not wait as expected: {:?}, fetches {:?}", img.stats(), fetcher.requested());
    // Two misses in flight at once, one request each.
    let mut requested = fetcher.requested();
    requested.sort_unstable();
    assert_eq!(requested, vec![shared, other]);
    fetcher.release();
    for r in readers {
        ok(&r.join().unwrap());
    }
    assert_eq!(img.stats().fetch_requests, 2);
    // qemu-io checks nothing about the data; this does.
    let mut buf = vec![0u8; BS as usize];
    img.read_at(shared * BS, &mut buf).unwrap();
    assert_eq!(buf, lab.block(shared));
    assert_eq!(img.stats().fetch_requests, 2);
}

#[test]
fn a_local_block_is_copied_not_fetched_and_a_damaged_one_is_fetched_instead() {
    let lab = Lab::new();
    let fetcher = TestFetcher::new(&lab);
    let (img, events) = open(&lab, &fetcher);
    let server = serve(&lab, &img, "d.sock");
    let (good, damaged) = (lab.local[0], lab.local[1]);
    ok(&qemu_read(server.socket_path(), good * BS, BS));
    assert!(fetcher.requested().is_empty());
    assert_eq!(img.stats().local_blocks, 1);

    // Damage the base image's copy of `damaged` on disk.
    let plan = lab.repo.plan(&lab.index).unwrap();
    let BlockSource::Present { block: at, .. } = plan.sources[damaged as usize] else { panic!("not local") };
    let base = lab.repo.image_path("base").unwrap();
    let mut data = std::fs::read(&base).unwrap();
    data[(at * BS) as usize + 100] ^= 1;
    std::fs::write(&base, data).unwrap();
    let mut buf = vec![0u8; BS as usize];
    img.read_at(damaged * BS, &mut buf).unwrap();
    assert_eq!(buf, lab.block(damaged));
    assert_eq!(fetcher.requested(), vec![damaged]);
    let ev = events.lock().unwrap();
    assert!(
        matches!(&ev[..], [Event::BadBlock { block, origin: Origin::Local, message }]
            if *block == damaged && message.contains("osfarm repo verify")),
        "{ev:?}"
    );
}

#[test]
fn a_stored_block_that_rots_on_disk_is_not_served() {
    let lab = Lab::new();
    let fetcher = TestFetcher::new(&lab);
    let (img, events) = open(&lab, &fetcher);
    let b = 13u64;
    let mut buf = vec![0u8; BS as usize];
    img.read_at(b * BS, &mut buf).unwrap();
    let partial = lab.repo.root().join("tmp").join(format!("{}.partial", lab.index.image_digest_hex()));
    let f = std::fs::OpenOptions::new().write(true).open(partial).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"rot", b * BS + 9).unwrap();
    assert_eq!(img.read_at(b * BS, &mut buf).unwrap_err().code, Code::DigestMismatch);
    let ev = events.lock().unwrap();
    assert!(matches!(&ev[..], [Event::BadBlock { block, origin: Origin::Store, .. }] if *block == b), "{ev:?}");
}

#[test]
fn first_reads_make_the_profile_and_ensure_completes_the_rest() {
    let lab = Lab::new();
    let fetcher = TestFetcher::new(&lab);
    let (img, _) = open(&lab, &fetcher);
    let server = serve(&lab, &img, "e.sock");
    for (b, n) in [(50u64, 1u64), (10, 2), (51, 1), (200, 3), (11, 1)] {
        ok(&qemu_read(server.socket_path(), b * BS, n * BS));
    }
    let runs = |v: &[(u64, u64)]| v.iter().map(|&(first, count)| Run { first, count }).collect::<Vec<_>>();
    assert_eq!(img.profile(), runs(&[(50, 1), (10, 2), (51, 1), (200, 3)]));

    // The background prefetch: the profile first, then whatever is still missing.
    for r in img.profile().into_iter().chain(img.missing()) {
        img.ensure(r.first, r.count).unwrap();
    }
    assert!(img.missing().is_empty());
    let fetched = fetcher.requested().len();
    let entry = img.publish(&AddOptions::default()).unwrap();
    assert_eq!(std::fs::read(entry.path).unwrap(), lab.source);
    // Everything local now: a whole read fetches nothing more.
    assert_eq!(convert(&lab, server.socket_path(), "after.raw"), lab.source);
    assert_eq!(fetcher.requested().len(), fetched);
}

#[test]
fn a_new_export_resumes_with_the_blocks_an_earlier_one_stored() {
    let lab = Lab::new();
    let fetcher = TestFetcher::new(&lab);
    let (img, _) = open(&lab, &fetcher);
    img.ensure(100, 60).unwrap();
    let first = fetcher.requested();
    assert!(!first.is_empty());
    // One export of an image per repository at a time.
    let e = LazyImage::open(&lab.repo, lab.index.clone(), LazyOptions::default()).err().unwrap();
    assert_eq!(e.code, Code::Locked);
    drop(img); // an interrupted run: the partial and its bitmap stay

    let again = TestFetcher::new(&lab);
    let (img, _) = open(&lab, &again);
    let server = serve(&lab, &img, "f.sock");
    ok(&qemu_read(server.socket_path(), 100 * BS, 60 * BS));
    assert!(again.requested().is_empty(), "refetched {:?}", again.requested());
}

#[test]
fn an_image_the_repository_holds_is_served_without_a_fetcher() {
    let lab = Lab::new();
    let p = lab.dir.path().join("whole.img");
    std::fs::write(&p, &lab.source).unwrap();
    lab.repo.add(&p, &AddOptions::default(), &Silent).unwrap();
    let img = Arc::new(LazyImage::open(&lab.repo, lab.index.clone(), LazyOptions::default()).unwrap());
    assert!(img.missing().is_empty());
    let server = serve(&lab, &img, "g.sock");
    assert_eq!(convert(&lab, server.socket_path(), "whole.raw"), lab.source);
    assert_eq!(img.stats().fetch_requests, 0);
}

#[test]
fn the_export_is_listed_read_only_and_without_a_fetcher_a_miss_is_eio() {
    let lab = Lab::new();
    let img = Arc::new(LazyImage::open(&lab.repo, lab.index.clone(), LazyOptions::default()).unwrap());
    let server = serve(&lab, &img, "h.sock");
    let sock = server.socket_path().to_str().unwrap().to_string();
    let o = run("qemu-nbd", &["--list", "-k", &sock]);
    ok(&o);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("osfarm-test") && text.contains(&format!("size:  {}", N as u64 * BS)), "{text}");
    // qemu refuses to write to a read-only export before sending anything.
    let o = run("qemu-io", &["-f", "raw", "-c", "write 0 4096", &uri(server.socket_path())]);
    assert!(!o.status.success());
    // Guest writes go to a qcow2 overlay whose backing file is the export. With clusters
    // of the block size, a block-sized write reads nothing from the backing file (here
    // block 1, which is missing and could not be fetched).
    let overlay = lab.dir.path().join("overlay.qcow2");
    let backing = format!("nbd+unix:///osfarm-test?socket={sock}");
    let create = ["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b", &backing, "-F", "raw"];
    ok(&run("qemu-img", &[&create[..], &[overlay.to_str().unwrap()]].concat()));
    let o =
        run("qemu-io", &["-c", "write -P 0x5a 4096 4096", "-c", "read -P 0x5a 4096 4096", overlay.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&ok(&o).stdout).contains("read 4096/4096"), "{o:?}");
    assert_eq!(img.stats().have_blocks, (0..N).filter(|&i| wanted_seed(i) == 0).count() as u64);
    // A zero block and a local block are served; a missing one cannot be.
    ok(&qemu_read(server.socket_path(), 0, BS));
    ok(&qemu_read(server.socket_path(), lab.local[0] * BS, BS));
    let o = qemu_read(server.socket_path(), BS, BS);
    assert!(!o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("Input/output error"), "{o:?}");
    // A second server on the same socket is refused while the first runs.
    let e = Server::start(server.socket_path(), img.clone(), ServerOptions { export_name: "x".into(), workers: 1 })
        .err()
        .unwrap();
    assert_eq!(e.code, Code::Locked);
}

#[test]
fn unaligned_reads_and_a_short_last_block() {
    let lab = Lab::new();
    // The wanted image with a 1000-byte tail block.
    let mut source = lab.source.clone();
    source.extend_from_slice(&block(77)[..1000]);
    let index = index_bytes(&source, IndexOptions::default()).unwrap();
    let fetcher = Arc::new(TestFetcher {
        source: source.clone(),
        lie_about: None,
        log: Mutex::default(),
        held: Mutex::default(),
    });
    let opts = LazyOptions { fetcher: Some(fetcher.clone()), ..Default::default() };
    let img = LazyImage::open(&lab.repo, index, opts).unwrap();
    assert_eq!(img.size(), source.len() as u64);
    for (off, len) in [(100u64, 5000usize), (N as u64 * BS - 10, 1010), (3 * BS + 1, 3 * BS as usize)] {
        let mut buf = vec![0u8; len];
        img.read_at(off, &mut buf).unwrap();
        assert_eq!(buf, source[off as usize..off as usize + len]);
    }
    let mut buf = vec![0u8; 2];
    assert_eq!(img.read_at(source.len() as u64 - 1, &mut buf).unwrap_err().code, Code::InvalidArgument);
}
