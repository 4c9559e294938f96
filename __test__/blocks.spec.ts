import test from 'ava';
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { createHash } from 'node:crypto';

import { compare, compareSync, indexImage, indexImageSync, readIndex, OsfarmError } from '../src/index.js';
import { cliJson, cli, tempDir, writeBlocks, pseudoRandom } from './helpers/tmp.js';

test('indexImage hashes every block and writes a valid index', async (t) => {
  const dir = tempDir(t);
  const img = join(dir, 'a.img');
  writeBlocks(img, [1, 2, 0, 3, 0]);
  const events: number[] = [];
  const info = await indexImage(img, { output: join(dir, 'a.osfi'), onProgress: (e) => events.push(e.done) });
  t.is(info.blockCount, 5);
  t.is(info.zeroBlocks, 2);
  t.is(info.imageSize, 5 * 4096);
  t.is(info.hash, 'sha1');
  t.is(info.indexSize, 64 + 5 * 20);
  t.regex(info.digest, /^[0-9a-f]{40}$/);
  t.true(events.length > 0 && events[events.length - 1] === 5 * 4096, `progress events ${events}`);
  // The index on disk holds exactly SHA-1 of each non-zero block, in order.
  const bytes = readFileSync(join(dir, 'a.osfi'));
  const data = readFileSync(img);
  const sha1 = (b: Buffer) => createHash('sha1').update(b).digest();
  t.deepEqual(bytes.subarray(64, 84), sha1(data.subarray(0, 4096)));
  t.deepEqual(bytes.subarray(64 + 40, 64 + 60), Buffer.alloc(20));
  t.deepEqual(readIndex(join(dir, 'a.osfi')), { ...info, indexPath: join(dir, 'a.osfi') });
  const { indexPath: _, ...rest } = info;
  t.deepEqual(indexImageSync(img), rest);
});

test('sha256 and other block sizes change the digest; bad parameters are refused', async (t) => {
  const dir = tempDir(t);
  const img = join(dir, 'a.img');
  writeFileSync(img, pseudoRandom(100_000, 1));
  const a = await indexImage(img);
  const b = await indexImage(img, { hash: 'sha256', blockSize: 512 });
  t.is(b.blockCount, Math.ceil(100_000 / 512));
  t.regex(b.digest, /^[0-9a-f]{64}$/);
  t.not(a.digest, b.digest);
  for (const blockSize of [100, 256, 3000, 2 << 20]) {
    const err = await t.throwsAsync(indexImage(img, { blockSize }), { instanceOf: OsfarmError });
    t.is(err?.code, 'OSFARM_INVALID_ARGUMENT');
  }
  const err = await t.throwsAsync(indexImage(img, { hash: 'md5' as 'sha1' }));
  t.is((err as OsfarmError).code, 'OSFARM_INVALID_ARGUMENT');
  const missing = await t.throwsAsync(indexImage(join(dir, 'nope')));
  t.is((missing as OsfarmError).code, 'OSFARM_NOT_FOUND');
  t.regex(missing!.message, /nope/);
});

test('a corrupt, truncated or lying index is refused with OSFARM_BAD_INDEX', async (t) => {
  const dir = tempDir(t);
  const img = join(dir, 'a.img');
  writeBlocks(img, [1, 2, 3, 4]);
  const good = join(dir, 'good.osfi');
  await indexImage(img, { output: good });
  const bytes = readFileSync(good);
  const variants: Record<string, Buffer> = {
    empty: Buffer.alloc(0),
    'short header': bytes.subarray(0, 30),
    'truncated digests': bytes.subarray(0, bytes.length - 7),
    'trailing garbage': Buffer.concat([bytes, Buffer.from('x')]),
    'flipped digest bit': Buffer.from(bytes.map((b, i) => (i === 70 ? b ^ 1 : b))),
    'bad magic': Buffer.concat([Buffer.from('NOTANIDX'), bytes.subarray(8)]),
  };
  const lying = Buffer.from(bytes);
  lying.writeBigUInt64LE(1n << 50n, 16); // image length
  lying.writeBigUInt64LE((1n << 50n) / 4096n, 24); // matching block count: 2^38 digests claimed
  variants['huge claimed size'] = lying;
  const wrongCount = Buffer.from(bytes);
  wrongCount.writeBigUInt64LE(99n, 24);
  variants['count not matching length'] = wrongCount;
  for (const [name, data] of Object.entries(variants)) {
    const p = join(dir, `${name}.osfi`);
    writeFileSync(p, data);
    const err = t.throws(() => readIndex(p), undefined, name);
    t.is((err as OsfarmError).code, 'OSFARM_BAD_INDEX', `${name}: ${err?.message}`);
    t.true(err!.message.includes(p), `${name}: message names the file`);
  }
});

