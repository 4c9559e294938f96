/**
 * The seed's push table: for delta = 1, 0.5, 0.1, 0 (the fraction of blocks the receiver
 * lacks), theoretical max observed bandwidth, measured observed bandwidth (image size /
 * wall time) and measured real bandwidth (bytes on the wire / wall time), over a 100
 * Mbit/s link: the receiver runs in a network namespace behind a veth pair shaped by
 * `tc` on both ends. Every bound is measured from outside osfarm in the same run:
 * theoretical = min(disk read, link / delta) for delta > 0 and min(disk read, SHA-1 of the
 * sender's CPU) for delta 0, with disk read from `dd` (cold cache), SHA-1 from `openssl
 * speed sha1` on the sender's CPU, and the link from a plain TCP stream over the same
 * pair. Caches are dropped before every push, so the source reads its image from disk.
 *
 * Two machines on one host: the source runs on CPU 0 and the receiver on CPU 1, and the
 * receiver's repository is on a tmpfs, since the formula assumes a receiver whose disk is
 * not the bottleneck; on this host's one disk, the receiver's copy of the local blocks
 * and its fsync would compete with the source's reads. Goals (issue 16): measured
 * observed >= 97 % of theoretical at delta 1, 0.5, 0.1 and >= 90 % at delta 0.
 *
 * A second bound counts what the seed's formula leaves out: the digests on the link, and
 * the CPU that reading from disk costs (measured from dd's user + system time), which a
 * one-CPU source spends on top of hashing. At delta 0 the push is bound by that sum.
 * The load average is printed: run it on a quiet machine.
 *
 * The seed's disk (35.6 MB/s) was slower than its hashing, which bound its delta-0 row;
 * this VM's virtual disk reads at GB/s from the host's cache, faster than one CPU hashes.
 * So the rows whose bound a disk would set are measured again with the disk throttled by
 * the kernel's block cgroup (as the link is by tc) to OSFARM_BENCH_DISK_MBPS MB/s
 * (default 500, a SATA SSD; 0: no second table). There osfarm reads faster than dd does
 * (dd has one request in flight, osfarm's reader and hashers several, and the throttle
 * lets a cgroup use its budget more fully that way), so that ratio tops 100 %.
 *
 * OSFARM_BENCH_SIZE_MIB (default 256) sets the image size, OSFARM_BENCH_DELTAS (default
 * 1,0.5,0.1,0) the rows; needs root.
 */
