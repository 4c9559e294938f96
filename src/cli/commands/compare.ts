/** `osfarm compare`: the seed's "common blocks" of two images, both ways. */
import { existsSync } from 'node:fs';

import { OsfarmError } from '../../base/errors.js';
import { parseSize } from '../../base/size.js';
import { compare, type CompareResult, type HashName } from '../../blocks/index.js';
import { Repository } from '../../repo/index.js';
import { type Command, type CommandContext, str } from '../command.js';
import { count, percent, table } from '../format.js';

/** A file as it is; anything else names an image of the repository (name, digest or prefix), compared by its index. */
function operand(ref: string, ctx: CommandContext): { path: string; shown: string } {
  if (existsSync(ref)) return { path: ref, shown: ref };
  let repo: Repository;
  try {
    repo = Repository.open(ctx.repoPath);
  } catch (err) {
    throw new OsfarmError('OSFARM_NOT_FOUND', `${ref} is not a file, and ${ctx.repoPath} is no repository to look it up in (--repo DIR)`, { cause: err });
  }
  const e = repo.resolve(ref);
  return { path: e.indexPath, shown: `${e.name ?? e.digest.slice(0, 16)} (repository)` };
}

const command: Command<CompareResult & { aPath: string; bPath: string }> = {
  name: 'compare',
  section: 'repository',
  summary: 'common blocks of two images or indexes, both ways',
  usage: ['A B [--block-size N] [--hash sha1|sha256]'],
  description: 'A and B are image files, .osfi indexes, or images of the repository by name or digest (as push and images take them).',
  options: {
    'block-size': { type: 'string', short: 'b', value: 'N', description: 'block size for image files: 4K (default), 512 to 1M' },
    hash: { type: 'string', value: 'sha1|sha256', choices: ['sha1', 'sha256'], description: 'block digest for image files (default sha1)' },
  },
  operands: { complete: 'file', min: 2, max: 2 },
  examples: [
    { command: 'osfarm compare old.tar new.tar', what: 'how many of each image\'s blocks the other one has' },
    { command: 'osfarm compare app1.tar app2.tar --repo /srv/osfarm', what: 'two images of a repository, by name' },
  ],
  async run(args, ctx) {
    const [a, b] = args.positionals.map((p) => operand(p, ctx)) as [{ path: string; shown: string }, { path: string; shown: string }];
    const bar = ctx.progress('hash');
    const bs = str(args, 'block-size');
    try {
      const r = await compare(a.path, b.path, {
        blockSize: bs === undefined ? undefined : parseSize(bs, '--block-size'),
        hash: str(args, 'hash') as HashName | undefined,
        onProgress: (e) => bar.update(e.done, e.total),
        signal: ctx.signal,
      });
      return { ...r, aPath: a.shown, bPath: b.shown };
    } finally {
      bar.done();
    }
  },
  render(r) {
    const row = (name: string, path: string, s: CompareResult['a'], other: string) => [
      name,
      path,
      count(s.blocks),
      count(s.zeroBlocks),
      count(s.blocks - s.zeroBlocks),
      `${percent(s.shareInOther)} in ${other}`,
    ];
    return [
      `${r.hash}, ${r.blockSize}-byte blocks`,
      table([row('A', r.aPath, r.a, 'B'), row('B', r.bPath, r.b, 'A')], ['', 'image', 'blocks', 'zero', 'non-zero', 'common blocks']),
      `sending B to a holder of A transfers ${percent(1 - r.b.shareInOther)} of B's non-zero blocks; A to a holder of B, ${percent(1 - r.a.shareInOther)}.`,
    ].join('\n');
  },
};
export default command;
