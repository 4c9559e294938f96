/**
 * A repository that stores each block once, on real file systems made by the test (loop
 * files): on xfs (reflink=1) and btrfs, images added, received through a push, or filled
 * before and then `repo dedup`ed take about their unique bytes on the device — measured by
 * the file system's own count of used blocks (statfs), not by osfarm — and still read back
 * byte for byte; a holder damaged on disk spreads to no other image and `repo dedup` names
 * it; on ext4 nothing is shared and `repo dedup` says why.
 */
import { execFileSync } from 'node:child_process';
import { closeSync, openSync, readFileSync, statfsSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';

import test, { type ExecutionContext } from 'ava';

import { push, Receiver, Repository } from '../src/index.js';
import { loopAvailable, loopFs } from './helpers/loopfs.js';
import { cliJson, pseudoRandom, tempDir } from './helpers/tmp.js';

const MiB = 2 ** 20;
const BLOCKS = 4096; // 16 MiB images

/** Three images: a base, one with 2 % of its blocks changed, one more with another 2 % and a tail. */
function images(dir: string): { files: string[]; unique: number } {
  const a = pseudoRandom(BLOCKS * 4096, 1);
  const b = Buffer.from(a);
  for (let i = 0; i < BLOCKS; i += 50) pseudoRandom(4096, 100 + i).copy(b, i * 4096);
  const c = Buffer.concat([b, pseudoRandom(40 * 4096, 7), Buffer.alloc(64 * 4096)]);
  for (let i = 25; i < BLOCKS; i += 50) pseudoRandom(4096, 900 + i).copy(c, i * 4096);
  const files = ['a.img', 'b.img', 'c.img'].map((n) => join(dir, n));
  [a, b, c].forEach((data, i) => writeFileSync(files[i]!, data));
  // Distinct non-zero blocks: a, b's changed blocks (0, 50, …), c's (25, 75, …) and its tail.
  const changedB = Math.ceil(BLOCKS / 50);
  const changedC = Math.ceil((BLOCKS - 25) / 50);
  return { files, unique: (BLOCKS + changedB + changedC + 40) * 4096 };
}

/** Bytes in use on the file system at `dir`, as it counts them. */
function used(dir: string): number {
  execFileSync('sync', ['-f', dir]);
  const s = statfsSync(dir);
  return (s.blocks - s.bfree) * s.bsize;
}

function cli(args: string[]): { status: number | null; json: any; stderr: string } {
  const { status, result, stderr } = cliJson(args);
  return { status, json: result, stderr };
}

/** Every file reads back unchanged from some image of the repository. */
function sameContent(t: ExecutionContext, repo: Repository, files: string[]): void {
  const held = repo.list().map((e) => readFileSync(e.path));
  for (const f of files) {
    const data = readFileSync(f);
    t.true(held.some((h) => h.equals(data)), `${f} reads back unchanged`);
  }
}

const reflinkFs = ['xfs', 'btrfs'] as const;

for (const kind of reflinkFs) {
  test.serial(`${kind}: added and received images share their common blocks (≤ 1.2x unique on disk), and read back unchanged`, async (t) => {
    if (!loopAvailable()) return t.fail('needs root and loop devices');
    const src = images(tempDir(t, 'osfarm-dedup-src-'));
    const mnt = loopFs(t, kind, 512);

    const added = join(mnt, 'added');
    Repository.init(added);
    let before = used(mnt);
    const repo = Repository.open(added);
    for (const f of src.files) await repo.add(f);
    const onDisk = used(mnt) - before;
    t.true(onDisk <= 1.2 * src.unique, `${(onDisk / MiB).toFixed(1)} MiB on disk for ${(src.unique / MiB).toFixed(1)} MiB unique`);
    const usage = repo.diskUsage();
    t.is(usage.logicalBytes, src.files.reduce((n, f) => n + readFileSync(f).length, 0));
    t.true(usage.physicalBytes <= 1.05 * src.unique && usage.physicalBytes >= 0.95 * src.unique, `physical ${usage.physicalBytes} for ${src.unique} unique`);
    t.true(usage.allocatedBytes > 2.5 * src.unique, 'each file still holds the whole image');
    sameContent(t, repo, src.files);
    for (const e of repo.list()) await repo.verify(e.digest);
    // Removing the image the others share blocks with frees only its own blocks.
    before = used(mnt);
    await repo.remove(repo.list()[0]!.digest);
    t.true(before - used(mnt) < 0.1 * src.unique, 'the shared blocks stay for the images that use them');
    sameContent(t, repo, src.files.slice(1));
    repo.close();

    const received = join(mnt, 'received');
    before = used(mnt);
    {
      await using receiver = new Receiver({ repo: received, insecure: true });
      const { port } = await receiver.listen('127.0.0.1', 0);
      for (const f of src.files) await push(f, `127.0.0.1:${port}`, { insecure: true });
    }
    const got = used(mnt) - before;
    t.true(got <= 1.2 * src.unique, `received: ${(got / MiB).toFixed(1)} MiB on disk for ${(src.unique / MiB).toFixed(1)} MiB unique`);
    const r = Repository.open(received);
    sameContent(t, r, src.files);
    r.close();
  });

  test.serial(`${kind}: repo dedup shares the blocks of a repository filled before, once`, async (t) => {
    if (!loopAvailable()) return t.fail('needs root and loop devices');
    const dir = tempDir(t, 'osfarm-dedup-src-');
    const src = images(dir);
    // Filled where nothing can be shared (tmp), then copied whole onto the reflink file system.
    const plain = join(dir, 'plain');
    Repository.init(plain);
    const p = Repository.open(plain);
    for (const f of src.files) await p.add(f);
    p.close();
    const mnt = loopFs(t, kind, 512);
    const empty = used(mnt);
    execFileSync('cp', ['-a', '--reflink=never', plain, join(mnt, 'repo')]);
    t.true(used(mnt) - empty > 2.5 * src.unique, 'copied whole');

    const first = cli(['--repo', join(mnt, 'repo'), 'repo', 'dedup']);
    t.is(first.status, 0, first.stderr);
    t.like(first.json, { images: 3, rewritten: 2 });
    t.is(first.json.unsupported, undefined);
    t.true(first.json.sharedBytes > 1.9 * BLOCKS * 4096 * 0.97);
    const after = used(mnt) - empty;
    t.true(after <= 1.2 * src.unique, `after dedup the repository takes ${(after / MiB).toFixed(1)} MiB for ${(src.unique / MiB).toFixed(1)} MiB unique`);
    const again = cli(['--repo', join(mnt, 'repo'), 'repo', 'dedup']);
    t.like(again.json, { images: 3, rewritten: 0, copiedBytes: 0 }, 'a second pass rewrites nothing');
    const verify = cli(['--repo', join(mnt, 'repo'), 'repo', 'verify']);
    t.like(verify.json, { verified: 3, failed: [] });
    const ls = cli(['--repo', join(mnt, 'repo'), 'repo', 'ls']);
    t.true(ls.json.usage.physicalBytes < 0.5 * ls.json.usage.logicalBytes);
  });
}

test.serial('xfs: a holder damaged on disk is not shared: the new image stays whole and repo dedup names the damaged one', async (t) => {
  if (!loopAvailable()) return t.fail('needs root and loop devices');
  const src = images(tempDir(t, 'osfarm-dedup-src-'));
  const mnt = loopFs(t, 'xfs', 512);
  const path = join(mnt, 'repo');
  Repository.init(path);
  const repo = Repository.open(path);
  const a = await repo.add(src.files[0]!);
  // Rot behind osfarm's back: block 10 of a (which b holds too) changes on disk.
  const fd = openSync(repo.resolve(a.digest).path, 'r+');
  writeSync(fd, pseudoRandom(4096, 4242), 0, 4096, 10 * 4096);
  closeSync(fd);
  const b = await repo.add(src.files[1]!);
  t.true(readFileSync(repo.resolve(b.digest).path).equals(readFileSync(src.files[1]!)), 'b reads back as it was added, block 10 included');
  repo.close();
  const r = cli(['--repo', path, 'repo', 'dedup']);
  t.is(r.status, 1);
  t.is(r.json.error.code, 'OSFARM_BAD_REPOSITORY');
  t.regex(r.json.error.message, new RegExp(`image ${a.digest} is damaged on disk.*image ${b.digest} was left as it was`));
  const again = Repository.open(path);
  t.true(readFileSync(again.resolve(b.digest).path).equals(readFileSync(src.files[1]!)), 'still after repo dedup');
  again.close();
});

test.serial('ext4: images are stored whole and repo dedup says why', async (t) => {
  if (!loopAvailable()) return t.fail('needs root and loop devices');
  const src = images(tempDir(t, 'osfarm-dedup-src-'));
  const mnt = loopFs(t, 'ext4', 512);
  const path = join(mnt, 'repo');
  Repository.init(path);
  const before = used(mnt);
  const repo = Repository.open(path);
  for (const f of src.files) await repo.add(f);
  t.true(used(mnt) - before > 2.5 * src.unique, 'whole copies');
  const usage = repo.diskUsage();
  t.is(usage.physicalBytes, usage.allocatedBytes);
  sameContent(t, repo, src.files);
  repo.close();
  const r = cli(['--repo', path, 'repo', 'dedup']);
  t.is(r.status, 0, r.stderr);
  t.is(r.json.rewritten, 0);
  t.regex(r.json.unsupported, /cannot share blocks.*xfs \(reflink=1\) and btrfs can/);
});
