/**
 * Soak (issue 17): rounds of pushes and pulls between a source repository on the host
 * and a destination repository on a small ext4 (192 MiB on a loop device), reached through
 * a network namespace (`reliability-soak`, a 100 Mbit/s veth pair), with a fault at a
 * random moment of most rounds: kill -9 of the client or of the server (`osfarm receive`
 * for a push, `osfarm serve` for a pull), the link cut (`ip link down`) or lossy (10-40 %
 * of packets dropped by nft inside the namespace: this kernel has no netem), or the disk
 * filled by someone else. A failed transfer is retried without a fault (it resumes); one
 * that cannot fit makes room by removing the destination's oldest images. After every
 * round:
 *
 * - every image of the destination repository verifies (block by block);
 * - nothing leaked: no deleted-but-open file and no extra descriptor in the long-running
 *   receiver and server, no file left under either repository's tmp/, no image directory
 *   the catalog does not list, and no space held by deleted files (the file system's used
 *   space minus what its files take stays where it started).
 *
 *   node --import tsx benches/soak.ts [--rounds 200] [--seed 1]
 *
 * SIGINT or SIGTERM stops it after the running round, with the counts so far.
 *
 * Needs root (loop device, namespace, tc) and `npm run build` (it runs dist/cli/main.js).
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, lstatSync, readdirSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';

import { Repository } from '../src/repo/index.js';
import { makeLoopFs } from '../__test__/helpers/loopfs.js';
import { createNetns } from '../__test__/helpers/netns.js';
import { settledFiles } from '../__test__/helpers/push-client.js';
import { pseudoRandom } from '../__test__/helpers/tmp.js';
import { CLI, printTable, workDir } from './lib.js';

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '200' }, seed: { type: 'string', default: '1' } } });
const ROUNDS = Number(values.rounds);
const MiB = 1 << 20;
const BS = 4096;
const MBIT = 100;
const OP_TIMEOUT_MS = 120_000;

// A seeded generator (mulberry32): the same seed gives the same rounds.
let seed = Number(values.seed) >>> 0;
function rand(): number {
  seed = (seed + 0x6d2b79f5) >>> 0;
  let x = seed;
  x = Math.imul(x ^ (x >>> 15), x | 1);
  x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
  return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
}
const between = (a: number, b: number) => a + Math.floor(rand() * (b - a + 1));
function pick<T>(weighted: [T, number][]): T {
  let r = rand() * weighted.reduce((n, [, w]) => n + w, 0);
  for (const [v, w] of weighted) {
    r -= w;
    if (r < 0) return v;
  }
  return weighted[weighted.length - 1]![0];
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

type Fault = 'none' | 'kill-client' | 'kill-server' | 'link-down' | 'loss' | 'disk-full';

const counts = {
  rounds: 0,
  pushes: 0,
  pulls: 0,
  attempts: 0,
  kills: 0,
  killsClient: 0,
  killsServer: 0,
  cuts: 0,
  linkDown: 0,
  loss: 0,
  diskFull: 0,
  faultsMissed: 0,
  refusedNoRoom: 0,
  diskFullMidTransfer: 0,
  imagesRemovedForRoom: 0,
  removeFailures: 0,
  failedAttempts: 0,
  transfersDone: 0,
  transfersNeverDone: 0,
  imagesVerified: 0,
  verifyFailures: 0,
  leaks: 0,
  faultErrors: 0,
};
const leakLog: string[] = [];

// ----- the source images: shared pieces, unique pieces, holes -----

function makeImages(dir: string, src: string): Promise<string[]> {
  const shared = Array.from({ length: 6 }, (_, i) => pseudoRandom(4 * MiB, 9000 + i));
  return (async () => {
    const repo = Repository.open(src);
    const digests: string[] = [];
    for (let k = 0; k < 14; k++) {
      const parts: Buffer[] = [];
      const target = between(6, 36) * MiB;
      let size = 0;
      let n = 0;
      while (size < target) {
        const kind = pick<'shared' | 'unique' | 'zero'>([['shared', 3], ['unique', 3], ['zero', 1]]);
        const len = between(64, 1024) * BS;
        const piece =
          kind === 'shared' ? shared[between(0, shared.length - 1)]!.subarray(0, len) : kind === 'zero' ? Buffer.alloc(len) : pseudoRandom(len, k * 1000 + n);
        parts.push(piece);
        size += piece.length;
        n++;
      }
      parts.push(pseudoRandom(between(1, BS - 1), k)); // a short last block
      const file = join(dir, `soak-${k}.img`);
      writeFileSync(file, Buffer.concat(parts));
      digests.push((await repo.add(file, { name: `soak-${k}` })).digest);
      rmSync(file);
    }
    return digests;
  })();
}

// ----- long-running servers -----

interface Server {
  child: ChildProcess;
  pid: number;
  /** Descriptors after its first round, once settled; undefined until then. */
  baseline?: number;
}

