//! Repository-level tests: crafted images of 4 KiB blocks, each block named by a seed
//! (0 = all zeros), so plans and sharing are known exactly.

use std::path::{Path, PathBuf};

use super::*;
use crate::indexer::index_bytes;
use crate::progress::Silent;
use crate::test_data::{block, image};

const BS: usize = 4096;

struct Fixture {
    dir: tempfile::TempDir,
    repo: Repository,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(&dir.path().join("repo"), InitOptions::default()).unwrap();
        Fixture { dir, repo }
    }
    fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        p
    }
    fn add(&self, name: &str, seeds: &[u32]) -> ImageEntry {
        let p = self.file(&format!("{name}.img"), &image(seeds));
        self.repo.add(&p, &AddOptions { tags: vec![name.into()], ..Default::default() }, &Silent).unwrap()
    }
    fn root(&self) -> &Path {
        self.repo.root()
    }
}

fn idx(seeds: &[u32]) -> Index {
    index_bytes(&image(seeds), IndexOptions::default()).unwrap()
}

fn reopen(f: &Fixture) -> Result<Repository> {
    Repository::open(f.root())
}

#[test]
fn init_open_and_refusals() {
    let f = Fixture::new();
    assert_eq!(f.repo.alg(), HashAlg::Sha1);
    assert_eq!(f.repo.block_size(), 4096);
    assert!(reopen(&f).is_ok());
    // Not a repository.
    let e = Repository::open(f.dir.path()).unwrap_err();
    assert_eq!(e.code, Code::BadRepository);
    assert!(e.message.contains("osfarm repo init"), "{}", e.message);
    // It holds other files, which `repo init` would refuse: the hint says so.
    assert!(e.message.contains("new or empty directory"), "{}", e.message);
    let e = Repository::open(&f.dir.path().join("nope")).unwrap_err();
    assert_eq!(e.code, Code::BadRepository);
    assert!(e.message.contains("does not exist; run `osfarm repo init"), "{}", e.message);
    // Unknown format version.
    let fp = f.root().join(FORMAT_FILE);
    let text = std::fs::read_to_string(&fp).unwrap();
    std::fs::write(&fp, text.replace("\"version\": 1", "\"version\": 7")).unwrap();
    let e = reopen(&f).unwrap_err();
    assert_eq!(e.code, Code::BadRepository);
    assert!(e.message.contains("version 7"), "{}", e.message);
    std::fs::write(&fp, text).unwrap();
    // init refuses an existing repository and a non-empty directory.
    assert_eq!(Repository::init(f.root(), InitOptions::default()).unwrap_err().code, Code::InvalidArgument);
    f.file("stuff", b"x");
    assert_eq!(Repository::init(f.dir.path(), InitOptions::default()).unwrap_err().code, Code::InvalidArgument);
    // A stage store made before the repository (a --no-repo build) does not block init.
    std::fs::create_dir_all(f.dir.path().join("r3/stages/x")).unwrap();
    assert!(Repository::init(&f.dir.path().join("r3"), InitOptions::default()).is_ok());
    // Other parameters are recorded.
    let r2 = Repository::init(
        &f.dir.path().join("r2"),
        InitOptions { alg: HashAlg::Sha256, block_size: 8192, detect_collisions: false },
    )
    .unwrap();
    let r2 = Repository::open(r2.root()).unwrap();
    assert_eq!((r2.alg(), r2.block_size()), (HashAlg::Sha256, 8192));
}

