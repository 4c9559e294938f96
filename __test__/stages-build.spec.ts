/**
 * Real layered builds (root, mmdebstrap, network to the apt mirror): a Debian minbase
 * core, a base with one small package, appliances with one more each; the second
 * appliance reuses core and base; a repeated request comes from the repository; two
 * builds of one stage build it once; a build killed mid-stage leaves nothing that looks
 * complete. The .deb cache is shared with the other build tests ($OSFARM_TEST_WORK).
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';

import { plainDir } from './helpers/loopfs.js';
import { outcome } from './helpers/tmp.js';

const CLI = join(import.meta.dirname, '..', 'src', 'cli', 'main.ts');
const WORK = process.env.OSFARM_TEST_WORK ?? '/var/tmp/osfarm-test-build';

interface Run {
  status: number | null;
  signal: NodeJS.Signals | null;
  events: Record<string, any>[];
  result: Record<string, any>;
  stderr: string;
}

/** Runs `osfarm --json --repo REPO ...args`; `onEvent` sees each NDJSON line as it comes (with the child, to kill it). */
function osfarm(repo: string, args: string[], onEvent?: (e: Record<string, any>, kill: () => void) => void): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', CLI, '--json', '--repo', repo, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    const events: Record<string, any>[] = [];
    let rest = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      const parts = (rest + chunk).split('\n');
      rest = parts.pop()!;
      for (const p of parts.filter((l) => l.trim() !== '')) {
        const e = JSON.parse(p) as Record<string, any>;
        events.push(e);
        onEvent?.(e, () => child.kill('SIGKILL'));
      }
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (status, signal) => {
      if (rest.trim() !== '') events.push(JSON.parse(rest) as Record<string, any>);
      resolve({ status, signal, events, result: outcome(events[events.length - 1]) ?? {}, stderr });
    });
  });
}

function built(t: { is: (a: unknown, b: unknown, m?: string) => void }, r: Run): void {
  t.is(r.status, 0, `build failed: ${JSON.stringify(r.result).slice(0, 600)}\n${r.stderr.slice(-2000)}`);
}

