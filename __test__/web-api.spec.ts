/**
 * The web API over real HTTP on loopback, against a real repository, stage store, apt
 * package index, push receiver and (failing fast, on an empty local mirror) build jobs.
 * Each test names the routes it exercises and checks that it got past authentication on
 * each of them; the last test checks that the tests name every route of the OpenAPI
 * document (so it holds whichever tests run, in any order).
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { createServer } from 'node:net';
import { join } from 'node:path';

import test, { type ExecutionContext } from 'ava';

import { FarmClient } from '../src/farm/client.js';
import { FarmWorker } from '../src/farm/worker.js';
import { canonicalSpec, parseSpec, specDigest, specFromObject } from '../src/spec/index.js';
import { specToXml } from '../src/spec/index.js';
import { Repository } from '../src/repo/index.js';
import { nameHistory } from '../src/trust/names.js';
import { StageStore, stageTag } from '../src/stages/index.js';
import { Receiver } from '../src/transfer/push/receive.js';
import { serve, type OsfarmServer } from '../src/web/index.js';
import { localArchive } from './helpers/apt-archive.js';
import { tempDir, writeBlocks } from './helpers/tmp.js';

let documented: { method: string; path: RegExp; name: string }[] = [];
/** The routes the tests of this file say they exercise ("GET /api/images/{ref}"). */
const declared = new Set<string>();
/** The routes each running test reached past authentication. */
const reached = new WeakMap<object, Set<string>>();

interface Ctx {
  s: OsfarmServer;
  token: string;
  dir: string;
  repo: string;
  reached: Set<string>;
}

/** fetch against the server, recording which documented route it reached (a 401 did not). */
async function call(c: Ctx, method: string, path: string, opts: { body?: unknown; token?: string | null; headers?: Record<string, string> } = {}): Promise<Response> {
  const headers: Record<string, string> = { ...(opts.headers ?? {}) };
  const token = opts.token === undefined ? c.token : opts.token;
  if (token !== null) headers.authorization = `Bearer ${token}`;
  if (opts.body !== undefined) headers['content-type'] = 'application/json';
  const r = await fetch(`${c.s.url}${path}`, { method, headers, body: opts.body === undefined ? undefined : JSON.stringify(opts.body) });
  const pathname = new URL(path, 'http://x').pathname;
  if (r.status !== 401) for (const d of documented) if (d.method === method && d.path.test(pathname)) c.reached.add(d.name);
  return r;
}

/** A serial test that exercises `routes`: it fails if any of them was not reached. */
function webTest(title: string, routes: string[], fn: (t: ExecutionContext) => Promise<void>): void {
  for (const r of routes) declared.add(r);
  test.serial(title, async (t) => {
    await fn(t);
    const seen = reached.get(t) ?? new Set<string>();
    t.deepEqual(routes.filter((r) => !seen.has(r)), [], 'routes this test names but did not reach');
    if (process.env.OSFARM_TEST_ROUTES) t.log([...seen].sort().join('\n'));
  });
}

async function json<T = any>(r: Response): Promise<T> {
  return (await r.json()) as T;
}

const SPEC = { distribution: 'debian', release: 'bookworm', architecture: 'amd64', groups: ['minbase'], packages: ['hello'], name: 'web-test' };

/** A repository holding two small images with build metadata, sharing two of four blocks. */
function seedRepository(dir: string): { repo: string; a: string; b: string; spec: ReturnType<typeof specFromObject> } {
  const repo = join(dir, 'repo');
  const r = Repository.init(repo);
  const spec = specFromObject(SPEC);
  // b changes libc6, removes hello and adds less (what the builder reads from the tree's dpkg database).
  const installed = {
    a: [{ name: 'hello', version: '2.10-3', arch: 'amd64', source: 'hello' }, { name: 'libc6', version: '2.36-9', arch: 'amd64', source: 'glibc' }],
    b: [{ name: 'less', version: '590-2', arch: 'amd64', source: 'less' }, { name: 'libc6', version: '2.36-9+deb12u1', arch: 'amd64', source: 'glibc' }],
  };
  const meta = (name: 'a' | 'b') => ({ kind: 'osfarm-build', builder: 'test', backend: 'mmdebstrap', format: 'tar', sourceDateEpoch: null, specDigest: specDigest(spec), spec: canonicalSpec(spec), specXml: specToXml(spec), buildLog: { path: join(dir, `${name}.log`), tail: `osfarm: building ${name}\nosfarm: done` }, installed: installed[name] });
  writeBlocks(join(dir, 'a.img'), [1, 2, 3, 4]);
  writeBlocks(join(dir, 'b.img'), [3, 4, 5, 6, 0]);
  const a = r.addSync(join(dir, 'a.img'), { name: 'a.tar', meta: meta('a') }).digest;
  const b = r.addSync(join(dir, 'b.img'), { name: 'b.tar', meta: meta('b') }).digest;
  return { repo, a, b, spec };
}

async function start(t: ExecutionContext, opts: { readOnly?: boolean; maxQueuedBuilds?: number } = {}): Promise<Ctx & { a: string; b: string; spec: ReturnType<typeof specFromObject> }> {
  const dir = tempDir(t, 'osfarm-web-api-');
  const seeded = seedRepository(dir);
  const s = await serve({ repo: seeded.repo, tokenFile: join(dir, 'etc', 'token'), workDir: join(dir, 'work'), stages: join(dir, 'stages'), pull: false, ...opts });
  t.teardown(() => s.close());
  if (documented.length === 0) {
    const doc = (await (await fetch(`${s.url}/api/openapi.json`)).json()) as { paths: Record<string, Record<string, unknown>> };
    documented = Object.entries(doc.paths).flatMap(([p, ops]) =>
      Object.keys(ops).map((m) => ({ method: m.toUpperCase(), name: `${m.toUpperCase()} ${p}`, path: new RegExp(`^${p.replace(/\{[^}]+\}/g, '[^/]+')}$`) })),
    );
  }
  if (!reached.has(t)) reached.set(t, new Set());
  return { s, token: s.web.token.value, dir, reached: reached.get(t)!, ...seeded };
}

