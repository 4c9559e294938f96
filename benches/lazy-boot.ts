/**
 * Lazy boot (issue 11): seconds from the command to the boot marker on the serial console,
 * over a 100 Mbit/s link shaped by `tc` into a network namespace where `osfarm serve` holds
 * the images (the origin); the receiver (`osfarm boot`, qemu) is on the host. Rows:
 *
 * - local: `osfarm boot NAME` of the image in the repository (the floor; TCG here);
 * - pull, then boot: `osfarm pull URL`, then the local boot (the pull's seconds included);
 * - lazy boots, `osfarm boot URL`, into an empty receiver and into one that holds a related
 *   image (the bootable base, when booting base + python3), each without and with a boot
 *   profile at the origin (the profile is the one the profile-less empty boot recorded up to
 *   its marker).
 *
 * For each: seconds to the marker (from the command's start), bytes that crossed the link
 * before it (the veth's counters: measured outside osfarm) as a share of the image (apparent
 * size, and its non-zero blocks), what the guest itself read by then, and seconds until the
 * image was complete and published (the lazy pull's own seconds, from its start a moment
 * after the command's; against the plain pull's). Goals: lazy with an empty
 * receiver at the marker within 1.2x the local boot + 10 s; with a profile, bytes before the
 * marker <= 15 % of the image; published no later than the plain pull finished.
 *
 * One round per row (a TCG boot takes 40-120 s here; the load average is printed with
 * each). The images are built once into the bench's origin repository (bookworm minbase +
 * kernel, then + python3, as bootable disks) and kept; their stage store is $OSFARM_STAGES
 * if set (the lazy boot test's spec shares the base's stages), else the bench's own. Every
 * boot runs with nice -n 10.
 *
 * Run: node --import tsx benches/lazy-boot.ts [--json]   (root; after npm run build)
 * OSFARM_BENCH_LAZY_ROWS=local,pull,empty,empty-profile,related,related-profile (default all)
 */
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

import { Repository } from '../src/repo/index.js';
import { BOOT_MARKER } from '../src/spec/distros.js';
import { createNetns } from '../__test__/helpers/netns.js';
import { lastOutcome, outcome } from '../__test__/helpers/tmp.js';
import { CLI, printTable, stopChild, workDir } from './lib.js';

const dir = workDir('lazy-boot');
const json = process.argv.includes('--json');
const MBIT = 100;
const PORT = 8080;
const origin = join(dir, 'origin');
const recv = join(dir, 'receiver');
const rows = (process.env.OSFARM_BENCH_LAZY_ROWS ?? 'local,pull,empty,empty-profile,related,related-profile').split(',');
const BOOT = ['--firmware', 'bios', '--accel', 'tcg', '--until', BOOT_MARKER, '--timeout', '1200'];

function osfarm(args: string[], env: NodeJS.ProcessEnv = {}): Record<string, any> {
  const r = spawnSync(process.execPath, [CLI, '--json', ...args], { encoding: 'utf8', env: { ...process.env, ...env }, maxBuffer: 256 << 20 });
  const last = lastOutcome(r.stdout);
  if (r.status !== 0) throw new Error(`osfarm ${args.join(' ')}: ${JSON.stringify(last)} ${r.stderr.slice(-2000)}`);
  return last;
}

interface Image {
  name: string;
  digest: string;
  path: string;
  size: number;
  /** Bytes of its non-zero blocks (the file's allocation: zero blocks are holes). */
  dataBytes: number;
}

