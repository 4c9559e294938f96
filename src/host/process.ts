/**
 * Running commands, for all of osfarm: a clean environment with the system PATH, output
 * line by line (or collected), each command in its own process group so that an abort
 * ends everything it started (SIGTERM, then SIGKILL after a grace period).
 */
import { execFileSync, spawn } from 'node:child_process';
import { access, constants } from 'node:fs/promises';
import type { Readable, Writable } from 'node:stream';

import { abortError, type ErrorCode, OsfarmError } from '../base/errors.js';

/** PATH for the tools osfarm runs: the usual system directories, whatever the caller's PATH. */
export const SYSTEM_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** The environment of a command unless told otherwise: the system PATH, messages in the C locale. */
const DEFAULT_ENV: NodeJS.ProcessEnv = { PATH: SYSTEM_PATH, LC_ALL: 'C' };

/** Seconds between SIGTERM and SIGKILL when a command is aborted. */
const GRACE_SECONDS = 15;

export interface RunOptions {
  cwd?: string;
  /** The full environment of the child (nothing is inherited); default the system PATH and LC_ALL=C. */
  env?: NodeJS.ProcessEnv;
  signal?: AbortSignal;
  /** Every non-empty output line (stdout and stderr; `stream` says which). */
  onLine?: (line: string, stream: 'stdout' | 'stderr') => void;
  /** Keep stdout and stderr as text in the result. */
  capture?: boolean;
  /** The code of the error raised when the command cannot be started (and by runChecked); default OSFARM_IO. */
  errorCode?: ErrorCode;
  /** Gives the command a standard input pipe, handed over once it has started (else stdin is /dev/null). */
  stdin?: (stdin: Writable) => void;
  /**
   * The command gets SIGKILL when osfarm dies, even by SIGKILL (util-linux's setpriv sets the
   * parent-death signal before exec): for long-lived single processes such as qemu, which would
   * otherwise outlive osfarm in their own process group. The caller checks the tool exists.
   */
  endWithParent?: boolean;
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** With `capture`: the output, else empty. */
  stdout: string;
  stderr: string;
}

function cannotStart(cmd: string, err: Error, code: ErrorCode | undefined): OsfarmError {
  const errno = (err as NodeJS.ErrnoException).code;
  const why = errno === 'ENOENT' ? 'it is not installed' : (errno ?? err.message);
  return new OsfarmError(code ?? 'OSFARM_IO', `cannot run ${cmd}: ${why}`, { cause: err });
}

/** Signals a process group (falling back to the process alone), ignoring one that is gone. */
export function killGroup(pid: number | undefined, sig: NodeJS.Signals): void {
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

/**
 * Starts a command in its own process group; `consume` reads its standard output as a
 * stream (the promise settles when both are done). On abort the group gets SIGTERM, then
 * SIGKILL after the grace period, and the promise rejects with OSFARM_ABORTED.
 */
export function runPiped(cmd: string, args: string[], opts: RunOptions, consume?: (stdout: Readable) => Promise<void>): Promise<RunResult> {
  return new Promise((resolvePromise, reject) => {
    if (opts.signal?.aborted) return reject(abortError(opts.signal));
    const [file, argv] = opts.endWithParent ? ['setpriv', ['--pdeathsig', 'KILL', '--', cmd, ...args]] : [cmd, args];
    const child = spawn(file, argv, { cwd: opts.cwd, env: opts.env ?? DEFAULT_ENV, stdio: [opts.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'], detached: true });
    if (opts.stdin && child.stdin) {
      // A child that exits while input is still being written must not crash the writer with EPIPE.
      child.stdin.on('error', () => {});
      opts.stdin(child.stdin);
    }
    let killTimer: NodeJS.Timeout | undefined;
    let wasAborted = false;
    const out = { stdout: '', stderr: '' };
    const onAbort = () => {
      wasAborted = true;
      killGroup(child.pid, 'SIGTERM');
      killTimer = setTimeout(() => killGroup(child.pid, 'SIGKILL'), GRACE_SECONDS * 1000);
    };
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const lines = (stream: Readable, keep: 'stdout' | 'stderr') => {
      let rest = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk: string) => {
        if (opts.capture) out[keep] += chunk;
        if (!opts.onLine) return;
        rest += chunk;
        const parts = rest.split(/\r?\n|\r/);
        rest = parts.pop() ?? '';
        for (const p of parts) if (p.length > 0) opts.onLine(p, keep);
      });
      stream.on('end', () => {
        if (rest.length > 0) opts.onLine?.(rest, keep);
        rest = '';
      });
    };
    const consumed = consume ? consume(child.stdout!) : Promise.resolve(lines(child.stdout!, 'stdout'));
    lines(child.stderr!, 'stderr');
    const done = () => {
      opts.signal?.removeEventListener('abort', onAbort);
      if (killTimer) clearTimeout(killTimer);
    };
    child.on('error', (err) => {
      done();
      reject(cannotStart(cmd, err, opts.errorCode));
    });
    child.on('close', (code, signal) => {
      done();
      consumed.then(
        () => (wasAborted ? reject(abortError(opts.signal)) : resolvePromise({ code, signal, ...out })),
        (err) => reject(wasAborted ? abortError(opts.signal) : err),
      );
    });
  });
}

/** Runs a command (see runPiped); resolves with its exit status whatever it is. */
export function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return runPiped(cmd, args, opts);
}

/**
 * Runs a command and returns its standard output; unless it exits 0, fails with
 * `errorCode` (default OSFARM_IO) naming `what` and the last lines of its output.
 */
export async function runChecked(what: string, cmd: string, args: string[], opts: RunOptions = {}): Promise<string> {
  const r = await run(cmd, args, { ...opts, capture: true });
  if (r.code !== 0) {
    const detail = (r.stderr.trim() || r.stdout.trim()).split('\n').slice(-3).join(' | ');
    throw new OsfarmError(opts.errorCode ?? 'OSFARM_IO', `${what} failed: ${cmd} ${args.join(' ')} exited with ${r.code ?? r.signal}${detail ? `: ${detail}` : ''}`);
  }
  return r.stdout;
}

/**
 * Runs a short command synchronously (for code that must stay synchronous, such as
 * reading a spec), with `input` on its standard input; returns its standard output.
 */
export function runSync(cmd: string, args: string[], opts: { input?: string; errorCode?: ErrorCode; what: string }): string {
  try {
    return execFileSync(cmd, args, { input: opts.input, encoding: 'utf8', env: DEFAULT_ENV, stdio: ['pipe', 'pipe', 'pipe'] });
  } catch (err) {
    throw new OsfarmError(opts.errorCode ?? 'OSFARM_IO', `${opts.what}: ${cmd} failed (is it installed?)`, { cause: err });
  }
}

/** Whether an executable is on the system PATH. */
export async function haveTool(name: string): Promise<boolean> {
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
