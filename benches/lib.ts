/** Small helpers shared by the benchmarks: timing, medians, external commands, tables. */
import { execFileSync, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/** Where benchmarks keep their data (large files): $OSFARM_BENCH_DIR or ./bench-work. */
export function workDir(name: string): string {
  const dir = join(process.env.OSFARM_BENCH_DIR ?? join(import.meta.dirname, '..', 'bench-work'), name);
  mkdirSync(dir, { recursive: true });
  return dir;
}

/** Seconds taken by `fn`. */
export async function time(fn: () => unknown): Promise<number> {
  const t0 = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

/** Runs an external command and returns its wall time in seconds; throws if it fails. */
export function timeCommand(cmd: string, args: string[], env?: NodeJS.ProcessEnv): number {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env } });
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
  return secs;
}

/** CPU seconds of reaped children (and theirs): cutime + cstime of /proc/self/stat, in 1/100 s. */
export function childrenCpu(): number {
  const fields = readFileSync('/proc/self/stat', 'utf8').replace(/^.*\) /, '').split(' ');
  return (Number(fields[13]) + Number(fields[14])) / 100;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** The median of `runs` timings of `fn`. */
export async function medianOf(runs: number, fn: () => unknown): Promise<number> {
  const xs: number[] = [];
  for (let i = 0; i < runs; i++) xs.push(await time(fn));
  return median(xs);
}

/** Drops the page cache so the next read comes from disk (root only). */
export function dropCaches(): void {
  execFileSync('sync');
  execFileSync('sh', ['-c', 'echo 3 > /proc/sys/vm/drop_caches']);
}

export function printTable(title: string, rows: (string | number)[][], header: string[]): void {
  const all = [header, ...rows.map((r) => r.map(String))];
  const widths = header.map((_, c) => Math.max(...all.map((r) => String(r[c]).length)));
  console.log(`\n${title}`);
  for (const r of all) console.log(`  ${r.map((x, c) => String(x).padEnd(widths[c]!)).join('  ')}`);
}

export const CLI = join(import.meta.dirname, '..', 'dist', 'cli', 'main.js');

/** Stops a child process (SIGTERM) and waits for it to exit. */
export async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  await once(child, 'exit');
}

/** The outcome of an `osfarm --json` run: its last line, the `result` of a `{"type":"result"}` line (older osfarm printed the result alone). */
export function cliOutcome<T = any>(stdout: string): T {
  const o = JSON.parse(stdout.trim().split('\n').pop() || 'null') as { type?: string; result?: unknown } | null;
  return (o?.type === 'result' ? o.result : o) as T;
}
