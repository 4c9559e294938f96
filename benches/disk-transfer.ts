/**
 * Disks transfer like trees (issue 10): osfarm builds a bookworm bootable base (minbase + a
 * kernel) and an appliance on it (+ python3), each as a bootable disk, as the ext4 root
 * file system alone and as the block-aligned tar. Each image is then pushed for real
 * (`osfarm push` to `osfarm receive` on loopback) to a receiver holding the other image of
 * the pair in the same format, both ways, and the bytes on the wire are compared with the
 * aligned tars' (goal: a disk pair ≤ 1.25x the tar pair, both ways).
 *
 * Also printed: the build times (cold stage cache; the appliance on the cached base) and
 * the images' sizes (apparent and allocated).
 *
 * Run: node --import tsx benches/disk-transfer.ts [--json] [--rebuild]   (root; after npm run build)
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';

import { lastOutcome } from '../__test__/helpers/tmp.js';
import { CLI, printTable, stopChild, workDir } from './lib.js';

const dir = workDir('disk-transfer');
const json = process.argv.includes('--json');
const rebuild = process.argv.includes('--rebuild');
const TOKEN = 'osfarm-disk-transfer-bench';
const FORMATS = ['tar', 'ext4', 'disk'] as const;
type Format = (typeof FORMATS)[number];
const EXT: Record<Format, string> = { tar: '.tar', ext4: '.ext4', disk: '.img' };

function osfarm(args: string[], env: NodeJS.ProcessEnv = {}): Record<string, any> {
  const r = spawnSync(process.execPath, [CLI, '--json', ...args], { encoding: 'utf8', env: { ...process.env, ...env }, maxBuffer: 256 << 20 });
  const last = lastOutcome(r.stdout);
  if (r.status !== 0) throw new Error(`osfarm ${args.join(' ')}: ${JSON.stringify(last)} ${r.stderr.slice(-2000)}`);
  return last;
}

/** Builds the pair (unless there from an earlier run): the base cold (a new stage store), then the appliance on it. */
function buildPair(): { images: Record<'base' | 'app', Record<Format, string>>; seconds: Record<'base' | 'app', number>; phases: Record<string, unknown> } {
  const stages = join(dir, 'stages');
  const out = join(dir, 'images');
  const images = {
    base: Object.fromEntries(FORMATS.map((f) => [f, join(out, `base${EXT[f]}`)])) as Record<Format, string>,
    app: Object.fromEntries(FORMATS.map((f) => [f, join(out, `app${EXT[f]}`)])) as Record<Format, string>,
  };
  const timesFile = join(dir, 'build-times.json');
  if (!rebuild && [...Object.values(images.base), ...Object.values(images.app)].every((p) => existsSync(p)) && existsSync(timesFile)) {
    return { images, ...(JSON.parse(readFileSync(timesFile, 'utf8')) as { seconds: Record<'base' | 'app', number>; phases: Record<string, unknown> }) };
  }
  rmSync(stages, { recursive: true, force: true });
  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  writeFileSync(join(dir, 'base.yaml'), 'name: bench-base\ndistribution: debian\nrelease: bookworm\narchitecture: amd64\ngroups: [minbase]\nkernel: true\nnetwork: dhcp\nsourceDateEpoch: 1700000000\noutputs: [tar, ext4, disk]\n');
  writeFileSync(join(dir, 'app.yaml'), 'name: bench-app\nparent: base.yaml\npackages: [python3]\noutputs: [tar, ext4, disk]\n');
  const seconds = { base: 0, app: 0 };
  const phases: Record<string, unknown> = {};
  for (const which of ['base', 'app'] as const) {
    const t0 = Date.now();
    // The package cache is the build tests' (packages are downloaded once); the stage store is the bench's own.
    const r = osfarm(['--repo', join(dir, 'repo'), 'build', join(dir, `${which}.yaml`), '-d', process.env.OSFARM_TEST_WORK ?? join(dir, 'work'), '-o', images[which].tar, '--rebuild'], { OSFARM_STAGES: stages });
    seconds[which] = (Date.now() - t0) / 1000;
    phases[which] = r.phases;
  }
  writeFileSync(timesFile, JSON.stringify({ seconds, phases }));
  return { images, seconds, phases };
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

/** Pushes `image` to a receiver whose repository holds `held`; returns the push's account. */
async function pushTo(image: string, held: string): Promise<Record<string, any>> {
  const repo = join(dir, 'receiver-repo');
  rmSync(repo, { recursive: true, force: true });
  osfarm(['--repo', repo, 'repo', 'init']);
  osfarm(['--repo', repo, 'repo', 'add', held, '--name', 'held']);
  const port = await freePort();
  const receiver = spawn(process.execPath, [CLI, '--json', '--repo', repo, 'receive', '--listen', `127.0.0.1:${port}`, '--token', TOKEN, '--insecure'], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    await new Promise<void>((resolve, reject) => {
      let buf = '';
      receiver.stdout!.on('data', (d: Buffer) => {
        buf += d.toString();
        if (/listening/i.test(buf)) resolve();
      });
      receiver.once('exit', () => reject(new Error('osfarm receive exited before listening')));
    });
    return osfarm(['push', image, `127.0.0.1:${port}`, '--token', TOKEN, '--name', 'pushed', '--insecure']);
  } finally {
    await stopChild(receiver);
    rmSync(repo, { recursive: true, force: true });
  }
}

const pair = buildPair();
const rows: (string | number)[][] = [];
const results: Record<string, unknown>[] = [];
const mb = (n: number) => (n / 1e6).toFixed(2);
const wire: Record<string, number> = {};
for (const [from, to] of [['app', 'base'], ['base', 'app']] as const) {
  for (const f of FORMATS) {
    const r = await pushTo(pair.images[from][f], pair.images[to][f]);
    const bytes = r.wireBytesSent + r.wireBytesReceived;
    wire[`${from}-${f}`] = bytes;
    results.push({ direction: `${from} → holder of ${to}`, format: f, wireBytes: bytes, blocksSent: r.blocksSent, encodedBytesSent: r.encodedBytesSent, blockCount: r.blockCount });
    rows.push([`${from} → holder of ${to}`, f, r.blockCount, r.blocksSent, mb(r.encodedBytesSent), mb(bytes), f === 'tar' ? '1.00x' : `${(bytes / wire[`${from}-tar`]!).toFixed(2)}x`]);
  }
}
const sizes = FORMATS.flatMap((f) => (['base', 'app'] as const).map((w) => {
  const st = statSync(pair.images[w][f]);
  return [`${w} ${f}`, (st.size / 2 ** 20).toFixed(0), ((st.blocks * 512) / 2 ** 20).toFixed(0)];
}));
if (json) {
  console.log(JSON.stringify({ pushes: results, buildSeconds: pair.seconds, phases: pair.phases, sizes }, null, 2));
} else {
  printTable('Pushes to a receiver holding the other image of the pair (osfarm push/receive on loopback; MB = 10^6 bytes; ratio: this format\'s bytes on the wire / the aligned tars\')', rows, ['direction', 'format', 'blocks', 'blocks sent', 'data MB (zstd)', 'wire MB', 'vs tar']);
  printTable('Builds (one run: base with a cold stage store, then the appliance on the cached base; all three formats each)', [
    ['base: bookworm minbase + linux-image-amd64 (+ boot configuration)', pair.seconds.base.toFixed(1), JSON.stringify(pair.phases.base)],
    ['appliance: + python3', pair.seconds.app.toFixed(1), JSON.stringify(pair.phases.app)],
  ], ['build', 'seconds', 'phases (ms)']);
  printTable('Image sizes (MiB)', sizes, ['image', 'apparent', 'allocated']);
  const goal = (['app', 'base'] as const).map((w) => wire[`${w}-disk`]! / wire[`${w}-tar`]!);
  console.log(`\ngoal (disk ≤ 1.25x the aligned tars, both ways): ${goal.map((g) => `${g.toFixed(2)}x`).join(' / ')} → ${goal.every((g) => g <= 1.25) ? 'met' : 'NOT met'}`);
}
