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
 * osfarm's package cache is $OSFARM_TEST_WORK's when set (the build tests', as disk-transfer
 * uses), else the bench's own; --skip-warmup says it is warm already (after the disk tests).
 *
 * The two boots run one after the other once both builds are done; --boot-only boots the disks
 * of an earlier run again, --no-boot leaves them out.
 *
 * Run: node --import tsx benches/disk-build.ts [--json] [--no-boot | --boot-only] [--skip-warmup]   (root; after npm run build)
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { BOOT_MARKER } from '../src/spec/distros.js';
import { lastOutcome } from '../__test__/helpers/tmp.js';
import { childrenCpu, CLI, printTable, workDir } from './lib.js';
import { bootTimes, type DiskSize, type MkosiPeerFigures, mkosiPeer, type Timing } from './peers/mkosi.js';

const json = process.argv.includes('--json');
const boot = !process.argv.includes('--no-boot');
const builds = !process.argv.includes('--boot-only');
const skipWarmup = process.argv.includes('--skip-warmup');
const bad = process.argv.slice(2).find((a) => !['--json', '--no-boot', '--boot-only', '--skip-warmup'].includes(a));
if (bad || (!boot && !builds)) {
  console.error(`${bad ? `unknown argument ${bad}` : '--no-boot and --boot-only leave nothing to do'}; usage: node --import tsx benches/disk-build.ts [--json] [--no-boot | --boot-only] [--skip-warmup]`);
  process.exit(2);
}
const progress = (l: string) => process.stderr.write(`${l}\n`);
const loadAverage = () => Number(readFileSync('/proc/loadavg', 'utf8').split(' ')[0]);

const dir = workDir('disk-build');
const work = process.env.OSFARM_TEST_WORK ?? join(dir, 'work'); // osfarm's package cache (kept between runs)
const stages = join(dir, 'stages');
const repo = join(dir, 'repo');
const out = join(dir, 'images');

