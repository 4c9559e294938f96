/**
 * Build time of Debian bookworm minbase: `osfarm build` (the compiled CLI, dist/cli/main.js:
 * run `npm run build:ts` first; block-aligned tar
 * output with its .osfi index, --no-repo, a fresh stage store each run so nothing is reused)
 * against `mmdebstrap --variant=minbase bookworm <dir>` alone. Both draw on a warm package
 * cache (mmdebstrap through its documented sync-in/sync-out cache hooks), so neither
 * downloads; each runs $OSFARM_BENCH_RUNS times (default 3), alternating; medians compared.
 * Wall time on a shared machine swings with the load, so the CPU time of each whole
 * process tree (user + system, from this process's children's rusage) is reported too.
 * Goal (issue 4): osfarm <= 1.15 x mmdebstrap.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';

import { childrenCpu, CLI, median, printTable, workDir } from './lib.js';

const dir = workDir('build-speed');
const runs = Number(process.env.OSFARM_BENCH_RUNS ?? 3);
const suite = process.env.OSFARM_BENCH_SUITE ?? 'bookworm';
const mirror = process.env.OSFARM_MIRROR ? [process.env.OSFARM_MIRROR] : [];
const EPOCH = '1700000000';
const osfarmWork = join(dir, 'osfarm-work');
if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build:ts first`);
const debCache = join(dir, 'mmdebstrap-cache');
mkdirSync(debCache, { recursive: true });

interface Timing {
  wall: number;
  cpu: number;
}

function timed(what: string, cmd: string, args: string[], env: NodeJS.ProcessEnv = {}): Timing {
  const c0 = childrenCpu();
  const t0 = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env }, encoding: 'utf8', cwd: join(import.meta.dirname, '..') });
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`${what} failed: ${r.stderr.slice(-2000)}`);
  return { wall, cpu: childrenCpu() - c0 };
}

function osfarm(n: number): Timing {
  const run = join(dir, `osfarm-${n}`);
  rmSync(run, { recursive: true, force: true });
  const cli = [CLI, '--repo', join(run, 'repo'), 'build', '-t', `debian-${suite}-amd64`, '-d', osfarmWork, '-o', join(run, 'minbase.tar'), '--no-repo', '--source-date-epoch', EPOCH];
  for (const m of mirror) cli.push('--mirror', m);
  const s = timed('osfarm build', process.execPath, cli, { OSFARM_STAGES: join(run, 'stages') });
  rmSync(run, { recursive: true, force: true });
  return s;
}

function mmdebstrap(n: number): Timing {
  const target = join(dir, `mmdebstrap-${n}`);
  rmSync(target, { recursive: true, force: true });
  const args = [
    '--variant=minbase',
    '--skip=download/empty',
    `--setup-hook=mkdir -p "$1/var/cache/apt/archives/" && cp -al ${debCache}/. "$1/var/cache/apt/archives/" 2>/dev/null || true`,
    `--customize-hook=cp -al "$1"/var/cache/apt/archives/*.deb ${debCache}/ 2>/dev/null || true`,
    suite,
    target,
    ...mirror,
  ];
  const s = timed('mmdebstrap', 'mmdebstrap', args, { SOURCE_DATE_EPOCH: EPOCH });
  rmSync(target, { recursive: true, force: true });
  return s;
}

// Warm both caches (and the page cache) first.
console.log('warming the package caches…');
osfarm(0);
mmdebstrap(0);
const o: Timing[] = [];
const m: Timing[] = [];
for (let i = 1; i <= runs; i++) {
  m.push(mmdebstrap(i));
  o.push(osfarm(i));
  const f = (t: Timing) => `${t.wall.toFixed(1)} s (cpu ${t.cpu.toFixed(1)} s)`;
  console.log(`run ${i}: mmdebstrap ${f(m[i - 1]!)}, osfarm ${f(o[i - 1]!)}`);
}
const med = (xs: Timing[], k: keyof Timing) => median(xs.map((x) => x[k]));
const min = (xs: Timing[], k: keyof Timing) => Math.min(...xs.map((x) => x[k]));
const ratio = med(o, 'wall') / med(m, 'wall');
const cpuRatio = med(o, 'cpu') / med(m, 'cpu');
// The fastest run of each is the one least disturbed by other work on the machine.
const minRatio = min(o, 'wall') / min(m, 'wall');
const row = (name: string, xs: Timing[], base: Timing[]) => [
  name,
  med(xs, 'wall').toFixed(1),
  (med(xs, 'wall') / med(base, 'wall')).toFixed(2),
  min(xs, 'wall').toFixed(1),
  (min(xs, 'wall') / min(base, 'wall')).toFixed(2),
  med(xs, 'cpu').toFixed(1),
  (med(xs, 'cpu') / med(base, 'cpu')).toFixed(2),
];
printTable(
  `Build time, ${suite} minbase amd64 (${runs} runs each; load average at the end ${readFileSync('/proc/loadavg', 'utf8').split(' ')[0]})`,
  [row('mmdebstrap --variant=minbase (directory)', m, m), row('osfarm build (aligned tar + .osfi, --no-repo)', o, m)],
  ['tool', 'median wall s', 'x', 'fastest wall s', 'x', 'median cpu s', 'x'],
);
const verdict = (r: number) => (r <= 1.15 ? 'met' : 'NOT met');
console.log(`\ngoal osfarm <= 1.15 x mmdebstrap: median wall ${verdict(ratio)}, fastest wall ${verdict(minRatio)}, median cpu ${verdict(cpuRatio)}`);
console.log(JSON.stringify({ bench: 'build-speed', suite, runs, mmdebstrap: m, osfarm: o, ratio, minRatio, cpuRatio }));
