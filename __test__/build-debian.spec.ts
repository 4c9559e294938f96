// Real Debian builds through `osfarm build --json` with mmdebstrap (bookworm, amd64): the
// tree, chroot hygiene, the repository entry, the root password, reproducibility, block
// commonality between images, and teardown when a build is interrupted. Needs root and
// the Debian archive (through the host's apt configuration, or $OSFARM_MIRROR).
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';

import { compare } from '../src/blocks/index.js';
import { Repository } from '../src/repo/index.js';
import { buildWorkDir, type CliRun, cliAsync, leftovers, resultOf } from './fixtures/build/harness.js';
import { tempDir } from './helpers/tmp.js';

const WORK = buildWorkDir();
const EPOCH = '1700000000';
const PASSWORD = 'osfarm Test-Pa55word';
/** The device nodes and links mmdebstrap creates in /dev; anything else came from the host. */
const DEV = ['console', 'fd', 'full', 'null', 'ptmx', 'pts', 'random', 'shm', 'stderr', 'stdin', 'stdout', 'tty', 'urandom', 'zero'];

function sha256(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

function listing(tar: string): string[] {
  return execFileSync('tar', ['--full-time', '-tvf', tar], { encoding: 'utf8', maxBuffer: 256 << 20 }).split('\n');
}

function built(t: { log: (...a: unknown[]) => void }, run: CliRun): Record<string, any> {
  const r = resultOf(run);
  if (run.status !== 0) t.log(JSON.stringify(r), run.stderr.slice(-2000));
  return r;
}

// One image with everything a user sets (group, packages, password, a command in the
// chroot), one plain minbase built twice; all through the CLI, all asserted below. They
// start when the first test that needs them runs (never at import, so loading this file,
// or running only some of its tests, builds nothing it does not use), one after another.
const out = join(WORK, 'debian-test-out');
const repo = join(out, 'repo');
// Each from scratch: its own repository and stage store, so no cached tree is reused.
const scratch = (name: string) => ['--repo', join(out, `repo-${name}`)];
const scratchEnv = (name: string) => ({ OSFARM_STAGES: join(out, `stages-${name}`) });
let started: { full: Promise<CliRun>; minbase1: Promise<CliRun>; minbase2: Promise<CliRun> } | undefined;
function builds(): NonNullable<typeof started> {
  if (started) return started;
  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  const full = cliAsync([
    '--repo', repo, 'build', '-t', 'debian-bookworm-amd64', '-d', WORK, '-o', join(out, 'full.tar'),
    '-f', 'tar,tar.gz', '-g', 'core', '-p', 'python3-minimal', '-p', 'less', '-w', PASSWORD,
    '--run', 'test -r /proc/self/status && test -c /dev/null && touch /dev/osfarm-probe && echo osfarm-was-here > /etc/osfarm-test',
    '--source-date-epoch', EPOCH,
  ]);
  const minbase = (n: number) =>
    cliAsync(
      [...scratch(`minbase-${n}`), 'build', '-t', 'debian-bookworm-amd64', '-d', WORK, '-o', join(out, `minbase-${n}.tar`), '--no-repo', '--source-date-epoch', EPOCH],
      undefined,
      scratchEnv(`minbase-${n}`),
    );
  const minbase1 = full.then(() => minbase(1));
  const minbase2 = minbase1.then(() => minbase(2));
  started = { full, minbase1, minbase2 };
  return started;
}

test.serial('a bookworm build with a group, packages, a password and a command: events, outputs, repository', async (t) => {
  const run = await builds().full;
  const r = built(t, run);
  t.is(run.status, 0);
  t.is(r.backend, 'mmdebstrap');
  const phases = run.lines.filter((l) => l.type === 'phase').map((l) => l.phase);
  // Two stages: the core (-g core), then the one the flags add (packages, password, command),
  // so that flag builds differing in a package share their core.
  t.deepEqual(phases, ['bootstrap', 'packages', 'configure', 'packages', 'configure', 'pack', 'index']);
  t.deepEqual(r.outputs.map((o: any) => o.format), ['tar', 'tar.gz']);
  t.true(r.outputs.every((o: any) => o.inRepository && existsSync(o.path)));

  // In the repository, each output with its spec and the build log.
  const entries = Repository.open(repo).list();
  t.deepEqual(entries.map((e) => e.name).sort(), ['debian-bookworm-amd64.tar', 'debian-bookworm-amd64.tar.gz']);
  for (const e of entries) {
    const meta = e.meta as any;
    t.is(e.digest, r.outputs.find((o: any) => o.format === meta.format).digest);
    t.deepEqual(meta.spec, r.spec);
    t.deepEqual(meta.spec.packages, ['less', 'python3-minimal']);
    t.is(meta.buildLog.path, r.logPath);
    t.regex(meta.buildLog.tail, /osfarm: phase pack/);
    // Every installed package with its version, as dpkg in the image has it.
    const installed = meta.installed as { name: string; version: string }[];
    t.deepEqual(installed.map((p) => p.name), installed.map((p) => p.name).sort(), 'sorted by name');
    for (const p of ['less', 'python3-minimal', 'dpkg', 'apt']) t.regex(installed.find((i) => i.name === p)?.version ?? '', /^\d[\w.+~:-]*$/, p);
    t.false(installed.some((p) => p.name === 'cron'));
  }
  t.is(entries.find((e) => e.format === 'tar')!.size, r.outputs[0].size);
  t.regex(readFileSync(r.logPath, 'utf8'), /Setting up python3-minimal/);
  // Nothing of this build is mounted afterwards, and its scratch directory is gone.
  t.deepEqual(leftovers(run, join(repo, 'stages')), { mounts: [], scratch: [] });
});

test.serial('the tree: packages installed, no host mounts, caches, lists or host paths', async (t) => {
  const r = built(t, await builds().full);
  const tar = join(out, 'full.tar');
  const tree = tempDir(t, 'osfarm-tree-');
  execFileSync('tar', ['-xpf', tar, '-C', tree, '--numeric-owner']);
  const installed = execFileSync('dpkg-query', [`--admindir=${join(tree, 'var/lib/dpkg')}`, '-W', '-f', '${Package} ${db:Status-Status}\\n'], { encoding: 'utf8' });
  for (const p of ['python3-minimal', 'less', 'dpkg', 'apt']) t.regex(installed, new RegExp(`^${p} installed$`, 'm'), p);
  // -g core is the minbase variant: no Priority: important packages such as cron.
  t.notRegex(installed, /^cron /m);
  t.is(readFileSync(join(tree, 'etc/osfarm-test'), 'utf8'), 'osfarm-was-here\n');
  // The image's package list in the repository is the tree's own, versions included.
  const versions = execFileSync('dpkg-query', [`--admindir=${join(tree, 'var/lib/dpkg')}`, '-W', '-f', '${db:Status-Abbrev}${Package} ${Version}\n'], { encoding: 'utf8' });
  const expected = versions.split('\n').filter((l) => l.startsWith('ii ')).map((l) => l.slice(3)).sort();
  const recorded = Repository.open(repo).list().find((e) => e.format === 'tar')!.meta as { installed: { name: string; version: string }[] };
  t.deepEqual(recorded.installed.map((p) => `${p.name} ${p.version}`).sort(), expected);

  t.deepEqual(readdirSync(join(tree, 'proc')), []);
  t.deepEqual(readdirSync(join(tree, 'sys')), []);
  t.deepEqual(readdirSync(join(tree, 'dev')).sort(), DEV);
  t.false(existsSync('/dev/osfarm-probe'), 'the chroot\'s /dev is its own, not the host\'s');
  t.deepEqual(readdirSync(join(tree, 'dev/pts')), []);
  t.deepEqual(readdirSync(join(tree, 'var/lib/apt/lists')).filter((n) => n !== 'lock' && n !== 'partial'), []);
  t.deepEqual(readdirSync(join(tree, 'var/cache/apt/archives')).filter((n) => n !== 'lock' && n !== 'partial'), []);
  t.false(existsSync(join(tree, 'var/cache/apt/pkgcache.bin')));
  t.false(existsSync(join(tree, 'etc/resolv.conf')), 'the host resolv.conf stays out');
  t.false(existsSync(join(tree, 'usr/sbin/policy-rc.d')), 'policy-rc.d is gone');
  t.deepEqual(readdirSync(join(tree, 'tmp')), []);
  t.deepEqual(readdirSync(join(tree, 'etc')).filter((n) => n.endsWith('.osfarm-saved')), []);
  // Neither the work directory nor the build's scratch path appears anywhere in the image.
  const data = readFileSync(tar);
  t.is(data.indexOf(WORK), -1);
  t.is(data.indexOf('/builds/'), -1);
  t.true(r.outputs[0].size % 4096 === 0);
});

test.serial('the root password: the hash in /etc/shadow verifies, the password itself is nowhere', async (t) => {
  const r = built(t, await builds().full);
  const tree = tempDir(t, 'osfarm-tree-');
  execFileSync('tar', ['-xpf', join(out, 'full.tar'), '-C', tree, '--numeric-owner', './etc', './usr', './lib', './lib64', './bin', './dev']);
  const shadow = readFileSync(join(tree, 'etc/shadow'), 'utf8');
  const hash = /^root:([^:]*):/m.exec(shadow)![1]!;
  t.regex(hash, /^\$6\$[./0-9A-Za-z]{16}\$/);
  t.is(hash, r.spec.rootPasswordHash);
  const salt = hash.split('$')[2]!;
  t.is(execFileSync('openssl', ['passwd', '-6', '-salt', salt, '-stdin'], { input: `${PASSWORD}\n`, encoding: 'utf8' }).trim(), hash);
  t.not(execFileSync('openssl', ['passwd', '-6', '-salt', salt, '-stdin'], { input: 'wrong\n', encoding: 'utf8' }).trim(), hash);
  // crypt(3) of the image's own libc, in a chroot (perl-base is essential).
  const inImage = execFileSync('chroot', [tree, '/usr/bin/perl', '-e', 'print crypt($ARGV[0], $ARGV[1])', PASSWORD, hash], { encoding: 'utf8' });
  t.is(inImage, hash);

  const needle = Buffer.from(PASSWORD);
  t.is(readFileSync(join(out, 'full.tar')).indexOf(needle), -1, 'not in the aligned tar');
  t.is(gunzipSync(readFileSync(join(out, 'full.tar.gz'))).indexOf(needle), -1, 'not in the tar.gz');
  t.is(readFileSync(r.logPath).indexOf(needle), -1, 'not in the build log');
  const run = await builds().full;
  t.false(JSON.stringify(run.lines).includes(PASSWORD), 'not in the --json events or result');
  t.false(run.stderr.includes(PASSWORD));
  const meta = JSON.stringify(Repository.open(repo).list().map((e) => e.meta));
  t.false(meta.includes(PASSWORD), 'not in the repository metadata');
  t.true(meta.includes(hash));
});

test.serial('with SOURCE_DATE_EPOCH two builds of one spec give byte-identical aligned tars', async (t) => {
  const [a, b] = [await builds().minbase1, await builds().minbase2];
  t.is(a.status, 0, JSON.stringify(resultOf(a)));
  t.is(b.status, 0, JSON.stringify(resultOf(b)));
  const [pa, pb] = [join(out, 'minbase-1.tar'), join(out, 'minbase-2.tar')];
  const same = sha256(pa) === sha256(pb);
  if (!same) {
    // Say what differs, as a listing diff would.
    const la = new Set(listing(pa));
    const lb = listing(pb).filter((l) => !la.has(l));
    t.log('entries that differ (second build):', lb.slice(0, 40).join('\n'));
  }
  t.true(same);
  t.is(resultOf(a).outputs[0].digest, resultOf(b).outputs[0].digest);
  t.is(resultOf(a).specDigest, resultOf(b).specDigest);
});

test.serial('block-aligned minbase and minbase + python3 share at least 95 % of the smaller one\'s blocks', async (t) => {
  t.is((await builds().full).status, 0);
  t.is((await builds().minbase1).status, 0);
  const r = await compare(join(out, 'minbase-1.tar'), join(out, 'full.tar'), { blockSize: 4096 });
  t.log(`minbase's non-zero blocks in minbase + python3: ${(100 * r.a.shareInOther).toFixed(2)} % of ${r.a.blocks - r.a.zeroBlocks}`);
  t.true(r.a.blocks < r.b.blocks);
  t.true(r.a.shareInOther >= 0.95);
});

test.serial('an interrupted build tears the chroot down: nothing mounted, no process left, no tree', async (t) => {
  await builds().minbase2;
  let signalled = false;
  let pid = 0;
  const run = await cliAsync(
    [...scratch('interrupted'), 'build', '-t', 'debian-bookworm-amd64', '-d', WORK, '-o', join(out, 'interrupted.tar'), '--no-repo', '--run', 'sleep 600 & sleep 600'],
    (line, child) => {
      // Interrupt while the command runs in the chroot (its /proc, /sys, /dev mounted).
      if (!signalled && line.type === 'log' && line.line === 'osfarm: configure: spec.commands[0]') {
        signalled = true;
        pid = child.pid!;
        setTimeout(() => child.kill('SIGTERM'), 1000);
      }
    },
    // minbase-2's stage store: the core stage is taken from there when the store has it.
    scratchEnv('minbase-2'),
  );
  t.true(signalled);
  t.not(run.status, 0);
  t.is(resultOf(run).error?.code, 'OSFARM_ABORTED');
  t.is(run.pid, pid);
  t.deepEqual(leftovers(run, scratchEnv('minbase-2').OSFARM_STAGES), { mounts: [], scratch: [] });
  const sleepers = execFileSync('sh', ['-c', 'pgrep -x sleep -a || true'], { encoding: 'utf8' });
  t.false(/sleep 600/.test(sleepers), 'the command\'s processes were killed');
  t.false(existsSync(join(out, 'interrupted.tar')));
});

test.serial('the debootstrap backend builds the same kind of tree, swept the same way', async (t) => {
  await builds().minbase2;
  const image = join(out, 'debootstrap.tar');
  const run = await cliAsync(
    [...scratch('debootstrap'), 'build', '-t', 'debian-bookworm-amd64', '--backend', 'debootstrap', '-d', WORK, '-o', image, '--no-repo', '--source-date-epoch', EPOCH],
    undefined,
    scratchEnv('debootstrap'),
  );
  const r = built(t, run);
  t.is(run.status, 0);
  t.is(r.backend, 'debootstrap');
  t.deepEqual([...new Set(run.lines.filter((l) => l.type === 'phase').map((l) => l.phase))], ['bootstrap', 'packages', 'configure', 'pack', 'index']);
  const tree = tempDir(t, 'osfarm-tree-');
  execFileSync('tar', ['-xpf', image, '-C', tree, '--numeric-owner']);
  const installed = execFileSync('dpkg-query', [`--admindir=${join(tree, 'var/lib/dpkg')}`, '-W', '-f', '${Package} ${db:Status-Status}\\n'], { encoding: 'utf8' });
  t.regex(installed, /^apt installed$/m);
  t.deepEqual(readdirSync(join(tree, 'var/cache/apt/archives')).filter((n) => n !== 'lock' && n !== 'partial'), []);
  t.deepEqual(readdirSync(join(tree, 'var/lib/apt/lists')).filter((n) => n !== 'lock' && n !== 'partial'), []);
  t.false(existsSync(join(tree, 'etc/resolv.conf')));
  t.false(existsSync(join(tree, 'debootstrap')));
  t.deepEqual(leftovers(run, scratchEnv('debootstrap').OSFARM_STAGES), { mounts: [], scratch: [] });
});
