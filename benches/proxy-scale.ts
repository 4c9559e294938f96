/**
 * Fan-out through a caching proxy: 1, 2, 4 and 8 receivers, each holding an older image,
 * pull a newer one at the same time, straight from `osfarm serve` and through nginx
 * (proxy_cache + 1 MiB slices), in network namespaces. Prints the origin's egress (its
 * interface counters) against one copy of the missing data.
 *
 *   node --import tsx benches/proxy-scale.ts        (root; Debian's nginx; OSFARM_BENCH_MIB=256)
 */
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { nginxHasSlice } from '../__test__/helpers/nginx.js';
import { ProxyLab } from '../__test__/helpers/proxy-lab.js';
import { pseudoRandom } from '../__test__/helpers/tmp.js';
import { printTable, workDir } from './lib.js';

const MiB = 1 << 20;
const sizeMiB = Number(process.env.OSFARM_BENCH_MIB ?? 256);
const counts = [1, 2, 4, 8];

function mib(n: number): string {
  return (n / MiB).toFixed(1);
}

async function main(): Promise<void> {
  if (!nginxHasSlice()) throw new Error('needs nginx with the slice module: apt-get install nginx');
  const dir = workDir('proxy-scale');
  rmSync(dir, { recursive: true, force: true });
  workDir('proxy-scale');
  // A quarter of the image changes in whole MiB, plus one scattered 4 KiB block in 1 of
  // every 16 other MiB: those cost the proxy a whole slice each (slice granularity).
  const old = pseudoRandom(sizeMiB * MiB, 5);
  const neu = Buffer.from(old);
  let wholeMiB = 0;
  let scattered = 0;
  for (let m = 0; m < sizeMiB; m++) {
    if (m % 4 === 1) {
      pseudoRandom(MiB, 10_000 + m).copy(neu, m * MiB);
      wholeMiB++;
    } else if (m % 16 === 6) {
      pseudoRandom(4096, 20_000 + m).copy(neu, m * MiB + 8192);
      scattered++;
    }
  }
  writeFileSync(join(dir, 'old.img'), old);
  writeFileSync(join(dir, 'new.img'), neu);
  const touchedSlices = wholeMiB + scattered;
  console.log(
    `image ${sizeMiB} MiB; changed: ${wholeMiB} whole MiB + ${scattered} scattered 4 KiB blocks ` +
      `(missing ${mib(wholeMiB * MiB + scattered * 4096)} MiB; ${touchedSlices} 1-MiB slices touched)`,
  );
  const lab = await ProxyLab.create(dir, Math.max(...counts), join(dir, 'old.img'), join(dir, 'new.img'));
  const rows: (string | number)[][] = [];
  try {
    for (const n of counts) {
      for (const viaProxy of [false, true]) {
        const r = await lab.round(n, viaProxy);
        const one = Math.max(...r.pulls.map((p) => p.bytesFetched));
        rows.push([
          n,
          viaProxy ? 'nginx slice cache' : 'direct',
          mib(one),
          mib(r.originTxBytes),
          (r.originTxBytes / one).toFixed(2),
          (r.originTxBytes / (touchedSlices * MiB)).toFixed(2),
          Math.max(...r.pulls.map((p) => p.requests)),
          r.seconds.toFixed(1),
        ]);
        console.log(rows[rows.length - 1]!.join('  '));
      }
    }
  } finally {
    await lab.close();
  }
  printTable(
    `Origin egress when N receivers pull the same ${sizeMiB} MiB image at once (each holds an older one)`,
    rows,
    ['receivers', 'path', 'one copy MiB', 'origin sent MiB', 'x one copy', 'x touched slices', 'requests/receiver', 'seconds'],
  );
  rmSync(dir, { recursive: true, force: true });
}

await main();
