/**
 * Leases: "this stage is in use". A lease is a small file `leases/<tag>/<pid>-<start>.<rand>`
 * holding its owner's pid, start time, host and purpose. GC and `rm` never remove a
 * stage with a live lease. A lease is live while its owner runs: the pid exists and its
 * start time (from /proc) matches, so a reused pid does not keep a dead lease alive.
 * Leases of another host (a store on shared storage) are taken as live.
 */
import { mkdirSync, readdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { HOST, ownerAlive, ownerToken, randomSuffix } from '../host/procs.js';

export interface LeaseRecord {
  id: string;
  tag: string;
  pid: number;
  host: string;
  purpose: string;
  created: string;
  /** Whether the owner is still running (or runs on another host). */
  alive: boolean;
}

/** A held lease. `release()` (or `await using`) runs the release hooks (unmounting a view, removing a checkout) and deletes the file. */
export class Lease implements AsyncDisposable {
  readonly tag: string;
  readonly id: string;
  readonly path: string;
  private hooks: (() => Promise<void>)[] = [];
  private released: Promise<void> | undefined;

  constructor(tag: string, id: string, path: string) {
    this.tag = tag;
    this.id = id;
    this.path = path;
  }

  /** Runs `fn` when the lease is released (last added runs first). */
  onRelease(fn: () => Promise<void>): void {
    this.hooks.unshift(fn);
  }

  get isReleased(): boolean {
    return this.released !== undefined;
  }

  release(): Promise<void> {
    this.released ??= (async () => {
      let first: unknown;
      for (const h of this.hooks) {
        try {
          await h();
        } catch (err) {
          first ??= err;
        }
      }
      rmSync(this.path, { force: true });
      if (first) throw first;
    })();
    return this.released;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.release();
  }
}

/** Takes a lease on `tag` (the stage need not exist yet: callers check after taking it). */
export function createLease(leasesDir: string, tag: string, purpose: string): Lease {
  const dir = join(leasesDir, tag);
  const id = `${ownerToken()}.${randomSuffix()}`;
  const path = join(dir, id);
  const record = { pid: process.pid, host: HOST, purpose, created: new Date().toISOString() };
  for (let attempt = 0; ; attempt++) {
    mkdirSync(dir, { recursive: true });
    try {
      writeFileSync(path, `${JSON.stringify(record)}\n`, { flag: 'wx', mode: 0o644 });
      return new Lease(tag, id, path);
    } catch (err) {
      // A sweep removed the empty directory between our mkdir and write: make it again.
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || attempt >= 5) throw err;
    }
  }
}

function isAlive(id: string, host: string): boolean {
  if (host !== HOST) return true;
  return ownerAlive(id.split('.')[0] ?? '');
}

/** The leases on `tag`, live or not. */
export function readLeases(leasesDir: string, tag: string): LeaseRecord[] {
  const dir = join(leasesDir, tag);
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  const out: LeaseRecord[] = [];
  for (const id of names) {
    if (id.endsWith('.tmp')) continue;
    let rec: { pid?: number; host?: string; purpose?: string; created?: string } = {};
    try {
      rec = JSON.parse(readFileSync(join(dir, id), 'utf8')) as typeof rec;
    } catch {
      /* being written, or damaged: judge by its name */
    }
    const host = rec.host ?? HOST;
    out.push({
      id,
      tag,
      pid: rec.pid ?? Number(id.split('-')[0]),
      host,
      purpose: rec.purpose ?? '?',
      created: rec.created ?? '',
      alive: isAlive(id, host),
    });
  }
  return out;
}

export function liveLeases(leasesDir: string, tag: string): LeaseRecord[] {
  return readLeases(leasesDir, tag).filter((l) => l.alive);
}

/** Removes the leases of dead owners (and empty lease directories); returns how many were removed. */
export function sweepLeases(leasesDir: string): number {
  let removed = 0;
  let tags: string[];
  try {
    tags = readdirSync(leasesDir);
  } catch {
    return 0;
  }
  for (const tag of tags) {
    const leases = readLeases(leasesDir, tag);
    for (const l of leases) {
      if (!l.alive) {
        rmSync(join(leasesDir, tag, l.id), { force: true });
        removed++;
      }
    }
    try {
      if (readdirSync(join(leasesDir, tag)).length === 0) rmdirSync(join(leasesDir, tag));
    } catch {
      /* raced with a new lease: keep it */
    }
  }
  return removed;
}