/** Reads a job's SSE stream to its end and returns the events. */
async function events(c: Ctx, id: string): Promise<{ event: string; data: any; id?: string }[]> {
  const r = await call(c, 'GET', `/api/jobs/${id}/events`);
  if (r.status !== 200) throw new Error(`events: ${r.status}`);
  const text = await r.text();
  return text
    .split('\n\n')
    .filter((b) => b.trim() && !b.startsWith(':'))
    .map((block) => {
      const get = (k: string) => block.split('\n').find((l) => l.startsWith(`${k}: `))?.slice(k.length + 2);
      return { event: get('event')!, data: JSON.parse(get('data') ?? 'null'), id: get('id') };
    });
}

webTest('the token file is created once with mode 0600 and refused when others can read it', [], async (t) => {
  const c = await start(t);
  const file = join(c.dir, 'etc', 'token');
  t.is(statSync(file).mode & 0o777, 0o600);
  t.true(c.s.web.token.created);
  t.is(readFileSync(file, 'utf8').trim(), c.token);
  const again = await serve({ repo: c.repo, tokenFile: file, workDir: join(c.dir, 'work'), pull: false });
  t.teardown(() => again.close());
  t.false(again.web.token.created);
  t.is(again.web.token.value, c.token);
  chmodSync(file, 0o644);
  const err = await t.throwsAsync(serve({ repo: c.repo, tokenFile: file, pull: false }));
  t.is((err as any).code, 'OSFARM_UNAUTHORIZED');
  t.regex(err!.message, /chmod 600/);
});

webTest('every route but the session refuses requests without the token or with a wrong one', [], async (t) => {
  const c = await start(t);
  const doc = await json(await call(c, 'GET', '/api/openapi.json', { token: null }));
  let checked = 0;
  for (const [p, ops] of Object.entries(doc.paths as Record<string, Record<string, { security: object[] }>>)) {
    for (const [m, op] of Object.entries(ops)) {
      const open = op.security.length === 1 && Object.keys(op.security[0]!).length === 0;
      if (open) continue;
      const path = p.replace('{ref}', c.a).replace('{id}', '000000000000');
      for (const token of [null, 'not-the-token']) {
        const r = await call(c, m.toUpperCase(), path, { token, body: m === 'get' || m === 'delete' ? undefined : { spec: SPEC, maxSize: '1G', image: c.a, address: '127.0.0.1:1', url: 'http://127.0.0.1:1/images/x', insecure: true } });
        t.is(r.status, 401, `${m} ${path} with ${token ?? 'no token'}`);
        t.is((await json(r)).error.code, 'OSFARM_UNAUTHORIZED');
        t.regex(r.headers.get('www-authenticate') ?? '', /^Bearer/);
      }
      checked++;
    }
  }
  t.true(checked >= 18, `${checked} routes checked`);
  // The scheme is case-insensitive (RFC 7235).
  for (const scheme of ['bearer', 'BEARER', 'Bearer']) {
    const r = await fetch(`${c.s.url}/api/images`, { headers: { authorization: `${scheme} ${c.token}` } });
    t.is(r.status, 200, scheme);
  }
  t.deepEqual((await json(await call(c, 'GET', '/api/jobs'))).jobs, [], 'no refused request started a job');
  // Nothing was removed by the refused DELETE.
  t.is(Repository.open(c.repo).list().length, 2);
  const cross = await call(c, 'POST', '/api/stages/gc', { body: { maxSize: '1G' }, headers: { origin: 'http://elsewhere.invalid' } });
  t.is(cross.status, 401);
  // The page and the API documents need no token.
  t.is((await call(c, 'GET', '/', { token: null })).status, 200);
  t.is((await call(c, 'GET', '/api/docs', { token: null })).status, 200);
  const unknown = await call(c, 'GET', '/api/nothing-here');
  t.is(unknown.status, 404);
  const wrongMethod = await call(c, 'PUT', '/api/images');
  t.is(wrongMethod.status, 405);
});

webTest('a session cookie from POST /api/session authorizes the browser; a wrong token gets none', ['GET /api/session', 'POST /api/session', 'DELETE /api/session'], async (t) => {
  const c = await start(t);
  const wrong = await call(c, 'POST', '/api/session', { token: null, body: { token: 'nope' } });
  t.is(wrong.status, 401);
  t.is(wrong.headers.get('set-cookie'), null);
  const ok = await call(c, 'POST', '/api/session', { token: null, body: { token: c.token } });
  t.is(ok.status, 200);
  const cookie = ok.headers.get('set-cookie')!;
  t.regex(cookie, /HttpOnly/);
  t.regex(cookie, /SameSite=Strict/);
  const pair = cookie.split(';')[0]!;
  const session = await json(await call(c, 'GET', '/api/session', { token: null, headers: { cookie: pair } }));
  t.deepEqual(session, { authorized: true, readOnly: false });
  t.is((await call(c, 'GET', '/api/images', { token: null, headers: { cookie: pair } })).status, 200);
  // A second server on the same host (browsers share cookies across its ports) names its cookie differently.
  const other = await start(t);
  const otherCookie = (await call(other, 'POST', '/api/session', { token: null, body: { token: other.token } })).headers.get('set-cookie')!.split(';')[0]!;
  t.regex(pair, /^osfarm_[0-9a-f]{12}=/);
  t.not(otherCookie.split('=')[0], pair.split('=')[0]);
  const both = `${pair}; ${otherCookie}`;
  t.true((await json(await call(c, 'GET', '/api/session', { token: null, headers: { cookie: both } }))).authorized);
  t.true((await json(await call(other, 'GET', '/api/session', { token: null, headers: { cookie: both } }))).authorized);
  t.false((await json(await call(other, 'GET', '/api/session', { token: null, headers: { cookie: pair } }))).authorized);
  const out = await call(c, 'DELETE', '/api/session', { token: null, headers: { cookie: pair } });
  t.regex(out.headers.get('set-cookie')!, /Max-Age=0/);
});