/** Builds the pair into the origin repository unless it is there from an earlier run. */
function buildPair(): Record<'base' | 'app', Image> {
  const names = { base: 'lazy-base.img', app: 'lazy-app.img' };
  writeFileSync(join(dir, 'base.yaml'), 'name: lazy-base\ndistribution: debian\nrelease: bookworm\narchitecture: amd64\ngroups: [minbase]\nkernel: true\nnetwork: dhcp\nsourceDateEpoch: 1700000000\noutputs: [disk]\n');
  writeFileSync(join(dir, 'app.yaml'), 'name: lazy-app\nparent: base.yaml\npackages: [python3]\noutputs: [disk]\n');
  const out = {} as Record<'base' | 'app', Image>;
  for (const which of ['base', 'app'] as const) {
    const repo = existsSync(origin) ? Repository.open(origin) : undefined;
    const have = repo?.list().find((e) => e.name === names[which]);
    repo?.close();
    if (!have) osfarm(['--repo', origin, 'build', join(dir, `${which}.yaml`), '-d', process.env.OSFARM_TEST_WORK ?? join(dir, 'work')], { OSFARM_STAGES: process.env.OSFARM_STAGES ?? join(dir, 'stages') });
    const r = Repository.open(origin);
    const e = r.resolve(names[which]);
    r.close();
    // The repository keeps zero blocks as holes: what the file allocates is its data.
    out[which] = { name: e.name!, digest: e.digest, path: e.path, size: e.size, dataBytes: statSync(e.path).blocks * 512 };
  }
  return out;
}

const load = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');

interface Run {
  /** Seconds from the command's start to the marker on the console. */
  marker: number;
  /** Bytes received over the link by then (the veth's counter). */
  wireAtMarker: number;
  /** The command's result (--json). */
  result: Record<string, any>;
  /** Seconds from the start to the result (a lazy boot's ends after the publication and the VM). */
  end: number;
  load: string;
}

/** Runs `osfarm boot` (nice -n 10), timing the marker and sampling the link's counter at it. */
function boot(repo: string, image: string, wire: () => number): Promise<Run> {
  const w0 = wire();
  const t0 = process.hrtime.bigint();
  const secs = () => Number(process.hrtime.bigint() - t0) / 1e9;
  const child = spawn('nice', ['-n', '10', process.execPath, CLI, '--json', '--repo', repo, 'boot', image, ...BOOT], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, OSFARM_WORK: join(dir, 'work') } });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  let marker: { at: number; wire: number; load: string } | undefined;
  let last: Record<string, any> = {};
  createInterface({ input: child.stdout }).on('line', (l) => {
    const o = JSON.parse(l) as Record<string, any>;
    if (!marker && o.type === 'matched') marker = { at: secs(), wire: wire() - w0, load: load() };
    last = o;
  });
  return new Promise((resolve, reject) => {
    child.once('close', (code) => {
      if (code !== 0 || !marker) reject(new Error(`osfarm boot ${image}: exit ${code}: ${JSON.stringify(last)} ${stderr.slice(-2000)}`));
      else resolve({ marker: marker.at, wireAtMarker: marker.wire, result: outcome(last), end: secs(), load: marker.load });
    });
  });
}

const pair = buildPair();
const img = pair.app;
const ns = createNetns(`osfarm-lazyb-${process.pid}`, { mbit: MBIT }, 23, 'olazy');
const serve = spawn('ip', ['netns', 'exec', ns.name, process.execPath, CLI, '--json', '--repo', origin, 'serve', '--listen', `${ns.nsIp}:${PORT}`, '--insecure', '--token-file', join(dir, 'web-token')], { stdio: ['ignore', 'pipe', 'inherit'] });
await new Promise<void>((resolve, reject) => {
  createInterface({ input: serve.stdout! }).on('line', (l) => l.includes('"listening"') && resolve());
  serve.once('exit', (code) => reject(new Error(`osfarm serve exited (${code})`)));
});
const url = `http://${ns.nsIp}:${PORT}/images/${img.name}`;
const wire = () => ns.hostCounters().rx;
const profileAtOrigin = join(origin, 'images', img.digest, 'profile.json');
const recorded = join(dir, 'recorded-profile.json');

/** A receiver that is empty, or holds the base image. */
function freshReceiver(holdsBase: boolean): void {
  rmSync(recv, { recursive: true, force: true });
  if (holdsBase) {
    const r = Repository.init(recv);
    r.addSync(pair.base.path, { name: pair.base.name });
    r.close();
  }
}

