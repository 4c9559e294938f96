/**
 * Processes as /proc shows them: an owner's identity (pid and start time, so a reused pid is
 * not mistaken for the owner), and the processes working in a tree, which a teardown kills.
 */
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, readlinkSync, realpathSync } from 'node:fs';
import { hostname } from 'node:os';
import { sep } from 'node:path';

import { type ErrorCode, OsfarmError } from '../base/errors.js';

/** The start time of a process in clock ticks since boot (field 22 of /proc/<pid>/stat), or null if it is gone. */
export function processStart(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // rest[0] is field 3 (state); field 22 is rest[19]. A zombie is as good as dead.
    if (rest[0] === 'Z' || rest[0] === 'X') return null;
    return rest[19] ?? null;
  } catch {
    return null;
  }
}

const SELF_START = processStart(process.pid) ?? '0';

/** This process as an owner token, `<pid>-<start>`: used in temp names, lease and checkout names. */
export function ownerToken(): string {
  return `${process.pid}-${SELF_START}`;
}

export const HOST = hostname();

/** Whether the process named by an owner token (`<pid>-<start>`) is still running on this host. */
export function ownerAlive(token: string): boolean {
  const m = /^(\d+)-(\d+)$/.exec(token);
  if (!m) return false;
  const pid = Number(m[1]);
  if (pid === process.pid) return m[2] === SELF_START;
  return processStart(pid) === m[2];
}

/** A short random suffix for unique names. */
export function randomSuffix(): string {
  return randomBytes(6).toString('hex');
}

/** The kernel's misc device names (/proc/misc: "device-mapper", "fuse", …); empty if unreadable. */
export function miscDevices(): string[] {
  try {
    return readFileSync('/proc/misc', 'utf8').split('\n').map((l) => l.trim().split(/\s+/)[1] ?? '').filter(Boolean);
  } catch {
    return [];
  }
}

/** `path` with its symbolic links resolved (as /proc shows paths), or as given if it does not exist. */
export function canonicalPath(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return path;
  }
}

/** Processes working in `path`: chrooted into it, with their working directory in it, or naming it on their command line. */
export function processesIn(path: string): number[] {
  const base = canonicalPath(path);
  const inside = (p: string) => p === base || p.startsWith(base + sep);
  const pids: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      const cmd = readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0');
      if (inside(readlinkSync(`/proc/${name}/root`)) || inside(readlinkSync(`/proc/${name}/cwd`)) || cmd.some(inside)) pids.push(Number(name));
    } catch {
      /* gone, or a kernel thread */
    }
  }
  return pids;
}

export interface KillOptions {
  /** Send SIGTERM first and give them this long to exit before SIGKILL (default 0: SIGKILL at once). */
  graceMs?: number;
  /** The code of the error when some cannot be killed (default OSFARM_IO). */
  errorCode?: ErrorCode;
}

/**
 * Kills what still runs in a tree (daemons a command in a chroot left behind; mmdebstrap,
 * apt and dpkg of a killed build, which run in their own process groups and outlive it) and
 * waits until they are gone, so the tree can be unmounted and removed. Returns how many.
 */
export async function killProcessesIn(path: string, opts: KillOptions = {}): Promise<number> {
  let pids = processesIn(path);
  const total = pids.length;
  const signal = (sig: NodeJS.Signals) => {
    for (const pid of pids) {
      try {
        process.kill(pid, sig);
      } catch {
        /* gone */
      }
    }
  };
  if (pids.length > 0 && opts.graceMs) {
    signal('SIGTERM');
    await new Promise((r) => setTimeout(r, opts.graceMs));
    pids = processesIn(path);
  }
  for (let round = 0; pids.length > 0 && round < 50; round++) {
    signal('SIGKILL');
    await new Promise((r) => setTimeout(r, 100));
    pids = processesIn(path);
  }
  if (pids.length > 0) throw new OsfarmError(opts.errorCode ?? 'OSFARM_IO', `processes ${pids.join(', ')} still run in ${path} and cannot be killed`);
  return total;
}