#[test]
fn add_list_resolve_remove() {
    let f = Fixture::new();
    let a = f.add("alpha", &[1, 2, 0, 3]);
    assert_eq!(a.digest, idx(&[1, 2, 0, 3]).image_digest_hex());
    assert_eq!(a.size, 4 * BS as u64);
    assert_eq!(a.format, "raw");
    assert_eq!(a.original_name.as_deref(), Some("alpha.img"));
    assert_eq!(std::fs::read(&a.path).unwrap(), image(&[1, 2, 0, 3]));
    // The zero block is a hole.
    {
        use std::os::unix::fs::MetadataExt;
        assert!(std::fs::metadata(&a.path).unwrap().blocks() * 512 <= 3 * BS as u64);
    }
    let b = f.add("beta", &[2, 3, 4]);
    assert_eq!(f.repo.list().unwrap().len(), 2);
    assert_eq!(f.repo.resolve("alpha").unwrap(), a);
    assert_eq!(f.repo.resolve(&a.digest[..6]).unwrap(), a);
    assert_eq!(f.repo.resolve(&a.digest.to_uppercase()).unwrap(), a);
    assert_eq!(f.repo.resolve("nothing").unwrap_err().code, Code::NotFound);
    assert_eq!(f.repo.resolve("abc").unwrap_err().code, Code::NotFound, "prefixes need 4 digits");
    let st = f.repo.stats().unwrap();
    assert_eq!((st.images, st.distinct_blocks), (2, 4));
    assert_eq!(st.total_bytes, 7 * BS as u64);
    // Adding the same content again is a no-op that can add a tag.
    let p = f.file("again.img", &image(&[1, 2, 0, 3]));
    let again = f.repo.add(&p, &AddOptions { tags: vec!["beta".into()], ..Default::default() }, &Silent).unwrap();
    assert_eq!(again.digest, a.digest);
    assert_eq!(again.tags, ["alpha", "beta"]);
    assert!(f.repo.resolve(&b.digest).unwrap().tags.is_empty(), "tags move");
    assert_eq!(f.repo.list().unwrap().len(), 2);
    assert_eq!(f.repo.stats().unwrap().distinct_blocks, 4);
    // A fresh handle sees the same.
    let r = reopen(&f).unwrap();
    assert_eq!(r.resolve("beta").unwrap().digest, a.digest);
    // Removal.
    let gone = f.repo.remove("beta").unwrap();
    assert_eq!(gone.digest, a.digest);
    assert!(!f.root().join(IMAGES_DIR).join(&a.digest).exists());
    assert_eq!(r.list().unwrap().len(), 1);
    assert_eq!(r.stats().unwrap().distinct_blocks, 3);
    assert_eq!(f.repo.remove("beta").unwrap_err().code, Code::NotFound);
    f.repo.verify(&b.digest, &Silent).unwrap();
    // Metadata must be JSON.
    let p = f.file("m.img", &image(&[9]));
    let bad = AddOptions { meta_json: Some("{nope".into()), ..Default::default() };
    assert_eq!(f.repo.add(&p, &bad, &Silent).unwrap_err().code, Code::InvalidArgument);
    let good = AddOptions { meta_json: Some("{\"spec\":{\"suite\":\"bookworm\"}}".into()), ..Default::default() };
    let m = f.repo.add(&p, &good, &Silent).unwrap();
    assert_eq!(reopen(&f).unwrap().resolve(&m.digest).unwrap().meta_json, good.meta_json);
}

#[test]
fn tags_add_move_and_go_and_every_tag_resolves() {
    let f = Fixture::new();
    let a = f.add("a", &[1, 2]);
    let b = f.add("b", &[3, 4]);
    let t = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let e = f.repo.tag("a", &t(&["a:1", "prod", "a:1"])).unwrap();
    assert_eq!(e.tags, ["a", "a:1", "prod"]);
    for name in ["a", "a:1", "prod"] {
        assert_eq!(f.repo.resolve(name).unwrap().digest, a.digest);
    }
    // A tag moves: one image only carries it, and the loser's meta.json says so too.
    assert_eq!(f.repo.tag(&b.digest[..8], &t(&["prod"])).unwrap().tags, ["b", "prod"]);
    assert_eq!(f.repo.resolve("prod").unwrap().digest, b.digest);
    assert_eq!(f.repo.resolve("a").unwrap().tags, ["a", "a:1"]);
    let meta = std::fs::read_to_string(a.path.with_file_name(META_FILE)).unwrap();
    assert!(meta.contains("\"tags\": [\"a\", \"a:1\"]") && meta.contains("\"name\": \"a\""), "{meta}");
    // Untag: the image stays, by digest and its other tags; the last tag too.
    assert_eq!(f.repo.untag("a").unwrap().tags, ["a:1"]);
    assert_eq!(f.repo.resolve("a").unwrap_err().code, Code::NotFound);
    assert!(f.repo.untag("a:1").unwrap().tags.is_empty());
    assert_eq!(f.repo.resolve(&a.digest).unwrap().digest, a.digest);
    assert_eq!(f.repo.untag("a:1").unwrap_err().code, Code::NotFound);
    assert_eq!(f.repo.tag("b", &t(&[" x"])).unwrap_err().code, Code::InvalidArgument);
    // The catalog on disk is version 2 and another handle sees the same tags.
    let bytes = std::fs::read(f.root().join(CATALOG_FILE)).unwrap();
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 2);
    assert_eq!(reopen(&f).unwrap().resolve("b").unwrap().tags, ["b", "prod"]);
}

