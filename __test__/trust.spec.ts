/**
 * Trust and provenance (docs/trust.md): signing keys, signed manifests checked by the real
 * minisign, and verified pulls through a man-in-the-middle cache on loopback that rewrites
 * the index, a block, the manifest, or where a name points.
 */
import test, { type ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer, request, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';

import type { OsfarmError } from '../src/base/errors.js';
import { Repository } from '../src/repo/index.js';
import { createPullHandler, listenHttp } from '../src/transfer/http/serve.js';
import { pull } from '../src/transfer/http/pull.js';
import { generateKeys, trustKey } from '../src/trust/keys.js';
import { MANIFEST_FILE, SIGNATURE_FILE, signImage } from '../src/trust/manifest.js';
import { parsePublicKey, parseSignature, verifyMessage } from '../src/trust/minisign.js';
import { startNginx } from './helpers/nginx.js';
import { cli, cliJson, cliJsonAsync, outcome, pseudoRandom, tempDir } from './helpers/tmp.js';

const MiB = 1 << 20;
/** Metadata the signed image carries (a built image's would hold its spec, stages and log). */
const APP_META = { kind: 'test', spec: { packages: ['less'] }, buildLog: { path: '/origin/app.build.log', tail: 'line 1\nline 2' } };

interface Origin {
  dir: string;
  url: string;
  /** The signed image "app" and an unsigned one, "evil", in the same repository. */
  app: string;
  evil: string;
  appImage: string;
  pub: string;
}

async function listen(t: ExecutionContext, server: Server): Promise<string> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/** An origin repository with a signing key, served on loopback by osfarm's pull handler. */
async function origin(t: ExecutionContext): Promise<Origin> {
  const base = tempDir(t, 'osfarm-trust-');
  const dir = join(base, 'origin');
  const repo = Repository.init(dir);
  const appImage = join(base, 'app.img');
  writeFileSync(appImage, pseudoRandom(2 * MiB, 41));
  writeFileSync(join(base, 'evil.img'), pseudoRandom(2 * MiB, 42));
  // Added before the key exists: unsigned.
  const evil = repo.addSync(join(base, 'evil.img'), { name: 'evil' }).digest;
  const key = generateKeys(dir);
  const entry = repo.addSync(appImage, { name: 'app', meta: APP_META });
  signImage(dir, entry);
  const { server } = await listenHttp({ host: '127.0.0.1', port: 0, handlers: [createPullHandler({ repo: dir })] });
  t.teardown(() => new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))));
  return { dir, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, app: entry.digest, evil, appImage, pub: key.path };
}

type Rewrite = (path: string, body: Buffer, headers: IncomingHttpHeaders) => { body: Buffer; status?: number } | undefined;

