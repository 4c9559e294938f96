import test, { type ExecutionContext } from 'ava';
import {
  chmodSync,
  existsSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';

import { pack, packSync, type PackResult } from '../src/pack/index.js';
import { OsfarmError } from '../src/base/errors.js';
import { pseudoRandom, tempDir } from './helpers/tmp.js';

const MTIME = 1_600_000_000;
const LONG = 'long-'.repeat(30); // 150 bytes: more than a ustar name field holds
// A directory and a file name that are not UTF-8 (Latin-1 bytes), the second one long.
const LATIN1_DIR = Buffer.from('caf\xe9', 'latin1');
const LATIN1_LONG = Buffer.concat([Buffer.from('\xe9t\xe9-', 'latin1'), Buffer.from('x'.repeat(120))]);

function have(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

function setXattr(path: string, name: string, value: string): void {
  if (have('setfattr')) {
    execFileSync('setfattr', ['-h', '-n', name, '-v', value, path]);
  } else {
    execFileSync('python3', [
      '-c',
      'import os, sys; os.setxattr(sys.argv[1], sys.argv[2], sys.argv[3].encode(), follow_symlinks=False)',
      path,
      name,
      value,
    ]);
  }
}

/**
 * The tree every test packs: regular files of awkward sizes, an empty file, a symlink,
 * a hard-link pair, setuid/sticky modes, foreign owners, a fifo, a char device, long
 * and non-UTF-8 names and a user xattr. All mtimes are whole seconds.
 */
function makeTree(root: string): void {
  mkdirSync(join(root, 'etc/sub'), { recursive: true });
  const sizes = [1, 511, 512, 513, 4095, 4096, 4097, (1 << 20) + 3];
  sizes.forEach((n, i) => writeFileSync(join(root, `etc/f${n}`), pseudoRandom(n, i)));
  writeFileSync(join(root, 'etc/empty'), '');
  writeFileSync(join(root, 'etc/sub/config'), 'key = value\n');
  symlinkSync('../f4096', join(root, 'etc/sub/link'));
  symlinkSync(`/nonexistent/${'t'.repeat(120)}`, join(root, 'etc/long-target'));
  writeFileSync(join(root, 'hard-a'), pseudoRandom(10_000, 42));
  linkSync(join(root, 'hard-a'), join(root, 'hard-b'));
  writeFileSync(join(root, 'setuid'), '#!/bin/sh\n');
  chmodSync(join(root, 'setuid'), 0o4755);
  mkdirSync(join(root, 'tmp'));
  chmodSync(join(root, 'tmp'), 0o1777);
  writeFileSync(join(root, 'owned'), 'not root\n');
  execFileSync('chown', ['1234:5678', join(root, 'owned')]);
  execFileSync('mkfifo', [join(root, 'fifo')]);
  execFileSync('mknod', [join(root, 'null'), 'c', '1', '3']);
  writeFileSync(join(root, 'etc', LONG), pseudoRandom(7000, 7));
  writeFileSync(join(root, 'xattr'), 'has an attribute\n');
  setXattr(join(root, 'xattr'), 'user.osfarm', 'hello world');
  const latin = Buffer.concat([Buffer.from(`${root}/`), LATIN1_DIR]);
  mkdirSync(latin);
  writeFileSync(Buffer.concat([latin, Buffer.from('/'), LATIN1_LONG]), 'not utf-8\n');
  setMtimes(Buffer.from(root));
}

function setMtimes(dir: Buffer): void {
  for (const name of readdirSync(dir, { encoding: 'buffer' })) {
    const p = Buffer.concat([dir, Buffer.from('/'), name]);
    const st = lstatSync(p);
    if (st.isDirectory()) setMtimes(p);
    if (st.isSymbolicLink()) lutimesSync(p, MTIME, MTIME);
    else utimesSync(p, MTIME, MTIME);
  }
  utimesSync(dir, MTIME, MTIME);
}

interface Node {
  type: string;
  mode: string;
  uid: number;
  gid: number;
  size: number;
  sha1?: string;
  target?: string;
  rdev: number;
  mtime: number;
  /** Other paths sharing this inode (hard links), sorted. */
  links: string[];
  xattrs: Record<string, string>;
}

/** Everything about a tree that extraction must reproduce, keyed by relative path (latin1). */
function scan(root: string): Map<string, Node> {
  const out = new Map<string, Node>();
  const inodes = new Map<number, string[]>();
  const xattrs = readXattrs(root);
  const visit = (rel: Buffer): void => {
    const p = Buffer.concat([Buffer.from(root), rel]);
    const st = lstatSync(p, { bigint: true });
    const key = rel.length === 0 ? '.' : rel.toString('latin1').slice(1);
    const type = st.isFile()
      ? 'file'
      : st.isDirectory()
        ? 'dir'
        : st.isSymbolicLink()
          ? 'symlink'
          : st.isCharacterDevice()
            ? 'char'
            : st.isBlockDevice()
              ? 'block'
              : st.isFIFO()
                ? 'fifo'
                : 'other';
    const node: Node = {
      type,
      mode: (Number(st.mode) & 0o7777).toString(8),
      uid: Number(st.uid),
      gid: Number(st.gid),
      size: type === 'file' ? Number(st.size) : 0,
      rdev: Number(st.rdev),
      mtime: Number(st.mtimeNs / 1_000_000_000n),
      links: [],
      xattrs: xattrs[key] ?? {},
    };
    if (type === 'file') {
      node.sha1 = createHash('sha1').update(readFileSync(p)).digest('hex');
      if (st.nlink > 1n) {
        const ino = Number(st.ino);
        inodes.set(ino, [...(inodes.get(ino) ?? []), key]);
        (node as Node & { ino?: number }).ino = ino;
      }
    }
    if (type === 'symlink') node.target = readlinkSync(p, { encoding: 'buffer' }).toString('latin1');
    out.set(key, node);
    if (type === 'dir') {
      for (const name of readdirSync(p, { encoding: 'buffer' })) visit(Buffer.concat([rel, Buffer.from('/'), name]));
    }
  };
  visit(Buffer.alloc(0));
  for (const node of out.values()) {
    const n = node as Node & { ino?: number };
    if (n.ino !== undefined) {
      n.links = [...inodes.get(n.ino)!].sort();
      delete n.ino;
    }
  }
  return out;
}

/** The xattrs of every entry of a tree (Node has no xattr API; Python's os module does). */
function readXattrs(root: string): Record<string, Record<string, string>> {
  const py = `
import os, sys, json
root = os.fsencode(sys.argv[1])
out = {}
for dirpath, dirnames, filenames in os.walk(root):
    for name in [b''] + dirnames + filenames:
        if name == b'' and dirpath != root:
            continue
        p = os.path.join(dirpath, name) if name else dirpath
        rel = os.path.relpath(p, root).decode('latin-1')
        try:
            names = os.listxattr(p, follow_symlinks=False)
        except OSError:
            names = []
        if names:
            out[rel] = {n: os.getxattr(p, n, follow_symlinks=False).hex() for n in names}
print(json.dumps(out))
`;
  return JSON.parse(execFileSync('python3', ['-c', py, root], { encoding: 'utf8' }));
}

/**
 * Compares two scans entry by entry. bsdtar never sets the times of the directory it
 * extracts into (the `./` entry), even for GNU tar's own archives: `rootTime: false`.
 */
function assertSameTree(
  t: ExecutionContext,
  want: Map<string, Node>,
  got: Map<string, Node>,
  label: string,
  { rootTime = true } = {},
): void {
  t.deepEqual([...got.keys()].sort(), [...want.keys()].sort(), `${label}: same paths`);
  for (const [path, node] of want) {
    const g = got.get(path);
    if (path === '.' && !rootTime && g) g.mtime = node.mtime;
    t.deepEqual(g, node, `${label}: ${path}`);
  }
}

function extractGnu(archive: string, dir: string): void {
  mkdirSync(dir);
  execFileSync('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '-xpf', archive, '-C', dir]);
}

function extractBsd(archive: string, dir: string): void {
  mkdirSync(dir);
  execFileSync('bsdtar', ['-xpf', archive, '--numeric-owner', '-C', dir]);
}

interface TarMember {
  name: string;
  type: string;
  offset: number;
  size: number;
}

/** A minimal independent tar walker: each real entry with its data offset (pax headers folded in). */
function members(archive: Buffer): TarMember[] {
  const out: TarMember[] = [];
  let off = 0;
  let paxPath: string | undefined;
  while (off + 512 <= archive.length) {
    const h = archive.subarray(off, off + 512);
    if (h.every((b) => b === 0)) break;
    const field = (a: number, b: number) => h.subarray(a, b).toString('latin1').replace(/\0.*$/s, '');
    const size = parseInt(field(124, 136).trim() || '0', 8);
    const type = field(156, 157) || '0';
    const data = off + 512;
    if (type === 'x') {
      const recs = archive.subarray(data, data + size).toString('latin1');
      paxPath = /(?:^|\n)\d+ path=([^\n]*)\n/.exec(recs)?.[1];
    } else {
      const prefix = field(345, 500);
      const name = paxPath ?? (prefix ? `${prefix}/${field(0, 100)}` : field(0, 100));
      out.push({ name, type, offset: data, size });
      paxPath = undefined;
    }
    off = data + Math.ceil(size / 512) * 512;
  }
  return out;
}

/** A one-entry tar written by hand, so names a real tar tool would refuse can be made. */
function rawTar(name: string, content = 'evil\n', typeflag = '0', link = ''): Buffer {
  const h = Buffer.alloc(512);
  h.write(name, 0, 'latin1');
  h.write('0000644\0', 100);
  h.write('0000000\0', 108);
  h.write('0000000\0', 116);
  h.write(`${content.length.toString(8).padStart(11, '0')}\0`, 124);
  h.write(`${MTIME.toString(8).padStart(11, '0')}\0`, 136);
  h.write('        ', 148);
  h.write(typeflag, 156);
  h.write(link, 157);
  h.write('ustar\x0000', 257, 'latin1');
  const sum = h.reduce((a, b) => a + b, 0);
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
  const data = Buffer.alloc(Math.ceil(content.length / 512) * 512);
  data.write(content);
  return Buffer.concat([h, data, Buffer.alloc(1024)]);
}

test('a packed tree is block-aligned and GNU tar and bsdtar extract it identically', async (t) => {
  const dir = tempDir(t, 'osfarm-pack-');
  const src = join(dir, 'src');
  mkdirSync(src);
  makeTree(src);
  const out = join(dir, 'out.tar');
  const events: number[] = [];
  const r: PackResult = await pack(src, out, { onProgress: (e) => events.push(e.done) });
  t.is(r.skipped, 0);
  // 8 sized files, empty, config, hard-a, setuid, owned, the long name, xattr, the Latin-1
  // one; hard-b is stored as a link to hard-a.
  t.is(r.regularFiles, 16);
  t.is(r.inputBytes, r.fileBytes);
  t.true(events.length > 0 && events[events.length - 1] === r.fileBytes, `progress ${events}`);

  const bytes = readFileSync(out);
  t.is(bytes.length, r.outputSize);
  t.is(bytes.length % 4096, 0);
  const list = members(bytes);
  t.is(list.length, r.entries);
  t.is(list[0]!.name, './');
  for (const m of list) {
    t.false(m.name.startsWith('/') || m.name.split('/').includes('..'), m.name);
    if (m.type === '0' && m.size > 0) t.is(m.offset % 4096, 0, `${m.name} data at ${m.offset}`);
  }
  t.true(list.some((m) => m.name === `./etc/${LONG}` && m.offset % 4096 === 0));

  const want = scan(src);
  t.deepEqual(want.get('hard-a')!.links, ['hard-a', 'hard-b']);
  t.is(want.get('xattr')!.xattrs['user.osfarm'], Buffer.from('hello world').toString('hex'));
  extractGnu(out, join(dir, 'gnu'));
  assertSameTree(t, want, scan(join(dir, 'gnu')), 'GNU tar');
  extractBsd(out, join(dir, 'bsd'));
  assertSameTree(t, want, scan(join(dir, 'bsd')), 'bsdtar', { rootTime: false });
});

test('a tar.gz made by GNU tar packs to the same tree', async (t) => {
  const dir = tempDir(t, 'osfarm-pack-');
  const src = join(dir, 'src');
  mkdirSync(src);
  makeTree(src);
  // The name lies: the input is found to be gzip by its content.
  const tgz = join(dir, 'input.tar');
  execFileSync('tar', ['--format=posix', '--xattrs', '--xattrs-include=*', '--numeric-owner', '-czf', tgz, '-C', src, '.']);
  const out = join(dir, 'out.tar');
  const r = await pack(tgz, out, { blockSize: 65536 });
  t.is(r.outputSize % 65536, 0);
  for (const m of members(readFileSync(out))) {
    if (m.type === '0' && m.size > 0) t.is(m.offset % 65536, 0, m.name);
  }
  const want = scan(src);
  extractGnu(out, join(dir, 'gnu'));
  assertSameTree(t, want, scan(join(dir, 'gnu')), 'GNU tar, from tar.gz');
  extractBsd(out, join(dir, 'bsd'));
  assertSameTree(t, want, scan(join(dir, 'bsd')), 'bsdtar, from tar.gz', { rootTime: false });
  // Directory input and the re-packed archive of the same tree are the same bytes
  // when both follow the same order (GNU tar's order here is not sorted, so compare entries).
  const fromDir = join(dir, 'dir.tar');
  packSync(src, fromDir, { blockSize: 65536 });
  const names = (p: string) => members(readFileSync(p)).map((m) => m.name).sort();
  t.deepEqual(names(out), names(fromDir));
});

test('packing is deterministic and SOURCE_DATE_EPOCH clamps mtimes', (t) => {
  const dir = tempDir(t, 'osfarm-pack-');
  const src = join(dir, 'src');
  mkdirSync(src);
  makeTree(src);
  const a = join(dir, 'a.tar');
  const b = join(dir, 'b.tar');
  packSync(src, a);
  packSync(src, b);
  t.deepEqual(readFileSync(a), readFileSync(b));

  const epoch = MTIME - 1000;
  packSync(src, b, { sourceDateEpoch: epoch });
  t.notDeepEqual(readFileSync(a), readFileSync(b));
  const c = join(dir, 'c.tar');
  const saved = process.env.SOURCE_DATE_EPOCH;
  process.env.SOURCE_DATE_EPOCH = String(epoch);
  try {
    packSync(src, c);
  } finally {
    if (saved === undefined) delete process.env.SOURCE_DATE_EPOCH;
    else process.env.SOURCE_DATE_EPOCH = saved;
  }
  t.deepEqual(readFileSync(b), readFileSync(c), 'the environment gives the default');
  const listing = execFileSync('tar', ['--numeric-owner', '--full-time', '-tvf', c], { encoding: 'latin1' });
  const stamp = new Date(epoch * 1000).toISOString().slice(0, 19).replace('T', ' ');
  for (const line of listing.trim().split('\n')) t.true(line.includes(stamp), line);
});

test('hostile or damaged archives are refused with OSFARM_BAD_ARCHIVE and leave no output', async (t) => {
  const dir = tempDir(t, 'osfarm-pack-');
  const src = join(dir, 'src');
  mkdirSync(src);
  writeFileSync(join(src, 'file'), pseudoRandom(100_000, 3));
  const good = join(dir, 'good.tar');
  packSync(src, good);
  const goodBytes = readFileSync(good);
  const gz = join(dir, 'good.tgz');
  execFileSync('sh', ['-c', `gzip -c < '${good}' > '${gz}'`]);
  const gzBytes = readFileSync(gz);
  const flipped = Buffer.from(goodBytes);
  flipped[5] = flipped[5]! ^ 0x01; // a byte of the first header's name: checksum no longer matches

  const cases: Record<string, Buffer> = {
    dotdot: rawTar('../x'),
    'inner dotdot': rawTar('./a/../../x'),
    absolute: rawTar('/etc/passwd'),
    'hard link outside': rawTar('./x', '', '1', '/etc/shadow'),
    truncated: goodBytes.subarray(0, 4096 + 1000),
    'bad checksum': flipped,
    'truncated gzip': gzBytes.subarray(0, Math.floor(gzBytes.length / 2)),
    'gzip without trailer': gzBytes.subarray(0, gzBytes.length - 4),
  };
  for (const [name, data] of Object.entries(cases)) {
    const input = join(dir, `${name}.in`);
    writeFileSync(input, data);
    const outDir = join(dir, `out-${name}`);
    mkdirSync(outDir);
    const err = await t.throwsAsync(pack(input, join(outDir, 'out.tar')), { instanceOf: OsfarmError }, name);
    t.is(err?.code, 'OSFARM_BAD_ARCHIVE', `${name}: ${err?.message}`);
    t.deepEqual(readdirSync(outDir), [], `${name}: nothing left behind`);
    const errSync = t.throws(() => packSync(input, join(outDir, 'out.tar')), undefined, name);
    t.is((errSync as OsfarmError).code, 'OSFARM_BAD_ARCHIVE');
    t.deepEqual(readdirSync(outDir), []);
  }
});

test('bad options are refused; an abort leaves no output', async (t) => {
  const dir = tempDir(t, 'osfarm-pack-');
  const src = join(dir, 'src');
  mkdirSync(src);
  // Allocated, not sparse (a sparse file is packed by its data, at once): cheap to create,
  // and takes a while to read, so the abort lands mid-way.
  execFileSync('fallocate', ['-l', '512M', join(src, 'big')]);
  const out = join(dir, 'out.tar');
  for (const blockSize of [0, 256, 3000, 2 << 20]) {
    const err = await t.throwsAsync(pack(src, out, { blockSize }), { instanceOf: OsfarmError });
    t.is(err?.code, 'OSFARM_INVALID_ARGUMENT');
  }
  const negative = t.throws(() => packSync(src, out, { sourceDateEpoch: -1 }));
  t.is((negative as OsfarmError).code, 'OSFARM_INVALID_ARGUMENT');
  const inside = await t.throwsAsync(pack(src, join(src, 'x.tar')), { instanceOf: OsfarmError });
  t.is(inside?.code, 'OSFARM_INVALID_ARGUMENT');
  const missing = await t.throwsAsync(pack(join(dir, 'nope'), out), { instanceOf: OsfarmError });
  t.is(missing?.code, 'OSFARM_NOT_FOUND');

  const ac = new AbortController();
  const aborted = await t.throwsAsync(pack(src, out, { signal: ac.signal, onProgress: () => ac.abort() }), {
    instanceOf: OsfarmError,
  });
  t.is(aborted?.code, 'OSFARM_ABORTED');
  t.false(existsSync(out));
  t.deepEqual(readdirSync(dir).sort(), ['src']);
  const pre = await t.throwsAsync(pack(src, out, { signal: AbortSignal.abort() }), { instanceOf: OsfarmError });
  t.is(pre?.code, 'OSFARM_ABORTED');
});
