/**
 * Bytes on the wire and wall time of osfarm push against rsync, casync and zsync, moving
 * real Debian trees over the same 100 Mbit/s link (tc tbf on a veth pair into a network
 * namespace; the receiving side runs in the namespace). Every tool moves the same files:
 * the trees built by mmdebstrap, packed by `osfarm pack` (block-aligned tar). For each
 * pair the receiver already holds the older image and gets the newer:
 *
 * - osfarm: `osfarm receive` in the namespace, its repository holding the old image;
 *   `osfarm push new` from the host.
 * - rsync: `rsync --daemon` in the namespace with the old image as the destination file
 *   (the basis); `rsync -z new rsync://…` from the host (delta transfer, zstd).
 * - casync: `casync make` of the new image into a store (default chunking and
 *   compression), served by nginx on the host; `casync extract --seed=old` in the
 *   namespace fetches the index and the chunks the seed lacks.
 * - zsync: `zsyncmake` over the new image, both served by nginx; `zsync -i old` in the
 *   namespace fetches the byte ranges it lacks.
 *
 * Bytes are counted on the host's end of the pair (IP packets both ways, headers
 * included), so every protocol's overhead counts. Times are the transferring command's
 * wall time (casync make and zsyncmake, done once by a publisher, are not counted).
 * Goal (issue 3): osfarm sends fewer bytes than each peer on every pair, and at most
 * 1/10 of casync's when the receiver holds the larger tree. Trees are cached under
 * the bench work directory; set OSFARM_MIRROR to build from another mirror. Needs root.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

import { lastOutcome } from '../__test__/helpers/tmp.js';
import { CLI, printTable, stopChild, workDir } from './lib.js';
import { createNetns, type Netns } from '../__test__/helpers/netns.js';

const MBIT = 100;
const TOKEN = 'transfer-peers-bench';
const OSFARM_PORT = 7070;
const RSYNC_PORT = 8730;
const HTTP_PORT = 8080;
const dir = workDir('transfer-peers');
const mirror = process.env.OSFARM_MIRROR ? [process.env.OSFARM_MIRROR] : [];

/** A tree built by mmdebstrap and packed block-aligned; undefined if the suite cannot be had. */
function tree(name: string, suite: string, include: string[]): string | undefined {
  const tar = join(dir, `${name}.tar`);
  const aligned = join(dir, `${name}.aligned.tar`);
  if (existsSync(aligned)) return aligned;
  if (!existsSync(tar)) {
    const args = ['--quiet', '--format=tar', '--variant=minbase', ...include.map((p) => `--include=${p}`), suite, `${tar}.part`, ...mirror];
    try {
      execFileSync('mmdebstrap', args, { stdio: 'inherit', env: { ...process.env, SOURCE_DATE_EPOCH: '1700000000' } });
    } catch {
      rmSync(`${tar}.part`, { force: true });
      return undefined;
    }
    renameSync(`${tar}.part`, tar);
  }
  execFileSync(process.execPath, [CLI, 'pack', tar, '-o', `${aligned}.part`, '--source-date-epoch', '1700000000'], { stdio: 'inherit' });
  renameSync(`${aligned}.part`, aligned);
  return aligned;
}

function sha256(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/** Wire bytes (both ways) and seconds of `fn`. */
async function measure(ns: Netns, fn: () => unknown): Promise<{ bytes: number; seconds: number }> {
  const before = ns.hostCounters();
  const t0 = process.hrtime.bigint();
  await fn();
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const after = ns.hostCounters();
  return { bytes: after.tx - before.tx + after.rx - before.rx, seconds };
}

async function waitFor(child: ChildProcess, what: string, ready: (line: string) => boolean): Promise<void> {
  for await (const line of createInterface({ input: child.stdout! })) if (ready(line)) return;
  throw new Error(`${what} exited before it was ready`);
}

/** Waits until something listens on host:port (for daemons that print nothing). */
async function waitForPort(ns: Netns | undefined, host: string, port: number): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const out = ns ? ns.exec('ss', ['-ltnH']) : execFileSync('ss', ['-ltnH'], { encoding: 'utf8' });
    if (out.includes(`${host}:${port}`)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`nothing listens on ${host}:${port}`);
}

