import test, { type ExecutionContext } from 'ava';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync, appendFileSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';

import { Repository, type ImageEntry } from '../src/repo/index.js';
import { indexImageSync } from '../src/blocks/index.js';
import { OsfarmError } from '../src/base/errors.js';
import { pseudoRandom, tempDir, writeBlocks } from './helpers/tmp.js';

const CHILD = join(import.meta.dirname, 'helpers', 'repo-child.ts');
const BS = 4096;

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return (err as OsfarmError).code;
  }
  return undefined;
}

function block(seed: number): Buffer {
  return seed === 0 ? Buffer.alloc(BS) : pseudoRandom(BS, seed * 7919);
}

test('init, add, list, resolve, name, remove and stats through the TypeScript API', async (t) => {
  const dir = tempDir(t);
  const repo = Repository.init(join(dir, 'repo'));
  t.is(repo.hash, 'sha1');
  t.is(repo.blockSize, 4096);
  writeBlocks(join(dir, 'a.img'), [1, 2, 0, 3]);
  writeBlocks(join(dir, 'b.img'), [2, 3, 4]);
  const events: number[] = [];
  const a = await repo.add(join(dir, 'a.img'), {
    name: 'alpha',
    meta: { spec: { suite: 'bookworm' }, n: 1 },
    onProgress: (e) => events.push(e.done),
  });
  t.is(events.at(-1), 4 * BS);
  t.regex(a.digest, /^[0-9a-f]{40}$/);
  t.is(a.digest, indexImageSync(join(dir, 'a.img')).digest, 'the digest is the index digest');
  t.is(a.name, 'alpha');
  t.is(a.originalName, 'a.img');
  t.is(a.format, 'raw');
  t.is(a.size, 4 * BS);
  t.is(a.blockCount, 4);
  t.true(a.added instanceof Date);
  t.deepEqual(a.meta, { spec: { suite: 'bookworm' }, n: 1 });
  t.deepEqual(readFileSync(a.path), readFileSync(join(dir, 'a.img')));
  const b = repo.addSync(join(dir, 'b.img'));
  t.is(b.name, undefined);

  const again = Repository.open(join(dir, 'repo'));
  t.deepEqual(
    again.list().map((e) => e.digest),
    [a.digest, b.digest],
  );
  t.deepEqual(again.resolve('alpha'), a);
  t.is(again.resolve(a.digest.slice(0, 5)).digest, a.digest);
  const s = again.stats();
  t.like(s, { hash: 'sha1', blockSize: 4096, images: 2, totalBytes: 7 * BS, distinctBlocks: 4 });
  t.true(s.tableMemoryBytes > 0 && s.tableFileBytes > s.tableMemoryBytes);

  // Adding the same content again changes nothing but can add a tag; tags move.
  const renamed = await repo.add(join(dir, 'b.img'), { name: 'alpha' });
  t.is(renamed.digest, b.digest);
  t.is(repo.resolve('alpha').digest, b.digest);
  t.deepEqual(repo.resolve(a.digest).tags, []);
  t.is(repo.resolve(a.digest).name, undefined);
  t.like(repo.tag(a.digest, 'first', 'a:1'), { name: 'first', tags: ['first', 'a:1'] });
  t.like(repo.untag('a:1'), { digest: a.digest, tags: ['first'] });

  const removed = await repo.remove('first');
  t.is(removed.digest, a.digest);
  t.false(existsSync(removed.path));
  t.deepEqual(
    repo.list().map((e) => e.digest),
    [b.digest],
  );
  t.is(repo.stats().distinctBlocks, 3);
  await repo.verify(b.digest);
});

