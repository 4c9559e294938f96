/**
 * SSH into a booted guest through qemu's forwarded port: the command line, and running a
 * command once the guest's sshd answers (it starts late in a boot, and a first boot
 * generates its host keys first).
 */
import { setTimeout as sleep } from 'node:timers/promises';

import { abortError, OsfarmError } from '../base/errors.js';
import { run } from '../host/process.js';

export interface SshTarget {
  port: number;
  /** Default root. */
  user?: string;
  /** The private key; default: ssh's own (~/.ssh/id_*, the agent). */
  key?: string;
}

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * ssh's arguments for the guest (`batch`: for a program, not a person). Host keys are not checked or remembered: each boot of an
 * image makes new ones (they are generated at first boot, never shipped), and the port is
 * on the loopback only.
 */
export function sshArgs(t: SshTarget, command?: string, batch = false): string[] {
  return [
    '-p', String(t.port),
    ...(t.key ? ['-i', t.key] : []),
    '-o', 'StrictHostKeyChecking=no',
    '-o', 'UserKnownHostsFile=/dev/null',
    '-o', 'LogLevel=ERROR',
    // A program never answers a password prompt, and must not wait on a guest still booting.
    ...(batch ? ['-o', 'IdentitiesOnly=yes', '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=5'] : []),
    `${t.user ?? 'root'}@127.0.0.1`,
    ...(command === undefined ? [] : ['--', command]),
  ];
}

/** ssh's own failures that a guest still booting gives (nothing listens yet, the connection is reset). */
const NOT_YET = /Connection (refused|reset|closed)|kex_exchange_identification|Connection timed out|banner exchange|No route to host/i;

/**
 * Runs `command` in the guest over SSH, retrying while sshd is not up yet, until
 * `timeoutMs`. Fails at once when the guest refuses the key; after the timeout with
 * OSFARM_BOOT_FAILED and ssh's last message.
 */
export async function sshExec(t: SshTarget, command: string, opts: { timeoutMs: number; signal?: AbortSignal }): Promise<ExecResult> {
  const deadline = Date.now() + opts.timeoutMs;
  const signal = opts.signal ? AbortSignal.any([opts.signal, AbortSignal.timeout(opts.timeoutMs)]) : AbortSignal.timeout(opts.timeoutMs);
  let last = '';
  for (;;) {
    let r;
    try {
      r = await run('ssh', sshArgs(t, command, true), { capture: true, signal, errorCode: 'OSFARM_BOOT_FAILED' });
    } catch (err) {
      if (opts.signal?.aborted || !(err instanceof OsfarmError) || err.code !== 'OSFARM_ABORTED') throw err;
      break;
    }
    // 255 is ssh's own failure (or the command's own 255, which then says nothing ssh says).
    if (r.code !== 255) return { code: r.code ?? -1, stdout: r.stdout, stderr: r.stderr };
    if (/Permission denied/i.test(r.stderr)) {
      throw new OsfarmError('OSFARM_BOOT_FAILED', `the guest refused ${t.user ?? 'root'}'s key${t.key ? ` ${t.key}` : ''} (${r.stderr.trim()}): give the private key whose public key the image authorizes`);
    }
    if (!NOT_YET.test(r.stderr)) return { code: 255, stdout: r.stdout, stderr: r.stderr };
    last = r.stderr.trim() || last;
    if (Date.now() + 1000 >= deadline) break;
    await sleep(1000, undefined, { signal: opts.signal }).catch(() => {});
    if (opts.signal?.aborted) throw abortError(opts.signal);
  }
  throw new OsfarmError('OSFARM_BOOT_FAILED', `ssh to the guest (127.0.0.1:${t.port}) did not answer within ${Math.round(opts.timeoutMs / 1000)} s${last ? `: ${last}` : ''}`);
}
