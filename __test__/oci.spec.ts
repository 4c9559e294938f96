// The OCI output from real builds through `osfarm build --json -f oci`: two appliances on one
// bookworm base (core minbase → base + less → appliance), one adding a package (hello), the
// other removing a file of the base (/etc/issue.net). Checked: a layer per stage, the core's
// and the base's layers the same blobs in both archives, podman running both (the package
// in one only, the removed file gone: the whiteout works), a second build of the same spec
// from nothing giving the same bytes, and what a second image costs an OCI store. Needs root,
// the Debian archive, podman and skopeo.
import test from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { compare } from '../src/blocks/index.js';
import { buildWorkDir, type CliRun, cliAsync, resultOf } from './fixtures/build/harness.js';
import { podmanLoadsAndRuns, podmanRun } from './helpers/podman.js';

const WORK = buildWorkDir();
const out = join(WORK, 'oci-test-out');
const repo = join(out, 'repo');
const stagesDir = join(out, 'stages');
const EPOCH = 1700000000;
const IMAGES = { a: 'localhost/oci-app-hello:latest', b: 'localhost/oci-app-trimmed:latest' };

function built(t: { log: (...a: unknown[]) => void }, run: CliRun): Record<string, any> {
  const r = resultOf(run);
  if (run.status !== 0) t.log(JSON.stringify(r), run.stderr.slice(-2000));
  return r;
}
const archiveOf = (r: Record<string, any>): string => r.outputs.find((o: any) => o.format === 'oci').path;
const inspect = (archive: string, config = false): Record<string, any> =>
  JSON.parse(execFileSync('skopeo', ['inspect', ...(config ? ['--config'] : []), `oci-archive:${archive}`], { encoding: 'utf8' }));

// The builds start when the first test needs them, one after another: appliance a (building
// core and base), appliance b on the cached base, and appliance a once more in a stage store
// of its own (every stage and layer made again).
let started: { a: Promise<CliRun>; b: Promise<CliRun>; fresh: Promise<CliRun> } | undefined;
function builds(): NonNullable<typeof started> {
  if (started) return started;
  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, 'core.yaml'), `name: oci-core\ndistribution: debian\nrelease: bookworm\narchitecture: amd64\ngroups: [minbase]\nsourceDateEpoch: ${EPOCH}\n`);
  writeFileSync(join(out, 'base.yaml'), 'name: oci-base\nparent: core.yaml\npackages: [less]\n');
  writeFileSync(join(out, 'a.yaml'), 'name: oci-app-hello\nparent: base.yaml\npackages: [hello]\n');
  writeFileSync(join(out, 'b.yaml'), 'name: oci-app-trimmed\nparent: base.yaml\ncommands: ["rm /etc/issue.net"]\n');
  const build = (spec: string, dest: string, extra: string[] = [], stages = stagesDir) =>
    cliAsync(['--repo', repo, 'build', join(out, spec), '-f', 'oci', '-d', WORK, '-o', join(out, dest), ...extra], undefined, { OSFARM_STAGES: stages });
  const a = build('a.yaml', 'a.oci.tar');
  const b = a.then(() => build('b.yaml', 'b.oci.tar'));
  const fresh = b.then(() => build('a.yaml', 'fresh/a.oci.tar', ['--rebuild'], join(out, 'fresh-stages')));
  started = { a, b, fresh };
  return started;
}

test.serial('a layer per stage; the core and base layers are the same blobs in both appliances; the config names the stages', async (t) => {
  const a = built(t, await builds().a);
  const b = built(t, await builds().b);
  t.is(a.stages.length, 3);
  t.true(b.stages[1].hit, "b's base came from the stage cache");
  const [ia, ib] = [inspect(archiveOf(a)), inspect(archiveOf(b))];
  t.is(ia.Layers.length, 3);
  t.is(ib.Layers.length, 3);
  t.deepEqual(ib.Layers.slice(0, 2), ia.Layers.slice(0, 2), 'core and base: the same layer digests');
  t.not(ib.Layers[2], ia.Layers[2]);
  const config = inspect(archiveOf(a), true);
  t.deepEqual(config.rootfs.diff_ids, ia.Layers);
  t.is(config.history.length, 3);
  for (const [i, s] of a.stages.entries()) t.true(config.history[i].created_by.includes(s.tag), `history ${i} names stage ${s.tag}`);
  t.is(config.config.Labels['org.osfarm.spec-digest'], a.specDigest);
  t.is(config.config.Labels['org.osfarm.stages'], a.stages.map((s: any) => s.tag).join(' '));
  t.is(config.created, new Date(EPOCH * 1000).toISOString().replace('.000Z', 'Z'));
});

