/**
 * Does the web API stay responsive while a build runs? One server, the same requests the
 * pages make (image list, jobs, stages, catalog, the page itself, a job's state), timed
 * while idle and then while a real Debian minbase build (+ hello) runs in the server with a
 * client following its live log over SSE, as the Build page does. Prints latency
 * percentiles of both, their ratios, the server's event-loop delay, and how late the log
 * lines reach the SSE follower.
 *
 *   node --import tsx benches/web-latency.ts      (root; OSFARM_WORK reuses a package cache)
 */
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';

import { Repository } from '../src/repo/index.js';
import { serve } from '../src/web/index.js';
import { pseudoRandom } from '../__test__/helpers/tmp.js';
import { printTable, workDir } from './lib.js';
import { rmSync, writeFileSync } from 'node:fs';

const dir = workDir('web-latency');
rmSync(join(dir, 'repo'), { recursive: true, force: true });
rmSync(join(dir, 'stages'), { recursive: true, force: true });
const repoPath = join(dir, 'repo');
const repo = Repository.init(repoPath);
// A repository with some images, so listing it is real work.
for (let i = 0; i < 20; i++) {
  const file = join(dir, `seed-${i}.img`);
  writeFileSync(file, pseudoRandom(4 << 20, i));
  repo.addSync(file, { name: `seed-${i}.img` });
  rmSync(file);
}

const server = await serve({ repo: repoPath, tokenFile: join(dir, 'token'), stages: join(dir, 'stages'), pull: false, workDir: process.env.OSFARM_WORK ?? join(dir, 'work') });
const headers = { authorization: `Bearer ${server.web.token.value}` };
const PATHS = ['/api/images', '/api/jobs', '/api/stages', '/api/distributions', '/'];

async function timed(path: string): Promise<number> {
  const t0 = process.hrtime.bigint();
  const r = await fetch(`${server.url}${path}`, { headers });
  await r.arrayBuffer();
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};

/** Requests in a loop (each path in turn, 20 ms apart, as a page refreshing) until `until` says stop. */
async function sample(until: () => boolean, extra: string[] = []): Promise<number[]> {
  const ms: number[] = [];
  const paths = [...PATHS, ...extra];
  for (let i = 0; !until(); i++) {
    ms.push(await timed(paths[i % paths.length]!));
    await new Promise((r) => setTimeout(r, 20));
  }
  return ms;
}

const loop = monitorEventLoopDelay({ resolution: 10 });
loop.enable();
const idleEnd = Date.now() + 10_000;
const idle = await sample(() => Date.now() > idleEnd);
const idleLoop = { p99: loop.percentile(99) / 1e6, max: loop.max / 1e6 };
loop.reset();

const job = (await (await fetch(`${server.url}/api/builds`, {
  method: 'POST',
  headers: { ...headers, 'content-type': 'application/json' },
  body: JSON.stringify({ spec: { distribution: 'debian', release: 'bookworm', architecture: 'amd64', groups: ['minbase'], packages: ['hello'], name: `latency-${Date.now()}` } }),
})).json()) as { id: string; created: string };
// Follow the live log as the Build page does, noting how late each event arrives.
const createdMs = Date.parse(job.created);
const delays: number[] = [];
let finished = false;
const sse = (async () => {
  const r = await fetch(`${server.url}/api/jobs/${job.id}/events`, { headers });
  const decoder = new TextDecoder();
  let buffered = '';
  // Node's fetch body is async-iterable; the ES2023 lib types do not say so.
  for await (const chunk of r.body! as unknown as AsyncIterable<Uint8Array>) {
    buffered += decoder.decode(chunk as Uint8Array, { stream: true });
    const blocks = buffered.split('\n\n');
    buffered = blocks.pop()!;
    const now = Date.now();
    for (const b of blocks) {
      const data = b.split('\n').find((l) => l.startsWith('data: '));
      const e = data ? (JSON.parse(data.slice(6)) as { type?: string; t?: number }) : {};
      if (e.type === 'log' && e.t !== undefined) delays.push(now - (createdMs + e.t));
    }
  }
  finished = true;
})();
const started = Date.now();
const busy = await sample(() => finished, [`/api/jobs/${job.id}`]);
await sse;
const busyLoop = { p99: loop.percentile(99) / 1e6, max: loop.max / 1e6 };
const state = (await (await fetch(`${server.url}/api/jobs/${job.id}`, { headers })).json()) as { state: string; error?: unknown };
await server.close();

const row = (name: string, xs: number[], l: { p99: number; max: number }) => [name, xs.length, pct(xs, 50).toFixed(1), pct(xs, 95).toFixed(1), pct(xs, 99).toFixed(1), Math.max(...xs).toFixed(1), l.p99.toFixed(1), l.max.toFixed(1)];
printTable(`web API latency (ms), idle vs during a real build (${state.state}, ${((Date.now() - started) / 1000).toFixed(0)} s)`, [
  row('idle', idle, idleLoop),
  row('during build', busy, busyLoop),
  ['ratio', '', (pct(busy, 50) / pct(idle, 50)).toFixed(2), (pct(busy, 95) / pct(idle, 95)).toFixed(2), (pct(busy, 99) / pct(idle, 99)).toFixed(2), (Math.max(...busy) / Math.max(...idle)).toFixed(2), (busyLoop.p99 / idleLoop.p99).toFixed(2), ''],
], ['', 'requests', 'p50', 'p95', 'p99', 'max', 'loop p99', 'loop max']);
printTable('live log over SSE: delay from a build log line to the follower (ms)', [[delays.length, pct(delays, 50).toFixed(1), pct(delays, 95).toFixed(1), pct(delays, 99).toFixed(1), Math.max(...delays).toFixed(1)]], ['lines', 'p50', 'p95', 'p99', 'max']);
if (state.state !== 'succeeded') {
  console.error(`the build did not succeed: ${JSON.stringify(state.error)}`);
  process.exitCode = 1;
}
