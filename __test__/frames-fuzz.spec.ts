/**
 * Fuzzing of the push protocol's frame decoder (src/transfer/push/frames.ts), the TypeScript
 * part of the parsers fuzzed for issue 17 (the Rust ones are in crates/osfarm-core/src/fuzz/).
 * The corpus in fixtures/fuzz-frames/ holds byte streams as peers send them; the test
 * decodes each, then random mutations of them for a bounded time, from a seed that changes
 * every run and is logged, every stream fed to the reader in chunks of random sizes.
 * Whatever the bytes, FrameReader and the payload parsers give consistent frames or throw
 * OSFARM_PROTOCOL: never another error, never a frame above the limit. A failing input is
 * saved under __test__/artifacts/; copied into the corpus, it is replayed on every run.
 */
import test from 'ava';
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import {
  DEFAULT_MAX_FRAME,
  FrameReader,
  MAGIC,
  PRE_AUTH_MAX_FRAME,
  frameName,
  header,
  parseBlocks,
  parseDigests,
  parseGroups,
  parseJson,
  parseRequest,
  type Frame,
} from '../src/transfer/push/frames.js';
import { OsfarmError } from '../src/base/errors.js';

const CORPUS = fileURLToPath(new URL('./fixtures/fuzz-frames/', import.meta.url));
const ARTIFACTS = fileURLToPath(new URL('./artifacts/', import.meta.url));
/** Time spent on mutations after the corpus. */
const BUDGET_MS = 2000;
const MAX_LEN = 64 << 10;

