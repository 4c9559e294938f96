/**
 * Block indexing speed of one file (1 GiB) against bounds and peers measured from outside
 * osfarm in the same run.
 *
 * Warm (the file in the page cache): osfarm pinned to one CPU against `openssl speed sha1`
 * on that CPU; `indexImage()` and the CLI on both CPUs against `openssl speed -multi 2`
 * and against `openssl dgst -sha1` and `sha1sum` hashing the file. Cold (caches dropped):
 * against `dd` reading the file, bound by min(disk from dd, SHA-1 of both CPUs from
 * openssl). Also the index size.
 *
 * Goals (issues 2 and 16): one CPU >= 90 % of `openssl speed sha1`; `indexImage()` >= 85 %
 * of `openssl speed -multi 2` (>= 1.8x `openssl dgst -sha1`); the CLI >= 1.6x; cold >=
 * 0.9x dd; index <= 0.5 %. Run it on a quiet machine: the load average is printed.
 *
 * Assembly (warm): `Repository.assemble()` of the image from the file into an empty
 * repository on a tmpfs: every block read, verified (SHA-1 on both CPUs) and written, so
 * bound by `openssl speed -multi 2` and a memory copy.
 *
 * Start-up: `osfarm index` of a 64 KiB file (median of 20) against Node's own start-up
 * (`node -e 0`) and `openssl dgst -sha1` of the same file: what the CLI costs before
 * and around the work, which every CLI figure above includes.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, rmSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';

import { indexImage, Repository } from '../src/index.js';
import { load, opensslSha1 } from './bounds.js';
import { CLI, dropCaches, median, medianOf, printTable, time, timeCommand, workDir } from './lib.js';

const size = Number(process.env.OSFARM_BENCH_SIZE_MIB ?? 1024);
const dir = workDir('index-speed');
const image = join(dir, `random-${size}M.img`);
if (!existsSync(image) || statSync(image).size !== size << 20) {
  execFileSync('sh', ['-c', `head -c ${size}M /dev/urandom > ${image}`]);
}
const bytes = size << 20;
const runs = 5;
const out = join(dir, 'out.osfi');
const loadBefore = load();

// The bounds: SHA-1 on one CPU and on both, from openssl.
const sha1OneCpu = opensslSha1('0');
const sha1TwoCpus = opensslSha1('0,1');

/** Median seconds of `indexImage()` in a process pinned to CPU 0, timed after its module loaded. */
function oneCpuSeconds(): number {
  const lib = join(dirname(CLI), '..', 'index.js');
  const code =
    `const m=await import(${JSON.stringify(lib)});const xs=[];` +
    `for(let i=0;i<${runs};i++){const t=process.hrtime.bigint();await m.indexImage(${JSON.stringify(image)});xs.push(Number(process.hrtime.bigint()-t)/1e9)}` +
    `xs.sort((a,b)=>a-b);console.log(xs[${runs >> 1}])`;
  return Number(execFileSync('taskset', ['-c', '0', process.execPath, '--input-type=module', '-e', code], { encoding: 'utf8' }));
}

execFileSync('cat', [image], { stdio: ['ignore', 'ignore', 'inherit'] }); // warm the cache
const warm = {
  openssl: await medianOf(runs, () => timeCommand('openssl', ['dgst', '-sha1', image])),
  sha1sum: await medianOf(runs, () => timeCommand('sha1sum', [image])),
  cli: await medianOf(runs, () => timeCommand(process.execPath, [CLI, 'index', image, '-o', out, '--json'])),
  api: await medianOf(runs, () => indexImage(image, { output: out })),
  apiOneCpu: oneCpuSeconds(),
};

// Assembly: out (written by the last API run) is the image's index.
const repoDir = '/dev/shm/osfarm-bench-index-speed-repo';
async function assembleSeconds(): Promise<number> {
  rmSync(repoDir, { recursive: true, force: true });
  const repo = Repository.init(repoDir);
  try {
    return await time(() => repo.assemble(out, { from: image }));
  } finally {
    repo.close();
    rmSync(repoDir, { recursive: true, force: true });
  }
}
const assembleRuns: number[] = [];
for (let i = 0; i < runs; i++) assembleRuns.push(await assembleSeconds());
const assemble = median(assembleRuns);

// Start-up: a file small enough that hashing it costs nothing.
const small = join(dir, 'small-64K.img');
if (!existsSync(small)) execFileSync('sh', ['-c', `head -c 64K /dev/urandom > ${small}`]);
const startupRuns = 20;
const startup = {
  node: await medianOf(startupRuns, () => timeCommand(process.execPath, ['-e', '0'])),
  openssl: await medianOf(startupRuns, () => timeCommand('openssl', ['dgst', '-sha1', small])),
  cli: await medianOf(startupRuns, () => timeCommand(process.execPath, [CLI, 'index', small, '-o', out, '--json'])),
};

