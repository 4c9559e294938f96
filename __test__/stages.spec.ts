import test, { type ExecutionContext } from 'ava';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  existsSync,
  linkSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { OsfarmError } from '../src/base/errors.js';
import { canonicalTagInput, type CowName, probeCowMethods, StageStore, stageTag, type StageTagInput } from '../src/stages/index.js';
import { loopAvailable, loopFs, plainDir } from './helpers/loopfs.js';
import { cliJson, pseudoRandom } from './helpers/tmp.js';

const SRC = join(import.meta.dirname, '..', 'src', 'stages', 'index.ts');
const ROOT_TESTS = loopAvailable();
const loopTest = ROOT_TESTS ? test : test.skip;

// ---------------------------------------------------------------------------
// Tags

const core: StageTagInput = {
  config: { distribution: 'debian', release: 'bookworm', architecture: 'amd64', variant: 'minbase', components: ['main'] },
  parentTag: null,
  driver: 'mmdebstrap',
  driverVersion: '1.3.5',
  source: ['http://mirror-a.invalid/debian'],
};
const coreTag = stageTag(core);
/** What the builder declares about its config (the store itself knows nothing of specs). */
const declared = { sets: ['packages', 'groups', 'components'], exclude: ['name', 'outputs'], secrets: ['rootPassword'] };
const base = (extra: Record<string, unknown> = {}, parentTag = coreTag): StageTagInput => ({
  config: { packages: ['openssh-server', 'python3', 'curl'], commands: ['systemctl enable ssh'], ...extra },
  parentTag,
  driver: 'apt',
  driverVersion: '2.6.1',
  source: ['http://mirror-a.invalid/debian'],
  ...declared,
});

test('a tag is sha256 hex over the canonical inputs', (t) => {
  t.regex(coreTag, /^[0-9a-f]{64}$/);
  const c = canonicalTagInput(core);
  t.is(c.format, 'osfarm-stage/1');
  t.is(c.parent, null);
  t.deepEqual(c.source, ['http://mirror-a.invalid/debian']);
});

test('tags ignore key order, package order, duplicates and formatting', (t) => {
  const a = stageTag(base());
  t.is(stageTag(base({ packages: ['python3', 'curl', 'openssh-server', 'curl'] })), a);
  const reordered: StageTagInput = { source: ['http://mirror-a.invalid/debian'], driverVersion: '2.6.1', driver: 'apt', parentTag: coreTag, config: { commands: ['systemctl enable ssh'], packages: ['curl', 'python3', 'openssh-server'] }, ...declared };
  t.is(stageTag(reordered), a);
  // Same data parsed from differently formatted JSON.
  const json = JSON.parse('{ "packages" : [ "curl","openssh-server" ,"python3" ], "commands":["systemctl enable ssh"] }') as Record<string, unknown>;
  t.is(stageTag({ ...base(), config: json }), a);
  // undefined members are like absent ones; excluded keys (the builder's name and output formats) never change the tag.
  t.is(stageTag(base({ hostname: undefined, name: 'my-image', outputs: ['qcow2', 'tar'] })), a);
  t.is(stageTag(base({ name: 'other-name', outputs: ['ext4'] })), a);
});

test('tags change when the tree would change', (t) => {
  const a = stageTag(base());
  const changed = new Set<string>([a]);
  const variants: [string, string][] = [
    ['a package added', stageTag(base({ packages: ['openssh-server', 'python3', 'curl', 'vim'] }))],
    ['a package pinned', stageTag(base({ packages: ['openssh-server', 'python3=3.11.2-1+b1', 'curl'] }))],
    ['commands reordered', stageTag(base({ commands: ['true', 'systemctl enable ssh'] }))],
    ['the mirror changed', stageTag({ ...base(), source: ['http://mirror-a.invalid/snapshot/20240101T000000Z'] })],
    ['the parent changed', stageTag(base({}, stageTag({ ...core, config: { ...core.config, release: 'trixie' } })))],
    ['the driver version changed', stageTag({ ...base(), driverVersion: '2.7.0' })],
    ['another driver', stageTag({ ...base(), driver: 'dnf' })],
    ['a password hash set', stageTag(base({ rootPasswordHash: '$6$salt$abc' }))],
    ['another password hash', stageTag(base({ rootPasswordHash: '$6$salt$abd' }))],
    ['a default made explicit', stageTag(base({ locale: 'C.UTF-8' }))],
    ['a nested value', stageTag(base({ files: [{ destination: '/etc/motd', sha256: 'ab' }] }))],
    ['a nested value changed', stageTag(base({ files: [{ destination: '/etc/motd', sha256: 'ac' }] }))],
  ];
  for (const [what, tag] of variants) {
    t.false(changed.has(tag), `${what} must change the tag`);
    changed.add(tag);
  }
  // A core stage with the same config but a different source is another stage.
  t.not(stageTag({ ...core, source: ['http://mirror-b.invalid/debian'] }), coreTag);
});

