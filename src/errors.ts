/** Stable error codes: match on these, not on messages. */
export type ErrorCode =
  | 'OSFARM_INVALID_ARGUMENT'
  | 'OSFARM_IO'
  | 'OSFARM_BAD_INDEX'
  | 'OSFARM_BAD_ARCHIVE'
  | 'OSFARM_DIGEST_MISMATCH'
  | 'OSFARM_BAD_REPOSITORY'
  | 'OSFARM_NOT_FOUND'
  | 'OSFARM_AMBIGUOUS'
  | 'OSFARM_MISMATCH'
  | 'OSFARM_ABORTED'
  | 'OSFARM_LOCKED'
  | 'OSFARM_BAD_SPEC'
  | 'OSFARM_BUILD_FAILED'
  | 'OSFARM_STAGE'
  | 'OSFARM_PROTOCOL'
  | 'OSFARM_UNAUTHORIZED'
  | 'OSFARM_INTERNAL';

/** Every error osfarm raises on purpose: a stable `code` and a message that says what to do. */
export class OsfarmError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'OsfarmError';
    this.code = code;
  }
}

/** Turns an error thrown by the native module (which sets its `code`) into an OsfarmError. */
export function fromNative(err: unknown): unknown {
  const code = (err as { code?: unknown } | null)?.code;
  if (err instanceof Error && !(err instanceof OsfarmError) && typeof code === 'string' && code.startsWith('OSFARM_')) {
    return new OsfarmError(code as ErrorCode, err.message, { cause: err });
  }
  return err;
}

/** Runs a native call, sync or async, and lifts its errors into OsfarmErrors. */
export async function callNative<T>(fn: () => Promise<T> | T): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw fromNative(err);
  }
}

/** The synchronous form of `callNative`, for the `*Sync` twins. */
export function callNativeSync<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw fromNative(err);
  }
}

/** Throws OSFARM_ABORTED if the signal has already fired (a native task only sees later aborts). */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new OsfarmError('OSFARM_ABORTED', 'the operation was cancelled');
}
