/**
 * The build farm on loopback: redis-server, the central repository's osfarm receive and
 * osfarm serve --queue, and two osfarm workers, each with its own work directory and stage
 * cache, everything started here.
 *
 * 1. Cache-aware against plain scheduling: 8 appliance builds (4 appliances on one bookworm
 *    base, each asked for as a tar and as an ext4 image, the two requests one after the
 *    other, as someone needing both would send them), over 2 workers whose caches hold the
 *    core and the base (a farm that has been running; their package caches are warm too).
 *    Plain: every job to BullMQ's shared queue, taken by whichever worker is free; round-robin:
 *    each job, in submit order, on the next worker in turn (the baseline). Total
 *    time, stage-cache hits, base builds per worker, bytes pushed into the central repository.
 * 2. Queue overhead with probe jobs (they only wait 0 ms on a worker; having no stage tags they
 *    go to the shared queue at once): submit → worker start (p50, p95) at 20 submits a second,
 *    from the queue's client and through the server's API (POST /api/farm/probes, what a user's
 *    submit goes through), no-op jobs a second when 2000 are queued at once, and Redis
 *    commands per job. The
 *    scheduler's own placement latency shows in part 1 (first job: submit → start).
 *
 *   node --import tsx benches/farm.ts [scheduling] [overhead]     (root; Debian's redis-server; npm run build first)
 */
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';

import { FarmLab, loopback } from '../__test__/helpers/farm-lab.js';
import { FarmClient } from '../src/farm/client.js';
import { CLI, cliOutcome, printTable, workDir } from './lib.js';

const OSFARM = [process.execPath, CLI];
const BASE_PORT = 17000 + (process.pid % 500) * 4;
const CORE = { name: 'core', distribution: 'debian', release: 'bookworm', groups: ['minbase'] };
const BASE = { name: 'base', parent: CORE, packages: ['less', 'procps', 'ca-certificates'] };
const APPS: [string, string[]][] = [
  ['web', ['nginx-light', 'php-fpm']],
  ['py', ['python3', 'python3-yaml', 'python3-requests']],
  ['ssh', ['openssh-server', 'sudo', 'rsync', 'curl']],
  ['perl', ['perl', 'libjson-perl', 'libwww-perl']],
];
const appliance = (name: string, packages: string[], format: string) => ({ name, parent: BASE, packages, hostname: name, outputs: [format] });

const root = workDir('farm');
const sec = (ms: number) => (ms / 1000).toFixed(1);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A seed: core and base in a stage store, and a package cache holding every appliance's packages. */
function seed(): { stages: string; cache: string } {
  const dir = join(root, 'seed');
  const specs = join(dir, 'specs');
  mkdirSync(specs, { recursive: true });
  const stages = join(dir, 'stages');
  const work = join(dir, 'work');
  for (const [name, packages] of APPS) {
    writeFileSync(join(specs, `${name}.json`), JSON.stringify(appliance(name, packages, 'tar')));
    // Builds core and base once, then each appliance: its packages land in the work directory's cache.
    // --rebuild: a seed left by an older osfarm is answered from its repository, but its stages'
    // tags (which name osfarm's own steps) may no longer be this osfarm's.
    execFileSync(OSFARM[0]!, [...OSFARM.slice(1), '--json', '--repo', join(dir, 'repo'), 'build', join(specs, `${name}.json`), '-d', work, '--stages', stages, '-o', join(dir, `${name}.tar`), '--rebuild'], { stdio: ['ignore', 'ignore', 'inherit'] });
  }
  // Only core and base stay in the seed store: the appliances are what the runs build.
  const base = cliOutcome(execFileSync(OSFARM[0]!, [...OSFARM.slice(1), '--json', '--repo', join(dir, 'repo'), 'images', 'show', 'web.tar'], { encoding: 'utf8' }));
  const keep = new Set(base.stages.slice(0, 2).map((s: { tag: string }) => s.tag));
  for (const s of cliOutcome(execFileSync(OSFARM[0]!, [...OSFARM.slice(1), '--json', 'stages', 'ls', '--stages', stages], { encoding: 'utf8' })).stages) {
    if (!keep.has(s.tag) && s.children.length === 0) execFileSync(OSFARM[0]!, [...OSFARM.slice(1), 'stages', 'rm', s.tag, '--stages', stages]);
  }
  return { stages, cache: join(work, 'cache') };
}

