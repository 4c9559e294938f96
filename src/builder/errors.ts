/** The builder's own errors: a failed build step, and a build that was interrupted. */
import { abortError, OsfarmError } from '../base/errors.js';

/** A build step failed (code `OSFARM_BUILD_FAILED`); the message names the phase and points at the log. */
export function buildFailed(message: string, cause?: unknown): OsfarmError {
  return new OsfarmError('OSFARM_BUILD_FAILED', message, { cause });
}

/** The build was interrupted (Ctrl-C, SIGTERM or an aborted signal): an AbortError with the signal's reason. */
export function aborted(signal: AbortSignal | undefined): OsfarmError {
  return abortError(signal, 'build interrupted; the chroot was torn down');
}
