/**
 * The cost of SHA-1 collision detection (docs/trust.md): a push of OSFARM_BENCH_SIZE_MIB
 * (default 256) of random data over loopback into an empty repository made plain and made
 * with `--detect-collisions` (every received block also through sha1dc), interleaved, median
 * of OSFARM_BENCH_ROUNDS (default 3). Beside it, what sha1dc costs outside osfarm: git's
 * SHA-1 (sha1dc, git's default since 2.13; checked in its binary) against coreutils'
 * sha1sum over the same file.
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync, realpathSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

import { CLI, median, printTable, stopChild, timeCommand, workDir } from './lib.js';

const sizeMiB = Number(process.env.OSFARM_BENCH_SIZE_MIB ?? 256);
const rounds = Number(process.env.OSFARM_BENCH_ROUNDS ?? 3);
const dir = workDir('collision-detect');
const image = join(dir, `random-${sizeMiB}M.img`);
if (!existsSync(image) || statSync(image).size !== sizeMiB << 20) execFileSync('sh', ['-c', `head -c ${sizeMiB}M /dev/urandom > ${image}`]);
const run = (args: string[]) => execFileSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });

// git's SHA-1 is sha1dc when its binary carries sha1dc's refusal message (git hashes a blob
// with a header in front, so feeding it the SHAttered prefix would not show it).
const gitBinary = realpathSync(execFileSync('sh', ['-c', 'command -v git'], { encoding: 'utf8' }).trim());
const gitIsSha1dc = readFileSync(gitBinary).includes('SHA-1 appears to be part of a collision attack');

/** One push into a fresh repository (made with `init` flags); the push's own seconds. */
async function pushOnce(initFlags: string[]): Promise<number> {
  const rx = join(dir, 'rx');
  rmSync(rx, { recursive: true, force: true });
  run(['repo', 'init', rx, ...initFlags]);
  const receiver = spawn(process.execPath, [CLI, '--json', '--repo', rx, 'receive', '--listen', '127.0.0.1:0', '--insecure'], { stdio: ['ignore', 'pipe', 'ignore'] });
  try {
    let port = 0;
    for await (const line of createInterface({ input: receiver.stdout! })) {
      const e = JSON.parse(line) as { type?: string; port?: number };
      if (e.type === 'listening') {
        port = e.port!;
        break;
      }
    }
    const out = run(['--json', 'push', image, `127.0.0.1:${port}`, '--insecure']).trim().split('\n');
    return (JSON.parse(out[out.length - 1]!) as { seconds: number }).seconds;
  } finally {
    await stopChild(receiver);
  }
}

try {
  const plain: number[] = [];
  const detecting: number[] = [];
  const sha1sum: number[] = [];
  const git: number[] = [];
  // Interleaved, so that load on the machine falls on both alike.
  for (let i = 0; i < rounds; i++) {
    plain.push(await pushOnce([]));
    detecting.push(await pushOnce(['--detect-collisions']));
    sha1sum.push(timeCommand('sha1sum', [image]));
    git.push(timeCommand('git', ['hash-object', '--no-filters', image]));
  }
  const [p, d, s, g] = [plain, detecting, sha1sum, git].map(median) as [number, number, number, number];
  const mbs = (secs: number) => ((sizeMiB * 1.048576) / secs).toFixed(0);
  printTable(
    `SHA-1 collision detection, ${sizeMiB} MiB of random data, median of ${rounds} (git is sha1dc: ${gitIsSha1dc ? 'yes, its binary has the collision-attack refusal' : 'NO'})`,
    [
      ['sha1sum (plain SHA-1)', s.toFixed(3), mbs(s), ''],
      ['git hash-object (sha1dc)', g.toFixed(3), mbs(g), `${(g / s).toFixed(2)}x sha1sum`],
      ['osfarm push, loopback, plain repository', p.toFixed(3), mbs(p), ''],
      ['osfarm push, loopback, --detect-collisions', d.toFixed(3), mbs(d), `${((d / p - 1) * 100).toFixed(1)} % slower`],
    ],
    ['what', 's', 'MB/s', 'ratio'],
  );
} finally {
  rmSync(join(dir, 'rx'), { recursive: true, force: true });
}