interface RunResult {
  mode: string;
  seconds: number;
  hits: number;
  stages: number;
  applianceBuilds: number;
  baseBuilds: Record<string, number>;
  wireBytes: number;
  perWorker: Record<string, number>;
  /** The first job's submit → start: the placement path with idle workers. */
  firstStartMs: number;
}

async function schedulingRun(mode: 'plain' | 'round-robin' | 'cache-aware', s: { stages: string; cache: string }): Promise<RunResult> {
  const dir = join(root, mode);
  rmSync(dir, { recursive: true, force: true });
  const lab = new FarmLab({
    dir,
    launch: loopback,
    osfarm: OSFARM,
    server: { host: 'here', ip: '127.0.0.1' },
    serveArgs: ['--schedule', mode],
    redisPort: BASE_PORT,
    receivePort: BASE_PORT + 1,
    httpPort: BASE_PORT + 2,
  });
  try {
    await lab.startRedis();
    await lab.startServer();
    for (const id of ['bw1', 'bw2']) {
      mkdirSync(join(dir, 'workers', id), { recursive: true });
      cpSync(s.cache, join(dir, 'workers', id, 'cache'), { recursive: true });
      await lab.startWorker({ host: 'here', id, seedStages: s.stages, lockMs: 30_000 });
    }
    const t0 = Date.now();
    const ids: string[] = [];
    for (const [name, packages] of APPS) for (const format of ['tar', 'ext4']) ids.push((await lab.build(appliance(name, packages, format))).id);
    const jobs = await lab.finished(ids, 1_800_000);
    const seconds = (Date.now() - t0) / 1000;
    const failed = jobs.filter((j) => j.state !== 'succeeded');
    if (failed.length) throw new Error(`${mode}: ${failed.length} job(s) failed: ${JSON.stringify(failed.map((j) => j.error))}`);
    const firstStartMs = Date.parse(jobs[0].started) - Date.parse(jobs[0].created);
    const r: RunResult = { mode, seconds, hits: 0, stages: 0, applianceBuilds: 0, baseBuilds: { bw1: 0, bw2: 0 }, wireBytes: 0, perWorker: { bw1: 0, bw2: 0 }, firstStartMs };
    for (const j of jobs) {
      const st = j.result.stages as { hit: boolean }[];
      r.stages += st.length;
      r.hits += st.filter((x) => x.hit).length;
      if (!st[2]!.hit) r.applianceBuilds++;
      if (!st[1]!.hit) r.baseBuilds[j.worker]! += 1;
      r.perWorker[j.worker]! += 1;
      for (const p of j.result.pushed) r.wireBytes += p.wireBytesSent;
    }
    return r;
  } finally {
    await lab.close();
  }
}

/** Submit → start of each job, sorted; and a quantile of them. */
async function startLatencies(farm: FarmClient, ids: string[]): Promise<{ at(q: number): number; max: number }> {
  await waitAll(farm, ids);
  const infos = await Promise.all(ids.map((id) => farm.get(id)));
  const latencies = infos.map((j) => Date.parse(j!.started!) - Date.parse(j!.created)).sort((a, b) => a - b);
  return { at: (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))]!, max: latencies[latencies.length - 1]! };
}

interface Overhead {
  p50: number;
  p95: number;
  max: number;
  http: { p50: number; p95: number; max: number };
  perSecond: number;
  commandsPerJob: number;
}

