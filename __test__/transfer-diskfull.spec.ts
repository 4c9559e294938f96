/**
 * A repository on a small, real file system (a 64 MiB ext4 on a loop device): an image
 * that cannot fit is refused at once with both numbers, and a transfer that fills the
 * disk fails with OSFARM_IO and gives the space back at once (issue 17, bug 3) — for a
 * push into `osfarm receive`, a pull, and `repo add`.
 */
import test, { type ExecutionContext } from 'ava';
import { existsSync, readdirSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { OsfarmError } from '../src/base/errors.js';
import { Repository } from '../src/repo/index.js';
import { pull } from '../src/transfer/http/pull.js';
import { createPullHandler, listenHttp } from '../src/transfer/http/serve.js';
import { FrameType, blocksHeader, digestsPayload, parseJson, parseRequest } from '../src/transfer/push/frames.js';
import { push } from '../src/transfer/push/push.js';
import { loopAvailable, loopFs } from './helpers/loopfs.js';
import { BS, RawClient, blockDigests, settledFiles, startChild } from './helpers/push-client.js';
import { pseudoRandom, tempDir } from './helpers/tmp.js';

const MiB = 1 << 20;
const canLoop = loopAvailable();
const loopTest = canLoop ? test.serial : test.skip;

function free(path: string): number {
  const s = statfsSync(path);
  return s.bavail * s.bsize;
}

function tmpFiles(repoPath: string): string[] {
  const dir = join(repoPath, 'tmp');
  return existsSync(dir) ? readdirSync(dir) : [];
}

/** A repository on a fresh 64 MiB ext4. */
function smallRepo(t: ExecutionContext): { mnt: string; repoPath: string } {
  const mnt = loopFs(t, 'ext4', 64, 'osfarm-reliability');
  const repoPath = join(mnt, 'repo');
  Repository.init(repoPath);
  return { mnt, repoPath };
}

async function failure(p: Promise<unknown>): Promise<OsfarmError> {
  const e = await p.then(() => undefined, (err: unknown) => err);
  if (!(e instanceof OsfarmError)) throw new Error(`expected an OsfarmError, got ${String(e)}`);
  return e;
}

/** Adds a `mib` MiB image of fresh data to `repoPath`: the proof that the space is free. */
async function addFits(t: ExecutionContext, repoPath: string, mib: number, seed: number): Promise<void> {
  const img = join(tempDir(t, 'osfarm-reliability-'), 'fits.img');
  writeFileSync(img, pseudoRandom(mib * MiB, seed));
  const e = await Repository.open(repoPath).add(img, { name: `fits-${seed}` });
  t.is(e.size, mib * MiB);
}

loopTest('a push that cannot fit is refused at once; one that fills the disk fails with OSFARM_IO and gives the space back', async (t) => {
  const { mnt, repoPath } = smallRepo(t);
  const r = await startChild(t, ['--repo', repoPath, 'receive', '--listen', '127.0.0.1:0', '--insecure']);
  const dir = tempDir(t, 'osfarm-reliability-');
  const start = free(mnt);
  t.log(`${(start / MiB).toFixed(1)} MiB free on the 64 MiB ext4`);

  // 1. Too big: refused from IMAGE, before any data, with both numbers.
  const big = join(dir, 'big.img');
  writeFileSync(big, pseudoRandom(100 * MiB, 1));
  const refused = await failure(push(big, r.address, { insecure: true }));
  t.is(refused.code, 'OSFARM_IO', refused.message);
  t.regex(refused.message, /needs 10\d\.\d MiB of space .* only \d+\.\d MiB free/);
  t.deepEqual(tmpFiles(repoPath), [], 'nothing was created');

  // 2. Fits when announced, then someone else fills the disk during the transfer.
  const data = pseudoRandom(40 * MiB, 2);
  const c = await RawClient.connect(r.address);
  await c.handshake(undefined);
  await c.image(data, 'filled');
  const filler = join(mnt, 'filler');
  writeFileSync(filler, pseudoRandom(free(mnt) - 25 * MiB, 3));
  const from = r.events.length;
  c.send(FrameType.DIGESTS, digestsPayload(0, blockDigests(data)));
  let error: Record<string, unknown> | undefined;
  while (!error) {
    const f = await c.nextControl();
    if (!f) break;
    if (f.type === FrameType.ERROR) error = parseJson(f.type, f.payload);
    if (f.type !== FrameType.REQUEST) continue;
    for (const run of parseRequest(f.payload)) {
      c.send(FrameType.BLOCKS, [blocksHeader(run.first, run.count, 0), data.subarray(run.first * BS, (run.first + run.count) * BS)]);
    }
  }
  t.is(error?.code, 'OSFARM_IO', String(error?.message));
  t.regex(String(error?.message), /file system is full/);
  const report = await r.waitFor('transfer-failed', from);
  t.false(report.keptPartial, 'a partial that filled the disk is not kept');
  // At once: no partial on disk, none held open (once the last write returns), the space is back.
  t.deepEqual(tmpFiles(repoPath), []);
  t.deepEqual((await settledFiles(r.pid)).deleted, []);
  t.true(free(mnt) > 24 * MiB, `${(free(mnt) / MiB).toFixed(1)} MiB free after the failure`);
  await addFits(t, repoPath, 20, 4);
  rmSync(filler);
});

loopTest('a pull that cannot fit is refused at once; one that fills the disk fails with OSFARM_IO and gives the space back', async (t) => {
  const { mnt, repoPath } = smallRepo(t);
  const origin = join(tempDir(t, 'osfarm-reliability-'), 'origin');
  Repository.init(origin);
  const src = tempDir(t, 'osfarm-reliability-');
  writeFileSync(join(src, 'big.img'), pseudoRandom(100 * MiB, 11));
  writeFileSync(join(src, 'mid.img'), pseudoRandom(40 * MiB, 12));
  const o = Repository.open(origin);
  const bigImage = await o.add(join(src, 'big.img'), { name: 'big' });
  const midImage = await o.add(join(src, 'mid.img'), { name: 'mid' });
  const { server, address } = await listenHttp({ host: '127.0.0.1', port: 0, handlers: [createPullHandler({ repo: origin })] });
  t.teardown(() => server.close());
  const base = `http://127.0.0.1:${address.port}/images`;

  const refused = await failure(pull(`${base}/${bigImage.digest}`, { repo: repoPath }));
  t.is(refused.code, 'OSFARM_IO', refused.message);
  t.regex(refused.message, /needs 10\d\.\d MiB of space .* only \d+\.\d MiB free/);
  t.deepEqual(tmpFiles(repoPath), []);

  const filler = join(mnt, 'filler');
  let filled = false;
  const e = await failure(
    pull(`${base}/${midImage.digest}`, {
      repo: repoPath,
      retries: 0,
      onEvent: (p) => {
        // Before the first request: someone else takes all but 25 MiB.
        if (p.type === 'progress' && p.phase === 'fetch' && !filled) {
          filled = true;
          writeFileSync(filler, pseudoRandom(free(mnt) - 25 * MiB, 13));
        }
      },
    }),
  );
  t.true(filled);
  t.is(e.code, 'OSFARM_IO', e.message);
  t.regex(e.message, /file system is full/);
  t.deepEqual(tmpFiles(repoPath), [], 'the partial and its record are gone');
  t.true(free(mnt) > 24 * MiB, `${(free(mnt) / MiB).toFixed(1)} MiB free after the failure`);
  await addFits(t, repoPath, 20, 14);
  // With room again, the same pull works.
  rmSync(filler);
  await Repository.open(repoPath).remove('fits-14');
  const ok = await pull(`${base}/${midImage.digest}`, { repo: repoPath });
  t.is(ok.digest, midImage.digest);
});

loopTest('repo add that fills the disk fails with OSFARM_IO and leaves nothing behind', async (t) => {
  const { mnt, repoPath } = smallRepo(t);
  const img = join(tempDir(t, 'osfarm-reliability-'), 'a.img');
  writeFileSync(img, pseudoRandom(40 * MiB, 21));
  const filler = join(mnt, 'filler');
  writeFileSync(filler, pseudoRandom(free(mnt) - 25 * MiB, 22));
  const e = await failure(Repository.open(repoPath).add(img));
  t.is(e.code, 'OSFARM_IO', e.message);
  t.deepEqual(tmpFiles(repoPath), []);
  t.true(free(mnt) > 24 * MiB);
  await addFits(t, repoPath, 20, 23);
});
