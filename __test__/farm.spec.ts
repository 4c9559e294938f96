/**
 * The build farm for real: redis-server (started here, append-only file), the central
 * repository's `osfarm receive` and `osfarm serve --queue`, and three `osfarm worker`s, each
 * in its own network namespace with its own work directory and stage cache. Builds are real
 * (chroot, configure, pack, index, push into the central repository): appliances over one
 * Debian minbase core, which is built once here and copied into each worker's cache (the
 * namespaces have no route to a package mirror, so the appliances add files and commands,
 * not packages). Covered: jobs spread over the workers and follow their cached stages; a
 * worker killed with SIGKILL mid-build (the job completes on another, nothing half-built is
 * published); cancel of a running job (its worker stops the build); the server killed and
 * restarted mid-build (history and the whole log are still there, and a browser on the
 * build page sees the whole log too); Redis restarted (the jobs go on); `--schedule round-robin`
 * (jobs on the workers in turn).
 */
/// <reference lib="dom" />
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { chromium } from 'playwright-core';

import { FarmLab, lanLauncher } from './helpers/farm-lab.js';
import { unmountAll } from './helpers/loopfs.js';
import { createLan, type Lan, sweepStale } from './helpers/netns.js';
import { lastOutcome } from './helpers/tmp.js';

const CLI = join(import.meta.dirname, '..', 'src', 'cli', 'main.ts');
const OSFARM = [process.execPath, '--import', 'tsx', CLI];
/** The build tests' shared work directory: the minbase core's packages are fetched once. */
const WORK = process.env.OSFARM_TEST_WORK ?? '/var/tmp/osfarm-test-build';
const SEED = join(WORK, 'farm-seed-stages');
const CHROMIUM = process.env.OSFARM_CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS = join(import.meta.dirname, 'artifacts', 'web');

const CORE = { name: 'core', distribution: 'debian', release: 'bookworm', groups: ['minbase'] };

/** A small appliance on the core: a file, its hostname, and a command that takes `seconds`. */
function appliance(name: string, seconds = 1, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { name, parent: CORE, hostname: name, files: [{ destination: `/etc/${name}.conf`, content: `${name}\n` }], commands: [`sleep ${seconds}`, `echo built > /etc/${name}.stamp`], ...extra };
}

const done = (j: any) => ['succeeded', 'failed', 'cancelled'].includes(j.state);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let dir = '';
let lan: Lan | undefined;
let lab: FarmLab;

test.before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'osfarm-farm-'));
  // The core, once: built into a seed stage store kept in the shared work directory (a later
  // run finds it there: the same tag), then copied into each worker's cache.
  writeFileSync(join(dir, 'core.yaml'), 'name: core\ndistribution: debian\nrelease: bookworm\ngroups: [minbase]\n');
  mkdirSync(WORK, { recursive: true });
  const seed = spawnSync(OSFARM[0]!, [...OSFARM.slice(1), '--json', '--repo', join(dir, 'seed-repo'), 'build', join(dir, 'core.yaml'), '-d', WORK, '--stages', SEED, '-o', join(dir, 'core.tar')], { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (seed.status !== 0) throw new Error(`building the core failed: ${seed.stdout.slice(-1500)}${seed.stderr.slice(-1500)}`);
  // A core left by an older osfarm (another tag) would be cached as well: the workers get this one only.
  const core = lastOutcome(seed.stdout).stages[0].tag as string;
  for (const stale of readdirSync(SEED).filter((n) => /^[0-9a-f]{64}$/.test(n) && n !== core)) {
    const rm = spawnSync(OSFARM[0]!, [...OSFARM.slice(1), 'stages', 'rm', stale, '--recursive', '--stages', SEED], { encoding: 'utf8' });
    if (rm.status !== 0) throw new Error(`removing the stale core ${stale} failed: ${rm.stderr}`);
  }

  sweepStale('osf-farm');
  lan = createLan(`osf-farm-${process.pid}`, ['srv', 'w1', 'w2', 'w3'], '10.98.7');
  lab = new FarmLab({ dir: join(dir, 'farm'), launch: lanLauncher(lan), osfarm: OSFARM, server: { host: 'srv', ip: lan.hosts.srv!.ip }, serveArgs: ['--affinity-wait-ms', '20000'] });
  await lab.startRedis();
  await lab.startServer();
  // 8 s: on a loaded 2-core machine a heartbeat can come seconds late, and a worker that looks
  // gone is passed over when jobs are placed (3 s made three jobs land on two workers).
  await Promise.all(['w1', 'w2', 'w3'].map((id) => lab.startWorker({ host: id, id, seedStages: SEED, lockMs: 8000 })));
});

