// The OCI output's layer per stage, on small trees made here (no distribution build): the
// parent's layer is its whole tree, the child's holds what the child changed plus a whiteout
// for each path it removed; podman, given the archive, sees exactly the child's tree; the
// archive is the same bytes when made again, and a stage's kept layer is reused. Needs root
// (owners), GNU tar, skopeo and podman.
import test from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import { lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import type { OutputContext } from '../src/builder/outputs/context.js';
import { writeOci } from '../src/builder/outputs/oci.js';
import { specFromObject } from '../src/spec/index.js';
import { stageTrees } from './helpers/stage-trees.js';
import { tempDir } from './helpers/tmp.js';

const EPOCH = 1700000000;
const NAME = `osfarm-oci-layers-test-${process.pid}`;
const TAGS = ['a'.repeat(64), 'b'.repeat(64)];

function ctxFor(buildDir: string, layers: string[], derived?: string): OutputContext {
  mkdirSync(buildDir, { recursive: true });
  return {
    digest: 'test',
    spec: specFromObject({ name: NAME, distribution: 'debian', release: 'bookworm', architecture: 'amd64' }),
    sourceDateEpoch: EPOCH,
    layers: layers.map((dir, i) => ({ tag: derived ? TAGS[i]! : null, dir, label: i === 0 ? 'core (test)' : '+ child' })),
    ...(derived ? { derivedPath: (tag: string, name: string) => join(derived, tag, name) } : {}),
    buildDir,
    log: () => {},
  };
}

/** Every path below `root` ('/etc', '/etc/keep', …), sorted. */
const walk = (root: string, rel = ''): string[] =>
  readdirSync(join(root, rel)).sort().flatMap((n) => {
    const r = `${rel}/${n}`;
    return lstatSync(join(root, r)).isDirectory() ? [r, ...walk(root, r)] : [r];
  });

test('a layer per stage: the child layer holds its changes and whiteouts, podman sees the child tree, the bytes are reproducible', async (t) => {
  const dir = tempDir(t, 'osfarm-oci-layers-');
  const { parent, child } = stageTrees(dir);
  const archive = join(dir, 'x.oci.tar');
  await writeOci(archive, ctxFor(join(dir, 'build-1'), [parent, child]));

  // Made again from the same trees (nothing kept): the same bytes.
  const again = join(dir, 'again.oci.tar');
  await writeOci(again, ctxFor(join(dir, 'build-2'), [parent, child]));
  t.true(readFileSync(again).equals(readFileSync(archive)), 'made twice: identical archives');
  const inspect = JSON.parse(execFileSync('skopeo', ['inspect', `oci-archive:${archive}`], { encoding: 'utf8' }));
  // As stages (the config then names their tags): made, then from the layers kept with the
  // stages, the same bytes, and the same layers as above.
  const derived = join(dir, 'derived');
  const kept = [1, 2].map((n) => join(dir, `kept-${n}.oci.tar`));
  for (const [n, k] of kept.entries()) await writeOci(k, ctxFor(join(dir, `build-kept-${n}`), [parent, child], derived));
  t.deepEqual(readdirSync(join(derived, TAGS[1]!)).sort(), ['oci-layer-r1-1700000000.tar', 'oci-layer-r1-1700000000.tar.json']);
  t.true(readFileSync(kept[1]!).equals(readFileSync(kept[0]!)), 'from kept layers: identical archive');
  t.deepEqual(JSON.parse(execFileSync('skopeo', ['inspect', `oci-archive:${kept[0]}`], { encoding: 'utf8' })).Layers, inspect.Layers);

  // skopeo reads two layers; the config names both stages.
  t.is(inspect.Layers.length, 2);
  const config = JSON.parse(execFileSync('skopeo', ['inspect', '--config', `oci-archive:${archive}`], { encoding: 'utf8' }));
  t.deepEqual(config.rootfs.diff_ids, inspect.Layers, 'uncompressed: each diff_id is its layer digest');
  t.deepEqual(config.history.map((h: { created_by: string }) => h.created_by), ['core (test)', '+ child'].map((l) => `osfarm stage ${l}`));
  t.is(config.config.Labels['org.osfarm.spec-digest'], 'test');

  // The child's layer: its changes (a changed file whole), the whiteouts, the directories
  // above them, nothing else.
  const layout = join(dir, 'layout');
  mkdirSync(layout);
  execFileSync('tar', ['-xf', archive, '-C', layout]);
  const childLayer = join(layout, 'blobs', inspect.Layers[1].replace(':', '/'));
  const listing = execFileSync('tar', ['-tvf', childLayer], { encoding: 'utf8' });
  const names = listing.trim().split('\n').map((l) => l.replace(/^.*? \d\d:\d\d /, '').replace(/ (->|link to) .*$/, ''));
  t.deepEqual(names.sort(), [
    './.wh.gone', './becomes-dir/', './becomes-dir/inside', './becomes-file', './etc/', './etc/.wh.removed',
    './etc/keep', './etc/mode', './etc/new file', './etc/newlink', './etc/same-size', './etc/sub/', './etc/sub/hardlink',
  ].sort());
  t.regex(listing, /^hrw-r--r-- 0\/0 +0 \S+ \S+ \.\/etc\/sub\/hardlink link to \.\/etc\/new file$/m, 'the hard link is one inode');
  t.regex(listing, /^-rw------- 1000\/1001 /m, 'numeric owners');
  // Every time clamped to the epoch.
  for (const l of listing.trim().split('\n')) t.regex(l, /20(?:20-09-13|23-11-14) \d\d:\d\d /, l);

  // podman applies the layers (whiteouts included) to exactly the child's tree.
  const image = `localhost/${NAME}:latest`;
  t.teardown(() => {
    spawnSync('podman', ['image', 'unmount', image], { stdio: 'ignore' });
    spawnSync('podman', ['rmi', '-f', image], { stdio: 'ignore' });
  });
  const load = spawnSync('podman', ['load', '-i', archive], { encoding: 'utf8' });
  t.is(load.status, 0, load.stderr);
  const mounted = spawnSync('podman', ['image', 'mount', image], { encoding: 'utf8' });
  t.is(mounted.status, 0, mounted.stderr);
  const root = mounted.stdout.trim();
  t.deepEqual(walk(root), walk(child));
  for (const r of walk(child)) {
    const a = lstatSync(join(child, r));
    const b = lstatSync(join(root, r));
    t.is(b.mode, a.mode, `${r} mode`);
    t.is(`${b.uid}:${b.gid}`, `${a.uid}:${a.gid}`, `${r} owner`);
    t.is(Math.floor(b.mtimeMs / 1000), Math.min(Math.floor(a.mtimeMs / 1000), EPOCH), `${r} mtime`);
    if (a.isFile()) t.true(readFileSync(join(root, r)).equals(readFileSync(join(child, r))), `${r} content`);
    if (a.isSymbolicLink()) t.is(readlinkSync(join(root, r)), readlinkSync(join(child, r)), `${r} target`);
  }
  t.is(lstatSync(join(root, 'etc/new file')).ino, lstatSync(join(root, 'etc/sub/hardlink')).ino);
  t.regex(execFileSync('getfattr', ['--absolute-names', '-n', 'security.capability', '-e', 'hex', join(root, 'etc/new file')], { encoding: 'utf8' }), /=0x0100000200200000000000000000000000000000/);
});

test('a stage that changed nothing gives an empty layer, and a tree that is no stage is not kept', async (t) => {
  const dir = tempDir(t, 'osfarm-oci-empty-');
  const tree = join(dir, 'tree');
  mkdirSync(join(tree, 'etc'), { recursive: true });
  writeFileSync(join(tree, 'etc/os-release'), 'ID=test\n');
  const archive = join(dir, 'x.oci.tar');
  await writeOci(archive, ctxFor(join(dir, 'build'), [tree, tree, tree]));
  const inspect = JSON.parse(execFileSync('skopeo', ['inspect', `oci-archive:${archive}`], { encoding: 'utf8' }));
  t.is(inspect.Layers.length, 3);
  t.is(inspect.Layers[1], inspect.Layers[2], 'two empty layers: one blob');
  const layout = join(dir, 'layout');
  mkdirSync(layout);
  execFileSync('tar', ['-xf', archive, '-C', layout]);
  t.is(execFileSync('tar', ['-tf', join(layout, 'blobs', inspect.Layers[1].replace(':', '/'))], { encoding: 'utf8' }), '');
  t.false(readdirSync(join(dir, 'build')).some((n) => n.startsWith('oci-')), 'no scratch left');
  rmSync(layout, { recursive: true });
});