test('plan classifies blocks and accepts an index path, an image path or index bytes', async (t) => {
  const dir = tempDir(t);
  const repo = Repository.init(join(dir, 'repo'));
  writeBlocks(join(dir, 'base.img'), [1, 2, 3, 4, 5]);
  const base = await repo.add(join(dir, 'base.img'));
  writeBlocks(join(dir, 'want.img'), [1, 2, 10, 0, 11, 10, 3, 12, 13, 0, 11, 14]);
  const info = indexImageSync(join(dir, 'want.img'), { output: join(dir, 'want.osfi') });

  const p = await repo.plan(join(dir, 'want.osfi'));
  t.is(p.digest, info.digest);
  t.like(p, {
    blockCount: 12,
    alreadyPresent: false,
    presentBlocks: 3,
    zeroBlocks: 2,
    duplicateBlocks: 2,
    missingBlocks: 5,
    missingBytes: 5 * BS,
  });
  t.deepEqual(p.missingRuns, [
    { first: 2, count: 1 },
    { first: 4, count: 1 },
    { first: 7, count: 2 },
    { first: 11, count: 1 },
  ]);
  t.deepEqual(p.sources, [{ digest: base.digest, blocks: 3 }]);
  t.deepEqual(await repo.plan({ image: join(dir, 'want.img') }), p);
  t.deepEqual(repo.planSync(readFileSync(join(dir, 'want.osfi'))), p);
  t.true(repo.planSync(join(dir, 'base.img')).alreadyPresent);

  // An index with other parameters is refused with a clear code.
  indexImageSync(join(dir, 'want.img'), { output: join(dir, 'sha256.osfi'), hash: 'sha256' });
  const err = await t.throwsAsync(repo.plan(join(dir, 'sha256.osfi')), { instanceOf: OsfarmError });
  t.is(err?.code, 'OSFARM_MISMATCH');
  t.is(codeOf(() => repo.planSync(Buffer.from('not an index at all, too short'))), 'OSFARM_BAD_INDEX');
});

/**
 * A repository holding base.img (blocks 1, 2, 3), and want.img with its index want.osfi:
 * blocks 3, 9, 0, 9, 1, 8, 2 (three held, a zero, a repeat, two new).
 */
async function baseAndWanted(t: ExecutionContext): Promise<{ dir: string; repo: Repository }> {
  const dir = tempDir(t);
  const repo = Repository.init(join(dir, 'repo'));
  writeBlocks(join(dir, 'base.img'), [1, 2, 3]);
  await repo.add(join(dir, 'base.img'));
  writeBlocks(join(dir, 'want.img'), [3, 9, 0, 9, 1, 8, 2]);
  indexImageSync(join(dir, 'want.img'), { output: join(dir, 'want.osfi') });
  return { dir, repo };
}

test('assemble builds an image from local blocks plus a source file, verifying every block', async (t) => {
  const { dir, repo } = await baseAndWanted(t);

  // A source whose bytes differ from what the index says: refused, nothing published.
  writeBlocks(join(dir, 'liar.img'), [3, 9, 0, 9, 1, 7, 2]);
  const bad = await t.throwsAsync(repo.assemble(join(dir, 'want.osfi'), { from: join(dir, 'liar.img') }));
  t.is((bad as OsfarmError).code, 'OSFARM_DIGEST_MISMATCH');
  t.is(repo.list().length, 1);
  t.deepEqual(readdirSync(join(dir, 'repo', 'tmp')), []);

  const e = await repo.assemble(join(dir, 'want.osfi'), { from: join(dir, 'want.img'), name: 'want', meta: [1] });
  t.is(e.name, 'want');
  t.deepEqual(e.meta, [1]);
  t.deepEqual(readFileSync(e.path), readFileSync(join(dir, 'want.img')));
  await repo.verify('want');
});

test('the streaming Assembler: fill, missing, putBlock (verified), finish, abort', async (t) => {
  const { dir, repo } = await baseAndWanted(t);
  const indexBytes = readFileSync(join(dir, 'want.osfi'));

  const asm = repo.beginAssembly(indexBytes);
  t.is(asm.blockCount, 7);
  t.false(asm.alreadyPresent);
  const filled = await asm.fillFromRepository();
  t.deepEqual(filled, { blocks: 3, bytes: 3 * BS });
  t.deepEqual(asm.missing(), [
    { first: 1, count: 1 },
    { first: 5, count: 1 },
  ]);
  t.is(codeOf(() => asm.putBlock(1, block(8))), 'OSFARM_DIGEST_MISMATCH');
  t.is(codeOf(() => asm.putBlock(99, block(8))), 'OSFARM_INVALID_ARGUMENT');
  const early = await t.throwsAsync(asm.finish());
  t.is((early as OsfarmError).code, 'OSFARM_INVALID_ARGUMENT');
  t.true(asm.putBlock(1, block(9)));
  t.is(asm.putBlocks(5, block(8)), 1);
  t.deepEqual(asm.missing(), []);
  t.is(asm.haveBlocks, 7);
  const e = await asm.finish({ name: 'streamed' });
  t.deepEqual(readFileSync(e.path), readFileSync(join(dir, 'want.img')));

  // Already present: nothing to do.
  const again = repo.beginAssembly(join(dir, 'want.osfi'));
  t.true(again.alreadyPresent);
  t.is((await again.finish()).digest, e.digest);

  // Release keeps a resumable partial and unlocks it at once: a new assembly continues it.
  writeBlocks(join(dir, 'other.img'), [5, 6]);
  const first = repo.beginAssembly({ image: join(dir, 'other.img') }, { resumable: true });
  first.putBlock(0, block(5));
  t.is(codeOf(() => repo.beginAssembly({ image: join(dir, 'other.img') }, { resumable: true })), 'OSFARM_LOCKED');
  first.release();
  first.release();
  t.is(codeOf(() => first.putBlock(1, block(6))), 'OSFARM_INVALID_ARGUMENT');
  const other = repo.beginAssembly({ image: join(dir, 'other.img') }, { resumable: true });
  t.is(other.haveBlocks, 1);
  t.deepEqual(other.missing(), [{ first: 1, count: 1 }]);

  // Abort discards the partial data.
  t.is(repo.stats().partialAssemblies, 1);
  other.abort();
  t.is(repo.stats().partialAssemblies, 0);
  t.is(codeOf(() => repo.beginAssembly(join(dir, 'other.img'), { expectedDigest: e.digest })), 'OSFARM_DIGEST_MISMATCH');
});