test.serial('podman runs both: the package in one only, the file the other removed is gone', async (t) => {
  const a = built(t, await builds().a);
  const b = built(t, await builds().b);
  t.teardown(() => {
    spawnSync('podman', ['rmi', '-f', IMAGES.a, IMAGES.b], { stdio: 'ignore' });
  });
  for (const [archive, name] of [[archiveOf(a), IMAGES.a], [archiveOf(b), IMAGES.b]] as const) podmanLoadsAndRuns(t, archive, name);
  const probe = 'for p in /usr/bin/hello /usr/bin/less /etc/issue.net /etc/issue; do test -e $p && echo "$p yes" || echo "$p no"; done';
  const ra = podmanRun(IMAGES.a, ['sh', '-c', probe]);
  const rb = podmanRun(IMAGES.b, ['sh', '-c', probe]);
  t.is(ra.status, 0, ra.stderr);
  t.is(rb.status, 0, rb.stderr);
  t.is(ra.stdout, '/usr/bin/hello yes\n/usr/bin/less yes\n/etc/issue.net yes\n/etc/issue yes\n');
  t.is(rb.stdout, '/usr/bin/hello no\n/usr/bin/less yes\n/etc/issue.net no\n/etc/issue yes\n');
  t.regex(podmanRun(IMAGES.a, ['hello']).stdout, /Hello, world!/);
  // b's own layer is the whiteout (and the directory above it): nothing else changed.
  const dir = join(out, 'b-layout');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir);
  execFileSync('tar', ['-xf', archiveOf(b), '-C', dir]);
  const top = inspect(archiveOf(b)).Layers[2].replace(':', '/');
  t.deepEqual(execFileSync('tar', ['-tf', join(dir, 'blobs', top)], { encoding: 'utf8' }).trim().split('\n').filter((n) => n.startsWith('./etc/')).sort(), ['./etc/', './etc/.wh.issue.net']);
  rmSync(dir, { recursive: true, force: true });
});

test.serial('two builds with SOURCE_DATE_EPOCH, each in a stage store of its own: the same archive, byte for byte', async (t) => {
  const a = built(t, await builds().a);
  const fresh = built(t, await builds().fresh);
  t.false(fresh.stages.some((s: any) => s.hit), 'every stage built again');
  t.deepEqual(fresh.stages.map((s: any) => s.tag), a.stages.map((s: any) => s.tag));
  t.true(readFileSync(archiveOf(fresh)).equals(readFileSync(archiveOf(a))));
});

test.serial('two appliances in one OCI store: the second costs its own layer only', async (t) => {
  const a = built(t, await builds().a);
  const b = built(t, await builds().b);
  // skopeo copies into an OCI image layout (oci:DIR:TAG), which stores each blob once (the
  // layers gzipped, as a registry holds them).
  const store = (name: string, images: Array<[string, string]>) => {
    const dir = join(out, `store-${name}`);
    rmSync(dir, { recursive: true, force: true });
    for (const [archive, tag] of images) execFileSync('skopeo', ['copy', '-q', `oci-archive:${archive}`, `oci:${dir}:${tag}`]);
    const blobs = join(dir, 'blobs', 'sha256');
    const bytes = readdirSync(blobs).reduce((n, f) => n + statSync(join(blobs, f)).size, 0);
    const manifest = JSON.parse(readFileSync(join(blobs, JSON.parse(readFileSync(join(dir, 'index.json'), 'utf8')).manifests.at(-1).digest.slice(7)), 'utf8'));
    rmSync(dir, { recursive: true, force: true });
    return { bytes, own: manifest.layers.at(-1).size as number };
  };
  const sa = store('a', [[archiveOf(a), 'a']]);
  const sb = store('b', [[archiveOf(b), 'b']]);
  const both = store('both', [[archiveOf(a), 'a'], [archiveOf(b), 'b']]);
  t.log(`OCI store (gzipped layers): a ${sa.bytes} bytes, b ${sb.bytes}, both ${both.bytes} (${((sa.bytes + sb.bytes) / both.bytes).toFixed(3)}x less than apart; b adds ${both.bytes - sa.bytes}, its own layer ${sb.own})`);
  t.true(both.bytes - sa.bytes <= sb.own + 16 * 1024, 'b adds its own layer, its config and its manifest');
  // The archives' blocks: b's shares all but its own layer's and metadata's with a's.
  const c = await compare(archiveOf(b), archiveOf(a));
  t.log(`b's archive blocks found in a's: ${(c.a.shareInOther * 100).toFixed(2)} %`);
  t.true(c.a.shareInOther > 0.99);
});
