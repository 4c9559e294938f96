import { invalidArgument } from '../../base/errors.js';
import { pack, type PackResult } from '../../pack/index.js';
import { type Command, str } from '../command.js';
import { parseSize } from '../../base/size.js';
import { bytes, count } from '../format.js';

const command: Command<PackResult & { output: string }> = {
  name: 'pack',
  usage: 'pack <dir|tar|tar.gz> -o <image.tar> [--block-size N] [--source-date-epoch S] [--max-size N]',
  options: {
    output: { type: 'string', short: 'o' },
    'block-size': { type: 'string', short: 'b' },
    'source-date-epoch': { type: 'string' },
    'max-size': { type: 'string' },
  },
  allowPositionals: true,
  async run(args, ctx) {
    const [input, extra] = args.positionals;
    const output = str(args, 'output');
    if (!input || extra) throw invalidArgument('pack takes exactly one input: a directory, a tar or a tar.gz');
    if (!output) throw invalidArgument('pack needs -o <image.tar>');
    const bs = str(args, 'block-size');
    const epoch = str(args, 'source-date-epoch');
    const maxSize = str(args, 'max-size');
    if (epoch !== undefined && !/^\d+$/.test(epoch)) throw invalidArgument(`--source-date-epoch: '${epoch}' is not a number of seconds`);
    const bar = ctx.progress('pack');
    try {
      const r = await pack(input, output, {
        blockSize: bs === undefined ? undefined : parseSize(bs, '--block-size'),
        sourceDateEpoch: epoch === undefined ? undefined : Number(epoch),
        maxSize: maxSize === undefined ? undefined : parseSize(maxSize, '--max-size'),
        onProgress: (e) => bar.update(e.done, e.total),
        signal: ctx.signal,
      });
      return { ...r, output };
    } finally {
      bar.done();
    }
  },
  render(r) {
    const lines = [
      `${r.output}: ${bytes(r.outputSize)}, ${count(r.entries)} entries (${count(r.regularFiles)} files, ${bytes(r.fileBytes)} of data)`,
      `alignment padding ${bytes(r.paddingBytes)}`,
    ];
    if (r.skipped) lines.push(`skipped ${count(r.skipped)} sockets (tar cannot store them)`);
    return lines.join('\n');
  },
};
export default command;