webTest('read-only browsing: reading needs no token, changing still does', ['GET /api/images', 'GET /api/stages'], async (t) => {
  const c = await start(t, { readOnly: true });
  t.deepEqual(await json(await call(c, 'GET', '/api/session', { token: null })), { authorized: false, readOnly: true });
  const list = await call(c, 'GET', '/api/images', { token: null });
  t.is(list.status, 200);
  t.is((await json(list)).images.length, 2);
  // Every route the document marks readable answers without the token; every other one refuses.
  const doc = await json(await call(c, 'GET', '/api/openapi.json', { token: null }));
  for (const [p, ops] of Object.entries(doc.paths as Record<string, Record<string, { security: object[] }>>)) {
    for (const [m, op] of Object.entries(ops)) {
      if (op.security.length === 1 || p.endsWith('/events')) continue;
      const readable = op.security.some((s) => Object.keys(s).length === 0);
      const path = p.replace('{ref}', c.b).replace('{id}', '000000000000');
      const q = p === '/api/compare' ? '?a=a.tar&b=b.tar' : p === '/api/packages' ? '?distribution=debian&release=bookworm&architecture=amd64&q=hello' : '';
      const r = await call(c, m.toUpperCase(), `${path}${q}`, { token: null, body: m === 'post' ? { spec: SPEC, maxSize: '1G' } : undefined });
      if (readable) t.not(r.status, 401, `${m} ${p} is readable`);
      else t.is(r.status, 401, `${m} ${p} needs the token`);
    }
  }
  t.is((await call(c, 'DELETE', `/api/images/${c.a}`, { token: null })).status, 401);
  t.is((await call(c, 'DELETE', `/api/images/${c.a}`)).status, 200);
});

webTest('catalog: distributions with releases, groups and whether they build here; architectures', ['GET /api/distributions'], async (t) => {
  const c = await start(t);
  const cat = await json(await call(c, 'GET', '/api/distributions'));
  const debian = cat.distributions.find((d: any) => d.name === 'debian');
  t.true(debian.buildable);
  t.true(debian.releases.includes('bookworm'));
  t.false(debian.releases.includes('stable'), 'aliases are not releases');
  t.true(debian.groups.includes('minbase'));
  const fedora = cat.distributions.find((d: any) => d.name === 'fedora');
  // The RPM driver's own check: it builds here (dnf installed) given repository mirrors.
  if (fedora.buildable) t.regex(fedora.needs, /spec\.mirrors/);
  else t.regex(fedora.reason, /dnf|yum/);
  t.true(cat.architectures.some((a: any) => a.name === 'amd64' && a.native));
});

webTest("package search reads the distribution's real index through apt", ['GET /api/packages'], async (t) => {
  const c = await start(t);
  const r = await call(c, 'GET', '/api/packages?distribution=debian&release=bookworm&architecture=amd64&q=hello');
  t.is(r.status, 200);
  const body = await json(r);
  t.is(body.index.source, 'host');
  t.true(body.index.count > 10_000, `${body.index.count} packages in bookworm`);
  t.is(body.results[0].name, 'hello');
  t.regex(body.results[0].version, /^\d/);
  t.true(body.results.every((p: any) => p.name.includes('hello') || p.description.toLowerCase().includes('hello')));
  const bad = await call(c, 'GET', '/api/packages?distribution=plan9&release=4&architecture=amd64&q=x');
  t.is(bad.status, 400);
  t.is((await json(bad)).error.code, 'OSFARM_INVALID_ARGUMENT');
  const rpm = await call(c, 'GET', '/api/packages?distribution=fedora&release=41&architecture=amd64&q=x');
  t.is(rpm.status, 404);
  t.regex((await json(rpm)).error.message, /type the package names/);
  const missing = await call(c, 'GET', '/api/packages?distribution=debian&architecture=amd64&q=x');
  t.is(missing.status, 400);
  const unknown = await call(c, 'GET', '/api/packages?distribution=debian&release=nosuchrelease&architecture=amd64&q=x');
  t.is(unknown.status, 404);
  t.regex((await json(unknown)).error.message, /not a release of debian/);
  t.deepEqual(readdirSync(join(c.dir, 'work', 'cache', 'apt-indexes')).filter((n) => n.includes('nosuchrelease')), [], 'apt was not asked about an unknown release');
});

webTest("package search fetches another architecture's index through apt's configured sources, once", ['GET /api/packages'], async (t) => {
  const c = await start(t);
  const r = await call(c, 'GET', '/api/packages?distribution=debian&release=bookworm&architecture=arm64&q=hello');
  const body = await json(r);
  t.is(r.status, 200, JSON.stringify(body));
  t.is(body.index.source, 'fetched');
  t.is(body.index.architecture, 'arm64');
  t.true(body.index.files.every((f: string) => f.startsWith(join(c.dir, 'work', 'cache', 'apt-indexes')) && f.includes('arm64')));
  t.is(body.results[0].name, 'hello');
  const again = await json(await call(c, 'GET', '/api/packages?distribution=debian&release=bookworm&architecture=arm64&q=curl'));
  t.deepEqual(again.index.files, body.index.files);
  t.true(again.results.some((p: any) => p.name === 'curl'));
});

