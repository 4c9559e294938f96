/**
 * What travels with a pushed image (docs/trust.md): its name, metadata and signed manifest;
 * a receiver that requires signatures (`trust`) refuses an unsigned image, another key's,
 * or a manifest that does not describe what the IMAGE frame announces, before any block.
 */
import test, { type ExecutionContext } from 'ava';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import type { OsfarmError } from '../src/base/errors.js';
import { Repository } from '../src/repo/index.js';
import { FrameType, parseJson } from '../src/transfer/push/frames.js';
import { push } from '../src/transfer/push/push.js';
import { Receiver } from '../src/transfer/push/receive.js';
import { generateKeys, trustKey } from '../src/trust/keys.js';
import { MANIFEST_FILE, readManifest, SIGNATURE_FILE, signImage } from '../src/trust/manifest.js';
import { type ImageFrame, inProcessReceiver, nothingKept, RawClient, startChild } from './helpers/push-client.js';
import { cliJson, pseudoRandom, tempDir } from './helpers/tmp.js';

const META = { kind: 'test', spec: { packages: ['less'] }, stages: [{ tag: 'a1', label: 'core' }], buildLog: { path: '/origin/app.build.log', tail: 'one\ntwo' } };

interface Origin {
  dir: string;
  pub: string;
  /** Signed, named "app", with META. */
  app: string;
  /** Added before the key existed: unsigned. */
  plain: string;
  file: string;
}

function origin(t: ExecutionContext): Origin {
  const base = tempDir(t, 'osfarm-trust-push-');
  const dir = join(base, 'origin');
  const repo = Repository.init(dir);
  writeFileSync(join(base, 'plain.img'), pseudoRandom(1 << 20, 51));
  const plain = repo.addSync(join(base, 'plain.img'), { name: 'plain' }).digest;
  const key = generateKeys(dir);
  const file = join(base, 'app.img');
  writeFileSync(file, pseudoRandom(2 << 20, 52));
  const entry = repo.addSync(file, { name: 'app', meta: META });
  signImage(dir, entry);
  return { dir, pub: key.path, app: entry.digest, plain, file };
}

test('a pushed image keeps its name and metadata, and the receiver republishes its signed manifest', async (t) => {
  const o = origin(t);
  const r = await inProcessReceiver(t);
  const result = await push('app', r.address, { repo: o.dir, insecure: true });
  t.is(result.name, 'app');
  const got = Repository.open(r.dir).resolve('app');
  t.is(got.digest, o.app);
  t.deepEqual(got.meta, META);
  // The receiver has no key: it keeps the origin's manifest, byte for byte.
  for (const f of [MANIFEST_FILE, SIGNATURE_FILE]) {
    t.deepEqual(readFileSync(join(r.dir, 'images', o.app, f)), readFileSync(join(o.dir, 'images', o.app, f)));
  }
  // push --name still renames it.
  const renamed = await push('app', (await inProcessReceiver(t)).address, { repo: o.dir, insecure: true, name: 'other' });
  t.is(renamed.name, 'other');
});

test('a receiver with --trust takes a signed image and refuses an unsigned one, another key, a file, before any block', async (t) => {
  const o = origin(t);
  const r = await inProcessReceiver(t, { trust: [o.pub] });
  t.is((await push('app', r.address, { repo: o.dir, insecure: true })).digest, o.app);
  t.is(readManifest(Repository.open(r.dir).resolve('app'))?.manifest.digest, o.app);

  const refuse = async (what: string, p: Promise<unknown>, message: RegExp) => {
    const e = (await t.throwsAsync(p)) as OsfarmError;
    t.is(e.code, 'OSFARM_UNTRUSTED', `${what}: ${e.message}`);
    t.regex(e.message, message, what);
  };
  const strict = await inProcessReceiver(t, { trust: [o.pub] });
  await refuse('unsigned', push('plain', strict.address, { repo: o.dir, insecure: true }), /not signed/);
  await refuse('a file', push(o.file, strict.address, { insecure: true }), /not signed/);
  // The trust store of the receiving repository is enforced without `trust`.
  const other = join(tempDir(t), 'other');
  Repository.init(other);
  const otherKey = generateKeys(other);
  const storeDir = join(tempDir(t), 'store');
  Repository.init(storeDir);
  trustKey(storeDir, otherKey.path);
  const store = new Receiver({ repo: storeDir, insecure: true });
  const a = await store.listen('127.0.0.1', 0);
  t.teardown(() => store.close());
  await refuse('another key', push('app', `127.0.0.1:${a.port}`, { repo: o.dir, insecure: true }), /not among the trusted keys/);
  nothingKept(t, strict.dir);
  nothingKept(t, storeDir);
});

test('a signed manifest pushed with other metadata, another name or another image is refused before ACCEPT', async (t) => {
  const o = origin(t);
  const r = await inProcessReceiver(t, { trust: [o.pub] });
  const signed = readManifest(Repository.open(o.dir).resolve('app'))!;
  const frame = { size: 2 << 20, digest: o.app, name: 'app', meta: META, manifest: signed.bytes.toString(), signature: signed.signature };
  const cases: [string, Partial<ImageFrame>, RegExp][] = [
    ['metadata', { meta: { ...META, buildLog: { path: '/x', tail: 'forged' } } }, /metadata differs from the signed metadata/],
    ['name (a sender older than tags)', { name: 'prod' }, /signs tags \["app"\], the push gives \["prod"\]/],
    ['tags', { tags: ['app', 'prod'] }, /signs tags \["app"\], the push gives \["app","prod"\]/],
    ['image', { digest: o.plain, size: 1 << 20 }, /signs image/],
    ['signature', { manifest: signed.bytes.toString().replace('"app"', '"ppa"') }, /bad signature/],
  ];
  for (const [what, change, message] of cases) {
    const c = await RawClient.connect(r.address);
    await c.handshake(undefined, [2, 1]);
    const answer = await c.announce({ ...frame, ...change });
    t.is(answer?.type, FrameType.ERROR, what);
    const err = parseJson(FrameType.ERROR, answer!.payload) as { code: string; message: string };
    t.is(err.code, 'OSFARM_UNTRUSTED', what);
    t.regex(err.message, message, what);
    c.close();
  }
  nothingKept(t, r.dir);
});

test('CLI: receive --trust KEYFILE requires signatures', async (t) => {
  const o = origin(t);
  const dir = join(tempDir(t), 'cli-received');
  const child = await startChild(t, ['receive', '--listen', '127.0.0.1:0', '--insecure', '--trust', o.pub, '--repo', dir]);
  const bad = cliJson(['push', 'plain', child.address, '--repo', o.dir, '--insecure']);
  t.is(bad.result.error?.code, 'OSFARM_UNTRUSTED', bad.stderr);
  const good = cliJson(['push', 'app', child.address, '--repo', o.dir, '--insecure']);
  t.is(good.status, 0, good.stderr);
  t.is(good.result.name, 'app');
});
