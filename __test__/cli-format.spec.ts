import test from 'ava';

import { bytes, count, parseSize, percent } from '../src/cli/format.js';

test('count groups thousands like en-US', (t) => {
  for (const n of [0, 7, 999, 1000, 65536, 1234567, -1234567, 1000000000, 12.5, 123456.75]) {
    t.is(count(n), n.toLocaleString('en-US', { maximumFractionDigits: 20 }), String(n));
  }
});

test('bytes and percent read as people write them', (t) => {
  t.is(bytes(12), '12 B');
  t.is(bytes(1536), '1.50 KiB');
  t.is(bytes(300 * 1024 * 1024), '300.0 MiB');
  t.is(percent(0.5), '50.0 %');
  t.is(percent(0.001), '0.10 %');
});

test('parseSize accepts suffixes and refuses the rest', (t) => {
  t.is(parseSize('4096', 'x'), 4096);
  t.is(parseSize('64K', 'x'), 65536);
  t.is(parseSize('1MiB', 'x'), 1 << 20);
  t.throws(() => parseSize('1.5G', 'block size'), { message: /block size: '1.5G' is not a size/ });
});
