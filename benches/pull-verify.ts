/**
 * The cost of signature checks on pull (docs/trust.md): `osfarm pull` of a signed image of
 * OSFARM_BENCH_SIZE_MIB (default 256) from `osfarm serve` on loopback into an empty
 * repository, without and with `--trust` (two more small requests, two Ed25519 checks, one
 * SHA-256 over the index). Median of OSFARM_BENCH_ROUNDS (default 3) pulls, each as the
 * pull reports its own time (not the CLI's start-up).
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

import { Repository } from '../src/repo/index.js';
import { readPublicKey } from '../src/trust/keys.js';
import { checkIndex, MANIFEST_FILE, SIGNATURE_FILE, verifyManifest } from '../src/trust/manifest.js';
import { outcome } from '../__test__/helpers/tmp.js';
import { CLI, median, medianOf, printTable, stopChild, workDir } from './lib.js';

const sizeMiB = Number(process.env.OSFARM_BENCH_SIZE_MIB ?? 256);
const rounds = Number(process.env.OSFARM_BENCH_ROUNDS ?? 3);
const dir = workDir('pull-verify');
const image = join(dir, `random-${sizeMiB}M.img`);
if (!existsSync(image) || statSync(image).size !== sizeMiB << 20) execFileSync('sh', ['-c', `head -c ${sizeMiB}M /dev/urandom > ${image}`]);
const origin = join(dir, 'origin');
rmSync(origin, { recursive: true, force: true });
const run = (args: string[]) => execFileSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });
run(['repo', 'init', '--repo', origin]);
run(['keys', 'generate', '--repo', origin]);
run(['repo', 'add', image, '--name', 'bench', '--repo', origin]);

const server = spawn(process.execPath, [CLI, '--json', '--repo', origin, 'serve', '--listen', '127.0.0.1:0', '--insecure', '--token-file', join(dir, 'web-token')], { stdio: ['ignore', 'pipe', 'ignore'] });
let port = 0;
for await (const line of createInterface({ input: server.stdout! })) {
  const e = JSON.parse(line) as { type?: string; port?: number };
  if (e.type === 'listening') {
    port = e.port!;
    break;
  }
}

function pullOnce(trust: boolean): number {
  const rx = join(dir, 'rx');
  rmSync(rx, { recursive: true, force: true });
  const out = run(['--json', 'pull', `http://127.0.0.1:${port}/images/bench`, '--repo', rx, ...(trust ? ['--trust', join(origin, 'keys', 'signing.pub')] : [])]).trim().split('\n');
  const r = outcome(out[out.length - 1]) as { seconds: number; signedBy?: string };
  if (trust !== (r.signedBy !== undefined)) throw new Error('the pull did not verify as asked');
  return r.seconds;
}

try {
  const rows: (string | number)[][] = [];
  const plain: number[] = [];
  const verified: number[] = [];
  // Interleaved, so that load on the machine falls on both alike.
  for (let i = 0; i < rounds; i++) {
    plain.push(pullOnce(false));
    verified.push(pullOnce(true));
  }
  const [p, v] = [median(plain), median(verified)];
  rows.push(['pull', p.toFixed(3), '']);
  rows.push(['pull --trust', v.toFixed(3), `${((v / p - 1) * 100).toFixed(1)} %`]);
  // The checks alone, in-process: both signatures and the SHA-256 over the index.
  const entry = Repository.open(origin).resolve('bench');
  const imageDir = join(entry.path, '..');
  const [bytes, sig, index] = [readFileSync(join(imageDir, MANIFEST_FILE)), readFileSync(join(imageDir, SIGNATURE_FILE), 'utf8'), readFileSync(entry.indexPath)];
  const keys = [readPublicKey(join(origin, 'keys', 'signing.pub'))];
  const checks = await medianOf(21, () => checkIndex(verifyManifest(bytes, sig, keys, 'bench').manifest, index, 'bench'));
  rows.push([`the checks alone (index ${(index.length / 1e6).toFixed(1)} MB)`, checks.toFixed(4), `${((checks / p) * 100).toFixed(2)} %`]);
  printTable(`pull of ${sizeMiB} MiB over loopback into an empty repository, median of ${rounds} (s)`, rows, ['what', 's', 'extra']);
} finally {
  await stopChild(server);
  rmSync(join(dir, 'rx'), { recursive: true, force: true });
}
