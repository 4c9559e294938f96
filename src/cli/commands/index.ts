/** `osfarm index`: hash every block of an image into its .osfi index. */
import { parseSize } from '../../base/size.js';
import { type HashName, type IndexInfo, indexImage } from '../../blocks/index.js';
import { type Command, str } from '../command.js';
import { bytes, count, percent } from '../format.js';

const command: Command<IndexInfo> = {
  name: 'index',
  section: 'repository',
  summary: 'hash every block of an image and write its .osfi index',
  usage: ['IMAGE [-o IMAGE.osfi] [--block-size N] [--hash sha1|sha256]'],
  options: {
    output: { type: 'string', short: 'o', value: 'FILE', complete: 'file', description: 'where to write the index (default IMAGE.osfi)' },
    'block-size': { type: 'string', short: 'b', value: 'N', description: 'block size: 4K (default), 512 to 1M, a power of two' },
    hash: { type: 'string', value: 'sha1|sha256', choices: ['sha1', 'sha256'], description: 'block digest (default sha1)' },
  },
  operands: { complete: 'file', min: 1, max: 1 },
  examples: [{ command: 'osfarm index rootfs.tar', what: 'write rootfs.tar.osfi: one SHA-1 per 4 KiB block' }],
  async run(args, ctx) {
    const [image] = args.positionals as [string];
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