test.after.always(async () => {
  await lab?.close();
  lan?.destroy();
  if (dir) {
    unmountAll(dir);
    rmSync(dir, { recursive: true, force: true });
  }
});

/** The jobs a test started, by name, for the later ones. */
const jobs = new Map<string, any>();

test.serial('builds spread over the workers and go through push into the central repository; a repeat follows its cached stages', async (t) => {
  const workers = await lab.workersSeen();
  t.deepEqual(workers.filter((w) => w.alive).map((w) => w.id).sort(), ['w1', 'w2', 'w3']);
  for (const w of workers) t.is(w.stages, 1, `${w.id} advertises the seeded core`);

  const submitted = [];
  for (const name of ['app1', 'app2', 'app3']) submitted.push(await lab.build(appliance(name, 1)));
  const finished = await lab.finished(submitted.map((j) => j.id));
  for (const j of finished) {
    t.is(j.state, 'succeeded', JSON.stringify(j.error));
    t.is(j.attempts, 1);
    jobs.set(j.meta.name, j);
  }
  t.is(new Set(finished.map((j) => j.worker)).size, 3, `three jobs, three idle workers: ${finished.map((j) => j.worker)}`);

  // Each built its appliance stage on the copied core, and pushed the image: the central repository holds it with its build record.
  const images = (await lab.api('GET', '/api/images')).body.images;
  for (const j of finished) {
    t.deepEqual(j.result.stages.map((s: any) => s.hit), [true, false]);
    const pushed = j.result.pushed[0];
    t.false(pushed.alreadyPresent);
    t.true(pushed.wireBytesSent > 0);
    const img = images.find((i: any) => i.digest === j.result.outputs[0].digest);
    t.truthy(img, `${j.meta.name}'s image is in the central repository`);
    t.is(img.specDigest, j.meta.specDigest);
    t.is(img.name, `${j.meta.name}.tar`);
  }
  const tar = spawnSync('tar', ['-xOf', join(lab.repo, 'images', finished[0].result.outputs[0].digest, 'image'), './etc/app1.stamp'], { encoding: 'utf8' });
  t.is(tar.stdout, 'built\n', "the appliance's command ran in its stage");

  // The same appliance as another output: only the worker that built app1 holds its stage, and it gets the job.
  const again = await lab.build(appliance('app1', 1, { outputs: ['ext4'] }));
  const [a] = await lab.finished([again.id]);
  t.is(a.state, 'succeeded', JSON.stringify(a.error));
  t.is(a.worker, jobs.get('app1').worker);
  t.deepEqual(a.result.stages.map((s: any) => s.hit), [true, true]);
  const log = await lab.events(a.id);
  t.true(log.some((e) => e.type === 'log' && /its own queue: it holds the deepest cached stage/.test(e.line)));
});

test.serial('a worker killed mid-build: the job completes on another worker; nothing half-built is published', async (t) => {
  const before = (await lab.api('GET', '/api/images')).body.images.length;
  const job = await lab.build(appliance('app4', 5));
  // Kill its worker while the appliance's command runs (the stage is half made).
  let victim = '';
  await new Promise<void>((resolve) => {
    void lab.events(job.id, 0, (e) => {
      if (e.type === 'log' && /spec\.commands\[0\]/.test(e.line) && !victim) {
        victim = 'x';
        resolve();
      }
    });
  });
  victim = (await lab.job(job.id)).worker;
  t.true(['w1', 'w2', 'w3'].includes(victim));
  lab.workers.get(victim)!.child.kill('SIGKILL');
  const [j] = await lab.finished([job.id], 120_000);
  t.is(j.state, 'succeeded', JSON.stringify(j.error));
  t.not(j.worker, victim);
  t.is(j.attempts, 2);
  const log = (await lab.events(job.id)).filter((e) => e.type === 'log').map((e) => e.line);
  t.true(log.some((l) => l.includes(`worker ${victim} stopped`)), 'the log says the first worker stopped');
  t.deepEqual(j.result.stages.map((s: any) => s.hit), [true, false], 'the second worker started from its cached core');
  // Only blocks the central repository lacked crossed: the core's blocks were there.
  const pushed = j.result.pushed[0];
  t.true(pushed.blocksSent > 0 && pushed.blocksSent < pushed.blockCount / 4, `${pushed.blocksSent} of ${pushed.blockCount} blocks sent`);
  const images = (await lab.api('GET', '/api/images')).body.images;
  t.is(images.length, before + 1, 'one new image, nothing else');
  t.is(images.filter((i: any) => i.specDigest === job.meta.specDigest).length, 1);
  const verify = spawnSync(OSFARM[0]!, [...OSFARM.slice(1), '--json', '--repo', lab.repo, 'repo', 'verify'], { encoding: 'utf8' });
  t.is(verify.status, 0, verify.stdout + verify.stderr);
  // The killed worker is declared gone.
  for (let i = 0; i < 40 && (await lab.workersSeen()).some((w) => w.id === victim && w.alive); i++) await sleep(250);
  t.false((await lab.workersSeen()).some((w) => w.id === victim && w.alive));
  lab.workers.delete(victim);
});

