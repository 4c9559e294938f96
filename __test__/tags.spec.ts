/**
 * Tags (docs/repository-format.md, docs/trust.md): an image carries several; `osfarm images
 * tag|untag` move and remove them, said aloud and kept in the history; a repository written
 * before tags opens and is upgraded by its next commit; push and pull carry every tag; and
 * `pull --trust` of a tag that moved away from an image refuses that image. The real CLI on
 * real repositories, the real receiver and HTTP server on loopback.
 */
import test, { type ExecutionContext } from 'ava';
import { cpSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';

import { Repository } from '../src/repo/index.js';
import { createPullHandler, listenHttp } from '../src/transfer/http/serve.js';
import { Receiver } from '../src/transfer/push/receive.js';
import { generateKeys } from '../src/trust/keys.js';
import { readManifest } from '../src/trust/manifest.js';
import { cli, cliJson, cliJsonAsync, pseudoRandom, tempDir } from './helpers/tmp.js';

const FIXTURE_V1 = join(import.meta.dirname, 'fixtures', 'repo-v1');

/** `repo ls --json`: each image's digest and tags. */
function tagsOf(repo: string): Record<string, string[]> {
  const r = cliJson(['repo', 'ls', '--repo', repo]);
  if (r.status !== 0) throw new Error(r.stderr);
  return Object.fromEntries(r.result.images.map((e: { digest: string; tags: string[] }) => [e.digest, e.tags]));
}

function catalogVersion(repo: string): number {
  return readFileSync(join(repo, 'catalog.osfc')).readUInt32LE(8);
}

/** A repository holding two images, "app" and "other" (signed, when `signed`). */
function twoImages(t: ExecutionContext, signed = false): { dir: string; repo: string; a: string; b: string; pub?: string } {
  const dir = tempDir(t, 'osfarm-tags-');
  const repo = join(dir, 'repo');
  Repository.init(repo);
  const pub = signed ? generateKeys(repo).path : undefined;
  writeFileSync(join(dir, 'a.img'), pseudoRandom(300_000, 1));
  writeFileSync(join(dir, 'b.img'), pseudoRandom(200_000, 2));
  const a = cliJson(['repo', 'add', join(dir, 'a.img'), '--name', 'app', '--repo', repo]);
  const b = cliJson(['repo', 'add', join(dir, 'b.img'), '--name', 'other', '--repo', repo]);
  t.is(a.status + b.status, 0, a.stderr + b.stderr);
  return { dir, repo, a: a.result[0].digest, b: b.result[0].digest, ...(pub ? { pub } : {}) };
}

async function listen(t: ExecutionContext, server: Server): Promise<string> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

async function serve(t: ExecutionContext, repo: string): Promise<string> {
  const { server } = await listenHttp({ host: '127.0.0.1', port: 0, handlers: [createPullHandler({ repo })] });
  t.teardown(() => new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

test('images tag adds tags, moves one aloud, untag removes them; the history keeps every step; any tag resolves', (t) => {
  const { repo, a, b } = twoImages(t);
  const tagged = cliJson(['images', 'tag', 'app', 'app:1', 'stable', '--repo', repo]);
  t.is(tagged.status, 0, tagged.stderr);
  t.deepEqual(tagged.result.tags, ['app', 'app:1', 'stable']);
  for (const ref of ['app', 'app:1', 'stable', a.slice(0, 8)]) t.is(cliJson(['repo', 'show', ref, '--repo', repo]).result.digest, a, ref);
  t.deepEqual(tagsOf(repo), { [a]: ['app', 'app:1', 'stable'], [b]: ['other'] });

  // A move is said aloud (stderr; an event with --json) and the tag leaves the other image.
  const human = cli(['images', 'tag', b.slice(0, 10), 'stable', '--repo', repo]);
  t.is(human.status, 0, human.stderr);
  t.regex(human.stderr, new RegExp(`tag 'stable' moved from ${a} to ${b}`));
  t.regex(human.stdout, new RegExp(`${b}: other, stable`));
  const back = cli(['--json', 'images', 'tag', 'app', 'stable', '--repo', repo]);
  const events = back.stdout.trim().split('\n').map((l) => JSON.parse(l));
  t.like(events.find((e) => e.type === 'name-moved'), { name: 'stable', digest: a, previous: b, via: 'tag' });
  t.deepEqual(tagsOf(repo), { [a]: ['app', 'app:1', 'stable'], [b]: ['other'] });
  // Tagging with a tag the image has already changes nothing and records nothing.
  t.deepEqual(cliJson(['images', 'tag', 'app', 'stable', '--repo', repo]).result.moves, []);

  // Untag: the image stays, by digest and its other tags; with no tag left too.
  t.deepEqual(cliJson(['images', 'untag', 'app:1', 'stable', '--repo', repo]).result.tags, ['app']);
  const last = cli(['images', 'untag', 'app', '--repo', repo]);
  t.is(last.status, 0, last.stderr);
  t.regex(last.stdout, /no tags left: still in the repository by its digest/);
  t.deepEqual(tagsOf(repo), { [a]: [], [b]: ['other'] });
  t.is(cliJson(['repo', 'show', a, '--repo', repo]).result.digest, a);
  const gone = cliJson(['repo', 'show', 'app', '--repo', repo]);
  t.is(gone.status, 1);
  t.is(gone.result.error.code, 'OSFARM_NOT_FOUND');
  t.is(cliJson(['images', 'untag', 'app', '--repo', repo]).result.error.code, 'OSFARM_NOT_FOUND');
  t.is(cliJson(['images', 'tag', 'other', ' padded', '--repo', repo]).result.error.code, 'OSFARM_INVALID_ARGUMENT');

  const history = (tag: string) => cliJson(['images', 'history', tag, '--repo', repo]).result;
  const steps = (tag: string) => history(tag).moves.map((m: { digest: string | null; previous: string | null; via: string }) => [m.via, m.digest, m.previous]);
  t.deepEqual(steps('stable'), [
    ['tag', a, null],
    ['tag', b, a],
    ['tag', a, b],
    ['untag', null, a],
  ]);
  t.is(history('stable').current, null);
  t.deepEqual(steps('app'), [
    ['add', a, null],
    ['untag', null, a],
  ]);
  t.is(history('other').current, b);
  t.regex(cli(['images', 'history', 'stable', '--repo', repo]).stdout, /untag\s+\(removed\)/);
  // Removing an image takes its tags with it, and the history says so.
  t.is(cliJson(['repo', 'rm', 'other', '--repo', repo]).status, 0);
  t.deepEqual(steps('other').at(-1), ['rm', null, b]);
  t.is(history('other').current, null);
});

test('a repository written before tags (catalog version 1, made by the old CLI) opens; its next commit writes version 2', (t) => {
  const repo = join(tempDir(t), 'repo');
  cpSync(FIXTURE_V1, repo, { recursive: true });
  mkdirSync(join(repo, 'tmp'), { recursive: true });
  t.is(catalogVersion(repo), 1);
  const before = tagsOf(repo);
  t.deepEqual(Object.values(before), [['base:1'], ['app']]);
  const [base, app] = Object.keys(before) as [string, string];
  t.is(catalogVersion(repo), 1, 'reading rewrites nothing');
  t.is(cliJson(['repo', 'show', 'base:1', '--repo', repo]).result.digest, base);
  t.is(cliJson(['repo', 'verify', '--repo', repo]).result.verified, 2);
  // The names the old code recorded are the tags' history.
  t.is(cliJson(['images', 'history', 'app', '--repo', repo]).result.current, app);

  t.deepEqual(cliJson(['images', 'tag', 'app', 'app:2', '--repo', repo]).result.tags, ['app', 'app:2']);
  t.is(catalogVersion(repo), 2);
  t.deepEqual(tagsOf(repo), { [base]: ['base:1'], [app]: ['app', 'app:2'] });
  t.deepEqual(JSON.parse(readFileSync(join(repo, 'images', app, 'meta.json'), 'utf8')).tags, ['app', 'app:2']);
});

test('push and pull carry every tag: the receiver shows the tags the origin shows, and any tag pulls', async (t) => {
  const o = twoImages(t, true);
  t.is(cliJson(['images', 'tag', 'app', 'app:1', 'stable', '--repo', o.repo]).status, 0);
  const origin = tagsOf(o.repo);
  t.deepEqual(origin[o.a], ['app', 'app:1', 'stable']);

  // Push, to a receiver that requires the origin's signature: the tags must be the signed ones.
  const pushedTo = join(o.dir, 'pushed');
  const receiver = new Receiver({ repo: pushedTo, insecure: true, trust: [o.pub!] });
  const addr = await receiver.listen('127.0.0.1', 0);
  t.teardown(() => receiver.close());
  const pushed = await cliJsonAsync(['push', 'app:1', `127.0.0.1:${addr.port}`, '--repo', o.repo, '--insecure']);
  t.is(pushed.status, 0, pushed.stderr);
  t.deepEqual(pushed.result.tags, ['app', 'app:1', 'stable']);
  t.deepEqual(tagsOf(pushedTo), { [o.a]: ['app', 'app:1', 'stable'] });
  t.deepEqual(cliJson(['images', 'history', 'stable', '--repo', pushedTo]).result.moves.map((m: { via: string }) => m.via), ['receive']);

  // Pull, verified, by any tag; and by digest: the same tags arrive.
  const url = await serve(t, o.repo);
  for (const [ref, into] of [['stable', 'pulled-by-tag'], [o.a, 'pulled-by-digest']] as const) {
    const to = join(o.dir, into);
    const pulled = await cliJsonAsync(['pull', `${url}/images/${encodeURIComponent(ref)}`, '--repo', to, '--trust', o.pub!]);
    t.is(pulled.status, 0, pulled.stderr);
    t.deepEqual(pulled.result.tags, ['app', 'app:1', 'stable']);
    t.deepEqual(tagsOf(to), { [o.a]: ['app', 'app:1', 'stable'] }, into);
  }
  // The served listing and meta.json say the same.
  const listing = (await (await fetch(`${url}/v1/images.json`)).json()) as { images: { digest: string; tags: string[] }[] };
  t.deepEqual(listing.images.find((i) => i.digest === o.a)?.tags, ['app', 'app:1', 'stable']);
});

test('pull --trust of a tag a cache still points at the image it moved away from is refused; the origin re-signed both', async (t) => {
  const o = twoImages(t, true);
  t.is(cliJson(['images', 'tag', 'app', 'stable', '--repo', o.repo]).status, 0);
  const staleMeta = readFileSync(join(o.repo, 'images', o.a, 'meta.json'));
  // The tag moves to the other image: both images are re-signed with their new tags.
  t.is(cliJson(['images', 'tag', 'other', 'stable', '--repo', o.repo]).status, 0);
  using r = Repository.open(o.repo);
  t.deepEqual(readManifest(r.resolve(o.a))?.manifest.tags, ['app']);
  t.deepEqual(readManifest(r.resolve(o.b))?.manifest.tags, ['other', 'stable']);

  // A cache that kept the old answer for "stable" (app's meta.json) in front of the origin.
  const url = await serve(t, o.repo);
  const cache = createServer((req, res) => {
    if (req.url === '/images/stable/meta.json') {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': staleMeta.length });
      return void res.end(staleMeta);
    }
    const up = request(`${url}${req.url}`, { method: req.method, headers: req.headers }, (ur) => {
      res.writeHead(ur.statusCode ?? 502, ur.headers);
      ur.pipe(res);
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  const cached = await listen(t, cache);
  const to = join(o.dir, 'node');
  const refused = await cliJsonAsync(['pull', `${cached}/images/stable`, '--repo', to, '--trust', o.pub!]);
  t.is(refused.status, 1);
  t.is(refused.result.error.code, 'OSFARM_UNTRUSTED');
  t.regex(refused.result.error.message, new RegExp(`resolved tag 'stable' to image ${o.a}, which was signed as 'app'`));
  // Without --trust the stale answer goes through (what the signature protects against).
  const fooled = await cliJsonAsync(['pull', `${cached}/images/stable`, '--repo', join(o.dir, 'fooled')]);
  t.is(fooled.result.digest, o.a);
  // From the origin itself the tag pulls the image that has it now.
  const honest = await cliJsonAsync(['pull', `${url}/images/stable`, '--repo', to, '--trust', o.pub!]);
  t.is(honest.status, 0, honest.stderr);
  t.is(honest.result.digest, o.b);
  t.deepEqual(honest.result.tags, ['other', 'stable']);
});
