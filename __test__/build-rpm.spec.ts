// The RPM family driver with a real dnf and rpm: the test makes its own RPM repository
// (tiny noarch packages from the spec files in fixtures/build/rpm, a comps group, then
// createrepo_c) and builds an image from it through `osfarm build --json`.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';

import { mountsUnder } from '../src/host/mounts.js';
import { specFromObject } from '../src/spec/index.js';
import { RpmDriver, rpmConfig, rpmDbPath, rpmPlan } from '../src/builder/drivers/rpm.js';
import { Repository } from '../src/repo/index.js';
import { buildWorkDir, cliAsync, leftovers, resultOf } from './fixtures/build/harness.js';
import { tempDir } from './helpers/tmp.js';

const RPM_FIXTURES = join(import.meta.dirname, 'fixtures', 'build', 'rpm');

/**
 * Builds the fixture packages and a repository with the comps group; returns its
 * directory. With `gnupgHome` the packages are signed with that keyring's key first.
 */
function makeRepository(dir: string, gnupgHome?: string): string {
  const top = join(dir, 'rpmbuild');
  const repo = join(dir, 'rpm-repo');
  mkdirSync(repo, { recursive: true });
  for (const spec of readdirSync(RPM_FIXTURES).filter((n) => n.endsWith('.spec'))) {
    execFileSync('rpmbuild', ['-bb', '--quiet', '--define', `_topdir ${top}`, join(RPM_FIXTURES, spec)], { stdio: 'pipe' });
  }
  const built = join(top, 'RPMS', 'noarch');
  const rpms = readdirSync(built).map((rpm) => join(repo, rpm));
  for (const rpm of rpms) copyFileSync(join(built, basename(rpm)), rpm);
  if (gnupgHome) {
    execFileSync('rpmsign', ['--addsign', '--define', '__gpg /usr/bin/gpg', '--define', `_gpg_name ${SIGNER}`, '--define', `_gpg_path ${gnupgHome}`, ...rpms], { stdio: 'pipe' });
  }
  execFileSync('createrepo_c', ['--quiet', '-g', join(RPM_FIXTURES, 'comps.xml'), repo]);
  return repo;
}

const SIGNER = 'osfarm test signer <signer@osfarm.invalid>';

/** A new signing key without passphrase in its own keyring; returns the keyring and the public key file. */
function makeKey(dir: string): { home: string; publicKey: string } {
  const home = join(dir, 'gnupg');
  mkdirSync(home, { mode: 0o700 });
  const gpg = (args: string[]) => execFileSync('gpg', ['--homedir', home, '--batch', '--pinentry-mode', 'loopback', '--passphrase', '', ...args], { stdio: 'pipe' });
  gpg(['--quick-gen-key', SIGNER, 'rsa2048', 'sign', 'never']);
  const publicKey = join(dir, 'RPM-GPG-KEY-osfarm-test');
  writeFileSync(publicKey, gpg(['--armor', '--export', SIGNER]));
  return { home, publicKey };
}

/** Builds the spec at `specPath` with the repository at `rpmRepo`; extra environment in `env`. */
function buildFrom(dir: string, specPath: string, rpmRepo: string, env: NodeJS.ProcessEnv = {}) {
  return cliAsync(
    ['--repo', join(dir, 'repo'), 'build', specPath, '--mirror', `file://${rpmRepo}`, '-d', buildWorkDir(), '-o', join(dir, 'rpm-test.tar'), '--source-date-epoch', '1700000000'],
    undefined,
    { OSFARM_STAGES: join(dir, 'stages'), ...env },
  );
}

function writeSpec(dir: string, lines: string[]): string {
  const path = join(dir, 'image.yaml');
  writeFileSync(path, ['name: rpm-test', 'distribution: fedora', 'release: "40"', 'groups: [osfarm-base]', 'packages: [osfarm-test-hello]', 'outputs: [tar]', ...lines, ''].join('\n'));
  return path;
}

