/**
 * NBD serving cost: osfarm's NBD server (Rust, in the node process, every 4 KiB block
 * SHA-1-verified against the image's index on every read) against qemu-nbd and nbdkit
 * (file plugin: C, no verification; python plugin: the same verification in a plugin;
 * sh plugin: a script per request), all over a unix socket, read by qemu's own NBD client
 * with `qemu-img bench` on the same image in the page cache. Latency is measured at
 * queue depth 1 (4 KiB, 64 KiB, 128 KiB reads), throughput with 16 reads of 1 MiB in
 * flight. This is the measurement behind the choice in docs/lazy-boot.md.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { native, type NbdServer } from '../src/base/native.js';
import { Repository } from '../src/repo/index.js';
import { median, printTable, stopChild, workDir } from './lib.js';

const sizeMiB = Number(process.env.OSFARM_BENCH_SIZE_MIB ?? 256);
const rounds = Number(process.env.OSFARM_BENCH_ROUNDS ?? 3);
const dir = workDir('nbd-serve');
const image = join(dir, `random-${sizeMiB}M.img`);
if (!existsSync(image) || statSync(image).size !== sizeMiB << 20) {
  execFileSync('sh', ['-c', `head -c ${sizeMiB}M /dev/urandom > ${image}`]);
}
const repoPath = join(dir, 'repo');
rmSync(repoPath, { recursive: true, force: true });
const entry = Repository.init(repoPath).addSync(image, { name: 'bench' });

// A python plugin that does what osfarm does on a present block: read it, hash it, compare
// with the index (.osfi: 64-byte header, then 20-byte SHA-1 digests; zeros for zero blocks).
const pyPlugin = join(dir, 'verify.py');
writeFileSync(
  pyPlugin,
  `import builtins, hashlib, os
import nbdkit
API_VERSION = 2
BS = 4096
ZERO = bytes(20)
def config(key, value):
    global path, index
    if key == 'file': path = value
    elif key == 'index':
        with builtins.open(value, 'rb') as f: index = f.read()[64:]
def thread_model(): return nbdkit.THREAD_MODEL_PARALLEL
def open(readonly): return os.open(path, os.O_RDONLY)
def get_size(h): return os.fstat(h).st_size
def can_write(h): return False
def close(h): os.close(h)
def pread(h, buf, offset, flags):
    data = os.pread(h, len(buf), offset)
    for k in range(0, len(data), BS):
        i = (offset + k) // BS
        block = data[k:k + BS]
        want = index[i * 20:(i + 1) * 20]
        ok = not any(block) if want == ZERO else hashlib.sha1(block).digest() == want
        if not ok: raise RuntimeError('block %d does not match its digest' % i)
    buf[:] = data
`,
);
// A shell plugin: one fork of sh and dd per request.
const shPlugin = join(dir, 'serve.sh');
writeFileSync(
  shPlugin,
  `#!/bin/sh
case "$1" in
  thread_model) echo parallel ;;
  get_size) stat -c %s "$IMAGE" ;;
  can_write) exit 3 ;;
  pread) exec dd if="$IMAGE" iflag=skip_bytes,count_bytes skip="$4" count="$3" bs=1M status=none ;;
  *) exit 2 ;;
esac
`,
  { mode: 0o755 },
);

/** A running server: its CPU seconds so far (user + system, reaped children included), and how to stop it. */
interface Running {
  cpu(): number;
  stop(): Promise<void>;
}

interface Peer {
  name: string;
  start(socket: string): Promise<Running>;
  /** Fewer operations for servers too slow for the full count. */
  scale?: number;
}