test('a declared secret (a plain password), NaN and non-JSON values are refused; sets and exclusions apply only as declared', (t) => {
  const err = t.throws(() => stageTag(base({ rootPassword: 'secret' })), { instanceOf: OsfarmError });
  t.is(err?.code, 'OSFARM_INVALID_ARGUMENT');
  t.regex(err!.message, /plain password never enters/);
  t.false(err!.message.includes('secret'));
  t.throws(() => stageTag(base({ weight: Number.NaN })), { message: /NaN/ });
  t.throws(() => stageTag(base({ when: new Date() })), { message: /plain JSON/ });
  t.throws(() => stageTag({ ...base(), parentTag: 'abc' }), { message: /not a stage tag/ });
  t.throws(() => stageTag({ ...base(), driverVersion: '' }), { message: /driverVersion/ });
  // By default `commands` is a list (order matters); declared a set, order stops mattering.
  const sets = ['packages', 'commands'];
  t.is(stageTag({ ...base({ commands: ['b', 'a'] }), sets }), stageTag({ ...base({ commands: ['a', 'b', 'a'] }), sets }));
  t.is(stageTag({ ...base({ extra: { groups: ['y', 'x'] } }), sets: ['extra.groups'] }), stageTag({ ...base({ extra: { groups: ['x', 'y'] } }), sets: ['extra.groups'] }));
  t.not(stageTag({ ...base({ name: 'a' }), exclude: [] }), stageTag({ ...base({ name: 'b' }), exclude: [] }));
  // Undeclared, a list keeps its order and a key is no secret: the store assumes nothing about the config.
  const plain = { config: { packages: ['b', 'a'], rootPassword: 'x' }, parentTag: null, driver: 'd', driverVersion: '1', source: null };
  t.not(stageTag(plain), stageTag({ ...plain, config: { packages: ['a', 'b'], rootPassword: 'x' } }));
});

// ---------------------------------------------------------------------------
// Trees

/** A listing of a tree: path, type, permission bits, content digest or link target. */
function listing(dir: string): string[] {
  const out: string[] = [];
  const walk = (rel: string) => {
    for (const name of readdirSync(join(dir, rel)).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const p = join(dir, r);
      const st = lstatSync(p);
      const mode = (st.mode & 0o7777).toString(8);
      if (st.isDirectory()) {
        out.push(`${r} d ${mode}`);
        walk(r);
      } else if (st.isSymbolicLink()) out.push(`${r} l -> ${readlinkSync(p)}`);
      else if (st.isFile()) out.push(`${r} f ${mode} ${createHash('sha256').update(readFileSync(p)).digest('hex').slice(0, 16)}`);
      else out.push(`${r} other ${st.mode.toString(8)}`);
    }
  };
  walk('');
  return out;
}

const BIG = 256 * 1024;

/** core: a small system. */
function populateCore(d: string): void {
  for (const sub of ['etc', 'bin', 'lib', 'data', 'var/log']) mkdirSync(join(d, sub), { recursive: true });
  writeFileSync(join(d, 'etc/os-release'), 'ID=core\n');
  writeFileSync(join(d, 'bin/tool'), 'tool v1\n');
  chmodSync(join(d, 'bin/tool'), 0o755);
  linkSync(join(d, 'bin/tool'), join(d, 'bin/tool2'));
  writeFileSync(join(d, 'lib/a'), 'a');
  writeFileSync(join(d, 'lib/b'), 'b');
  writeFileSync(join(d, 'data/big'), pseudoRandom(BIG, 1));
  symlinkSync('lib', join(d, 'usr-lib'));
}

