// A parent stage's tree and a child stage's tree with every kind of change between them: what
// the layered ext4 (disk-layout.spec.ts) and the OCI layers (oci-layers.spec.ts) are checked on.
import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, linkSync, mkdirSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { pseudoRandom } from './tmp.js';

/** A parent tree, and a child made from a copy of it with every kind of change. */
export function stageTrees(dir: string): { parent: string; child: string } {
  const parent = join(dir, 'parent');
  mkdirSync(join(parent, 'etc/sub'), { recursive: true });
  mkdirSync(join(parent, 'usr/lib/systemd'), { recursive: true });
  mkdirSync(join(parent, 'gone/deeper'), { recursive: true });
  writeFileSync(join(parent, 'etc/keep'), 'unchanged\n');
  writeFileSync(join(parent, 'etc/same-size'), 'aaaa\n');
  writeFileSync(join(parent, 'etc/mode'), 'mode\n');
  writeFileSync(join(parent, 'etc/big'), pseudoRandom(300_000, 1));
  writeFileSync(join(parent, 'gone/deeper/file'), 'x');
  writeFileSync(join(parent, 'usr/lib/systemd/system-systemd\\x2dcryptsetup.slice'), '[Unit]\n');
  writeFileSync(join(parent, 'becomes-dir'), 'file\n');
  mkdirSync(join(parent, 'becomes-file/sub'), { recursive: true });
  writeFileSync(join(parent, 'becomes-file/sub/x'), 'x');
  writeFileSync(join(parent, 'etc/removed'), 'removed\n');
  symlinkSync('keep', join(parent, 'etc/link'));
  for (const p of ['etc/keep', 'etc/same-size', 'etc/mode', 'etc/big']) utimesSync(join(parent, p), 1600000000, 1600000000);
  execFileSync('cp', ['-a', parent, join(dir, 'child')]);
  const child = join(dir, 'child');
  writeFileSync(join(child, 'etc/same-size'), 'bbbb\n');
  utimesSync(join(child, 'etc/same-size'), 1600000000, 1600000000);
  chmodSync(join(child, 'etc/mode'), 0o600);
  chownSync(join(child, 'etc/mode'), 1000, 1001);
  rmSync(join(child, 'gone'), { recursive: true });
  rmSync(join(child, 'becomes-dir'));
  mkdirSync(join(child, 'becomes-dir'));
  rmSync(join(child, 'becomes-file'), { recursive: true });
  writeFileSync(join(child, 'becomes-file'), 'now a file\n');
  rmSync(join(child, 'etc/removed'));
  writeFileSync(join(child, 'becomes-dir/inside'), 'in\n');
  writeFileSync(join(child, 'etc/new file'), pseudoRandom(10_000, 2));
  linkSync(join(child, 'etc/new file'), join(child, 'etc/sub/hardlink'));
  symlinkSync('/etc/keep', join(child, 'etc/newlink'));
  execFileSync('setfattr', ['-n', 'security.capability', '-v', '0x0100000200200000000000000000000000000000', join(child, 'etc/new file')]);
  execFileSync('setfattr', ['-n', 'user.osfarm', '-v', 'changed', join(child, 'etc/keep')]);
  return { parent, child };
}