/** mulberry32: a small PRNG; one seed gives one sequence. */
class Rng {
  constructor(private s: number) {}
  next(): number {
    this.s = (this.s + 0x6d2b79f5) | 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  below(n: number): number {
    return n <= 1 ? 0 : this.next() % n;
  }
}

/** Runs `fn`; an error other than OSFARM_PROTOCOL escapes (and fails the test). */
function protocolOnly(fn: () => void): void {
  try {
    fn();
  } catch (err) {
    if (!(err instanceof OsfarmError && err.code === 'OSFARM_PROTOCOL')) throw err;
  }
}

/** Every payload parser on a frame's payload, whatever its type: results must hang together. */
function checkFrame(f: Frame, maxFrame: number): void {
  const p = f.payload;
  assert.ok(p.length <= maxFrame, `a ${p.length}-byte frame passed the ${maxFrame}-byte limit`);
  assert.equal(typeof frameName(f.type), 'string');
  for (const dl of [20, 32]) {
    protocolOnly(() => {
      const d = parseDigests(p, dl);
      assert.ok(Number.isSafeInteger(d.first) && d.first >= 0);
      assert.ok(d.digests.length > 0 && d.digests.length % dl === 0 && d.digests.length === p.length - 8);
    });
  }
  protocolOnly(() => {
    const g = parseGroups(p);
    assert.ok(Number.isSafeInteger(g.first) && g.records.length === p.length - 8 && g.records.length > 0);
  });
  for (const what of ['REQUEST', 'NEED_DIGESTS']) {
    protocolOnly(() => {
      const runs = parseRequest(p, what);
      assert.equal(runs.length * 12, p.length);
      for (const r of runs) assert.ok(Number.isSafeInteger(r.first) && r.count >= 1 && r.count <= 0xffffffff);
    });
  }
  for (const version of [1, 2]) {
    protocolOnly(() => {
      const b = parseBlocks(p, version);
      assert.ok(Number.isSafeInteger(b.first) && b.encoding <= version && b.data.length === p.length - 16);
    });
  }
  protocolOnly(() => {
    const v = parseJson(f.type, p);
    assert.ok(typeof v === 'object' && v !== null && !Array.isArray(v));
  });
}

/** Feeds `stream` to a reader in random chunks; returns the frames read before any protocol error. */
function decode(stream: Buffer, rng: Rng, maxFrame: number): Frame[] {
  const reader = new FrameReader(maxFrame, 'fuzz');
  const frames: Frame[] = [];
  protocolOnly(() => {
    for (let at = 0; at < stream.length; ) {
      const n = 1 + rng.below(Math.min(stream.length - at, 1 << rng.below(14)));
      for (const f of reader.push(stream.subarray(at, at + n))) {
        checkFrame(f, maxFrame);
        frames.push(f);
      }
      at += n;
    }
  });
  return frames;
}

const INTERESTING = [0, 1, 7, 8, 12, 15, 16, 0x7f, 0x80, 0xff, 0xffff, PRE_AUTH_MAX_FRAME, PRE_AUTH_MAX_FRAME + 1, DEFAULT_MAX_FRAME, 0x7fffffff, 0xffffffff];

/** One to four random edits; length fields get edge values as u32/u64 little-endian. */
function mutate(rng: Rng, input: Buffer, corpus: Buffer[]): Buffer {
  let d = Buffer.from(input);
  for (let k = 1 + rng.below(4); k > 0; k--) {
    const len = d.length;
    const at = rng.below(len + 1);
    switch (rng.below(8)) {
      case 0:
        if (len) d[rng.below(len)]! ^= 1 << rng.below(8);
        break;
      case 1:
        if (len) d[rng.below(len)] = rng.next() & 0xff;
        break;
      case 2:
        if (len >= 8) {
          const v = INTERESTING[rng.below(INTERESTING.length)]!;
          const pos = rng.below(len - 7);
          if (rng.below(2)) d.writeUInt32LE(v >>> 0, pos);
          else d.writeBigUInt64LE(BigInt(v) << BigInt(rng.below(2) * 32), pos);
        }
        break;
      case 3:
        d = Buffer.concat([d.subarray(0, at), d.subarray(Math.min(len, at + 1 + rng.below(64)))]);
        break;
      case 4:
        d = Buffer.concat([d.subarray(0, at), Buffer.from(Array.from({ length: 1 + rng.below(32) }, () => rng.next() & 0xff)), d.subarray(at)]);
        break;
      case 5: {
        const from = rng.below(len);
        d = Buffer.concat([d.subarray(0, at), d.subarray(from, from + 1 + rng.below(256)), d.subarray(at)]);
        break;
      }
      case 6: {
        const other = corpus[rng.below(corpus.length)]!;
        const from = rng.below(other.length);
        d = Buffer.concat([d.subarray(0, at), other.subarray(from, from + 1 + rng.below(512)), d.subarray(at)]);
        break;
      }
      default:
        d = d.subarray(0, rng.below(len + 1));
    }
  }
  return d.subarray(0, MAX_LEN);
}

function loadCorpus(): Buffer[] {
  return readdirSync(CORPUS)
    .sort()
    .map((name) => readFileSync(CORPUS + name));
}

test('the corpus and random mutations of it decode to consistent frames or OSFARM_PROTOCOL', (t) => {
  const corpus = loadCorpus();
  t.true(corpus.length >= 10, 'the corpus is in place');
  const seed = (Date.now() ^ (process.pid << 16)) >>> 0;
  const rng = new Rng(seed);
  let runs = 0;
  const run = (input: Buffer): void => {
    const maxFrame = rng.below(2) ? PRE_AUTH_MAX_FRAME : DEFAULT_MAX_FRAME;
    try {
      decode(input, rng, maxFrame);
    } catch (err) {
      mkdirSync(ARTIFACTS, { recursive: true });
      const path = `${ARTIFACTS}frames-fuzz-${seed.toString(16)}-${runs}`;
      writeFileSync(path, input);
      throw new Error(`frame decoder failed on ${path} (seed ${seed.toString(16)}, limit ${maxFrame}): ${(err as Error).stack}`);
    }
    runs++;
  };
  corpus.forEach(run);
  // The well-formed streams of the corpus really give frames (the decoder is not refusing everything).
  t.true(decode(corpus.find((c) => c.length > 1000)!, rng, DEFAULT_MAX_FRAME).length >= 5);
  const until = Date.now() + BUDGET_MS;
  while (Date.now() < until) run(mutate(rng, corpus[rng.below(corpus.length)]!, corpus));
  t.log(`${corpus.length} corpus streams and ${runs - corpus.length} mutations in ${BUDGET_MS} ms (seed ${seed.toString(16)})`);
});

test('a well-formed stream gives the same frames however it is cut', (t) => {
  const rng = new Rng(12345);
  for (let round = 0; round < 200; round++) {
    const sent: Frame[] = Array.from({ length: 1 + rng.below(20) }, () => ({
      type: rng.next() & 0xff,
      payload: Buffer.from(Array.from({ length: rng.below(3) ? rng.below(64) : rng.below(5000) }, () => rng.next() & 0xff)),
    }));
    const stream = Buffer.concat([MAGIC, ...sent.flatMap((f) => [header(f.type, f.payload.length), f.payload])]);
    const got = decode(stream, rng, PRE_AUTH_MAX_FRAME);
    t.deepEqual(
      got.map((f) => [f.type, f.payload.toString('hex')]),
      sent.map((f) => [f.type, f.payload.toString('hex')]),
    );
  }
});
