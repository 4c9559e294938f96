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
  | 'OSFARM_ADDRESS_IN_USE'
  | 'OSFARM_BOOT_FAILED'
  | 'OSFARM_UNTRUSTED'
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

/** A bad argument or option (code `OSFARM_INVALID_ARGUMENT`): the message says what is wrong and what to give instead. */
export function invalidArgument(message: string): OsfarmError {
  return new OsfarmError('OSFARM_INVALID_ARGUMENT', message);
}

const CODE = /^OSFARM_[A-Z_]+$/;
/**
 * The code an error of the native module carries, lifted into an OsfarmError; undefined if
 * it carries none. The one place that knows how the binding marks codes: napi-rs's custom
 * status in `code`. napi-rs's own InvalidArg (a JS value of the wrong type) is an invalid
 * argument too.
 */
export function fromNative(err: unknown): OsfarmError | undefined {
  if (!(err instanceof Error) || err instanceof OsfarmError) return undefined;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' && CODE.test(code)) return new OsfarmError(code as ErrorCode, err.message, { cause: err });
  if (code === 'InvalidArg') return new OsfarmError('OSFARM_INVALID_ARGUMENT', err.message, { cause: err });
  return undefined;
}

/**
 * Any error as an OsfarmError, for whoever has to report one with a code (the CLI's exit,
 * the push protocol's ERROR frame, the web API's JSON): osfarm's own as they are, the
 * native module's with their code, Node's argument errors as OSFARM_INVALID_ARGUMENT,
 * system errors (ENOENT, EACCES…) as OSFARM_IO, aborts (an AbortError or TimeoutError,
 * Node's or napi's) as OSFARM_ABORTED keeping their name, anything else as
 * OSFARM_INTERNAL (a bug).
 */
export function toOsfarmError(err: unknown): OsfarmError {
  if (err instanceof OsfarmError) return err;
  if (isAbortLike(err)) return named(new OsfarmError('OSFARM_ABORTED', 'the operation was cancelled', { cause: err }), (err as Error).name);
  const lifted = fromNative(err);
  if (lifted) return lifted;
  const e = err as NodeJS.ErrnoException | undefined;
  const code = typeof e?.code === 'string' ? e.code : '';
  const message = err instanceof Error ? err.message : String(err);
  if (/^ERR_(INVALID_ARG|OUT_OF_RANGE|MISSING_ARGS|PARSE_ARGS)/.test(code)) return new OsfarmError('OSFARM_INVALID_ARGUMENT', message, { cause: err });
  if (/^E[A-Z]+$/.test(code)) return new OsfarmError('OSFARM_IO', message, { cause: err });
  return new OsfarmError('OSFARM_INTERNAL', message, { cause: err });
}

function isAbortLike(err: unknown): boolean {
  const name = (err as { name?: unknown } | null | undefined)?.name;
  return name === 'AbortError' || name === 'TimeoutError';
}

function named(err: OsfarmError, name: string): OsfarmError {
  err.name = name;
  return err;
}

/**
 * The error an aborted operation rejects with, the way Node's own APIs do: named
 * `AbortError` (`TimeoutError` when the signal's reason is one, as with
 * `AbortSignal.timeout()`), the signal's reason as its `cause`, and osfarm's code
 * OSFARM_ABORTED. Match on the code or the name; the message says what was stopped.
 */
export function abortError(signal: AbortSignal | undefined, message = 'the operation was cancelled'): OsfarmError {
  const reason: unknown = signal?.reason;
  const timeout = (reason as { name?: unknown } | undefined)?.name === 'TimeoutError';
  const err = new OsfarmError('OSFARM_ABORTED', timeout ? `${message} (timed out)` : message, reason === undefined ? undefined : { cause: reason });
  return named(err, timeout ? 'TimeoutError' : 'AbortError');
}

/** True for osfarm's abort errors and anyone's AbortError or TimeoutError. */
export function isAbortError(err: unknown): boolean {
  return (err instanceof OsfarmError && err.code === 'OSFARM_ABORTED') || isAbortLike(err);
}

/**
 * Runs a native call, sync or async, and lifts its errors into OsfarmErrors; once `signal`
 * has fired, its cancellation (the core's OSFARM_ABORTED, or napi's AbortError for a task
 * cancelled before it started) rejects with `abortError(signal)`.
 */
export async function callNative<T>(fn: () => Promise<T> | T, signal?: AbortSignal): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    const e = fromNative(err) ?? err;
    // Already made from the signal (throwIfAborted inside `fn`), or no abort: as it is.
    const made = e instanceof OsfarmError && e.name !== 'OsfarmError';
    if (!signal?.aborted || !isAbortError(e) || made) throw e;
    // The core's cancellation (coded, named OsfarmError) or napi's bare AbortError.
    throw abortError(signal, e instanceof OsfarmError ? e.message : undefined);
  }
}

/** The synchronous form of `callNative`, for the `*Sync` twins. */
export function callNativeSync<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw fromNative(err) ?? err;
  }
}

/** An error as JSON, the one shape osfarm writes errors in (CLI --json output, every HTTP answer): `{ error: { code, message } }`. */
export function errorJson(err: unknown): { error: { code: ErrorCode; message: string } } {
  const { code, message } = toOsfarmError(err);
  return { error: { code, message } };
}

/** Throws `abortError(signal)` if the signal has already fired (a native task only sees later aborts). */
export function throwIfAborted(signal: AbortSignal | undefined, message?: string): void {
  if (signal?.aborted) throw abortError(signal, message);
}