test('errors carry stable codes', (t) => {
  const dir = tempDir(t);
  let err = t.throws(() => Repository.open(dir), { instanceOf: OsfarmError });
  t.is(err?.code, 'OSFARM_BAD_REPOSITORY');
  t.regex(err!.message, /osfarm repo init/);
  t.is(codeOf(() => Repository.open(join(dir, 'missing'))), 'OSFARM_BAD_REPOSITORY');
  const repo = Repository.init(join(dir, 'repo'));
  t.is(codeOf(() => Repository.init(join(dir, 'repo'))), 'OSFARM_INVALID_ARGUMENT');
  t.is(codeOf(() => Repository.init(join(dir, 'bad'), { blockSize: 1000 })), 'OSFARM_INVALID_ARGUMENT');
  t.is(codeOf(() => repo.resolve('nothing-here')), 'OSFARM_NOT_FOUND');
  t.is(codeOf(() => repo.removeSync('abcd')), 'OSFARM_NOT_FOUND');
  t.is(codeOf(() => repo.addSync(join(dir, 'nope.img'))), 'OSFARM_NOT_FOUND');
  writeBlocks(join(dir, 'x.img'), [1]);
  t.is(codeOf(() => repo.addSync(join(dir, 'x.img'), { name: ' padded ' })), 'OSFARM_INVALID_ARGUMENT');
  // A damaged format file, an unknown version.
  const fmt = join(dir, 'repo', 'osfarm-repo.json');
  const text = readFileSync(fmt, 'utf8');
  writeFileSync(fmt, text.replace('"version": 1', '"version": 2'));
  err = t.throws(() => Repository.open(join(dir, 'repo')), { instanceOf: OsfarmError });
  t.is(err?.code, 'OSFARM_BAD_REPOSITORY');
  t.regex(err!.message, /version 2/);
  writeFileSync(fmt, text);
  t.truthy(Repository.open(join(dir, 'repo')));
});

test('openOrInit creates a repository once, then opens it; a damaged one still throws', (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'repo');
  mkdirSync(join(path, 'stages'), { recursive: true }); // a stage store made first
  const made = Repository.openOrInit(path, { blockSize: 8192 });
  t.is(made.blockSize, 8192);
  t.is(Repository.openOrInit(path).blockSize, 8192, 'opened, not made again with the defaults');
  writeFileSync(join(path, 'osfarm-repo.json'), 'not json');
  t.is(codeOf(() => Repository.openOrInit(path)), 'OSFARM_BAD_REPOSITORY');
  t.is(codeOf(() => Repository.openOrInit(dir)), 'OSFARM_INVALID_ARGUMENT', 'a directory holding other things is not taken over');
});

