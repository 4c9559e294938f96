import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
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

/** Runs the CLI with --json and parses the last line of stdout. */
export function cliJson<T = any>(args: string[], env: NodeJS.ProcessEnv = {}): { status: number; result: T; stderr: string } {
  const r = cli(['--json', ...args], env);
  const lines = r.stdout.trim().split('\n');
  return { status: r.status, result: JSON.parse(lines[lines.length - 1] ?? 'null') as T, stderr: r.stderr };
}

export function sh(cmd: string, args: string[], opts: { cwd?: string } = {}): string {
  return execFileSync(cmd, args, { encoding: 'utf8', ...opts });
}
