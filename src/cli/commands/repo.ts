/** `osfarm repo …`: the image repository. */
import { invalidArgument, OsfarmError } from '../../base/errors.js';
import { parseSize } from '../../base/size.js';
import type { HashName } from '../../blocks/index.js';
import { type DedupReport, type DiskUsage, type ImageEntry, type RebuildReport, type RepoStats, Repository } from '../../repo/index.js';
import { type Command, flag, str } from '../command.js';
import { imageArrived } from '../../trust/provenance.js';
import { removeImage } from '../../trust/tags.js';
import { bytes, count, tagList, table } from '../format.js';
import { sayMoves } from './images.js';

/** An image entry as printed: dates as ISO strings. */
function shown(e: ImageEntry): ShownEntry {
  return { ...e, added: e.added.toISOString() };
}

type ShownEntry = Omit<ImageEntry, 'added'> & { added: string };

function imageLine(e: ShownEntry): string {
  return `${e.digest}${e.tags.length ? ` (${tagList(e.tags)})` : ''}: ${e.format}, ${bytes(e.size)} in ${count(e.blockCount)} blocks`;
}

const init: Command<{ path: string; hash: HashName; blockSize: number; detectCollisions: boolean }> = {
  name: 'init',
  summary: 'create a repository in a new or empty directory (hash, block size and collision detection are fixed for its life)',
  usage: ['[DIR] [--hash sha1|sha256] [--block-size N] [--detect-collisions]'],
  description: 'DIR defaults to --repo, $OSFARM_REPO or ./osfarm-repo. build, serve and receive create a missing repository themselves (with the defaults), and say so.',
  options: {
    hash: { type: 'string', value: 'sha1|sha256', choices: ['sha1', 'sha256'], description: 'block digest (default sha1)' },
    'block-size': { type: 'string', short: 'b', value: 'N', description: 'block size: 4K (default), 512 to 1M, a power of two' },
    'detect-collisions': { type: 'boolean', description: 'run every pushed or pulled block through SHA-1 collision detection (sha1dc) and refuse a colliding pair: for a sha1 repository that takes untrusted pushes' },
  },
  operands: { complete: 'dir', max: 1 },
  examples: [
    { command: 'osfarm repo init', what: 'create ./osfarm-repo (or $OSFARM_REPO)' },
    { command: 'osfarm repo init /srv/osfarm --hash sha256 --block-size 64K', what: 'a repository with SHA-256 digests of 64 KiB blocks' },
    { command: 'osfarm repo init /srv/inbox --detect-collisions', what: 'a repository that takes pushes from untrusted sources' },
  ],
  async run(args, ctx) {
    const [dir] = args.positionals;
    const bs = str(args, 'block-size');
    const repo = Repository.init(dir ?? ctx.repoPath, {
      hash: str(args, 'hash') as HashName | undefined,
      blockSize: bs === undefined ? undefined : parseSize(bs, '--block-size'),
      detectCollisions: flag(args, 'detect-collisions'),
    });
    return { path: repo.path, hash: repo.hash, blockSize: repo.blockSize, detectCollisions: repo.detectsCollisions };
  },
  render: (r) => `created repository ${r.path} (${r.hash}${r.detectCollisions ? ' with collision detection' : ''}, ${r.blockSize}-byte blocks)`,
};