/** base: adds, deletes, changes a file, replaces a directory wholesale (an opaque directory in overlayfs). */
function populateBase(d: string): void {
  mkdirSync(join(d, 'opt/base'), { recursive: true });
  writeFileSync(join(d, 'opt/base/pkg'), pseudoRandom(64 * 1024, 2));
  rmSync(join(d, 'data/big'));
  writeFileSync(join(d, 'etc/os-release'), 'ID=base\n');
  rmSync(join(d, 'lib'), { recursive: true });
  mkdirSync(join(d, 'lib'));
  writeFileSync(join(d, 'lib/c'), 'c');
}

/** appliance: deletes one of two hard links, changes a mode, re-creates a file its parent deleted, deletes a directory. */
function populateApp(d: string): void {
  mkdirSync(join(d, 'srv'));
  writeFileSync(join(d, 'srv/app'), 'app\n');
  rmSync(join(d, 'bin/tool'));
  chmodSync(join(d, 'etc/os-release'), 0o600);
  writeFileSync(join(d, 'data/big'), 'small now');
  rmSync(join(d, 'var'), { recursive: true });
}

/** The expected trees after each step, made with plain file operations in one directory. */
function expectedTrees(t: ExecutionContext): string[][] {
  const ref = plainDir(t, 'osfarm-ref-');
  const out: string[][] = [];
  for (const step of [populateCore, populateBase, populateApp]) {
    step(ref);
    out.push(listing(ref));
  }
  return out;
}

const tagFor = (step: string, parent: string | null) => stageTag({ config: { step }, parentTag: parent, driver: 'test', driverVersion: '1', source: null });

/** Where each backend can be tested here. */
const BACKEND_CASES: { cow: CowName; fs: 'btrfs' | 'xfs' | 'plain' }[] = [
  { cow: 'btrfs', fs: 'btrfs' },
  { cow: 'overlayfs', fs: 'plain' },
  { cow: 'overlayfs', fs: 'xfs' },
  { cow: 'reflink', fs: 'xfs' },
  { cow: 'reflink', fs: 'btrfs' },
  { cow: 'copy', fs: 'plain' },
];

function storeDir(t: ExecutionContext, fs: 'btrfs' | 'xfs' | 'xfs-noreflink' | 'plain'): string {
  return join(fs === 'plain' ? plainDir(t) : loopFs(t, fs), 'stages');
}

for (const { cow, fs } of BACKEND_CASES) {
  loopTest(`${cow} on ${fs}: core → base → appliance gives the right trees, hits, checkouts`, async (t) => {
    const expected = expectedTrees(t);
    const root = storeDir(t, fs);
    const store = await StageStore.open({ root, cow });
    t.is((await store.cowMethod()).name, cow);
    const tCore = tagFor('core', null);
    const tBase = tagFor('base', tCore);
    const tApp = tagFor('app', tBase);
    const calls: string[] = [];
    const c = await store.ensure(tCore, null, async (d) => (calls.push('core'), populateCore(d)), { label: 'core' });
    const b = await store.ensure(tBase, tCore, async (d) => (calls.push('base'), populateBase(d)), { label: 'base' });
    const a = await store.ensure(tApp, tBase, async (d) => (calls.push('app'), populateApp(d)), { label: 'app' });
    t.teardown(() => Promise.all([a, b, c].map((r) => r.lease.release())));
    t.deepEqual(calls, ['core', 'base', 'app']);
    t.false(c.hit || b.hit || a.hit);
    t.deepEqual(listing(c.dir), expected[0]);
    t.deepEqual(listing(b.dir), expected[1]);
    t.deepEqual(listing(a.dir), expected[2]);

    // Sizes: the core's own size is all of it; a sharing child only adds what it changed.
    t.is(c.stage.ownSize, c.stage.size);
    t.true(c.stage.size >= BIG);
    if (cow === 'copy') t.is(b.stage.ownSize, b.stage.size);
    else t.true(b.stage.ownSize >= 64 * 1024 && b.stage.ownSize < 64 * 1024 + 100, `base own size ${b.stage.ownSize}`);
    if (cow !== 'copy') t.true(a.stage.ownSize < 100, `appliance own size ${a.stage.ownSize}`);

    // A hit does not populate again, and counts.
    const again = await store.ensure(tApp, tBase, async () => t.fail('populate on a hit'));
    t.true(again.hit);
    t.is(again.stage.hits, 1);
    t.deepEqual(listing(again.dir), expected[2]);
    await again.lease.release();

    // A checkout is writable and leaves the stage alone.
    const co = await store.checkout(tApp);
    writeFileSync(join(co.dir, 'srv/app'), 'changed in the checkout');
    rmSync(join(co.dir, 'etc'), { recursive: true });
    t.deepEqual(listing(a.dir), expected[2]);
    t.true(store.list().find((s) => s.tag === tApp)!.inUse);
    await co.release();
    t.false(existsSync(co.dir));
    if (cow === 'btrfs') t.throws(() => writeFileSync(join(a.dir, 'x'), 'x'), { code: 'EROFS' }, 'a btrfs stage is read-only');

    const v = store.verify();
    t.deepEqual(v.problems, []);
    t.is(v.stages, 3);
    // Nothing of ours stays mounted once the leases go (overlay views).
    await Promise.all([a, b, c].map((r) => r.lease.release()));
    t.deepEqual(mountsIn(root), []);
    t.deepEqual(readdirSync(join(root, 'views')), []);
    t.deepEqual(readdirSync(join(root, 'checkouts')), []);
    t.deepEqual(readdirSync(join(root, 'tmp')), []);
  });
}

