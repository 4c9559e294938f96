import test from 'ava';

import { bytes, count, percent } from '../src/cli/format.js';
import { parseSize } from '../src/base/size.js';

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

test('parseSize reads the ways people write sizes and names the value it refuses', (t) => {
  t.is(parseSize('4096'), 4096);
  t.is(parseSize('64K'), 65536);
  t.is(parseSize('1MiB'), 1 << 20);
  t.is(parseSize('500MB'), 500 * (1 << 20));
  t.is(parseSize('1.5G'), 1.5 * 2 ** 30);
  t.is(parseSize(' 2 t '), 2 * 2 ** 40);
  t.is(parseSize(12345), 12345);
  t.throws(() => parseSize('4 KiBs', '--block-size'), { code: 'OSFARM_INVALID_ARGUMENT', message: /--block-size: "4 KiBs" is not a byte count/ });
  t.throws(() => parseSize('-1'), { code: 'OSFARM_INVALID_ARGUMENT' });
  t.throws(() => parseSize(-1, 'maxSize'), { message: /maxSize -1 must be a non-negative/ });
});
