/**
 * SHA-1 collision detection (docs/trust.md, "Collision resistance"): with the SHAttered
 * pair (the two PDFs' colliding 320-byte prefixes, from their published hex) as the start
 * of a 4 KiB block, a plain SHA-1 repository is poisoned — the second image of a pushed
 * pair is assembled with the first one's block — while a repository made with
 * `--detect-collisions` refuses either half, pushed or pulled, and keeps nothing.
 */
import test, { type ExecutionContext } from 'ava';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';

import type { OsfarmError } from '../src/base/errors.js';
import { Repository } from '../src/repo/index.js';
import { createPullHandler, listenHttp } from '../src/transfer/http/serve.js';
import { pull } from '../src/transfer/http/pull.js';
import { push } from '../src/transfer/push/push.js';
import { inProcessReceiver, nothingKept } from './helpers/push-client.js';
import { cliJson, pseudoRandom, tempDir } from './helpers/tmp.js';

const FIXTURE = join(import.meta.dirname, '..', 'crates', 'osfarm-core', 'tests', 'data', 'shattered.hex');

/** The two colliding prefixes, checked to be a SHA-1 collision before any test relies on them. */
function shattered(): [Buffer, Buffer] {
  const [a, b] = readFileSync(FIXTURE, 'utf8')
    .split('\n')
    .filter((l) => l.trim() && !l.startsWith('#'))
    .map((l) => Buffer.from(l.trim(), 'hex'));
  return [a!, b!];
}

/** An image whose second 4 KiB block starts with `half` (the rest of that block the same for both halves); `tail` seeds its last two blocks. */
function image(t: ExecutionContext, half: Buffer, name: string, tail = 2): string {
  const block = Buffer.alloc(4096, 0x5a);
  half.copy(block);
  const path = join(tempDir(t), name);
  writeFileSync(path, Buffer.concat([pseudoRandom(4096, 1), block, pseudoRandom(8192, tail)]));
  return path;
}

test('the fixture is a SHA-1 collision: two different prefixes, one SHA-1, also as 4 KiB blocks with a common rest', (t) => {
  const [a, b] = shattered();
  t.is(a.length, 320);
  t.false(a.equals(b));
  const sha1 = (x: Buffer) => createHash('sha1').update(x).digest('hex');
  t.is(sha1(a), sha1(b));
  // As the second 4 KiB block of an image: that block's digest is the same for both halves.
  const block = (path: string) => readFileSync(path).subarray(4096, 8192);
  t.is(sha1(block(image(t, a, 'a.img'))), sha1(block(image(t, b, 'b.img'))));
});

test('without detection the pair poisons a SHA-1 repository: a later image is assembled with the planted block', async (t) => {
  const [a, b] = shattered();
  const r = await inProcessReceiver(t, { detectCollisions: false });
  const planted = readFileSync(image(t, a, 'planted.img'));
  const later = image(t, b, 'later.img', 3);
  await push(image(t, a, 'planted.img'), r.address, { insecure: true, name: 'planted' });
  const got = await push(later, r.address, { insecure: true, name: 'later' });
  t.is(got.blocksSent, 2, 'only the two new tail blocks were sent: the receiver "had" the colliding one');
  const stored = readFileSync(Repository.open(r.dir).resolve('later').path);
  const sent = readFileSync(later);
  t.false(stored.equals(sent), 'the receiver did not get what was sent');
  t.true(stored.subarray(4096, 8192).equals(planted.subarray(4096, 8192)), 'it holds the planted block instead');
  t.true(stored.subarray(8192).equals(sent.subarray(8192)));
});

test('--detect-collisions refuses either half of the pair, pushed or pulled, and keeps nothing', async (t) => {
  const [a, b] = shattered();
  const r = await inProcessReceiver(t, { detectCollisions: true });
  t.true(Repository.open(r.dir).detectsCollisions);
  for (const [half, name] of [
    [a, 'a.img'],
    [b, 'b.img'],
  ] as const) {
    const e = (await t.throwsAsync(push(image(t, half, name), r.address, { insecure: true }))) as OsfarmError;
    t.is(e.code, 'OSFARM_DIGEST_MISMATCH', e.message);
    t.regex(e.message, /block 1 .*SHA-1 collision attack/);
  }
  nothingKept(t, r.dir);
  // Ordinary images still go through.
  const plain = join(tempDir(t), 'plain.img');
  writeFileSync(plain, pseudoRandom(1 << 20, 9));
  t.false((await push(plain, r.address, { insecure: true })).alreadyPresent);

  // A pull into a detecting repository: the same refusal, nothing published.
  const origin = join(tempDir(t), 'origin');
  const entry = Repository.init(origin).addSync(image(t, b, 'b.img'), { name: 'b' });
  const { server } = await listenHttp({ host: '127.0.0.1', port: 0, handlers: [createPullHandler({ repo: origin })] });
  t.teardown(() => new Promise<void>((done) => (server.closeAllConnections(), server.close(() => done()))));
  const into = join(tempDir(t), 'pulled');
  Repository.init(into, { detectCollisions: true });
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/images/b`;
  const e = (await t.throwsAsync(pull(url, { repo: into, retries: 0 }))) as OsfarmError;
  t.is(e.code, 'OSFARM_DIGEST_MISMATCH', e.message);
  t.deepEqual(Repository.open(into).list(), []);
  // Without detection the same pull succeeds (so the refusal above is the detection's).
  t.is((await pull(url, { repo: join(tempDir(t), 'plain-pull') })).digest, entry.digest);
});

test('CLI: repo init --detect-collisions records the mode; SHA-256 repositories refuse it', (t) => {
  const dir = tempDir(t);
  const made = cliJson(['repo', 'init', join(dir, 'r'), '--detect-collisions']);
  t.is(made.status, 0, made.stderr);
  t.true(made.result.detectCollisions);
  t.true(JSON.parse(readFileSync(join(dir, 'r', 'osfarm-repo.json'), 'utf8')).collisionDetection);
  const sha256 = cliJson(['repo', 'init', join(dir, 's'), '--hash', 'sha256', '--detect-collisions']);
  t.is(sha256.result.error.code, 'OSFARM_INVALID_ARGUMENT');
  t.regex(sha256.result.error.message, /sha256 needs none/);
});