function mountsIn(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((m) => m.startsWith(`${dir}/`));
}

loopTest('a backend the file system cannot do is refused with what it needs; lvm-thin says it is unavailable here', async (t) => {
  const plain = join(plainDir(t), 'stages');
  const e1 = await t.throwsAsync((await StageStore.open({ root: plain, cow: 'btrfs' })).cowMethod(), { instanceOf: OsfarmError });
  t.is(e1?.code, 'OSFARM_STAGE');
  t.regex(e1!.message, /btrfs backend cannot work .* needs the store on a btrfs file system; .* is on ext4/);
  const e2 = await t.throwsAsync((await StageStore.open({ root: storeDir(t, 'xfs-noreflink'), cow: 'reflink' })).cowMethod());
  t.regex(e2!.message, /needs a file system with reflinks .*mkfs.xfs -m reflink=1.* is on xfs without reflink=1/);
  const e3 = await t.throwsAsync((await StageStore.open({ root: plain, cow: 'lvm-thin' })).cowMethod());
  t.regex(e3!.message, /lvm-thin backend cannot work .*unavailable here: .*device-mapper/);
  const report = await probeCowMethods(plain);
  t.false(report.find((r) => r.name === 'lvm-thin')!.available);
  t.true(report.find((r) => r.name === 'copy')!.available);
  await t.throwsAsync(StageStore.open({ root: plain, cow: 'zfs' as CowName }), { message: /unknown copy-on-write backend "zfs"/ });
  // auto picks btrfs on btrfs, overlayfs on ext4, and a store keeps its backend.
  t.is((await (await StageStore.open({ root: storeDir(t, 'btrfs') })).cowMethod()).name, 'btrfs');
  const s = await StageStore.open({ root: plain });
  t.is((await s.cowMethod()).name, 'overlayfs');
  const r = await s.ensure(tagFor('core', null), null, async (d) => writeFileSync(join(d, 'f'), 'x'));
  await r.lease.release();
  const e4 = await t.throwsAsync((await StageStore.open({ root: plain, cow: 'copy' })).cowMethod());
  t.regex(e4!.message, /holds stages made with overlayfs; it cannot switch to copy/);
});

test('ensure checks its inputs against the tag and keeps them for verify', async (t) => {
  const root = join(plainDir(t), 'stages');
  const store = await StageStore.open({ root, cow: 'copy', durable: false });
  const inputs: StageTagInput = { config: { step: 'core', packages: ['b', 'a'] }, parentTag: null, driver: 'test', driverVersion: '1', source: 'file:///mirror', sets: ['packages'] };
  const tag = stageTag(inputs);
  await t.throwsAsync(store.ensure(tagFor('other', null), null, async () => {}, { inputs }), { message: /does not match its inputs/ });
  await t.throwsAsync(store.ensure('nope', null, async () => {}), { code: 'OSFARM_INVALID_ARGUMENT' });
  const r = await store.ensure(tag, null, async (d) => writeFileSync(join(d, 'f'), 'x'), { inputs, label: 'core' });
  t.deepEqual(r.stage.inputs, canonicalTagInput(inputs));
  t.deepEqual((r.stage.inputs!.config as { packages: string[] }).packages, ['a', 'b']);
  await r.lease.release();
  t.true(store.verify().ok);
  // A child whose parent is missing is refused before anything is built.
  await t.throwsAsync(store.ensure(tagFor('child', tagFor('missing', null)), tagFor('missing', null), async () => t.fail()), { message: /parent stage .* is not in the store/ });
  t.deepEqual(readdirSync(join(root, 'tmp')), []);
});

