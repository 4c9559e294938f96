/**
 * Bootable disks against mkosi (issue 10): the same Debian bookworm bootable image built by
 * osfarm and by Debian's mkosi 14 (`Format=gpt_ext4`, `Bootable=yes`, UEFI only) in one run:
 *  - build time with a cold stage cache (osfarm: a new stage store; mkosi: `--incremental`
 *    with no cache image); goal osfarm ≤ 1.0x mkosi cold;
 *  - the appliance (+ python3) on the cached base (osfarm: the base stage in the store; mkosi:
 *    its own incremental mode, the cached image + python3); goal osfarm ≤ 0.25x mkosi cold,
 *    and the ratio to mkosi incremental beside it;
 *  - the appliance disk's size (apparent and allocated);
 *  - seconds from qemu's start to the boot marker under UEFI (OVMF, TCG, 2 vCPUs, 1 GiB):
 *    osfarm's through `osfarm boot --accel tcg --until`, mkosi's through the peer's own qemu.
 *
 * Like for like: both use a warm package cache (each fills its own once, downloading; not
 * timed); osfarm's spec asks for UEFI only (`firmware: uefi`, as mkosi 14 can) and no network
 * configuration (mkosi's image has none); both images carry a unit that prints the marker.
 * mkosi runs through the wrappers in peers/mkosi/ (this kernel has no vfat; see there).
 *
 * Run: node --import tsx benches/disk-build.ts [--json] [--no-boot]   (root; after npm run build)
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { BOOT_MARKER } from '../src/spec/distros.js';
import { childrenCpu, CLI, printTable, workDir } from './lib.js';
import { type DiskSize, mkosiPeer, type Timing } from './peers/mkosi.js';

const json = process.argv.includes('--json');
const boot = !process.argv.includes('--no-boot');
const bad = process.argv.slice(2).find((a) => a !== '--json' && a !== '--no-boot');
if (bad) {
  console.error(`unknown argument ${bad}; usage: node --import tsx benches/disk-build.ts [--json] [--no-boot]`);
  process.exit(2);
}
const progress = (l: string) => process.stderr.write(`${l}\n`);
const loadAverage = () => Number(readFileSync('/proc/loadavg', 'utf8').split(' ')[0]);

const dir = workDir('disk-build');
const work = join(dir, 'work'); // osfarm's package cache (kept between runs)
const stages = join(dir, 'stages');
const repo = join(dir, 'repo');
const out = join(dir, 'images');

function osfarm(args: string[], env: NodeJS.ProcessEnv = {}): Record<string, any> {
  const r = spawnSync(process.execPath, [CLI, '--json', ...args], { encoding: 'utf8', env: { ...process.env, ...env }, maxBuffer: 256 << 20 });
  const last = JSON.parse(r.stdout.trim().split('\n').at(-1) ?? 'null');
  if (r.status !== 0) throw new Error(`osfarm ${args.join(' ')}: ${JSON.stringify(last)} ${r.stderr.slice(-2000)}`);
  return last;
}

function timed(args: string[], env: NodeJS.ProcessEnv): Timing & { result: Record<string, any> } {
  const c0 = childrenCpu();
  const t0 = process.hrtime.bigint();
  const result = osfarm(args, env);
  return { wall: Number(process.hrtime.bigint() - t0) / 1e9, cpu: childrenCpu() - c0, result };
}

function diskSize(path: string): DiskSize {
  const st = statSync(path);
  return { apparent: st.size, allocated: st.blocks * 512 };
}

mkdirSync(out, { recursive: true });
writeFileSync(join(dir, 'base.yaml'), 'name: mkosi-like-base\ndistribution: debian\nrelease: bookworm\narchitecture: amd64\ngroups: [minbase]\nkernel: true\nfirmware: uefi\nsourceDateEpoch: 1700000000\noutputs: [disk]\n');
writeFileSync(join(dir, 'app.yaml'), 'name: mkosi-like-app\nparent: base.yaml\npackages: [python3]\noutputs: [disk]\n');
const build = (which: 'base' | 'app', storeDir: string) =>
  timed(['--repo', repo, 'build', join(dir, `${which}.yaml`), '-d', work, '-o', join(out, `${which}.img`), '--rebuild'], { OSFARM_STAGES: storeDir });

const load0 = loadAverage();
// osfarm's package cache, filled once by building the appliance in a throwaway stage store.
const warmMark = join(work, '.osfarm-disk-build-warm');
if (!existsSync(warmMark)) {
  progress('osfarm: warm-up build to fill the package cache (downloads)');
  build('app', join(dir, 'warmup-stages'));
  rmSync(join(dir, 'warmup-stages'), { recursive: true, force: true });
  writeFileSync(warmMark, '');
}
progress('osfarm: cold build (a new stage store)');
rmSync(stages, { recursive: true, force: true });
const cold = build('base', stages);
const coldDisk = diskSize(join(out, 'base.img'));
progress('osfarm: the appliance (+ python3) on the cached base');
const inc = build('app', stages);
const disk = diskSize(join(out, 'app.img'));
let osfarmBoot: number | null = null;
if (boot) {
  progress('osfarm: booting the appliance disk (UEFI, TCG)');
  const r = osfarm(['boot', join(out, 'app.img'), '--firmware', 'uefi', '--accel', 'tcg', '--cpus', '2', '--memory', '1024', '--until', BOOT_MARKER, '--timeout', '900'], { OSFARM_WORK: work });
  osfarmBoot = r.until.seconds as number;
}

const peer = await mkosiPeer(workDir('mkosi-peer'), { boot, progress, mirror: process.env.OSFARM_MIRROR });
const load1 = loadAverage();

const ratio = (a: number, b: number) => `${(a / b).toFixed(2)}x`;
const mib = (b: number) => (b / 2 ** 20).toFixed(0);
const figures = {
  bench: 'disk-build',
  osfarm: { cold: { wall: cold.wall, cpu: cold.cpu }, coldDisk, appliance: { wall: inc.wall, cpu: inc.cpu }, disk, boot: osfarmBoot, phases: { cold: cold.result.phases, appliance: inc.result.phases } },
  mkosi: peer,
  ratios: {
    coldVsMkosiCold: cold.wall / peer.cold.wall,
    applianceVsMkosiCold: inc.wall / peer.cold.wall,
    applianceVsMkosiIncremental: inc.wall / peer.incremental.wall,
    bootVsMkosi: osfarmBoot !== null && peer.boot ? osfarmBoot / peer.boot.marker : null,
  },
  load: [load0, load1],
};
if (json) {
  console.log(JSON.stringify(figures));
} else {
  printTable(`Builds of a bookworm bootable disk (UEFI; warm package caches; wall and CPU seconds; load average ${load0} at the start, ${load1} at the end)`, [
    ['cold: minbase + kernel (osfarm: new stage store; mkosi: no cache image)', cold.wall.toFixed(1), cold.cpu.toFixed(1), peer.cold.wall.toFixed(1), peer.cold.cpu.toFixed(1), ratio(cold.wall, peer.cold.wall)],
    ['+ python3 on the cached base (mkosi: its incremental mode)', inc.wall.toFixed(1), inc.cpu.toFixed(1), peer.incremental.wall.toFixed(1), peer.incremental.cpu.toFixed(1), ratio(inc.wall, peer.incremental.wall)],
  ], ['build', 'osfarm wall', 'osfarm cpu', 'mkosi wall', 'mkosi cpu', 'osfarm / mkosi']);
  printTable('Disk sizes (MiB)', [
    ['base (cold build)', mib(coldDisk.apparent), mib(coldDisk.allocated), mib(peer.coldDisk.apparent), mib(peer.coldDisk.allocated)],
    ['+ python3', mib(disk.apparent), mib(disk.allocated), mib(peer.disk.apparent), mib(peer.disk.allocated)],
  ], ['disk', 'osfarm apparent', 'osfarm allocated', 'mkosi apparent', 'mkosi allocated']);
  if (osfarmBoot !== null && peer.boot) {
    printTable('Seconds from qemu start to the boot marker (UEFI, OVMF, TCG, 2 vCPUs, 1 GiB; the + python3 disks)', [[osfarmBoot.toFixed(1), peer.boot.marker.toFixed(1), ratio(osfarmBoot, peer.boot.marker)]], ['osfarm', 'mkosi', 'osfarm / mkosi']);
  }
  const verdict = (r: number, goal: number) => `${r.toFixed(2)}x (goal ≤ ${goal}x: ${r <= goal ? 'met' : 'NOT met'})`;
  console.log(`\nosfarm cold / mkosi cold: ${verdict(figures.ratios.coldVsMkosiCold, 1.0)}`);
  console.log(`osfarm on the cached base / mkosi cold: ${verdict(figures.ratios.applianceVsMkosiCold, 0.25)}; / mkosi incremental: ${figures.ratios.applianceVsMkosiIncremental.toFixed(2)}x`);
}