interface Pair {
  label: string;
  old: string;
  next: string;
}

async function osfarm(ns: Netns, p: Pair, work: string) {
  const repo = join(work, 'osfarm-repo');
  execFileSync(process.execPath, [CLI, '--repo', repo, 'repo', 'init']);
  execFileSync(process.execPath, [CLI, '--repo', repo, 'repo', 'add', p.old]);
  const rx = ns.spawn(process.execPath, [CLI, '--json', '--repo', repo, 'receive', '--listen', `${ns.nsIp}:${OSFARM_PORT}`, '--token', TOKEN, '--insecure'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  try {
    await waitFor(rx, 'osfarm receive', (l) => l.includes('"listening"'));
    let digest = '';
    let digestBytes = 0;
    const m = await measure(ns, () => {
      const out = execFileSync(process.execPath, [CLI, '--json', 'push', p.next, `${ns.nsIp}:${OSFARM_PORT}`, '--token', TOKEN, '--insecure'], { encoding: 'utf8' });
      const res = lastOutcome<{ digest: string; digestBytesSent: number }>(out);
      digest = res.digest;
      digestBytes = res.digestBytesSent;
    });
    const path = lastOutcome<{ path: string }>(execFileSync(process.execPath, [CLI, '--json', '--repo', repo, 'repo', 'show', digest], { encoding: 'utf8' })).path;
    return { ...m, path, digestBytes };
  } finally {
    await stopChild(rx);
  }
}

async function rsync(ns: Netns, p: Pair, work: string) {
  const dest = join(work, 'rsync');
  mkdirSync(dest);
  copyFileSync(p.old, join(dest, 'image.tar'));
  const conf = join(work, 'rsyncd.conf');
  writeFileSync(conf, `use chroot = no\nuid = root\ngid = root\npid file = ${join(work, 'rsyncd.pid')}\n[images]\npath = ${dest}\nread only = no\n`);
  const d = ns.spawn('rsync', ['--daemon', '--no-detach', `--config=${conf}`, `--address=${ns.nsIp}`, `--port=${RSYNC_PORT}`], { stdio: 'ignore' });
  try {
    await waitForPort(ns, ns.nsIp, RSYNC_PORT);
    const m = await measure(ns, () =>
      execFileSync('rsync', ['-z', '--compress-choice=zstd', '--no-whole-file', p.next, `rsync://${ns.nsIp}:${RSYNC_PORT}/images/image.tar`]),
    );
    return { ...m, path: join(dest, 'image.tar') };
  } finally {
    await stopChild(d);
  }
}

/** nginx on the host's end of the pair, serving `root` (byte ranges included). */
async function nginx(ns: Netns, root: string, work: string): Promise<ChildProcess> {
  const conf = join(work, 'nginx.conf');
  writeFileSync(
    conf,
    `daemon off; user root; worker_processes 1; pid ${join(work, 'nginx.pid')}; error_log ${join(work, 'nginx-error.log')};
events {}
http { access_log off; sendfile on; types { } default_type application/octet-stream;
  client_body_temp_path ${work}; proxy_temp_path ${work}; fastcgi_temp_path ${work}; uwsgi_temp_path ${work}; scgi_temp_path ${work};
  server { listen ${ns.hostIp}:${HTTP_PORT}; root ${root}; } }
`,
  );
  const n = spawn('nginx', ['-c', conf, '-e', join(work, 'nginx-error.log')], { stdio: 'ignore' });
  await waitForPort(undefined, ns.hostIp, HTTP_PORT);
  return n;
}

async function casync(ns: Netns, p: Pair, work: string) {
  const pub = join(work, 'casync-pub');
  mkdirSync(pub);
  execFileSync('casync', ['make', `--store=${join(pub, 'store.castr')}`, join(pub, 'image.caibx'), p.next], { stdio: 'ignore' });
  const server = await nginx(ns, pub, work);
  const out = join(work, 'casync-out.tar');
  try {
    const base = `http://${ns.hostIp}:${HTTP_PORT}`;
    const m = await measure(ns, () => ns.exec('casync', ['extract', `--store=${base}/store.castr`, `--seed=${p.old}`, `${base}/image.caibx`, out]));
    return { ...m, path: out };
  } finally {
    await stopChild(server);
  }
}

async function zsync(ns: Netns, p: Pair, work: string) {
  const pub = join(work, 'zsync-pub');
  mkdirSync(pub);
  copyFileSync(p.next, join(pub, 'image.tar'));
  execFileSync('zsyncmake', ['-u', 'image.tar', '-o', join(pub, 'image.tar.zsync'), join(pub, 'image.tar')], { stdio: 'ignore' });
  const server = await nginx(ns, pub, work);
  const out = join(work, 'zsync-out.tar');
  try {
    const m = await measure(ns, () =>
      ns.exec('sh', ['-c', `cd ${work} && zsync -q -i ${p.old} -o ${out} http://${ns.hostIp}:${HTTP_PORT}/image.tar.zsync`]),
    );
    return { ...m, path: out };
  } finally {
    await stopChild(server);
  }
}

const small = tree('bookworm-minbase', 'bookworm', []);
const large = tree('bookworm-minbase-python3', 'bookworm', ['python3']);
const trixie = tree('trixie-minbase', 'trixie', []);
if (!small || !large) throw new Error('cannot build the bookworm trees with mmdebstrap (is the apt mirror reachable?)');
const pairs: Pair[] = [
  { label: 'bookworm minbase -> +python3', old: small, next: large },
  { label: 'bookworm +python3 -> minbase', old: large, next: small },
];
if (trixie) {
  pairs.push({ label: 'bookworm -> trixie minbase', old: small, next: trixie });
  pairs.push({ label: 'trixie -> bookworm minbase', old: trixie, next: small });
} else {
  console.log('trixie could not be built from the configured mirror: the release pair is left out');
}

const tools = { osfarm, rsync, casync, zsync } as const;
type Tool = keyof typeof tools;
const MB = (b: number) => (b / 1e6).toFixed(2);
const rows: (string | number)[][] = [];
const results: Record<string, unknown>[] = [];
const ns = createNetns('osfbp', { mbit: MBIT });
try {
  for (const p of pairs) {
    const want = sha256(p.next);
    const got = {} as Record<Tool, { bytes: number; seconds: number; digestBytes?: number }>;
    for (const name of Object.keys(tools) as Tool[]) {
      const work = join(dir, 'run', name);
      rmSync(work, { recursive: true, force: true });
      mkdirSync(work, { recursive: true });
      const r = await tools[name](ns, p, work);
      if (sha256(r.path) !== want) throw new Error(`${name} did not reproduce ${p.next} exactly`);
      got[name] = r;
      rmSync(work, { recursive: true, force: true });
    }
    const o = got.osfarm.bytes;
    rows.push([
      p.label,
      ...(Object.keys(tools) as Tool[]).map((t) => `${MB(got[t].bytes)} MB ${got[t].seconds.toFixed(1)} s`),
      `${MB(got.osfarm.digestBytes ?? 0)} MB`,
      ...(['rsync', 'casync', 'zsync'] as const).map((t) => `${(got[t].bytes / o).toFixed(2)}x`),
    ]);
    results.push({ pair: p.label, ...got });
  }
} finally {
  ns.remove();
}
printTable(
  `Bytes on the wire (IP, both ways) and wall time over a ${MBIT} Mbit/s link; the receiver holds the older image (MB = 10^6 bytes)`,
  rows,
  ['pair (held -> sent)', 'osfarm push', 'rsync -z', 'casync', 'zsync', 'osfarm digests', 'rsync/osfarm', 'casync/osfarm', 'zsync/osfarm'],
);
console.log(JSON.stringify({ bench: 'transfer-peers', results }));