test('compare counts common non-zero blocks both ways, from images or indexes', async (t) => {
  const dir = tempDir(t);
  const a = join(dir, 'a.img');
  const b = join(dir, 'b.img');
  writeBlocks(a, [1, 2, 3, 4, 0, 0]); // 4 non-zero
  writeBlocks(b, [1, 2, 9, 0]); // 3 non-zero, 2 of them in A
  const r = await compare(a, b);
  t.is(r.a.blocks, 6);
  t.is(r.a.zeroBlocks, 2);
  t.is(r.b.blocksInOther, 2);
  t.is(r.a.blocksInOther, 2);
  t.is(r.b.shareInOther, 2 / 3);
  t.is(r.a.shareInOther, 2 / 4);
  await indexImage(a, { output: join(dir, 'a.osfi'), blockSize: 8192 });
  // An index fixes the parameters: B is hashed at 8 KiB to match it.
  const r2 = compareSync(join(dir, 'a.osfi'), b);
  t.is(r2.blockSize, 8192);
  t.is(r2.b.blocksInOther, 1); // only the first 8 KiB block (1,2) is shared
  await indexImage(b, { output: join(dir, 'b.osfi'), hash: 'sha256' });
  const err = await t.throwsAsync(compare(join(dir, 'a.osfi'), join(dir, 'b.osfi')));
  t.is((err as OsfarmError).code, 'OSFARM_MISMATCH');
});

test('an aborted signal cancels indexing', async (t) => {
  const dir = tempDir(t);
  const img = join(dir, 'big.img');
  writeFileSync(img, pseudoRandom(64 << 20, 5));
  const ac = new AbortController();
  ac.abort();
  const err = await t.throwsAsync(indexImage(img, { signal: ac.signal, output: join(dir, 'big.osfi') }), { instanceOf: OsfarmError });
  t.is((err as OsfarmError).code, 'OSFARM_ABORTED');
  t.false(existsSync(join(dir, 'big.osfi')), 'no index is written');
  // Aborted once the native task has started.
  const running = new AbortController();
  const pending = indexImage(img, { signal: running.signal, output: join(dir, 'big.osfi') });
  running.abort();
  const late = await t.throwsAsync(pending, { instanceOf: OsfarmError });
  t.is((late as OsfarmError).code, 'OSFARM_ABORTED');
  t.false(existsSync(join(dir, 'big.osfi')), 'no index is written');
});

test('CLI: index and compare, human and --json, with clear errors', (t) => {
  const dir = tempDir(t);
  const a = join(dir, 'a.img');
  const b = join(dir, 'b.img');
  writeBlocks(a, [1, 2, 3, 4]);
  writeBlocks(b, [1, 5]);
  const idx = cliJson(['index', a, '-o', join(dir, 'a.osfi')]);
  t.is(idx.status, 0, idx.stderr);
  t.is(idx.result.blockCount, 4);
  t.true(existsSync(join(dir, 'a.osfi')));
  const human = cli(['compare', join(dir, 'a.osfi'), b]);
  t.is(human.status, 0, human.stderr);
  t.regex(human.stdout, /50\.0 % in A/);
  const cmp = cliJson(['compare', a, b]);
  t.is(cmp.result.b.shareInOther, 0.5);
  const bad = cliJson(['index', join(dir, 'missing.img')]);
  t.is(bad.status, 1);
  t.is(bad.result.error.code, 'OSFARM_NOT_FOUND');
  const usage = cli(['index']);
  t.is(usage.status, 2);
  t.regex(usage.stderr, /osfarm index takes 1 operand, got 0/);
  const unknown = cli(['frobnicate']);
  t.is(unknown.status, 2);
  t.regex(unknown.stderr, /unknown command/);
});
