/**
 * Bounds measured from outside osfarm, in the bench's own run: the SHA-1 rate of given
 * CPUs from `openssl speed`, and how busy the machine was (a bound and osfarm measured on
 * a loaded machine are both off, and not by the same amount).
 */
import { execFileSync } from 'node:child_process';
import { loadavg } from 'node:os';

/**
 * Bytes per second `openssl speed sha1` hashes on `cpus` (taskset syntax: '0', '0,1'):
 * one process per CPU (`-multi`) for several, its 16 KiB-message rate (the largest
 * `openssl speed` measures, so the least per-message overhead). openssl counts user CPU
 * time, so this is what the CPUs do when nothing else runs on them.
 */
export function opensslSha1(cpus: string, seconds = 3): number {
  const n = cpus.split(',').length;
  const multi = n > 1 ? ['-multi', String(n)] : [];
  const out = execFileSync('taskset', ['-c', cpus, 'openssl', 'speed', ...multi, '-seconds', String(seconds), '-bytes', '16384', 'sha1'], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  // The result line: "sha1   2142617.60k" (in 1000s of bytes per second).
  const m = /^sha1\s+([\d.]+)k\s*$/m.exec(out);
  if (!m) throw new Error(`cannot read openssl speed's output:\n${out}`);
  return Number(m[1]) * 1000;
}

/** The 1-minute load average now, for the report: below ~0.3 the machine was quiet. */
export function load(): string {
  return loadavg()[0]!.toFixed(2);
}