/// A repository whose catalog an osfarm before tags wrote (version 1: one optional name
/// per image) opens, resolves its names, and is written as version 2 by the next commit.
#[test]
fn a_version_one_catalog_opens_and_the_next_commit_upgrades_it() {
    let f = Fixture::new();
    let a = f.add("app", &[1, 2]);
    f.add("other", &[3]);
    let path = f.root().join(CATALOG_FILE);
    let v2 = catalog::Catalog::decode(&std::fs::read(&path).unwrap(), 20, &path).unwrap();
    // The same catalog in version 1's layout.
    let mut b = Vec::new();
    b.extend_from_slice(&catalog::CATALOG_MAGIC);
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    for v in [v2.table.generation, v2.table.capacity, v2.table.used, v2.table.checksum] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&(v2.images.len() as u32).to_le_bytes());
    for e in &v2.images {
        b.extend_from_slice(&e.slot.to_le_bytes());
        b.push(e.digest.len() as u8);
        b.extend_from_slice(&e.digest);
        b.extend_from_slice(&e.image_len.to_le_bytes());
        b.extend_from_slice(&e.added_ms.to_le_bytes());
        for s in
            [e.tags.first().map(String::as_str), e.original_name.as_deref(), Some(&e.format), e.meta_json.as_deref()]
        {
            match s {
                None => b.extend_from_slice(&u32::MAX.to_le_bytes()),
                Some(s) => {
                    b.extend_from_slice(&(s.len() as u32).to_le_bytes());
                    b.extend_from_slice(s.as_bytes());
                }
            }
        }
    }
    let sum = checksum::checksum64(&b);
    b.extend_from_slice(&sum.to_le_bytes());
    std::fs::write(&path, &b).unwrap();

    let r = reopen(&f).unwrap();
    assert_eq!(r.resolve("app").unwrap().digest, a.digest);
    assert_eq!(r.list().unwrap().iter().map(|e| e.tags.clone()).collect::<Vec<_>>(), [["app"], ["other"]]);
    assert_eq!(
        u32::from_le_bytes(std::fs::read(&path).unwrap()[8..12].try_into().unwrap()),
        1,
        "reading rewrites nothing"
    );
    r.tag("app", &["app:2".to_string()]).unwrap();
    assert_eq!(u32::from_le_bytes(std::fs::read(&path).unwrap()[8..12].try_into().unwrap()), 2);
    assert_eq!(reopen(&f).unwrap().resolve("app:2").unwrap().tags, ["app", "app:2"]);
}

#[test]
fn ambiguous_prefixes() {
    let f = Fixture::new();
    // Add images until two digests share a first hex digit... 4 digits are needed, so
    // look for a shared 4-digit prefix among enough images, or check the error path directly.
    let mut entries = Vec::new();
    for s in 1..=40u32 {
        entries.push(f.add(&format!("i{s}"), &[s]));
    }
    let st = f.repo.lock(LockKind::Shared).unwrap();
    let state = f.repo.state(&st).unwrap();
    drop(st);
    // Craft a catalog with two digests sharing a prefix to exercise the rule.
    let mut cat = state.catalog.clone();
    let head = cat.images[0].digest[..3].to_vec();
    cat.images[1].digest[..3].copy_from_slice(&head);
    let p = hex::encode(&cat.images[0].digest[..3]);
    assert_eq!(resolve_in(&cat, &p).unwrap_err().code, Code::Ambiguous);
    assert_eq!(resolve_in(&cat, &cat.images[0].digest_hex()).unwrap().slot, cat.images[0].slot);
}

