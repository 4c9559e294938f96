/**
 * Push over real TCP on loopback: delta transfer, digest groups (protocol 2) and version
 * negotiation, resume after a cut connection, a lying source, authentication, hostile
 * frames and the concurrent-transfer limit. The raw
 * client speaks the protocol with the same frame helpers as osfarm, so it can lie.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { chmodSync, closeSync, existsSync, openSync, readdirSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

import { indexImageSync } from '../src/blocks/index.js';
import { OsfarmError } from '../src/base/errors.js';
import { Repository } from '../src/repo/index.js';
import { native } from '../src/base/native.js';
import {
  FrameType,
  MAGIC,
  blocksHeader,
  digestsPayload,
  groupsPayload,
  header,
  jsonPayload,
  parseJson,
  parseRequest,
} from '../src/transfer/push/frames.js';
import { push } from '../src/transfer/push/push.js';
import { Receiver, type TransferReport } from '../src/transfer/push/receive.js';
import { BS, RawClient, blockDigests } from './helpers/push-client.js';
import { cli, pseudoRandom, tempDir, writeBlocks } from './helpers/tmp.js';

const TOKEN = 'correct horse battery staple';
const CLI_MAIN = join(import.meta.dirname, '..', 'src', 'cli', 'main.ts');

interface Running {
  receiver: Receiver;
  address: string;
  repoPath: string;
  /** Resolves with the next event of that name. */
  next<T>(event: string): Promise<T>;
}

async function startReceiver(
  t: ExecutionContext,
  options: { maxTransfers?: number; token?: string; protocols?: number[]; hash?: 'sha1' | 'sha256'; blockSize?: number } = {},
): Promise<Running> {
  const repoPath = join(tempDir(t), 'repo');
  Repository.init(repoPath, { hash: options.hash, blockSize: options.blockSize });
  const receiver = new Receiver({ repo: repoPath, token: options.token ?? TOKEN, maxTransfers: options.maxTransfers, protocols: options.protocols });
  const addr = await receiver.listen('127.0.0.1', 0);
  t.teardown(() => receiver.close());
  return {
    receiver,
    repoPath,
    address: `127.0.0.1:${addr.port}`,
    next: async <T>(event: string) => (await once(receiver, event))[0] as T,
  };
}

function sha256File(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/** Files under the repository's tmp/ that belong to a push (partial data and its record). */
function pushPartials(repoPath: string): string[] {
  const dir = join(repoPath, 'tmp');
  return existsSync(dir) ? readdirSync(dir).filter((f) => f.startsWith('push-')) : [];
}

/** The receiver's repository shows no image but those listed, on disk or in the catalog. */
function assertOnlyImages(t: ExecutionContext, repoPath: string, digests: string[]): void {
  t.deepEqual(Repository.open(repoPath).list().map((e) => e.digest).sort(), [...digests].sort());
  const dir = join(repoPath, 'images');
  t.deepEqual((existsSync(dir) ? readdirSync(dir) : []).sort(), [...digests].sort());
}

async function codeOf(p: Promise<unknown>): Promise<OsfarmError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(err instanceof OsfarmError)) throw new Error(`expected an OsfarmError, got ${String(err)}`);
  return err;
}

/**
 * A TCP relay to `target` that cuts both connections once `cutAfter` bytes went from the
 * client to the target: a dropped network in the middle of a transfer.
 */
