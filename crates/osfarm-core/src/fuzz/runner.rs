//! The fuzzing `cargo test` does on stable Rust: each target over its stored corpus, then
//! random mutations of the corpus for a bounded time, from a seed that changes every run
//! and is printed. There is no coverage feedback (that is what `cargo fuzz` adds in
//! `benches/fuzz.sh`), but the oracles are the same: a panic, an input that runs longer
//! than [`HANG`], or a single allocation above [`ALLOC_LIMIT`] fails the run, and the
//! input is saved so that copying it into the corpus replays it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::{Target, TARGETS};

/// Time spent on mutations per target, after the corpus.
const BUDGET: Duration = Duration::from_secs(2);
/// One input taking longer than this is a hang.
const HANG: Duration = Duration::from_secs(10);
/// No parser needs more for any input the mutator makes (at most [`MAX_LEN`] bytes).
const ALLOC_LIMIT: usize = 256 << 20;
const MAX_LEN: usize = 64 << 10;

// ----- the allocation guard -----

/// The system allocator, refusing single allocations above the limit while a target runs
/// on this thread (the refusal aborts the process, after the input is saved).
struct Guard;

thread_local! {
    static RUNNING: Cell<Option<(&'static str, *const u8, usize)>> = const { Cell::new(None) };
}

fn over_limit(size: usize) -> bool {
    if size <= ALLOC_LIMIT {
        return false;
    }
    let Ok(Some((target, ptr, len))) = RUNNING.try_with(|r| r.take()) else { return false };
    // SAFETY: the runner keeps the input alive while the target runs.
    let input = unsafe { std::slice::from_raw_parts(ptr, len) };
    let path = save(target, input);
    eprintln!("fuzz {target}: an allocation of {size} bytes (limit {ALLOC_LIMIT}); input saved at {}", path.display());
    true
}

// SAFETY: every call goes to System; refused sizes return null as an allocator may.
unsafe impl GlobalAlloc for Guard {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if over_limit(layout.size()) {
            return std::ptr::null_mut();
        }
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if over_limit(layout.size()) {
            return std::ptr::null_mut();
        }
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if over_limit(new_size) {
            return std::ptr::null_mut();
        }
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GUARD: Guard = Guard;

// ----- the mutator -----

/// splitmix64: small, fast, and a seed gives one sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Values that sit on the edges of length and count fields.
fn interesting(rng: &mut Rng, len: usize) -> u64 {
    const V: [u64; 16] = [
        0,
        1,
        0x7f,
        0x80,
        0xff,
        0x1ff,
        0x200,
        0x1000,
        0x7fff,
        0xffff,
        1 << 20,
        0x7fff_ffff,
        0xffff_ffff,
        1 << 53,
        i64::MAX as u64,
        u64::MAX,
    ];
    match rng.below(V.len() + 2) {
        i if i < V.len() => V[i],
        i if i == V.len() => len as u64,
        _ => rng.next() >> rng.below(64),
    }
}

/// Applies one to four random edits: bit flips, bytes, edge values as 2/4/8-byte
/// integers, deletions, insertions, copies within the input, splices from another corpus
/// input, truncation, and rewritten ASCII numbers (tar's octal fields, pax and JSON).
fn mutate(rng: &mut Rng, data: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    for _ in 0..1 + rng.below(4) {
        let len = data.len();
        match rng.below(10) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = rng.next() as u8;
            }
            2 if len > 0 => {
                let i = rng.below(len);
                data[i] = [0, 1, b'0', b'7', b' ', b'\n', b'/', b'.', 0x7f, 0x80, 0xff][rng.below(11)];
            }
            3 if len >= 8 => {
                let width = [2, 4, 8][rng.below(3)];
                let v = interesting(rng, len);
                let bytes = if rng.below(2) == 0 { v.to_le_bytes() } else { (v << (64 - 8 * width)).to_be_bytes() };
                let at = rng.below(len - width + 1);
                data[at..at + width].copy_from_slice(&bytes[..width]);
            }
            4 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(512));
                data.drain(at..at + n);
            }
            5 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(64);
                let byte = rng.next() as u8;
                let fill: Vec<u8> = (0..n).map(|_| if rng.below(2) == 0 { byte } else { rng.next() as u8 }).collect();
                data.splice(at..at, fill);
            }
            6 if len > 1 => {
                let from = rng.below(len);
                let n = 1 + rng.below((len - from).min(1024));
                let chunk = data[from..from + n].to_vec();
                let at = rng.below(len);
                if rng.below(2) == 0 {
                    data.splice(at..at, chunk);
                } else {
                    let end = (at + n).min(len);
                    data.splice(at..end, chunk);
                }
            }
            7 => {
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() {
                    let from = rng.below(other.len());
                    let chunk = &other[from..from + 1 + rng.below((other.len() - from).min(2048))];
                    let at = rng.below(len + 1);
                    data.splice(at..at, chunk.iter().copied());
                }
            }
            8 if len > 0 => data.truncate(rng.below(len)),
            9 if len > 0 => rewrite_number(rng, data),
            _ => {}
        }
    }
    data.truncate(MAX_LEN);
}