#[test]
fn remove_repoints_shared_blocks_to_another_holder() {
    let f = Fixture::new();
    let a = f.add("a", &[1, 2, 3, 4]);
    let b = f.add("b", &[5, 3, 2, 6]);
    let c = f.add("c", &[7, 4, 8]);
    // Blocks 2, 3 are located in A (added first); 4 too.
    f.repo.remove(&a.digest).unwrap();
    let st = f.repo.stats().unwrap();
    assert_eq!(st.distinct_blocks, 7, "1 went away; 2,3,4 stay");
    // Everything B and C hold is found, located in B or C, and copies verify.
    let plan = reopen(&f).unwrap().plan(&idx(&[2, 3, 4, 1])).unwrap();
    assert_eq!(plan.summary.present_blocks, 3);
    assert_eq!(plan.summary.missing_blocks, 1);
    for s in &plan.sources[..3] {
        match s {
            BlockSource::Present { image, .. } => {
                assert!([&b.digest, &c.digest].contains(&&plan.images[*image as usize]))
            }
            other => panic!("{other:?}"),
        }
    }
    let p = f.file("want.img", &image(&[2, 3, 4, 1]));
    let e = f.repo.assemble_from_file(idx(&[2, 3, 4, 1]), &p, &AddOptions::default(), &Silent).unwrap();
    assert_eq!(std::fs::read(&e.path).unwrap(), image(&[2, 3, 4, 1]));
    // Removing the rest empties the table.
    for r in [&b.digest, &c.digest, &e.digest] {
        f.repo.remove(r).unwrap();
    }
    assert_eq!(f.repo.stats().unwrap().distinct_blocks, 0);
    assert_eq!(std::fs::read_dir(f.root().join(IMAGES_DIR)).unwrap().count(), 0);
}

#[test]
fn plan_classifies_every_block_and_coalesces_runs() {
    let f = Fixture::new();
    f.add("base", &[1, 2, 3, 4, 5]);
    //          0  1  2   3  4  5   6  7  8  9  10 11
    let want = [1, 2, 10, 0, 11, 10, 3, 12, 13, 0, 11, 14];
    let plan = f.repo.plan(&idx(&want)).unwrap();
    use BlockSource::*;
    let expect = [
        Present { image: 0, block: 0 },
        Present { image: 0, block: 1 },
        Missing,
        Zero,
        Missing,
        Duplicate { of: 2 },
        Present { image: 0, block: 2 },
        Missing,
        Missing,
        Zero,
        Duplicate { of: 4 },
        Missing,
    ];
    assert_eq!(plan.sources, expect);
    let s = plan.summary;
    assert_eq!((s.present_blocks, s.zero_blocks, s.duplicate_blocks, s.missing_blocks), (3, 2, 2, 5));
    assert_eq!(s.missing_bytes, 5 * BS as u64);
    assert_eq!(
        plan.missing_runs,
        vec![
            Run { first: 2, count: 1 },
            Run { first: 4, count: 1 },
            Run { first: 7, count: 2 },
            Run { first: 11, count: 1 }
        ]
    );
    assert!(!plan.already_present);
    assert!(f.repo.plan(&idx(&[1, 2, 3, 4, 5])).unwrap().already_present);
    // A short last block.
    let mut data = image(&[1, 20]);
    data.truncate(BS + 100);
    let short = index_bytes(&data, IndexOptions::default()).unwrap();
    let p = f.repo.plan(&short).unwrap();
    assert_eq!(p.summary.missing_bytes, 100);
    // Parameters must match.
    let other = index_bytes(&image(&[1]), IndexOptions { alg: HashAlg::Sha256, block_size: 4096 }).unwrap();
    assert_eq!(f.repo.plan(&other).unwrap_err().code, Code::Mismatch);
    let other = index_bytes(&image(&[1]), IndexOptions { alg: HashAlg::Sha1, block_size: 8192 }).unwrap();
    let e = f.repo.plan(&other).unwrap_err();
    assert_eq!(e.code, Code::Mismatch);
    assert!(e.message.contains("block"), "{}", e.message);
}

