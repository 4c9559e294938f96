/**
 * How long a build with a misspelt package or release takes to be refused (issue 13: it
 * took 49 s, a whole bootstrap, before; the goal is under 2 s with a warm package index).
 * Each case is the installed CLI (dist/) run as a user would, from process start to exit,
 * in a fresh work directory whose index cache was warmed by one run first.
 *
 * The peers are outside osfarm: `apt-get install -s jqq`, the host's apt refusing the same
 * name from the same lists (what a user would type to check a name), and `node -e ''`, the
 * floor any Node.js command line pays to start. Printed as seconds and as ratios to apt.
 */
import { spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { join } from 'node:path';

import { CLI, median, printTable, workDir } from './lib.js';

const RUNS = Number(process.env.OSFARM_BENCH_RUNS ?? 7);
const work = join(workDir('refuse-speed'), 'work');
rmSync(work, { recursive: true, force: true });

/** Wall seconds of one run that must end with `status` and print `expect` on stderr or stdout. */
function once(cmd: string, args: string[], status: number, expect: RegExp): number {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { encoding: 'utf8', env: { ...process.env, OSFARM_MIRROR: '', LC_ALL: 'C' } });
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== status || !expect.test(r.stdout + r.stderr)) {
    throw new Error(`${cmd} ${args.join(' ')}: exit ${r.status}, expected ${status} and ${expect}:\n${r.stdout}${r.stderr}`);
  }
  return secs;
}

const osfarm = (args: string[]) => [CLI, 'build', '-d', work, '--no-repo', '-o', join(work, 'x.tar'), ...args];
const cases: [string, string, string[], number, RegExp][] = [
  ['node -e "" (start-up floor)', process.execPath, ['-e', ''], 0, /^$/],
  ['apt-get install -s jqq (peer)', 'apt-get', ['install', '-s', 'jqq'], 100, /Unable to locate package jqq/],
  ['osfarm build -p jqq', process.execPath, osfarm(['-t', 'debian-bookworm-amd64', '-p', 'jqq']), 1, /"jqq" is not a package .*did you mean jq\b/],
  ['osfarm build --check -p jqq', process.execPath, osfarm(['--check', '-t', 'debian-bookworm-amd64', '-p', 'jqq']), 1, /"jqq" is not a package/],
  ['osfarm build -t debian-bookwrm', process.execPath, osfarm(['-t', 'debian-bookwrm-amd64', '-p', 'jq']), 1, /"bookwrm" is not a release of debian \(did you mean bookworm\?\)/],
  ['osfarm build -t debain-bookworm', process.execPath, osfarm(['-t', 'debain-bookworm-amd64']), 1, /"debain" is not a distribution .*did you mean debian\?/],
];

// The first run of a package check reads apt's index list into the work directory's cache.
const cold = once(...(cases[2]!.slice(1) as [string, string[], number, RegExp]));
const rows: (string | number)[][] = [];
let apt = 0;
for (const [label, cmd, args, status, expect] of cases) {
  const xs: number[] = [];
  for (let i = 0; i < RUNS; i++) xs.push(once(cmd, args, status, expect));
  const m = median(xs);
  if (label.startsWith('apt-get')) apt = m;
  rows.push([label, m.toFixed(3), apt ? `${(m / apt).toFixed(2)}×` : '']);
}
rows.splice(3, 0, ['  (the first run, cold cache)', cold.toFixed(3), apt ? `${(cold / apt).toFixed(2)}×` : '']);
printTable(`refusing a misspelt name before anything runs, median of ${RUNS} (s; ratio to apt-get -s)`, rows, ['what', 's', 'vs apt']);