function osfarm(args: string[], env: NodeJS.ProcessEnv = {}): Record<string, any> {
  const r = spawnSync(process.execPath, [CLI, '--json', ...args], { encoding: 'utf8', env: { ...process.env, ...env }, maxBuffer: 256 << 20 });
  const last = lastOutcome(r.stdout);
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
const peerDir = workDir('mkosi-peer');
const ratio = (a: number, b: number) => `${(a / b).toFixed(2)}x`;
const mib = (b: number) => (b / 2 ** 20).toFixed(0);
const verdict = (r: number, goal: number) => `${r.toFixed(2)}x (goal ≤ ${goal}x: ${r <= goal ? 'met' : 'NOT met'})`;

interface BuildFigures {
  osfarm: { cold: Timing; coldDisk: DiskSize; appliance: Timing; disk: DiskSize; phases: Record<string, unknown> };
  mkosi: MkosiPeerFigures;
  ratios: { coldVsMkosiCold: number; applianceVsMkosiCold: number; applianceVsMkosiIncremental: number };
}

async function buildBoth(): Promise<BuildFigures> {
  // osfarm's package cache, filled once by building the appliance in a throwaway stage store.
  const warmMark = join(work, '.osfarm-disk-build-warm');
  if (!skipWarmup && !existsSync(warmMark)) {
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
  const app = build('app', stages);
  const disk = diskSize(join(out, 'app.img'));
  const peer = await mkosiPeer(peerDir, { boot: false, progress, mirror: process.env.OSFARM_MIRROR });
  return {
    osfarm: { cold: { wall: cold.wall, cpu: cold.cpu }, coldDisk, appliance: { wall: app.wall, cpu: app.cpu }, disk, phases: { cold: cold.result.phases, appliance: app.result.phases } },
    mkosi: peer,
    ratios: { coldVsMkosiCold: cold.wall / peer.cold.wall, applianceVsMkosiCold: app.wall / peer.cold.wall, applianceVsMkosiIncremental: app.wall / peer.incremental.wall },
  };
}

/** Both + python3 disks booted one after the other, each timed from qemu's start to the marker. */
async function bootBoth(): Promise<{ osfarm: number; mkosi: number; mkosiLogin: number; qemu: string[] }> {
  const osfarmDisk = join(out, 'app.img');
  const mkosiDisk = join(peerDir, 'out', 'image.raw');
  for (const d of [osfarmDisk, mkosiDisk]) if (!existsSync(d)) throw new Error(`${d} is missing: run the bench without --boot-only first`);
  progress('osfarm: booting its + python3 disk (UEFI, TCG)');
  const r = osfarm(['boot', osfarmDisk, '--firmware', 'uefi', '--accel', 'tcg', '--cpus', '2', '--memory', '1024', '--until', BOOT_MARKER, '--timeout', '900'], { OSFARM_WORK: work });
  progress('mkosi: booting its + python3 disk (UEFI, TCG)');
  const m = await bootTimes(mkosiDisk, peerDir, { accel: 'tcg', cpus: 2, memoryMiB: 1024, timeoutSec: 900 });
  return { osfarm: r.until.seconds as number, mkosi: m.times.marker, mkosiLogin: m.times.login, qemu: m.qemu };
}

const load0 = loadAverage();
const built = builds ? await buildBoth() : null;
const booted = boot ? await bootBoth() : null;
const load = [load0, loadAverage()];
if (json) {
  console.log(JSON.stringify({ bench: 'disk-build', ...built, boot: booted, load }));
} else {
  if (built) {
    const { osfarm: o, mkosi: m, ratios } = built;
    printTable(`Builds of a bookworm bootable disk (UEFI; warm package caches; wall and CPU seconds; load average ${load[0]} at the start, ${load[1]} at the end)`, [
      ['cold: minbase + kernel (osfarm: new stage store; mkosi: no cache image)', o.cold.wall.toFixed(1), o.cold.cpu.toFixed(1), m.cold.wall.toFixed(1), m.cold.cpu.toFixed(1), ratio(o.cold.wall, m.cold.wall)],
      ['+ python3 on the cached base (mkosi: its incremental mode)', o.appliance.wall.toFixed(1), o.appliance.cpu.toFixed(1), m.incremental.wall.toFixed(1), m.incremental.cpu.toFixed(1), ratio(o.appliance.wall, m.incremental.wall)],
    ], ['build', 'osfarm wall', 'osfarm cpu', 'mkosi wall', 'mkosi cpu', 'osfarm / mkosi']);
    printTable('Disk sizes (MiB)', [
      ['base (cold build)', mib(o.coldDisk.apparent), mib(o.coldDisk.allocated), mib(m.coldDisk.apparent), mib(m.coldDisk.allocated)],
      ['+ python3', mib(o.disk.apparent), mib(o.disk.allocated), mib(m.disk.apparent), mib(m.disk.allocated)],
    ], ['disk', 'osfarm apparent', 'osfarm allocated', 'mkosi apparent', 'mkosi allocated']);
    console.log(`\nosfarm cold / mkosi cold: ${verdict(ratios.coldVsMkosiCold, 1.0)}`);
    console.log(`osfarm on the cached base / mkosi cold: ${verdict(ratios.applianceVsMkosiCold, 0.25)}; / mkosi incremental: ${ratios.applianceVsMkosiIncremental.toFixed(2)}x`);
  }
  if (booted) {
    printTable(`Seconds from qemu start to the boot marker (UEFI, OVMF, TCG, 2 vCPUs, 1 GiB; the + python3 disks, one after the other; load average ${load[1]} at the end)`, [[booted.osfarm.toFixed(1), booted.mkosi.toFixed(1), ratio(booted.osfarm, booted.mkosi)]], ['osfarm', 'mkosi', 'osfarm / mkosi']);
  }
}
