// Bootable disks and OCI archives from real builds through `osfarm build --json`: a bookworm
// base stage with a kernel (minbase + linux-image-amd64, DHCP, root's SSH key) and an
// appliance on it (python3). Checked: the partition table and file systems (sfdisk,
// debugfs, mtools), the kernel staying in the cached base, the qcow2, two builds giving the
// same bytes, a UEFI boot of the disk and a BIOS boot of the qcow2 to the image's marker
// with a command over SSH, the OCI archive under podman, and bad input. Needs root, the
// Debian archive, and scripts/apt-packages.txt's packages.
import test from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { compare } from '../src/blocks/index.js';
import { boot } from '../src/boot/index.js';
import { BOOT_MARKER } from '../src/spec/distros.js';
import { buildWorkDir, type CliRun, cliAsync, resultOf } from './fixtures/build/harness.js';
import { podmanLoadsAndRuns } from './helpers/podman.js';
import { cli, lastOutcome } from './helpers/tmp.js';

const WORK = buildWorkDir();
const out = join(WORK, 'disk-test-out');
const repo = join(out, 'repo');
const stagesDir = join(out, 'stages');
const env = { OSFARM_STAGES: stagesDir };
const EPOCH = 1700000000;

function built(t: { log: (...a: unknown[]) => void }, run: CliRun): Record<string, any> {
  const r = resultOf(run);
  if (run.status !== 0) t.log(JSON.stringify(r), run.stderr.slice(-2000));
  return r;
}
const outputOf = (r: Record<string, any>, f: string): string => r.outputs.find((o: any) => o.format === f).path;

// The builds start when the first test needs them, one after another: the base (its ext4,
// aligned tar and OCI archive), the appliance (disk and qcow2), the appliance again.
let started: { base: Promise<CliRun>; app: Promise<CliRun>; again: Promise<CliRun> } | undefined;
function builds(): NonNullable<typeof started> {
  if (started) return started;
  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'osfarm-disk-test', '-f', join(out, 'key')]);
  writeFileSync(
    join(out, 'base.yaml'),
    [
      'name: bootbase',
      'distribution: debian',
      'release: bookworm',
      'architecture: amd64',
      'groups: [minbase]',
      'kernel: true',
      'network: dhcp',
      'hostname: osfarm-disk-test',
      'users:',
      '  - name: root',
      `    sshKeys: ["${readFileSync(join(out, 'key.pub'), 'utf8').trim()}"]`,
      `sourceDateEpoch: ${EPOCH}`,
      'outputs: [ext4, tar, oci]',
      '',
    ].join('\n'),
  );
  writeFileSync(join(out, 'app.yaml'), 'name: bootapp\nparent: base.yaml\npackages: [python3]\noutputs: [disk, qcow2]\n');
  const build = (spec: string, dest: string, extra: string[] = []) =>
    cliAsync(['--repo', repo, 'build', join(out, spec), '-d', WORK, '-o', join(out, dest), ...extra], undefined, env);
  const base = build('base.yaml', 'base.ext4');
  const app = base.then(() => build('app.yaml', 'app.img'));
  // The same request again from the cached stages, without the appliance's cached file system:
  // the layout is made once more and must give the same bytes.
  const again = app.then((run) => {
    const last = resultOf(run).stages?.at(-1)?.tag;
    if (last) rmSync(join(stagesDir, last, 'derived'), { recursive: true, force: true });
    return build('app.yaml', 'again/app.img', ['--rebuild']);
  });
  started = { base, app, again };
  return started;
}