/** Starts a server process and waits for its socket to appear. */
async function startProcess(cmd: string, args: string[], socket: string, env: NodeJS.ProcessEnv = {}): Promise<Running> {
  const child: ChildProcess = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, ...env } });
  for (let i = 0; i < 200 && !existsSync(socket); i++) await new Promise((r) => setTimeout(r, 25));
  if (!existsSync(socket)) throw new Error(`${cmd} did not create ${socket}`);
  const ticks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }));
  return {
    cpu() {
      // /proc/PID/stat fields 14-17: utime, stime, cutime, cstime (after the parenthesised name).
      const f = readFileSync(`/proc/${child.pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
      return f.slice(11, 15).reduce((s, x) => s + Number(x), 0) / ticks;
    },
    stop: () => stopChild(child),
  };
}

const peers: Peer[] = [
  {
    name: 'osfarm (Rust, in-process, verifies)',
    async start(socket) {
      const server: NbdServer = await native.NbdServer.start(native.RepositoryHandle.open(repoPath), entry.indexPath, { socket, exportName: '' });
      // In this process: its CPU time (the JS thread is idle meanwhile).
      return { cpu: () => (process.cpuUsage().user + process.cpuUsage().system) / 1e6, stop: async () => server.stop() };
    },
  },
  { name: 'qemu-nbd (C, no verification)', start: (s) => startProcess('qemu-nbd', ['-r', '-f', 'raw', '-k', s, '-x', '', '-t', entry.path], s) },
  { name: 'nbdkit file plugin (C, no verification)', start: (s) => startProcess('nbdkit', ['-f', '-r', '-U', s, 'file', entry.path], s) },
  {
    name: 'nbdkit python plugin (verifies)',
    start: (s) => startProcess('nbdkit', ['-f', '-r', '-U', s, 'python', pyPlugin, `file=${entry.path}`, `index=${entry.indexPath}`], s),
  },
  { name: 'nbdkit sh plugin (fork per request)', start: (s) => startProcess('nbdkit', ['-f', '-r', '-U', s, 'sh', shPlugin], s, { IMAGE: entry.path }), scale: 1 / 16 },
];

interface Load {
  label: string;
  size: number;
  depth: number;
  count: number;
}
const loads: Load[] = [
  { label: '4 KiB reads, depth 1', size: 4 << 10, depth: 1, count: 16384 },
  { label: '64 KiB reads, depth 1', size: 64 << 10, depth: 1, count: 2048 },
  { label: '128 KiB reads, depth 1', size: 128 << 10, depth: 1, count: 2048 },
  { label: '1 MiB reads, depth 16', size: 1 << 20, depth: 16, count: sizeMiB },
];

/** `qemu-img bench` over the export; the seconds it reports (connection set-up excluded). */
function bench(socket: string, l: Load, count: number): number {
  const out = execFileSync('qemu-img', ['bench', '-f', 'raw', '-c', String(count), '-d', String(l.depth), '-s', String(l.size), `nbd+unix:///?socket=${socket}`], { encoding: 'utf8' });
  const m = /Run completed in ([\d.]+) seconds/.exec(out);
  if (!m) throw new Error(`qemu-img bench said: ${out}`);
  return Number(m[1]);
}

execFileSync('cat', [entry.path], { stdio: ['ignore', 'ignore', 'inherit'] }); // warm the cache
const times = new Map<string, number[]>();
const cpus = new Map<string, number[]>();
for (let round = 0; round < rounds; round++) {
  for (const p of peers) {
    const socket = join(dir, 'nbd.sock');
    rmSync(socket, { force: true });
    const server = await p.start(socket);
    try {
      for (const l of loads) {
        const count = Math.max(16, Math.floor(l.count * (p.scale ?? 1)));
        const key = `${p.name}|${l.label}`;
        const cpu0 = server.cpu();
        times.set(key, [...(times.get(key) ?? []), bench(socket, l, count) / count]);
        cpus.set(key, [...(cpus.get(key) ?? []), (server.cpu() - cpu0) / count]);
      }
    } finally {
      await server.stop();
    }
  }
}

const result: Record<string, Record<string, { usPerOp: number; mibPerS: number; cpuUsPerOp: number }>> = {};
for (const l of loads) {
  const rows = peers.map((p) => {
    const perOp = median(times.get(`${p.name}|${l.label}`)!);
    const cpu = median(cpus.get(`${p.name}|${l.label}`)!);
    const mibPerS = l.size / (1 << 20) / perOp;
    result[p.name] ??= {};
    result[p.name][l.label] = { usPerOp: perOp * 1e6, mibPerS, cpuUsPerOp: cpu * 1e6 };
    return [p.name, (perOp * 1e6).toFixed(1), mibPerS.toFixed(0), (cpu * 1e6).toFixed(1)];
  });
  printTable(`${l.label} (${sizeMiB} MiB image in the page cache, median of ${rounds})`, rows, ['server', 'µs per read', 'MiB/s', 'server CPU µs per read']);
}
console.log(JSON.stringify({ bench: 'nbd-serve', sizeMiB, rounds, load: execFileSync('cat', ['/proc/loadavg'], { encoding: 'utf8' }).trim(), result }));