const out: Record<string, any>[] = [];
let pullSeconds: number | undefined;
let local: number | undefined;
try {
  for (const row of rows) {
    if (row === 'local') {
      const r = await boot(origin, img.name, wire);
      local = r.marker;
      out.push({ row, marker: r.marker, load: r.load });
    } else if (row === 'pull') {
      freshReceiver(false);
      const t0 = process.hrtime.bigint();
      osfarm(['--repo', recv, 'pull', url]);
      pullSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
      const r = await boot(recv, img.name, wire);
      out.push({ row, marker: pullSeconds + r.marker, pull: pullSeconds, load: r.load });
    } else {
      const related = row.startsWith('related');
      const withProfile = row.endsWith('-profile');
      if (withProfile && !existsSync(recorded)) throw new Error(`row ${row} needs the profile an earlier 'empty' row records`);
      rmSync(profileAtOrigin, { force: true });
      if (withProfile) copyFileSync(recorded, profileAtOrigin);
      freshReceiver(related);
      const r = await boot(recv, url, wire);
      const m = r.result.lazyAtMarker;
      if (!withProfile && !related) copyFileSync(join(recv, 'images', img.digest, 'profile.json'), recorded);
      out.push({ row, marker: r.marker, wireAtMarker: r.wireAtMarker, guestRead: m.readBytes, fetchedAtMarker: m.fetchedBytes, localBlocksAtMarker: m.localBlocks, published: r.result.lazy.seconds, profile: r.result.lazy.profile, blocksLocal: r.result.lazy.blocksLocal, load: r.load });
    }
    if (!json) console.error(`lazy-boot: ${JSON.stringify(out.at(-1))}`);
  }
} finally {
  rmSync(profileAtOrigin, { force: true });
  await stopChild(serve);
  ns.remove();
  rmSync(recv, { recursive: true, force: true });
}

const pct = (n: number, of: number) => `${((100 * n) / of).toFixed(1)} %`;
const mb = (n: number) => (n / 1e6).toFixed(1);
if (json) {
  console.log(JSON.stringify({ image: img, base: pair.base, mbit: MBIT, rows: out }, null, 2));
} else {
  printTable(
    `Boot of ${img.name} (${mb(img.size)} MB, ${mb(img.dataBytes)} MB non-zero) to its marker over ${MBIT} Mbit/s (tc); MB = 10^6 bytes; TCG; one round each`,
    out.map((o) => [
      o.row,
      o.marker.toFixed(1),
      local ? `${(o.marker / local).toFixed(2)}x` : '',
      o.wireAtMarker === undefined ? '' : `${mb(o.wireAtMarker)} (${pct(o.wireAtMarker, img.size)} / ${pct(o.wireAtMarker, img.dataBytes)})`,
      o.guestRead === undefined ? '' : mb(o.guestRead),
      o.published === undefined ? (o.pull ? `${o.pull.toFixed(1)} (pull)` : '') : o.published.toFixed(1),
      o.load,
    ]),
    ['row', 's to marker', 'vs local', 'MB on the link before it (of image / of non-zero)', 'guest read MB', 's to published', 'load'],
  );
  const empty = out.find((o) => o.row === 'empty');
  const prof = out.filter((o) => o.row.endsWith('-profile'));
  if (local && empty) console.log(`\ngoal: lazy, empty receiver ≤ 1.2 × local + 10 s = ${(1.2 * local + 10).toFixed(1)} s: ${empty.marker.toFixed(1)} s → ${empty.marker <= 1.2 * local + 10 ? 'met' : 'NOT met'}`);
  for (const p of prof) console.log(`goal: ${p.row}: bytes before the marker ≤ 15 % of the image: ${pct(p.wireAtMarker, img.size)} → ${p.wireAtMarker <= 0.15 * img.size ? 'met' : 'NOT met'}`);
  if (pullSeconds !== undefined) for (const o of out.filter((x) => x.published !== undefined)) console.log(`goal: ${o.row}: published (${o.published.toFixed(1)} s) no later than the plain pull (${pullSeconds.toFixed(1)} s) → ${o.published <= pullSeconds ? 'met' : 'NOT met'}`);
}
