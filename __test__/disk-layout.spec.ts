// The disk writer's parts that need no distribution build: the boot fields of the spec, and
// the layered ext4 root (a parent tree by mke2fs -d, a child's changes applied with debugfs)
// on small trees made here, read back with debugfs. Needs root (owners) and e2fsprogs.
import test from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import { lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { writeDisk } from '../src/builder/outputs/disk.js';
import { populatedRoot, rootBlocks } from '../src/builder/outputs/rootfs.js';
import type { OutputContext } from '../src/builder/outputs/context.js';
import { canonicalSpec, parseSpec, specDigest, specFromObject, specToXml } from '../src/spec/index.js';
import { issuesOf } from './helpers/spec.js';
import { stageTrees } from './helpers/stage-trees.js';
import { pseudoRandom, tempDir } from './helpers/tmp.js';

const EPOCH = 1700000000;
const KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJV9F6uFAUmvtpe/QKvdWYeARrw5B1I6kYUQ/B+7plHf test@osfarm';
const base = { distribution: 'debian', release: 'bookworm', architecture: 'amd64' };

test('boot fields: defaults stay out of the canonical form, so older specs keep their digest', (t) => {
  const plain = specFromObject(base);
  const c = canonicalSpec(plain) as unknown as Record<string, unknown>;
  for (const k of ['kernel', 'firmware', 'serialConsole', 'network', 'users', 'cloudInit']) t.false(k in c, k);
  t.false(/kernel|firmware|users/.test(specToXml(plain)));
  // Written out at their defaults, they change nothing.
  t.is(specDigest(specFromObject({ ...base, kernel: false, firmware: 'auto', serialConsole: true, network: 'none', users: [], cloudInit: 'none' })), specDigest(plain));
  const boot = specFromObject({ ...base, kernel: true, firmware: 'UEFI', serialConsole: 'off', network: 'dhcp', users: [{ name: 'root', sshKeys: KEY }, { name: 'alice' }], cloudInit: 'nocloud', outputs: ['disk', 'qcow2'] });
  t.is(boot.kernel, 'linux-image-amd64');
  t.is(boot.firmware, 'uefi');
  t.false(boot.serialConsole);
  t.deepEqual(boot.users, [{ name: 'root', sshKeys: [KEY] }, { name: 'alice', sshKeys: [] }]);
  t.not(specDigest(boot), specDigest(plain));
  // The XML form reads back to the same request.
  t.is(specDigest(parseSpec(specToXml(boot), 'xml')), specDigest(boot));
  t.is(specFromObject({ ...base, architecture: 'arm64', kernel: 'linux-image-cloud-arm64', outputs: ['disk'] }).kernel, 'linux-image-cloud-arm64');
});

test('boot fields: bad input is refused naming the field and what to do', (t) => {
  const cases: Array<[Record<string, unknown>, string, RegExp]> = [
    [{ ...base, outputs: ['disk'] }, 'spec.outputs', /installs none: set kernel: true \(flag --kernel on\) to install linux-image-amd64/],
    [{ ...base, outputs: ['qcow2'], kernel: false }, 'spec.outputs', /kernel: true/],
    [{ ...base, kernel: true, firmware: 'coreboot' }, 'spec.firmware', /not a firmware \(uefi, bios, hybrid/],
    [{ ...base, architecture: 'arm64', kernel: true, firmware: 'bios' }, 'spec.firmware', /arm64 disks boot with uefi only/],
    [{ ...base, architecture: 'armhf', kernel: true, outputs: ['disk'] }, 'spec.outputs', /bootable disks for amd64 and arm64, not armhf/],
    [{ ...base, kernel: 'Not A Package' }, 'spec.kernel', /not a package name/],
    [{ ...base, network: 'static' }, 'spec.network', /not a network setting \(none, dhcp\)/],
    [{ ...base, cloudInit: 'yes' }, 'spec.cloudInit', /none, cloud, nocloud/],
    [{ ...base, serialConsole: 'maybe' }, 'spec.serialConsole', /true or false/],
    [{ ...base, users: [{ name: 'Root!' }] }, 'spec.users[0].name', /not a user name/],
    [{ ...base, users: [{ name: 'root', sshKeys: ['not a key'] }] }, 'spec.users[0].sshKeys[0]', /OpenSSH public key/],
    [{ ...base, users: [{ name: 'bob' }, { name: 'bob' }] }, 'spec.users[1].name', /twice/],
    [{ ...base, users: [{ name: 'bob', password: 'x' }] }, 'spec.users[0].password', /unknown field/],
    [{ ...base, kernel: 'linux-image-cloud-amd64', parent: { ...base, kernel: true } }, 'spec.kernel', /parent's tree has the kernel linux-image-amd64 already/],
  ];
  for (const [raw, path, re] of cases) {
    const issues = issuesOf(() => specFromObject(raw));
    const hit = issues.find((i) => i.path === path);
    t.truthy(hit, `${JSON.stringify(raw)} → ${JSON.stringify(issues)}`);
    if (hit) t.regex(hit.message, re);
  }
  // A child inherits its parent's kernel (and may say the same again).
  const child = specFromObject({ packages: ['python3'], outputs: ['disk'], parent: { ...base, kernel: true } });
  t.is(child.kernel, 'linux-image-amd64');
});

/** Reads a path's inode number, mode, owner, links and times as debugfs sees them. */
function stat(image: string, path: string): Record<string, string> {
  const out = execFileSync('debugfs', ['-R', `stat "${path}"`, image], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  const f: Record<string, string> = {};
  f.inode = /Inode: (\d+)/.exec(out)?.[1] ?? '';
  f.mode = /Mode: +(\d+)/.exec(out)?.[1] ?? '';
  f.user = /User: +(\d+)/.exec(out)?.[1] ?? '';
  f.group = /Group: +(\d+)/.exec(out)?.[1] ?? '';
  f.links = /Links: (\d+)/.exec(out)?.[1] ?? '';
  f.mtime = /mtime: (0x[0-9a-f]+)/.exec(out)?.[1] ?? '';
  f.ctime = /ctime: (0x[0-9a-f]+)/.exec(out)?.[1] ?? '';
  f.blocks = /EXTENTS:\n(.*)/.exec(out)?.[1]?.trim() ?? '';
  return f;
}

function ctxFor(dir: string, layers: string[]): OutputContext {
  const spec = specFromObject(base);
  return { digest: 'test', spec, sourceDateEpoch: EPOCH, layers: layers.map((d) => ({ tag: null, dir: d })), buildDir: dir, log: () => {} };
}

test('layered ext4: a child stage applied to the parent\'s file system equals the child tree, and the parent\'s inodes and blocks stay put', async (t) => {
  const dir = tempDir(t, 'osfarm-disk-layout-');
  const { parent, child } = stageTrees(dir);
  const blocks = await rootBlocks(child);
  t.is(blocks, 524288, 'at least 2 GiB, whatever the tree');
  mkdirSync(join(dir, 'a'));
  mkdirSync(join(dir, 'b'));
  const onlyParent = await populatedRoot(ctxFor(join(dir, 'a'), [parent]), blocks);
  const layered = await populatedRoot(ctxFor(join(dir, 'b'), [parent, child]), blocks);
  execFileSync('e2fsck', ['-fn', layered], { stdio: 'ignore' });

  // Read the layered file system back and compare it with the child tree.
  const back = join(dir, 'back');
  mkdirSync(back);
  execFileSync('debugfs', ['-R', `rdump / ${back}`, layered], { stdio: 'ignore' });
  const walk = (root: string, rel = ''): string[] => readdirSync(join(root, rel)).sort().flatMap((n) => {
    const r = `${rel}/${n}`;
    return lstatSync(join(root, r)).isDirectory() && r !== '/lost+found' ? [r, ...walk(root, r)] : [r];
  });
  t.deepEqual(walk(back).filter((r) => r !== '/lost+found'), walk(child));
  for (const r of walk(child)) {
    const a = lstatSync(join(child, r));
    const b = lstatSync(join(back, r));
    t.is(b.mode, a.mode, `${r} mode`);
    t.is(b.uid, a.uid, `${r} owner`);
    t.is(b.gid, a.gid, `${r} group`);
    if (a.isFile()) t.deepEqual(readFileSync(join(back, r)), readFileSync(join(child, r)), `${r} content`);
    if (a.isSymbolicLink()) t.is(readlinkSync(join(back, r)), readlinkSync(join(child, r)), `${r} target`);
    const s = stat(layered, r);
    t.is(Number(s.mtime), Math.min(Math.floor(a.mtimeMs / 1000), EPOCH), `${r} mtime`);
    t.is(Number(s.ctime), EPOCH, `${r} ctime (a backslash in the name too)`);
  }
  // Hard links are one inode; extended attributes came along.
  t.is(stat(layered, '/etc/new file').inode, stat(layered, '/etc/sub/hardlink').inode);
  t.is(stat(layered, '/etc/new file').links, '2');
  const ea = (p: string, n: string) => execFileSync('debugfs', ['-R', `ea_get -x "${p}" ${n}`, layered], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).replace(/\s+/g, '');
  t.regex(ea('/etc/new file', 'security.capability'), /=0100000200200000000000000000000000000000$/);
  t.regex(ea('/etc/keep', 'user.osfarm'), new RegExp(`=${Buffer.from('changed').toString('hex')}$`));

  // What the child did not touch keeps the inode and blocks it has in the parent's file system.
  for (const p of ['/etc/keep', '/etc/big', '/usr/lib/systemd/system-systemd\\x2dcryptsetup.slice']) {
    const a = stat(onlyParent, p);
    const b = stat(layered, p);
    t.is(b.inode, a.inode, `${p} inode`);
    t.is(b.blocks, a.blocks, `${p} blocks`);
  }
});

test('each firmware gets its partitions: hybrid BIOS boot + ESP + root, uefi ESP + root, bios BIOS boot + root', async (t) => {
  const dir = tempDir(t, 'osfarm-disk-fw-');
  // A tree with a stand-in kernel and initramfs (the layout is checked here, booting in disk.spec.ts).
  const tree = join(dir, 'tree');
  mkdirSync(join(tree, 'boot'), { recursive: true });
  mkdirSync(join(tree, 'etc'), { recursive: true });
  writeFileSync(join(tree, 'boot/vmlinuz-6.1.0-1-amd64'), pseudoRandom(3 << 20, 3));
  writeFileSync(join(tree, 'boot/initrd.img-6.1.0-1-amd64'), pseudoRandom(1 << 20, 4));
  writeFileSync(join(tree, 'etc/os-release'), 'PRETTY_NAME="Test Linux"\n');
  const expected: Record<string, string[]> = { hybrid: ['bios', 'esp', 'root'], uefi: ['esp', 'root'], bios: ['bios', 'root'] };
  for (const firmware of ['hybrid', 'uefi', 'bios'] as const) {
    const build = join(dir, firmware);
    mkdirSync(build);
    const ctx: OutputContext = { ...ctxFor(build, [tree]), spec: specFromObject({ ...base, kernel: true, firmware, outputs: ['disk'] }) };
    const disk = join(dir, `${firmware}.img`);
    await writeDisk(disk, await populatedRoot(ctx, await rootBlocks(tree)), ctx);
    const parts = JSON.parse(execFileSync('sfdisk', ['--json', disk], { encoding: 'utf8' })).partitiontable.partitions;
    t.deepEqual(parts.map((p: { name: string }) => p.name), expected[firmware], firmware);
    const mbr = execFileSync('dd', [`if=${disk}`, 'bs=512', 'count=1', 'status=none']);
    // GRUB's boot code in the MBR only where there is a BIOS boot partition.
    t.is(mbr.subarray(0, 0x1b8).some((b) => b !== 0), firmware !== 'uefi', `${firmware}: MBR boot code`);
    const root = parts.at(-1);
    const rootArg = `${disk}?offset=${root.start * 512}`;
    const grub = spawnSync('debugfs', ['-R', 'cat /boot/grub/grub.cfg', rootArg], { encoding: 'utf8' }).stdout;
    t.is(grub.includes('menuentry "Test Linux (6.1.0-1-amd64)"'), firmware !== 'uefi', `${firmware}: grub.cfg`);
    execFileSync('e2fsck', ['-fn', rootArg], { stdio: 'ignore' });
  }
});
