/**
 * HTTP pull: osfarm serve and a plain nginx over a repository directory on loopback, the
 * server's HTTP semantics (ranges, ETag, HEAD, 416, refusals), servers that lie or drop
 * connections, and fan-out through an nginx slice cache in network namespaces.
 */
import test, { type ExecutionContext } from 'ava';
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, existsSync, mkdirSync, openSync, readFileSync, readdirSync, writeFileSync, writeSync, closeSync } from 'node:fs';
import { request, type Server } from 'node:http';
import { createServer as createTcpServer, connect, type AddressInfo } from 'node:net';
import { join } from 'node:path';

import type { OsfarmError } from '../src/base/errors.js';
import { Repository } from '../src/repo/index.js';
import { createPullHandler, listenHttp, parseRange } from '../src/transfer/http/serve.js';
import { coalesce, parseImageUrl, pull } from '../src/transfer/http/pull.js';
import { nginxHasSlice, startNginx } from './helpers/nginx.js';
import { ProxyLab } from './helpers/proxy-lab.js';
import { cliJsonAsync, pseudoRandom, tempDir } from './helpers/tmp.js';

const MiB = 1 << 20;
const CLI = [`--import=${import.meta.resolve('tsx')}`, join(import.meta.dirname, '..', 'src', 'cli', 'main.ts')];

/** An old image and a newer one that differs in whole `changed` MiB (1-MiB aligned) plus a few scattered blocks. */
function imagePair(dir: string, sizeMiB: number, changed: number[], seed: number): { oldImage: string; newImage: string; changedBytes: number } {
  const old = pseudoRandom(sizeMiB * MiB, seed);
  const neu = Buffer.from(old);
  changed.forEach((m, k) => pseudoRandom(MiB, seed * 1000 + k + 1).copy(neu, m * MiB));
  const oldImage = join(dir, 'old.img');
  const newImage = join(dir, 'new.img');
  writeFileSync(oldImage, old);
  writeFileSync(newImage, neu);
  return { oldImage, newImage, changedBytes: changed.length * MiB };
}

function sha256(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

interface Origin {
  url: string;
  dir: string;
  digest: string;
  server: Server;
  oldImage: string;
  newImage: string;
  changedBytes: number;
}

/** An origin repository (old + new image) served in-process on loopback, and a receiver holding the old one. */
async function origin(t: ExecutionContext, repoDir?: string): Promise<Origin & { receiver: string }> {
  const dir = tempDir(t, 'osfarm-http-');
  const pair = imagePair(dir, 8, [1, 5], 11);
  const originDir = repoDir ?? join(dir, 'origin');
  let digest: string;
  if (!repoDir) {
    const repo = Repository.init(originDir);
    repo.addSync(pair.oldImage, { name: 'old' });
    digest = repo.addSync(pair.newImage, { name: 'new' }).digest;
  } else {
    digest = Repository.open(originDir).resolve('new').digest;
  }
  const { server, address } = await listenHttp({ host: '127.0.0.1', port: 0, handlers: [createPullHandler({ repo: originDir })] });
  t.teardown(() => new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))));
  const receiver = join(dir, 'receiver');
  Repository.init(receiver).addSync(pair.oldImage, { name: 'old' });
  return { url: `http://127.0.0.1:${address.port}`, dir: originDir, digest, server, receiver, ...pair };
}

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

/** A raw request (the path is sent exactly as given, unnormalised). */
function http(url: string, path: string, opts: { method?: string; headers?: Record<string, string> } = {}): Promise<Reply> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = request({ host: u.hostname, port: u.port, path, method: opts.method ?? 'GET', headers: opts.headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on('error', reject);
    req.end();
  });
}


interface RelayOptions {
  /** Cut every connection after this many bytes from the server. */
  cutAfter?: number;
  /** Once this many connections were cut, drop every new one at once. */
  deadAfter?: number;
  /** Forward the server's bytes at about this rate. */
  bytesPerSecond?: number;
}

