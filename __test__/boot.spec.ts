// boot() and `osfarm boot` on a real disk built by `osfarm build` (bookworm minbase, its
// kernel, python3, DHCP, root's SSH key; the default hybrid firmware): UEFI over an NBD
// export with the KVM probe (this machine's /dev/kvm cannot run the guest: the boot must
// fall back to TCG, not hang), BIOS through the CLI by the image's name in the repository,
// the image's kernel started directly from the web GUI in Debian's chromium (console, Stop),
// SSH, aborts, a broken boot loader, and bad input.
// Three boots to the marker in all (each 40–180 s under TCG). The repository and the stage
// store stay in $OSFARM_TEST_WORK, so a second run boots the disk the first one built.
// Needs root, the Debian archive, and scripts/apt-packages.txt's packages.
import test from 'ava';
import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';
import { accessSync, constants, existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { native } from '../src/base/native.js';
import { boot } from '../src/boot/index.js';
import { Repository } from '../src/repo/index.js';
import { serve } from '../src/web/index.js';
import { BOOT_MARKER } from '../src/spec/distros.js';
import { buildWorkDir, cliAsync, resultOf } from './fixtures/build/harness.js';
import { cli } from './helpers/tmp.js';

const WORK = buildWorkDir();
const dir = join(WORK, 'boot-test');
const repo = join(dir, 'repo');
const env = { OSFARM_STAGES: join(dir, 'stages') };
const vms = join(dir, 'vms');
const scratch = join(dir, 'scratch');
const key = join(dir, 'key');
/** A boot's budget: 40–120 s to the marker under TCG, several minutes at a load average of 20. */
const BOOT_MS = 600_000;
const PYTHON = "python3 -c 'print(6*7)'";

interface Disk {
  path: string;
  /** Its name in the repository. */
  name: string;
}

/** The disk, built once (kept between runs with its key: the spec, and so its digest, stay the same). */
let built: Promise<Disk> | undefined;
function theDisk(): Promise<Disk> {
  built ??= (async () => {
    mkdirSync(dir, { recursive: true });
    rmSync(scratch, { recursive: true, force: true });
    mkdirSync(scratch);
    if (!existsSync(key)) execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'osfarm-boot-test', '-f', key]);
    writeFileSync(
      join(dir, 'vm.yaml'),
      [
        'name: bootvm',
        'distribution: debian',
        'release: bookworm',
        'architecture: amd64',
        'groups: [minbase]',
        'kernel: true',
        'packages: [python3]',
        'network: dhcp',
        'users:',
        '  - name: root',
        `    sshKeys: ["${readFileSync(`${key}.pub`, 'utf8').trim()}"]`,
        'sourceDateEpoch: 1700000000',
        'outputs: [disk]',
        '',
      ].join('\n'),
    );
    const run = await cliAsync(['--repo', repo, 'build', join(dir, 'vm.yaml'), '-d', WORK], undefined, env);
    const r = resultOf(run);
    if (run.status !== 0) throw new Error(`the build failed: ${JSON.stringify(r)}\n${run.stderr.slice(-2000)}`);
    const out = r.outputs.find((o: { format: string }) => o.format === 'disk');
    return { path: out.path, name: Repository.open(repo).resolve(out.digest).name! };
  })();
  return built;
}

/** The disk's partitions as sfdisk reads them (start and size in bytes). */
function partitions(disk: string): { name: string; start: number; size: number }[] {
  const t = JSON.parse(execFileSync('sfdisk', ['--json', disk], { encoding: 'utf8' })).partitiontable;
  return t.partitions.map((p: { name: string; start: number; size: number }) => ({ name: p.name, start: p.start * t.sectorsize, size: p.size * t.sectorsize }));
}

