/**
 * The cost of TLS on push (docs/trust.md): `osfarm push` of an image of OSFARM_BENCH_SIZE_MIB
 * (default 1024) to `osfarm receive` on loopback, plain TCP (--insecure) against TLS (the
 * receiver's certificate pinned), at delta 1 (the receiver has nothing) and delta 0.1 (it
 * has an image that differs in 10 % of its MiB). The bounds come from outside osfarm: the
 * same bytes through a plain TCP stream (node:net, file → socket → discarded) and over TLS
 * from openssl s_server -WWW to openssl s_client. Random data, so zstd cannot shrink it. Push times are the
 * push's own (connect to DONE, without the CLI's start-up), the bounds' are wall times;
 * median of OSFARM_BENCH_ROUNDS (default 3) runs; receiver and sender are separate processes.
 *
 * OSFARM_BENCH_DELTAS (default "1,0.1") picks the rows, e.g. "0.1" for more rounds of the
 * cheap one; each push row gives the spread of its runs (min–max) beside the median.
 *
 * With OSFARM_BENCH_LINK_MBIT (e.g. 100) the receiver runs in a network namespace behind a
 * veth pair throttled by tc to that rate each way (the transfer-bandwidth link), and the
 * pushes cross it; the stream bounds are loopback-only and are left out then.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createReadStream, existsSync, rmSync, statSync } from 'node:fs';
import { createServer, connect, type AddressInfo } from 'node:net';
import { basename, join } from 'node:path';
import { createInterface } from 'node:readline';

import { createNetns, type Netns } from '../__test__/helpers/netns.js';
import { outcome } from '../__test__/helpers/tmp.js';
import { CLI, median, printTable, stopChild, time, workDir } from './lib.js';

const sizeMiB = Number(process.env.OSFARM_BENCH_SIZE_MIB ?? 1024);
const rounds = Number(process.env.OSFARM_BENCH_ROUNDS ?? 3);
const linkMbit = Number(process.env.OSFARM_BENCH_LINK_MBIT ?? 0);
const deltas = (process.env.OSFARM_BENCH_DELTAS ?? '1,0.1').split(',');
if (deltas.some((d) => d !== '1' && d !== '0.1')) throw new Error(`OSFARM_BENCH_DELTAS=${deltas.join(',')}: the rows are 1 and 0.1`);
/** The throttled link's namespace, when asked for one: the receiver runs there. */
const link: Netns | undefined = linkMbit > 0 ? createNetns(`osfptls-${process.pid}`, { mbit: linkMbit }, 7, 'osfptls') : undefined;
const TOKEN = 'push-tls-bench-token';
const dir = workDir('push-tls');

function sh(cmd: string): void {
  execFileSync('sh', ['-c', cmd], { stdio: 'ignore' });
}

// The images: `base` random, `next` = base with every tenth MiB replaced.
const base = join(dir, `base-${sizeMiB}M.img`);
const next = join(dir, `next-${sizeMiB}M.img`);
if (!existsSync(base) || statSync(base).size !== sizeMiB << 20) sh(`head -c ${sizeMiB}M /dev/urandom > ${base}`);
if (!existsSync(next) || statSync(next).size !== sizeMiB << 20) {
  sh(`cp ${base} ${next}`);
  for (let m = 5; m < sizeMiB; m += 10) sh(`head -c 1M /dev/urandom | dd of=${next} bs=1M seek=${m} conv=notrunc status=none`);
}
const cert = join(dir, 'cert.pem');
const key = join(dir, 'key.pem');
if (!existsSync(cert)) {
  sh(`openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ${key} -out ${cert} -days 30 -subj /CN=bench -addext subjectAltName=IP:127.0.0.1`);
}
const fingerprint = execFileSync('openssl', ['x509', '-in', cert, '-noout', '-fingerprint', '-sha256'], { encoding: 'utf8' }).trim().split('=')[1]!;

/** An `osfarm receive` child on a free loopback port into `repo`. */
async function receiver(repo: string, tls: boolean): Promise<{ child: ChildProcess; address: string }> {
  const host = link ? link.nsIp : '127.0.0.1';
  const args = [CLI, '--json', '--repo', repo, 'receive', '--listen', `${host}:0`, '--token', TOKEN, ...(tls ? ['--tls-cert', cert, '--tls-key', key] : ['--insecure'])];
  const options = { stdio: ['ignore', 'pipe', 'inherit'] as ('ignore' | 'pipe' | 'inherit')[] };
  const child = link ? link.spawn(process.execPath, args, options) : spawn(process.execPath, args, options);
  for await (const line of createInterface({ input: child.stdout! })) {
    const e = JSON.parse(line) as { type?: string; port?: number };
    if (e.type === 'listening') return { child, address: `${host}:${e.port!}` };
  }
  throw new Error('receive did not start');
}

/** Seconds of one push of `image` to a fresh receiver that holds `have` (or nothing). */
async function pushOnce(image: string, have: string | undefined, tls: boolean): Promise<number> {
  const repo = join(dir, 'rx');
  rmSync(repo, { recursive: true, force: true });
  execFileSync(process.execPath, [CLI, 'repo', 'init', '--repo', repo], { stdio: 'ignore' });
  if (have) execFileSync(process.execPath, [CLI, 'repo', 'add', have, '--repo', repo], { stdio: 'ignore' });
  const rx = await receiver(repo, tls);
  try {
    const args = [CLI, '--json', 'push', image, rx.address, '--token', TOKEN, ...(tls ? ['--tls-fingerprint', fingerprint] : ['--insecure'])];
    // The push's own clock, connect to DONE: not the CLI's start-up.
    const out = execFileSync(process.execPath, args, { encoding: 'utf8' }).trim().split('\n');
    return (outcome(out[out.length - 1]) as { seconds: number }).seconds;
  } finally {
    await stopChild(rx.child);
  }
}