#[test]
fn assembler_streams_blocks_and_publishes() {
    let f = Fixture::new();
    f.add("base", &[1, 2, 3]);
    let want = [3, 9, 0, 9, 1, 8, 2];
    let asm = f.repo.begin_assembly(idx(&want), AssemblyOptions::default()).unwrap();
    let filled = asm.fill_from_repository(&Silent).unwrap();
    assert_eq!(filled.blocks, 3);
    // 9 appears twice: only its first occurrence is asked for.
    assert_eq!(asm.missing(), vec![Run { first: 1, count: 1 }, Run { first: 5, count: 1 }]);
    assert_eq!(asm.finish(&AddOptions::default()).unwrap_err().code, Code::InvalidArgument);
    assert!(asm.put_block(1, &block(9)).unwrap());
    assert!(!asm.put_block(3, &block(9)).unwrap(), "the duplicate was written with its first occurrence");
    assert_eq!(asm.missing(), vec![Run { first: 5, count: 1 }]);
    asm.put_block(5, &block(8)).unwrap();
    assert!(asm.missing().is_empty());
    let e = asm.finish(&AddOptions { tags: vec!["new".into()], ..Default::default() }).unwrap();
    assert_eq!(e.digest, idx(&want).image_digest_hex());
    assert_eq!(std::fs::read(&e.path).unwrap(), image(&want));
    reopen(&f).unwrap().verify("new", &Silent).unwrap();
    // No temporary left behind.
    assert_eq!(std::fs::read_dir(f.root().join(TMP_DIR)).unwrap().count(), 0);
    // Assembling something already present is immediate.
    let again = f.repo.begin_assembly(idx(&want), AssemblyOptions::default()).unwrap();
    assert!(again.is_complete_image() && again.missing().is_empty());
    assert_eq!(again.finish(&AddOptions::default()).unwrap().digest, e.digest);
}

#[test]
fn a_wrong_block_is_refused_and_nothing_is_published() {
    let f = Fixture::new();
    f.add("base", &[1, 2]);
    let want = [1, 5, 6];
    let asm = f.repo.begin_assembly(idx(&want), AssemblyOptions::default()).unwrap();
    asm.fill_from_repository(&Silent).unwrap();
    let e = asm.put_block(1, &block(7)).unwrap_err();
    assert_eq!(e.code, Code::DigestMismatch);
    let mut short = block(5);
    short.pop();
    assert_eq!(asm.put_block(1, &short).unwrap_err().code, Code::DigestMismatch);
    // A run with one bad block writes none of it.
    let run = [block(5), block(7)].concat();
    assert_eq!(asm.put_blocks(1, &run).unwrap_err().code, Code::DigestMismatch);
    assert_eq!(asm.missing(), vec![Run { first: 1, count: 2 }]);
    assert_eq!(asm.finish(&AddOptions::default()).unwrap_err().code, Code::InvalidArgument);
    drop(asm);
    assert_eq!(f.repo.list().unwrap().len(), 1);
    assert_eq!(std::fs::read_dir(f.root().join(TMP_DIR)).unwrap().count(), 0, "dropped assembly cleaned up");
    // The file-based path: a source file whose content differs from the index.
    let src = f.file("liar.img", &image(&[1, 5, 7]));
    let e = f.repo.assemble_from_file(idx(&want), &src, &AddOptions::default(), &Silent).unwrap_err();
    assert_eq!(e.code, Code::DigestMismatch);
    assert_eq!(f.repo.list().unwrap().len(), 1);
    assert_eq!(std::fs::read_dir(f.root().join(IMAGES_DIR)).unwrap().count(), 1);
}

#[test]
fn a_rotten_local_image_fails_the_assembly() {
    let f = Fixture::new();
    let base = f.add("base", &[1, 2, 3]);
    // Disk rot: flip a byte of block 1 of the stored image.
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().write(true).open(&base.path).unwrap();
        file.write_all_at(&[0xAA], BS as u64 + 17).unwrap();
    }
    let want = [2, 4];
    let src = f.file("want.img", &image(&want));
    let e = f.repo.assemble_from_file(idx(&want), &src, &AddOptions::default(), &Silent).unwrap_err();
    // The repository is damaged, not the source: another code than a wrong supplied block.
    assert_eq!(e.code, Code::BadRepository);
    assert!(e.message.contains(&base.digest), "{}", e.message);
    assert_eq!(f.repo.list().unwrap().len(), 1);
    assert_eq!(f.repo.verify("base", &Silent).unwrap_err().code, Code::DigestMismatch);
}