test('a damaged table or catalog is refused with a hint, and rebuild recovers it', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'repo');
  const repo = Repository.init(path);
  writeBlocks(join(dir, 'a.img'), [1, 2, 3, 0]);
  writeBlocks(join(dir, 'b.img'), [3, 4, 5]);
  await repo.add(join(dir, 'a.img'), { name: 'a' });
  await repo.add(join(dir, 'b.img'), { name: 'b' });
  const table = readdirSync(path).find((n) => n.endsWith('.osft'))!;
  const good = repo.planSync(join(dir, 'a.img'));

  appendFileSync(join(path, table), 'junk');
  let err = t.throws(() => Repository.open(path), { instanceOf: OsfarmError });
  t.is(err?.code, 'OSFARM_BAD_REPOSITORY');
  t.regex(err!.message, /rebuild/);
  const report = await Repository.openForRepair(path).rebuild();
  t.like(report, { images: 2, distinctBlocks: 5, recoveredCatalog: false, dropped: [] });
  t.deepEqual(Repository.open(path).planSync(join(dir, 'a.img')), good);

  const catalog = join(path, 'catalog.osfc');
  truncateSync(catalog, 30);
  err = t.throws(() => Repository.open(path), { instanceOf: OsfarmError });
  t.is(err?.code, 'OSFARM_BAD_REPOSITORY');
  const recovered = Repository.openForRepair(path).rebuildSync();
  t.true(recovered.recoveredCatalog);
  t.deepEqual(
    Repository.open(path)
      .list()
      .map((e) => e.name),
    ['a', 'b'],
  );
});

interface ChildRun {
  /** The child printed "done": its add committed before it died or exited. */
  done: boolean;
  /** It died of SIGKILL. */
  killed: boolean;
  code: number | null;
  stderr: string;
}

/** Runs the child helper (see helpers/repo-child.ts) and reports how it ended. */
function runChild(args: string[], env: NodeJS.ProcessEnv = {}): Promise<ChildRun> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', CHILD, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...env },
    });
    const run: ChildRun = { done: false, killed: false, code: null, stderr: '' };
    child.stderr.on('data', (d) => (run.stderr += String(d)));
    createInterface({ input: child.stdout }).on('line', (line) => {
      if (line.startsWith('done ')) run.done = true;
    });
    child.on('close', (code, signal) => {
      run.code = code;
      run.killed = signal === 'SIGKILL';
      resolve(run);
    });
  });
}

async function checkConsistent(t: ExecutionContext, path: string, expectAtLeast: string[]): Promise<ImageEntry[]> {
  const repo = Repository.open(path);
  const list = repo.list();
  for (const d of expectAtLeast) t.true(list.some((e) => e.digest === d), `image ${d} listed`);
  for (const e of list) {
    await repo.verify(e.digest); // every listed image is complete and matches its index
    t.deepEqual(repo.planSync(e.indexPath).missingBlocks, 0);
  }
  const s = repo.stats();
  t.is(s.images, list.length);
  return list;
}

test('a repository survives a process killed at several moments of an add', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'repo');
  Repository.init(path);
  const size = 64 << 20;
  const shared = pseudoRandom(16 << 20, 1);
  const image = (k: number): string => {
    const data = pseudoRandom(size, 100 + k);
    data.fill(0, 8 << 20, 12 << 20); // a sparse stretch
    data.set(shared, 32 << 20); // blocks every image shares
    const p = join(dir, `big${k}.img`);
    writeFileSync(p, data);
    return p;
  };
  // How the child dies: at a progress fraction (+ a delay), or at a named commit step
  // ($OSFARM_CRASH_AT); and whether its image must be listed afterwards.
  type Moment = { what: string; at?: number; delay?: number; crashAt?: string; listed: boolean | 'either' };
  const moments: Moment[] = [
    { what: 'at the start of the copy', crashAt: 'add:copy-started', listed: false },
    { what: 'half way through the copy', crashAt: 'add:copy-half', listed: false },
    { what: 'near the end of the copy', at: 0.9, listed: 'either' },
    { what: 'just after the copy', at: 0.9, delay: 20, listed: 'either' },
    { what: 'after the image directory was placed', crashAt: 'add:placed', listed: false },
    { what: 'after the new table was written', crashAt: 'commit:table-written', listed: false },
    { what: 'right after the catalog commit', crashAt: 'commit:catalog-written', listed: true },
  ];
  const images: string[] = [];
  const committed: string[] = [];
  for (const [i, m] of moments.entries()) {
    images.push(image(i));
    const args = ['add', path, images[i]!, `big${i}`];
    if (m.at !== undefined) args.push(String(m.at), String(m.delay ?? 0));
    const run = await runChild(args, m.crashAt ? { OSFARM_CRASH_AT: m.crashAt } : {});
    t.true(run.killed || (m.listed === 'either' && run.code === 0), `${m.what}: ${JSON.stringify(run)}`);
    t.log(`${m.what}: ${run.done ? 'finished before the kill' : 'killed'}`);
    const list = await checkConsistent(t, path, committed);
    const isListed = list.length === committed.length + 1;
    t.true(list.length <= committed.length + 1, m.what);
    if (m.listed !== 'either') t.is(isListed, m.listed, `${m.what}: listed`);
    if (run.done) t.true(isListed, `${m.what}: a finished add is listed`);
    for (const e of list) if (!committed.includes(e.digest)) committed.push(e.digest);
    if (m.crashAt === 'add:placed') {
      // The complete but uncommitted directory is there, unlisted, until the next write sweeps it.
      t.is(readdirSync(join(path, 'images')).length, list.length + 1);
    }
    if (i === 1) {
      // Mid-copy: the work directory is left behind (and swept by the next write).
      t.true(readdirSync(join(path, 'tmp')).length > 0, 'a dead workspace remains until the next write');
    }
  }
  // A remove killed between its commit and deleting the directory.
  const victim = committed.pop()!;
  const run = await runChild(['remove', path, victim], { OSFARM_CRASH_AT: 'commit:catalog-written' });
  t.true(run.killed);
  t.true(existsSync(join(path, 'images', victim)), 'the directory outlived the kill');
  await checkConsistent(t, path, committed);
  t.false(
    Repository.open(path)
      .list()
      .some((e) => e.digest === victim),
    'a committed remove is not listed',
  );
  // The repository still works: a new add succeeds, leftovers are swept.
  const repo = Repository.open(path);
  const e = await repo.add(image(99), { name: 'after' });
  t.deepEqual(readdirSync(join(path, 'tmp')), []);
  const listed = new Set(repo.list().map((x) => x.digest));
  t.deepEqual(readdirSync(join(path, 'images')).sort(), [...listed].sort(), 'no unreferenced image directory');
  await checkConsistent(t, path, [...committed, e.digest]);
  // And the killed images can be added for real.
  for (const p of images) await repo.add(p);
  t.is(repo.list().length, moments.length + 1);
  t.false(existsSync(join(path, 'images', victim)) && !repo.list().some((x) => x.digest === victim));
});