async function overhead(): Promise<Overhead> {
  const dir = join(root, 'overhead');
  rmSync(dir, { recursive: true, force: true });
  const lab = new FarmLab({ dir, launch: loopback, osfarm: OSFARM, server: { host: 'here', ip: '127.0.0.1' }, redisPort: BASE_PORT, receivePort: BASE_PORT + 1, httpPort: BASE_PORT + 2 });
  try {
    await lab.startRedis();
    await lab.startServer();
    for (const id of ['bw1', 'bw2']) await lab.startWorker({ host: 'here', id, lockMs: 30_000 });
    // The server schedules; this client only submits and reads.
    const farm = await FarmClient.open({ url: lab.redisUrl, repo: join(dir, 'central'), schedule: false });
    try {
      // Latency: one probe every 50 ms, each timed from its submit to its worker's start.
      const ids: string[] = [];
      for (let i = 0; i < 200; i++) {
        ids.push((await farm.submitProbe(0)).id);
        await sleep(50);
      }
      const direct = await startLatencies(farm, ids);
      // The same through the server's API: the job is created when the server handles the request.
      const viaHttp: string[] = [];
      for (let i = 0; i < 200; i++) {
        const r = await lab.api('POST', '/api/farm/probes', { ms: 0 });
        if (r.status !== 202) throw new Error(`POST /api/farm/probes: ${r.status} ${JSON.stringify(r.body)}`);
        viaHttp.push(r.body.id);
        await sleep(50);
      }
      const http = await startLatencies(farm, viaHttp);
      // Throughput: 2000 probes queued at once; and what Redis did for each.
      const commands = () => Number(/total_commands_processed:(\d+)/.exec(execFileSync('redis-cli', ['-p', String(BASE_PORT), 'info', 'stats'], { encoding: 'utf8' }))![1]);
      const c0 = commands();
      const t0 = Date.now();
      const many = await Promise.all(Array.from({ length: 2000 }, () => farm.submitProbe(0).then((j) => j.id)));
      await waitAll(farm, many);
      const perSecond = 2000 / ((Date.now() - t0) / 1000);
      return { p50: direct.at(0.5), p95: direct.at(0.95), max: direct.max, http: { p50: http.at(0.5), p95: http.at(0.95), max: http.max }, perSecond, commandsPerJob: (commands() - c0) / 2000 };
    } finally {
      await farm.close();
    }
  } finally {
    await lab.close();
  }
}

async function waitAll(farm: FarmClient, ids: string[]): Promise<void> {
  const want = new Set(ids);
  for (;;) {
    const open = (await farm.store.openJobs()).filter((id) => want.has(id));
    if (open.length === 0) return;
    await sleep(50);
  }
}

async function reportScheduling(): Promise<void> {
  const s = seed();
  const runs = [await schedulingRun('plain', s), await schedulingRun('round-robin', s), await schedulingRun('cache-aware', s)];
  printTable(
    '8 appliance builds (4 appliances × tar and ext4) over 2 workers holding the bookworm core and base',
    runs.map((r) => [r.mode, sec(r.seconds * 1000), `${r.hits}/${r.stages}`, r.applianceBuilds, `${r.baseBuilds.bw1}/${r.baseBuilds.bw2}`, `${r.perWorker.bw1}/${r.perWorker.bw2}`, `${(r.wireBytes / 2 ** 20).toFixed(1)} MiB`, `${r.firstStartMs} ms`]),
    ['scheduling', 'total s', 'stage hits', 'appliance stages built', 'base builds bw1/bw2', 'jobs bw1/bw2', 'pushed (wire)', 'first submit→start'],
  );
  console.log(`  (load average: ${loadavg().map((x) => x.toFixed(1)).join(' ')} on ${cpus().length} cores)`);
  const aware = runs[2]!.seconds;
  console.log(`  cache-aware is ${(runs[1]!.seconds / aware).toFixed(2)}x faster than round-robin (goal ≥ 1.5x) and ${(runs[0]!.seconds / aware).toFixed(2)}x faster than plain (the first free worker)`);
}

async function reportOverhead(): Promise<void> {
  const o = await overhead();
  printTable(
    'queue overhead with probe jobs (2 workers, loopback)',
    [
      ['queue client', `${o.p50} ms`, `${o.p95} ms`, `${o.max} ms`, o.perSecond.toFixed(0), o.commandsPerJob.toFixed(0)],
      ['POST /api/farm/probes', `${o.http.p50} ms`, `${o.http.p95} ms`, `${o.http.max} ms`, '', ''],
    ],
    ['submitted by', 'submit→start p50', 'p95 (goal < 100 ms)', 'max', 'no-op jobs/s', 'Redis commands per job'],
  );
  console.log(`  (load average during the run: ${loadavg().map((x) => x.toFixed(1)).join(' ')} on ${cpus().length} cores)`);
}

const parts = process.argv.slice(2);
if (parts.length === 0 || parts.includes('scheduling')) await reportScheduling();
if (parts.length === 0 || parts.includes('overhead')) await reportOverhead();