test('dnf --installroot from a local repository: a comps group and a package, nothing else', async (t) => {
  const dir = tempDir(t, 'osfarm-rpm-');
  const rpmRepo = makeRepository(dir);
  const repo = join(dir, 'repo');
  const run = await buildFrom(dir, writeSpec(dir, ['gpgCheck: false', 'rootPassword: rpm-Pa55']), rpmRepo);
  const r = resultOf(run);
  if (run.status !== 0) t.log(JSON.stringify(r), run.lines.filter((l) => l.type === 'log').slice(-30).map((l) => l.line).join('\n'));
  t.is(run.status, 0);
  t.is(r.backend, 'dnf');
  t.deepEqual(run.lines.filter((l) => l.type === 'phase').map((l) => l.phase), ['bootstrap', 'packages', 'configure', 'pack', 'index']);
  const log = readFileSync(r.logPath, 'utf8');
  t.regex(log, /dnf .*--installroot=.* install @osfarm-base osfarm-test-hello/);

  const tree = join(dir, 'tree');
  mkdirSync(tree);
  execFileSync('tar', ['-xpf', join(dir, 'rpm-test.tar'), '-C', tree, '--numeric-owner']);
  // Fedora 40's rpm database place, not the host rpm's default.
  t.true(existsSync(join(tree, 'usr/lib/sysimage/rpm/rpmdb.sqlite')));
  t.false(existsSync(join(tree, 'root/.rpmdb')));
  const q = execFileSync('rpm', ['-qa', '--root', tree, '--dbpath', '/usr/lib/sysimage/rpm', '--qf', '%{NAME}-%{VERSION}-%{RELEASE}\\n'], { encoding: 'utf8' }).trim().split('\n').sort();
  t.deepEqual(q, ['osfarm-test-extra-0.5-1', 'osfarm-test-filesystem-1.0-1', 'osfarm-test-hello-2.1-3']);
  t.is(readFileSync(join(tree, 'usr/share/osfarm-extra/README'), 'utf8'), 'installed through a comps group\n');
  t.true((statSync(join(tree, 'usr/bin/osfarm-hello')).mode & 0o111) !== 0);
  t.false(existsSync(join(tree, 'usr/share/osfarm-unwanted')), 'an optional group member is not installed');
  // Every file the packages own is there and unmodified, but for the root password in /etc/shadow.
  const verify = execFileSync('sh', ['-c', 'rpm -Va --root "$1" --dbpath /usr/lib/sysimage/rpm --nomtime || true', 'sh', tree], { encoding: 'utf8' }).trim();
  t.is(verify, 'S.5......  c /etc/shadow');

  // Hygiene: no cached packages or repository metadata, no mounts, the standard /dev only.
  t.deepEqual(readdirSync(join(tree, 'var/cache/dnf')), []);
  t.deepEqual(readdirSync(join(tree, 'proc')), []);
  t.deepEqual(readdirSync(join(tree, 'dev')).sort(), ['console', 'fd', 'full', 'null', 'ptmx', 'pts', 'random', 'shm', 'stderr', 'stdin', 'stdout', 'tty', 'urandom', 'zero']);
  t.deepEqual(leftovers(run, join(dir, 'stages')), { mounts: [], scratch: [] });
  t.is(readFileSync(join(dir, 'rpm-test.tar')).indexOf(dir), -1, 'no host path in the image');
  const shadow = readFileSync(join(tree, 'etc/shadow'), 'utf8');
  t.is(/^root:([^:]*):/m.exec(shadow)![1], r.spec.rootPasswordHash);
  t.false(shadow.includes('rpm-Pa55'));

  // In the repository with its spec, mirrors included.
  const [entry] = Repository.open(repo).list();
  t.is((entry!.meta as any).spec.mirrors[0], `file://${rpmRepo}`);
  t.is(entry!.digest, r.outputs[0].digest);
  // With the packages installed, as rpm reads them from the image's own database.
  t.deepEqual((entry!.meta as any).installed.map((p: any) => ({ name: p.name, version: p.version })), [
    { name: 'osfarm-test-extra', version: '0.5-1' },
    { name: 'osfarm-test-filesystem', version: '1.0-1' },
    { name: 'osfarm-test-hello', version: '2.1-3' },
  ]);
});

test('an RPM build without repositories or with unchecked signatures says what to set', async (t) => {
  const dir = tempDir(t, 'osfarm-rpm-');
  const noMirror = await cliAsync(['--repo', join(dir, 'repo'), 'build', '-t', 'rocky-9-x86_64', '-d', dir, '--no-gpg-check'], undefined, { OSFARM_MIRROR: '' });
  t.is(resultOf(noMirror).error?.code, 'OSFARM_BAD_SPEC');
  t.regex(resultOf(noMirror).error?.message, /spec\.mirrors: .*--mirror or \$OSFARM_MIRROR/);
  const noKeys = await cliAsync(['--repo', join(dir, 'repo'), 'build', '-t', 'almalinux-9-x86_64', '-d', dir, '--mirror', 'file:///nonexistent'], undefined, { OSFARM_RPM_GPGKEYS: '' });
  t.is(resultOf(noKeys).error?.code, 'OSFARM_BAD_SPEC');
  t.regex(resultOf(noKeys).error?.message, /OSFARM_RPM_GPGKEYS/);
  t.deepEqual(mountsUnder(dir), []);
});