test('two processes adding at the same time both succeed and leave a consistent repository', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'repo');
  Repository.init(path);
  const n = 8192; // 32 MiB each, half of the blocks shared
  const a = Array.from({ length: n }, (_, i) => i + 1);
  const b = Array.from({ length: n }, (_, i) => i + 1 + n / 2);
  writeBlocks(join(dir, 'a.img'), a);
  writeBlocks(join(dir, 'b.img'), b);
  const [ra, rb] = await Promise.all([
    runChild(['add', path, join(dir, 'a.img'), 'a']),
    runChild(['add', path, join(dir, 'b.img'), 'b']),
  ]);
  t.is(ra.code, 0, ra.stderr);
  t.is(rb.code, 0, rb.stderr);
  t.true(ra.done && rb.done);
  const list = await checkConsistent(t, path, []);
  t.deepEqual(list.map((e) => e.name).sort(), ['a', 'b']);
  const repo = Repository.open(path);
  t.is(repo.stats().distinctBlocks, n + n / 2);
  // Removing one keeps every block of the other findable (re-pointed where needed).
  await repo.remove('a');
  const p = repo.planSync(join(dir, 'b.img'));
  t.true(p.alreadyPresent);
  t.is(p.presentBlocks, n);
  t.is(repo.stats().distinctBlocks, n);
});

test('writers wait for the lock, or fail with OSFARM_LOCKED when asked not to wait', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'repo');
  const repo = Repository.init(path);
  writeBlocks(join(dir, 'a.img'), [1, 2]);
  // Another process (flock(1)) holds the repository lock exclusively until we tell it to stop.
  const holder = spawn('flock', ['-x', join(path, 'lock'), '-c', 'echo locked; read line'], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const exited = new Promise((resolve) => holder.on('exit', resolve));
  await new Promise<void>((resolve) => createInterface({ input: holder.stdout }).once('line', () => resolve()));
  t.is(codeOf(() => Repository.open(path, { waitForLock: false })), 'OSFARM_LOCKED');
  repo.setWaitForLock(false);
  t.is(codeOf(() => repo.list()), 'OSFARM_LOCKED');
  const locked = await t.throwsAsync(repo.add(join(dir, 'a.img')));
  t.is((locked as OsfarmError).code, 'OSFARM_LOCKED');
  // Waiting: the add blocks (off the JS thread) until the holder lets go.
  repo.setWaitForLock(true);
  const started = Date.now();
  setTimeout(() => holder.stdin.end('go\n'), 400);
  const e = await repo.add(join(dir, 'a.img'));
  t.true(Date.now() - started >= 350, 'the add waited for the lock');
  t.deepEqual(
    repo.list().map((x) => x.digest),
    [e.digest],
  );
  await exited;
});