test.serial('cancel reaches the worker running the job: its build stops and nothing is published', async (t) => {
  const before = (await lab.api('GET', '/api/images')).body.images.length;
  const job = await lab.build(appliance('app8', 120));
  while ((await lab.job(job.id)).phase !== 'configure') await sleep(100);
  await sleep(1000);
  const worker = (await lab.job(job.id)).worker;
  const t0 = Date.now();
  const r = await lab.api('DELETE', `/api/jobs/${job.id}`);
  t.is(r.status, 200);
  t.true(r.body.cancelled);
  const [j] = await lab.finished([job.id], 60_000);
  t.is(j.state, 'cancelled');
  t.is(j.error.code, 'OSFARM_ABORTED');
  t.true(Date.now() - t0 < 30_000, `cancelled in ${Date.now() - t0} ms, long before the command's 120 s`);
  t.is(j.worker, worker);
  t.is((await lab.api('GET', '/api/images')).body.images.length, before);
  // The worker is free again: the next job runs.
  const next = await lab.build(appliance('app9', 1));
  t.is((await lab.finished([next.id]))[0].state, 'succeeded');
});

/** A TCP port on this host's loopback relayed to the server's HTTP port (through the lab's unix socket): where the browser goes. */
async function browserRelay(): Promise<{ url: string; server: Server }> {
  const server = createServer((c) => {
    const u = connect(lab.socket);
    c.pipe(u).pipe(c);
    c.on('error', () => u.destroy());
    u.on('error', () => c.destroy());
    u.on('close', () => c.destroy());
  }).listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { url: `http://127.0.0.1:${(server.address() as { port: number }).port}`, server };
}