/** The file list of a tar image (GNU tar reads the block-aligned tar). */
function listing(image: string): string[] {
  return spawnSync('tar', ['-tf', image], { encoding: 'utf8', maxBuffer: 64 << 20 }).stdout.split('\n').map((l) => l.replace(/^\.\//, ''));
}

/** One file's content from a tar image. */
function fileIn(image: string, path: string): string {
  const r = spawnSync('tar', ['-xOf', image, `./${path}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout : spawnSync('tar', ['-xOf', image, path], { encoding: 'utf8' }).stdout;
}

const dir = (t: Parameters<typeof plainDir>[0]) => {
  const d = plainDir(t, 'osfarm-stages-build-');
  const specs = join(d, 'specs');
  mkdirSync(specs);
  const spec = (name: string, body: string) => writeFileSync(join(specs, `${name}.yaml`), body);
  spec('core', 'name: core\ndistribution: debian\nrelease: bookworm\ngroups: [minbase]\n');
  spec('base', 'name: base\nparent: core\npackages: [less]\n');
  for (const [app, pkg] of [['app1', 'jq'], ['app2', 'bc'], ['app3', 'dc'], ['app4', 'ed']] as const) spec(app, `name: ${app}\nparent: base\npackages: [${pkg}]\nhostname: ${app}\n`);
  return { repo: join(d, 'repo'), specs, out: join(d, 'out') };
};

const build = (repo: string, specs: string, out: string, app: string, extra: string[] = [], onEvent?: Parameters<typeof osfarm>[2]) =>
  osfarm(repo, ['build', join(specs, `${app}.yaml`), '-d', WORK, '-o', join(out, `${app}-${Math.random().toString(36).slice(2, 8)}.tar`), ...extra], onEvent);

test.serial('layered builds: appliances share core and base; repeated requests, concurrent and killed builds', async (t) => {
  const { repo, specs, out } = dir(t);

  // The first appliance builds all three stages.
  const a1 = await build(repo, specs, out, 'app1');
  built(t, a1);
  t.deepEqual(a1.result.stages.map((s: any) => s.hit), [false, false, false]);
  const files1 = listing(a1.result.outputs[0].path);
  t.true(files1.includes('usr/bin/jq') && files1.includes('usr/bin/less'));
  t.false(files1.some((f) => f.startsWith('var/cache/apt/archives/') && f.endsWith('.deb')), 'no .deb stays in an image');
  t.is(fileIn(a1.result.outputs[0].path, 'etc/hostname'), 'app1\n', "the appliance's own configure ran in its stage");

  // The second reuses core and base, and has its own package but not the first one's.
  const a2 = await build(repo, specs, out, 'app2');
  built(t, a2);
  t.deepEqual(a2.result.stages.map((s: any) => s.hit), [true, true, false]);
  t.deepEqual(a2.result.stages.slice(0, 2).map((s: any) => s.tag), a1.result.stages.slice(0, 2).map((s: any) => s.tag));
  const files2 = listing(a2.result.outputs[0].path);
  t.true(files2.includes('usr/bin/bc') && files2.includes('usr/bin/less'));
  t.is(fileIn(a2.result.outputs[0].path, 'etc/hostname'), 'app2\n');
  t.false(files2.includes('usr/bin/jq'));

  // A repeated identical request: the repository's image, nothing built.
  const again = await osfarm(repo, ['build', join(specs, 'app1.yaml'), '-d', WORK]);
  built(t, again);
  t.true(again.result.cached);
  t.is(again.result.outputs[0].digest, a1.result.outputs[0].digest);
  t.false(again.events.some((e) => e.type === 'phase'), 'no phase ran');

  // images find / show / export, and the exported XML is the same request.
  const found = await osfarm(repo, ['images', 'find', join(specs, 'app1.yaml')]);
  t.is(found.status, 0);
  t.deepEqual(found.result.images.map((i: any) => i.digest), [a1.result.outputs[0].digest]);
  const shown = await osfarm(repo, ['images', 'show', 'app1.tar']);
  t.is(shown.status, 0);
  t.deepEqual(shown.result.stages.map((s: any) => s.tag), a1.result.stages.map((s: any) => s.tag));
  t.is(shown.result.specDigest, a1.result.specDigest);
  t.regex(shown.result.buildLog.tail, /apt-get install jq/);
  const xml = join(out, 'app1.xml');
  t.is((await osfarm(repo, ['images', 'export', 'app1.tar', '-o', xml])).status, 0);
  const checked = await osfarm(repo, ['build', '--check', xml]);
  t.is(checked.result.specDigest, a1.result.specDigest, 'the XML reads back to the same request checksum');
  t.is((await osfarm(repo, ['images', 'find', xml])).result.images.length, 1);

  // Two builds of one new stage at once: it is built once, the other build waits and reuses it.
  const [c1, c2] = await Promise.all([build(repo, specs, out, 'app3'), build(repo, specs, out, 'app3')]);
  built(t, c1);
  built(t, c2);
  const last = [c1, c2].map((r) => r.result.stages[2]);
  t.is(last.filter((s) => !s.hit).length, 1, 'exactly one build made the app3 stage');
  t.is(last[0].tag, last[1].tag);

  // A build killed in the middle of its stage (apt-get running in the chroot) leaves no stage that looks complete.
  const killed = await build(repo, specs, out, 'app4', [], (e, kill) => {
    if (e.type === 'log' && /apt-get install ed/.test(e.line)) kill();
  });
  t.is(killed.signal, 'SIGKILL');
  const ls = await osfarm(repo, ['stages', 'ls']);
  t.false(ls.result.stages.some((s: any) => /app4/.test(s.label ?? '')), 'no app4 stage');
  t.is(ls.result.stages.length, 5, 'core, base, app1, app2, app3');
  const v = await osfarm(repo, ['stages', 'verify']);
  t.true(v.result.ok, JSON.stringify(v.result.problems));
  t.true(v.result.leftovers.length > 0 && v.result.leftovers.every((l: any) => !l.live), 'the dead build is listed as a leftover');
  // The next build of the same stage sweeps it (and whatever the dead build left running) and builds it.
  const a4 = await build(repo, specs, out, 'app4');
  built(t, a4);
  t.false(a4.result.stages[2].hit);
  t.true(listing(a4.result.outputs[0].path).includes('bin/ed') || listing(a4.result.outputs[0].path).includes('usr/bin/ed'));
  const after = await osfarm(repo, ['stages', 'verify']);
  t.true(after.result.ok);
  t.deepEqual(after.result.leftovers, []);

  // The store: six stages, the shared ones hit, each appliance holding only its own changes.
  const final = await osfarm(repo, ['stages', 'ls']);
  const byTag = new Map<string, any>(final.result.stages.map((s: any) => [s.tag, s]));
  t.is(byTag.size, 6);
  const baseStage = byTag.get(a1.result.stages[1].tag);
  t.true(baseStage.hits >= 3, `base hits: ${baseStage.hits}`);
  const app1Stage = byTag.get(a1.result.stages[2].tag);
  t.true(app1Stage.ownSize < app1Stage.size / 5, `app1 own ${app1Stage.ownSize} of ${app1Stage.size} bytes`);
});

/** A local RPM repository of the builder's fixture packages (rpmbuild, createrepo_c with the comps group). */
function rpmRepository(dir: string): string {
  const fixtures = join(import.meta.dirname, 'fixtures', 'build', 'rpm');
  const top = join(dir, 'rpmbuild');
  const repo = join(dir, 'rpm-repo');
  mkdirSync(repo, { recursive: true });
  for (const spec of readdirSync(fixtures).filter((n) => n.endsWith('.spec'))) execFileSync('rpmbuild', ['-bb', '--quiet', '--define', `_topdir ${top}`, join(fixtures, spec)], { stdio: 'pipe' });
  for (const rpm of readdirSync(join(top, 'RPMS', 'noarch'))) copyFileSync(join(top, 'RPMS', 'noarch', rpm), join(repo, rpm));
  execFileSync('createrepo_c', ['--quiet', '-g', join(fixtures, 'comps.xml'), repo]);
  return repo;
}

test.serial('RPM stages: a child installs its own packages with dnf --installroot on a copy of the core', async (t) => {
  const d = plainDir(t, 'osfarm-stages-rpm-');
  const rpmRepo = rpmRepository(d);
  writeFileSync(join(d, 'core.yaml'), 'name: rpm-core\ndistribution: fedora\nrelease: "40"\ngroups: [osfarm-base]\ngpgCheck: false\n');
  writeFileSync(join(d, 'app.yaml'), 'name: rpm-app\nparent: core\npackages: [osfarm-test-hello]\nhostname: rpm-app\n');
  const repo = join(d, 'repo');
  const mirror = ['--mirror', `file://${rpmRepo}`];
  const app = await osfarm(repo, ['build', join(d, 'app.yaml'), ...mirror, '-d', WORK, '-o', join(d, 'app.tar')]);
  built(t, app);
  t.deepEqual(app.result.stages.map((s: any) => s.hit), [false, false]);
  const tree = join(d, 'tree');
  mkdirSync(tree);
  execFileSync('tar', ['-xpf', app.result.outputs[0].path, '-C', tree, '--numeric-owner']);
  const q = execFileSync('rpm', ['-qa', '--root', tree, '--dbpath', '/usr/lib/sysimage/rpm', '--qf', '%{NAME}\\n'], { encoding: 'utf8' }).trim().split('\n').sort();
  t.deepEqual(q, ['osfarm-test-extra', 'osfarm-test-filesystem', 'osfarm-test-hello']);
  t.is(fileIn(app.result.outputs[0].path, 'etc/hostname'), 'rpm-app\n');
  // The core alone is another request, but its stage is the one the appliance was built on.
  const core = await osfarm(repo, ['build', join(d, 'core.yaml'), ...mirror, '-d', WORK, '-o', join(d, 'core.tar')]);
  built(t, core);
  t.deepEqual(core.result.stages.map((s: any) => [s.tag, s.hit]), [[app.result.stages[0].tag, true]]);
  t.false(listing(core.result.outputs[0].path).includes('usr/bin/osfarm-hello'));
});
