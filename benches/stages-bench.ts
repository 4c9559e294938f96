/**
 * Stage cache speed: a ~200 MB stage (a core of generated files plus a small child stage
 * on top), on each copy-on-write backend that works here. Times a cache hit (`ensure` of
 * an existing stage) and a `checkout` (a writable working copy), against a plain
 * `cp -a` of the same tree on the same file system. Goal (issue 5): hit and checkout
 * under 1 s each on btrfs and overlayfs. Needs root (loop devices, mounts).
 *
 *   node --import tsx benches/stages-bench.ts      (OSFARM_BENCH_STAGE_MB=200)
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { makeLoopFs, type LoopFs, unmountAll } from '../__test__/helpers/loopfs.js';
import { pseudoRandom } from '../__test__/helpers/tmp.js';
import { type CowName, StageStore, stageTag } from '../src/stages/index.js';
import { median, printTable, time, timeCommand, workDir } from './lib.js';

const TOTAL_MB = Number(process.env.OSFARM_BENCH_STAGE_MB ?? 200);
const RUNS = 5;

/** Writes a tree like a small distribution: many small files in many directories, a few large ones. */
function fillTree(dir: string): { files: number; bytes: number } {
  const total = TOTAL_MB * 2 ** 20;
  let bytes = 0;
  let files = 0;
  const block = pseudoRandom(1 << 20, 42);
  // 70 % of the bytes in 160 files of ~0.9 MB, 30 % in small files of 1–16 KiB (~7,500 of them).
  for (let i = 0; bytes < total * 0.7; i++) {
    const d = join(dir, 'usr/lib', `big${i % 16}`);
    mkdirSync(d, { recursive: true });
    const size = 600_000 + ((i * 7919) % 600_000);
    writeFileSync(join(d, `lib${i}.so`), block.subarray(0, size));
    bytes += size;
    files++;
  }
  for (let i = 0; bytes < total; i++) {
    const d = join(dir, 'usr/share', `pkg${i % 400}`, `sub${i % 7}`);
    mkdirSync(d, { recursive: true });
    const size = 1024 + ((i * 104729) % 15360);
    writeFileSync(join(d, `file${i}`), block.subarray(i % 1000, (i % 1000) + size));
    bytes += size;
    files++;
  }
  return { files, bytes };
}

interface Case {
  cow: CowName;
  fs: 'btrfs' | 'xfs' | 'ext4';
}

const CASES: Case[] = [
  { cow: 'btrfs', fs: 'btrfs' },
  { cow: 'overlayfs', fs: 'ext4' },
  { cow: 'reflink', fs: 'xfs' },
  { cow: 'copy', fs: 'ext4' },
];

const work = workDir('stages');
const source = join(work, 'source');
rmSync(source, { recursive: true, force: true });
mkdirSync(source, { recursive: true });
const shape = fillTree(source);
console.log(`stage tree: ${shape.files} files, ${(shape.bytes / 2 ** 20).toFixed(0)} MiB`);

const rows: (string | number)[][] = [];
const results: Record<string, unknown>[] = [];
const ms = (s: number) => `${(s * 1000).toFixed(s < 0.1 ? 1 : 0)} ms`;

for (const c of CASES) {
  let loop: LoopFs | undefined;
  let base: string;
  if (c.fs === 'ext4') {
    base = join(work, `store-${c.cow}`);
    unmountAll(base);
    rmSync(base, { recursive: true, force: true });
    mkdirSync(base, { recursive: true });
  } else {
    loop = makeLoopFs(c.fs, 4096, work);
    base = loop.mountpoint;
  }
  try {
    const store = await StageStore.open({ root: join(base, 'stages'), cow: c.cow });
    const coreTag = stageTag({ config: { bench: 'core', mb: TOTAL_MB }, parentTag: null, driver: 'bench', driverVersion: '1', source: null });
    const childTag = stageTag({ config: { bench: 'child' }, parentTag: coreTag, driver: 'bench', driverVersion: '1', source: null });
    let built = 0;
    const miss = await time(async () => {
      const r = await store.ensure(coreTag, null, async (dir) => {
        timeCommand('cp', ['-a', '--no-target-directory', `${source}/.`, dir]);
      });
      await r.lease.release();
      built++;
    });
    const childMiss = await time(async () => {
      const r = await store.ensure(childTag, coreTag, async (dir) => {
        writeFileSync(join(dir, 'usr/share/pkg1/added'), 'a new file in the child stage\n');
        rmSync(join(dir, 'usr/lib/big0/lib0.so'));
      });
      await r.lease.release();
    });
    const hits: number[] = [];
    const checkouts: number[] = [];
    const releases: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      let lease: { release(): Promise<void> } | undefined;
      hits.push(await time(async () => {
        const r = await store.ensure(childTag, coreTag, async () => {
          throw new Error('a hit must not populate');
        });
        lease = r.lease;
      }));
      await lease!.release();
      let co: { release(): Promise<void> } | undefined;
      checkouts.push(await time(async () => {
        co = await store.checkout(childTag);
      }));
      releases.push(await time(() => co!.release()));
    }
    const stage = store.get(childTag)!;
    // The same tree copied plainly on the same file system (warm cache, like the hit).
    const copyDir = join(base, 'plain-copy');
    const copy = timeCommand('cp', ['-a', '--reflink=never', '--no-target-directory', join(base, 'stages', coreTag, 'tree'), copyDir]);
    rmSync(copyDir, { recursive: true, force: true });
    rows.push([c.cow, c.fs, `${miss.toFixed(2)} s`, ms(childMiss), ms(median(hits)), ms(median(checkouts)), ms(median(releases)), `${copy.toFixed(2)} s`, `${(stage.ownSize / 1024).toFixed(0)} KiB`]);
    results.push({ backend: c.cow, fs: c.fs, coreBuild: miss, childBuild: childMiss, hit: median(hits), checkout: median(checkouts), release: median(releases), plainCopy: copy, childOwnSize: stage.ownSize, built });
    await store.gc({ maxSize: 0 });
  } finally {
    if (loop) loop.cleanup();
    else {
      unmountAll(base);
      rmSync(base, { recursive: true, force: true });
    }
  }
}
rmSync(source, { recursive: true, force: true });

printTable(
  `stage cache on a ${TOTAL_MB} MB stage (${shape.files} files), median of ${RUNS}; goal: hit and checkout < 1 s`,
  rows,
  ['backend', 'fs', 'build core', 'build child', 'hit', 'checkout', 'release', 'cp -a (same tree)', 'child own size'],
);
console.log(`\n${JSON.stringify({ bench: 'stages', files: shape.files, bytes: shape.bytes, results })}`);
