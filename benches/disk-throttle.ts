/**
 * A read-bandwidth limit on the disk that holds a file, through the kernel's block
 * throttling (cgroup v2 `io.max`, or v1 `blkio.throttle.read_bps_device`): a slower disk
 * for the commands run under it, as `tc` makes a slower link. The cgroup is removed by
 * `remove()`, and at exit in any case. Needs root.
 */
import { existsSync, mkdirSync, readFileSync, realpathSync, rmdirSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

export interface DiskLimit {
  bytesPerSecond: number;
  /** The throttled disk, MAJ:MIN. */
  device: string;
  /** `cmd` as a command line that runs under the limit. */
  wrap(cmd: string[]): string[];
  remove(): void;
}

/** MAJ:MIN of the whole disk holding `path` (throttling applies to disks, not partitions). */
function diskOf(path: string): string {
  const dev = statSync(path).dev;
  const major = Number((BigInt(dev) >> 8n) & 0xfffn) | Number((BigInt(dev) >> 32n) & ~0xfffn);
  const minor = Number(BigInt(dev) & 0xffn) | Number((BigInt(dev) >> 12n) & ~0xffn);
  const sys = realpathSync(`/sys/dev/block/${major}:${minor}`);
  return existsSync(join(sys, 'partition')) ? readFileSync(join(dirname(sys), 'dev'), 'utf8').trim() : `${major}:${minor}`;
}

/**
 * Limits reads from the disk holding `path` to `bytesPerSecond` for commands run through
 * `wrap`; returns why not when this kernel or machine cannot (no block cgroup, no disk).
 */
export function limitDiskReads(path: string, bytesPerSecond: number): DiskLimit | string {
  let device: string;
  try {
    device = diskOf(path);
  } catch (err) {
    return `no block device under ${path} (${(err as Error).message})`;
  }
  const name = `osfarm-bench-${process.pid}`;
  let group: string;
  try {
    if (existsSync('/sys/fs/cgroup/cgroup.controllers')) {
      if (!readFileSync('/sys/fs/cgroup/cgroup.controllers', 'utf8').split(/\s+/).includes('io')) return 'cgroup v2 without the io controller';
      writeFileSync('/sys/fs/cgroup/cgroup.subtree_control', '+io');
      group = join('/sys/fs/cgroup', name);
      mkdirSync(group);
      writeFileSync(join(group, 'io.max'), `${device} rbps=${Math.round(bytesPerSecond)}`);
    } else if (existsSync('/sys/fs/cgroup/blkio/blkio.throttle.read_bps_device')) {
      group = join('/sys/fs/cgroup/blkio', name);
      mkdirSync(group);
      writeFileSync(join(group, 'blkio.throttle.read_bps_device'), `${device} ${Math.round(bytesPerSecond)}`);
    } else {
      return 'no block I/O cgroup (neither cgroup v2 io nor v1 blkio)';
    }
  } catch (err) {
    return `cannot set a read limit on ${device}: ${(err as Error).message}`;
  }
  const remove = () => {
    process.off('exit', remove);
    try {
      rmdirSync(group);
    } catch {
      /* already gone, or a process still in it: the kernel keeps it until that ends */
    }
  };
  process.on('exit', remove);
  const procs = join(group, 'cgroup.procs');
  return {
    bytesPerSecond,
    device,
    wrap: (cmd) => ['bash', '-c', 'echo $$ > "$0" && exec "$@"', procs, ...cmd],
    remove,
  };
}