test.serial('the server killed and restarted mid-build: the job history and the whole log are still there, in the browser too', async (t) => {
  mkdirSync(ARTIFACTS, { recursive: true });
  const relay = await browserRelay();
  t.teardown(() => void relay.server.close());
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  t.teardown(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const pageErrors: string[] = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  await page.goto(`${relay.url}/`);
  await page.fill('#token', lab.token);
  await page.click('#login button');
  await page.waitForSelector('#distribution');

  const job = await lab.build(appliance('app5', 3));
  // The browser follows the build page; the test's own stream follows too.
  await page.goto(`${relay.url}/#/build/${job.id}`);
  await page.waitForSelector('#farm tr[data-worker]');
  const seen: any[] = [];
  const stream = lab.events(job.id, 0, (e) => seen.push(e));
  while (!seen.some((e) => e.type === 'log' && /spec\.commands\[0\]/.test(e.line))) await sleep(100);
  await page.waitForFunction(() => /spec\.commands\[0\]/.test(document.querySelector('#log')?.textContent ?? ''));
  t.regex(await page.textContent('#job-worker') ?? '', /worker w\d/);
  await lab.serve!.stop('SIGKILL');
  await stream;
  t.false(seen.some((e) => e.type === 'state' && done(e)), 'the server went away mid-build');
  await page.waitForFunction(() => /reconnecting/.test(document.querySelector('#stream-state')?.textContent ?? ''));
  await page.screenshot({ path: join(ARTIFACTS, 'farm-1-server-gone.png'), fullPage: true });
  await lab.startServer();

  const all = await lab.events(job.id);
  t.deepEqual(all.map((e) => e.seq), all.map((_, i) => i + 1), 'every event, in order, none missing');
  t.deepEqual(all.slice(0, seen.length), seen, 'what the first server streamed is the start of the history');
  t.like(all[0], { type: 'state', state: 'queued' });
  t.like(all[all.length - 1], { type: 'state', state: 'succeeded' });
  t.true(all.some((e) => e.type === 'log' && /osfarm: done in/.test(e.line)), "the builder's last line is there");
  const history = (await lab.api('GET', '/api/jobs')).body.jobs;
  for (const name of ['app1', 'app2', 'app3']) t.is(history.find((h: any) => h.id === jobs.get(name).id)?.state, 'succeeded');
  t.is(history.find((h: any) => h.id === job.id)?.state, 'succeeded');

  // The browser reconnected by itself and has every log line once, in order; the worker, the push phase and its result.
  await page.waitForFunction(() => document.querySelector('#job-state')?.textContent === 'succeeded', undefined, { timeout: 60_000 });
  const lines = all.filter((e) => e.type === 'log').map((e) => `${e.line}\n`).join('');
  t.is(await page.textContent('#log'), lines);
  t.is(await page.textContent('#stream-state'), '');
  const info = await lab.job(job.id);
  t.regex(await page.textContent('#job-worker') ?? '', new RegExp(`worker ${info.worker}`));
  t.deepEqual(await page.locator('#phases span').allTextContents(), ['bootstrap', 'packages', 'configure', 'pack', 'index', 'push']);
  t.is(await page.locator('#phases span.done').count(), 6);
  t.regex(await page.textContent('#outputs .pushed') ?? '', new RegExp(`tar pushed by ${info.worker}: \\d+ of \\d+ blocks sent`));
  // The farm's workers, refreshed after the restart.
  t.is(await page.locator('#farm tr[data-worker]').count(), (await lab.workersSeen()).length);
  await page.click('#probe');
  await page.waitForFunction(() => /started it \d+ ms after submit/.test(document.querySelector('#probe-result')?.textContent ?? ''), undefined, { timeout: 30_000 });
  await page.screenshot({ path: join(ARTIFACTS, 'farm-2-after-restart.png'), fullPage: true });
  t.deepEqual(pageErrors, []);
});

test.serial('Redis restarted: the running job goes on and a job submitted while Redis was away runs', async (t) => {
  const running = await lab.build(appliance('app6', 3));
  while ((await lab.job(running.id)).phase !== 'configure') await sleep(100);
  await lab.redis!.stop('SIGTERM');
  const late = lab.build(appliance('app7', 1));
  await sleep(1000);
  await lab.startRedis();
  const lateJob = await late;
  const finished = await lab.finished([running.id, lateJob.id], 120_000);
  for (const j of finished) t.is(j.state, 'succeeded', JSON.stringify(j.error));
  const all = await lab.events(running.id);
  t.deepEqual(all.map((e) => e.seq), all.map((_, i) => i + 1));
  t.like(all[all.length - 1], { type: 'state', state: 'succeeded' });
  t.true(all.some((e) => e.type === 'log' && /osfarm: pushed app6\.tar/.test(e.line)));
});

test.serial('--schedule round-robin: the server restarted in that mode places each job on the next worker in turn, busy or not', async (t) => {
  await lab.serve!.stop('SIGTERM');
  lab.o.serveArgs = ['--schedule', 'round-robin'];
  await lab.startServer();
  // A long job, then three short ones: in turn, the fourth waits for the long job's worker
  // although the others are idle by then (plain or cache-aware would give it to an idle one).
  // The workers alive now (an earlier test killed one; whether it is back does not matter here).
  const alive = (await lab.workersSeen()).filter((w) => w.alive).map((w) => w.id as string).sort();
  t.true(alive.length >= 2, `workers alive: ${alive}`);
  const submitted = [await lab.build(appliance('rr0', 20))];
  for (let i = 1; i <= alive.length; i++) submitted.push(await lab.build(appliance(`rr${i}`, 1)));
  const finished = await lab.finished(submitted.map((j) => j.id));
  for (const j of finished) t.is(j.state, 'succeeded', JSON.stringify(j.error));
  const order = finished.map((j) => j.worker as string);
  const n = alive.length;
  t.deepEqual([...new Set(order.slice(0, n))].sort(), alive, `the first ${n} on ${n} workers: ${order}`);
  t.is(order[n], order[0], `job ${n + 1} on the first one's worker: ${order}`);
  t.true(Date.parse(finished[n].started) >= Date.parse(finished[0].finished), 'it waited for the long job');
});