/** A caching-proxy stand-in on loopback that forwards to `upstream` and may rewrite what it relays. */
async function mitm(t: ExecutionContext, upstream: string, rewrite: Rewrite): Promise<string> {
  const server = createServer((req, res) => {
    const up = request(`${upstream}${req.url}`, { method: req.method, headers: { ...req.headers, host: new URL(upstream).host } }, (ur) => {
      const chunks: Buffer[] = [];
      ur.on('data', (c: Buffer) => chunks.push(c));
      ur.on('end', () => {
        const changed = rewrite(req.url ?? '', Buffer.concat(chunks), ur.headers);
        const body = changed?.body ?? Buffer.concat(chunks);
        const headers = { ...ur.headers, 'content-length': String(body.length) };
        // A rewritten status is a forged answer, not a redirect.
        if (changed?.status) delete headers.location;
        delete headers['transfer-encoding'];
        res.writeHead(changed?.status ?? ur.statusCode ?? 502, headers);
        res.end(body);
      });
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  return listen(t, server);
}

/** The receiver holds nothing of the image: not published, no partial assembly. */
function nothingAssembled(t: ExecutionContext, receiver: string): void {
  if (!existsSync(receiver)) {
    t.pass();
    return;
  }
  t.deepEqual(Repository.open(receiver).list(), []);
  t.deepEqual(readdirSync(join(receiver, 'tmp')).filter((n) => n.endsWith('.partial') || n.endsWith('.have')), []);
}

async function refused(t: ExecutionContext, p: Promise<unknown>, code: OsfarmError['code'], message: RegExp): Promise<void> {
  const e = (await t.throwsAsync(p)) as OsfarmError;
  t.is(e.code, code, e.message);
  t.regex(e.message, message);
}

test('keys generate|list|export (CLI, --json): a 0600 secret key; repo add signs; the real minisign verifies the manifest', (t) => {
  const dir = tempDir(t, 'osfarm-trust-cli-');
  const repo = join(dir, 'repo');
  t.is(cliJson(['repo', 'init', '--repo', repo]).status, 0);
  // No repository yet: refused with a code, and nothing created.
  t.is(cliJson(['keys', 'generate', '--repo', join(dir, 'none')]).result.error.code, 'OSFARM_BAD_REPOSITORY');
  const gen = cliJson(['keys', 'generate', '--repo', repo]);
  t.is(gen.status, 0, gen.stderr);
  t.regex(gen.result.keyId, /^[0-9A-F]{16}$/);
  t.is(statSync(join(repo, 'keys', 'signing.key')).mode & 0o777, 0o600);
  const again = cliJson(['keys', 'generate', '--repo', repo]);
  t.is(again.result.error.code, 'OSFARM_INVALID_ARGUMENT');
  t.regex(again.result.error.message, /--force/);

  const exported = cliJson(['keys', 'export', '--repo', repo, '--out', join(dir, 'origin.pub')]);
  t.is(exported.result.keyId, gen.result.keyId);
  t.is(parsePublicKey(readFileSync(join(dir, 'origin.pub'), 'utf8'), 'origin.pub').keyId, gen.result.keyId);
  const listed = cliJson(['keys', 'list', '--repo', repo]).result.keys;
  t.deepEqual(listed.map((k: { role: string; keyId: string }) => [k.role, k.keyId]), [['signing', gen.result.keyId]]);

  writeFileSync(join(dir, 'a.img'), pseudoRandom(300_000, 7));
  const added = cliJson(['repo', 'add', join(dir, 'a.img'), '--name', 'a', '--repo', repo, '--meta', '{"specDigest":"abc","stages":[{"tag":"t1"}]}']);
  t.is(added.status, 0, added.stderr);
  const imageDir = join(repo, 'images', added.result[0].digest);
  const manifest = JSON.parse(readFileSync(join(imageDir, MANIFEST_FILE), 'utf8'));
  t.like(manifest, { digest: added.result[0].digest, name: 'a', size: 300_000, specDigest: 'abc', stages: ['t1'], keyId: gen.result.keyId });
  // minisign (Debian's package) checks it: the format is minisign's.
  const out = execFileSync('minisign', ['-V', '-m', join(imageDir, MANIFEST_FILE), '-x', join(imageDir, SIGNATURE_FILE), '-p', join(dir, 'origin.pub')], { encoding: 'utf8' });
  t.regex(out, new RegExp(`digest:${added.result[0].digest}`));
  // An altered manifest fails minisign too.
  writeFileSync(join(dir, 'altered.json'), readFileSync(join(imageDir, MANIFEST_FILE), 'utf8').replace('"a"', '"b"'));
  t.throws(() => execFileSync('minisign', ['-V', '-m', join(dir, 'altered.json'), '-x', join(imageDir, SIGNATURE_FILE), '-p', join(dir, 'origin.pub')], { stdio: 'ignore' }));

  // keys trust adds a key to the trust store.
  const trusted = cliJson(['keys', 'trust', join(dir, 'origin.pub'), '--repo', repo]);
  t.is(trusted.result.path, join(repo, 'trust', `${gen.result.keyId}.pub`));
  t.is(cliJson(['keys', 'list', '--repo', repo]).result.keys.length, 2);
});

test("signatures made by the real minisign verify with osfarm's code, and a flipped byte does not", (t) => {
  const dir = tempDir(t, 'osfarm-trust-ms-');
  execFileSync('minisign', ['-G', '-W', '-p', join(dir, 'k.pub'), '-s', join(dir, 'k.key')], { stdio: 'ignore' });
  const file = join(dir, 'msg');
  writeFileSync(file, pseudoRandom(100_000, 3));
  execFileSync('minisign', ['-S', '-s', join(dir, 'k.key'), '-m', file, '-t', 'osfarm test'], { stdio: 'ignore' });
  const key = parsePublicKey(readFileSync(join(dir, 'k.pub'), 'utf8'), 'k.pub');
  const sig = parseSignature(readFileSync(`${file}.minisig`, 'utf8'), 'msg.minisig');
  t.is(sig.trustedComment, 'osfarm test');
  const data = readFileSync(file);
  t.is(verifyMessage(data, sig, [key], 'msg').keyId, key.keyId);
  data[500] ^= 1;
  t.throws(() => verifyMessage(data, sig, [key], 'msg'), { message: /bad signature/ });
});

test('a signed image pulls with --trust; the manifest is kept and republished; by name, by digest, from a static copy', async (t) => {
  const o = await origin(t);
  const receiver = join(tempDir(t), 'receiver');
  // By a digest prefix (the server resolves it): no name to check.
  t.is((await pull(`${o.url}/images/${o.app.slice(0, 8)}`, { repo: join(tempDir(t), 'by-prefix'), trust: [o.pub] })).digest, o.app);
  const r = await pull(`${o.url}/images/app`, { repo: receiver, trust: [o.pub] });
  t.is(r.digest, o.app);
  t.truthy(r.signedBy);
  t.is(r.name, 'app');
  const local = Repository.open(receiver).resolve('app');
  t.deepEqual(readFileSync(local.path), readFileSync(o.appImage));
  // Its metadata travelled with it, unchanged.
  t.deepEqual(local.meta, APP_META);
  t.deepEqual(readFileSync(join(local.path, '..', MANIFEST_FILE)), readFileSync(join(o.dir, 'images', o.app, MANIFEST_FILE)));

  // A plain nginx over a copy of images/ (keys/ is never published) serves the manifests too.
  const www = join(tempDir(t), 'www');
  mkdirSync(www);
  cpSync(join(o.dir, 'images'), join(www, 'images'), { recursive: true });
  const port = await new Promise<number>((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
  const nginx = await startNginx(join(tempDir(t), 'nginx'), `127.0.0.1:${port}`, { kind: 'static', root: www });
  t.teardown(() => nginx.stop());
  const second = join(tempDir(t), 'second');
  const s = await pull(`http://127.0.0.1:${port}/images/${o.app}`, { repo: second, trust: [o.pub] });
  t.is(s.signedBy, r.signedBy);
});

test('--trust refuses an unsigned image, another key, and a name the server points at another image', async (t) => {
  const o = await origin(t);
  const dir = tempDir(t);
  const receiver = join(dir, 'receiver');
  await refused(t, pull(`${o.url}/images/${o.evil}`, { repo: receiver, trust: [o.pub] }), 'OSFARM_UNTRUSTED', /is not signed/);
  nothingAssembled(t, receiver);

  // A key the image was not signed with.
  const other = join(dir, 'other');
  Repository.init(other);
  const otherKey = generateKeys(other);
  await refused(t, pull(`${o.url}/images/app`, { repo: receiver, trust: [otherKey.path] }), 'OSFARM_UNTRUSTED', /not among the trusted keys/);
  nothingAssembled(t, receiver);

  // A cache that answers the name "app" with the unsigned "evil": without --trust it goes
  // through (the attack works), with --trust it is refused.
  const swap: Rewrite = (path) => (path === '/images/app/meta.json' ? { body: readFileSync(join(o.dir, 'images', o.evil, 'meta.json')), status: 200 } : undefined);
  const proxy = await mitm(t, o.url, swap);
  const fooled = join(dir, 'fooled');
  t.is((await pull(`${proxy}/images/app`, { repo: fooled })).digest, o.evil);
  await refused(t, pull(`${proxy}/images/app`, { repo: receiver, trust: [o.pub] }), 'OSFARM_UNTRUSTED', /is not signed/);
  nothingAssembled(t, receiver);
  // Signed, but as another name: the origin signs "evil" now; the cache still points "app" at it.
  signImage(o.dir, Repository.open(o.dir).resolve('evil'));
  await refused(t, pull(`${proxy}/images/app`, { repo: receiver, trust: [o.pub] }), 'OSFARM_UNTRUSTED', /signed as 'evil'/);
  nothingAssembled(t, receiver);
});

test('a cache that rewrites the index, the manifest, the metadata or a block is caught; nothing is published', async (t) => {
  const o = await origin(t);
  const dir = tempDir(t);
  const flip = (body: Buffer, at: number) => {
    const b = Buffer.from(body);
    b[at]! ^= 0xff;
    return { body: b };
  };
  const index = await mitm(t, o.url, (path, body) => (path.endsWith('/index.osfi') ? flip(body, body.length - 5) : undefined));
  const r1 = join(dir, 'r1');
  await refused(t, pull(`${index}/images/app`, { repo: r1, trust: [o.pub] }), 'OSFARM_UNTRUSTED', /differs from the signed index/);
  nothingAssembled(t, r1);

  const manifest = await mitm(t, o.url, (path, body) =>
    path.endsWith(`/${MANIFEST_FILE}`) ? { body: Buffer.from(body.toString().replace(/"size": \d+/, '"size": 1')) } : undefined,
  );
  const r2 = join(dir, 'r2');
  await refused(t, pull(`${manifest}/images/app`, { repo: r2, trust: [o.pub] }), 'OSFARM_UNTRUSTED', /bad signature/);
  nothingAssembled(t, r2);

  // The metadata (spec, build log…) swapped in meta.json: it differs from the signed metaSha256.
  const meta = await mitm(t, o.url, (path, body) =>
    path.endsWith('/meta.json') ? { body: Buffer.from(body.toString().replace('line 2', 'line 3')) } : undefined,
  );
  const r4 = join(dir, 'r4');
  await refused(t, pull(`${meta}/images/app`, { repo: r4, trust: [o.pub] }), 'OSFARM_UNTRUSTED', /metadata differs from the signed metadata/);
  nothingAssembled(t, r4);

  // A block altered in transit: the signed index's digests catch it before it is written.
  const block = await mitm(t, o.url, (path, body, headers) => (path.endsWith('/image') && headers['content-range'] ? flip(body, 1000) : undefined));
  const r3 = join(dir, 'r3');
  await refused(t, pull(`${block}/images/app`, { repo: r3, trust: [o.pub] }), 'OSFARM_DIGEST_MISMATCH', /./);
  t.deepEqual(Repository.open(r3).list(), []);
});

test("the repository's trust store is enforced without --trust (CLI pull, OSFARM_UNTRUSTED)", async (t) => {
  const o = await origin(t);
  const receiver = join(tempDir(t), 'receiver');
  Repository.init(receiver);
  trustKey(receiver, o.pub);
  const bad = await cliJsonAsync(['pull', `${o.url}/images/${o.evil}`, '--repo', receiver]);
  t.is(bad.status, 1);
  t.is(bad.result.error.code, 'OSFARM_UNTRUSTED');
  nothingAssembled(t, receiver);
  const good = await cliJsonAsync(['pull', `${o.url}/images/app`, '--repo', receiver]);
  t.is(good.status, 0, good.stderr);
  t.is(good.result.digest, o.app);
  t.regex(good.result.signedBy, /^[0-9A-F]{16}$/);
});

test('a name that moves is said aloud and kept: repo add prints the move, images history lists every holder', (t) => {
  const dir = tempDir(t, 'osfarm-trust-names-');
  const repo = join(dir, 'repo');
  Repository.init(repo);
  writeFileSync(join(dir, 'a.img'), pseudoRandom(100_000, 1));
  writeFileSync(join(dir, 'b.img'), pseudoRandom(100_000, 2));
  const a = cliJson(['repo', 'add', join(dir, 'a.img'), '--name', 'app', '--repo', repo]);
  const b = cli(['--json', 'repo', 'add', join(dir, 'b.img'), '--name', 'app', '--repo', repo]);
  t.is(b.status, 0, b.stderr);
  const events = b.stdout.trim().split('\n').map((l) => JSON.parse(l));
  const bDigest = outcome(events[events.length - 1])[0].digest;
  t.like(events.find((e) => e.type === 'name-moved'), { name: 'app', previous: a.result[0].digest, digest: bDigest, via: 'add' });
  const human = cli(['repo', 'add', join(dir, 'a.img'), '--name', 'app', '--repo', repo]);
  t.regex(human.stderr, new RegExp(`tag 'app' moved from ${bDigest} to ${a.result[0].digest}`));
  const h = cliJson(['images', 'history', 'app', '--repo', repo]).result;
  t.is(h.current, a.result[0].digest);
  t.deepEqual(
    h.moves.map((m: { digest: string; previous: string | null }) => [m.digest, m.previous]),
    [
      [a.result[0].digest, null],
      [bDigest, a.result[0].digest],
      [a.result[0].digest, bDigest],
    ],
  );
  t.deepEqual(cliJson(['images', 'history', 'nothing', '--repo', repo]).result, { name: 'nothing', current: null, moves: [] });
});