/** A TCP relay in front of `target` that misbehaves as told. */
async function relay(t: ExecutionContext, target: string, o: RelayOptions): Promise<{ url: string; cuts: number }> {
  const u = new URL(target);
  const state = { url: '', cuts: 0 };
  const cutAfter = o.cutAfter ?? Infinity;
  const server = createTcpServer((client) => {
    if (state.cuts >= (o.deadAfter ?? Infinity)) return void client.destroy();
    const upstream = connect(Number(u.port), u.hostname);
    let sent = 0;
    client.pipe(upstream);
    upstream.on('data', (d: Buffer) => {
      if (sent + d.length > cutAfter) {
        client.write(d.subarray(0, Math.max(0, cutAfter - sent)));
        state.cuts++;
        client.destroy();
        upstream.destroy();
        return;
      }
      sent += d.length;
      client.write(d);
      if (o.bytesPerSecond) {
        upstream.pause();
        setTimeout(() => upstream.resume(), (d.length / o.bytesPerSecond) * 1000);
      }
    });
    upstream.on('end', () => client.end());
    const drop = () => (client.destroy(), upstream.destroy());
    client.on('error', drop);
    upstream.on('error', drop);
    client.on('close', drop);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  state.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return state;
}

test('serve + pull on loopback: only the missing blocks are fetched, the image is identical, a second pull fetches nothing', async (t) => {
  const o = await origin(t);
  const plan = Repository.open(o.receiver).planSync(Repository.open(o.dir).resolve(o.digest).indexPath);
  t.is(plan.missingBytes, o.changedBytes);
  const progress: number[] = [];
  const r = await pull(`${o.url}/images/new`, { repo: o.receiver, onProgress: (p) => void (p.phase === 'fetch' && progress.push(p.done)) });
  t.is(r.digest, o.digest);
  t.is(r.name, 'new');
  t.is(r.blocksFetched, plan.missingBlocks);
  t.is(r.blocksLocal, plan.presentBlocks);
  const index = readFileSync(Repository.open(o.dir).resolve(o.digest).indexPath).length;
  // Data of the missing blocks, the index, meta.json; nothing of the 6 MiB held locally.
  t.true(r.bytesFetched >= o.changedBytes + index, `${r.bytesFetched}`);
  t.true(r.bytesFetched <= o.changedBytes + index + 4096, `${r.bytesFetched}`);
  t.is(progress[progress.length - 1], o.changedBytes);
  const local = Repository.open(o.receiver).resolve('new');
  t.is(sha256(local.path), sha256(o.newImage));

  const again = await pull(`${o.url}/images/${o.digest}`, { repo: o.receiver });
  t.true(again.alreadyPresent);
  t.is(again.blocksFetched, 0);
  t.true(again.bytesFetched < index + 4096);
});

test('pull into a repository that does not exist yet creates it; zero blocks and a short last block', async (t) => {
  const o = await origin(t);
  const odd = join(tempDir(t), 'odd.img');
  writeFileSync(odd, Buffer.concat([pseudoRandom(3 * MiB, 3), Buffer.alloc(MiB), pseudoRandom(1000, 4)]));
  const digest = Repository.open(o.dir).addSync(odd, { name: 'odd' }).digest;
  const fresh = join(tempDir(t), 'new-repo');
  const r = await pull(`${o.url}/images/${digest}/`, { repo: fresh, name: 'copy' });
  t.is(r.blocksZero, 256);
  t.is(r.blocksFetched, r.blockCount - 256);
  t.is(r.size, 4 * MiB + 1000);
  const local = Repository.open(fresh).resolve('copy');
  t.is(local.digest, digest);
  t.is(sha256(local.path), sha256(odd));
});

/** A TCP port free on loopback right now (for servers that cannot be told to pick one). */
function freePort(): Promise<number> {
  return new Promise<number>((resolve) => {
    const s = createTcpServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

test('pull works from a plain nginx serving a copy of the repository directory (by digest)', async (t) => {
  const o = await origin(t);
  const port = await freePort();
  const staticCopy = join(tempDir(t), 'www');
  cpSync(o.dir, staticCopy, { recursive: true });
  const nginx = await startNginx(join(tempDir(t), 'nginx'), `127.0.0.1:${port}`, { kind: 'static', root: staticCopy });
  t.teardown(() => nginx.stop());
  const r = await pull(`http://127.0.0.1:${port}/images/${o.digest}`, { repo: o.receiver, parallel: 3, maxRequestBytes: 256 << 10 });
  t.is(r.blocksFetched, o.changedBytes / 4096);
  t.true(r.requests >= 2 + o.changedBytes / (256 << 10), `${r.requests} requests`);
  t.is(sha256(Repository.open(o.receiver).resolve(o.digest).path), sha256(o.newImage));
  // Every data request was a single range; nothing else of the directory was asked for.
  const log = nginx.accessLog();
  t.true(log.some((l) => l.includes(` "GET /images/${o.digest}/image HTTP/1.1" 206 `)), log.join('\n'));
  t.false(log.some((l) => / (200|206) /.test(l) && !l.includes(`/images/${o.digest}/`)));
  // A static server knows no names.
  const e = await t.throwsAsync(pull(`http://127.0.0.1:${port}/images/new`, { repo: o.receiver }));
  t.is((e as OsfarmError).code, 'OSFARM_NOT_FOUND');
  t.regex(e!.message, /full digest/);
});

test('pull over HTTPS: a certificate from a CA in NODE_EXTRA_CA_CERTS works; an untrusted one is refused at once', async (t) => {
  const o = await origin(t);
  const dir = tempDir(t);
  const [cert, key] = [join(dir, 'cert.pem'), join(dir, 'key.pem')];
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=osfarm test', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
  const port = await freePort();
  const staticCopy = join(dir, 'www');
  cpSync(o.dir, staticCopy, { recursive: true });
  const nginx = await startNginx(join(dir, 'nginx'), `127.0.0.1:${port}`, { kind: 'static', root: staticCopy, tls: { cert, key } });
  t.teardown(() => nginx.stop());
  const url = `https://127.0.0.1:${port}/images/${o.digest}`;

  const untrusted = await cliJsonAsync(['pull', url, '--repo', o.receiver]);
  t.is(untrusted.status, 1, untrusted.stderr);
  t.is(untrusted.result.error.code, 'OSFARM_UNAUTHORIZED');
  t.regex(untrusted.result.error.message, /not trusted.*NODE_EXTRA_CA_CERTS/);
  t.notRegex(untrusted.result.error.message, /gave up after/, 'a certificate problem is not retried');

  const trusted = await cliJsonAsync(['pull', url, '--repo', o.receiver], { NODE_EXTRA_CA_CERTS: cert });
  t.is(trusted.status, 0, trusted.stderr);
  t.is(trusted.result.blocksFetched, o.changedBytes / 4096);
  t.is(sha256(Repository.open(o.receiver).resolve(o.digest).path), sha256(o.newImage));
});

test('serve: ranges, ETag, HEAD, 416, conditional requests and cache headers', async (t) => {
  const o = await origin(t);
  const data = readFileSync(o.newImage);
  const path = `/images/${o.digest}/image`;
  const head = await http(o.url, path, { method: 'HEAD' });
  t.is(head.status, 200);
  t.is(head.body.length, 0);
  t.is(head.headers['content-length'], String(data.length));
  t.is(head.headers.etag, `"${o.digest}"`);
  t.is(head.headers['cache-control'], 'public, max-age=31536000, immutable');
  t.is(head.headers['accept-ranges'], 'bytes');
  t.truthy(Date.parse(String(head.headers['last-modified'])));

  const mid = await http(o.url, path, { headers: { Range: 'bytes=4090-8200' } });
  t.is(mid.status, 206);
  t.is(mid.headers['content-range'], `bytes 4090-8200/${data.length}`);
  t.deepEqual(mid.body, data.subarray(4090, 8201));
  const suffix = await http(o.url, path, { headers: { Range: 'bytes=-100' } });
  t.deepEqual(suffix.body, data.subarray(data.length - 100));
  const open = await http(o.url, path, { headers: { Range: `bytes=${data.length - 10}-` } });
  t.is(open.headers['content-range'], `bytes ${data.length - 10}-${data.length - 1}/${data.length}`);
  const past = await http(o.url, path, { headers: { Range: `bytes=${data.length}-` } });
  t.is(past.status, 416);
  t.is(past.headers['content-range'], `bytes */${data.length}`);
  // Several ranges, or a range for another version (If-Range), get the whole image.
  const multi = await http(o.url, path, { method: 'HEAD', headers: { Range: 'bytes=0-1,5-6' } });
  t.is(multi.status, 200);
  const stale = await http(o.url, path, { method: 'HEAD', headers: { Range: 'bytes=0-1', 'If-Range': '"other"' } });
  t.is(stale.status, 200);
  const fresh = await http(o.url, path, { headers: { Range: 'bytes=0-1', 'If-Range': `"${o.digest}"` } });
  t.is(fresh.status, 206);
  const cached = await http(o.url, path, { headers: { 'If-None-Match': `"${o.digest}"` } });
  t.is(cached.status, 304);
  t.is(cached.body.length, 0);

  const index = await http(o.url, `/images/${o.digest}/index.osfi`);
  t.deepEqual(index.body, readFileSync(Repository.open(o.dir).resolve(o.digest).indexPath));
  t.is(index.headers.etag, `"${o.digest}.osfi"`);
  const meta = await http(o.url, `/images/${o.digest}/meta.json`);
  t.is(JSON.parse(meta.body.toString()).digest, o.digest);
  t.is(meta.headers['cache-control'], 'no-cache');
  const byName = await http(o.url, '/images/new/index.osfi');
  t.is(byName.status, 307);
  t.is(byName.headers.location, `/images/${o.digest}/index.osfi`);
  t.is(byName.headers['cache-control'], 'no-store');
  const listing = JSON.parse((await http(o.url, '/v1/images.json')).body.toString());
  t.deepEqual(
    listing.images.map((i: { name: string; digest: string; size: number; hash: string; blockSize: number }) => [i.name, i.digest, i.size, i.hash, i.blockSize]),
    Repository.open(o.dir).list().map((e) => [e.name, e.digest, e.size, 'sha1', 4096]),
  );

  t.deepEqual(parseRange('bytes=5-', 10), { start: 5, end: 9 });
  t.deepEqual(parseRange('bytes=2-100', 10), { start: 2, end: 9 });
  t.is(parseRange('bytes=9-2', 10), undefined);
  t.is(parseRange('bytes=-0', 10), 'unsatisfiable');
  t.is(parseRange('items=0-1', 10), undefined);
});

test('serve refuses bad digests, path traversal, unlisted directories and writes', async (t) => {
  const o = await origin(t);
  // A directory in images/ that the catalog does not list (e.g. left by a crash) is not served.
  const ghost = 'ab'.repeat(20);
  mkdirSync(join(o.dir, 'images', ghost));
  writeFileSync(join(o.dir, 'images', ghost, 'image'), 'secret');
  const catalog = readFileSync(join(o.dir, 'catalog.osfc'));
  for (const path of [
    `/images/${ghost}/image`,
    '/images/../catalog.osfc',
    '/images/..%2Fcatalog.osfc/image',
    '/images/%2e%2e/catalog.osfc',
    `/images/${o.digest}/../../catalog.osfc`,
    `/images/${o.digest}/lock`,
    '/images/zz/image',
    '/images/%E0%A4%A/image',
    '/catalog.osfc',
    `/tmp/${o.digest}.partial`,
  ]) {
    const r = await http(o.url, path);
    t.true(r.status === 404 || r.status === 400, `${path}: ${r.status}`);
    t.false(r.body.includes(catalog.subarray(0, 8)), path);
    t.false(r.body.toString().includes('secret'), path);
  }
  const post = await http(o.url, `/images/${o.digest}/image`, { method: 'POST' });
  t.is(post.status, 405);
  t.is(post.headers.allow, 'GET, HEAD');
  t.throws(() => parseImageUrl('http://host/some/thing'), { code: 'OSFARM_INVALID_ARGUMENT' } as never);
  t.throws(() => parseImageUrl('ftp://host/images/abcd'), { code: 'OSFARM_INVALID_ARGUMENT' } as never);
  t.deepEqual(parseImageUrl('http://h:1/pre/fix/images/n%20x/index.osfi'), { base: 'http://h:1/pre/fix', ref: 'n x' });
  const missing = await t.throwsAsync(pull(`${o.url}/images/${'cd'.repeat(20)}`, { repo: o.receiver }));
  t.is((missing as OsfarmError).code, 'OSFARM_NOT_FOUND');
});

test('a server that returns wrong bytes or a wrong index is refused and nothing is published', async (t) => {
  const good = await origin(t);
  const liar = join(tempDir(t), 'liar');
  cpSync(good.dir, liar, { recursive: true });
  // Flip bytes inside a block the receiver lacks (MiB 5 changed).
  const imagePath = join(liar, 'images', good.digest, 'image');
  const fd = openSync(imagePath, 'r+');
  writeSync(fd, Buffer.from('corrupt'), 0, 7, 5 * MiB + 12345);
  closeSync(fd);
  const o = await origin(t, liar);
  const before = Repository.open(o.receiver).list().map((e) => e.digest);
  const e = await t.throwsAsync(pull(`${o.url}/images/${good.digest}`, { repo: o.receiver }));
  t.is((e as OsfarmError).code, 'OSFARM_DIGEST_MISMATCH');
  t.regex(e!.message, /does not match its digest/);
  t.deepEqual(Repository.open(o.receiver).list().map((x) => x.digest), before);

  // An index that is not the image's: refused before any data is fetched.
  const liar2 = join(tempDir(t), 'liar2');
  cpSync(good.dir, liar2, { recursive: true });
  const old = Repository.open(good.dir).resolve('old');
  cpSync(old.indexPath, join(liar2, 'images', good.digest, 'index.osfi'));
  const o2 = await origin(t, liar2);
  const e2 = await t.throwsAsync(pull(`${o2.url}/images/${good.digest}`, { repo: o.receiver }));
  t.is((e2 as OsfarmError).code, 'OSFARM_DIGEST_MISMATCH');
  t.deepEqual(Repository.open(o.receiver).list().map((x) => x.digest), before);
});

test('dropped connections: retried within a pull, and a pull that gives up resumes on the next run', async (t) => {
  const o = await origin(t);
  // Every connection is cut after 600 KiB: the pull keeps what arrived and retries the rest.
  const flaky = await relay(t, o.url, { cutAfter: 600 << 10 });
  const r1 = await pull(`${flaky.url}/images/${o.digest}`, { repo: o.receiver, parallel: 2, maxRequestBytes: 4 * MiB, retryDelayMs: 20 });
  t.true(flaky.cuts > 0);
  t.true(r1.retries > 0);
  t.is(sha256(Repository.open(o.receiver).resolve(o.digest).path), sha256(o.newImage));

  // Through the CLI: the relay dies after cutting its first connection at 1 MiB; the pull fails, keeps its partial.
  const receiver = join(tempDir(t), 'r2');
  Repository.init(receiver).addSync(o.oldImage);
  const dying = await relay(t, o.url, { cutAfter: MiB, deadAfter: 1 });
  const failed = await cliJsonAsync(['pull', `${dying.url}/images/new`, '--repo', receiver, '--retries', '1', '--parallel', '1', '--max-request', '512K']);
  t.not(failed.status, 0);
  t.is(failed.result.error.code, 'OSFARM_IO', failed.stderr);
  t.regex(failed.result.error.message, /run the same pull again/);
  t.false(Repository.open(receiver).list().some((e) => e.digest === o.digest));
  t.true(existsSync(join(receiver, 'tmp', `${o.digest}.partial`)));
  const ok = await cliJsonAsync(['pull', `${o.url}/images/new`, '--repo', receiver]);
  t.is(ok.status, 0, ok.stderr);
  t.true(ok.result.blocksResumed > 0, JSON.stringify(ok.result));
  // What the first run copied locally and fetched is kept: only the rest is fetched now.
  t.is(ok.result.blocksFetched + ok.result.blocksResumed + ok.result.blocksLocal, ok.result.blockCount);
  t.true(ok.result.blocksFetched < o.changedBytes / 4096);
  t.true(ok.result.bytesFetched < o.changedBytes);
  t.is(sha256(Repository.open(receiver).resolve('new').path), sha256(o.newImage));
  t.deepEqual(readdirSync(join(receiver, 'tmp')).filter((f) => f.includes(o.digest)), []);
});

test('a busy server answers 503 beyond its request limit and pull retries; Ctrl-C keeps a resumable partial', async (t) => {
  const o = await origin(t);
  const { server, address } = await listenHttp({ host: '127.0.0.1', port: 0, handlers: [createPullHandler({ repo: o.dir, maxConcurrent: 1 })] });
  t.teardown(() => new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))));
  const busy = `http://127.0.0.1:${address.port}`;
  const r = await pull(`${busy}/images/${o.digest}`, { repo: o.receiver, parallel: 4, maxRequestBytes: 128 << 10, retryDelayMs: 10 });
  t.true(r.retries > 0, 'some requests were refused with 503 and retried');
  t.is(sha256(Repository.open(o.receiver).resolve(o.digest).path), sha256(o.newImage));

  // Ctrl-C during a (slowed-down) pull: OSFARM_ABORTED, the partial stays, the next pull continues it.
  const receiver = join(tempDir(t), 'r3');
  Repository.init(receiver).addSync(o.oldImage);
  const slow = await relay(t, o.url, { bytesPerSecond: 512 << 10 });
  const child = spawn(process.execPath, [...CLI, '--json', 'pull', `${slow.url}/images/${o.digest}`, '--repo', receiver, '--parallel', '1'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
    if (/"phase":"fetch","done":[1-9]/.test(out)) child.kill('SIGINT');
  });
  const status = await new Promise<number | null>((r) => child.once('close', r));
  t.not(status, 0);
  t.is(JSON.parse(out.trim().split('\n').pop()!).error.code, 'OSFARM_ABORTED');
  t.false(Repository.open(receiver).list().some((x) => x.digest === o.digest));
  const again = await cliJsonAsync(['pull', `${o.url}/images/${o.digest}`, '--repo', receiver]);
  t.is(again.status, 0, again.stderr);
  t.true(again.result.blocksResumed > 0);
  t.true(again.result.blocksFetched < o.changedBytes / 4096);
});

test('coalescing merges runs across small gaps and caps request sizes', (t) => {
  t.deepEqual(
    coalesce([{ first: 0, count: 2 }, { first: 3, count: 1 }, { first: 100, count: 5 }], 1, 3),
    [{ first: 0, count: 3 }, { first: 3, count: 1 }, { first: 100, count: 3 }, { first: 103, count: 2 }],
  );
});

test('fan-out through an nginx slice cache: the origin sends about one copy however many receivers pull', async (t) => {
  t.true(nginxHasSlice(), 'nginx must be built with the slice module (Debian: apt-get install nginx)');
  const dir = tempDir(t, 'osfarm-proxy-');
  const pair = imagePair(dir, 16, [2, 3, 9, 14], 23);
  const lab = await ProxyLab.create(dir, 4, pair.oldImage, pair.newImage);
  t.teardown(() => lab.close());
  const round = await lab.round(4, true);
  const fetched = round.pulls.map((p) => p.bytesFetched);
  t.log(`origin sent ${round.originTxBytes} bytes; receivers fetched ${fetched.join(', ')} in ${round.seconds.toFixed(1)} s`);
  for (const [i, p] of round.pulls.entries()) {
    t.is(p.blocksFetched, pair.changedBytes / 4096, `receiver ${i}: ${JSON.stringify(p)}`);
    t.is(sha256(lab.imagePath(i)), sha256(pair.newImage));
  }
  const one = Math.max(...fetched);
  // The changed data is slice-aligned, so one copy through the cache is one receiver's fetch.
  t.true(round.originTxBytes >= pair.changedBytes, 'the counter saw the transfer');
  t.true(round.originTxBytes <= 1.5 * one, `origin sent ${round.originTxBytes} for ${round.pulls.length} receivers of ${one} bytes each`);
});
