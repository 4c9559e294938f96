import test from 'ava';

import { StreamLevel } from '../src/transfer/push/level.js';

/** Drives a StreamLevel with a fake clock: each encode takes `busyMs(level)`, then `idleMs(level)` pass. */
async function drive(level: StreamLevel, clock: { t: bigint }, steps: number, busyMs: (l: number) => number, idleMs: (l: number) => number): Promise<number[]> {
  const seen: number[] = [];
  for (let i = 0; i < steps; i++) {
    await level.encode(async (l) => {
      clock.t += BigInt(Math.round(busyMs(l) * 1e6));
    });
    clock.t += BigInt(Math.round(idleMs(level.level) * 1e6));
    seen.push(level.level);
  }
  return seen;
}

test('an encoder idle most of the time climbs to the highest level', async (t) => {
  const clock = { t: 0n };
  const level = new StreamLevel({ now: () => clock.t, start: 3 });
  const seen = await drive(level, clock, 200, () => 2, () => 8);
  t.is(seen.at(-1), 9);
  t.deepEqual([...new Set(seen)], [3, 4, 5, 6, 7, 8, 9], 'one step at a time');
});

test('a busy encoder steps down, and a level found too slow is not retried at once', async (t) => {
  const clock = { t: 0n };
  const level = new StreamLevel({ now: () => clock.t, start: 9 });
  // Levels above 5 keep the encoder busy 95 % of the time; 5 and below, 40 %.
  const busy = (l: number) => (l > 5 ? 9.5 : 4);
  const idle = (l: number) => (l > 5 ? 0.5 : 6);
  const seen = await drive(level, clock, 400, busy, idle);
  t.is(seen.at(-1), 5);
  const changes = seen.filter((l, i) => i > 0 && l !== seen[i - 1]).length;
  t.true(changes <= 8, `${changes} changes in ${seen.length} runs: each ends a zstd frame`);
  // After the hold, 6 is tried again (and dropped again).
  const later = await drive(level, clock, 400, busy, idle);
  t.true(later.includes(6));
  t.is(later.at(-1), 5);
});
