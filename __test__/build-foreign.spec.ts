// A foreign-architecture build: Debian arm64 minbase on this (amd64) machine, through
// qemu-user-static registered in binfmt_misc by osfarm itself. The slow one (every
// maintainer script runs emulated), so it is minimal.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdirSync, openSync, readSync, closeSync } from 'node:fs';
import { join } from 'node:path';

import { hostArchitecture } from '../src/spec/distros.js';
import { buildWorkDir, cliAsync, leftovers, resultOf } from './fixtures/build/harness.js';
import { tempDir } from './helpers/tmp.js';

/** e_machine of an ELF file (183 = EM_AARCH64, 62 = EM_X86_64). */
function elfMachine(path: string): number {
  const fd = openSync(path, 'r');
  const h = Buffer.alloc(20);
  readSync(fd, h, 0, 20, 0);
  closeSync(fd);
  if (h.subarray(0, 4).toString('latin1') !== '\x7fELF') throw new Error(`${path} is not an ELF file`);
  return h.readUInt16LE(18);
}

test('debian bookworm arm64 minbase: aarch64 binaries that run in the chroot through emulation', async (t) => {
  t.is(hostArchitecture(), 'amd64', 'this test builds for a foreign CPU from amd64');
  const dir = tempDir(t, 'osfarm-arm64-');
  const image = join(dir, 'arm64.tar');
  const run = await cliAsync(
    ['--repo', join(dir, 'repo'), 'build', '-t', 'debian-bookworm-arm64', '-d', buildWorkDir(), '-o', image, '--no-repo', '--source-date-epoch', '1700000000'],
    undefined,
    { OSFARM_STAGES: join(dir, 'stages') },
  );
  const r = resultOf(run);
  if (run.status !== 0) t.log(JSON.stringify(r), run.lines.filter((l) => l.type === 'log').slice(-30).map((l) => l.line).join('\n'));
  t.is(run.status, 0);
  t.is(r.spec.architecture, 'arm64');
  t.deepEqual(leftovers(run, join(dir, 'stages')), { mounts: [], scratch: [] });

  const tree = join(dir, 'tree');
  mkdirSync(tree);
  execFileSync('tar', ['-xpf', image, '-C', tree, '--numeric-owner']);
  for (const bin of ['usr/bin/dash', 'usr/bin/dpkg', 'usr/lib/aarch64-linux-gnu/libc.so.6']) t.is(elfMachine(join(tree, bin)), 183, bin);
  t.regex(execFileSync('file', ['-L', join(tree, 'bin/sh')], { encoding: 'utf8' }), /ARM aarch64/);
  // Emulated, inside the image: the kernel hands aarch64 binaries to qemu through binfmt_misc.
  const out = execFileSync('chroot', [tree, '/bin/sh', '-c', 'uname -m; dpkg --print-architecture'], { encoding: 'utf8' });
  t.is(out, 'aarch64\narm64\n');
});