webTest('spec check: the request checksum, the canonical spec and the images already built', ['POST /api/specs/check'], async (t) => {
  const c = await start(t);
  const r = await call(c, 'POST', '/api/specs/check', { body: { spec: { ...SPEC, packages: ['hello', 'hello'] } } });
  t.is(r.status, 200);
  const body = await json(r);
  t.is(body.specDigest, specDigest(c.spec));
  t.deepEqual(body.built.map((i: any) => i.digest).sort(), [c.a, c.b].sort());
  const yaml = await json(await call(c, 'POST', '/api/specs/check', { body: { text: 'distribution: debian\nrelease: bookworm\narchitecture: amd64\ngroups: [minbase]\npackages: [hello]\nname: web-test\n', format: 'yaml' } }));
  t.is(yaml.specDigest, body.specDigest);
  const other = await json(await call(c, 'POST', '/api/specs/check', { body: { spec: { ...SPEC, packages: ['curl'] } } }));
  t.not(other.specDigest, body.specDigest);
  t.deepEqual(other.built, []);
  // A parent named by an image in the repository.
  const child = await json(await call(c, 'POST', '/api/specs/check', { body: { spec: { parent: 'a.tar', packages: ['curl'], name: 'child' } } }));
  t.is(child.spec.distribution, 'debian');
});

webTest('invalid specs are refused with the field named, and a web spec cannot read server files', ['POST /api/specs/check', 'POST /api/builds'], async (t) => {
  const c = await start(t);
  const cases: [unknown, RegExp][] = [
    [{ spec: { ...SPEC, distribution: 'plan9' } }, /spec\.distribution/],
    [{ spec: { ...SPEC, packages: ['Not A Package'] } }, /spec\.packages\[0\]/],
    [{ spec: { ...SPEC, pakages: ['x'] } }, /did you mean packages/],
    [{ spec: { ...SPEC, files: [{ destination: '/etc/x', source: '/etc/shadow' }] } }, /spec\.files\[0\]\.source/],
    [{ spec: { ...SPEC, parent: '/etc/osfarm/base.yaml' } }, /spec\.parent/],
    [{ text: 'distribution: [', format: 'yaml' }, /not valid YAML/],
    // Against the release catalogue and the real package index, with the closest names.
    [{ spec: { ...SPEC, packages: ['helo'] } }, /^spec\.packages\[0\]: "helo" is not a package of debian bookworm \(amd64\) \(did you mean [^)]*\bhello\b/],
    [{ spec: { ...SPEC, release: 'bookwrm' } }, /^spec\.release: "bookwrm" is not a release of debian \(did you mean bookworm\?\)/],
    // Refused safely by the parsers, and as spec errors (422), not internal ones (500).
    [{ text: '<?xml version="1.0"?><!DOCTYPE image [<!ENTITY x SYSTEM "file:///etc/passwd">]><image><name>&x;</name></image>', format: 'xml' }, /not valid XML: External entities/],
    [{ text: Array.from({ length: 9 }, (_, i) => (i === 0 ? 'a0: &a0 [l, l, l, l, l, l, l, l, l]' : `a${i}: &a${i} [${Array(9).fill(`*a${i - 1}`).join(', ')}]`)).join('\n'), format: 'yaml' }, /Excessive alias count/],
  ];
  for (const path of ['/api/specs/check', '/api/builds']) {
    for (const [body, re] of cases) {
      const r = await call(c, 'POST', path, { body });
      t.is(r.status, 422, `${path} ${JSON.stringify(body)}`);
      const e = (await json(r)).error;
      t.is(e.code, 'OSFARM_BAD_SPEC');
      t.regex(e.message, re);
      t.true(Array.isArray(e.issues));
    }
  }
  const notJson = await fetch(`${c.s.url}/api/builds`, { method: 'POST', headers: { authorization: `Bearer ${c.token}`, 'content-type': 'application/json' }, body: '{nope' });
  t.is(notJson.status, 400);
  const noSpec = await call(c, 'POST', '/api/builds', { body: { nothing: true } });
  t.is(noSpec.status, 400);
  t.deepEqual((await json(await call(c, 'GET', '/api/jobs'))).jobs, [], 'no job was queued');
});

webTest('build jobs: bounded queue, live events over SSE, cancel, failure with its code', ['POST /api/builds', 'GET /api/jobs', 'GET /api/jobs/{id}', 'GET /api/jobs/{id}/events', 'DELETE /api/jobs/{id}'], async (t) => {
  const c = await start(t, { maxQueuedBuilds: 1 });
  // A local mirror whose index lists hello but holds no .deb: the spec passes the up-front
  // check, the build starts for real and mmdebstrap fails fast, touching nothing outside.
  const spec = { ...SPEC, mirrors: [localArchive(join(c.dir, 'mirror'), ['hello'])], gpgCheck: false };
  const first = await call(c, 'POST', '/api/builds', { body: { spec } });
  t.is(first.status, 202);
  const job = await json(first);
  t.is(first.headers.get('location'), `/api/jobs/${job.id}`);
  const second = await json(await call(c, 'POST', '/api/builds', { body: { spec: { ...spec, name: 'second' } } }));
  const third = await call(c, 'POST', '/api/builds', { body: { spec: { ...spec, name: 'third' } } });
  t.is(third.status, 503);
  t.is((await json(third)).error.code, 'OSFARM_LOCKED');
  const queued = await json(await call(c, 'GET', `/api/jobs/${second.id}`));
  t.is(queued.state, 'queued');
  t.is(queued.position, 0);
  const cancel = await json(await call(c, 'DELETE', `/api/jobs/${second.id}`));
  t.true(cancel.cancelled);
  t.is(cancel.job.state, 'cancelled');

  const evs = await events(c, job.id);
  const types = evs.map((e) => e.event);
  t.is(types[0], 'state');
  t.is(evs[0]!.data.state, 'queued');
  t.true(types.includes('phase'), types.join(','));
  t.true(evs.some((e) => e.event === 'log' && /phase bootstrap|mmdebstrap/.test(e.data.line)));
  t.is(types[types.length - 1], 'end');
  const err = evs.find((e) => e.event === 'error')!;
  t.is(err.data.error.code, 'OSFARM_BUILD_FAILED');
  // mmdebstrap's own error line, not only "see the log".
  t.regex(err.data.error.message, /mmdebstrap failed \(exit \d+\): E: Failed to fetch file:.*hello_1\.0-1_amd64\.deb/);
  const done = await json(await call(c, 'GET', `/api/jobs/${job.id}`));
  t.is(done.state, 'failed');
  t.is(done.meta.specDigest, specDigest(specFromObject(spec)));
  // A late reader with Last-Event-ID gets only what it has not seen.
  const lastId = evs[evs.length - 3]!.id!;
  const tail = await (await call(c, 'GET', `/api/jobs/${job.id}/events`, { headers: { 'last-event-id': lastId } })).text();
  t.false(tail.includes(`id: ${lastId}\n`));
  t.true(tail.includes('event: end'));
  const again = await json(await call(c, 'DELETE', `/api/jobs/${job.id}`));
  t.false(again.cancelled, 'a finished job cannot be cancelled');
  t.is((await call(c, 'GET', '/api/jobs/000000000000')).status, 404);
  t.is((await call(c, 'GET', '/api/jobs/000000000000/events')).status, 404);
  const list = await json(await call(c, 'GET', '/api/jobs'));
  t.deepEqual(list.jobs.map((j: any) => j.id).sort(), [job.id, second.id].sort());
});

