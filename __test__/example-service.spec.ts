/**
 * examples/build-service.ts run as a user runs it (its own process, importing 'osfarm'
 * through the package's exports): a real build of a small appliance on the service's
 * Debian core, pushed to a real receiver on loopback. The core stage is kept in
 * $OSFARM_TEST_WORK between runs (with the package cache), so a run after the first
 * builds only the appliance. Needs root and the Debian archive, like the other builds.
 */
import test from 'ava';
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

import { Repository } from '../src/repo/index.js';
import { Receiver, type ReceiveEvent } from '../src/transfer/push/receive.js';
import { buildWorkDir } from './fixtures/build/harness.js';
import { tempDir } from './helpers/tmp.js';

const WORK = buildWorkDir();
const SERVICE = join(import.meta.dirname, '..', 'examples', 'build-service.ts');
const TOKEN = 'example-service-receiver-token';

async function post(url: string, body: unknown): Promise<{ status: number; lines: Record<string, any>[] }> {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const text = await res.text();
  return { status: res.status, lines: text.split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as Record<string, any>) };
}

test('the example service builds an image on request through the API and pushes it to a receiver', async (t) => {
  const dir = tempDir(t, 'osfarm-example-service-');
  const received = join(dir, 'received');
  const events: ReceiveEvent[] = [];
  const receiver = new Receiver({ repo: received, token: TOKEN, onEvent: (e) => events.push(e) });
  const at = await receiver.listen('127.0.0.1', 0);
  t.teardown(() => receiver.close());
  const tokenFile = join(dir, 'token');
  writeFileSync(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
  const stages = join(WORK, 'example-service', 'stages');
  mkdirSync(stages, { recursive: true });

  const service = spawn(
    process.execPath,
    ['--import', 'tsx', SERVICE, '--listen', '127.0.0.1:0', '--receiver', `127.0.0.1:${at.port}`, '--token-file', tokenFile, '--repo', join(dir, 'repo'), '--stages', stages, '--work-dir', WORK],
    { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, OSFARM_TOKEN: '' } },
  );
  t.teardown(() => service.kill('SIGKILL'));
  const exited = once(service, 'exit');
  const [first] = (await once(createInterface({ input: service.stdout! }), 'line')) as [string];
  const { url } = JSON.parse(first) as { url: string };

  t.like(await (await fetch(`${url}/healthz`)).json(), { ok: true });
  const bad = await post(`${url}/images`, { name: 'x', pakages: ['jq'], files: [{ destination: '/etc/x', source: '/etc/shadow' }] });
  t.is(bad.status, 422, 'a bad spec is refused before anything runs');
  t.true(bad.lines[0]!.error.issues.some((i: { path: string }) => i.path === 'spec.pakages'));
  t.true(bad.lines[0]!.error.issues.some((i: { path: string }) => i.path.startsWith('spec.files')), 'the spec may not read the service’s files');

  const r = await post(`${url}/images`, { name: 'hello', hostname: 'hello-service', files: [{ destination: '/etc/motd', content: 'built by the example service\n' }] });
  t.is(r.status, 200);
  const last = r.lines.at(-1)!;
  t.is(last.type, 'result', JSON.stringify(last));
  const phases = r.lines.filter((e) => e.type === 'phase').map((e) => e.phase);
  t.deepEqual(phases.slice(-3), ['pack', 'index', 'push']);
  t.true(r.lines.some((e) => e.type === 'stage'), 'the build reported its stages');
  t.is(last.result.stages.length, 2, 'core and appliance');
  t.true(r.lines.some((e) => e.type === 'progress' && e.phase === 'push' && e.done <= e.total));

  // The receiver holds exactly what was built, under the name the service gave it.
  const [image] = last.result.images;
  t.is(image.format, 'tar');
  const repo = Repository.open(received);
  const entry = repo.resolve('hello-tar');
  t.is(entry.digest, image.digest);
  t.like(events.find((e) => e.type === 'transfer-done'), { digest: image.digest });
  const motd = execFileSync('tar', ['-xOf', entry.path, './etc/motd'], { encoding: 'utf8' });
  t.is(motd, 'built by the example service\n');
  t.is(execFileSync('tar', ['-xOf', entry.path, './etc/hostname'], { encoding: 'utf8' }), 'hello-service\n');
  repo.close();

  // A second appliance stands on the same core stage (a hit), and the receiver, which
  // holds the first image, is sent only a small part of it.
  const again = await post(`${url}/images`, { name: 'hello2', hostname: 'hello-two' });
  const result2 = again.lines.at(-1)!;
  t.is(result2.type, 'result', JSON.stringify(result2));
  t.is(result2.result.stages[0].tag, last.result.stages[0].tag);
  t.true(result2.result.stages[0].hit, 'the core comes from the stage store');
  t.not(result2.result.stages[1].tag, last.result.stages[1].tag);
  t.true(result2.result.images[0].sentBlocks < result2.result.images[0].blockCount / 2, 'the receiver already had most blocks (the core)');

  service.kill('SIGTERM');
  const [code] = (await exited) as [number | null];
  t.is(code, 0, 'SIGTERM stops the service cleanly');
});
