import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createCipheriv, createHash } from 'node:crypto';
import type { ExecutionContext } from 'ava';

/** A temporary directory removed when the test ends. */
export function tempDir(t: ExecutionContext, prefix = 'osfarm-test-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Deterministic pseudo-random bytes (AES-CTR keyed by the seed): fast, and equal seeds give equal data. */
export function pseudoRandom(length: number, seed: number): Buffer {
  const key = createHash('sha256').update(`osfarm-test-${seed}`).digest().subarray(0, 16);
  return createCipheriv('aes-128-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(length));
}

/** Writes an image made of 4 KiB blocks, each given by a number (0 = all-zero block). */
export function writeBlocks(path: string, blocks: number[], blockSize = 4096): void {
  const parts = blocks.map((b) => (b === 0 ? Buffer.alloc(blockSize) : pseudoRandom(blockSize, b * 7919)));
  writeFileSync(path, Buffer.concat(parts));
}

const CLI = join(import.meta.dirname, '..', '..', 'src', 'cli', 'main.ts');

export interface CliResult {
  status: number;
  stdout: string;
  stderr: string;
}

/** Runs the osfarm CLI (from source, through tsx) and returns its exit status and output. */
export function cli(args: string[], env: NodeJS.ProcessEnv = {}): CliResult {
  const r = spawnSync(process.execPath, ['--import', 'tsx', CLI, ...args], {
    encoding: 'utf8',
    env: { ...process.env, ...env },
    maxBuffer: 64 << 20,
  });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** Collects a child's output; resolves with its exit status once that output is closed. */
export function finished(child: ChildProcess): Promise<CliResult> {
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  // 'close', not 'exit': the exit can be seen before the last of stdout is read.
  return new Promise((resolve) => child.once('close', (code) => resolve({ status: code ?? -1, stdout, stderr })));
}

/**
 * What a --json run ended with (docs/cli.md): the last line of its stdout, which is
 * `{"type":"result","result":…}` (the result is returned) or `{"type":"error","error":…}`
 * (returned as it is, so `.error.code` reads the code).
 */
export function outcome<T = any>(line: string | Record<string, unknown> | undefined): T {
  const o = (typeof line === 'string' ? JSON.parse(line || 'null') : (line ?? null)) as { type?: string; result?: unknown } | null;
  return (o?.type === 'result' ? o.result : o) as T;
}

/** The outcome of a --json run from its whole standard output. */
export function lastOutcome<T = any>(stdout: string): T {
  return outcome<T>(stdout.trim().split('\n').pop());
}

/** A --json run's result: the last line of its stdout, parsed. */
function jsonResult<T>(r: CliResult): { status: number; result: T; stderr: string } {
  return { status: r.status, result: lastOutcome<T>(r.stdout), stderr: r.stderr };
}

/** Runs the CLI with --json and parses the last line of stdout. */
export function cliJson<T = any>(args: string[], env: NodeJS.ProcessEnv = {}): { status: number; result: T; stderr: string } {
  return jsonResult<T>(cli(['--json', ...args], env));
}

/** The asynchronous twin of `cliJson`: the test goes on (serves requests) while the CLI runs. */
export async function cliJsonAsync<T = any>(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ status: number; result: T; stderr: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, '--json', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  return jsonResult<T>(await finished(child));
}

export function sh(cmd: string, args: string[], opts: { cwd?: string } = {}): string {
  return execFileSync(cmd, args, { encoding: 'utf8', ...opts });
}
