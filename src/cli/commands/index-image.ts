import { invalidArgument } from '../../base/errors.js';
import { indexImage, type HashName, type IndexInfo } from '../../blocks/index.js';
import { type Command, str } from '../command.js';
import { parseSize } from '../../base/size.js';
import { bytes, count, percent } from '../format.js';

const command: Command<IndexInfo> = {
  name: 'index',
  usage: 'index <image> [-o <image.osfi>] [--block-size N] [--hash sha1|sha256]',
  options: {
    output: { type: 'string', short: 'o' },
    'block-size': { type: 'string', short: 'b' },
    hash: { type: 'string' },
  },
  allowPositionals: true,
  async run(args, ctx) {
    const [image, extra] = args.positionals;
    if (!image || extra) throw invalidArgument('index takes exactly one image');
    const bar = ctx.progress('index');
    const bs = str(args, 'block-size');
    try {
      return await indexImage(image, {
        output: str(args, 'output') ?? `${image}.osfi`,
        blockSize: bs === undefined ? undefined : parseSize(bs, '--block-size'),
        hash: str(args, 'hash') as HashName | undefined,
        onProgress: (e) => bar.update(e.done, e.total),
        signal: ctx.signal,
      });
    } finally {
      bar.done();
    }
  },
  render(r) {
    return [
      `image      ${r.digest}`,
      `size       ${bytes(r.imageSize)} in ${count(r.blockCount)} blocks of ${bytes(r.blockSize)} (${r.hash}), ${count(r.zeroBlocks)} all-zero`,
      `index      ${r.indexPath} (${bytes(r.indexSize)}, ${percent(r.indexSize / Math.max(1, r.imageSize))} of the image)`,
    ].join('\n');
  },
};
export default command;
