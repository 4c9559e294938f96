/**
 * Cross-process exclusive locks on files: a kernel flock(2) held through the native module.
 *
 * A flock belongs to an open file: the kernel drops it when the file is closed, or when
 * the process dies in any way (even SIGKILL), so a lock never outlives its owner and there
 * is nothing stale to detect (unlike a pid lock file). Each acquisition opens the file
 * anew, so two holders in one process exclude each other like two processes do; the
 * descriptor is close-on-exec, so no build tool inherits it.
 *
 * The native call never blocks: waiting is a retry with a growing pause (at most
 * `MAX_PAUSE_MS`) on the event loop, which an AbortSignal ends at once and which holds no
 * libuv pool thread while another process keeps the lock for minutes. Locks are only taken
 * on slow paths (building or removing a stage, GC), never on a cache hit.
 */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { abortError, type ErrorCode, fromNative, OsfarmError } from '../base/errors.js';
import { native } from '../base/native.js';

export interface FileLock {
  readonly path: string;
  /** Releases the lock (the kernel drops it when the file closes). Safe to call twice. */
  release(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

export interface LockOptions {
  /** Wait for the lock (default) or give up at once and return null. */
  wait?: boolean;
  signal?: AbortSignal;
  /** The code of the error when the lock file cannot be opened or locked (default OSFARM_IO). */
  errorCode?: ErrorCode;
}

/** The longest pause between two attempts while waiting. */
const MAX_PAUSE_MS = 100;

function tryLock(path: string, errorCode: ErrorCode): FileLock | null {
  let handle: ReturnType<typeof native.tryLockFile>;
  try {
    handle = native.tryLockFile(path);
  } catch (err) {
    const e = fromNative(err);
    throw new OsfarmError(errorCode, `cannot lock ${path}: ${e?.message ?? String(err)}`, { cause: err });
  }
  if (!handle) return null;
  const release = async () => handle.release();
  return { path, release, [Symbol.asyncDispose]: release };
}

/**
 * Takes an exclusive lock on `path` (created, with its directory, if missing). With
 * `wait: false`, returns null when another holder has it. Rejects with OSFARM_ABORTED
 * (an AbortError) if the signal fires while waiting.
 */
export async function acquireLock(path: string, opts: LockOptions = {}): Promise<FileLock | null> {
  const errorCode = opts.errorCode ?? 'OSFARM_IO';
  if (opts.signal?.aborted) throw abortError(opts.signal);
  mkdirSync(dirname(path), { recursive: true });
  let pause = 2;
  for (;;) {
    const lock = tryLock(path, errorCode);
    if (lock || opts.wait === false) return lock;
    try {
      await sleep(pause, undefined, { signal: opts.signal });
    } catch {
      throw abortError(opts.signal, 'the operation was cancelled while waiting for a lock');
    }
    pause = Math.min(pause * 2, MAX_PAUSE_MS);
  }
}
