/**
 * Block commonality of two real Debian trees (the seed's "common blocks" table):
 * mmdebstrap bookworm minbase, and minbase with python3 added. Each is written as
 * mmdebstrap's plain tar and as osfarm's block-aligned tar; for each format, the
 * share of one image's non-zero 4 KiB blocks found in the other, both ways.
 * Goal (issue 2): sending the smaller to a holder of the larger finds >= 95 %.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';

import { compare, pack } from '../src/index.js';
import { printTable, time, workDir } from './lib.js';

const dir = workDir('debian-common');
const suite = process.env.OSFARM_BENCH_SUITE ?? 'bookworm';
const mirror = process.env.OSFARM_MIRROR ? [process.env.OSFARM_MIRROR] : [];

/** Builds a tree with mmdebstrap into a tar, unless it is there already. */
function debootstrap(name: string, include: string[]): string {
  const out = join(dir, `${name}.tar`);
  if (!existsSync(out)) {
    const args = ['--quiet', '--variant=minbase', ...include.map((p) => `--include=${p}`), suite, out, ...mirror];
    execFileSync('mmdebstrap', args, { stdio: 'inherit', env: { ...process.env, SOURCE_DATE_EPOCH: '1700000000' } });
  }
  return out;
}

const small = debootstrap('minbase', []);
const large = debootstrap('minbase-python3', ['python3']);

const rows: (string | number)[][] = [];
const results: Record<string, unknown>[] = [];
async function row(format: string, a: string, b: string, blockSize: number) {
  const r = await compare(a, b, { blockSize });
  rows.push([
    format,
    blockSize,
    `${(statSync(a).size / 2 ** 20).toFixed(0)} / ${(statSync(b).size / 2 ** 20).toFixed(0)} MiB`,
    `${(100 * r.a.shareInOther).toFixed(1)} %`,
    `${(100 * r.b.shareInOther).toFixed(1)} %`,
  ]);
  results.push({ format, blockSize, smallInLarge: r.a.shareInOther, largeInSmall: r.b.shareInOther });
}

await row('mmdebstrap tar (512 B aligned)', small, large, 4096);
await row('mmdebstrap tar (512 B aligned)', small, large, 512);
const packed: string[] = [];
let packSeconds = 0;
for (const src of [small, large]) {
  const out = src.replace(/\.tar$/, '.aligned.tar');
  packSeconds += await time(() => pack(src, out, { blockSize: 4096, sourceDateEpoch: 1700000000 }));
  packed.push(out);
}
await row('osfarm block-aligned tar', packed[0]!, packed[1]!, 4096);

printTable(
  `Common blocks: ${suite} minbase (A) and minbase + python3 (B)`,
  rows,
  ['image format', 'block', 'sizes A / B', 'A\'s non-zero blocks in B', 'B\'s in A'],
);
console.log(`\npacking both trees took ${packSeconds.toFixed(2)} s`);
console.log(JSON.stringify({ bench: 'debian-common', suite, results, packSeconds }));
