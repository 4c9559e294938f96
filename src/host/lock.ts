/**
 * Cross-process exclusive locks on files, held by a `flock(1)` child process.
 *
 * Node has no flock(2). Rather than a pid lock file (O_EXCL + stale-lock guessing, which
 * has to tell a dead owner from a slow one and races when two waiters break the same
 * stale lock), the lock is a real kernel flock held by a small child:
 *
 *     flock --exclusive --close <file> sh -c 'echo locked; exec cat >/dev/null'
 *
 * `flock` takes the lock, then runs the shell, which says "locked" and waits for its
 * standard input to close. We release by closing that pipe. If this process dies in any
 * way (even SIGKILL), the pipe closes, `cat` exits, `flock` exits, and the kernel drops
 * the lock: a lock can never outlive its owner, so there is nothing stale to detect.
 * `--close` keeps the lock fd out of the shell, so only `flock` itself holds it; if
 * `flock` alone were killed the lock would go with it. util-linux (which ships flock) is
 * an essential Debian package. Costs one short-lived process per lock (a few ms); locks
 * are only taken on the slow paths (building a stage, removing one), never on a hit.
 */
import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';

import { type ErrorCode, OsfarmError } from '../base/errors.js';
import { SYSTEM_PATH } from './process.js';

export interface FileLock {
  readonly path: string;
  /** Releases the lock; resolves once the kernel has dropped it. Safe to call twice. */
  release(): Promise<void>;
}

export interface LockOptions {
  /** Wait for the lock (default) or give up at once and return null. */
  wait?: boolean;
  signal?: AbortSignal;
  /** The code of the error when flock(1) fails (default OSFARM_IO). */
  errorCode?: ErrorCode;
}

const CONFLICT = 75;

/**
 * Takes an exclusive lock on `path` (created if missing). With `wait: false`, returns
 * null when another process holds it. Rejects with OSFARM_ABORTED if the signal fires
 * while waiting.
 */
export function acquireLock(path: string, opts: LockOptions = {}): Promise<FileLock | null> {
  mkdirSync(dirname(path), { recursive: true });
  const wait = opts.wait ?? true;
  return new Promise((resolvePromise, reject) => {
    if (opts.signal?.aborted) return reject(new OsfarmError('OSFARM_ABORTED', 'the operation was cancelled'));
    const args = ['--exclusive', '--close', '--conflict-exit-code', String(CONFLICT)];
    if (!wait) args.push('--nonblock');
    args.push(path, 'sh', '-c', 'echo locked; exec cat >/dev/null');
    const child = spawn('flock', args, { stdio: ['pipe', 'pipe', 'pipe'], env: { PATH: SYSTEM_PATH } });
    let settled = false;
    let stderr = '';
    let exited: Promise<void> | undefined;
    const exitPromise = new Promise<void>((r) => child.once('close', () => r()));
    child.stdin!.on('error', () => {});
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const onAbort = () => {
      if (settled) return;
      settled = true;
      child.kill('SIGKILL');
      reject(new OsfarmError('OSFARM_ABORTED', 'the operation was cancelled while waiting for a lock'));
    };
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      if (settled || !d.includes('locked')) return;
      settled = true;
      opts.signal?.removeEventListener('abort', onAbort);
      // Held: let the process exit without releasing explicitly (the kernel drops the lock then).
      const handles = [child.stdin, child.stdout, child.stderr] as unknown as { ref?: () => void; unref?: () => void }[];
      child.unref();
      for (const h of handles) h.unref?.();
      resolvePromise({
        path,
        release() {
          exited ??= (async () => {
            child.ref();
            for (const h of handles) h.ref?.();
            child.stdin!.end();
            await exitPromise;
          })();
          return exited;
        },
      });
    });
    child.once('error', (err) => {
      if (settled) return;
      settled = true;
      opts.signal?.removeEventListener('abort', onAbort);
      reject(new OsfarmError(opts.errorCode ?? 'OSFARM_IO', `cannot run flock(1) (util-linux) for the lock ${path}: ${(err as NodeJS.ErrnoException).code ?? err.message}`));
    });
    child.once('close', (code) => {
      if (settled) return;
      settled = true;
      opts.signal?.removeEventListener('abort', onAbort);
      if (code === CONFLICT) resolvePromise(null);
      else reject(new OsfarmError(opts.errorCode ?? 'OSFARM_IO', `flock ${path} exited with ${code}: ${stderr.trim()}`));
    });
  });
}
