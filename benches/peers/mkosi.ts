/**
 * The mkosi peer of the bootable-disk bench (issue 10): Debian's mkosi 14 builds a Debian bookworm
 * disk of the kind osfarm builds (Format=gpt_ext4, Bootable=yes: GPT, an ESP with systemd-boot
 * and a unified kernel image, an ext4 root; UEFI only, as mkosi 14 is), then
 *  - cold: `mkosi --incremental` with no cache image (it builds its cache image, then the disk),
 *  - incremental: `mkosi --incremental` again after a small change to the appliance part
 *    (extra packages, python3 by default, installed by the postinst script on top of the cached
 *    image: mkosi 14 caches its Packages= and would not notice a change there),
 * each timed (wall, and CPU of the whole process tree); the disk's apparent and allocated size;
 * and the disk booted under qemu (TCG by default) with Debian's OVMF, timed from qemu's start to
 * the marker line a unit in the image prints on the serial console and to the login prompt.
 *
 * Both builds draw on a warm package cache (mkosi's --cache), filled once by a warm-up build, so
 * neither downloads; only the incremental cache image is thrown away for the cold build.
 *
 * mkosi as packaged does not run on these machines; the wrappers in ./mkosi/ (put first on its
 * PATH with mkosi's own --extra-search-paths) fix that, each says why: `mount`/`umount` stand in
 * a tmpfs, copied to and from the FAT with mtools, for the ESP (the kernel has no vfat);
 * `systemd-nspawn` gets a private tmpfs /run and SYSTEMD_RELAX_ESP_CHECKS=1. mkosi's own
 * --nspawn-keep-unit keeps nspawn off the absent systemd bus. mkosi's code is unchanged.
 *
 * Run alone: node --import tsx benches/peers/mkosi.ts [--json] [--cache-initrd] [--no-boot]
 * [--extra=pkg,pkg] (root; scripts/apt-packages.txt's bench-only packages installed).
 */
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { copyFileSync, createWriteStream, existsSync, mkdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

import { childrenCpu, printTable, stopChild, workDir } from '../lib.js';

/** The line the image's osfarm-boot-marker.service prints on /dev/ttyS0 once multi-user is up. */
export const BOOT_MARKER = 'OSFARM-BOOT-MARKER';
const HOSTNAME = 'osfarm-mkosi';
const WRAPPERS = join(import.meta.dirname, 'mkosi');
const OVMF_CODE = '/usr/share/OVMF/OVMF_CODE_4M.fd';
const OVMF_VARS = '/usr/share/OVMF/OVMF_VARS_4M.fd';

export interface Timing {
  /** Wall seconds. */
  wall: number;
  /** CPU seconds (user + system) of the whole process tree. */
  cpu: number;
}

export interface DiskSize {
  apparent: number;
  /** Bytes of allocated blocks (holes excluded). */
  allocated: number;
}

export interface BootTiming {
  /** Seconds from qemu's start to the BOOT_MARKER line on the serial console. */
  marker: number;
  /** Seconds from qemu's start to the serial login prompt. */
  login: number;
}

export interface MkosiPeerOptions {
  /** Packages the incremental build adds on top of the cached image (default: python3). */
  extra?: string[];
  /** mkosi --cache-initrd: the initramfs is built into the cache image and not rebuilt (default off: mkosi's default incremental mode). */
  cacheInitrd?: boolean;
  /** Debian mirror for mkosi --mirror (default: mkosi's). */
  mirror?: string;
  /** Boot the incremental disk and time it (default true). */
  boot?: boolean;
  /** qemu -accel (default tcg: /dev/kvm on these machines cannot boot a standard kernel). */
  accel?: string;
  cpus?: number;
  memoryMiB?: number;
  bootTimeoutSec?: number;
  /** Progress lines (default: stderr). */
  progress?: (line: string) => void;
}

export interface MkosiPeerFigures {
  mkosi: string;
  extra: string[];
  cacheInitrd: boolean;
  /** The package-cache warm-up build, when one was needed (it downloads). */
  warmup: Timing | null;
  cold: Timing;
  coldDisk: DiskSize;
  incremental: Timing;
  disk: DiskSize;
  boot: BootTiming | null;
  /** The qemu command line of the boot (image path last). */
  qemu: string[];
  /** 1-minute load average when the peer started and ended (the machine is shared). */
  load: [number, number];
}

const loadAverage = () => Number(readFileSync('/proc/loadavg', 'utf8').split(' ')[0]);

/** The tools the peer runs, the Debian package of each, and whether only the boot needs it. */
const NEEDS: [string, string, boolean][] = [
  ['/usr/bin/mkosi', 'mkosi', false],
  ['/usr/bin/systemd-nspawn', 'systemd-container', false],
  ['/usr/bin/unshare', 'util-linux', false],
  ['/usr/bin/mcopy', 'mtools', false],
  ['/usr/sbin/mkfs.fat', 'dosfstools', false],
  ['/usr/bin/qemu-system-x86_64', 'qemu-system-x86', true],
  [OVMF_CODE, 'ovmf', true],
];

function preflight(boot: boolean): string {
  if (process.getuid?.() !== 0) throw new Error('the mkosi peer needs root (mkosi builds disks on loop devices): run it as root');
  for (const [path, pkg, bootOnly] of NEEDS) {
    if ((boot || !bootOnly) && !existsSync(path)) throw new Error(`${path} is missing: apt-get install ${pkg} (scripts/apt-packages.txt lists it as bench-only)`);
  }
  const v = spawnSync('mkosi', ['--version'], { encoding: 'utf8' });
  const version = v.stdout.trim();
  if (!/^mkosi 14\b/.test(version)) throw new Error(`the peer is written for Debian bookworm's mkosi 14, found "${version}": its wrappers follow mkosi 14's code`);
  return version;
}

/** The appliance part mkosi adds outside its cache: the boot-marker unit (extra tree) and the postinst script. */
function writeInputs(dir: string): { tree: string; postinst: string } {
  const tree = join(dir, 'extra-tree');
  const units = join(tree, 'etc/systemd/system');
  mkdirSync(join(units, 'multi-user.target.wants'), { recursive: true });
  writeFileSync(
    join(units, 'osfarm-boot-marker.service'),
    `[Unit]\nDescription=Print the osfarm boot marker on the serial console\nAfter=multi-user.target\n\n` +
      `[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo ${BOOT_MARKER} > /dev/ttyS0'\n\n[Install]\nWantedBy=multi-user.target\n`,
  );
  const link = join(units, 'multi-user.target.wants', 'osfarm-boot-marker.service');
  rmSync(link, { force: true });
  symlinkSync('../osfarm-boot-marker.service', link);
  const postinst = join(dir, 'postinst');
  writeFileSync(
    postinst,
    '#!/bin/sh\n# mkosi runs this in the image after its cached part: the appliance packages named in OSFARM_EXTRA.\nset -e\n' +
      'if [ "$1" = final ] && [ -n "$OSFARM_EXTRA" ]; then\n  apt-get install --assume-yes --no-install-recommends $OSFARM_EXTRA\nfi\n',
    { mode: 0o755 },
  );
  return { tree, postinst };
}

/** Runs mkosi with its output in logs/NAME.log and its two upper levels of steps as progress; throws with the log's tail if it fails. */
async function mkosi(dir: string, name: string, args: string[], progress: (l: string) => void): Promise<Timing> {
  mkdirSync(join(dir, 'logs'), { recursive: true });
  const logPath = join(dir, 'logs', `${name}.log`);
  const log = createWriteStream(logPath);
  const c0 = childrenCpu();
  const t0 = process.hrtime.bigint();
  const child = spawn('mkosi', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  let partial = '';
  const onData = (chunk: Buffer) => {
    log.write(chunk);
    const lines = (partial + chunk.toString('utf8')).split('\n');
    partial = lines.pop()!;
    for (const l of lines) if (/^‣ {1,2}\S/.test(l)) progress(`  ${name} ${(Number(process.hrtime.bigint() - t0) / 1e9).toFixed(0)} s: ${l.slice(2)}`);
  };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  const [code] = (await once(child, 'close')) as [number | null];
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  log.end();
  await once(log, 'close');
  if (code !== 0) {
    const tail = readFileSync(logPath, 'utf8').split(/\r?\n/).slice(-25).join('\n');
    throw new Error(`mkosi ${name} build failed (exit ${code}); the last lines of ${logPath}:\n${tail}`);
  }
  return { wall, cpu: childrenCpu() - c0 };
}

function diskSize(path: string): DiskSize {
  const st = statSync(path);
  return { apparent: st.size, allocated: st.blocks * 512 };
}

/** Throws unless mkosi's manifest of the disk lists every package of `want` and none of `absent`. */
function checkManifest(image: string, want: string[], absent: string[]): void {
  const manifest = JSON.parse(readFileSync(`${image}.manifest`, 'utf8')) as { packages: { name: string }[] };
  const names = new Set(manifest.packages.map((p) => p.name));
  const missing = want.filter((p) => !names.has(p));
  const extra = absent.filter((p) => names.has(p));
  if (missing.length || extra.length) throw new Error(`mkosi's disk ${image} is not what the bench asked for: missing ${missing.join(' ') || '-'}, unexpected ${extra.join(' ') || '-'}`);
}

/** Boots `image` (writes go to a qemu -snapshot overlay) and times the boot marker and the login prompt on its serial console. */
export async function bootTimes(image: string, work: string, opts: { accel: string; cpus: number; memoryMiB: number; timeoutSec: number }): Promise<{ times: BootTiming; qemu: string[] }> {
  const vars = join(work, 'ovmf-vars.fd');
  copyFileSync(OVMF_VARS, vars);
  // q35, the disk on virtio, one virtio NIC on user networking, the serial console on stdout.
  const qemu = [
    'qemu-system-x86_64', '-machine', 'q35', '-accel', opts.accel, '-smp', String(opts.cpus), '-m', String(opts.memoryMiB),
    '-drive', `if=pflash,format=raw,unit=0,readonly=on,file=${OVMF_CODE}`, '-drive', `if=pflash,format=raw,unit=1,file=${vars}`,
    '-nic', 'user,model=virtio-net-pci', '-display', 'none', '-monitor', 'none', '-serial', 'stdio',
    '-snapshot', '-drive', `file=${image},format=raw,if=virtio`,
  ];
  const consolePath = join(work, 'logs', 'boot-console.log');
  mkdirSync(join(work, 'logs'), { recursive: true });
  const consoleLog = createWriteStream(consolePath);
  const t0 = process.hrtime.bigint();
  const child = spawn(qemu[0]!, qemu.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  const since = () => Number(process.hrtime.bigint() - t0) / 1e9;
  let text = '';
  let stderr = '';
  let marker: number | undefined;
  let login: number | undefined;
  // Not anchored at a line start: the marker can land right after getty's prompt. systemd's
  // status lines name the unit only by its description, which does not contain the marker.
  const markerRe = new RegExp(`${BOOT_MARKER}\\r?\\n`);
  const loginRe = new RegExp(`${HOSTNAME} login: `);
  const done = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${marker === undefined ? 'boot marker' : 'login prompt'} within ${opts.timeoutSec} s`)), opts.timeoutSec * 1000);
    child.stdout.on('data', (chunk: Buffer) => {
      consoleLog.write(chunk);
      text = (text + chunk.toString('utf8')).slice(-65536);
      if (marker === undefined && markerRe.test(text)) marker = since();
      if (login === undefined && loginRe.test(text)) login = since();
      if (marker !== undefined && login !== undefined) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString('utf8')));
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`qemu exited (${code ?? signal}) before the ${marker === undefined ? 'boot marker' : 'login prompt'}: ${stderr.trim()}`));
    });
  });
  try {
    await done;
  } catch (e) {
    const last = text.split(/\r?\n/).slice(-20).join('\n');
    throw new Error(`booting mkosi's disk ${image}: ${(e as Error).message}; the console's last lines (all in ${consolePath}):\n${last}`);
  } finally {
    child.removeAllListeners('exit');
    await stopChild(child);
    consoleLog.end();
  }
  return { times: { marker: marker!, login: login! }, qemu };
}

/** Builds (cold, then incremental), measures and boots the mkosi peer's disk in `dir` (kept between runs: the package cache). */
export async function mkosiPeer(dir: string, opts: MkosiPeerOptions = {}): Promise<MkosiPeerFigures> {
  const extra = opts.extra ?? ['python3'];
  const boot = opts.boot ?? true;
  const progress = opts.progress ?? ((l: string) => process.stderr.write(`${l}\n`));
  const version = preflight(boot);
  const load0 = loadAverage();
  const { tree, postinst } = writeInputs(dir);
  const packages = join(dir, 'packages');
  const out = join(dir, 'out');
  const workspace = join(dir, 'workspace');
  for (const d of [packages, out, workspace]) mkdirSync(d, { recursive: true });
  const image = join(out, 'image.raw');
  const common = [
    '--distribution', 'debian', '--release', 'bookworm', ...(opts.mirror ? ['--mirror', opts.mirror] : []),
    '--format', 'gpt_ext4', '--bootable', '--qemu-headless', '--hostname', HOSTNAME,
    '--cache', packages, '--output', image, '--workspace-dir', workspace,
    '--extra-tree', tree, '--postinst-script', postinst, '--with-network',
    '--nspawn-keep-unit', '--extra-search-paths', WRAPPERS, '--force',
  ];
  const incremental = ['--incremental', ...(opts.cacheInitrd ? ['--cache-initrd'] : [])];

  // The warm-up installs the extra packages through mkosi's Packages= (the host's apt) so that
  // their .debs are in the cache too: the image's own apt in the postinst then needs no network.
  const warmMark = join(packages, '.osfarm-warm');
  let warmup: Timing | null = null;
  if (!existsSync(warmMark) || readFileSync(warmMark, 'utf8') !== extra.join(' ')) {
    progress('mkosi: warm-up build to fill the package cache (downloads)');
    warmup = await mkosi(dir, 'warmup', [...common, ...(extra.length ? ['--package', extra.join(',')] : []), '--environment', 'OSFARM_EXTRA=', 'build'], progress);
    writeFileSync(warmMark, extra.join(' '));
  }

  rmSync(`${image}.cache-pre-inst`, { force: true });
  progress('mkosi: cold build (--incremental, no cache image)');
  const cold = await mkosi(dir, 'cold', [...common, ...incremental, '--environment', 'OSFARM_EXTRA=', 'build'], progress);
  checkManifest(image, [], extra);
  const coldDisk = diskSize(image);

  progress(`mkosi: incremental build (cached image + ${extra.join(' ') || 'nothing'})`);
  const inc = await mkosi(dir, 'incremental', [...common, ...incremental, '--environment', `OSFARM_EXTRA=${extra.join(' ')}`, 'build'], progress);
  checkManifest(image, extra, []);
  const disk = diskSize(image);

  let times: BootTiming | null = null;
  let qemu: string[] = [];
  if (boot) {
    progress(`mkosi: booting the incremental disk under qemu (${opts.accel ?? 'tcg'})`);
    ({ times, qemu } = await bootTimes(image, dir, { accel: opts.accel ?? 'tcg', cpus: opts.cpus ?? 2, memoryMiB: opts.memoryMiB ?? 1024, timeoutSec: opts.bootTimeoutSec ?? 600 }));
  }
  return { mkosi: version, extra, cacheInitrd: !!opts.cacheInitrd, warmup, cold, coldDisk, incremental: inc, disk, boot: times, qemu, load: [load0, loadAverage()] };
}

function printFigures(f: MkosiPeerFigures): void {
  const mib = (b: number) => (b / 2 ** 20).toFixed(0);
  const row = (name: string, t: Timing, d?: DiskSize) => [name, t.wall.toFixed(1), t.cpu.toFixed(1), d ? mib(d.apparent) : '', d ? mib(d.allocated) : ''];
  const rows = [
    ...(f.warmup ? [row('warm-up (fills the package cache, downloads)', f.warmup)] : []),
    row('cold: --incremental, no cache image', f.cold, f.coldDisk),
    row(`incremental: cached image + ${f.extra.join(' ') || 'nothing'}`, f.incremental, f.disk),
  ];
  printTable(
    `${f.mkosi} peer: Debian bookworm gpt_ext4, Bootable=yes (UEFI)${f.cacheInitrd ? ', --cache-initrd' : ''} (load average ${f.load[0]} at the start, ${f.load[1]} at the end)`,
    rows,
    ['build', 'wall s', 'cpu s', 'apparent MiB', 'allocated MiB'],
  );
  if (f.boot) printTable(`Boot of the incremental disk: ${f.qemu.slice(0, -2).join(' ')}`, [['seconds from qemu start', f.boot.marker.toFixed(1), f.boot.login.toFixed(1)]], ['', BOOT_MARKER, 'login prompt']);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const argv = process.argv.slice(2);
  const known = /^(--json|--cache-initrd|--no-boot|--extra=.*)$/;
  const bad = argv.find((a) => !known.test(a));
  if (bad) {
    console.error(`unknown argument ${bad}; usage: node --import tsx benches/peers/mkosi.ts [--json] [--cache-initrd] [--no-boot] [--extra=pkg,pkg]`);
    process.exit(2);
  }
  const extraArg = argv.find((a) => a.startsWith('--extra='));
  const figures = await mkosiPeer(workDir('mkosi-peer'), {
    extra: extraArg ? extraArg.slice('--extra='.length).split(',').filter(Boolean) : undefined,
    cacheInitrd: argv.includes('--cache-initrd'),
    boot: !argv.includes('--no-boot'),
    mirror: process.env.OSFARM_MIRROR,
  });
  if (argv.includes('--json')) console.log(JSON.stringify({ bench: 'mkosi-peer', ...figures }));
  else printFigures(figures);
}
