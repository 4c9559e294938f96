/**
 * Lazy pull (`pullLazy`, `osfarm pull --lazy`): an image served over NBD while it arrives
 * over HTTP from a real `osfarm serve` handler on loopback; qemu-img and qemu-io read the
 * export. A lying origin (a repository whose image file was tampered with), an origin that
 * goes away and comes back, and a resumed export.
 */
import test, { type ExecutionContext } from 'ava';
import { execFile, spawn } from 'node:child_process';
import { cpSync, existsSync, openSync, readFileSync, writeFileSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';

import { lazySource } from '../src/app/lazy-boot.js';
import type { OsfarmError } from '../src/base/errors.js';
import { Repository } from '../src/repo/index.js';
import { pullLazy, type LazyEvent } from '../src/transfer/lazy/export.js';
import { readBootProfile, writeBootProfile } from '../src/transfer/lazy/profile.js';
import { generateKeys, trustKey } from '../src/trust/keys.js';
import { MANIFEST_FILE, signImage } from '../src/trust/manifest.js';
import { serveRepo } from './helpers/origin.js';
import { lastOutcome, outcome, pseudoRandom, tempDir } from './helpers/tmp.js';

const run = promisify(execFile);
const MiB = 1 << 20;
const BS = 4096;
const CLI = [`--import=${import.meta.resolve('tsx')}`, join(import.meta.dirname, '..', 'src', 'cli', 'main.ts')];

interface Lab {
  dir: string;
  origin: string;
  receiver: string;
  newImage: string;
  digest: string;
  blockCount: number;
}

/**
 * An origin repository with "old" and "new" (8 MiB; new differs from old in MiB 1 and 5,
 * and MiB 7 is zeros), and a receiver holding only "old".
 */
function lab(t: ExecutionContext): Lab {
  const dir = tempDir(t, 'osfarm-lazy-');
  const old = pseudoRandom(8 * MiB, 21);
  const neu = Buffer.from(old);
  pseudoRandom(MiB, 22).copy(neu, 1 * MiB);
  pseudoRandom(MiB, 23).copy(neu, 5 * MiB);
  neu.fill(0, 7 * MiB);
  writeFileSync(join(dir, 'old.img'), old);
  const newImage = join(dir, 'new.img');
  writeFileSync(newImage, neu);
  const origin = join(dir, 'origin');
  const repo = Repository.init(origin);
  repo.addSync(join(dir, 'old.img'), { name: 'old' });
  const entry = repo.addSync(newImage, { name: 'new', meta: { kind: 'lazy-test', note: 'travels with the image' } });
  repo.close();
  const receiver = join(dir, 'receiver');
  Repository.init(receiver).addSync(join(dir, 'old.img'), { name: 'old' });
  return { dir, origin, receiver, newImage, digest: entry.digest, blockCount: entry.blockCount };
}

const readAt = (uri: string, offset: number, length: number) => run('qemu-io', ['-r', '-f', 'raw', '-c', `read ${offset} ${length}`, uri]);

test('qemu-img reads the export byte for byte; the image is published with the origin profile', async (t) => {
  const l = lab(t);
  // The origin has a boot profile for "new": MiB 5 first, then MiB 1.
  writeBootProfile(l.origin, {
    image: l.digest,
    blockSize: BS,
    blockCount: l.blockCount,
    recorded: new Date().toISOString(),
    runs: [
      { first: 1280, count: 256 },
      { first: 256, count: 256 },
    ],
  });
  const o = await serveRepo(t, l.origin);
  const events: LazyEvent[] = [];
  await using exp = await pullLazy(`${o.url}/images/new`, { repo: l.receiver, socket: join(l.dir, 'nbd.sock'), parallel: 1, onEvent: (e) => events.push(e) });
  t.is(exp.exportName, 'new');
  t.like(events[0], { type: 'ready', digest: l.digest, profile: 'origin' });

  const out = join(l.dir, 'out.raw');
  await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', exp.uri, out]);
  t.true(readFileSync(out).equals(readFileSync(l.newImage)), 'the bytes differ');

  const result = await exp.completed;
  t.like(result, { digest: l.digest, name: 'new', alreadyPresent: false, profile: 'origin', blocksZero: 256 });
  // Only the two changed MiB came over the network; old's blocks were copied locally.
  t.is(result.blocksFetched, 512);
  t.true(result.bytesFetched < 2 * MiB + 256 * 1024, `${result.bytesFetched} bytes fetched`);
  t.is(events.at(-1)?.type, 'result');
  const repo = Repository.open(l.receiver);
  t.teardown(() => repo.close());
  const entry = await repo.verify('new');
  t.true(readFileSync(entry.path).equals(readFileSync(l.newImage)), 'the bytes differ');
  // The origin's metadata is published with it, as pull publishes it.
  t.deepEqual(repo.resolve('new').meta, { kind: 'lazy-test', note: 'travels with the image' });
  // The profile is kept with the image, so this repository can serve it on.
  t.deepEqual(readBootProfile(l.receiver, l.digest, l.blockCount)?.runs, [
    { first: 1280, count: 256 },
    { first: 256, count: 256 },
  ]);
  // The export keeps serving the published image.
  await readAt(exp.uri, 5 * MiB, MiB);
});

test('the prefetch alone completes the image in profile order and publishes it; the access order is recorded', async (t) => {
  const l = lab(t);
  writeBootProfile(l.origin, { image: l.digest, blockSize: BS, blockCount: l.blockCount, recorded: '', runs: [{ first: 1280 + 200, count: 56 }] });
  const o = await serveRepo(t, l.origin);
  const progress: number[] = [];
  const exp = await pullLazy(`${o.url}/images/${l.digest}`, {
    repo: l.receiver,
    socket: join(l.dir, 'nbd.sock'),
    parallel: 2,
    recordProfile: true,
    onEvent: (e) => e.type === 'progress' && progress.push(e.done),
  });
  await readAt(exp.uri, 3 * MiB, 8192);
  const result = await exp.completed;
  // The profile's blocks came first (MiB 3 is local), then the rest in block order.
  t.is(o.ranges[0], `bytes=${1480 * BS}-${1536 * BS - 1}`);
  t.true(o.ranges.slice(1).every((r) => !r.startsWith(`bytes=${1480 * BS}-`)));
  t.is(result.blocksFetched, 512);
  // Pulled by digest, it still arrives with the tags it has at the origin (docs/trust.md).
  t.deepEqual(result.tags, ['new']);
  t.true(progress.length > 0 && progress.at(-1) === l.blockCount);
  t.deepEqual(exp.profile()[0], { first: 768, count: 2 });
  await exp.close();
  // recordProfile: the clients' order replaced the origin's in the receiver.
  t.deepEqual(readBootProfile(l.receiver, l.digest, l.blockCount)?.runs, [{ first: 768, count: 2 }]);
  const repo = Repository.open(l.receiver);
  t.teardown(() => repo.close());
  t.true(readFileSync(repo.resolve(l.digest).path).equals(readFileSync(l.newImage)), 'the bytes differ');
});

test('a lying origin: the wrong block fails the read with EIO and an event, other reads work, nothing is published', async (t) => {
  const l = lab(t);
  // A copy of the origin repository whose image file has one byte flipped in block 300 (MiB 1: only the origin has it).
  const liar = join(l.dir, 'liar');
  cpSync(l.origin, liar, { recursive: true });
  const fd = openSync(join(liar, 'images', l.digest, 'image'), 'r+');
  const byte = Buffer.alloc(1);
  byte[0] = readFileSync(l.newImage)[300 * BS + 17]! ^ 0x40;
  writeSync(fd, byte, 0, 1, 300 * BS + 17);
  closeSync(fd);
  const o = await serveRepo(t, liar);
  const events: LazyEvent[] = [];
  await using exp = await pullLazy(`${o.url}/images/new`, { repo: l.receiver, socket: join(l.dir, 'nbd.sock'), prefetch: false, onEvent: (e) => events.push(e) });

  const bad = await t.throwsAsync(readAt(exp.uri, 300 * BS, BS));
  t.regex((bad as Error & { stdout: string }).stdout, /Input\/output error/);
  t.like(
    events.find((e) => e.type === 'bad-block'),
    { block: 300, origin: 'fetched' },
  );
  // A fetched block next to it, a local one and a zero one are served.
  const good = await readAt(exp.uri, 301 * BS, BS);
  t.regex(good.stdout, /read 4096\/4096 bytes/);
  await readAt(exp.uri, 3 * MiB, MiB);
  await readAt(exp.uri, 7 * MiB, MiB);
  t.true(exp.stats().badBlocks >= 1);
  await exp.close();
  const err = await t.throwsAsync(exp.completed);
  t.is((err as OsfarmError).code, 'OSFARM_ABORTED');
  const repo = Repository.open(l.receiver);
  t.teardown(() => repo.close());
  t.false(repo.list().some((e) => e.digest === l.digest));

  // With the prefetch, the lie stops the completion with the mismatch's code.
  const exp2 = await pullLazy(`${o.url}/images/new`, { repo: l.receiver, socket: join(l.dir, 'nbd2.sock') });
  t.teardown(() => exp2.close());
  const err2 = await t.throwsAsync(exp2.completed);
  t.is((err2 as OsfarmError).code, 'OSFARM_DIGEST_MISMATCH');
  t.false(repo.list().some((e) => e.digest === l.digest));
});

test('the origin goes away: present blocks are still served, missing ones fail cleanly; the next export resumes and publishes', async (t) => {
  const l = lab(t);
  const o = await serveRepo(t, l.origin);
  const events: LazyEvent[] = [];
  const sock = join(l.dir, 'nbd.sock');
  const exp = await pullLazy(`${o.url}/images/new`, { repo: l.receiver, socket: sock, prefetch: false, retries: 2, retryDelayMs: 20, onEvent: (e) => events.push(e) });
  await readAt(exp.uri, MiB, MiB);
  await o.stop();
  // Fetched before, local, zero: all still served.
  await readAt(exp.uri, MiB, MiB);
  await readAt(exp.uri, 0, MiB);
  await readAt(exp.uri, 7 * MiB, MiB);
  const failed = await t.throwsAsync(readAt(exp.uri, 5 * MiB, BS));
  t.regex((failed as Error & { stdout: string }).stdout, /Input\/output error/);
  t.like(
    events.find((e) => e.type === 'fetch-failed'),
    { first: 1280 },
  );
  await exp.close();
  t.false(existsSync(sock));

  // Back on the same port: a new export keeps the MiB fetched before and completes.
  await serveRepo(t, l.origin, { port: o.port });
  const exp2 = await pullLazy(`${o.url}/images/new`, { repo: l.receiver, socket: sock });
  t.teardown(() => exp2.close());
  const result = await exp2.completed;
  // Kept: the MiB fetched and the MiB copied before (zero blocks not counted).
  t.is(result.blocksResumed, 512);
  t.is(result.blocksFetched, 256);
  const repo = Repository.open(l.receiver);
  t.teardown(() => repo.close());
  t.true(readFileSync(repo.resolve('new').path).equals(readFileSync(l.newImage)), 'the bytes differ');
});

test('the origin stops mid-read and comes back within the retries: the read waits and succeeds', async (t) => {
  const l = lab(t);
  const o = await serveRepo(t, l.origin);
  await using exp = await pullLazy(`${o.url}/images/new`, { repo: l.receiver, socket: join(l.dir, 'nbd.sock'), prefetch: false, retryDelayMs: 100, maxRetryDelayMs: 400 });
  await o.stop();
  const reading = readAt(exp.uri, 5 * MiB, MiB);
  await new Promise((r) => setTimeout(r, 1500));
  await serveRepo(t, l.origin, { port: o.port });
  const r = await reading;
  t.regex(r.stdout, /read 1048576\/1048576 bytes/);
  t.is(exp.stats().fetchedBlocks, 256);
});

test('osfarm pull --lazy --json: ready and result events, the image published, exits when complete with --until-complete', async (t) => {
  const l = lab(t);
  const o = await serveRepo(t, l.origin);
  const { stdout } = await run(process.execPath, [...CLI, '--json', '--repo', l.receiver, 'pull', '--lazy', '--until-complete', '--socket', join(l.dir, 'cli.sock'), `${o.url}/images/new`]);
  const lines = stdout.trim().split('\n').map((x) => JSON.parse(x) as Record<string, unknown>);
  t.like(lines[0], { type: 'ready', exportName: 'new', digest: l.digest });
  t.like(outcome(lines.at(-1)), { digest: l.digest, name: 'new', blocksFetched: 512 });
  const repo = Repository.open(l.receiver);
  t.teardown(() => repo.close());
  t.true(readFileSync(repo.resolve('new').path).equals(readFileSync(l.newImage)), 'the bytes differ');
});

test('osfarm pull --lazy killed (SIGKILL) mid-way: the next run keeps what arrived and fetches only the rest', async (t) => {
  const l = lab(t);
  // A slow origin: every image range (64 KiB) waits 400 ms, so the 2 MiB to fetch take over 12 s.
  const o = await serveRepo(t, l.origin, { delayMs: () => 400 });
  const url = `${o.url}/images/new`;
  const args = [...CLI, '--json', '--repo', l.receiver, 'pull', '--lazy', '--until-complete', '--parallel', '2', '--max-request', '64k', '--socket', join(l.dir, 'k.sock'), url];
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'ignore'] });
  let out = '';
  child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
  // Killed 8 s after it started serving: the partial's bitmap is saved every 5 s.
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', () => {
      if (out.includes('"ready"')) setTimeout(resolve, 8000);
    });
    child.once('exit', () => reject(new Error(`the pull ended before it was killed: ${out}`)));
  });
  t.false(out.includes('"result"'), 'not complete when killed');
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  // The partial's origin is recorded: `osfarm boot new` would go on fetching it from there.
  t.deepEqual(lazySource('new', l.receiver), { url: `${o.url}/images/${l.digest}`, name: 'new' });
  t.deepEqual(lazySource(l.digest.slice(0, 12), l.receiver), { url: `${o.url}/images/${l.digest}`, name: 'new' });
  t.is(lazySource('old', l.receiver), undefined, 'a complete image is booted as it is');

  const { stdout } = await run(process.execPath, args);
  const result = lastOutcome<{ blocksFetched: number; blocksResumed: number; blocksLocal: number }>(stdout);
  t.true(result.blocksFetched < 512, `fetched ${result.blocksFetched} of 512 again`);
  t.is(result.blocksFetched + result.blocksResumed + result.blocksLocal, 512 + 1280);
  const repo = Repository.open(l.receiver);
  t.teardown(() => repo.close());
  t.true(readFileSync(repo.resolve('new').path).equals(readFileSync(l.newImage)), 'the bytes differ');
  t.false(existsSync(join(l.receiver, 'tmp', `${l.digest}.origin.json`)), 'the record went with the publication');
});

test('signatures are required as pull requires them: an unsigned image is refused before anything is served; a signed one keeps its manifest', async (t) => {
  const l = lab(t);
  // "new" is unsigned (added before the origin had a key); "signed" is signed by it.
  const key = generateKeys(l.origin);
  const repo = Repository.open(l.origin);
  const signed = repo.addSync(join(l.dir, 'old.img'), { name: 'signed' });
  signImage(l.origin, signed);
  repo.close();
  trustKey(l.receiver, key.path);
  const o = await serveRepo(t, l.origin);
  const err = await t.throwsAsync(pullLazy(`${o.url}/images/new`, { repo: l.receiver, socket: join(l.dir, 'nbd.sock') }));
  t.is((err as OsfarmError).code, 'OSFARM_UNTRUSTED');
  t.false(existsSync(join(l.dir, 'nbd.sock')), 'nothing was served');
  await using exp = await pullLazy(`${o.url}/images/signed`, { repo: l.receiver, socket: join(l.dir, 'nbd2.sock') });
  const result = await exp.completed;
  t.regex(result.signedBy ?? '', /^[0-9A-F]{16}$/);
  t.true(existsSync(join(l.receiver, 'images', signed.digest, MANIFEST_FILE)));
});