test('a failing or aborted populate leaves no stage and no temp', async (t) => {
  const root = join(plainDir(t), 'stages');
  const store = await StageStore.open({ root });
  const tCore = tagFor('core', null);
  await (await store.ensure(tCore, null, async (d) => populateCore(d))).lease.release();
  const tChild = tagFor('child', tCore);
  await t.throwsAsync(store.ensure(tChild, tCore, async (d) => {
    writeFileSync(join(d, 'half'), 'x');
    throw new Error('apt failed');
  }), { message: 'apt failed' });
  const ac = new AbortController();
  await t.throwsAsync(store.ensure(tChild, tCore, async (d) => {
    writeFileSync(join(d, 'half'), 'x');
    ac.abort();
  }, { signal: ac.signal }), { message: /cancelled/ });
  t.is(store.get(tChild), null);
  t.deepEqual(readdirSync(join(root, 'tmp')), []);
  t.deepEqual(mountsIn(root), []);
  t.deepEqual(store.list().map((s) => s.tag), [tCore]);
  t.deepEqual(store.leases(tCore), [], 'the parent lease taken for the build is gone');
});

// ---------------------------------------------------------------------------
// Several processes

/** A worker process running the store: ensure (populate logs to a marker file), or hang mid-populate, or hold a lease. */
function worker(t: ExecutionContext, job: Record<string, unknown>): ChildProcess & { done: Promise<{ code: number | null; out: string }> } {
  const dir = plainDir(t, 'osfarm-worker-');
  const script = join(dir, 'worker.mts');
  writeFileSync(
    script,
    `
import { appendFileSync, existsSync, writeFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { StageStore } from ${JSON.stringify(SRC)};
const job = JSON.parse(process.argv[2]);
const store = await StageStore.open({ root: job.root, cow: job.cow, onEvent: (e) => { if (e.type === 'waiting' && job.waiting) writeFileSync(job.waiting, 'waiting'); } });
const keepAlive = setInterval(() => {}, 1000);
if (job.mode === 'hold') {
  const r = await store.ensure(job.tag, job.parent, async () => { throw new Error('must be a hit'); });
  writeFileSync(job.ready, 'held');
} else {
  const r = await store.ensure(job.tag, job.parent, async (d) => {
    appendFileSync(job.marker, process.pid + '\\n');
    writeFileSync(join(d, 'built-by'), String(process.pid));
    if (job.mode === 'hang') {
      writeFileSync(join(d, 'partial'), 'x'.repeat(100000));
      writeFileSync(job.ready, 'populating');
      await new Promise(() => {});
    }
    if (job.started) writeFileSync(job.started, 'started');
    while (job.gate && !existsSync(job.gate)) await new Promise((r) => setTimeout(r, 50));
    await new Promise((r) => setTimeout(r, job.sleepMs ?? 0));
  });
  console.log(JSON.stringify({ hit: r.hit, waited: r.waited, files: readdirSync(r.dir).sort() }));
  await r.lease.release();
  clearInterval(keepAlive);
}
`,
  );
  const child = spawn(process.execPath, ['--import', 'tsx', script, JSON.stringify(job)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  const done = new Promise<{ code: number | null; out: string }>((r) => child.on('close', (code) => r({ code, out })));
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  return Object.assign(child, { done });
}

async function waitFor(path: string, ms = 60_000): Promise<void> {
  const end = Date.now() + ms;
  while (!existsSync(path)) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${path}`);
    await sleep(50);
  }
}

for (const { cow, fs } of [{ cow: 'overlayfs', fs: 'plain' }, { cow: 'btrfs', fs: 'btrfs' }] as const) {
  loopTest(`${cow}: two processes ensuring one stage build it once`, async (t) => {
    const root = storeDir(t, fs);
    const store = await StageStore.open({ root, cow });
    const tCore = tagFor('core', null);
    await (await store.ensure(tCore, null, async (d) => populateCore(d))).lease.release();
    const scratch = plainDir(t);
    const last = (out: string) => JSON.parse(out.trim().split('\n').pop()!) as { hit: boolean; waited: boolean; files: string[] };

    // Started together: whoever gets the lock builds, the other reuses.
    const race = tagFor('race', tCore);
    const raceMarker = join(scratch, 'race-calls');
    const job = { root, cow, tag: race, parent: tCore, marker: raceMarker, sleepMs: 300 };
    const [ra, rb] = await Promise.all([worker(t, job).done, worker(t, job).done]);
    t.is(ra.code, 0, ra.out);
    t.is(rb.code, 0, rb.out);
    t.is(readFileSync(raceMarker, 'utf8').trim().split('\n').length, 1, 'populate ran once');
    t.deepEqual([last(ra.out).hit, last(rb.out).hit].sort(), [false, true]);

    // One is mid-populate when the other asks: the other waits on the lock, then reuses the stage.
    const tag = tagFor('shared', tCore);
    const marker = join(scratch, 'calls');
    const started = join(scratch, 'started');
    const gate = join(scratch, 'gate');
    const waiting = join(scratch, 'waiting');
    const a = worker(t, { root, cow, tag, parent: tCore, marker, started, gate });
    await waitFor(started);
    const b = worker(t, { root, cow, tag, parent: tCore, marker, waiting });
    await waitFor(waiting);
    t.is(store.get(tag), null, 'not visible while being built');
    writeFileSync(gate, 'go');
    const [resA, resB] = await Promise.all([a.done, b.done]);
    t.is(resA.code, 0, resA.out);
    t.is(resB.code, 0, resB.out);
    t.is(readFileSync(marker, 'utf8').trim().split('\n').length, 1, 'populate ran once');
    t.like(last(resA.out), { hit: false, waited: false });
    t.like(last(resB.out), { hit: true, waited: true });
    for (const r of [last(resA.out), last(resB.out)]) t.true(r.files.includes('built-by') && r.files.includes('etc'));
    t.is(store.get(tag)!.hits, 1);
    t.true(store.verify().ok);
  });

  loopTest(`${cow}: a build killed mid-populate leaves nothing that looks complete, and the next ensure rebuilds`, async (t) => {
    const root = storeDir(t, fs);
    const store = await StageStore.open({ root, cow });
    const tCore = tagFor('core', null);
    await (await store.ensure(tCore, null, async (d) => populateCore(d))).lease.release();
    const tag = tagFor('killed', tCore);
    const scratch = plainDir(t);
    const marker = join(scratch, 'calls');
    const ready = join(scratch, 'ready');
    const w = worker(t, { root, cow, tag, parent: tCore, marker, ready, mode: 'hang' });
    await waitFor(ready);
    w.kill('SIGKILL');
    await w.done;
    t.is(store.get(tag), null, 'no stage');
    t.false(existsSync(join(root, tag)));
    t.deepEqual(store.list().map((s) => s.tag), [tCore]);
    const v = store.verify();
    t.true(v.ok, JSON.stringify(v.problems));
    t.true(v.leftovers.some((l) => !l.live && l.path.includes(`/tmp/${tag}.`)), 'the dead temp is reported as a leftover, not a stage');
    if (cow === 'overlayfs') t.true(mountsIn(root).length > 0, 'the killed build left its overlay mounted');
    // The next ensure sweeps the dead temp (unmounting it) and builds the stage.
    const r = await store.ensure(tag, tCore, async (d) => writeFileSync(join(d, 'rebuilt'), 'yes'));
    t.false(r.hit);
    t.true(existsSync(join(r.dir, 'rebuilt')));
    t.false(existsSync(join(r.dir, 'partial')));
    await r.lease.release();
    t.deepEqual(readdirSync(join(root, 'tmp')), []);
    t.deepEqual(mountsIn(root), []);
    t.true(store.verify().ok);
  });
}

loopTest('gc never removes a stage in use (a lease held by another process) nor its ancestors, and goes least recently used first', async (t) => {
  const root = storeDir(t, 'plain');
  const store = await StageStore.open({ root, cow: 'overlayfs' });
  const file = (n: number) => async (d: string) => writeFileSync(join(d, `f${n}`), pseudoRandom(10_000, n));
  const tCore = tagFor('core', null);
  const tBase = tagFor('base', tCore);
  const tApp = tagFor('app', tBase);
  const tOther = tagFor('other', tCore);
  const tLone = tagFor('lone', null);
  for (const [tag, parent, n] of [[tCore, null, 1], [tBase, tCore, 2], [tApp, tBase, 3], [tOther, tCore, 4], [tLone, null, 5]] as const) {
    await (await store.ensure(tag, parent, file(n))).lease.release();
    await sleep(5);
  }
  // Another process holds the appliance.
  const ready = join(plainDir(t), 'ready');
  const holder = worker(t, { root, cow: 'overlayfs', tag: tApp, parent: tBase, mode: 'hold', ready });
  await waitFor(ready);
  t.true(store.list().find((s) => s.tag === tApp)!.inUse);

  const dry = await store.gc({ maxSize: 0, dryRun: true });
  t.deepEqual(dry.removed.map((r) => r.tag), [tOther, tLone]);
  t.deepEqual(store.list().length, 5, 'a dry run removes nothing');
  const r = await store.gc({ maxSize: 0 });
  t.deepEqual(r.removed.map((x) => x.tag), [tOther, tLone], 'LRU order; the held stage and its ancestors stay');
  t.deepEqual(store.list().map((s) => s.tag).sort(), [tCore, tBase, tApp].sort());
  t.true(r.after > 0);
  t.true(r.inUse.includes(tApp));
  await t.throwsAsync(store.remove(tApp), { message: /in use \(pid \d+: ensure\)/ });
  await t.throwsAsync(store.remove(tCore), { message: /has 2 stage\(s\) built on it.*--recursive/ });
  holder.kill('SIGKILL');
  await holder.done;
  // The dead holder's lease no longer counts.
  const r2 = await store.gc({ maxSize: 0 });
  t.deepEqual(r2.removed.map((x) => x.tag), [tApp, tBase, tCore], 'children before parents');
  t.is(r2.after, 0);
  t.deepEqual(readdirSync(join(root, 'leases')), []);
});

test('gc respects least recently used among independent stages and stops at the bound', async (t) => {
  const root = join(plainDir(t), 'stages');
  const store = await StageStore.open({ root, cow: 'copy', durable: false });
  const tags = ['A', 'B', 'C'].map((n) => tagFor(n, null));
  for (const [i, tag] of tags.entries()) await (await store.ensure(tag, null, async (d) => writeFileSync(join(d, 'f'), pseudoRandom(1000, i)))).lease.release();
  // Use them in the order A, C, B: A is the least recently used, then C.
  for (const i of [0, 2, 1]) {
    await sleep(5);
    await (await store.ensure(tags[i]!, null, async () => t.fail())).lease.release();
  }
  const r1 = await store.gc({ maxSize: 2500 });
  t.deepEqual(r1.removed.map((r) => r.tag), [tags[0]]);
  t.is(r1.after, 2000);
  const r2 = await store.gc({ maxSize: 1000 });
  t.deepEqual(r2.removed.map((r) => r.tag), [tags[2]]);
  t.deepEqual(store.list().map((s) => s.tag), [tags[1]]);
  // A parent older than its child still waits for the child.
  const store2 = await StageStore.open({ root: join(plainDir(t), 'stages'), cow: 'copy', durable: false });
  const p = tagFor('p', null);
  const c = tagFor('c', p);
  await (await store2.ensure(p, null, async (d) => writeFileSync(join(d, 'f'), pseudoRandom(1000, 9)))).lease.release();
  await (await store2.ensure(c, p, async (d) => writeFileSync(join(d, 'g'), 'g'))).lease.release();
  const r3 = await store2.gc({ maxSize: 1001 });
  t.deepEqual(r3.removed.map((r) => r.tag), [c], 'the leaf goes first');
});

test('a size bound is kept automatically after each new stage', async (t) => {
  const root = join(plainDir(t), 'stages');
  const events: string[] = [];
  const store = await StageStore.open({ root, cow: 'copy', durable: false, maxSize: '2500', onEvent: (e) => events.push(e.type) });
  for (let i = 0; i < 5; i++) {
    const r = await store.ensure(tagFor(`s${i}`, null), null, async (d) => writeFileSync(join(d, 'f'), pseudoRandom(1000, i)));
    await r.lease.release();
    await sleep(5);
  }
  const left = store.list();
  t.is(left.length, 2);
  t.deepEqual(left.map((s) => s.tag).sort(), [tagFor('s3', null), tagFor('s4', null)].sort());
  t.true(events.includes('gc'));
  // The bound never removes the stage just built (its caller holds it).
  const big = await (await StageStore.open({ root, maxSize: 10 })).ensure(tagFor('big', null), null, async (d) => writeFileSync(join(d, 'f'), pseudoRandom(5000, 7)));
  t.truthy(big.dir && existsSync(join(big.dir, 'f')));
  await big.lease.release();
});

test('verify reports broken stages and exits non-zero; ls, rm and gc work from the CLI', async (t) => {
  const dir = plainDir(t);
  const root = join(dir, 'stages');
  const store = await StageStore.open({ root, cow: 'copy', durable: false });
  const tags = ['p', 'q', 'r', 's'].map((n) => tagFor(n, null));
  for (const tag of tags) await (await store.ensure(tag, null, async (d) => writeFileSync(join(d, 'f'), tag))).lease.release();
  const child = tagFor('child', tags[3]!);
  await (await store.ensure(child, tags[3]!, async (d) => writeFileSync(join(d, 'g'), 'g'))).lease.release();

  const ok = cliJson(['stages', 'verify', '--stages', root]);
  t.is(ok.status, 0);
  t.true(ok.result.ok);
  const ls = cliJson(['stages', 'ls', '--stages', root]);
  t.is(ls.status, 0);
  t.is(ls.result.stages.length, 5);
  t.is(ls.result.backend, 'copy');

  writeFileSync(join(root, tags[0]!, 'stage.json'), '{ "tag": "trunc');
  rmSync(join(root, tags[1]!, 'tree'), { recursive: true });
  const rec = JSON.parse(readFileSync(join(root, tags[2]!, 'stage.json'), 'utf8'));
  writeFileSync(join(root, tags[2]!, 'stage.json'), JSON.stringify({ ...rec, tag: tags[3] }));
  rmSync(join(root, tags[3]!), { recursive: true }); // the child's parent disappears
  mkdirSync(join(root, 'not-a-stage'));
  const bad = cliJson(['stages', 'verify', '--stages', root]);
  t.is(bad.status, 1);
  t.false(bad.result.ok);
  const problems = bad.result.problems.map((p: { tag?: string; problem: string }) => `${p.tag?.slice(0, 8) ?? '-'} ${p.problem}`).join('\n');
  t.regex(problems, new RegExp(`${tags[0]!.slice(0, 8)} stage.json is damaged: it does not parse`));
  t.regex(problems, new RegExp(`${tags[1]!.slice(0, 8)} its tree is missing`));
  t.regex(problems, new RegExp(`${tags[2]!.slice(0, 8)} stage.json is damaged: it names stage`));
  t.regex(problems, new RegExp(`${child.slice(0, 8)} its parent ${tags[3]!.slice(0, 12)}… is missing`));
  t.regex(problems, /- unexpected entry/);
  t.is(bad.result.problems.length, 5, problems);
  const human = spawnSync(process.execPath, ['--import', 'tsx', join(import.meta.dirname, '..', 'src', 'cli', 'main.ts'), 'stages', 'verify', '--stages', root], { encoding: 'utf8' });
  t.is(human.status, 1);
  t.regex(human.stdout, /5 problem\(s\)/);

  rmSync(join(root, 'not-a-stage'), { recursive: true });
  const rmDamaged = cliJson(['stages', 'rm', tags[0]!.slice(0, 10), '--stages', root]);
  t.is(rmDamaged.status, 0, rmDamaged.stderr);
  t.false(existsSync(join(root, tags[0]!)), 'a damaged stage can be removed');
  const rm = cliJson(['stages', 'rm', tags[1]!.slice(0, 10), '--stages', root]);
  t.is(rm.status, 0, rm.stderr);
  t.deepEqual(rm.result.removed, [tags[1]]);
  const missing = cliJson(['stages', 'rm', 'abcdef', '--stages', root]);
  t.is(missing.status, 1);
  t.is(missing.result.error.code, 'OSFARM_NOT_FOUND');
  const gc = cliJson(['stages', 'gc', '--max-size', '0', '--stages', root]);
  t.is(gc.status, 0, gc.stderr);
  t.is(gc.result.after, 0);
  t.is(cliJson(['stages', 'ls', '--stages', root]).result.stages.length, 0);
  t.is(cliJson(['stages', 'gc', '--stages', root]).status, 2, 'gc needs a bound');
});