test.serial('the disk: GPT with BIOS boot, ESP and root partitions; GRUB in the MBR; systemd-boot and the kernel on the ESP', async (t) => {
  const r = built(t, await builds().app);
  t.is(r.outputs.length, 2);
  // The kernel is in the cached base stage: the appliance installs python3 and no kernel.
  t.true(r.stages[0].hit, 'the bootable base came from the stage cache');
  const log = readFileSync(`${outputOf(r, 'disk')}.build.log`, 'utf8');
  t.regex(log, /apt-get install python3\n/);
  t.notRegex(log, /linux-image|update-initramfs|initramfs-tools/);
  const disk = outputOf(r, 'disk');
  const table = JSON.parse(execFileSync('sfdisk', ['--json', disk], { encoding: 'utf8' })).partitiontable;
  t.is(table.label, 'gpt');
  t.deepEqual(table.partitions.map((p: any) => [p.name, p.type]), [
    ['bios', '21686148-6449-6E6F-744E-656564454649'],
    ['esp', 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B'],
    ['root', '4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709'],
  ]);
  for (const p of table.partitions) t.is(p.start % 2048, 0, `${p.name} starts on a MiB boundary`);
  const [bios, esp, root] = table.partitions;
  // GRUB's boot.img in the MBR points at core.img in the BIOS boot partition.
  const mbr = execFileSync('dd', [`if=${disk}`, 'bs=512', 'count=1', 'status=none']);
  t.is(mbr.readBigUInt64LE(0x5c), BigInt(bios.start));
  t.is(mbr.readUInt16LE(510), 0xaa55);
  const core = execFileSync('dd', [`if=${disk}`, 'bs=512', `skip=${bios.start}`, 'count=1', 'status=none']);
  t.is(core.readBigUInt64LE(512 - 12), BigInt(bios.start + 1), "core.img's block list starts right after its first sector");

  // The root file system: its UUID is the one the boot loaders name.
  const rootArg = `${disk}?offset=${root.start * 512}`;
  const uuid = /UUID=([0-9a-f-]{36})/.exec(execFileSync('debugfs', ['-R', 'cat /etc/fstab', rootArg], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }))![1]!;
  t.regex(execFileSync('dumpe2fs', ['-h', rootArg], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }), new RegExp(`Filesystem UUID:\\s+${uuid}`));
  const grub = execFileSync('debugfs', ['-R', 'cat /boot/grub/grub.cfg', rootArg], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  t.regex(grub, new RegExp(`search --no-floppy --fs-uuid --set=root ${uuid}`));
  t.regex(grub, /linux \/boot\/vmlinuz-\S+ root=UUID=\S+ ro console=tty0 console=ttyS0,115200/);
  t.regex(execFileSync('debugfs', ['-R', 'ls -l /usr/bin', rootArg], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }), /python3\.11/);
  t.regex(execFileSync('debugfs', ['-R', 'cat /etc/systemd/network/80-osfarm-dhcp.network', rootArg], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }), /DHCP=yes/);
  t.regex(execFileSync('debugfs', ['-R', 'cat /root/.ssh/authorized_keys', rootArg], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }), /osfarm-disk-test/);
  t.notRegex(execFileSync('debugfs', ['-R', 'ls /etc/ssh', rootArg], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }), /ssh_host_\w+_key/, 'no SSH host keys ship');
  execFileSync('e2fsck', ['-fn', rootArg], { stdio: 'ignore' });

  // The ESP: systemd-boot at the removable-media path, a loader entry with the same UUID.
  const at = `${disk}@@${esp.start * 512}`;
  const mtools = { ...process.env, MTOOLS_SKIP_CHECK: '1' };
  const entry = execFileSync('mtype', ['-i', at, '::/loader/entries/osfarm.conf'], { encoding: 'utf8', env: mtools });
  t.regex(entry, new RegExp(`options root=UUID=${uuid} ro console=tty0 console=ttyS0,115200`));
  const version = /linux \/osfarm\/(\S+)\/vmlinuz/.exec(entry)![1]!;
  const listing = execFileSync('mdir', ['-i', at, '-b', '-/', '::/'], { encoding: 'utf8', env: mtools });
  for (const f of ['::/EFI/BOOT/BOOTX64.EFI', '::/EFI/systemd/systemd-bootx64.efi', `::/osfarm/${version}/vmlinuz`, `::/osfarm/${version}/initrd.img`]) t.true(listing.includes(f), f);
  // The kernel on the ESP is the one in /boot, byte for byte.
  const fromEsp = execFileSync('mtype', ['-i', at, `::/osfarm/${version}/vmlinuz`], { env: mtools, maxBuffer: 64 << 20 });
  const fromRoot = execFileSync('debugfs', ['-R', `cat /boot/vmlinuz-${version}`, rootArg], { stdio: ['ignore', 'pipe', 'ignore'], maxBuffer: 64 << 20 });
  t.true(fromEsp.equals(fromRoot));
});

