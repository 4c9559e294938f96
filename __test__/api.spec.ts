/**
 * The package entry as a service sees it: what `import … from 'osfarm'` gives, aborts that
 * reject the way Node's do (AbortError / TimeoutError, signal.reason as the cause) with
 * OSFARM_ABORTED, one event shape across push, pull and the receiver with the result last,
 * and handles that close (close() and `await using`). Real TCP and HTTP on loopback.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { appendFileSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';

import { acquireLock } from '../src/host/lock.js';
import {
  build,
  indexImage,
  isAbortError,
  OsfarmError,
  pack,
  pull,
  push,
  Receiver,
  Repository,
  serve,
  specFromObject,
  validateSpec,
  type PullEvent,
  type PushEvent,
  type ReceiveEvent,
} from '../src/index.js';
import { pseudoRandom, tempDir } from './helpers/tmp.js';

const TOKEN = 'api-test-token-0123456789';

/** What the package root promises a service (docs/api.md lists it). */
const SURFACE = [
  'build', 'validateSpec', 'parseSpec', 'loadSpec', 'specFromObject', 'canonicalSpec', 'canonicalJson', 'specDigest', 'specToXml',
  'push', 'Receiver', 'pull', 'serve', 'createHandler', 'createPullHandler', 'createWebHandler',
  'Repository', 'StageStore', 'findImages', 'showImage', 'exportSpec', 'findBuilt',
  'indexImage', 'compare', 'pack', 'OsfarmError', 'abortError', 'isAbortError', 'toOsfarmError', 'VERSION',
  'generateKeys', 'listKeys', 'exportPublicKey', 'trustKey', 'signImage', 'verifyManifest', 'certificateFingerprint',
];

test("the package root (import 'osfarm', through package.json exports) gives the service API", async (t) => {
  const viaName = (await import('osfarm')) as Record<string, unknown>;
  const fromSource = (await import('../src/index.js')) as Record<string, unknown>;
  t.deepEqual(Object.keys(viaName).sort(), Object.keys(fromSource).sort(), 'dist and src export the same names');
  for (const name of SURFACE) t.not(viaName[name], undefined, `osfarm exports ${name}`);
  t.is(typeof viaName.build, 'function');
});

test('an already aborted signal rejects at once with an AbortError carrying OSFARM_ABORTED and the reason', async (t) => {
  const dir = tempDir(t);
  const img = join(dir, 'a.img');
  writeFileSync(img, pseudoRandom(1 << 20, 1));
  const reason = new Error('the caller changed its mind');
  const signal = AbortSignal.abort(reason);
  const calls: [string, Promise<unknown>][] = [
    ['indexImage', indexImage(img, { signal })],
    ['pack', pack(dir, join(dir, 'out.tar'), { signal })],
    ['Repository.add', Repository.init(join(dir, 'repo')).add(img, { signal })],
    ['push', push(img, '127.0.0.1:9', { signal, insecure: true })],
    ['pull', pull('http://127.0.0.1:9/images/x', { repo: join(dir, 'repo'), signal })],
    ['build', build(specFromObject({ distribution: 'debian', release: 'bookworm' }), { signal, repo: join(dir, 'repo'), workDir: dir })],
  ];
  for (const [what, p] of calls) {
    const err = await t.throwsAsync(p, { instanceOf: OsfarmError }, what);
    t.is(err?.name, 'AbortError', `${what}: named AbortError`);
    t.is((err as OsfarmError).code, 'OSFARM_ABORTED', `${what}: OSFARM_ABORTED`);
    t.is(err?.cause, reason, `${what}: the signal's reason is the cause`);
    t.true(isAbortError(err));
  }
});

test('AbortSignal.timeout() gives a TimeoutError: a push to a peer that never answers, a pull from a server that never responds, a native task', async (t) => {
  const dir = tempDir(t);
  const img = join(dir, 'big.img');
  writeFileSync(img, pseudoRandom(48 << 20, 2));
  const bigger = join(dir, 'bigger.img');
  for (let i = 0; i < 5; i++) appendFileSync(bigger, pseudoRandom(48 << 20, 3 + i));
  // A TCP peer that accepts and says nothing; an HTTP server that never answers.
  const silent = createServer(() => {});
  silent.listen(0, '127.0.0.1');
  await once(silent, 'listening');
  const stuck = createHttpServer(() => {});
  stuck.listen(0, '127.0.0.1');
  await once(stuck, 'listening');
  t.teardown(() => {
    silent.close();
    stuck.closeAllConnections();
    stuck.close();
  });
  const port = (s: { address(): unknown }) => (s.address() as AddressInfo).port;
  const cases: [string, () => Promise<unknown>][] = [
    ['push', () => push(img, `127.0.0.1:${port(silent)}`, { insecure: true, signal: AbortSignal.timeout(300) })],
    ['pull', () => pull(`http://127.0.0.1:${port(stuck)}/images/x`, { repo: join(dir, 'repo'), signal: AbortSignal.timeout(300), retries: 0 })],
    // 240 MiB: hashed in ~80 ms at best, so the 5 ms timer fires first even when the event loop is late.
    ['indexImage', () => indexImage(bigger, { signal: AbortSignal.timeout(5) })],
  ];
  for (const [what, run] of cases) {
    const err = await t.throwsAsync(run(), { instanceOf: OsfarmError }, what);
    t.is(err?.name, 'TimeoutError', `${what}: named TimeoutError`);
    t.is((err as OsfarmError).code, 'OSFARM_ABORTED', `${what}: OSFARM_ABORTED`);
    t.is((err?.cause as Error | undefined)?.name, 'TimeoutError', `${what}: the cause is the signal's TimeoutError`);
  }
});