test('signature checks: signed packages install with their key; unsigned ones are refused', async (t) => {
  const dir = tempDir(t, 'osfarm-rpm-');
  const key = makeKey(dir);
  const keys = { OSFARM_RPM_GPGKEYS: `file://${key.publicKey}` };
  const signed = await buildFrom(join(dir), writeSpec(dir, []), makeRepository(join(dir, 'signed'), key.home), keys);
  if (signed.status !== 0) t.log(JSON.stringify(resultOf(signed)), signed.lines.filter((l) => l.type === 'log').slice(-20).map((l) => l.line).join('\n'));
  t.is(signed.status, 0);
  t.true(resultOf(signed).spec.gpgCheck);
  const tree = join(dir, 'tree');
  mkdirSync(tree);
  execFileSync('tar', ['-xpf', join(dir, 'rpm-test.tar'), '-C', tree]);
  const q = execFileSync('rpm', ['-qa', '--root', tree, '--dbpath', '/usr/lib/sysimage/rpm', '--qf', '%{NAME}\\n'], { encoding: 'utf8' });
  t.regex(q, /^osfarm-test-hello$/m);
  t.regex(q, /^gpg-pubkey$/m, 'the key was imported into the image\'s rpm database');

  const unsigned = await buildFrom(join(dir, 'u'), writeSpec(dir, []), makeRepository(join(dir, 'unsigned')), keys);
  t.not(unsigned.status, 0);
  t.is(resultOf(unsigned).error?.code, 'OSFARM_BUILD_FAILED');
  t.regex(unsigned.lines.filter((l) => l.type === 'log').map((l) => l.line).join('\n'), /not signed|GPG check FAILED|NOKEY|signature/i);
  t.deepEqual(leftovers(unsigned, join(dir, 'u', 'stages')), { mounts: [], scratch: [] });
});

test('the dnf command and configuration a spec gives: comps groups, only the spec\'s repositories, the rpmdb place', (t) => {
  const spec = specFromObject({
    distribution: 'rocky',
    release: '9',
    architecture: 'aarch64',
    groups: ['minimal', '@Development Tools'],
    packages: ['vim-minimal'],
    mirrors: ['https://mirror.invalid/rocky/$releasever/BaseOS/$basearch/os/', 'file:///srv/extra'],
  });
  t.deepEqual(rpmPlan(spec), ['@core', '@Development Tools', 'vim-minimal']);
  const args = RpmDriver.args('dnf', spec, { root: '/b/root', config: '/b/dnf.conf', reposDir: '/b/repos.d' });
  t.deepEqual(args.slice(0, 6), ['-y', '--config=/b/dnf.conf', '--installroot=/b/root', '--releasever=9', '--setopt=reposdir=/b/repos.d', '--noplugins']);
  t.true(args.includes('--forcearch=aarch64'));
  const conf = rpmConfig(spec, ['file:///keys/RPM-GPG-KEY-Rocky-9']);
  t.regex(conf, /^\[osfarm-0\]\n.*\nbaseurl=https:\/\/mirror\.invalid\/rocky\/\$releasever\/BaseOS\/\$basearch\/os\/$/m);
  t.regex(conf, /^baseurl=file:\/\/\/srv\/extra$/m);
  t.is(conf.match(/^gpgkey=file:\/\/\/keys\/RPM-GPG-KEY-Rocky-9$/gm)?.length, 2);
  t.is(conf.match(/^\[/gm)?.length, 3, 'main and the two repositories, nothing else');
  t.is(rpmDbPath(spec), '/var/lib/rpm');
  t.is(rpmDbPath({ ...spec, distribution: 'fedora', release: '40' }), '/usr/lib/sysimage/rpm');
  t.is(rpmDbPath({ ...spec, distribution: 'centos-stream', release: '10' }), '/usr/lib/sysimage/rpm');
  t.is(rpmDbPath({ ...spec, distribution: 'scientific-linux', release: '7' }), '/var/lib/rpm');
});