import { execFileSync, spawnSync, type ChildProcess } from 'node:child_process';
import { createCipheriv, createHash } from 'node:crypto';
import { once } from 'node:events';
import { closeSync, copyFileSync, existsSync, mkdirSync, openSync, rmSync, statSync, writeSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

import { lastOutcome } from '../__test__/helpers/tmp.js';
import { load, opensslSha1 } from './bounds.js';
import { CLI, dropCaches, median, printTable, stopChild, time, workDir } from './lib.js';
import { limitDiskReads } from './disk-throttle.js';
import { createNetns, type Netns } from '../__test__/helpers/netns.js';

const MIB = 1 << 20;
const BS = 4096;
const sizeMib = Number(process.env.OSFARM_BENCH_SIZE_MIB ?? 256);
const MBIT = 100;
const PORT = 7070;
const TOKEN = 'transfer-bandwidth-bench';
const mbs = (bytes: number, secs: number) => bytes / 1e6 / secs;
const deltas = (process.env.OSFARM_BENCH_DELTAS ?? '1,0.5,0.1,0').split(',').map(Number);
/** MB/s of the throttled disk of the second table (0: none). */
const diskMbps = Number(process.env.OSFARM_BENCH_DISK_MBPS ?? 500);
if (deltas.some((d) => !(d >= 0 && d <= 1))) throw new Error('OSFARM_BENCH_DELTAS: fractions from 0 to 1, comma-separated');

/** Deterministic pseudo-random bytes (AES-CTR keyed by `seed`, counter from `offset`). */
function stream(seed: string, offset: number, length: number): Buffer {
  const key = createHash('sha256').update(seed).digest().subarray(0, 16);
  const iv = Buffer.alloc(16);
  iv.writeBigUInt64BE(BigInt(offset / 16), 8);
  return createCipheriv('aes-128-ctr', key, iv).update(Buffer.alloc(length));
}

/** Writes `sizeMib` MiB of `seed`'s stream unless the file is already there. */
function randomImage(path: string, seed: string): void {
  if (existsSync(path) && statSync(path).size === sizeMib * MIB) return;
  const fd = openSync(path, 'w');
  for (let at = 0; at < sizeMib * MIB; at += 16 * MIB) writeSync(fd, stream(seed, at, 16 * MIB));
  closeSync(fd);
}

/**
 * The receiver's older version for `delta`: the new image with a fraction `delta` of its
 * blocks replaced, in one run per segment of 256..2048 blocks at a random place in it.
 */
function olderVersion(newImage: string, path: string, delta: number): number {
  if (delta === 1) randomImage(path, 'older');
  else copyFileSync(newImage, path);
  if (delta === 0 || delta === 1) return delta === 1 ? (sizeMib * MIB) / BS : 0;
  const blocks = (sizeMib * MIB) / BS;
  const rand = stream(`runs-${delta}`, 0, 1 << 20);
  let r = 0;
  const next = () => {
    r += 4;
    return rand.readUInt32LE(r % rand.length);
  };
  const fd = openSync(path, 'r+');
  let changed = 0;
  for (let seg = 0; seg < blocks; ) {
    const len = Math.min(256 + (next() % 1793), blocks - seg);
    const run = Math.round(len * delta);
    const at = seg + (next() % (len - run + 1));
    writeSync(fd, stream(`changed-${delta}`, at * BS, run * BS), 0, run * BS, at * BS);
    changed += run;
    seg += len;
  }
  closeSync(fd);
  return changed;
}

const SOURCE_CPU = '0';
const RECEIVER_CPU = '1';

/** Runs the CLI; with `disk`, on the source's CPU reading from that disk. */
function cli(args: string[], disk?: Disk): unknown {
  const cmd = [process.execPath, CLI, '--json', ...args];
  const [c, ...a] = disk === undefined ? cmd : disk.wrap(['taskset', '-c', SOURCE_CPU, ...cmd]);
  const out = execFileSync(c!, a, { encoding: 'utf8', maxBuffer: 64 << 20 });
  return lastOutcome(out);
}

/** Starts `osfarm receive` in the namespace; resolves once it listens. */
async function startReceiver(ns: Netns, repo: string): Promise<ChildProcess> {
  const child = ns.spawn('taskset', ['-c', RECEIVER_CPU, process.execPath, CLI, '--json', '--repo', repo, 'receive', '--listen', `${ns.nsIp}:${PORT}`, '--token', TOKEN, '--insecure'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  for await (const line of createInterface({ input: child.stdout! })) {
    if ((JSON.parse(line) as { type?: string }).type === 'listening') return child;
  }
  throw new Error('osfarm receive exited before listening');
}

/** Payload goodput of one plain TCP stream host -> namespace (bytes/s). */
async function linkGoodput(ns: Netns, bytes: number): Promise<number> {
  const sinkCode = `require('net').createServer((s)=>{let n=0;s.on('data',(b)=>{n+=b.length});s.on('end',()=>s.end(String(n)))}).listen(${PORT + 1},'${ns.nsIp}',()=>console.log('up'))`;
  const sink = ns.spawn(process.execPath, ['-e', sinkCode], { stdio: ['ignore', 'pipe', 'inherit'] });
  await once(sink.stdout!, 'data');
  try {
    const secs = await time(async () => {
      const s = connect({ host: ns.nsIp, port: PORT + 1 });
      await once(s, 'connect');
      const chunk = stream('link', 0, 4 * MIB);
      for (let sent = 0; sent < bytes; sent += chunk.length) if (!s.write(chunk)) await once(s, 'drain');
      s.end();
      const [reply] = (await once(s, 'data')) as [Buffer];
      if (Number(reply.toString()) !== bytes) throw new Error(`the sink got ${reply.toString()} of ${bytes} bytes`);
    });
    return bytes / secs;
  } finally {
    sink.kill();
  }
}

interface PushResult {
  digest: string;
  seconds: number;
  blocksSent: number;
  wireBytesSent: number;
  encodedBytesSent: number;
  digestBytesSent: number;
}

const dir = workDir('transfer-bandwidth');
const newImage = join(dir, `new-${sizeMib}M.img`);
randomImage(newImage, 'newer');
const size = sizeMib * MIB;

/** The disk the source reads from: this machine's, or one throttled under a cgroup. */
interface Disk {
  label: string;
  /** `cmd` as a command line reading from this disk. */
  wrap(cmd: string[]): string[];
}
const machineDisk: Disk = { label: "this machine's disk", wrap: (cmd) => cmd };

/** Wall and CPU seconds (user + system) of dd reading the image cold on the source's CPU. */
function ddCold(disk: Disk): { wall: number; cpu: number } {
  dropCaches();
  const script = 'TIMEFORMAT="%3R %3U %3S"; time "$@"';
  const dd = disk.wrap(['taskset', '-c', SOURCE_CPU, 'dd', `if=${newImage}`, 'of=/dev/null', 'bs=4M', 'status=none']);
  const r = spawnSync('bash', ['-c', script, 'time', ...dd], { encoding: 'utf8' });
  const [wall, user, sys] = r.stderr.trim().split('\n').pop()!.split(' ').map(Number);
  if (r.status !== 0 || !(wall! > 0)) throw new Error(`dd failed: ${r.stderr}`);
  return { wall: wall!, cpu: user! + sys! };
}

/** SHA-1 bytes per second of the sender's CPU, from openssl (not from osfarm's own hashing). */
const hashing = opensslSha1(SOURCE_CPU);

// The receiver's "disk": a tmpfs (see above), removed at exit.
const rxMount = join(dir, 'receiver-tmpfs');
mkdirSync(rxMount, { recursive: true });
execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${6 * sizeMib + 64}m`, 'osfarm-bench-rx', rxMount]);
process.on('exit', () => execFileSync('umount', ['-l', rxMount]));

/** The seed's table for `rowDeltas`, the source reading from `disk`. */
async function table(ns: Netns, link: number, disk: Disk, rowDeltas: number[]): Promise<void> {
  const dds = [ddCold(disk), ddCold(disk), ddCold(disk)];
  const diskRead = size / median(dds.map((d) => d.wall));
  /** Bytes per CPU-second of reading from disk: a one-CPU source pays it on top of hashing. */
  const readCpu = size / median(dds.map((d) => d.cpu));
  console.log(
    `\n${disk.label}: disk read ${mbs(diskRead, 1).toFixed(0)} MB/s (cold; ${mbs(readCpu, 1).toFixed(0)} MB per CPU-second), ` +
      `SHA-1 ${mbs(hashing, 1).toFixed(0)} MB/s (openssl speed sha1 on the sender's CPU ${SOURCE_CPU}), ` +
      `link ${MBIT} Mbit/s tbf: ${mbs(link, 1).toFixed(2)} MB/s TCP payload (a plain TCP stream); load average ${load()}`,
  );
  const rows: (string | number)[][] = [];
  for (const delta of rowDeltas) {
    const old = join(dir, `old-${delta}.img`);
    const changed = olderVersion(newImage, old, delta);
    const repo = join(rxMount, `rx-${delta}`);
    cli(['--repo', repo, 'repo', 'init']);
    cli(['--repo', repo, 'repo', 'add', old, '--name', 'old']);
    const oldDigest = (cli(['--repo', repo, 'repo', 'show', 'old']) as { digest: string }).digest;
    const receiver = await startReceiver(ns, repo);
    try {
      // Short runs are repeated (delta 0: 15 times) and the median counts; the spread is
      // shown. On this VM one run in four or five takes 2-3x longer, CPU-bound: memory freed
      // by dropping the caches goes back to the host (virtio-balloon free page reporting)
      // and faults in again.
      const results: { r: PushResult; wire: number }[] = [];
      for (let i = 0; i < (delta === 0 ? 15 : delta <= 0.1 ? 3 : 1); i++) {
        // Each repetition starts from the old image alone (at delta 0 that is the image).
        if (i > 0 && results[0]!.r.digest !== oldDigest) cli(['--repo', repo, 'repo', 'rm', results[0]!.r.digest]);
        dropCaches();
        const before = ns.hostCounters();
        const r = cli(['push', newImage, `${ns.nsIp}:${PORT}`, '--token', TOKEN, '--insecure'], disk) as PushResult;
        const after = ns.hostCounters();
        results.push({ r, wire: after.tx - before.tx + (after.rx - before.rx) });
      }
      results.sort((a, b) => a.r.seconds - b.r.seconds);
      const { r, wire } = results[results.length >> 1]!;
      const spread = results.length > 1 ? ` (${results[0]!.r.seconds.toFixed(2)}-${results.at(-1)!.r.seconds.toFixed(2)})` : '';
      const theoretical = Math.min(diskRead, delta === 0 ? hashing : link / delta);
      // The seed's formula leaves out two costs, shown beside it and not used for its ratio:
      // the digests that cross the link whatever the delta (protocol 2: a group digest per
      // ~32 held blocks, block digests of the rest), and, on a one-CPU source, the CPU that
      // reading from disk takes from hashing (the stages then add up, not overlap).
      const oneCpu = 1 / (1 / hashing + 1 / readCpu);
      const counted = Math.min(diskRead, oneCpu, link / (delta + r.digestBytesSent / size));
      const observed = size / r.seconds;
      rows.push([
        delta,
        `${r.blocksSent} / ${changed}`,
        mbs(theoretical, 1).toFixed(1),
        mbs(counted, 1).toFixed(1),
        `${(r.digestBytesSent / 1e6).toFixed(2)} MB`,
        mbs(observed, 1).toFixed(1),
        mbs(wire, r.seconds).toFixed(2),
        `${((observed / theoretical) * 100).toFixed(1)} %`,
        `${((observed / counted) * 100).toFixed(1)} %`,
        `${r.seconds.toFixed(2)}${spread}`,
      ]);
    } finally {
      await stopChild(receiver);
      rmSync(repo, { recursive: true, force: true });
    }
  }
  printTable(
    `push over a ${MBIT} Mbit/s link (tc tbf on a veth pair into a network namespace), ${sizeMib} MiB image, ${disk.label}; MB = 10^6 bytes`,
    rows,
    [
      'delta',
      'blocks sent / changed',
      'theoretical max observed MB/s',
      'same, digests and reading CPU counted',
      'digest bytes',
      'measured observed MB/s',
      'measured real MB/s',
      'observed / theoretical',
      'observed / counted',
      'seconds, median (min-max)',
    ],
  );
  console.log('  real = IP bytes both ways on the host end of the pair (headers, digests, requests included) / wall time');
}

const ns = createNetns('osfbw', { mbit: MBIT });
try {
  const link = median([await linkGoodput(ns, 48 * MIB), await linkGoodput(ns, 48 * MIB)]);
  await table(ns, link, machineDisk, deltas);
  // The seed's disk (35.6 MB/s) was slower than its hashing, so its delta-0 row was bound
  // by the disk; this VM's virtual disk reads at GB/s from the host's cache. The same rows
  // again with the disk throttled like the link (only rows whose bound the disk sets).
  const throttledDeltas = deltas.filter((d) => diskMbps * 1e6 < link / d);
  if (diskMbps > 0 && throttledDeltas.length > 0) {
    const limit = limitDiskReads(newImage, diskMbps * 1e6);
    if (typeof limit === 'string') console.log(`\nno throttled-disk table: ${limit}`);
    else {
      try {
        const disk = { label: `the disk throttled to ${diskMbps} MB/s (${limit.device}, block cgroup)`, wrap: limit.wrap };
        await table(ns, link, disk, throttledDeltas);
      } finally {
        limit.remove();
      }
    }
  }
} finally {
  ns.remove();
}