function kvmUsable(): boolean {
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

test.serial('UEFI from an NBD export, accel auto: KVM is probed (and left for TCG when it cannot run the guest), the marker comes, python3 answers over SSH, the disk is not written', async (t) => {
  t.timeout(BOOT_MS + 900_000, 'the build, then a boot');
  const { path: disk, name } = await theDisk();
  const before = statSync(disk);
  // osfarm's own NBD server on the repository's image: the input the lazy boot of issue 11
  // gives boot(). The layout reader, the KVM probe and the TCG run each connect.
  const image = Repository.open(repo).resolve(name);
  const server = await native.NbdServer.start(native.RepositoryHandle.open(repo), image.indexPath, { socket: join(scratch, 'nbd.sock'), exportName: 'bootvm' });
  t.teardown(() => server.stop());
  const warnings: string[] = [];
  const t0 = Date.now();
  await using vm = await boot(`nbd+unix:///bootvm?socket=${server.socket}`, { firmware: 'uefi', sshKey: key, workDir: vms, onWarning: (w) => warnings.push(w) });
  const started = (Date.now() - t0) / 1000;
  t.is(vm.info.disk.kind, 'nbd');
  t.is(vm.info.mode, 'uefi');
  t.log(`qemu running under ${vm.info.accel} after ${started} s${warnings.length ? `: ${warnings.join('; ')}` : ''}`);
  if (kvmUsable() && vm.info.accel === 'tcg') t.regex(warnings.join('\n'), /KVM cannot run this guest here \(.+\): restarting under TCG/);
  if (!kvmUsable()) t.is(vm.info.accel, 'tcg');
  const marker = await vm.waitFor(BOOT_MARKER, { timeoutMs: BOOT_MS });
  t.log(`marker after ${marker.seconds} s under ${vm.info.accel}; load average ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}`);
  const r = await vm.exec(PYTHON);
  t.is(r.code, 0, r.stderr);
  t.is(r.stdout.trim(), '42');
  // The guest's writes go to the overlay in the VM's directory, gone with stop().
  t.is((await vm.exec('echo written > /root/osfarm-boot-test && sync && cat /root/osfarm-boot-test')).stdout.trim(), 'written');
  t.true(statSync(vm.info.overlay).size > 0);
  const exit = await vm.stop();
  t.true(exit.stopped);
  t.false(existsSync(vm.info.dir), 'the overlay went with the VM');
  t.is(statSync(disk).mtimeMs, before.mtimeMs, 'the disk was never written');
  // What the boot read, in order: the profile issue 11 keeps with an image.
  const profile = server.profile();
  const blocks = profile.reduce((n, r) => n + r.count, 0);
  t.is(profile[0]!.first, 0, 'the partition table is read first');
  t.true(blocks > 1000 && blocks < server.size / server.blockSize / 4, `${blocks} blocks read`);
  t.log(`boot profile: ${blocks} of ${server.size / server.blockSize} blocks in ${profile.length} runs`);
});

test.serial('osfarm boot NAME --firmware bios --until MARKER --exec CMD --json: BIOS (GRUB from the MBR) by the name in the repository', async (t) => {
  t.timeout(BOOT_MS + 120_000);
  const { name } = await theDisk();
  const run = await cliAsync(['--repo', repo, 'boot', name, '--firmware', 'bios', '-i', key, '--until', BOOT_MARKER, '--exec', PYTHON, '--timeout', String(BOOT_MS / 1000)], undefined, { OSFARM_WORK: vms });
  const r = resultOf(run);
  t.is(run.status, 0, `${JSON.stringify(r)}\n${run.stderr.slice(-2000)}`);
  t.is(r.mode, 'bios');
  t.is(r.image, name);
  t.true(run.lines.some((l) => l.type === 'started'), 'a started event');
  t.true(run.lines.some((l) => l.type === 'matched' && l.line.includes(BOOT_MARKER)), 'a matched event at the marker');
  t.true(run.lines.some((l) => l.type === 'console'), 'the console as events');
  t.is(r.exec.stdout.trim(), '42');
  t.true(r.exit.stopped);
  t.false(existsSync(r.dir));
  t.log(`BIOS: marker after ${r.until.seconds} s under ${r.accel}${r.warnings.length ? ` (${r.warnings.join('; ')})` : ''}; load average ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}`);
});

test.serial('the web GUI boots the image\'s kernel directly (Debian\'s chromium): the console live on the Boots page up to the marker, then Stop ends the VM', async (t) => {
  t.timeout(BOOT_MS + 120_000);
  const { name } = await theDisk();
  const digest = Repository.open(repo).resolve(name).digest;
  const server = await serve({ repo, tokenFile: join(dir, 'web-token'), workDir: vms, stages: env.OSFARM_STAGES });
  t.teardown(() => server.close());
  const browser = await chromium.launch({ executablePath: process.env.OSFARM_CHROMIUM ?? '/usr/bin/chromium', args: ['--no-sandbox'] });
  t.teardown(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const pageErrors: string[] = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  await page.goto(`${server.url}/`);
  await page.fill('#token', server.web.token.value);
  await page.click('#login button');
  await page.waitForSelector('#distribution');
  await page.goto(`${server.url}/#/repository/${digest}`);
  await page.waitForSelector('#boot:not([disabled])');
  await page.check('#boot-kernel');
  const t0 = Date.now();
  await page.click('#boot');
  await page.waitForSelector('#console');
  t.regex(page.url(), /#\/boot\/[0-9a-f]+$/);
  // The console's lines arrive as the guest prints them; the kernel's own come first.
  await page.waitForFunction((m) => document.querySelector('#console')?.textContent?.includes(m), BOOT_MARKER, { timeout: BOOT_MS });
  t.log(`GUI kernel boot: marker on the page ${((Date.now() - t0) / 1000).toFixed(1)} s after Boot was clicked`);
  t.regex(await page.textContent('#console') ?? '', /Linux version 6\.1\.\d+-\d+-amd64/);
  t.regex(await page.textContent('#boot-detail') ?? '', /amd64, kernel 6\.1\.\d+-\d+-amd64, (KVM|TCG)/);
  t.is(await page.textContent('#boot-state'), 'running');
  await page.click('#stop');
  await page.waitForFunction(() => document.querySelector('#boot-state')?.textContent === 'cancelled', undefined, { timeout: 60_000 });
  const { jobs } = (await (await fetch(`${server.url}/api/jobs`, { headers: { authorization: `Bearer ${server.web.token.value}` } })).json()) as { jobs: { kind: string; state: string }[] };
  t.deepEqual(jobs.filter((j) => j.kind === 'boot').map((j) => j.state), ['cancelled']);
  t.deepEqual(pageErrors, []);
});

test.serial('boot(): aborting the signal stops the VM and what waits rejects with an AbortError; an already aborted signal starts nothing', async (t) => {
  t.timeout(BOOT_MS);
  const disk = (await theDisk()).path;
  const ac = new AbortController();
  const vm = await boot(disk, { kernelBoot: true, workDir: vms, signal: ac.signal });
  t.is(vm.info.mode, 'kernel');
  t.regex(vm.info.kernel!.version, /^6\.1\.\d+-\d+-amd64$/);
  t.regex(vm.info.kernel!.cmdline, /root=UUID=[0-9a-f-]{36} .*console=ttyS0/);
  await vm.waitFor(/Linux version/, { timeoutMs: BOOT_MS });
  const pending = vm.waitFor(/a line that never comes/, { timeoutMs: BOOT_MS });
  ac.abort(new Error('enough'));
  const err = await t.throwsAsync(pending, { name: 'AbortError', code: 'OSFARM_ABORTED' });
  t.is((err!.cause as Error).message, 'enough');
  t.true((await vm.exited).stopped);
  await vm.stop();
  t.false(existsSync(vm.info.dir));
  await t.throwsAsync(boot(disk, { workDir: vms, signal: AbortSignal.abort() }), { name: 'AbortError', code: 'OSFARM_ABORTED' });
});

test.serial('a broken boot loader (the ESP zeroed in an overlay) fails with OSFARM_BOOT_FAILED and the firmware\'s last lines within the timeout, not a hang', async (t) => {
  const disk = (await theDisk()).path;
  const broken = join(scratch, 'broken.qcow2');
  rmSync(broken, { force: true });
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', disk, '-F', 'raw', broken]);
  const esp = partitions(disk).find((p) => p.name === 'esp')!;
  execFileSync('qemu-io', ['-f', 'qcow2', '-c', `write -z ${esp.start} ${esp.size}`, broken], { stdio: 'ignore' });
  const vm = await boot(broken, { firmware: 'uefi', accel: 'tcg', workDir: vms });
  t.teardown(() => vm.stop());
  const t0 = Date.now();
  const err = await t.throwsAsync(vm.waitFor(BOOT_MARKER, { timeoutMs: 60_000 }), { code: 'OSFARM_BOOT_FAILED' });
  t.true(Date.now() - t0 < 75_000, 'it failed at its timeout');
  t.regex(err!.message, /broken\.qcow2 \(UEFI, TCG\): no console line matched .* within 60 s/);
  // OVMF says on the console that it found nothing it could start.
  t.regex(err!.message, /last console lines:[\s\S]*BdsDxe: failed to load Boot\d+ "UEFI Misc Device"/);
  t.notRegex(err!.message, /iPXE/, 'no network boot is tried instead');
  t.log(err!.message.slice(0, 600));
});

test.serial('osfarm boot killed with SIGKILL takes its qemu with it (no VM left running)', async (t) => {
  t.timeout(BOOT_MS);
  const { name } = await theDisk();
  const work = join(dir, 'vms-killed');
  rmSync(work, { recursive: true, force: true });
  // qemu's command line names its overlay under the boot's work directory.
  const qemus = () => {
    try {
      return execFileSync('pgrep', ['-f', `qemu-system.*${work}`], { encoding: 'utf8' }).trim().split('\n');
    } catch {
      return []; // pgrep exits 1 when nothing matches
    }
  };
  let runningAtKill: string[] = [];
  const run = await cliAsync(['--repo', repo, 'boot', name, '--accel', 'tcg', '--timeout', String(BOOT_MS / 1000)], (line, child) => {
    if (line.type !== 'console' || runningAtKill.length > 0) return;
    runningAtKill = qemus();
    child.kill('SIGKILL');
  }, { OSFARM_WORK: work });
  t.is(run.signal, 'SIGKILL', run.stderr.slice(-2000));
  t.is(runningAtKill.length, 1, 'qemu was running when osfarm was killed');
  let left = qemus();
  for (let i = 0; i < 50 && left.length > 0; i++) {
    await new Promise((r) => setTimeout(r, 100));
    left = qemus();
  }
  t.deepEqual(left, [], 'no qemu outlives osfarm');
});

test.serial('bad input gets a clear OSFARM_* error naming what to do, and starts nothing', async (t) => {
  const disk = (await theDisk()).path;
  const opts = { workDir: vms, repo };
  await t.throwsAsync(boot(disk, { ...opts, firmware: 'openfirmware' as never }), { code: 'OSFARM_INVALID_ARGUMENT', message: /unknown firmware "openfirmware": give uefi or bios/ });
  await t.throwsAsync(boot(disk, { ...opts, accel: 'hvf' as never }), { code: 'OSFARM_INVALID_ARGUMENT', message: /unknown accelerator "hvf": give auto, kvm or tcg/ });
  await t.throwsAsync(boot(disk, { ...opts, arch: 'arm64', firmware: 'bios' }), { code: 'OSFARM_BOOT_FAILED', message: /arm64 machines have no BIOS/ });
  await t.throwsAsync(boot('no-such-image', opts), { code: 'OSFARM_NOT_FOUND' });
  await t.throwsAsync(boot('nbd+tcp://host/x', opts), { code: 'OSFARM_INVALID_ARGUMENT', message: /over a unix socket only/ });
  // UEFI firmware missing: the Debian package to install.
  const empty = join(scratch, 'no-firmware');
  mkdirSync(empty, { recursive: true });
  await t.throwsAsync(boot(disk, { ...opts, firmware: 'uefi', firmwareDirs: [empty] }), { code: 'OSFARM_BOOT_FAILED', message: /no UEFI firmware for amd64 .*apt-get install ovmf/ });
  // Not a disk: a tar archive.
  const tar = join(scratch, 'not-a-disk.tar');
  execFileSync('tar', ['-cf', tar, '-C', dir, 'vm.yaml']);
  writeFileSync(tar, Buffer.concat([readFileSync(tar), Buffer.alloc(64 * 1024)]));
  await t.throwsAsync(boot(tar, opts), { code: 'OSFARM_INVALID_ARGUMENT', message: /is a tar archive, not a disk/ });
  // A bare file system: only --kernel-boot can start it, and this one holds no kernel.
  const fs = join(scratch, 'empty.ext4');
  rmSync(fs, { force: true });
  execFileSync('mke2fs', ['-q', '-t', 'ext4', '-F', fs, '32M']);
  await t.throwsAsync(boot(fs, opts), { code: 'OSFARM_BOOT_FAILED', message: /bare file system .*--kernel-boot/ });
  await t.throwsAsync(boot(fs, { ...opts, kernelBoot: true }), { code: 'OSFARM_BOOT_FAILED', message: /has no kernel to boot \(\/boot holds no vmlinuz-\*\): build it with a kernel/ });
  // The command line: the same error as JSON, exit status 2 for bad arguments.
  const r = cli(['--json', '--repo', repo, 'boot', disk, '--firmware', 'coreboot']);
  t.is(r.status, 2);
  t.is(JSON.parse(r.stdout.trim().split('\n').at(-1)!).error.code, 'OSFARM_INVALID_ARGUMENT');
  // Nothing was left running or behind.
  t.deepEqual(existsSync(join(vms, 'boot')) ? execFileSync('ls', [join(vms, 'boot')], { encoding: 'utf8' }).trim() : '', '');
});