#[test]
fn damaged_table_or_catalog_is_refused_and_rebuild_recovers() {
    let f = Fixture::new();
    f.add("a", &[1, 2, 3, 0]);
    f.add("b", &[3, 4, 5]);
    let want = idx(&[2, 5, 6]);
    let good_plan = f.repo.plan(&want).unwrap();
    let table = std::fs::read_dir(f.root())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "osft"))
        .unwrap();
    let table_bytes = std::fs::read(&table).unwrap();
    let catalog = f.root().join(CATALOG_FILE);
    let catalog_bytes = std::fs::read(&catalog).unwrap();
    let expect_bad = |what: &str| {
        let e = reopen(&f).err().unwrap_or_else(|| panic!("{what}: opened"));
        assert_eq!(e.code, Code::BadRepository, "{what}: {e}");
        assert!(e.message.contains("rebuild"), "{what}: {}", e.message);
    };
    // Truncated table, flipped table bit, missing table.
    std::fs::write(&table, &table_bytes[..table_bytes.len() - 7]).unwrap();
    expect_bad("truncated table");
    let mut x = table_bytes.clone();
    x[table::TABLE_HEADER_LEN + 40] ^= 1;
    std::fs::write(&table, &x).unwrap();
    expect_bad("flipped table");
    std::fs::remove_file(&table).unwrap();
    expect_bad("missing table");
    // Rebuild from the indexes.
    let r = Repository::open_for_repair(f.root()).unwrap();
    let report = r.rebuild_table(&Silent).unwrap();
    assert_eq!((report.images, report.distinct_blocks, report.recovered_catalog), (2, 5, false));
    assert_eq!(reopen(&f).unwrap().plan(&want).unwrap().summary, good_plan.summary);
    // Truncated and corrupted catalogs.
    let catalog_bytes2 = std::fs::read(&catalog).unwrap();
    std::fs::write(&catalog, &catalog_bytes2[..catalog_bytes2.len() / 2]).unwrap();
    expect_bad("truncated catalog");
    let mut x = catalog_bytes2.clone();
    x[60] ^= 0x40;
    std::fs::write(&catalog, &x).unwrap();
    expect_bad("flipped catalog");
    // The old catalog names a table generation that no longer exists.
    std::fs::write(&catalog, &catalog_bytes).unwrap();
    expect_bad("stale catalog");
    std::fs::remove_file(&catalog).unwrap();
    expect_bad("missing catalog");
    // Rebuild recovers the catalog from the image directories, names included.
    let report = Repository::open_for_repair(f.root()).unwrap().rebuild_table(&Silent).unwrap();
    assert!(report.recovered_catalog);
    assert_eq!(report.images, 2);
    let r = reopen(&f).unwrap();
    assert_eq!(r.list().unwrap().iter().flat_map(|e| e.tags.clone()).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(r.plan(&want).unwrap().summary, good_plan.summary);
    // An image whose index is damaged is dropped by rebuild, the rest is kept.
    let b = r.resolve("b").unwrap();
    std::fs::write(&b.index_path, b"garbage").unwrap();
    let report = r.rebuild_table(&Silent).unwrap();
    assert_eq!(report.images, 1);
    assert_eq!(report.dropped.len(), 1);
    assert!(report.dropped[0].starts_with(&b.digest));
}

#[test]
fn crash_leftovers_are_harmless_and_swept() {
    let f = Fixture::new();
    let a = f.add("a", &[1, 2]);
    // A crash after the image directory was renamed in but before the catalog commit.
    let orphan = f.root().join(IMAGES_DIR).join(idx(&[7]).image_digest_hex());
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join(IMAGE_FILE), image(&[7])).unwrap();
    // A crash mid-copy (dead owner), and one mid table write.
    let dead = f.root().join(TMP_DIR).join("add-1-2-3.d");
    std::fs::create_dir_all(&dead).unwrap();
    std::fs::write(dead.join(IMAGE_FILE), b"half").unwrap();
    std::fs::write(dead.join(OWNER_FILE), b"").unwrap();
    std::fs::write(f.root().join(".catalog.osfc.tmp-1-1"), b"x").unwrap();
    std::fs::write(f.root().join(table_file_name(999)), b"x").unwrap();
    // A live workspace of this process must survive the sweep.
    let live = f.repo.workspace("add").unwrap();
    let r = reopen(&f).unwrap();
    assert_eq!(r.list().unwrap().len(), 1, "orphans are not listed");
    assert!(r.plan(&idx(&[7])).unwrap().summary.missing_blocks == 1);
    // The next write sweeps.
    let b = f.add("b", &[2, 3]);
    assert!(!orphan.exists());
    assert!(!dead.exists());
    assert!(live.dir.exists());
    assert!(!f.root().join(".catalog.osfc.tmp-1-1").exists());
    assert!(!f.root().join(table_file_name(999)).exists());
    drop(live);
    // Adding the orphan's content for real works even though a stale directory was there.
    let mut names: Vec<_> = r.list().unwrap().into_iter().map(|e| e.digest).collect();
    names.sort();
    let mut want = vec![a.digest, b.digest];
    want.sort();
    assert_eq!(names, want);
}

