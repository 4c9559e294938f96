/**
 * What an attack run found in the push receiver (issue 17), against `osfarm receive` run
 * as a child process so its descriptors can be counted in /proc: every way a transfer can
 * fail closes what it opened (no deleted partial held open), hostile frames get
 * OSFARM_PROTOCOL, and a bad image name is refused before any data is sent.
 */
import test, { type ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { native } from '../src/base/native.js';
import { Repository } from '../src/repo/index.js';
import { FrameType, blocksHeader, digestsPayload, groupsPayload, jsonPayload, parseJson, parseRequest } from '../src/transfer/push/frames.js';
import { push } from '../src/transfer/push/push.js';
import { BS, RawClient, blockDigests, openFiles, settledFiles, startChild, type ChildServer } from './helpers/push-client.js';
import { pseudoRandom, tempDir } from './helpers/tmp.js';

const CLI_MAIN = join(import.meta.dirname, '..', 'src', 'cli', 'main.ts');

async function receiver(t: ExecutionContext): Promise<ChildServer & { repoPath: string }> {
  const repoPath = join(tempDir(t, 'osfarm-reliability-'), 'repo');
  Repository.init(repoPath);
  const r = await startChild(t, ['--repo', repoPath, 'receive', '--listen', '127.0.0.1:0', '--insecure']);
  return { ...r, repoPath };
}

/** The file stem of a push's partial data for a resume key (crates/osfarm-core/src/repo/stream.rs). */
function pushStem(key: string): string {
  return `push-${createHash('sha256').update(`osfarm push resume key\0${key}`).digest('hex').slice(0, 40)}`;
}

function tmpFiles(repoPath: string): string[] {
  const dir = join(repoPath, 'tmp');
  return existsSync(dir) ? readdirSync(dir).sort() : [];
}

/** Answers every REQUEST truthfully until the receiver ends the connection; the frame it ended with. */
async function answerAll(c: RawClient, data: Buffer): Promise<Record<string, unknown> | undefined> {
  for (;;) {
    const f = await c.nextControl();
    if (!f) return undefined;
    if (f.type === FrameType.ERROR || f.type === FrameType.DONE) return { type: f.type, ...parseJson(f.type, f.payload) };
    if (f.type !== FrameType.REQUEST) continue;
    for (const run of parseRequest(f.payload)) {
      c.send(FrameType.BLOCKS, [blocksHeader(run.first, run.count, 0), data.subarray(run.first * BS, (run.first + run.count) * BS)]);
    }
  }
}

/** A v1 session up to the first REQUEST: digests of all of `data` sent. */
async function requested(address: string, data: Buffer, resumeKey?: string): Promise<{ c: RawClient; first: number; count: number }> {
  const c = await RawClient.connect(address);
  await c.handshake(undefined);
  await c.image(data, resumeKey);
  c.send(FrameType.DIGESTS, digestsPayload(0, blockDigests(data)));
  const req = await c.nextControl();
  if (req?.type !== FrameType.REQUEST) throw new Error('no REQUEST');
  const [run] = parseRequest(req.payload);
  return { c, first: run!.first, count: run!.count };
}

/** Each way a transfer can fail after ACCEPT; each returns once the receiver ended it. */
const failures: Record<string, (address: string, data: Buffer, key?: string) => Promise<void>> = {
  'a lying block': async (address, data, key) => {
    const { c, first, count } = await requested(address, data, key);
    const lie = Buffer.from(data.subarray(first * BS, (first + count) * BS));
    lie[BS + 3] ^= 1;
    c.send(FrameType.BLOCKS, [blocksHeader(first, count, 0), lie]);
    await answerAll(c, data);
  },
  'a wrong END digest': async (address, data, key) => {
    const { c, first, count } = await requested(address, data, key);
    c.send(FrameType.BLOCKS, [blocksHeader(first, count, 0), data.subarray(first * BS, (first + count) * BS)]);
    c.send(FrameType.END, jsonPayload({ digest: 'ab'.repeat(20) }));
    await answerAll(c, data);
  },
  'duplicate BLOCKS': async (address, data, key) => {
    const { c, first, count } = await requested(address, data, key);
    const run = [blocksHeader(first, count, 0), data.subarray(first * BS, (first + count) * BS)];
    c.send(FrameType.BLOCKS, run);
    c.send(FrameType.BLOCKS, run);
    await answerAll(c, data);
  },
  'unrequested BLOCKS': async (address, data, key) => {
    const { c } = await requested(address, data, key);
    c.send(FrameType.BLOCKS, [blocksHeader(3, 1, 0), data.subarray(3 * BS, 4 * BS)]);
    await answerAll(c, data);
  },
  'an unknown frame after ACCEPT': async (address, data, key) => {
    const { c } = await requested(address, data, key);
    c.send(0x42, Buffer.from('??'));
    await answerAll(c, data);
  },
  'the source\'s own ERROR': async (address, data, key) => {
    const { c, first, count } = await requested(address, data, key);
    c.send(FrameType.BLOCKS, [blocksHeader(first, count, 0), data.subarray(first * BS, (first + count) * BS)]);
    c.send(FrameType.ERROR, jsonPayload({ code: 'OSFARM_ABORTED', message: 'the sender cancelled the push' }));
    await answerAll(c, data);
  },
  'a cut connection': async (address, data, key) => {
    const { c, first, count } = await requested(address, data, key);
    c.send(FrameType.BLOCKS, [blocksHeader(first, count, 0), data.subarray(first * BS, (first + count) * BS)]);
    await new Promise((r) => setTimeout(r, 100));
    c.close();
  },
  'v2 digests nobody asked for': async (address, data, key) => {
    const c = await RawClient.connect(address);
    await c.handshake(undefined, [2]);
    await c.image(data, key);
    const digests = blockDigests(data);
    const grouper = new native.DigestGrouper('sha1');
    c.send(FrameType.GROUPS, groupsPayload(0, Buffer.concat([grouper.push(digests), grouper.finish()])));
    await c.nextControl(); // NEED_DIGESTS
    c.send(FrameType.DIGESTS, digestsPayload(1, digests.subarray(20, 40)));
    await answerAll(c, data);
  },
};

test('every failed transfer closes what it opened: no descriptor and no deleted partial stays open in the receiver', async (t) => {
  const r = await receiver(t);
  const dir = tempDir(t, 'osfarm-reliability-');
  // Warm up (thread pools, the repository's files) with one good push, then count.
  const good = join(dir, 'good.img');
  writeFileSync(good, pseudoRandom(64 * BS, 1));
  await push(good, r.address, { insecure: true });
  await new Promise((res) => setTimeout(res, 300));
  const baseline = openFiles(r.pid).count;
  t.log(`the receiver holds ${baseline} descriptors after one good push`);

  const leaks: string[] = [];
  let seed = 100;
  for (const [kind, fail] of Object.entries(failures)) {
    for (const key of ['resumable', undefined]) {
      const data = pseudoRandom(40 * BS, seed++);
      const from = r.events.length;
      await fail(r.address, data, key && `${kind} ${seed}`);
      const report = await r.waitFor('transfer-failed', from);
      const now = await settledFiles(r.pid, baseline);
      const what = `${kind} (${key ? 'resumable' : 'private'}, ${(report.error as { code: string }).code}: ${(report.error as { message: string }).message})`;
      if (now.count > baseline || now.deleted.length > 0) {
        leaks.push(`${what}: ${now.count} descriptors (baseline ${baseline}), ${now.deleted.length} deleted files open`);
        t.log(`${what}: deleted but open: ${now.deleted.join(', ')}`);
      }
      // A partial is kept (closed, on disk) only when the failure was not the source's fault.
      if (key) {
        const stem = pushStem(`${kind} ${seed}`);
        t.is(tmpFiles(r.repoPath).includes(`${stem}.partial`), report.keptPartial === true, `${what}: kept ${String(report.keptPartial)}`);
      }
    }
  }
  t.deepEqual(leaks, [], leaks.join('\n'));
  // What was kept for resumption is on disk, closed and unlocked: pushing again resumes.
  const kept = tmpFiles(r.repoPath).filter((f) => f.endsWith('.partial'));
  t.is(kept.length, 2, `the two interrupted resumable attempts keep their partial: ${kept.join(', ')}`);
  t.deepEqual(Repository.open(r.repoPath).list().length, 1, 'only the good image is published');
});

test('hostile GROUPS and DIGESTS frames are protocol errors, not internal ones', async (t) => {
  const r = await receiver(t);
  const data = pseudoRandom(40 * BS, 7);
  const digests = blockDigests(data);
  const grouper = new native.DigestGrouper('sha1');
  const records = Buffer.concat([grouper.push(digests), grouper.finish()]);

  const cases: [string, number[], (c: RawClient) => void, RegExp][] = [
    ['v1 digests past the end', [1], (c) => c.send(FrameType.DIGESTS, digestsPayload(0, Buffer.concat([digests, digests.subarray(0, 40)]))), /40|42|blocks/],
    ['v1 digests with a gap', [1], (c) => c.send(FrameType.DIGESTS, digestsPayload(5, digests.subarray(100))), /block 5|block 0/],
    ['v2 GROUPS with a gap', [2], (c) => c.send(FrameType.GROUPS, groupsPayload(3, records)), /GROUPS from block 3/],
    ['v2 GROUPS with a zero count', [2], (c) => c.send(FrameType.GROUPS, groupsPayload(0, Buffer.concat([Buffer.from([0, 0]), records.subarray(2, 22)]))), /group of 0 blocks \(1 to 256/],
    ['v2 GROUPS with a count above 256', [2], (c) => c.send(FrameType.GROUPS, groupsPayload(0, Buffer.concat([Buffer.from([1, 1]), records.subarray(2, 22)]))), /group of 257 blocks/],
    ['v2 GROUPS past the end', [2], (c) => c.send(FrameType.GROUPS, groupsPayload(0, Buffer.concat([records, records]))), /more than the image/],
    ['v2 GROUPS records cut short', [2], (c) => c.send(FrameType.GROUPS, groupsPayload(0, records.subarray(0, 7))), /record|bytes/],
  ];
  for (const [what, protocols, send, message] of cases) {
    const c = await RawClient.connect(r.address);
    await c.handshake(undefined, protocols);
    await c.image(data, what);
    send(c);
    const e = await c.error(t);
    t.is(e.code, 'OSFARM_PROTOCOL', `${what}: ${e.message}`);
    t.regex(e.message, message, what);
  }
});

test('an image name with control characters is refused before ACCEPT, before any data', async (t) => {
  const r = await receiver(t);
  for (const name of ['bad\nname', 'tab\there', ' padded', '']) {
    const c = await RawClient.connect(r.address);
    await c.handshake(undefined);
    const f = await c.announce({ size: 40 * BS, name, resumeKey: `name ${name}` });
    t.is(f?.type, FrameType.ERROR, JSON.stringify(name));
    const e = parseJson(f!.type, f!.payload);
    t.is(e.code, 'OSFARM_INVALID_ARGUMENT', `${JSON.stringify(name)}: ${String(e.message)}`);
    t.regex(String(e.message), /image name/);
  }
  // osfarm push gets the same answer.
  const img = join(tempDir(t), 'a.img');
  writeFileSync(img, pseudoRandom(4 * BS, 2));
  const err = await push(img, r.address, { insecure: true, name: 'x\u0007y' }).then(
    () => undefined,
    (e: { code: string }) => e,
  );
  t.is(err?.code, 'OSFARM_INVALID_ARGUMENT');
  t.deepEqual(tmpFiles(r.repoPath).filter((f) => f.startsWith('push-')), [], 'nothing was started');
});

test('numeric options of receive, serve and pull refuse out-of-range values instead of wrapping or overflowing', (t) => {
  const repo = join(tempDir(t, 'osfarm-reliability-'), 'repo');
  Repository.init(repo);
  const huge = '99999999999999999999';
  const cases: [string[], RegExp][] = [
    [['receive', '--listen', '127.0.0.1:0', '--insecure', '--idle-timeout', huge], /--idle-timeout: '9+' is not a whole number from 1 to 86400/],
    [['receive', '--listen', '127.0.0.1:0', '--insecure', '--idle-timeout', '0'], /--idle-timeout/],
    [['receive', '--listen', '127.0.0.1:0', '--insecure', '--max-transfers', huge], /--max-transfers/],
    [['serve', '--listen', '127.0.0.1:0', '--max-requests', huge], /--max-requests/],
    [['pull', 'http://127.0.0.1:1/images/x', '--parallel', huge], /--parallel/],
    [['pull', 'http://127.0.0.1:1/images/x', '--retries', '1e3'], /--retries/],
    [['pull', 'http://127.0.0.1:1/images/x', '--max-request', '999999999999999999999999G'], /--max-request/],
    [['pull', 'http://127.0.0.1:1/images/x', '--max-request', '0'], /--max-request/],
  ];
  for (const [args, message] of cases) {
    // A server that accepted the value would run until killed: a timeout tells.
    const r = spawnSync(process.execPath, ['--import', 'tsx', CLI_MAIN, '--repo', repo, ...args], { encoding: 'utf8', timeout: 20_000 });
    t.not(r.status, 0, args.join(' '));
    t.not(r.status, null, `${args.join(' ')} was accepted and ran until killed`);
    t.regex(r.stderr, /OSFARM_INVALID_ARGUMENT/, args.join(' '));
    t.regex(r.stderr, message, args.join(' '));
  }
});
