/**
 * A repository that stores each block once (issue 15): four Debian appliances over one
 * bookworm minbase core (each adds a package, so they share most of their blocks), added
 * with `osfarm repo add` and received through a push into repositories on loop-mounted xfs
 * (reflink=1), btrfs and ext4. Per file system: the space the repository's images take on
 * the device — measured from outside osfarm, as the file system's used bytes (statfs)
 * before and after — against the images' unique bytes (distinct non-zero 4 KiB blocks,
 * hashed here with node:crypto), and the wall time of the add and of the receive.
 * Goal: ≤ 1.2x the unique bytes on xfs and btrfs (whole copies: ~4x).
 *
 * With OSFARM_BENCH_BASELINE=<another osfarm checkout's dist/cli/main.js> (one without
 * block sharing, e.g. the main branch before it) the add and the receive are timed with it
 * too, on the same file systems: "no slower than today" (the pushes come from this osfarm
 * either way). Needs root, mmdebstrap, xfsprogs, btrfs-progs and `npm run build`.
 *
 *   node --import tsx benches/repo-dedup.ts [images]     (images: only build the four images)
 */
import { createHash } from 'node:crypto';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createInterface } from 'node:readline';
import { closeSync, existsSync, mkdirSync, openSync, readSync, statfsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { makeLoopFs, type LoopFsKind } from '../__test__/helpers/loopfs.js';
import { push } from '../src/index.js';
import { CLI, cliOutcome, printTable, stopChild, workDir } from './lib.js';

const work = workDir('repo-dedup');
const cache = join(work, 'work');
const specs = join(work, 'specs');
mkdirSync(specs, { recursive: true });
const APPS: Record<string, string[]> = { app1: ['curl'], app2: ['vim-tiny'], app3: ['jq'], app4: ['bc', 'less'] };
const BASELINE = process.env.OSFARM_BENCH_BASELINE;
const MiB = 2 ** 20;

writeFileSync(join(specs, 'core.yaml'), 'name: core\ndistribution: debian\nrelease: bookworm\ngroups: [minbase]\n');
for (const [name, packages] of Object.entries(APPS)) {
  writeFileSync(join(specs, `${name}.yaml`), `name: ${name}\nparent: core\npackages: [${packages.join(', ')}]\nhostname: ${name}\n`);
}

/** The appliance's tar (built once, kept in the bench's work directory). */
function image(name: string): string {
  const out = join(work, `${name}.tar`);
  if (!existsSync(out)) {
    const r = spawnSync(process.execPath, [CLI, '--json', '--repo', join(work, 'build-repo'), 'build', join(specs, `${name}.yaml`), '-d', cache, '-o', out], { encoding: 'utf8', maxBuffer: 256 << 20 });
    if (r.status !== 0) throw new Error(`build ${name} failed: ${r.stdout.slice(-2000)} ${r.stderr.slice(-2000)}`);
  }
  return out;
}

/** Distinct non-zero 4 KiB blocks over the files, and each file's blocks found in the others. */
function uniqueBytes(files: string[]): { unique: number; logical: number; shared: number[] } {
  const owners = new Map<string, Set<number>>();
  const zero = createHash('sha1').update(Buffer.alloc(4096)).digest('hex');
  const perFile: string[][] = [];
  let logical = 0;
  files.forEach((f, i) => {
    const fd = openSync(f, 'r');
    const buf = Buffer.alloc(4096 * 256);
    const digests: string[] = [];
    for (let n = readSync(fd, buf, 0, buf.length, null); n > 0; n = readSync(fd, buf, 0, buf.length, null)) {
      logical += n;
      for (let at = 0; at < n; at += 4096) {
        const d = createHash('sha1').update(buf.subarray(at, Math.min(at + 4096, n))).digest('hex');
        if (d === zero) continue;
        digests.push(d);
        if (!owners.has(d)) owners.set(d, new Set());
        owners.get(d)!.add(i);
      }
    }
    closeSync(fd);
    perFile.push(digests);
  });
  const shared = perFile.map((ds, i) => ds.filter((d) => [...owners.get(d)!].some((o) => o !== i)).length / ds.length);
  return { unique: owners.size * 4096, logical, shared };
}

/** Bytes in use on the file system at `dir` (statfs), after a sync. */
function used(dir: string): number {
  execFileSync('sync', ['-f', dir]);
  const s = statfsSync(dir);
  return (s.blocks - s.bfree) * s.bsize;
}

function cli(bin: string, args: string[]): unknown {
  const r = spawnSync(process.execPath, [bin, '--json', ...args], { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`osfarm ${args.join(' ')} failed: ${r.stdout.slice(-1500)} ${r.stderr.slice(-1500)}`);
  return cliOutcome(r.stdout);
}

/** The port an `osfarm --json receive` listens on (its 'listening' line). */
async function listeningPort(out: NodeJS.ReadableStream): Promise<number> {
  for await (const line of createInterface({ input: out })) {
    const e = JSON.parse(line) as { type?: string; event?: string; port?: number };
    if (e.type === 'listening' || e.event === 'listening') return e.port!; // `event` in older osfarm
  }
  throw new Error('osfarm receive ended before it listened');
}

/** What this osfarm's `repo ls` counts as the images' physical bytes (FIEMAP), whoever filled the repository. */
const physicalBytes = (repo: string) => (cli(CLI, ['--repo', repo, 'repo', 'ls']) as { usage: { physicalBytes: number } }).usage.physicalBytes;

const timed = async <T>(fn: () => Promise<T> | T): Promise<[T, number]> => {
  const t0 = process.hrtime.bigint();
  const r = await fn();
  return [r, Number(process.hrtime.bigint() - t0) / 1e9];
};

// Not timed: the core and the four appliances (the package cache warms on the first).
const files = Object.keys(APPS).map(image);
const u = uniqueBytes(files);
const imagesOnly = process.argv.slice(2).includes('images');
console.log(`four appliances: ${(u.logical / MiB).toFixed(1)} MiB logical, ${(u.unique / MiB).toFixed(1)} MiB unique; share of each image's non-zero blocks found in another: ${u.shared.map((x) => `${(100 * x).toFixed(1)} %`).join(', ')}`);

const rows: (string | number)[][] = [];
const results: Record<string, unknown>[] = [];
for (const kind of (imagesOnly ? [] : ['xfs', 'btrfs', 'ext4']) as LoopFsKind[]) {
  const fs = makeLoopFs(kind, 3072, work);
  try {
    const mnt = fs.mountpoint;
    const runs: [string, string][] = [['osfarm', CLI], ...(BASELINE ? [['baseline', BASELINE] as [string, string]] : [])];
    for (const [who, bin] of runs) {
      const repo = join(mnt, `add-${who}`);
      cli(bin, ['repo', 'init', repo]);
      let before = used(mnt);
      const [, addSeconds] = await timed(() => cli(bin, ['--repo', repo, 'repo', 'add', ...files]));
      let onDisk = used(mnt) - before;
      let physical = physicalBytes(repo);
      rows.push([kind, `${who}: repo add`, `${addSeconds.toFixed(1)} s`, `${(onDisk / MiB).toFixed(1)} MiB`, `${(onDisk / u.unique).toFixed(2)}x`, `${(physical / MiB).toFixed(1)} MiB`]);
      results.push({ fs: kind, who, op: 'add', seconds: addSeconds, onDiskBytes: onDisk, ratio: onDisk / u.unique, physicalBytes: physical });

      // The four images pushed (by this osfarm) into `bin receive` on this file system.
      const received = join(mnt, `received-${who}`);
      cli(bin, ['repo', 'init', received]);
      before = used(mnt);
      const receiver = spawn(process.execPath, [bin, '--json', '--repo', received, 'receive', '--listen', '127.0.0.1:0', '--insecure'], { stdio: ['ignore', 'pipe', 'inherit'] });
      try {
        const port = await listeningPort(receiver.stdout!);
        const [, receiveSeconds] = await timed(async () => {
          for (const f of files) await push(f, `127.0.0.1:${port}`, { insecure: true });
        });
        await stopChild(receiver);
        onDisk = used(mnt) - before;
        physical = physicalBytes(received);
        rows.push([kind, `${who}: push → receive`, `${receiveSeconds.toFixed(1)} s`, `${(onDisk / MiB).toFixed(1)} MiB`, `${(onDisk / u.unique).toFixed(2)}x`, `${(physical / MiB).toFixed(1)} MiB`]);
        results.push({ fs: kind, who, op: 'receive', seconds: receiveSeconds, onDiskBytes: onDisk, ratio: onDisk / u.unique, physicalBytes: physical });
      } finally {
        await stopChild(receiver);
      }
    }
  } finally {
    fs.cleanup();
  }
}
printTable(
  `four Debian appliances (${(u.logical / MiB).toFixed(0)} MiB logical, ${(u.unique / MiB).toFixed(1)} MiB unique): goal ≤ 1.2x unique on xfs and btrfs`,
  rows,
  ['fs', 'operation', 'time', 'used on the fs (statfs)', 'x unique', 'osfarm repo ls: physical'],
);
console.log(JSON.stringify({ bench: 'repo-dedup', logicalBytes: u.logical, uniqueBytes: u.unique, sharedFractions: u.shared, results }));
