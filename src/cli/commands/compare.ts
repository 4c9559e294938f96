import { invalidArgument } from '../../base/errors.js';
import { compare, type CompareResult, type HashName } from '../../blocks/index.js';
import { type Command, str } from '../command.js';
import { parseSize } from '../../base/size.js';
import { count, percent, table } from '../format.js';

const command: Command<CompareResult & { aPath: string; bPath: string }> = {
  name: 'compare',
  usage: 'compare <A> <B> [--block-size N] [--hash sha1|sha256]',
  options: {
    'block-size': { type: 'string', short: 'b' },
    hash: { type: 'string' },
  },
  allowPositionals: true,
  async run(args, ctx) {
    const [a, b, extra] = args.positionals;
    if (!a || !b || extra) throw invalidArgument('compare takes two images or indexes');
    const bar = ctx.progress('hash');
    const bs = str(args, 'block-size');
    try {
      const r = await compare(a, b, {
        blockSize: bs === undefined ? undefined : parseSize(bs, '--block-size'),
        hash: str(args, 'hash') as HashName | undefined,
        onProgress: (e) => bar.update(e.done, e.total),
        signal: ctx.signal,
      });
      return { ...r, aPath: a, bPath: b };
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