test('a file lock excludes a second holder until released, and a SIGKILLed holder leaves nothing behind', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'locks', 'x.lock');
  const first = await acquireLock(path);
  t.truthy(first);
  t.is(await acquireLock(path, { wait: false }), null, 'held in this process: a second acquisition is refused');
  const waiting = acquireLock(path, { signal: AbortSignal.timeout(100) });
  const err = await t.throwsAsync(waiting);
  t.is((err as OsfarmError).code, 'OSFARM_ABORTED', 'a wait ends with the signal');
  await first!.release();
  const again = await acquireLock(path, { wait: false });
  t.truthy(again, 'free once released');
  await again!.release();

  // Another process holds it; SIGKILL frees it (the kernel closes its file).
  const native = join(import.meta.dirname, '..', 'index.js');
  const child = spawn(process.execPath, ['--input-type=module', '-e', `import { tryLockFile } from ${JSON.stringify(native)}; globalThis.held = tryLockFile(${JSON.stringify(path)}); console.log(globalThis.held ? 'locked' : 'busy'); setInterval(() => {}, 1000);`], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => child.kill('SIGKILL'));
  const [line] = (await once(child.stdout!, 'data')) as [Buffer];
  t.is(line.toString().trim(), 'locked');
  t.is(await acquireLock(path, { wait: false }), null, 'held by the other process');
  const got = acquireLock(path, { signal: AbortSignal.timeout(10_000) });
  child.kill('SIGKILL');
  const lock = await got;
  t.truthy(lock, 'granted once the holder is killed');
  await lock!.release();
});

test('push, receive and pull report `{ type }` events with the result last; receiver, server and repository close', async (t) => {
  const dir = tempDir(t);
  const img = join(dir, 'a.img');
  writeFileSync(img, Buffer.concat([pseudoRandom(3 << 20, 3), Buffer.alloc(1 << 20)]));
  const receiverEvents: ReceiveEvent[] = [];
  const pushEvents: PushEvent[] = [];
  const pullEvents: PullEvent[] = [];
  const received = join(dir, 'received');
  let pushed;
  {
    await using receiver = new Receiver({ repo: received, token: TOKEN, onEvent: (e) => receiverEvents.push(e) });
    const address = await receiver.listen('127.0.0.1', 0);
    pushed = await push(img, `127.0.0.1:${address.port}`, { token: TOKEN, name: 'a', onEvent: (e) => pushEvents.push(e) });
    t.is(pushed.blockCount, 1024);
  }
  t.deepEqual(pushEvents.at(-1), { type: 'result', result: pushed }, 'the push stream ends with its result');
  const progress = pushEvents.filter((e) => e.type === 'progress');
  t.true(progress.length > 0 && progress.every((e) => e.type === 'progress' && e.total === 1024 && e.done <= e.total));
  t.deepEqual(
    receiverEvents.map((e) => e.type),
    ['repository-created', 'listening', 'transfer-start', 'transfer-done', 'result'],
    'the receiver reports in order and its totals last (on close)',
  );
  const last = receiverEvents.at(-1)!;
  t.like(last, { type: 'result', result: { transfers: 1, failed: 0 } });

  // The received image, served and pulled elsewhere; the server is disposed by the block.
  const pulled = join(dir, 'pulled');
  {
    await using server = await serve({ repo: received, tokenFile: join(dir, 'web-token') });
    const r = await pull(`${server.url}/images/a`, { repo: pulled, onEvent: (e) => pullEvents.push(e) });
    t.is(r.digest, pushed.digest);
    t.deepEqual(pullEvents.at(-1), { type: 'result', result: r });
    t.true(pullEvents.some((e) => e.type === 'progress' && e.done <= e.total));
    t.is(server.pull!.stats.requests > 0, true);
  }

  const repo = Repository.open(pulled);
  t.is(repo.resolve('a').digest, pushed.digest);
  repo.close();
  const closed = t.throws(() => repo.list(), { instanceOf: OsfarmError });
  t.is((closed as OsfarmError).code, 'OSFARM_INVALID_ARGUMENT');
  {
    using again = Repository.open(pulled);
    t.is(again.list().length, 1);
  }
});

test('validateSpec returns the issues of a bad spec without throwing, and the normalised spec of a good one', (t) => {
  const bad = validateSpec({ distribution: 'debain', release: 'bookworm', pakages: ['jq'] });
  t.false(bad.valid);
  t.true(bad.issues.some((i) => i.path === 'spec.pakages'));
  const good = validateSpec('distribution: debian\nrelease: bookworm\npackages: [jq]\n');
  t.true(good.valid);
  if (good.valid) t.deepEqual(good.spec.packages, ['jq']);
});