#[test]
fn resumable_assembly_continues_after_a_drop() {
    let f = Fixture::new();
    f.add("base", &[1]);
    let want = [1, 2, 3, 4, 0, 5];
    let opts = AssemblyOptions { resumable: true, expected_digest: Some(idx(&want).image_digest_hex()) };
    {
        let asm = f.repo.begin_assembly(idx(&want), opts.clone()).unwrap();
        asm.fill_from_repository(&Silent).unwrap();
        asm.put_block(2, &block(3)).unwrap();
        // A second assembler of the same image is refused while this one lives.
        assert_eq!(f.repo.begin_assembly(idx(&want), opts.clone()).err().unwrap().code, Code::Locked);
    } // dropped: bitmap flushed, partial kept
    let asm = f.repo.begin_assembly(idx(&want), opts.clone()).unwrap();
    assert_eq!(asm.have_blocks(), 3, "block 0, block 2 and the zero block survive");
    assert_eq!(asm.missing(), vec![Run { first: 1, count: 1 }, Run { first: 3, count: 1 }, Run { first: 5, count: 1 }]);
    drop(asm);
    // Damage the partial: the resumed bitmap is re-verified, so block 2 is asked for again.
    {
        use std::os::unix::fs::FileExt;
        let p = f.root().join(TMP_DIR).join(format!("{}.partial", idx(&want).image_digest_hex()));
        std::fs::OpenOptions::new().write(true).open(p).unwrap().write_all_at(b"rot", 2 * BS as u64).unwrap();
    }
    let asm = f.repo.begin_assembly(idx(&want), opts.clone()).unwrap();
    assert_eq!(asm.missing(), vec![Run { first: 1, count: 3 }, Run { first: 5, count: 1 }]);
    asm.put_blocks(1, &image(&[2, 3, 4])).unwrap();
    asm.put_block(5, &block(5)).unwrap();
    let e = asm.finish(&AddOptions::default()).unwrap();
    assert_eq!(std::fs::read(&e.path).unwrap(), image(&want));
    assert_eq!(std::fs::read_dir(f.root().join(TMP_DIR)).unwrap().count(), 0);
    // The expected digest is enforced.
    let wrong = AssemblyOptions { resumable: false, expected_digest: Some("00".repeat(20)) };
    assert_eq!(f.repo.begin_assembly(idx(&[9]), wrong).err().unwrap().code, Code::DigestMismatch);
}

#[test]
fn concurrent_adds_from_threads_are_serialised() {
    let f = Fixture::new();
    let paths: Vec<PathBuf> =
        (0..6u32).map(|k| f.file(&format!("t{k}.img"), &image(&[k + 1, 100, k + 50, 0]))).collect();
    std::thread::scope(|s| {
        for p in &paths {
            let repo = Repository::open(f.root()).unwrap();
            s.spawn(move || repo.add(p, &AddOptions::default(), &Silent).unwrap());
        }
    });
    let r = reopen(&f).unwrap();
    assert_eq!(r.list().unwrap().len(), 6);
    assert_eq!(r.stats().unwrap().distinct_blocks, 13);
    for e in r.list().unwrap() {
        r.verify(&e.digest, &Silent).unwrap();
    }
    // Non-blocking mode reports Locked while another handle writes.
    let lock = r.lock(LockKind::Exclusive).unwrap();
    let other = Repository::open_for_repair(f.root()).unwrap();
    other.set_wait_for_lock(false);
    assert_eq!(other.list().unwrap_err().code, Code::Locked);
    drop(lock);
    assert_eq!(other.list().unwrap().len(), 6);
}