async function startServer(cmd: string, args: string[]): Promise<Server> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const lines = createInterface({ input: child.stdout! });
  await new Promise<void>((resolve, reject) => {
    lines.on('line', (l) => {
      if (l.includes('"type":"listening"')) resolve();
      else if (l.includes('"error"')) stderr += l;
    });
    child.once('exit', (code) => reject(new Error(`${args.join(' ')} exited (${code}): ${stderr}`)));
  });
  return { child, pid: child.pid! };
}

// ----- one transfer, with or without a fault -----

interface Outcome {
  status: number | null;
  stderr: string;
  killed: boolean;
}

function run(cmd: string, args: string[], onStart?: (child: ChildProcess) => void): Promise<Outcome> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), OP_TIMEOUT_MS);
  onStart?.(child);
  return new Promise((resolve) =>
    child.once('close', (status, signal) => {
      clearTimeout(timer);
      resolve({ status, stderr: stderr.trim(), killed: signal === 'SIGKILL' });
    }),
  );
}

function freeBytes(path: string): number {
  const s = statfsSync(path);
  return s.bavail * s.bsize;
}

/** Space the file system uses that no file accounts for (journal, metadata; or deleted files held open). */
function unaccounted(mnt: string): number {
  const s = statfsSync(mnt);
  const used = (s.blocks - s.bfree) * s.bsize;
  let files = 0;
  const walk = (d: string) => {
    for (const e of readdirSync(d)) {
      const p = join(d, e);
      const st = lstatSync(p);
      files += st.blocks * 512;
      if (st.isDirectory()) walk(p);
    }
  };
  walk(mnt);
  return used - files;
}

function tmpFiles(repo: string): string[] {
  const d = join(repo, 'tmp');
  return existsSync(d) ? readdirSync(d) : [];
}

