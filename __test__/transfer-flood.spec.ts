/**
 * Slowloris against the push port and the HTTP port (issue 17, bug 4): floods of idle or
 * trickling connections from several loopback addresses (127.0.0.2-5), bounded in count
 * and time, while legitimate pushes and pulls from 127.0.0.1 still succeed. A connection
 * turned away is told OSFARM_LOCKED (push ERROR, HTTP 503), never just reset.
 */
import test, { type ExecutionContext } from 'ava';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';

import { Repository } from '../src/repo/index.js';
import { addressKey, ConnectionGate } from '../src/transfer/gate.js';
import { pull } from '../src/transfer/http/pull.js';
import { createPullHandler, listenHttp } from '../src/transfer/http/serve.js';
import { FrameReader, FrameType, parseJson } from '../src/transfer/push/frames.js';
import { push } from '../src/transfer/push/push.js';
import { RawClient, startChild } from './helpers/push-client.js';
import { pseudoRandom, tempDir } from './helpers/tmp.js';

const FLOODERS = ['127.0.0.2', '127.0.0.3', '127.0.0.4', '127.0.0.5'];

interface Flood {
  /** Connections opened so far. */
  opened: number;
  /** Closed by the server with an answer (`answers` by kind) or by a reset. */
  answers: Record<string, number>;
  resets: number;
  stop(): void;
}

/**
 * Keeps `perAddress` connections open from each flooding address until `stop` (or
 * `maxMs`, or 10 000 connections in all), each renewed 100 ms after the server closes it. `onOpen` runs on each new
 * socket (sends nothing, or a trickle); `answer` names what the server sent before
 * closing ('' if nothing).
 */
function flood(t: ExecutionContext, port: number, perAddress: number, maxMs: number, onOpen: (s: Socket) => void, answer: (data: Buffer) => string): Flood {
  const f: Flood = { opened: 0, answers: {}, resets: 0, stop: () => {} };
  const sockets = new Set<Socket>();
  let stopped = false;
  const open = (localAddress: string) => {
    if (stopped || f.opened >= 10_000) return;
    const s = connect({ host: '127.0.0.1', port, localAddress });
    f.opened++;
    sockets.add(s);
    const got: Buffer[] = [];
    let reset = false;
    s.on('connect', () => onOpen(s));
    s.on('data', (d: Buffer) => got.push(d));
    s.on('error', (e: NodeJS.ErrnoException) => (reset ||= e.code === 'ECONNRESET' || e.code === 'EPIPE'));
    s.on('close', () => {
      sockets.delete(s);
      if (stopped) return;
      const what = answer(Buffer.concat(got));
      if (reset && !what) f.resets++;
      else f.answers[what || 'closed without an answer'] = (f.answers[what || 'closed without an answer'] ?? 0) + 1;
      setTimeout(() => open(localAddress), 100).unref();
    });
  };
  for (const a of FLOODERS) for (let i = 0; i < perAddress; i++) open(a);
  const timer = setTimeout(() => f.stop(), maxMs);
  f.stop = () => {
    stopped = true;
    clearTimeout(timer);
    for (const s of sockets) s.destroy();
  };
  t.teardown(() => f.stop());
  return f;
}

/** What a push receiver said before closing: its ERROR's code. */
function pushAnswer(data: Buffer): string {
  try {
    const frames = new FrameReader(1 << 20, 'receiver').push(data);
    const e = frames.find((fr) => fr.type === FrameType.ERROR);
    return e ? String(parseJson(e.type, e.payload).code) : '';
  } catch {
    return '';
  }
}

/** What an HTTP server said before closing: its status and error code. */
function httpAnswer(data: Buffer): string {
  const text = data.toString('latin1');
  const status = /^HTTP\/1\.1 (\d{3})/.exec(text)?.[1];
  const code = /"code":"(OSFARM_[A-Z_]+)"/.exec(text)?.[1];
  return status ? `${status} ${code ?? ''}`.trim() : '';
}