/** The plain-TCP bound: the file through a node:net socket to a sink that discards it. */
async function plainStream(image: string): Promise<number> {
  const server = createServer((s) => s.resume());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as AddressInfo).port;
  try {
    return await time(
      () =>
        new Promise<void>((resolve, reject) => {
          const sock = connect(port, '127.0.0.1', () => createReadStream(image, { highWaterMark: 1 << 20 }).pipe(sock));
          sock.on('error', reject);
          sock.on('close', () => resolve());
        }),
    );
  } finally {
    server.close();
  }
}

/**
 * The TLS bound: openssl s_server -WWW sends the file over TLS to openssl s_client (an
 * HTTP/1.0 GET), which discards it; the byte count is checked.
 */
async function opensslStream(image: string): Promise<number> {
  const port = 20000 + Math.floor(Math.random() * 20000);
  const server = spawn('openssl', ['s_server', '-accept', `127.0.0.1:${port}`, '-cert', cert, '-key', key, '-naccept', '1', '-quiet', '-WWW'], { cwd: dir, stdio: 'ignore' });
  await new Promise((r) => setTimeout(r, 500));
  try {
    return await time(() => {
      const got = execFileSync('sh', ['-c', `printf 'GET /${basename(image)} HTTP/1.0\\r\\n\\r\\n' | openssl s_client -connect 127.0.0.1:${port} -quiet -ign_eof 2>/dev/null | wc -c`], { encoding: 'utf8' });
      if (Number(got) < statSync(image).size) throw new Error(`openssl s_client got ${got.trim()} bytes of ${statSync(image).size}`);
    });
  } finally {
    await stopChild(server);
  }
}

/** Medians of `rounds` runs of `a` and `b`, interleaved so that the machine's load falls on both alike; with the runs. */
async function medians(a: () => Promise<number>, b: () => Promise<number>): Promise<[number, number, number[], number[]]> {
  const xs: number[] = [];
  const ys: number[] = [];
  for (let i = 0; i < rounds; i++) {
    xs.push(await a());
    ys.push(await b());
  }
  return [median(xs), median(ys), xs, ys];
}
const spread = (xs: number[]) => `${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)}`;

/**
 * The cipher's own speed (openssl speed, 16 KiB records, AES-256-GCM: what TLS 1.3 between
 * two node processes negotiates): the CPU a TLS stream needs per byte, whatever the link.
 */
function cipherMBps(): number {
  const out = execFileSync('openssl', ['speed', '-elapsed', '-seconds', '2', '-evp', 'aes-256-gcm'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  const row = out.split('\n').find((l) => l.startsWith('AES-256-GCM'));
  if (!row) throw new Error(`openssl speed printed no AES-256-GCM row:\n${out}`);
  return Number.parseFloat(row.trim().split(/\s+/).pop()!) / 1000;
}

const MB = sizeMiB * 1.048576;
const cipher = cipherMBps();
// 100 Mbit/s = 12.5 MB/s: the share of one core that encrypting (and as much decrypting) takes at that rate.
console.log(`openssl speed aes-256-gcm (16 KiB): ${cipher.toFixed(0)} MB/s; at 100 Mbit/s TLS costs about ${((12.5 / cipher) * 100).toFixed(1)} % of a core on each side`);
const rows: (string | number)[][] = [];
try {
  if (!link) {
    const [plainBound, tlsBound] = await medians(() => plainStream(base), () => opensslStream(base));
    rows.push(['bound: plain TCP stream (node:net)', '1', plainBound.toFixed(2), '', (MB / plainBound).toFixed(0), '']);
    rows.push(['bound: openssl s_server → s_client', '1', tlsBound.toFixed(2), '', (MB / tlsBound).toFixed(0), `${((tlsBound / plainBound - 1) * 100).toFixed(1)} %`]);
  }
  for (const [delta, image, have] of [['1', base, undefined], ['0.1', next, base]] as const) {
    if (!deltas.includes(delta)) continue;
    const [plain, tls, plainRuns, tlsRuns] = await medians(() => pushOnce(image, have, false), () => pushOnce(image, have, true));
    rows.push([`osfarm push --insecure`, delta, plain.toFixed(2), spread(plainRuns), (MB / plain).toFixed(0), '']);
    rows.push([`osfarm push --tls-fingerprint`, delta, tls.toFixed(2), spread(tlsRuns), (MB / tls).toFixed(0), `${((tls / plain - 1) * 100).toFixed(1)} %`]);
  }
  const over = link ? `a ${linkMbit} Mbit/s link (tc on a veth pair into a network namespace)` : 'loopback';
  printTable(`push over ${over}, ${sizeMiB} MiB of random data, median of ${rounds} (s; MB/s of image size; TLS's extra time)`, rows, ['what', 'delta', 's', 'runs (s)', 'MB/s', 'TLS cost']);
} finally {
  link?.remove();
  // The receiver's repository and its images go; the inputs stay for the next run.
  rmSync(join(dir, 'rx'), { recursive: true, force: true });
}