/// Rewrites the first run of ASCII digits at or after a random offset: in place (same
/// length, octal or decimal digits) or as another number of any length.
fn rewrite_number(rng: &mut Rng, data: &mut Vec<u8>) {
    let from = rng.below(data.len());
    let Some(start) = data[from..].iter().position(u8::is_ascii_digit).map(|i| from + i) else { return };
    let end = data[start..].iter().position(|b| !b.is_ascii_digit()).map_or(data.len(), |i| start + i);
    if rng.below(2) == 0 {
        let radix = if rng.below(2) == 0 { 8 } else { 10 };
        for b in &mut data[start..end] {
            *b = b'0' + rng.below(radix) as u8;
        }
    } else {
        let v = interesting(rng, data.len());
        let text = if rng.below(2) == 0 { format!("{v}") } else { format!("{v:o}") };
        data.splice(start..end, text.into_bytes());
    }
}

// ----- running -----

/// Where a failing input is saved: `target/fuzz-failures/<target>-<hash>`.
fn save(target: &str, input: &[u8]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{target}-{}", hex::encode(crate::repo::checksum::checksum64(input).to_le_bytes())));
    let _ = std::fs::write(&path, input);
    path
}

/// The stored corpus of a target (at least one input, or the target is untested).
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fuzz corpus {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let inputs: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!inputs.is_empty(), "the fuzz corpus {} is empty", dir.display());
    inputs
}

/// The input being run and since when, for the hang watchdog.
type Current = Mutex<Option<(Instant, Vec<u8>)>>;

/// Runs `target` on `input`; a panic fails the test with the input saved.
fn run_one(name: &'static str, target: Target, input: &[u8], current: &Current, seed: u64) {
    *current.lock().unwrap() = Some((Instant::now(), input.to_vec()));
    RUNNING.with(|r| r.set(Some((name, input.as_ptr(), input.len()))));
    let result = std::panic::catch_unwind(|| target(input));
    RUNNING.with(|r| r.set(None));
    *current.lock().unwrap() = None;
    if let Err(panic) = result {
        let path = save(name, input);
        let what =
            panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
        panic!(
            "fuzz {name} (seed {seed:#x}): the target panicked on {} ({} bytes): {}",
            path.display(),
            input.len(),
            what.unwrap_or_default()
        );
    }
}

/// The corpus, then mutations until the budget is spent.
fn fuzz(name: &'static str) {
    let target = TARGETS.iter().find(|t| t.0 == name).expect("a target of that name").1;
    let corpus = corpus(name);
    let seed = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    let current: Arc<Current> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let (current, done) = (current.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if let Some((started, input)) = &*current.lock().unwrap() {
                    if started.elapsed() > HANG {
                        let path = save(name, input);
                        eprintln!(
                            "fuzz {name} (seed {seed:#x}): an input ran over {HANG:?}; saved at {}",
                            path.display()
                        );
                        std::process::abort();
                    }
                }
            }
        })
    };
    for input in &corpus {
        run_one(name, target, input, &current, seed);
    }
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut runs = corpus.len();
    let mut input = Vec::new();
    while started.elapsed() < BUDGET {
        input.clear();
        input.extend_from_slice(&corpus[rng.below(corpus.len())]);
        mutate(&mut rng, &mut input, &corpus);
        run_one(name, target, &input, &current, seed);
        runs += 1;
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    watchdog.join().unwrap();
    eprintln!(
        "fuzz {name}: {} corpus inputs and {} mutations in {:?} (seed {seed:#x})",
        corpus.len(),
        runs - corpus.len(),
        started.elapsed()
    );
}

#[test]
fn the_mutator_changes_inputs_and_respects_the_bound() {
    let corpus = vec![b"0000644\0ustar  hello".to_vec(), vec![0u8; 600]];
    let mut rng = Rng(7);
    let mut changed = 0;
    for i in 0..2000 {
        let mut d = corpus[i % 2].clone();
        mutate(&mut rng, &mut d, &corpus);
        changed += (d != corpus[i % 2]) as usize;
        assert!(d.len() <= MAX_LEN);
    }
    assert!(changed > 1800, "{changed} of 2000 mutations changed the input");
}

#[test]
fn a_failing_input_fails_the_run_and_is_saved() {
    let current = Mutex::new(None);
    let input = b"runner self-test: too long";
    let failed = std::panic::catch_unwind(|| {
        run_one("selftest", |d| assert!(d.len() < 3, "the input is too long"), input, &current, 1)
    });
    let message = *failed.expect_err("the run fails").downcast::<String>().unwrap();
    assert!(message.contains("the input is too long"), "{message}");
    let saved = save("selftest", input);
    assert!(message.contains(&saved.display().to_string()), "{message}");
    assert_eq!(std::fs::read(&saved).unwrap(), input);
    std::fs::remove_file(saved).unwrap();
}

#[test]
fn fuzz_index() {
    fuzz("index");
}

#[test]
fn fuzz_tar() {
    fuzz("tar");
}

#[test]
fn fuzz_groups() {
    fuzz("groups");
}

#[test]
fn fuzz_zstd_run() {
    fuzz("zstd_run");
}

#[test]
fn fuzz_catalog() {
    fuzz("catalog");
}

#[test]
fn fuzz_table() {
    fuzz("table");
}

#[test]
fn fuzz_json() {
    fuzz("json");
}