const add: Command<ShownEntry[]> = {
  name: 'add',
  summary: 'copy images in, index them and publish atomically (blocks other images hold are shared by reference on xfs/btrfs)',
  usage: ['IMAGE... [--name N] [--meta JSON]'],
  options: {
    name: { type: 'string', value: 'N', description: 'a tag for the image, added to any it has (a tag is on one image only: an image holding it loses it)' },
    meta: { type: 'string', value: 'JSON', description: 'metadata kept with the image (any JSON value)' },
  },
  operands: { complete: 'file', min: 1 },
  examples: [
    { command: 'osfarm repo add rootfs.tar --name bookworm', what: 'add an image under a name' },
    { command: 'osfarm repo add a.tar b.tar --meta \'{"suite":"bookworm"}\'', what: 'add two images with metadata' },
  ],
  async run(args, ctx) {
    const images = args.positionals;
    const name = str(args, 'name');
    if (name !== undefined && images.length > 1) throw invalidArgument('--name names one image: add them one at a time');
    const metaText = str(args, 'meta');
    let meta: unknown;
    if (metaText !== undefined) {
      try {
        meta = JSON.parse(metaText);
      } catch {
        throw invalidArgument(`--meta: not JSON: ${metaText}`);
      }
    }
    const repo = Repository.open(ctx.repoPath);
    const out = [];
    for (const image of images) {
      const bar = ctx.progress(`add ${image}`);
      try {
        const e = await repo.add(image, { name, meta, onProgress: (p) => bar.update(p.done, p.total), signal: ctx.signal });
        sayMoves(ctx, imageArrived(repo.path, e, 'add').moves);
        ctx.event({ type: 'added', digest: e.digest, path: image });
        out.push(shown(e));
      } finally {
        bar.done();
      }
    }
    return out;
  },
  render: (r) => r.map((e) => `added ${e.digest}${e.tags.length ? ` (${tagList(e.tags)})` : ''}: ${e.format}, ${bytes(e.size)}`).join('\n'),
};

const ls: Command<{ images: ShownEntry[]; stats: RepoStats; usage: DiskUsage }> = {
  name: 'ls',
  aliases: ['list'],
  summary: 'list the images with their logical and physical size, and what the repository holds',
  usage: [''],
  examples: [{ command: 'osfarm repo ls --repo /srv/osfarm', what: 'the images of /srv/osfarm, with totals' }],
  async run(_args, ctx) {
    const repo = Repository.open(ctx.repoPath);
    return { images: repo.list().map(shown), stats: repo.stats(), usage: repo.diskUsage() };
  },
  render(r) {
    const use = new Map(r.usage.images.map((u) => [u.digest, u]));
    const rows = r.images.map((e) => {
      const u = use.get(e.digest);
      return [e.digest.slice(0, 16), tagList(e.tags), e.format, bytes(e.size), u ? bytes(u.allocatedBytes) : '?', u ? bytes(u.sharedBytes) : '?', e.added.slice(0, 19).replace('T', ' ')];
    });
    const s = r.stats;
    const u = r.usage;
    return [
      rows.length ? table(rows, ['digest', 'tags', 'format', 'size', 'allocated', 'shared', 'added']) : '(no images)',
      `${count(s.images)} images: ${bytes(u.logicalBytes)} logical, ${bytes(u.physicalBytes)} physical (shared blocks counted once; ${bytes(u.allocatedBytes)} summed over the files); ${count(s.distinctBlocks)} distinct blocks (${bytes(s.distinctBlocks * s.blockSize)}); table ${bytes(s.tableFileBytes)}; ${s.hash}, ${s.blockSize}-byte blocks`,
    ].join('\n');
  },
};

const dedup: Command<DedupReport & { usage: DiskUsage }> = {
  name: 'dedup',
  summary: 'share the blocks that several images hold by reference (xfs, btrfs): for a repository filled before',
  usage: ['[NAME|DIGEST]'],
  operands: { complete: 'none', max: 1 },
  examples: [
    { command: 'osfarm repo dedup --repo /srv/osfarm', what: 'share the common blocks of every image of a repository on xfs or btrfs' },
    { command: 'osfarm repo dedup bookworm', what: 'share the blocks of one image with the images that hold them' },
  ],
  async run(args, ctx) {
    const [ref] = args.positionals;
    const repo = Repository.open(ctx.repoPath);
    const bar = ctx.progress('dedup');
    try {
      const r = await repo.dedup(ref, { onProgress: (p) => bar.update(p.done, p.total), signal: ctx.signal });
      return { ...r, usage: repo.diskUsage() };
    } finally {
      bar.done();
    }
  },
  render: (r) =>
    r.unsupported
      ? `nothing shared: ${r.unsupported}`
      : `${count(r.rewritten)} of ${count(r.images)} images rewritten in ${(r.ms / 1000).toFixed(1)} s: ${bytes(r.sharedBytes)} shared by reference, ${bytes(r.copiedBytes)} copied; now ${bytes(r.usage.logicalBytes)} logical, ${bytes(r.usage.physicalBytes)} physical`,
};