webTest('a build the repository already answers finishes at once with its images, writing nothing', ['POST /api/builds', 'GET /api/jobs/{id}/events'], async (t) => {
  const c = await start(t);
  const job = await json(await call(c, 'POST', '/api/builds', { body: { spec: SPEC } }));
  const evs = await events(c, job.id);
  const result = evs.find((e) => e.event === 'result')?.data.result;
  t.truthy(result, JSON.stringify(evs.find((e) => e.event === 'error')));
  t.true(result.cached);
  t.deepEqual(result.outputs.map((o: any) => o.digest), [c.b]);
  t.deepEqual(evs.filter((e) => e.event === 'output').map((e) => e.data.output.digest), [c.b]);
  t.true(evs.some((e) => e.event === 'log' && /already in the repository/.test(e.data.line)));
  t.false(existsSync(join(c.dir, 'work', 'web-builds')));
  t.is(Repository.open(c.repo).list().length, 2);
});

webTest('a running build is cancelled and torn down', ['POST /api/builds', 'GET /api/jobs/{id}', 'GET /api/jobs/{id}/events', 'DELETE /api/jobs/{id}'], async (t) => {
  const c = await start(t);
  // A mirror on loopback that serves its index (so the spec passes the up-front check and
  // mmdebstrap starts) but never answers for a package: apt waits there until the cancel.
  const archive = join(c.dir, 'mirror');
  localArchive(archive, ['hello']);
  const sockets = new Set<import('node:net').Socket>();
  const mirror = createHttpServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    if (!path.startsWith('/debian/dists/')) return;
    try {
      res.end(readFileSync(join(archive, path.slice('/debian'.length))));
    } catch {
      res.writeHead(404).end();
    }
  });
  mirror.on('connection', (sock) => sockets.add(sock));
  await new Promise<void>((res) => mirror.listen(0, '127.0.0.1', res));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    mirror.close();
  });
  const port = (mirror.address() as import('node:net').AddressInfo).port;
  const r = await json(await call(c, 'POST', '/api/builds', { body: { spec: { ...SPEC, mirrors: [`http://127.0.0.1:${port}/debian`], gpgCheck: false } } }));
  const stream = await call(c, 'GET', `/api/jobs/${r.id}/events`);
  const reader = stream.body!.getReader();
  let seen = '';
  // mmdebstrap installs the packages in the chroot now: apt's download hangs there.
  while (!/event: log\ndata: [^\n]*osfarm: phase packages/.test(seen)) {
    const { value, done } = await reader.read();
    if (done) break;
    seen += Buffer.from(value).toString();
  }
  const cancel = await json(await call(c, 'DELETE', `/api/jobs/${r.id}`));
  t.true(cancel.cancelled);
  while (true) {
    const { value, done } = await reader.read();
    if (done) break;
    seen += Buffer.from(value).toString();
  }
  t.regex(seen, /"state":"cancelled"/);
  t.regex(seen, /event: end/);
  t.is((await json(await call(c, 'GET', `/api/jobs/${r.id}`))).error.code, 'OSFARM_ABORTED');
  const builds = join(c.dir, 'work', 'builds');
  t.deepEqual(existsSync(builds) ? readdirSync(builds) : [], [], 'no build tree is left');
});

