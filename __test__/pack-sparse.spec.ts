/**
 * `osfarm pack` and what expands (issue 17): a sparse file is packed by its data, into an
 * archive whose zero blocks are holes (a 20 GiB sparse disk image used to give a tar with
 * 20 GiB allocated, in 133 s), also as a `tar -S` member, and `--max-size` refuses a
 * decompression bomb before the disk fills, leaving nothing.
 */
import test, { type ExecutionContext } from 'ava';
import { closeSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, statSync, writeFileSync, writeSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';

import { cliJson, pseudoRandom, sh, tempDir } from './helpers/tmp.js';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

/** Bytes a file occupies on disk. */
function allocated(path: string): number {
  return statSync(path).blocks * 512;
}

/** Writes a sparse file of `size` bytes holding `parts` (offset → data) and holes elsewhere. */
function sparseFile(path: string, size: number, parts: Array<[number, Buffer]>): void {
  const fd = openSync(path, 'w');
  ftruncateSync(fd, size);
  for (const [at, data] of parts) writeSync(fd, data, 0, data.length, at);
  closeSync(fd);
}

function readAt(path: string, at: number, length: number): Buffer {
  const fd = openSync(path, 'r');
  const b = Buffer.alloc(length);
  readSync(fd, b, 0, length, at);
  closeSync(fd);
  return b;
}

/** Checks that `out` holds the 20 GiB `parts` file as ./disk.img, as GNU tar sees it, with holes. */
function checkArchive(t: ExecutionContext, out: string, size: number, parts: Array<[number, Buffer]>): void {
  t.true(allocated(out) < 16 * MiB, `${allocated(out)} bytes allocated for a ${statSync(out).size}-byte archive`);
  // GNU tar lists it at its size; its data lies at the block the member header announces.
  const listing = sh('tar', ['-tvR', '-f', out]);
  const line = listing.split('\n').find((l) => l.endsWith(' ./disk.img'));
  t.truthy(line, listing);
  t.regex(line!, new RegExp(` ${size} `));
  const data = (Number(/^block (\d+):/.exec(line!)![1]) + 1) * 512;
  t.is(data % 4096, 0, 'aligned');
  for (const [at, bytes] of parts) t.true(readAt(out, data + at, bytes.length).equals(bytes), `data at ${at}`);
  t.true(readAt(out, data + 5 * GiB, MiB).equals(Buffer.alloc(MiB)), 'a hole reads as zeros');
}

test('a 20 GiB sparse file packs by its data into a tar of holes that GNU tar reads, from a directory or tar -S', (t) => {
  const dir = tempDir(t, 'osfarm-fuzz-sparse-');
  const tree = join(dir, 'tree');
  mkdirSync(tree);
  const disk = join(tree, 'disk.img');
  const size = 20 * GiB;
  const parts: Array<[number, Buffer]> = [
    [0, pseudoRandom(MiB, 1)],
    [10 * GiB + 12345, pseudoRandom(MiB, 2)],
    [size - 4096, pseudoRandom(4096, 3)],
  ];
  sparseFile(disk, size, parts);
  const out = join(dir, 'out.tar');
  const r = cliJson(['pack', tree, '-o', out]);
  t.is(r.status, 0, r.stderr);
  t.is(r.result.fileBytes, size);
  t.is(statSync(out).size, r.result.outputSize);
  checkArchive(t, out, size, parts);

  // The same file as a sparse member of a tar.gz (GNU tar -S, pax format 1.0).
  const gz = join(dir, 'disk.tar.gz');
  sh('tar', ['-S', '--format=pax', '-czf', gz, '-C', tree, 'disk.img']);
  t.true(statSync(gz).size < 4 * MiB);
  const out2 = join(dir, 'out2.tar');
  const r2 = cliJson(['pack', gz, '-o', out2]);
  t.is(r2.status, 0, r2.stderr);
  t.is(r2.result.fileBytes, size);
  checkArchive(t, out2, size, parts);
});

test('a smaller sparse file round-trips through GNU tar byte for byte', (t) => {
  const dir = tempDir(t, 'osfarm-fuzz-sparse-');
  const tree = join(dir, 'tree');
  mkdirSync(tree);
  sparseFile(join(tree, 'disk.img'), 64 * MiB + 1000, [
    [4096, pseudoRandom(10_000, 4)],
    [32 * MiB + 7, pseudoRandom(100, 5)],
    [64 * MiB, pseudoRandom(1000, 6)],
  ]);
  writeFileSync(join(tree, 'small'), 'not sparse\n');
  const out = join(dir, 'out.tar');
  t.is(cliJson(['pack', tree, '-o', out]).status, 0);
  t.true(allocated(out) < 2 * MiB);
  const back = join(dir, 'back');
  mkdirSync(back);
  sh('tar', ['-xf', out, '-C', back]);
  for (const name of ['disk.img', 'small']) t.true(readFileSync(join(back, name)).equals(readFileSync(join(tree, name))), name);
});

/** A ustar header (size in octal, checksum set). */
function ustarHeader(name: string, size: number, type: string): Buffer {
  const h = Buffer.alloc(512);
  h.write(name, 0);
  h.write('0000644\0', 100);
  h.write('0000000\0', 108);
  h.write('0000000\0', 116);
  h.write(`${size.toString(8).padStart(11, '0')}\0`, 124);
  h.write('14000000000\0', 136);
  h.write(type, 156);
  h.write('ustar\x0000', 257);
  h.fill(' ', 148, 156);
  const sum = h.reduce((a, b) => a + b, 0);
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
  return h;
}

test('--max-size refuses a 10 MB tar.gz that expands to 10 GiB at once, leaving nothing', (t) => {
  const dir = tempDir(t, 'osfarm-fuzz-bomb-');
  // A pax header giving the size (10 GiB does not fit the octal field), the entry, then
  // 10 GiB of zeros as 160 gzip members of 64 MiB each (one compressed, repeated), the end.
  const record = Buffer.from(`20 size=${10 * GiB}\n`);
  const head = Buffer.concat([ustarHeader('./PaxHeaders/bomb', record.length, 'x'), record, Buffer.alloc(512 - record.length), ustarHeader('./bomb', 0, '0')]);
  const zeros = gzipSync(Buffer.alloc(64 * MiB), { level: 9 });
  const bomb = join(dir, 'bomb.tar.gz');
  const fd = openSync(bomb, 'w');
  writeSync(fd, gzipSync(head));
  for (let i = 0; i < 160; i++) writeSync(fd, zeros);
  writeSync(fd, gzipSync(Buffer.alloc(1024)));
  closeSync(fd);
  t.true(statSync(bomb).size < 12 * MiB, `${statSync(bomb).size} bytes`);

  const r = cliJson(['pack', bomb, '-o', join(dir, 'out.tar'), '--max-size', '1G']);
  t.is(r.status, 2, r.stderr);
  t.is(r.result.error.code, 'OSFARM_INVALID_ARGUMENT');
  t.regex(r.result.error.message, /larger than the limit of 1073741824 bytes/);
  t.regex(r.result.error.message, /'bomb' \(10737418240 bytes\)/);
  t.deepEqual(readdirSync(dir), ['bomb.tar.gz'], 'no output and no temporary file');

  // The same archive packs within a limit it fits, to a file of holes (a small one here).
  const small = join(dir, 'small.tar.gz');
  writeFileSync(small, Buffer.concat([gzipSync(Buffer.concat([ustarHeader('./z', 64 * MiB, '0'), Buffer.alloc(64 * MiB + 1024)]))]));
  const ok = cliJson(['pack', small, '-o', join(dir, 'ok.tar'), '--max-size', '65M']);
  t.is(ok.status, 0, ok.stderr);
  t.true(allocated(join(dir, 'ok.tar')) < MiB);
});