test.serial('the qcow2 is the same disk, and the base stage\'s ext4 output is its root file system alone', async (t) => {
  const r = built(t, await builds().app);
  const cmp = spawnSync('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', outputOf(r, 'disk'), outputOf(r, 'qcow2')], { encoding: 'utf8' });
  t.is(cmp.status, 0, cmp.stdout + cmp.stderr);
  const b = built(t, await builds().base);
  const ext4 = outputOf(b, 'ext4');
  const info = execFileSync('dumpe2fs', ['-h', ext4], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  t.regex(info, /Filesystem volume name:\s+bootbase/);
  t.regex(info, /Block size:\s+4096/);
  t.regex(info, /Filesystem features:.*metadata_csum_seed/);
  t.notRegex(info, /resize_inode|orphan_file/);
  execFileSync('e2fsck', ['-fn', ext4], { stdio: 'ignore' });
  const boot = execFileSync('debugfs', ['-R', 'ls /boot', ext4], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  t.regex(boot, /vmlinuz-/);
  t.regex(boot, /initrd\.img-/);
});

test.serial('two builds of one spec give byte-identical disks (the second from the cached stages, its file system laid out again)', async (t) => {
  const a = built(t, await builds().app);
  const b = built(t, await builds().again);
  t.is(b.cached, false);
  t.true(b.stages.every((s: any) => s.hit), 'the stages came from the store');
  t.true(readdirSync(join(stagesDir, b.stages.at(-1).tag, 'derived')).some((n) => n.startsWith('ext4-')), 'the appliance\'s file system was made (and kept) again');
  for (const f of ['disk', 'qcow2']) {
    t.is(b.outputs.find((o: any) => o.format === f).digest, a.outputs.find((o: any) => o.format === f).digest, f);
  }
});

/** A boot's budget: 40–120 s to the marker under TCG, several minutes on a loaded machine. */
const BOOT_MS = 420_000;

test.serial('the disk boots under UEFI (OVMF) to the image\'s marker, and python3 answers over SSH with the configured key', async (t) => {
  const r = built(t, await builds().app);
  await using vm = await boot(outputOf(r, 'disk'), { firmware: 'uefi', accel: 'tcg', sshKey: join(out, 'key'), workDir: join(out, 'vms') });
  const marker = await vm.waitFor(BOOT_MARKER, { timeoutMs: BOOT_MS }); // fails with the console's last lines
  const ssh = await vm.exec("python3 -c 'print(6*7)'");
  t.log(`marker after ${marker.seconds} s`);
  t.is(ssh.code, 0, ssh.stderr);
  t.is(ssh.stdout.trim(), '42');
});

test.serial('the qcow2 boots under BIOS (SeaBIOS) through GRUB to the marker, and answers over SSH', async (t) => {
  const r = built(t, await builds().app);
  await using vm = await boot(outputOf(r, 'qcow2'), { firmware: 'bios', accel: 'tcg', sshKey: join(out, 'key'), workDir: join(out, 'vms') });
  t.is(vm.info.disk.format, 'qcow2');
  const marker = await vm.waitFor(BOOT_MARKER, { timeoutMs: BOOT_MS });
  const ssh = await vm.exec('cat /proc/cmdline');
  t.log(`marker after ${marker.seconds} s`);
  // GRUB (not systemd-boot, which SeaBIOS cannot start) names the kernel it loaded first.
  t.regex(ssh.stdout, /^BOOT_IMAGE=\/boot\/vmlinuz-\S+ root=UUID=/, ssh.stderr);
});

test.serial('the OCI archive loads with podman and skopeo, runs cat /etc/os-release, and shares its blocks with the aligned tar', async (t) => {
  const r = built(t, await builds().base);
  const archive = outputOf(r, 'oci');
  const tar = outputOf(r, 'tar');
  // A layer per stage (oci.spec.ts checks them): every file's data is block-aligned in both,
  // only headers and the blocks where a file's tail meets the next header differ.
  const c = await compare(tar, archive);
  t.true(c.a.shareInOther > 0.99, `the tar's blocks in the archive: ${c.a.shareInOther}`);
  t.is(JSON.parse(execFileSync('skopeo', ['inspect', `oci-archive:${archive}`], { encoding: 'utf8' })).Layers.length, r.stages.length);
  const name = 'localhost/bootbase:latest';
  const skopeoName = 'localhost/osfarm-disk-test-skopeo:latest';
  t.teardown(() => {
    spawnSync('podman', ['rmi', '-f', name, skopeoName], { stdio: 'ignore' });
  });
  podmanLoadsAndRuns(t, archive, name);
  const copy = spawnSync('skopeo', ['copy', '-q', `oci-archive:${archive}`, `containers-storage:${skopeoName}`], { encoding: 'utf8' });
  t.is(copy.status, 0, copy.stderr);
  t.regex(execFileSync('podman', ['images', '--format', '{{.Repository}}:{{.Tag}}'], { encoding: 'utf8' }), new RegExp(skopeoName));
});

test('--user NAME:KEYS.pub adds a user with the keys of that file to the spec', (t) => {
  const dir = join(WORK, 'disk-test-flags');
  mkdirSync(dir, { recursive: true });
  const keys = join(dir, 'keys.pub');
  writeFileSync(keys, '# two keys\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJV9F6uFAUmvtpe/QKvdWYeARrw5B1I6kYUQ/B+7plHf a@x\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJV9F6uFAUmvtpe/QKvdWYeARrw5B1I6kYUQ/B+7plHg b@y\n');
  const r = cli(['--json', 'build', '-t', 'debian-bookworm-amd64', '--kernel', 'on', '-f', 'qcow2', '--user', `root:${keys}`, '--user', 'alice', '--network', 'dhcp', '--serial-console', 'off', '--check']);
  t.is(r.status, 0, r.stderr);
  const spec = lastOutcome(r.stdout).spec;
  t.deepEqual(spec.users.map((u: any) => [u.name, u.sshKeys.length]), [['root', 2], ['alice', 0]]);
  t.is(spec.network, 'dhcp');
  t.is(spec.serialConsole, false);
  t.is(spec.kernel, 'linux-image-amd64');
  const missing = cli(['--json', 'build', '-t', 'debian-bookworm-amd64', '--user', `root:${join(dir, 'nope.pub')}`, '--check']);
  t.is(JSON.parse(missing.stdout.trim().split('\n').at(-1)!).error.code, 'OSFARM_INVALID_ARGUMENT');
});

test('bad input: no kernel, an unknown firmware, missing host tools — refused before anything is built', (t) => {
  const nothingBuilt = join(WORK, 'disk-test-bad');
  rmSync(nothingBuilt, { recursive: true, force: true });
  const build = (args: string[]) => {
    const r = cli(['--json', '--repo', join(nothingBuilt, 'repo'), 'build', '-t', 'debian-bookworm-amd64', '-d', nothingBuilt, '--no-repo', ...args], { OSFARM_STAGES: join(nothingBuilt, 'stages') });
    return { status: r.status, error: JSON.parse(r.stdout.trim().split('\n').at(-1)!).error };
  };
  const noKernel = build(['-f', 'disk']);
  t.is(noKernel.error.code, 'OSFARM_BAD_SPEC');
  t.regex(noKernel.error.message, /spec\.outputs: disk output boots the image's own kernel.*--kernel on/);
  const firmware = build(['-f', 'qcow2', '--kernel', 'on', '--firmware', 'openfirmware']);
  t.is(firmware.error.code, 'OSFARM_BAD_SPEC');
  t.regex(firmware.error.message, /spec\.firmware: "openfirmware" is not a firmware \(uefi, bios, hybrid/);
  // Missing tools, for real: in a mount namespace of its own, mcopy is /dev/null (not
  // executable) and GRUB's i386-pc directory is empty.
  const r = spawnSync('unshare', ['--mount', '--propagation', 'private', 'sh', '-c',
    'mount --bind /dev/null "$(command -v mcopy)" && mount -t tmpfs osfarm-disk-test /usr/lib/grub/i386-pc && exec "$@"', 'sh',
    process.execPath, '--import', 'tsx', join(import.meta.dirname, '..', 'src', 'cli', 'main.ts'), '--json', '--repo', join(nothingBuilt, 'repo'),
    'build', '-t', 'debian-bookworm-amd64', '--kernel', 'on', '-f', 'disk', '-d', nothingBuilt, '--no-repo'], { encoding: 'utf8', env: { ...process.env, OSFARM_STAGES: join(nothingBuilt, 'stages') } });
  const e = JSON.parse(r.stdout.trim().split('\n').at(-1)!).error;
  t.is(e.code, 'OSFARM_BUILD_FAILED');
  t.regex(e.message, /mcopy from the Debian package mtools/);
  t.regex(e.message, /boot\.img from the Debian package grub-pc-bin/);
  t.regex(e.message, /apt-get install mtools grub-pc-bin/);
  t.false(existsSync(join(nothingBuilt, 'stages')) && readdirSync(join(nothingBuilt, 'stages')).some((n) => /^[0-9a-f]{64}$/.test(n)), 'no stage was built');
});
