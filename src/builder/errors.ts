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

/** An error line of apt, dpkg, mmdebstrap, debootstrap or dnf: what a failed tool said went wrong. */
const TOOL_ERROR = /^(E: |Error: |No match for argument: |Problem: )/;
/** Error lines that only say that something else failed: a cause, if one was seen, comes before them. */
const CONSEQUENCE = /(failed to run|setup failed|\bfailed\b.*(exit|with)|exited with|apt-get .* failed|^E: Sub-process .* returned an error code|^Error: Transaction test error)/;

/**
 * Keeps the first error lines a tool prints (from a build's log stream), to lift the cause
 * ("E: Unable to locate package jqq") into the error message instead of leaving it in the
 * log's tail.
 */
export class ToolErrors {
  private readonly lines: string[] = [];

  /** Feed every line of the tool's output. */
  see(line: string): void {
    const l = line.trim();
    if (this.lines.length < 8 && TOOL_ERROR.test(l) && !this.lines.includes(l)) this.lines.push(l);
  }

  /** `: E: …` for a message (the causes, not what failed because of them), or ''. */
  summary(): string {
    const causes = this.lines.filter((l) => !CONSEQUENCE.test(l));
    const shown = (causes.length ? causes : this.lines).slice(0, 2);
    return shown.length ? `: ${shown.join('; ')}` : '';
  }
}