async function cuttingProxy(t: ExecutionContext, target: string, cutAfter: number): Promise<{ address: string; forwarded: () => number }> {
  const [host, port] = target.split(':');
  let forwarded = 0;
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect({ host, port: Number(port) });
    sockets.add(client).add(upstream);
    const cut = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', cut);
    upstream.on('error', cut);
    client.on('close', cut);
    upstream.on('close', cut);
    upstream.on('data', (b: Buffer) => client.write(b));
    client.on('data', (b: Buffer) => {
      forwarded += b.length;
      upstream.write(b);
      if (forwarded >= cutAfter) cut();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return { address: `127.0.0.1:${(server.address() as AddressInfo).port}`, forwarded: () => forwarded };
}

// ----- the tests -----

test('a push sends only the blocks the receiver lacks; the published image is identical and verified', async (t) => {
  const dir = tempDir(t);
  const r = await startReceiver(t);
  // The receiver holds "old": 2048 blocks (8 MiB) and some holes.
  const old = Array.from({ length: 2048 }, (_, i) => (i % 97 === 5 ? 0 : i + 1));
  writeBlocks(join(dir, 'old.img'), old);
  await Repository.open(r.repoPath).add(join(dir, 'old.img'), { name: 'old' });
  // "new": old with three changed runs, a block repeated inside a run, and more holes.
  const fresh = old.slice();
  const changed = new Set<number>();
  for (const [from, len] of [[10, 50], [700, 300], [1900, 148]] as const) {
    for (let i = from; i < from + len; i++) {
      fresh[i] = i % 50 === 0 ? 0 : 100_000 + (i % 250 === 1 ? 1 : i);
      if (fresh[i] !== 0) changed.add(fresh[i]!);
    }
  }
  fresh.push(100_001, 5, 0, 4); // a repeat of a changed block and of two old ones, one more hole
  writeBlocks(join(dir, 'new.img'), fresh);
  const want = indexImageSync(join(dir, 'new.img'));

  const res = await push(join(dir, 'new.img'), r.address, { token: TOKEN, name: 'new' });
  t.is(res.digest, want.digest);
  t.false(res.alreadyPresent);
  t.is(res.blocksSent, changed.size, 'only the distinct blocks the receiver lacks cross the network');
  t.is(res.rawBytesSent, changed.size * BS);
  t.true(res.wireBytesSent < changed.size * BS + fresh.length * 20 + (64 << 10), `${res.wireBytesSent} bytes on the wire`);
  t.is(res.zeroBlocks, fresh.filter((b) => b === 0).length);

  const repo = Repository.open(r.repoPath);
  const entry = repo.resolve('new');
  t.is(entry.digest, want.digest);
  t.is(sha256File(entry.path), sha256File(join(dir, 'new.img')), 'the published image is byte-identical');
  await t.notThrowsAsync(repo.verify(entry.digest));
  t.deepEqual(pushPartials(r.repoPath), [], 'nothing is left in tmp/');

  // The same file again: every block is now in the receiver's repository.
  const again = await push(join(dir, 'new.img'), r.address, { token: TOKEN });
  t.is(again.blocksSent, 0);
  t.is(again.digest, want.digest);
});

test('a receiver with other hashing parameters gets the image hashed its way, from a file or a stored index', async (t) => {
  const dir = tempDir(t);
  const r = await startReceiver(t, { hash: 'sha256', blockSize: 8192 });
  // The source starts hashing with the defaults (sha1, 4 KiB) before it hears the receiver's.
  writeBlocks(join(dir, 'a.img'), Array.from({ length: 3001 }, (_, i) => 40_000 + i));
  const want = indexImageSync(join(dir, 'a.img'), { hash: 'sha256', blockSize: 8192 });
  const res = await push(join(dir, 'a.img'), r.address, { token: TOKEN });
  t.is(res.digest, want.digest);
  t.is(res.blockCount, 1501);
  t.false(res.fromIndex);
  t.is(sha256File(Repository.open(r.repoPath).resolve(want.digest).path), sha256File(join(dir, 'a.img')));

  // An image of a local sha1 repository: its stored index does not fit, so it is hashed.
  const local = join(dir, 'local');
  Repository.init(local);
  writeBlocks(join(dir, 'b.img'), Array.from({ length: 500 }, (_, i) => 50_000 + i));
  await Repository.open(local).add(join(dir, 'b.img'), { name: 'b' });
  const viaRepo = await push('b', r.address, { token: TOKEN, repo: local });
  t.false(viaRepo.fromIndex);
  t.is(viaRepo.digest, indexImageSync(join(dir, 'b.img'), { hash: 'sha256', blockSize: 8192 }).digest);
  // The same image to a sha1 receiver goes from its index, unhashed.
  const sha1 = await startReceiver(t);
  t.true((await push('b', sha1.address, { token: TOKEN, repo: local })).fromIndex);
});

test('a receiver holding the content at another offset gets group digests, not every block digest', async (t) => {
  const dir = tempDir(t);
  const r = await startReceiver(t);
  // The receiver holds "big": 37 blocks of its own, then 6000 blocks, then 2000 more.
  const common = Array.from({ length: 6000 }, (_, i) => 10_000 + i);
  const big = [...Array.from({ length: 37 }, (_, i) => 900_000 + i), ...common, ...Array.from({ length: 2000 }, (_, i) => 20_000 + i)];
  writeBlocks(join(dir, 'big.img'), big);
  await Repository.open(r.repoPath).add(join(dir, 'big.img'), { name: 'big' });
  // "small" holds the same 6000 blocks shifted: 5 new blocks before, 3 after.
  const small = [...Array.from({ length: 5 }, (_, i) => 800_000 + i), ...common, 800_010, 800_011, 800_012];
  writeBlocks(join(dir, 'small.img'), small);

  const res = await push(join(dir, 'small.img'), r.address, { token: TOKEN, name: 'small' });
  t.is(res.protocol, 2);
  t.is(res.blocksSent, 8, 'only the new blocks cross the network');
  const allDigests = small.length * 20;
  t.true(res.digestBytesSent < allDigests / 10, `${res.digestBytesSent} digest bytes where v1 sends ${allDigests}`);
  t.true(res.wireBytesSent < 8 * BS + allDigests / 10 + (8 << 10), `${res.wireBytesSent} bytes on the wire`);
  t.is(res.localBlocks, common.length);
  const entry = Repository.open(r.repoPath).resolve('small');
  t.is(entry.digest, indexImageSync(join(dir, 'small.img')).digest);
  t.is(sha256File(entry.path), sha256File(join(dir, 'small.img')), 'the published image is byte-identical');
});

test('protocol versions are negotiated: a v1 peer still works either way, no common version is refused', async (t) => {
  const dir = tempDir(t);
  const blocks = Array.from({ length: 3000 }, (_, i) => (i % 40 === 3 ? 0 : 30_000 + i));
  writeBlocks(join(dir, 'a.img'), blocks);
  const want = indexImageSync(join(dir, 'a.img')).digest;

  // A v1 source (offers only 1) to a current receiver: every block digest is sent.
  const current = await startReceiver(t);
  const v1 = await push(join(dir, 'a.img'), current.address, { token: TOKEN, protocols: [1] });
  t.is(v1.protocol, 1);
  t.is(v1.digest, want);
  t.true(v1.digestBytesSent >= blocks.length * 20, `${v1.digestBytesSent} digest bytes`);

  // A current source to a v1 receiver.
  const old = await startReceiver(t, { protocols: [1] });
  const down = await push(join(dir, 'a.img'), old.address, { token: TOKEN });
  t.is(down.protocol, 1);
  t.is(down.digest, want);
  t.is(sha256File(Repository.open(old.repoPath).resolve(want).path), sha256File(join(dir, 'a.img')));

  // No version in common: a clear protocol error before any image data.
  const v2only = await startReceiver(t, { protocols: [2] });
  const err = await codeOf(push(join(dir, 'a.img'), v2only.address, { token: TOKEN, protocols: [1] }));
  t.is(err.code, 'OSFARM_PROTOCOL');
  t.regex(err.message, /protocol versions \[1\].*speaks 2/);
  assertOnlyImages(t, v2only.repoPath, []);
});

test('v2 compresses runs through one zstd stream: content repeated across runs costs almost nothing', async (t) => {
  const dir = tempDir(t);
  // 1 MiB (one run) of blocks that each compress to about half alone, repeated 4 times
  // with one byte changed per block so every block is new to the receiver.
  const segment = Array.from({ length: 256 }, (_, i) => {
    const half = pseudoRandom(BS / 2, 7000 + i);
    return Buffer.concat([half, half]);
  });
  const blocks: Buffer[] = [];
  for (let copy = 0; copy < 4; copy++) {
    for (const b of segment) {
      const c = Buffer.from(b);
      c[0] ^= copy;
      blocks.push(c);
    }
  }
  writeFileSync(join(dir, 'r.img'), Buffer.concat(blocks));
  const want = indexImageSync(join(dir, 'r.img')).digest;

  // A fixed level: the adaptive one may step down on a loaded machine, and each step
  // starts a new zstd frame without the earlier runs' history.
  const v2 = await push(join(dir, 'r.img'), (await startReceiver(t)).address, { token: TOKEN, compressLevel: 3 });
  const v1Receiver = await startReceiver(t);
  const v1 = await push(join(dir, 'r.img'), v1Receiver.address, { token: TOKEN, protocols: [1] });
  t.is(v2.protocol, 2);
  t.is(v2.digest, want);
  t.is(v1.digest, want);
  t.is(v2.rawBytesSent, 1024 * BS);
  t.true(v1.encodedBytesSent > v1.rawBytesSent / 3, `v1 compresses each run alone: ${v1.encodedBytesSent} bytes`);
  t.true(v2.encodedBytesSent < v1.encodedBytesSent / 2, `v2 ${v2.encodedBytesSent} bytes, v1 ${v1.encodedBytesSent}`);
  t.is(sha256File(Repository.open(v1Receiver.repoPath).resolve(want).path), sha256File(join(dir, 'r.img')));
});

test('a compress level outside 1–9 is refused before connecting', async (t) => {
  const dir = tempDir(t);
  writeBlocks(join(dir, 'x.img'), [1, 2, 3]);
  for (const compressLevel of [0, 10, 2.5]) {
    const err = await codeOf(push(join(dir, 'x.img'), '127.0.0.1:9', { token: TOKEN, compressLevel }));
    t.is(err.code, 'OSFARM_INVALID_ARGUMENT');
    t.regex(err.message, /compressLevel must be a whole number from 1 to 9/);
  }
});

test('a v2 source that sends digests nobody asked for is disconnected and nothing is kept', async (t) => {
  const r = await startReceiver(t);
  const data = pseudoRandom(300 * BS, 44);
  const client = await RawClient.connect(r.address);
  await client.handshake(TOKEN, [2]);
  await client.image(data, 'unasked');
  const failed = r.next<TransferReport>('transfer-failed');
  const digests = blockDigests(data);
  const grouper = new native.DigestGrouper('sha1');
  const records = Buffer.concat([grouper.push(digests), grouper.finish()]);
  client.send(FrameType.GROUPS, groupsPayload(0, records));
  const need = await client.nextControl();
  t.is(need?.type, FrameType.NEED_DIGESTS, 'an empty repository asks for the digests of every group');
  const runs = parseRequest(need!.payload);
  t.is(runs.reduce((n, run) => n + run.count, 0), 300);
  // Digests from block 1, which no NEED_DIGESTS run starts at.
  client.send(FrameType.DIGESTS, digestsPayload(1, digests.subarray(20, 40)));
  const error = await client.error(t);
  t.is(error.code, 'OSFARM_PROTOCOL');
  t.regex(error.message, /answer no NEED_DIGESTS/);
  t.false((await failed).keptPartial);
  assertOnlyImages(t, r.repoPath, []);
  t.deepEqual(pushPartials(r.repoPath), []);
});

test('groups that resolve to other digests than the source hashed (a collision) fail the image digest; nothing is kept', async (t) => {
  const dir = tempDir(t);
  const r = await startReceiver(t);
  const held = pseudoRandom(200 * BS, 45);
  writeFileSync(join(dir, 'held.img'), held);
  await Repository.open(r.repoPath).add(join(dir, 'held.img'), { name: 'held' });
  // The source's image is other data, but it announces the held image's groups, as a
  // group-digest collision would make the receiver believe.
  const data = pseudoRandom(200 * BS, 46);
  writeFileSync(join(dir, 'data.img'), data);
  const client = await RawClient.connect(r.address);
  await client.handshake(TOKEN, [2]);
  await client.image(data, 'collision');
  const failed = r.next<TransferReport>('transfer-failed');
  const grouper = new native.DigestGrouper('sha1');
  client.send(FrameType.GROUPS, groupsPayload(0, Buffer.concat([grouper.push(blockDigests(held)), grouper.finish()])));
  client.send(FrameType.END, jsonPayload({ digest: indexImageSync(join(dir, 'data.img')).digest }));
  const error = await client.error(t);
  t.is(error.code, 'OSFARM_DIGEST_MISMATCH');
  t.regex(error.message, /nothing was published/);
  t.false((await failed).keptPartial);
  assertOnlyImages(t, r.repoPath, [indexImageSync(join(dir, 'held.img')).digest]);
  t.deepEqual(pushPartials(r.repoPath), []);
});

test('a cut connection leaves nothing visible; the same push again sends only what did not arrive', async (t) => {
  const dir = tempDir(t);
  const r = await startReceiver(t);
  const image = join(dir, 'big.img');
  const blocks = 8192; // 32 MiB, all new to the receiver
  writeBlocks(image, Array.from({ length: blocks }, (_, i) => 500_000 + i));
  const want = indexImageSync(image);

  const proxy = await cuttingProxy(t, r.address, 12 << 20);
  const failed = r.next<TransferReport>('transfer-failed');
  const err = await codeOf(push(image, proxy.address, { token: TOKEN, compress: false }));
  t.is(err.code, 'OSFARM_IO', err.message);
  const report = await failed;
  t.true(report.keptPartial, 'an interrupted push keeps its partial data for a retry');
  t.true(report.receivedBlocks > 0 && report.receivedBlocks < blocks, `${report.receivedBlocks} blocks arrived before the cut`);
  // Meanwhile nothing half-written is an image: no catalog entry, no images/ directory.
  assertOnlyImages(t, r.repoPath, []);
  t.true(pushPartials(r.repoPath).some((f) => f.endsWith('.partial')), 'the partial lives under tmp/');

  const res = await push(image, r.address, { token: TOKEN, compress: false });
  t.is(res.digest, want.digest);
  t.true(res.resumedBlocks >= report.receivedBlocks, `resumed ${res.resumedBlocks} of the ${report.receivedBlocks} received`);
  t.is(res.blocksSent, blocks - res.resumedBlocks, 'only the blocks not yet received are sent again');
  t.true(res.blocksSent < blocks);
  t.is(sha256File(Repository.open(r.repoPath).resolve(want.digest).path), sha256File(image));
  assertOnlyImages(t, r.repoPath, [want.digest]);
  t.deepEqual(pushPartials(r.repoPath), []);
});

test('a block of the receiver\'s own repository damaged on disk is not the source\'s fault: OSFARM_BAD_REPOSITORY, the partial is kept', async (t) => {
  const dir = tempDir(t);
  const r = await startReceiver(t);
  writeBlocks(join(dir, 'held.img'), [1, 2, 3, 4]);
  const held = await Repository.open(r.repoPath).add(join(dir, 'held.img'), { name: 'held' });
  // Disk rot in block 1 of the held image, which the pushed image shares.
  chmodSync(held.path, 0o644);
  const fd = openSync(held.path, 'r+');
  writeSync(fd, Buffer.from('rot'), 0, 3, BS + 17);
  closeSync(fd);
  writeBlocks(join(dir, 'new.img'), [2, 9, 10]);
  const failed = r.next<TransferReport>('transfer-failed');
  const err = await codeOf(push(join(dir, 'new.img'), r.address, { token: TOKEN }));
  t.is(err.code, 'OSFARM_BAD_REPOSITORY', err.message);
  t.regex(err.message, new RegExp(`block 1 of repository image ${held.digest}`));
  const report = await failed;
  t.is(report.error?.code, 'OSFARM_BAD_REPOSITORY');
  t.true(report.keptPartial, 'the blocks the source sent stay for a retry');
  t.true(pushPartials(r.repoPath).some((f) => f.endsWith('.partial')));
  assertOnlyImages(t, r.repoPath, [held.digest]);
});

test('a source that sends a block not matching its digest is disconnected and nothing is kept', async (t) => {
  const r = await startReceiver(t);
  const data = pseudoRandom(64 * BS, 42);
  const client = await RawClient.connect(r.address);
  await client.handshake(TOKEN);
  await client.image(data, 'liar');
  const failed = r.next<TransferReport>('transfer-failed');
  client.send(FrameType.DIGESTS, digestsPayload(0, blockDigests(data)));
  const req = await client.nextControl();
  t.is(req?.type, FrameType.REQUEST);
  const [run] = parseRequest(req!.payload);
  // Right length, wrong bytes in the run's third block.
  const lie = Buffer.from(data.subarray(run!.first * BS, (run!.first + run!.count) * BS));
  lie[2 * BS + 7] ^= 0xff;
  client.send(FrameType.BLOCKS, [blocksHeader(run!.first, run!.count, 0), lie]);
  const error = await client.error(t);
  t.is(error.code, 'OSFARM_DIGEST_MISMATCH');
  t.regex(error.message, new RegExp(`block ${run!.first + 2}\\b`));
  const report = await failed;
  t.is(report.error?.code, 'OSFARM_DIGEST_MISMATCH');
  t.false(report.keptPartial);
  assertOnlyImages(t, r.repoPath, []);
  t.deepEqual(pushPartials(r.repoPath), [], 'a lying source gets nothing kept for resumption');
});

test('a source whose END names another image is refused after its blocks, and nothing is kept', async (t) => {
  const r = await startReceiver(t);
  const data = pseudoRandom(600 * BS, 43); // more than one 1 MiB run
  const client = await RawClient.connect(r.address);
  await client.handshake(TOKEN);
  await client.image(data, 'wrong-end');
  const failed = r.next<TransferReport>('transfer-failed');
  client.send(FrameType.DIGESTS, digestsPayload(0, blockDigests(data)));
  client.send(FrameType.END, jsonPayload({ digest: 'ab'.repeat(20) }));
  // Every block is answered truthfully; only the image digest lies.
  let answered = 0;
  for (;;) {
    const f = await client.nextControl();
    if (f?.type !== FrameType.REQUEST) {
      t.is(f?.type, FrameType.ERROR);
      const e = parseJson(f!.type, f!.payload);
      t.is(e.code, 'OSFARM_DIGEST_MISMATCH');
      t.regex(e.message as string, /nothing was published/);
      break;
    }
    for (const run of parseRequest(f.payload)) {
      client.send(FrameType.BLOCKS, [blocksHeader(run.first, run.count, 0), data.subarray(run.first * BS, (run.first + run.count) * BS)]);
      answered += run.count;
    }
  }
  t.is(answered, 600, 'the receiver asked for every block before judging the image');
  t.false((await failed).keptPartial);
  assertOnlyImages(t, r.repoPath, []);
  t.deepEqual(pushPartials(r.repoPath), []);
});

test('osfarm receive refuses to start without TLS and a token unless --insecure', async (t) => {
  const repo = join(tempDir(t), 'repo');
  const env = { OSFARM_TOKEN: '' };
  const refused = cli(['--repo', repo, 'receive', '--listen', '127.0.0.1:0'], env);
  t.not(refused.status, 0);
  // Neither TLS nor a token: plain TCP must be asked for (docs/trust.md).
  t.regex(refused.stderr, /OSFARM_INVALID_ARGUMENT/);
  t.regex(refused.stderr, /--tls-cert FILE --tls-key FILE, or --insecure/);

  const child = spawn(process.execPath, ['--import', 'tsx', CLI_MAIN, '--json', '--repo', repo, 'receive', '--listen', '127.0.0.1:0', '--insecure'], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.teardown(() => child.kill('SIGKILL'));
  let listening: { port: number } | undefined;
  for await (const line of createInterface({ input: child.stdout })) {
    const e = JSON.parse(line) as { type?: string; port: number };
    if (e.type === 'listening') {
      listening = e;
      break;
    }
  }
  t.truthy(listening, 'receive --insecure starts');
  // A source holding a token does not send to a receiver that asks for none.
  const img = join(tempDir(t), 'a.img');
  writeBlocks(img, [1, 2, 3]);
  const e = await codeOf(push(img, `127.0.0.1:${listening!.port}`, { token: TOKEN }));
  t.is(e.code, 'OSFARM_UNAUTHORIZED');
  t.regex(e.message, /--insecure/);
  const ok = await push(img, `127.0.0.1:${listening!.port}`, { insecure: true });
  t.is(ok.blocksSent, 3);
  child.kill('SIGTERM');
  const [code] = (await once(child, 'exit')) as [number | null];
  t.is(code, 0, 'receive stops cleanly on SIGTERM');
});

test('a wrong token or none is refused before any image data', async (t) => {
  const r = await startReceiver(t);
  const img = join(tempDir(t), 'a.img');
  writeBlocks(img, [1, 2, 3]);
  const refused = r.next<{ error: { code: string; message: string } }>('connection-refused');
  const wrong = await codeOf(push(img, r.address, { token: 'not the token' }));
  t.is(wrong.code, 'OSFARM_UNAUTHORIZED');
  t.regex(wrong.message, /wrong token/);
  t.is((await refused).error.code, 'OSFARM_UNAUTHORIZED');
  const none = await codeOf(push(img, r.address, {}));
  t.is(none.code, 'OSFARM_UNAUTHORIZED');
  t.regex(none.message, /requires a token/);
  assertOnlyImages(t, r.repoPath, []);
});

test('an oversized frame and garbage bytes are disconnected with a clear error', async (t) => {
  const r = await startReceiver(t);
  // Before authentication the limit is 64 KiB: a 1 MiB HELLO is refused from its header.
  const big = await RawClient.connect(r.address);
  big.write(Buffer.concat([MAGIC, header(FrameType.HELLO, 1 << 20)]));
  const e1 = await big.error(t);
  t.is(e1.code, 'OSFARM_PROTOCOL');
  t.regex(e1.message, /HELLO frame of 1048576 bytes exceeds the limit of 65536 bytes/);

  // After authentication, above the announced 4 MiB (the header alone, no payload follows).
  const authed = await RawClient.connect(r.address);
  await authed.handshake(TOKEN);
  authed.write(header(FrameType.BLOCKS, 0xffff_fff0));
  const e2 = await authed.error(t);
  t.is(e2.code, 'OSFARM_PROTOCOL');
  t.regex(e2.message, /exceeds the limit of 4194304 bytes/);

  const garbage = await RawClient.connect(r.address);
  garbage.write(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
  const e3 = await garbage.error(t);
  t.is(e3.code, 'OSFARM_PROTOCOL');
  t.regex(e3.message, /does not speak the osfarm push protocol/);

  // An unknown mandatory frame type after the handshake.
  const odd = await RawClient.connect(r.address);
  await odd.handshake(TOKEN);
  odd.send(0x42, Buffer.from('??'));
  const e4 = await odd.error(t);
  t.is(e4.code, 'OSFARM_PROTOCOL');
  assertOnlyImages(t, r.repoPath, []);
});

test('the concurrent-transfer limit is enforced and released', async (t) => {
  const r = await startReceiver(t, { maxTransfers: 1 });
  const img = join(tempDir(t), 'a.img');
  writeBlocks(img, [7, 8, 9, 0]);
  // One transfer holds the only slot (announced, then silent).
  const holder = await RawClient.connect(r.address);
  await holder.handshake(TOKEN);
  await holder.image(pseudoRandom(16 * BS, 3), 'holder');

  const busy = await codeOf(push(img, r.address, { token: TOKEN }));
  t.is(busy.code, 'OSFARM_LOCKED');
  t.regex(busy.message, /busy/);

  const released = r.next('transfer-failed');
  holder.close();
  await released;
  const ok = await push(img, r.address, { token: TOKEN });
  t.is(ok.blocksSent, 3);
});