const rm: Command<ShownEntry[]> = {
  name: 'rm',
  aliases: ['remove'],
  summary: 'remove images by name, digest or digest prefix',
  usage: ['NAME|DIGEST...'],
  operands: { complete: 'none', min: 1 },
  examples: [{ command: 'osfarm repo rm bookworm', what: 'remove the image named bookworm (blocks other images share stay)' }],
  async run(args, ctx) {
    const out = [];
    for (const ref of args.positionals) out.push(shown((await removeImage(ctx.repoPath, ref)).image));
    return out;
  },
  render: (r) => r.map((e) => `removed ${imageLine(e)}`).join('\n'),
};

const show: Command<ShownEntry> = {
  name: 'show',
  summary: 'one image: digest, tags, size, paths, metadata',
  usage: ['NAME|DIGEST'],
  operands: { complete: 'none', min: 1, max: 1 },
  examples: [{ command: 'osfarm repo show bookworm', what: 'where the image bookworm and its index are, and its metadata' }],
  async run(args, ctx) {
    const [ref] = args.positionals as [string];
    return shown(Repository.open(ctx.repoPath).resolve(ref));
  },
  render: (e) =>
    [imageLine(e), `added ${e.added}`, `data  ${e.path}`, `index ${e.indexPath}`, ...(e.meta === undefined ? [] : [`meta  ${JSON.stringify(e.meta)}`])].join('\n'),
};

const verify: Command<{ verified: number; failed: { digest: string; code: string; message: string }[] }> = {
  name: 'verify',
  summary: 're-hash images and check them against their indexes (all, or those named); exits 1 on damage',
  usage: ['[NAME|DIGEST...]'],
  operands: { complete: 'none' },
  examples: [{ command: 'osfarm repo verify', what: 'check every image of the repository' }],
  async run(args, ctx) {
    const repo = Repository.open(ctx.repoPath);
    const refs = args.positionals.length ? args.positionals : repo.list().map((e) => e.digest);
    const failed = [];
    for (const ref of refs) {
      const bar = ctx.progress(`verify ${ref.slice(0, 16)}`);
      try {
        await repo.verify(ref, { onProgress: (p) => bar.update(p.done, p.total), signal: ctx.signal });
      } catch (err) {
        // Ctrl-C stops the whole run; any other osfarm error is this image's failure.
        if (!(err instanceof OsfarmError) || err.code === 'OSFARM_ABORTED') throw err;
        failed.push({ digest: ref, code: err.code, message: err.message });
      } finally {
        bar.done();
      }
    }
    if (failed.length) process.exitCode = 1;
    return { verified: refs.length - failed.length, failed };
  },
  render: (r) => [`${count(r.verified)} images verified`, ...r.failed.map((f) => `FAILED ${f.digest}: ${f.message} (${f.code})`)].join('\n'),
};

const rebuild: Command<RebuildReport> = {
  name: 'rebuild',
  summary: 're-derive the block table (and a lost catalog) from the images\' indexes',
  usage: [''],
  examples: [{ command: 'osfarm repo rebuild', what: 'recover a repository whose block table or catalog is damaged' }],
  async run(_args, ctx) {
    const bar = ctx.progress('rebuild');
    try {
      return await Repository.openForRepair(ctx.repoPath).rebuild({ onProgress: (p) => bar.update(p.done, p.total), signal: ctx.signal });
    } finally {
      bar.done();
    }
  },
  render: (r) =>
    [`rebuilt: ${count(r.images)} images, ${count(r.distinctBlocks)} distinct blocks${r.recoveredCatalog ? ' (catalog recovered)' : ''}`, ...r.dropped.map((d) => `dropped ${d}`)].join('\n'),
};

const command: Command = {
  name: 'repo',
  section: 'repository',
  summary: 'the image repository: init, add, ls, show, rm, verify, rebuild, dedup',
  usage: [],
  subcommands: [init, add, ls, show, rm, verify, rebuild, dedup] as Command[],
};
export default command;