async function main(): Promise<void> {
  const work = workDir('soak');
  const src = join(work, 'src');
  rmSync(src, { recursive: true, force: true });
  Repository.init(src);
  console.log('making 14 source images (6-36 MiB, shared pieces and holes)...');
  const images = await makeImages(work, src);
  const fs = makeLoopFs('ext4', 192, tmpdir(), 'osfarm-reliability');
  const ns = createNetns('reliability-soak', { mbit: MBIT }, 217, 'relsoak');
  const servers: { receiver?: Server; serve?: Server } = {};
  const cleanup = () => {
    servers.receiver?.child.kill('SIGKILL');
    servers.serve?.child.kill('SIGKILL');
    ns.remove();
    fs.cleanup();
  };
  // The first SIGINT or SIGTERM ends the soak after the running round (its counts are
  // printed); a second one ends it at once.
  let stopping = false;
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => {
      if (stopping) {
        cleanup();
        process.exit(130);
      }
      stopping = true;
      console.log(`${sig}: stopping after this round (again to stop at once)`);
    });
  }
  process.on('uncaughtException', (err) => {
    console.error(err);
    cleanup();
    process.exit(1);
  });
  try {
    const dst = join(fs.mountpoint, 'repo');
    Repository.init(dst);
    const baseUnaccounted = unaccounted(fs.mountpoint);
    const receiverArgs = ['netns', 'exec', ns.name, process.execPath, CLI, '--json', '--repo', dst, 'receive', '--listen', `${ns.nsIp}:7070`, '--insecure'];
    const serveArgs = [CLI, '--json', '--repo', src, 'serve', '--listen', `${ns.hostIp}:8080`, '--token-file', join(work, 'web-token'), '--insecure'];
    const startReceiver = async () => (servers.receiver = await startServer('ip', receiverArgs));
    const startServe = async () => (servers.serve = await startServer(process.execPath, serveArgs));
    await startReceiver();
    await startServe();
    console.log(`destination: ${(freeBytes(fs.mountpoint) / MiB).toFixed(0)} MiB free on a 192 MiB ext4; link ${MBIT} Mbit/s through namespace ${ns.name}`);

    const linkUp = (): void => void execFileSync('ip', ['-n', ns.name, 'link', 'set', ns.nsDev, 'up']);
    // Packet loss: nft drops a share of the packets entering or leaving the namespace at
    // random (this kernel has no netem); only the namespace's own rules are touched.
    const lossy = (percent: number): void => {
      const rule = (hook: string) => `add chain inet reliability ${hook} { type filter hook ${hook} priority 0; }\nadd rule inet reliability ${hook} numgen random mod 100 < ${percent} drop\n`;
      execFileSync('ip', ['netns', 'exec', ns.name, 'nft', '-f', '-'], { input: `add table inet reliability\n${rule('input')}${rule('output')}` });
    };
    const lossless = (): void => {
      spawnSync('ip', ['netns', 'exec', ns.name, 'nft', 'delete', 'table', 'inet', 'reliability'], { stdio: 'ignore' });
    };

    for (let round = 1; round <= ROUNDS && !stopping; round++) {
      counts.rounds = round;
      const held = new Set(Repository.open(dst).list().map((e) => e.digest));
      const missing = images.filter((d) => !held.has(d));
      const digest = missing.length > 0 && rand() < 0.85 ? missing[between(0, missing.length - 1)]! : images[between(0, images.length - 1)]!;
      const op = rand() < 0.5 ? 'push' : 'pull';
      // Mostly make room first, so the fault meets a running transfer; sometimes not, so
      // the receiver's early refusal ("needs … free") is met too.
      if (rand() < 0.8) {
        const want = Repository.open(src).resolve(digest).size + 6 * MiB;
        const repo = Repository.open(dst);
        for (const e of repo.list().sort((a, b) => a.added.getTime() - b.added.getTime())) {
          if (freeBytes(fs.mountpoint) >= want || e.digest === digest) continue;
          await repo.remove(e.digest);
          counts.imagesRemovedForRoom++;
        }
      }
      counts[op === 'push' ? 'pushes' : 'pulls']++;
      const fault = pick<Fault>([['none', 3], ['kill-client', 2], ['kill-server', 2], ['link-down', 1.5], ['loss', 1], ['disk-full', 1]]);
      const at = between(150, 1200);
      const filler = join(fs.mountpoint, 'filler');
      let outcome: Outcome | undefined;
      let done = false;
      const notes: string[] = [];
      for (let attempt = 0; attempt < 6 && !done; attempt++) {
        counts.attempts++;
        const withFault = attempt === 0 ? fault : 'none';
        const restore: (() => void | Promise<void>)[] = [];
        let faultTimer: NodeJS.Timeout | undefined;
        let fired = false;
        const start = (child: ChildProcess) => {
          if (withFault === 'none') return;
          faultTimer = setTimeout(() => {
            if (child.exitCode !== null || child.signalCode !== null) return;
            fired = true;
            try {
              applyFault(child);
            } catch (err) {
              notes.push(`the fault ${withFault} could not be applied: ${(err as Error).message}`);
              counts.faultErrors++;
            }
          }, at);
        };
        const applyFault = (child: ChildProcess): void => {
          switch (withFault) {
            case 'kill-client':
              counts.kills++;
              counts.killsClient++;
              child.kill('SIGKILL');
              break;
            case 'kill-server': {
              counts.kills++;
              counts.killsServer++;
              const s = op === 'push' ? servers.receiver! : servers.serve!;
              const gone = new Promise((r) => s.child.once('exit', r));
              s.child.kill('SIGKILL');
              // Back at once, as a supervisor would restart it (once the port is free): the
              // client's retries may find it.
              const back = gone.then(() => (op === 'push' ? startReceiver() : startServe()));
              restore.push(async () => void (await back));
              break;
            }
            case 'link-down':
              counts.cuts++;
              counts.linkDown++;
              // The namespace's end: the host's end only loses its carrier, so its route
              // stays (linkdown) and nothing is sent anywhere else meanwhile.
              execFileSync('ip', ['-n', ns.name, 'link', 'set', ns.nsDev, 'down']);
              setTimeout(linkUp, between(300, 2500));
              restore.push(linkUp);
              break;
            case 'loss':
              counts.cuts++;
              counts.loss++;
              lossy(between(10, 40));
              setTimeout(lossless, between(500, 3000));
              restore.push(lossless);
              break;
            case 'disk-full':
              counts.diskFull++;
              // All but 1 MiB of what is free now (less if the transfer takes space meanwhile).
              for (const spare of [1, 4, 16].map((m) => m * MiB)) {
                const r = spawnSync('fallocate', ['-l', String(Math.max(4096, freeBytes(fs.mountpoint) - spare)), filler], { stdio: 'ignore' });
                if (r.status === 0) break;
              }
              restore.push(() => rmSync(filler, { force: true }));
              break;
          }
        };
        outcome =
          op === 'push'
            ? await run(process.execPath, [CLI, '--repo', src, 'push', digest, `${ns.nsIp}:7070`, '--insecure'], start)
            : await run('ip', ['netns', 'exec', ns.name, process.execPath, CLI, '--repo', dst, 'pull', `http://${ns.hostIp}:8080/images/${digest}`, '--retries', '2'], start);
        if (withFault !== 'none' && !fired) counts.faultsMissed++;
        clearTimeout(faultTimer); // the transfer ended before its fault: none this time
        for (const r of restore) await r();
        if (outcome.status === 0) {
          done = true;
          break;
        }
        counts.failedAttempts++;
        const why = outcome.killed ? 'killed' : (outcome.stderr.split('\n').pop() ?? '').slice(0, 160);
        notes.push(`${withFault}: ${why}`);
        if (/the file system is full/.test(outcome.stderr)) counts.diskFullMidTransfer++;
        if (withFault !== 'disk-full' && /needs [\d.]+ MiB of space/.test(outcome.stderr)) {
          counts.refusedNoRoom++;
          const repo = Repository.open(dst);
          const oldest = repo.list().sort((a, b) => a.added.getTime() - b.added.getTime());
          for (const e of oldest.slice(0, 2)) {
            try {
              await repo.remove(e.digest);
              counts.imagesRemovedForRoom++;
            } catch (err) {
              notes.push(`cannot make room: ${(err as Error).message}`);
              counts.removeFailures++;
            }
          }
        }
        await sleep(200);
      }
      if (done) counts.transfersDone++;
      else counts.transfersNeverDone++;

      // ----- checks -----
      const problems: string[] = [];
      for (const [name, s] of [['receiver', servers.receiver!], ['serve', servers.serve!]] as const) {
        const now = await settledFiles(s.pid, s.baseline);
        if (now.deleted.length > 0) problems.push(`${name} holds deleted files open: ${now.deleted.join(', ')}`);
        if (s.baseline === undefined) s.baseline = now.count;
        else if (now.count > s.baseline) problems.push(`${name} holds ${now.count} descriptors (${s.baseline} after its first round)`);
      }
      if (done) {
        for (const [name, repo] of [['destination', dst], ['source', src]] as const) {
          const left = tmpFiles(repo);
          if (left.length > 0) problems.push(`${name} tmp/ holds ${left.join(', ')}`);
        }
      }
      const repo = Repository.open(dst);
      const listed = repo.list().map((e) => e.digest);
      const dirs = existsSync(join(dst, 'images')) ? readdirSync(join(dst, 'images')) : [];
      const stray = dirs.filter((d) => !listed.includes(d));
      if (stray.length > 0) problems.push(`image directories not in the catalog: ${stray.join(', ')}`);
      const hidden = unaccounted(fs.mountpoint) - baseUnaccounted;
      if (hidden > 2 * MiB) problems.push(`${(hidden / MiB).toFixed(1)} MiB used by no file (deleted but held open?)`);
      for (const d of listed) {
        try {
          await repo.verify(d);
          counts.imagesVerified++;
        } catch (err) {
          counts.verifyFailures++;
          problems.push(`image ${d} does not verify: ${(err as Error).message}`);
        }
      }
      if (done && !listed.includes(digest)) problems.push(`the ${op} of ${digest} succeeded but the image is not listed`);
      counts.leaks += problems.length;
      for (const p of problems) leakLog.push(`round ${round}: ${p}`);
      console.log(
        `round ${String(round).padStart(3)}: ${op} ${digest.slice(0, 10)} fault ${fault.padEnd(11)} ${done ? 'done' : 'NEVER DONE'}` +
          `${notes.length ? ` after ${notes.length} failed (${notes.join(' | ')})` : ''}; ${listed.length} images verified` +
          `${problems.length ? `; LEAKS: ${problems.join('; ')}` : ''}`,
      );
    }
  } finally {
    cleanup();
  }
  printTable(
    `soak: ${counts.rounds} rounds (seed ${values.seed})`,
    Object.entries(counts).map(([k, v]) => [k, v]),
    ['count', 'value'],
  );
  for (const l of leakLog) console.log(`  ${l}`);
  console.log(JSON.stringify({ soak: counts }));
  if (counts.leaks > 0 || counts.faultErrors > 0 || counts.verifyFailures > 0 || counts.transfersNeverDone > 0 || counts.removeFailures > 0) process.exitCode = 1;
}

await main();
