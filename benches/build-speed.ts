/**
 * Build time of Debian bookworm minbase: `osfarm build` (through the CLI, block-aligned tar
 * output with its .osfi index, --no-repo, a fresh stage store each run so nothing is reused)
 * against `mmdebstrap --variant=minbase bookworm <dir>` alone. Both draw on a warm package
 * cache (mmdebstrap through its documented sync-in/sync-out cache hooks), so neither
 * downloads; each runs $OSFARM_BENCH_RUNS times (default 3), alternating; medians compared.
 * Goal (issue 4): osfarm <= 1.15 x mmdebstrap.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';

import { median, printTable, workDir } from './lib.js';

const dir = workDir('build-speed');
const runs = Number(process.env.OSFARM_BENCH_RUNS ?? 3);
const suite = process.env.OSFARM_BENCH_SUITE ?? 'bookworm';
const mirror = process.env.OSFARM_MIRROR ? [process.env.OSFARM_MIRROR] : [];
const EPOCH = '1700000000';
const osfarmWork = join(dir, 'osfarm-work');
const debCache = join(dir, 'mmdebstrap-cache');
mkdirSync(debCache, { recursive: true });

function timed(what: string, cmd: string, args: string[], env: NodeJS.ProcessEnv = {}): number {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env }, encoding: 'utf8', cwd: join(import.meta.dirname, '..') });
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`${what} failed: ${r.stderr.slice(-2000)}`);
  return secs;
}

function osfarm(n: number): number {
  const run = join(dir, `osfarm-${n}`);
  rmSync(run, { recursive: true, force: true });
  const cli = ['--import', 'tsx', 'src/cli/main.ts', '--repo', join(run, 'repo'), 'build', '-t', `debian-${suite}-amd64`, '-d', osfarmWork, '-o', join(run, 'minbase.tar'), '--no-repo', '--source-date-epoch', EPOCH];
  for (const m of mirror) cli.push('--mirror', m);
  const s = timed('osfarm build', process.execPath, cli, { OSFARM_STAGES: join(run, 'stages') });
  rmSync(run, { recursive: true, force: true });
  return s;
}

function mmdebstrap(n: number): number {
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
const o: number[] = [];
const m: number[] = [];
for (let i = 1; i <= runs; i++) {
  m.push(mmdebstrap(i));
  o.push(osfarm(i));
  console.log(`run ${i}: mmdebstrap ${m[i - 1]!.toFixed(1)} s, osfarm ${o[i - 1]!.toFixed(1)} s`);
}
const ratio = median(o) / median(m);
printTable(
  `Build time, ${suite} minbase amd64 (median of ${runs})`,
  [
    ['mmdebstrap --variant=minbase (directory)', median(m).toFixed(1), '1.00'],
    ['osfarm build (aligned tar + .osfi, --no-repo)', median(o).toFixed(1), ratio.toFixed(2)],
  ],
  ['tool', 'seconds', 'x mmdebstrap'],
);
console.log(`\ngoal: osfarm <= 1.15 x mmdebstrap: ${ratio <= 1.15 ? 'met' : 'NOT met'}`);
console.log(JSON.stringify({ bench: 'build-speed', suite, runs, mmdebstrap: m, osfarm: o, ratio }));