test('a flood of idle connections on the push port: pushes from another address still succeed; the flooders are told OSFARM_LOCKED', async (t) => {
  const dir = tempDir(t, 'osfarm-reliability-');
  const repoPath = join(dir, 'repo');
  Repository.init(repoPath);
  const r = await startChild(t, ['--repo', repoPath, 'receive', '--listen', '127.0.0.1:0', '--insecure']);
  const port = Number(r.address.split(':')[1]);
  // 4 addresses × 40 silent connections (the attack needed 16), for at most 15 s.
  const f = flood(t, port, 40, 15_000, () => {}, pushAnswer);
  await new Promise((res) => setTimeout(res, 1_500));
  const digests: string[] = [];
  for (let i = 0; i < 4; i++) {
    const img = join(dir, `legit-${i}.img`);
    writeFileSync(img, pseudoRandom(256 << 10, 40 + i));
    const res = await push(img, r.address, { insecure: true });
    digests.push(res.digest);
    await new Promise((res) => setTimeout(res, 1_000)); // across the 5 s handshake deadline
  }
  // A source on a flooding address gets a clear answer, not a reset.
  const same = await RawClient.connect(r.address, FLOODERS[0]);
  const answer = await same.next();
  const err = answer?.type === FrameType.ERROR ? parseJson(answer.type, answer.payload) : undefined;
  same.close();
  f.stop();
  t.log(`${f.opened} flood connections; answers ${JSON.stringify(f.answers)}; resets ${f.resets}`);
  t.is(digests.length, 4, 'every legitimate push succeeded during the flood');
  t.deepEqual(Repository.open(repoPath).list().map((e) => e.digest).sort(), [...digests].sort());
  t.truthy(err, 'a connection over its address\'s limit gets an ERROR frame');
  t.is(err?.code, 'OSFARM_LOCKED');
  t.regex(String(err?.message), /busy.*retry/);
  t.true((f.answers.OSFARM_LOCKED ?? 0) > 0, 'flooders over the limit were told OSFARM_LOCKED');
  t.true((f.answers.OSFARM_PROTOCOL ?? 0) > 0, 'idle connections were closed at the handshake deadline');
  t.is(f.resets, 0, 'no flood connection was reset without an answer');
  // The receiver reports the turned-away connections summed up, not one log line each.
  const busy = await r.waitFor('busy');
  t.true(Number(busy.refused) > 0);
  const lines = r.events.filter((e) => e.type === 'connection-refused').length;
  t.true(lines < f.opened / 10, `${lines} connection-refused events for ${f.opened} flood connections`);
});

test('slowloris on the HTTP port: pulls from another address still succeed; the flooders get 503 OSFARM_LOCKED or 408', async (t) => {
  const dir = tempDir(t, 'osfarm-reliability-');
  const origin = join(dir, 'origin');
  Repository.init(origin);
  writeFileSync(join(dir, 'a.img'), pseudoRandom(4 << 20, 50));
  const image = await Repository.open(origin).add(join(dir, 'a.img'), { name: 'a' });
  const { server, address } = await listenHttp({ host: '127.0.0.1', port: 0, handlers: [createPullHandler({ repo: origin })] });
  t.teardown(() => {
    server.closeAllConnections();
    server.close();
  });
  // 4 addresses × 160 connections (640: beyond the 512 that kept requests out for 25 s),
  // each sending a partial request header and a byte every second, for at most 16 s.
  const f = flood(
    t,
    address.port,
    160,
    16_000,
    (s) => {
      s.write('GET /images/x/meta.json HTTP/1.1\r\nHost: x\r\n');
      const trickle = setInterval(() => (s.writable ? s.write('X') : clearInterval(trickle)), 1_000);
      s.once('close', () => clearInterval(trickle));
    },
    httpAnswer,
  );
  await new Promise((res) => setTimeout(res, 1_500));
  let pulled = 0;
  for (let i = 0; i < 3; i++) {
    const into = join(dir, `into-${i}`);
    const res = await pull(`http://127.0.0.1:${address.port}/images/${image.digest}`, { repo: into, idleTimeoutMs: 5_000 });
    t.is(res.digest, image.digest);
    pulled++;
    await new Promise((res) => setTimeout(res, 3_000)); // across the 10 s header deadline
  }
  f.stop();
  t.log(`${f.opened} flood connections; answers ${JSON.stringify(f.answers)}; resets ${f.resets}`);
  t.is(pulled, 3, 'every pull succeeded during the flood');
  t.true((f.answers['503 OSFARM_LOCKED'] ?? 0) > 0, 'flooders over the limit got 503 OSFARM_LOCKED');
  t.true((f.answers['408 OSFARM_PROTOCOL'] ?? 0) > 0, 'trickling connections got 408 at the header deadline');
  t.is(f.resets, 0, 'no flood connection was reset without an answer');
});

test('the gate counts an IPv6 /64 as one address, and a quiet address takes the place of the busiest one', (t) => {
  t.is(addressKey('::ffff:127.0.0.2'), '127.0.0.2');
  t.is(addressKey('2001:db8::1'), '2001:db8:0:0::/64');
  t.is(addressKey('2001:db8:0:0:ffff::2'), addressKey('2001:0db8::7'));
  t.not(addressKey('2001:db8:0:1::1'), addressKey('2001:db8::1'));

  const gate = new ConnectionGate({ perAddress: 3, total: 4, deadlineMs: 60_000 });
  const refused: string[] = [];
  const waiting = (name: string) => ({ refuse: () => refused.push(name), expire: () => {} });
  const tickets = ['a1', 'a2', 'a3'].map((n) => gate.admit('10.0.0.1', waiting(n)));
  t.true(tickets.every((k) => typeof k !== 'string'));
  t.regex(String(gate.admit('10.0.0.1', waiting('a4'))), /limit per address/);
  t.not(typeof gate.admit('10.0.0.2', waiting('b1')), 'string');
  // Full (4): a newcomer from a third address evicts the oldest of the busiest (a1).
  t.not(typeof gate.admit('10.0.0.3', waiting('c1')), 'string');
  t.deepEqual(refused, ['a1']);
  t.is(gate.pending, 4);
  // b (1) vs the busiest a (2): evicting would not be fairer, so b is refused.
  t.regex(String(gate.admit('10.0.0.2', waiting('b2'))), /already waiting/);
  for (const k of tickets) if (typeof k !== 'string') k.leave();
  t.is(gate.pending, 2);
});
