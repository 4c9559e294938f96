/** Running build tools: line-by-line logs, a clean environment, and process-group termination on abort. */
import { spawn } from 'node:child_process';

import { aborted, buildFailed } from '../spec/errors.js';

export interface RunOptions {
  cwd?: string;
  /** The full environment of the child (nothing is inherited when given). */
  env?: NodeJS.ProcessEnv;
  /** Text written to the child's standard input (then closed); default: /dev/null. */
  input?: string;
  signal?: AbortSignal;
  /** Every output line (stdout and stderr). */
  onLine?: (line: string) => void;
  /** Seconds between SIGTERM and SIGKILL on abort (default 15). */
  graceSeconds?: number;
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** PATH for build tools: the usual system directories, whatever the caller's PATH. */
export const SYSTEM_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/**
 * Runs a command in its own process group. On abort the whole group gets SIGTERM, then
 * SIGKILL after the grace period; the promise settles when the child has exited and rejects
 * with OSFARM_ABORTED if the signal fired.
 */
export function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolvePromise, reject) => {
    if (opts.signal?.aborted) return reject(aborted());
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      detached: true,
    });
    let killTimer: NodeJS.Timeout | undefined;
    let wasAborted = false;
    const onAbort = () => {
      wasAborted = true;
      killGroup(child.pid, 'SIGTERM');
      killTimer = setTimeout(() => killGroup(child.pid, 'SIGKILL'), (opts.graceSeconds ?? 15) * 1000);
    };
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const lines = (stream: NodeJS.ReadableStream) => {
      let rest = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk: string) => {
        rest += chunk;
        const parts = rest.split(/\r?\n|\r/);
        rest = parts.pop() ?? '';
        for (const p of parts) if (p.length > 0) opts.onLine?.(p);
      });
      stream.on('end', () => {
        if (rest.length > 0) opts.onLine?.(rest);
        rest = '';
      });
    };
    lines(child.stdout!);
    lines(child.stderr!);
    if (opts.input !== undefined) {
      child.stdin!.on('error', () => {});
      child.stdin!.end(opts.input);
    }
    child.on('error', (err) => {
      opts.signal?.removeEventListener('abort', onAbort);
      if (killTimer) clearTimeout(killTimer);
      reject(buildFailed(`cannot run ${cmd}: ${(err as NodeJS.ErrnoException).code ?? err.message}`, err));
    });
    child.on('close', (code, signal) => {
      opts.signal?.removeEventListener('abort', onAbort);
      if (killTimer) clearTimeout(killTimer);
      if (wasAborted) reject(aborted());
      else resolvePromise({ code, signal });
    });
  });
}

function killGroup(pid: number | undefined, sig: NodeJS.Signals): void {
  if (!pid) return;
  try {
    process.kill(-pid, sig);
  } catch {
    try {
      process.kill(pid, sig);
    } catch {
      /* already gone */
    }
  }
}

/** Runs a command and fails (OSFARM_BUILD_FAILED, naming `what`) unless it exits 0. */
export async function runChecked(what: string, cmd: string, args: string[], opts: RunOptions = {}): Promise<void> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) {
    throw buildFailed(`${what} failed (${cmd} exited with ${r.code ?? r.signal})`);
  }
}

/** Runs a command and returns its standard output (fails unless it exits 0). */
export async function capture(cmd: string, args: string[], opts: Omit<RunOptions, 'onLine'> = {}): Promise<string> {
  const out: string[] = [];
  const r = await run(cmd, args, { ...opts, onLine: (l) => out.push(l) });
  if (r.code !== 0) throw buildFailed(`${cmd} ${args.join(' ')} exited with ${r.code ?? r.signal}: ${out.slice(-3).join(' | ')}`);
  return out.join('\n');
}

/** Whether an executable is on the system PATH. */
export async function haveTool(name: string): Promise<boolean> {
  const { access, constants } = await import('node:fs/promises');
  for (const dir of SYSTEM_PATH.split(':')) {
    try {
      await access(`${dir}/${name}`, constants.X_OK);
      return true;
    } catch {
      /* next */
    }
  }
  return false;
}