webTest('images: list, details, spec as JSON and XML, log, download, delete', ['GET /api/images', 'GET /api/images/{ref}', 'GET /api/images/{ref}/spec.json', 'GET /api/images/{ref}/spec.xml', 'GET /api/images/{ref}/log', 'GET /api/images/{ref}/download', 'DELETE /api/images/{ref}'], async (t) => {
  const c = await start(t);
  const list = await json(await call(c, 'GET', '/api/images'));
  t.deepEqual(list.images.map((i: any) => i.name), ['b.tar', 'a.tar']);
  t.is(list.images[1].size, 4 * 4096);
  t.is(list.images[1].distribution, 'debian');
  t.deepEqual(list.images[1].packages, ['hello']);
  t.is(list.stats.images, 2);
  // An image built on another: its packages are the whole chain's, and which it adds itself.
  const child = specFromObject({ parent: SPEC, packages: ['jq'], name: 'child' });
  writeBlocks(join(c.dir, 'c.img'), [7]);
  using repo = Repository.open(c.repo);
  const childMeta = { kind: 'osfarm-build', builder: 'test', backend: 'mmdebstrap', format: 'tar', sourceDateEpoch: null, specDigest: specDigest(child), spec: canonicalSpec(child), specXml: specToXml(child) };
  const cDigest = repo.addSync(join(c.dir, 'c.img'), { name: 'c.tar', meta: childMeta }).digest;
  const withChild = (await json(await call(c, 'GET', '/api/images'))).images.find((i: any) => i.digest === cDigest);
  t.deepEqual(withChild.packages, ['hello', 'jq']);
  t.deepEqual(withChild.addedPackages, ['jq']);
  await repo.remove(cDigest);
  const one = await json(await call(c, 'GET', '/api/images/a.tar'));
  t.is(one.digest, c.a);
  t.is(one.meta.kind, 'osfarm-build');
  const specJson = await json(await call(c, 'GET', `/api/images/${c.a.slice(0, 8)}/spec.json`));
  t.deepEqual(specJson, JSON.parse(JSON.stringify(canonicalSpec(c.spec))));
  const xml = await (await call(c, 'GET', '/api/images/a.tar/spec.xml')).text();
  t.regex(xml, /<packages>\s*<package>hello<\/package>\s*<\/packages>/);
  t.is(specDigest(parseSpec(xml, 'xml')), specDigest(c.spec), 'the XML reads back as the same spec');
  const log = await (await call(c, 'GET', '/api/images/a.tar/log')).text();
  t.is(log, 'osfarm: building a\nosfarm: done');
  const dl = await call(c, 'GET', '/api/images/a.tar/download');
  t.is(dl.status, 200);
  t.regex(dl.headers.get('content-disposition')!, /filename="a\.tar"/);
  t.deepEqual(Buffer.from(await dl.arrayBuffer()), readFileSync(join(c.dir, 'a.img')));
  const missing = await call(c, 'GET', '/api/images/nothing-like-this');
  t.is(missing.status, 404);
  t.is((await json(missing)).error.code, 'OSFARM_NOT_FOUND');
  const del = await json(await call(c, 'DELETE', '/api/images/a.tar'));
  t.is(del.removed.digest, c.a);
  t.like(nameHistory(c.repo, 'a.tar').at(-1), { via: 'rm', digest: null, previous: c.a });
  t.is((await call(c, 'GET', '/api/images/a.tar')).status, 404);
  t.deepEqual(Repository.open(c.repo).list().map((i) => i.digest), [c.b]);
});

webTest('tags: add one (a tag another image had moves, in the history), remove one (the image stays); every tag resolves', ['POST /api/images/{ref}/tags', 'DELETE /api/images/{ref}/tags/{tag}'], async (t) => {
  const c = await start(t);
  const added = await json(await call(c, 'POST', `/api/images/${c.a.slice(0, 8)}/tags`, { body: { tag: 'stable' } }));
  t.deepEqual(added.image.tags, ['a.tar', 'stable']);
  t.deepEqual(added.moves.map((m: any) => [m.name, m.digest, m.previous, m.via]), [['stable', c.a, null, 'tag']]);
  t.is((await json(await call(c, 'GET', '/api/images/stable'))).digest, c.a);
  const moved = await json(await call(c, 'POST', '/api/images/b.tar/tags', { body: { tag: 'stable' } }));
  t.deepEqual(moved.image.tags, ['b.tar', 'stable']);
  t.is(moved.moves[0].previous, c.a);
  t.deepEqual((await json(await call(c, 'GET', '/api/images'))).images.map((i: any) => i.tags), [['b.tar', 'stable'], ['a.tar']]);
  const bad = await call(c, 'POST', '/api/images/b.tar/tags', { body: { tag: ' x' } });
  t.is(bad.status, 400);
  t.is((await call(c, 'POST', '/api/images/b.tar/tags', { body: {} })).status, 400);
  // Removing: only a tag the image carries; the image stays when none is left.
  t.is((await call(c, 'DELETE', '/api/images/a.tar/tags/stable')).status, 404);
  t.deepEqual((await json(await call(c, 'DELETE', '/api/images/b.tar/tags/stable'))).image.tags, ['b.tar']);
  t.deepEqual((await json(await call(c, 'DELETE', `/api/images/${c.a}/tags/a.tar`))).image.tags, []);
  t.is((await json(await call(c, 'GET', `/api/images/${c.a}`))).name, null);
  t.is((await call(c, 'GET', '/api/images/a.tar')).status, 404);
  t.deepEqual(
    nameHistory(c.repo, 'stable').map((m) => [m.via, m.digest]),
    [
      ['tag', c.a],
      ['tag', c.b],
      ['untag', null],
    ],
  );
});

webTest('packages: the diff between two images and an SBOM (SPDX, CycloneDX)', ['GET /api/compare/packages', 'GET /api/images/{ref}/sbom'], async (t) => {
  const c = await start(t);
  const d = await json(await call(c, 'GET', '/api/compare/packages?a=a.tar&b=b.tar'));
  t.deepEqual(d.added.map((p: any) => p.name), ['less']);
  t.deepEqual(d.removed.map((p: any) => p.name), ['hello']);
  t.deepEqual(d.changed, [{ name: 'libc6', arch: 'amd64', from: '2.36-9', to: '2.36-9+deb12u1' }]);
  const spdx = await json(await call(c, 'GET', '/api/images/b.tar/sbom'));
  t.is(spdx.spdxVersion, 'SPDX-2.3');
  t.deepEqual(spdx.packages.map((p: any) => p.name), ['web-test', 'less', 'libc6']);
  t.regex(spdx.packages[2].externalRefs[0].referenceLocator, /^pkg:deb\/debian\/libc6@2\.36-9%2Bdeb12u1\?arch=amd64&distro=debian-bookworm&upstream=glibc/);
  const cdx = await json(await call(c, 'GET', '/api/images/b.tar/sbom?format=cyclonedx'));
  t.is(cdx.bomFormat, 'CycloneDX');
  t.is(cdx.components.length, 2);
  t.is((await call(c, 'GET', '/api/images/b.tar/sbom?format=xml')).status, 400);
});

