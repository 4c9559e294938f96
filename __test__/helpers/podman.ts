// Running a command in a container with Debian's podman on these machines.
import type { ExecutionContext } from 'ava';
import { execFileSync, type SpawnSyncReturns, spawnSync } from 'node:child_process';

/**
 * `podman run --rm IMAGE ARGS…` as this machine allows it. podman's default runtime here
 * (crun) refuses this host's hybrid cgroups, and podman asks for limits of 1048576 open
 * files and processes, above what the host allows: runc, and the host's hard limits. podman
 * 4.3 runs itself and conmon with at most 32768 processes (seen in /proc/PID/limits), which
 * the container's init cannot raise.
 */
export function podmanRun(image: string, args: string[]): SpawnSyncReturns<string> {
  const limit = (o: string) => Number(execFileSync('bash', ['-c', `ulimit -H${o}`], { encoding: 'utf8' }).trim().replace('unlimited', String(2 ** 31)));
  const files = limit('n');
  const procs = Math.min(limit('u'), 32768);
  return spawnSync('podman', ['run', '--rm', '--runtime', 'runc', '--network', 'none', '--ulimit', `nofile=${files}:${files}`, '--ulimit', `nproc=${procs}:${procs}`, image, ...args], { encoding: 'utf8' });
}

/**
 * `podman load -i ARCHIVE` gives the image NAME, which runs `cat /etc/os-release` as Debian
 * bookworm: what an OCI output must do before anything else is asked of it.
 */
export function podmanLoadsAndRuns(t: ExecutionContext, archive: string, name: string): void {
  const load = spawnSync('podman', ['load', '-i', archive], { encoding: 'utf8' });
  t.is(load.status, 0, load.stderr);
  t.regex(load.stdout + load.stderr, new RegExp(`Loaded image: ${name}`));
  const release = podmanRun(name, ['cat', '/etc/os-release']);
  t.is(release.status, 0, release.stderr);
  t.regex(release.stdout, /PRETTY_NAME="Debian GNU\/Linux 12 \(bookworm\)"/);
}