const coldRuns = 5;
/** The median time of `fn` right after dropping the page cache (the drop itself not timed). */
async function medianCold(fn: () => unknown): Promise<number> {
  const xs: number[] = [];
  for (let i = 0; i < coldRuns; i++) {
    dropCaches();
    xs.push(await time(fn));
  }
  return median(xs);
}
const cold = {
  dd: await medianCold(() => timeCommand('dd', [`if=${image}`, 'of=/dev/null', 'bs=4M'])),
  cli: await medianCold(() => timeCommand(process.execPath, [CLI, 'index', image, '-o', out, '--json'])),
  api: await medianCold(() => indexImage(image, { output: out })),
};
// Cold indexing cannot beat the slower of reading (dd) and hashing on both CPUs (openssl).
const coldBound = Math.max(cold.dd, bytes / sha1TwoCpus);
const loadAfter = load();

const mbs = (b: number) => `${(b / 1e6).toFixed(0)} MB/s`;
const rate = (s: number) => mbs(bytes / s);
const pct = (x: number) => `${(100 * x).toFixed(1)} %`;
console.log(`\nload average (1 min): ${loadBefore} at the start, ${loadAfter} at the end (quiet: < 0.3)`);
printTable(
  `Bounds from outside osfarm (openssl speed sha1, 16 KiB messages; MB = 10^6 bytes)`,
  [
    ['openssl speed sha1, CPU 0', mbs(sha1OneCpu)],
    ['openssl speed -multi 2 sha1, CPUs 0,1', mbs(sha1TwoCpus)],
  ],
  ['bound', 'rate'],
);
printTable(
  `Indexing ${size} MiB, warm page cache (median of ${runs}); osfarm = SHA-1 per 4 KiB block`,
  [
    ['osfarm indexImage(), one CPU (taskset -c 0)', warm.apiOneCpu.toFixed(3), rate(warm.apiOneCpu), pct(bytes / warm.apiOneCpu / sha1OneCpu), '-'],
    ['openssl dgst -sha1', warm.openssl.toFixed(3), rate(warm.openssl), '-', '1.00'],
    ['sha1sum', warm.sha1sum.toFixed(3), rate(warm.sha1sum), '-', (warm.openssl / warm.sha1sum).toFixed(2)],
    ['osfarm index (CLI, incl. node start-up)', warm.cli.toFixed(3), rate(warm.cli), pct(bytes / warm.cli / sha1TwoCpus), (warm.openssl / warm.cli).toFixed(2)],
    ['osfarm indexImage() (API), two CPUs', warm.api.toFixed(3), rate(warm.api), pct(bytes / warm.api / sha1TwoCpus), (warm.openssl / warm.api).toFixed(2)],
    ['osfarm Repository.assemble() into a tmpfs (verify + write)', assemble.toFixed(3), rate(assemble), pct(bytes / assemble / sha1TwoCpus), (warm.openssl / assemble).toFixed(2)],
  ],
  ['tool', 'seconds', 'rate', 'of openssl speed on the same CPUs', 'speed vs openssl dgst'],
);
printTable(
  `Indexing ${size} MiB, cold (caches dropped, median of ${coldRuns})`,
  [
    ['dd bs=4M', cold.dd.toFixed(3), rate(cold.dd), '1.00', pct(coldBound / cold.dd)],
    ['osfarm index (CLI)', cold.cli.toFixed(3), rate(cold.cli), (cold.dd / cold.cli).toFixed(2), pct(coldBound / cold.cli)],
    ['osfarm indexImage() (API)', cold.api.toFixed(3), rate(cold.api), (cold.dd / cold.api).toFixed(2), pct(coldBound / cold.api)],
  ],
  ['tool', 'seconds', 'rate', 'speed vs dd', 'of min(dd, openssl -multi 2)'],
);
const ms = (s: number) => (1000 * s).toFixed(1);
printTable(
  `Start-up: a 64 KiB file (median of ${startupRuns} runs, wall ms)`,
  [
    ['node -e 0 (Node alone)', ms(startup.node), '-'],
    ['openssl dgst -sha1', ms(startup.openssl), '-'],
    ['osfarm index (CLI)', ms(startup.cli), ms(startup.cli - startup.node)],
  ],
  ['command', 'ms', 'more than node -e 0'],
);
const indexSize = statSync(out).size;
console.log(`\nindex size: ${indexSize} bytes = ${((100 * indexSize) / bytes).toFixed(3)} % of the image`);
console.log(
  JSON.stringify({
    bench: 'index-speed',
    sizeMiB: size,
    load: { before: Number(loadBefore), after: Number(loadAfter) },
    bounds: { opensslSha1OneCpu: sha1OneCpu, opensslSha1TwoCpus: sha1TwoCpus },
    warm,
    cold,
    assemble,
    startup,
    oneCpuVsOpensslSpeed: bytes / warm.apiOneCpu / sha1OneCpu,
    apiVsOpensslSpeedMulti2: bytes / warm.api / sha1TwoCpus,
    ratioWarmVsOpenssl: warm.openssl / warm.cli,
    ratioApiVsOpenssl: warm.openssl / warm.api,
    ratioColdVsDd: cold.dd / cold.cli,
    ratioColdApiVsDd: cold.dd / cold.api,
    ratioColdApiVsBound: coldBound / cold.api,
    indexShare: indexSize / bytes,
  }),
);