webTest('compare: common blocks both ways', ['GET /api/compare'], async (t) => {
  const c = await start(t);
  const r = await json(await call(c, 'GET', '/api/compare?a=a.tar&b=b.tar'));
  // a = blocks 1 2 3 4, b = 3 4 5 6 + a zero block: two of a's four are in b, two of b's four non-zero in a.
  t.is(r.a.blocks, 4);
  t.is(r.a.blocksInOther, 2);
  t.is(r.b.blocks, 5);
  t.is(r.b.zeroBlocks, 1);
  t.is(r.b.blocksInOther, 2);
  t.is(r.a.shareInOther, 0.5);
  t.is(r.images.a.name, 'a.tar');
  t.is((await call(c, 'GET', '/api/compare?a=a.tar')).status, 400);
  t.is((await call(c, 'GET', '/api/compare?a=a.tar&b=zzzz-none')).status, 404);
});

webTest('boot refuses what is not a disk, and bad options, before queueing a VM (boot.spec.ts boots a real one)', ['POST /api/images/{ref}/boot'], async (t) => {
  const c = await start(t);
  const notDisk = await call(c, 'POST', '/api/images/a.tar/boot', { body: {} });
  t.is(notDisk.status, 400);
  t.regex((await json(notDisk)).error.message, /not a disk/);
  const badFirmware = await call(c, 'POST', '/api/images/a.tar/boot', { body: { firmware: 'coreboot' } });
  t.is(badFirmware.status, 400);
  t.regex((await json(badFirmware)).error.message, /unknown firmware "coreboot": give uefi or bios/);
  t.is((await call(c, 'POST', '/api/images/zzzz-none/boot', { body: {} })).status, 404);
  t.deepEqual((await json(await call(c, 'GET', '/api/jobs'))).jobs, []);
});

webTest('stages: listing with sizes and hits, and GC', ['GET /api/stages', 'POST /api/stages/gc'], async (t) => {
  const c = await start(t);
  const empty = await json(await call(c, 'GET', '/api/stages'));
  t.deepEqual(empty.stages, []);
  const store = await StageStore.open({ root: join(c.dir, 'stages'), cow: 'copy', durable: false });
  const input = { config: { test: 'web' }, parentTag: null, driver: 'test', driverVersion: '1', source: null };
  const tag = stageTag(input);
  const made = await store.ensure(tag, null, async (dir) => writeFileSync(join(dir, 'file'), Buffer.alloc(100_000, 1)), { inputs: input, label: 'web test core' });
  await made.lease.release();
  const listed = await json(await call(c, 'GET', '/api/stages'));
  t.is(listed.stages.length, 1);
  t.is(listed.stages[0].tag, tag);
  t.is(listed.stages[0].label, 'web test core');
  t.true(listed.stages[0].size >= 100_000);
  t.is(typeof listed.stages[0].hits, 'number');
  t.is((await call(c, 'POST', '/api/stages/gc', { body: { maxSize: 'lots' } })).status, 400);
  const dry = await json(await call(c, 'POST', '/api/stages/gc', { body: { maxSize: 0, dryRun: true } }));
  t.deepEqual(dry.removed.map((s: any) => s.tag), [tag]);
  t.is((await json(await call(c, 'GET', '/api/stages'))).stages.length, 1, 'a dry run removes nothing');
  const gc = await json(await call(c, 'POST', '/api/stages/gc', { body: { maxSize: 0 } }));
  t.deepEqual(gc.removed.map((s: any) => s.tag), [tag]);
  t.deepEqual((await json(await call(c, 'GET', '/api/stages'))).stages, []);
});

webTest('push: an image goes to a real receiver as a job with bandwidth samples', ['POST /api/transfers/push', 'GET /api/jobs/{id}/events'], async (t) => {
  const c = await start(t);
  const remoteRepo = join(c.dir, 'remote');
  const receiver = new Receiver({ repo: remoteRepo, token: 'remote-secret-token' });
  const addr = await receiver.listen('127.0.0.1', 0);
  t.teardown(() => receiver.close());
  const refused = await call(c, 'POST', '/api/transfers/push', { body: { image: 'a.tar', address: `127.0.0.1:${addr.port}` } });
  t.is(refused.status, 400, 'no token and not insecure');
  t.is((await call(c, 'POST', '/api/transfers/push', { body: { image: 'nope', address: `127.0.0.1:${addr.port}`, token: 'x' } })).status, 404);
  const r = await call(c, 'POST', '/api/transfers/push', { body: { image: 'a.tar', address: `127.0.0.1:${addr.port}`, token: 'remote-secret-token', name: 'pushed.tar' } });
  t.is(r.status, 202);
  const job = await json(r);
  t.is(job.kind, 'push');
  const evs = await events(c, job.id);
  const samples = evs.filter((e) => e.event === 'sample');
  t.true(samples.length >= 1);
  const result = evs.find((e) => e.event === 'result')!.data.result;
  t.is(result.digest, c.a);
  t.is(result.blocksSent, 4);
  t.is(samples[samples.length - 1]!.data.sample.blocks, 4);
  t.deepEqual(Repository.open(remoteRepo).list().map((i) => [i.digest, i.name]), [[c.a, 'pushed.tar']]);
  // A wrong token fails the job with the receiver's refusal.
  const bad = await json(await call(c, 'POST', '/api/transfers/push', { body: { image: 'b.tar', address: `127.0.0.1:${addr.port}`, token: 'wrong' } }));
  const badEvents = await events(c, bad.id);
  t.is(badEvents.find((e) => e.event === 'error')!.data.error.code, 'OSFARM_UNAUTHORIZED');
});

