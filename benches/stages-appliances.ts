/**
 * Layered builds for real: two appliances sharing one Debian core (minbase) and base
 * (+ less), each adding one package. Times, through the built CLI (dist/):
 *   - appliance 1 from an empty stage store (core, base and appliance built),
 *   - appliance 2 after appliance 1 (core and base reused), against appliance 2 from an
 *     empty store (the same work from nothing),
 *   - a repeated identical request (answered from the repository): goal < 1 s.
 * The .deb cache is warm in every case (one download before timing), so the comparison
 * is of stage reuse, not of the network. Needs root, mmdebstrap and `npm run build:ts`.
 *
 *   node --import tsx benches/stages-appliances.ts     (OSFARM_BENCH_COW=overlayfs|btrfs|…)
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { makeLoopFs, type LoopFs, unmountAll } from '../__test__/helpers/loopfs.js';
import { lastOutcome } from '../__test__/helpers/tmp.js';
import { CLI, median, printTable, workDir } from './lib.js';

const COWS = (process.env.OSFARM_BENCH_COW ?? 'overlayfs,btrfs').split(',');
const RUNS = 5;
const work = workDir('stages-appliances');
const cache = join(work, 'work');
const specs = join(work, 'specs');
mkdirSync(specs, { recursive: true });
const spec = (name: string, body: string) => writeFileSync(join(specs, `${name}.yaml`), body);
spec('core', 'name: core\ndistribution: debian\nrelease: bookworm\ngroups: [minbase]\n');
spec('base', 'name: base\nparent: core\npackages: [less]\n');
spec('app1', 'name: app1\nparent: base\npackages: [jq]\nhostname: app1\n');
spec('app2', 'name: app2\nparent: base\npackages: [bc]\nhostname: app2\n');

interface Built {
  seconds: number;
  stages: { hit: boolean; seconds: number }[];
  cached: boolean;
}

/** `osfarm build` through the built CLI; wall time of the whole process. */
function build(repo: string, app: string, cow: string): Built {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(process.execPath, [CLI, '--json', '--repo', repo, 'build', join(specs, `${app}.yaml`), '-d', cache, '--cow', cow], { encoding: 'utf8', maxBuffer: 256 << 20 });
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const last = lastOutcome<{ stages: Built['stages']; cached: boolean; error?: unknown }>(r.stdout);
  if (r.status !== 0) throw new Error(`build ${app} failed: ${r.stdout.slice(-2000)} ${r.stderr.slice(-2000)}`);
  return { seconds, stages: last.stages, cached: last.cached };
}

let places = 0;

/** A fresh repository (and so a fresh stage store at <repo>/stages) on a file system that suits the backend. */
function place(cow: string): { dir: string; cleanup(): void } {
  if (cow === 'btrfs' || cow === 'reflink') {
    const fs: LoopFs = makeLoopFs(cow === 'btrfs' ? 'btrfs' : 'xfs', 4096, work);
    return { dir: fs.mountpoint, cleanup: () => fs.cleanup() };
  }
  const dir = join(work, `store-${cow}-${process.pid}-${++places}`);
  unmountAll(dir);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  return {
    dir,
    cleanup: () => {
      unmountAll(dir);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const s = (x: number) => `${x.toFixed(x < 1 ? 2 : 1)} s`;
const rows: (string | number)[][] = [];
const results: Record<string, unknown>[] = [];

// Warm the package cache once (not timed).
{
  const p = place('copy');
  try {
    build(join(p.dir, 'repo'), 'app1', 'auto');
    build(join(p.dir, 'repo'), 'app2', 'auto');
  } finally {
    p.cleanup();
  }
}

for (const cow of COWS) {
  const shared = place(cow);
  const fresh = place(cow);
  try {
    const repo = join(shared.dir, 'repo');
    const first = build(repo, 'app1', cow);
    const second = build(repo, 'app2', cow);
    const fromNothing = build(join(fresh.dir, 'repo'), 'app2', cow);
    if (!second.stages[0]!.hit || !second.stages[1]!.hit || fromNothing.stages.some((x) => x.hit)) throw new Error('unexpected stage hits: the comparison would be wrong');
    const repeats: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const r = build(repo, 'app2', cow);
      if (!r.cached) throw new Error('a repeated request was not answered from the repository');
      repeats.push(r.seconds);
    }
    rows.push([cow, s(first.seconds), s(fromNothing.seconds), s(second.seconds), `${(fromNothing.seconds / second.seconds).toFixed(1)}x`, s(median(repeats))]);
    results.push({ cow, first: first.seconds, secondAfterFirst: second.seconds, secondFromNothing: fromNothing.seconds, stagesFromNothing: fromNothing.stages, stagesSecond: second.stages, repeatedRequest: median(repeats) });
  } finally {
    shared.cleanup();
    fresh.cleanup();
  }
}

printTable(
  `two appliances on one Debian bookworm core + base (osfarm build through dist/cli, warm .deb cache; repeated request: median of ${RUNS})`,
  rows,
  ['backend', 'appliance 1 (empty store)', 'appliance 2 from nothing', 'appliance 2 after 1', 'speed-up', 'repeated request'],
);
console.log(`\n${JSON.stringify({ bench: 'stages-appliances', results })}`);
