/**
 * Planning speed: a 1 GiB image's index against a repository holding 8 GiB of images
 * (2 M distinct 4 KiB blocks in its hash table). Half of the wanted image's blocks are in
 * the repository (spread over its images), half are new. Times the API (`plan` with an
 * index file) and the CLI (`osfarm plan x.osfi --json`, node start-up included).
 * Goal (issue 2): under 0.5 s.
 *
 *   node --import tsx benches/plan-speed.ts     (OSFARM_BENCH_REPO_GIB=8, OSFARM_BENCH_SIZE_MIB=1024)
 */
import { closeSync, existsSync, openSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';

import { indexImage } from '../src/blocks/index.js';
import { Repository } from '../src/repo/index.js';
import { pseudoRandom } from '../__test__/helpers/tmp.js';
import { CLI, medianOf, printTable, timeCommand, workDir } from './lib.js';

const repoGib = Number(process.env.OSFARM_BENCH_REPO_GIB ?? 8);
const wantedMib = Number(process.env.OSFARM_BENCH_SIZE_MIB ?? 1024);
const CHUNK = 64 << 20;
const dir = workDir('plan-speed');
const repoPath = join(dir, `repo-${repoGib}G`);

/** Writes `mib` MiB where chunk i is pseudoRandom(seed(i)): equal seeds give equal chunks. */
function writeImage(path: string, mib: number, seed: (chunk: number) => number): void {
  const fd = openSync(path, 'w');
  try {
    for (let i = 0; i < (mib << 20) / CHUNK; i++) writeSync(fd, pseudoRandom(CHUNK, seed(i)));
  } finally {
    closeSync(fd);
  }
}

if (!existsSync(join(repoPath, 'osfarm-repo.json'))) {
  rmSync(repoPath, { recursive: true, force: true });
  const repo = Repository.init(repoPath);
  for (let g = 0; g < repoGib; g++) {
    const tmp = join(dir, 'staging.img');
    writeImage(tmp, 1024, (i) => 1000 * (g + 1) + i);
    const e = await repo.add(tmp, { name: `image-${g}` });
    rmSync(tmp);
    console.log(`added image-${g} ${e.digest}`);
  }
}
const repo = Repository.open(repoPath);
const stats = repo.stats();

// Even chunks come from the repository's images (chunk i of image i % repoGib), odd ones are new.
const wanted = join(dir, 'wanted.img');
const index = join(dir, 'wanted.osfi');
writeImage(wanted, wantedMib, (i) => (i % 2 === 0 ? 1000 * ((i % repoGib) + 1) + i : 900_000 + i));
await indexImage(wanted, { output: index });
rmSync(wanted);

const runs = 7;
const check = await repo.plan({ index });
const api = await medianOf(runs, () => repo.plan({ index }));
const cli = await medianOf(runs, () => timeCommand(process.execPath, [CLI, '--repo', repoPath, 'plan', index, '--json']));

printTable(
  `Planning a ${wantedMib} MiB image's index against ${stats.images} images, ${(stats.totalBytes / 2 ** 30).toFixed(1)} GiB, ` +
    `${stats.distinctBlocks.toLocaleString('en-US')} distinct blocks (table ${(stats.tableFileBytes / 2 ** 20).toFixed(1)} MiB on disk), median of ${runs}`,
  [
    ['osfarm plan (API)', api.toFixed(3), `${(0.5 / api).toFixed(1)}x under the 0.5 s goal`],
    ['osfarm plan (CLI, node start-up included)', cli.toFixed(3), `${(0.5 / cli).toFixed(1)}x under the 0.5 s goal`],
  ],
  ['', 'seconds', ''],
);
console.log(`  present ${check.presentBlocks.toLocaleString('en-US')}, missing ${check.missingBlocks.toLocaleString('en-US')} in ${check.missingRuns.length} runs (expected about half each)`);