webTest("pull: an image comes from another node's HTTP endpoints, only the blocks missing here", ['POST /api/transfers/pull', 'GET /api/jobs/{id}/events'], async (t) => {
  const source = await start(t);
  // The source node serves its repository for pull before the web handler, as osfarm serve does.
  const other = await serve({ repo: source.repo, tokenFile: join(source.dir, 'token2'), workDir: join(source.dir, 'work') });
  t.teardown(() => other.close());
  writeBlocks(join(source.dir, 'c.img'), [7, 8, 3, 0]);
  const c = Repository.open(source.repo).addSync(join(source.dir, 'c.img'), { name: 'c.tar' });
  const here = await start(t);
  t.is((await call(here, 'POST', '/api/transfers/pull', { body: { url: 'not a url' } })).status, 400);
  const r = await call(here, 'POST', '/api/transfers/pull', { body: { url: `${other.url}/images/c.tar`, name: 'pulled.tar' } });
  t.is(r.status, 202);
  const job = await json(r);
  t.is(job.kind, 'pull');
  const evs = await events(here, job.id);
  const result = evs.find((e) => e.event === 'result')?.data.result;
  t.truthy(result, JSON.stringify(evs.find((e) => e.event === 'error')));
  t.is(result.digest, c.digest);
  t.is(result.blocksLocal, 1, 'block 3 was already here');
  t.is(result.blocksFetched, 2);
  t.true(evs.some((e) => e.event === 'sample'));
  t.is(Repository.open(here.repo).resolve('pulled.tar').digest, c.digest);
  // The source's web API still answers next to the pull endpoints, with its own token.
  t.is((await fetch(`${other.url}/api/images`)).status, 401);
  t.is((await fetch(`${other.url}/api/images`, { headers: { authorization: `Bearer ${other.web.token.value}` } })).status, 200);
});

/** A free TCP port on loopback. */
async function freePort(): Promise<number> {
  const srv = createServer().listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const port = (srv.address() as { port: number }).port;
  srv.close();
  return port;
}

webTest('the farm: none when builds run here; with one, its workers and a probe a worker runs', ['GET /api/farm', 'POST /api/farm/probes'], async (t) => {
  const here = await start(t);
  t.deepEqual(await json(await call(here, 'GET', '/api/farm')), { farm: null });
  const refused = await call(here, 'POST', '/api/farm/probes', { body: { ms: 0 } });
  t.is(refused.status, 400);
  t.regex((await json(refused)).error.message, /osfarm serve --queue/);

  // A real farm: redis-server started here, one worker in this process (a probe builds and pushes nothing).
  const port = await freePort();
  const redis = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', here.dir], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => void redis.kill('SIGTERM'));
  await new Promise<void>((resolve, reject) => {
    let out = '';
    redis.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('Ready to accept connections')) resolve();
    });
    redis.on('exit', (code) => reject(new Error(`redis-server exited (${code}): ${out}`)));
  });
  const url = `redis://127.0.0.1:${port}`;
  const farm = await FarmClient.open({ url, repo: here.repo });
  const worker = new FarmWorker({ url, id: 'probe-w1', pushTo: '127.0.0.1:1', insecure: true, workDir: join(here.dir, 'worker'), lockMs: 3000 });
  await worker.start();
  const s = await serve({ repo: here.repo, tokenFile: join(here.dir, 'etc', 'token'), workDir: join(here.dir, 'work'), stages: join(here.dir, 'stages'), pull: false, farm });
  // Stopped in order (teardowns run last first): the server (it closes the farm client), the worker, then Redis.
  t.teardown(() => worker.stop());
  t.teardown(() => s.close());
  const c = { ...here, s };
  const f = (await json(await call(c, 'GET', '/api/farm'))).farm;
  t.like(f.scheduling, { mode: 'cache-aware' });
  t.is(f.workers.length, 1);
  t.like(f.workers[0], { id: 'probe-w1', alive: true, job: null, stages: 0 });
  t.true(Date.now() - Date.parse(f.workers[0].seen) < 60_000, `last heartbeat ${f.workers[0].seen}`);

  t.is((await call(c, 'POST', '/api/farm/probes', { body: { ms: -1 } })).status, 400);
  t.is((await call(c, 'POST', '/api/farm/probes', { body: { ms: 'soon' } })).status, 400);
  const r = await call(c, 'POST', '/api/farm/probes', { body: { ms: 50 } });
  t.is(r.status, 202);
  const probe = await json(r);
  t.is(probe.kind, 'probe');
  t.is(r.headers.get('location'), `/api/jobs/${probe.id}`);
  const evs = await events(c, probe.id);
  t.deepEqual(evs.filter((e) => e.event === 'state').map((e) => e.data.state), ['queued', 'running', 'succeeded']);
  t.deepEqual(evs.find((e) => e.event === 'result')?.data.result, { worker: 'probe-w1', ms: 50 });
  const done = await json(await call(c, 'GET', `/api/jobs/${probe.id}`));
  t.like(done, { state: 'succeeded', worker: 'probe-w1', attempts: 1 });
  t.true((await json(await call(c, 'GET', '/api/jobs'))).jobs.some((j: any) => j.id === probe.id), 'the job list has it');
});

test.serial('the OpenAPI document lists every route, and the tests here exercise every one', async (t) => {
  const c = await start(t);
  const doc = await json(await call(c, 'GET', '/api/openapi.json', { token: null }));
  t.is(doc.openapi, '3.1.0');
  t.truthy(doc.paths['/api/builds'].post.requestBody);
  const docs = await (await call(c, 'GET', '/api/docs', { token: null })).text();
  for (const d of documented) t.true(docs.includes(d.name.split(' ')[1]!), `${d.name} on /api/docs`);
  t.deepEqual(documented.map((d) => d.name).filter((n) => !declared.has(n)), [], 'documented routes no test exercises');
  t.deepEqual([...declared].filter((n) => !documented.some((d) => d.name === n)), [], 'routes the tests name that are not documented');
});
